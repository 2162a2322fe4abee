"""What is wrong with a service configuration file, and on which line (docs/service.md §2).

Theory of operation
-------------------
Validation never stops at the first mistake: every rule that fails adds a :class:`ConfigProblem`
to a :class:`ProblemLog`, and the loader raises one :class:`ServiceConfigError` carrying all of
them, so ``servomex config check`` lists everything at once. A problem names the *table path*
— ``service``, ``http``, ``bus[1]``, ``bus[1].analyser[0]``, ``sink[2]`` (0-based, in file
order) — the key, and the line when it can be told::

    plant.toml:14: bus[1].analyser[0].address: 0 is out of range 1-247

``tomllib`` returns plain values without positions, so :class:`LineIndex` recovers them with a
light scan of the source text: it follows the ``[table]`` and ``[[array]]`` headers the way TOML
does (each ``[[bus]]`` opens the next ``bus[i]``, each ``[[bus.analyser]]`` the next analyser of
the current bus) and notes the line of every ``key =`` under each. It is best effort: keys in
inline tables, dotted keys and anything inside multi-line strings give no line (``None``), never
a wrong one that the scan could know to be wrong.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable

from ..errors import ServomexValidationError

__all__ = ["ConfigProblem", "LineIndex", "ProblemLog", "ServiceConfigError", "toml_error_line"]


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong (or, on ``ServiceConfig.warnings``, doubtful) in a configuration.

    ``path`` is the table path (``""`` for the top level or the file as a whole), ``key`` the
    key within it (None when the problem is about the table), ``line`` the 1-based line in the
    source (None when unknown) and ``source`` the file name (``"<string>"`` for text).
    """

    path: str
    key: str | None
    message: str
    line: int | None = None
    source: str = "<string>"

    @property
    def location(self) -> str:
        """``bus[1].analyser[0].address``, ``bus[1]``, ``name`` (top level) or ``""``."""
        if self.key is None:
            return self.path
        return f"{self.path}.{self.key}" if self.path else self.key

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        location = self.location
        return f"{where}: {location}: {self.message}" if location else f"{where}: {self.message}"


class ServiceConfigError(ServomexValidationError):
    """A service configuration that cannot be used; ``problems`` lists every problem found.

    ``str(err)`` is a count followed by one problem per line.
    """

    def __init__(self, problems: Iterable[ConfigProblem], *, source: str = "<string>") -> None:
        found = tuple(problems)
        count = f"{len(found)} problem{'s' if len(found) != 1 else ''}"
        lines = "".join(f"\n  {p}" for p in found)
        super().__init__(f"{source}: invalid service configuration, {count}:{lines}")
        self.problems = found
        self.source = source


_HEADER = re.compile(r"^\s*(\[\[|\[)([^\[\]]*)(\]\]|\])\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')\s*(\.|=)""")
_KEY_PART = re.compile(r""""[^"]*"|'[^']*'|[^.\s"']+""")
_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")


def _parts(text: str) -> list[str]:
    return [p[1:-1] if p[:1] in "\"'" else p for p in _KEY_PART.findall(text)]


class LineIndex:
    """Lines of table headers and ``key =`` lines, by table path (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, str | None], int] = {}
        arrays: dict[str, int] = {}  # resolved array path ("bus[0].analyser") → current index
        table = ""
        quote: str | None = None  # the delimiter of an open multi-line string
        for number, raw in enumerate(text.splitlines(), start=1):
            if quote is not None:
                if raw.count(quote) % 2 == 1:
                    quote = None
                continue
            header = _HEADER.match(raw)
            if header is not None:
                table = self._resolve(
                    _parts(header.group(2)), arrays, is_array=header.group(1) == "[["
                )
                self._lines.setdefault((table, None), number)
                continue
            key = _KEY.match(raw)
            if key is not None:
                name = _parts(key.group(1))[0] if key.group(1)[:1] in "\"'" else key.group(1)
                self._lines.setdefault((table, name), number)
            for delimiter in ('"""', "'''"):
                if raw.count(delimiter) % 2 == 1:
                    quote = delimiter
                    break

    @staticmethod
    def _resolve(parts: list[str], arrays: dict[str, int], *, is_array: bool) -> str:
        path = ""
        for i, part in enumerate(parts):
            candidate = f"{path}.{part}" if path else part
            if i == len(parts) - 1 and is_array:
                arrays[candidate] = arrays.get(candidate, -1) + 1
                return f"{candidate}[{arrays[candidate]}]"
            path = f"{candidate}[{arrays[candidate]}]" if candidate in arrays else candidate
        return path

    def line_of(self, path: str, key: str | None = None) -> int | None:
        """The line of ``key =`` in table ``path``; for a key that is a sub-table
        (``[bus.extra]``, ``[[bus.analyzer]]``) the line of its (first) header; else the line
        of the header of ``path``; None when the scan cannot tell."""
        if key is not None:
            if (path, key) in self._lines:
                return self._lines[(path, key)]
            sub = f"{path}.{key}" if path else key
            for table in (sub, f"{sub}[0]"):
                if (table, None) in self._lines:
                    return self._lines[(table, None)]
        return self._lines.get((path, None))


class ProblemLog:
    """Collects the problems and warnings of one file, with their lines."""

    def __init__(self, source: str, lines: LineIndex) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        #: (table path, key) of values whose ``${VAR}`` failed: already reported, not checked.
        self.unresolved: set[tuple[str, str]] = set()

    def _make(self, path: str, key: str | None, message: str) -> ConfigProblem:
        return ConfigProblem(path, key, message, self.lines.line_of(path, key), self.source)

    def add(self, path: str, key: str | None, message: str) -> None:
        """Record a problem: the configuration will be refused."""
        self.problems.append(self._make(path, key, message))

    def warn(self, path: str, key: str | None, message: str) -> None:
        """Record a warning: the configuration still loads."""
        self.warnings.append(self._make(path, key, message))

    def raise_if_any(self) -> None:
        """Raise :class:`ServiceConfigError` with every problem, in file order."""
        if self.problems:
            # File order; problems without a line (cross-table ones) last, as found.
            ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))
            raise ServiceConfigError(ordered, source=self.source)


def toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    """The line a TOML syntax error is on (``lineno`` on 3.14+, else from the message)."""
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    match = _TOML_AT.search(str(exc))
    return int(match.group(1)) if match else None
