"""Reading TOML tables key by key, logging every failure and reading on (docs/service.md §2).

:func:`expand_table` applies ``${VAR}`` substitution (:func:`~.config_rules.expand_env`) to
every string of a parsed file, naming a failure by table path and key. :class:`TableReader`
gives typed access to one table's keys — ``bool`` is never a number, an integer is accepted
where a float is expected, non-finite floats are refused — and reports unknown keys with the
closest known one. A failed read logs one problem and returns None, so the caller skips the
checks that depend on it instead of reporting the same mistake twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import ServomexError
from .config_rules import expand_env, suggest
from .problems import ProblemLog

__all__ = ["TableReader", "expand_table", "toml_kind"]


def expand_table(
    table: Mapping[str, object], path: str, log: ProblemLog, environ: Mapping[str, str]
) -> dict[str, object]:
    """``table`` with ``${VAR}`` substituted in every string, at any depth. A problem names
    the table path (``bus[0].analyser[1]``, as :class:`LineIndex` does) and the key."""
    return {key: _expand_value(v, path, key, log, environ) for key, v in table.items()}


def _expand_value(
    value: object, path: str, key: str, log: ProblemLog, environ: Mapping[str, str]
) -> object:
    inner = f"{path}.{key}" if path else key
    if isinstance(value, str):
        try:
            return expand_env(value, environ)
        except ServomexError as exc:
            log.add(path, key, exc.message)
            log.unresolved.add((path, key))  # reported: the rules skip this key
            return value
    if isinstance(value, dict):
        return expand_table(value, inner, log, environ)
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):  # an array of tables
            return [expand_table(v, f"{inner}[{i}]", log, environ) for i, v in enumerate(value)]
        return [_expand_value(v, path, key, log, environ) for v in value]
    return value


_TOML_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def toml_kind(value: object) -> str:
    return _TOML_TYPES.get(type(value), f"a {type(value).__name__}")


class TableReader:
    """Typed access to one table's keys; every failure is logged and reads on."""

    def __init__(
        self, log: ProblemLog, path: str, data: Mapping[str, object], known: Sequence[str]
    ) -> None:
        self.log, self.path, self.data = log, path, data
        for key in data:
            if key not in known:
                self.add(key, f"unknown key{suggest(key, known)}")

    def add(self, key: str | None, message: str) -> None:
        self.log.add(self.path, key, message)

    def has(self, key: str) -> bool:
        return key in self.data

    def unresolved(self, key: str) -> bool:
        """True when ``key`` holds a ``${VAR}`` that could not be substituted (reported)."""
        return (self.path, key) in self.log.unresolved

    def _typed(self, key: str, types: tuple[type, ...], what: str, required: bool) -> object:
        if self.unresolved(key):
            return None
        if key not in self.data:
            if required:
                self.add(key, "missing (required)")
            return None
        value = self.data[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            self.add(key, f"must be {what}, got {toml_kind(value)} {value!r}")
            return None
        return value

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self._typed(key, (str,), "a string", required)
        return value if isinstance(value, str) else None

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self._typed(key, (int,), "an integer", required)
        return value if isinstance(value, int) else None

    def number(self, key: str, *, required: bool = False) -> float | None:
        value = self._typed(key, (int, float), "a number", required)
        if not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            self.add(key, f"must be a finite number, got {value!r}")
            return None
        return float(value)

    def tables(self, key: str, header: str) -> list[dict[str, object]] | None:
        """An array of tables (``[[header]]``); None when absent or malformed."""
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.add(key, f"must be an array of tables: write [[{header}]], got {toml_kind(value)}")
            return None
        return value
