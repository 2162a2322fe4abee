"""JSON Lines sink: one JSON object per sample, appended."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..devices.models import Sample
from .base import logger
from .files import LineFileSink, ends_with_newline, open_append
from .schema import COLUMNS, SCHEMA, ColumnType, batch_columns, cells_by_value, join_rows, repeated

__all__ = ["JsonlSink"]

_BOOL: Final = {True: "true", False: "false", None: "null"}
#: repr texts that JSON spells differently (json.dumps writes NaN/Infinity, None as null).
_JSON_NUMBER: Final[dict[str, str]] = {
    "None": "null",
    "nan": "NaN",
    "inf": "Infinity",
    "-inf": "-Infinity",
}
_string = json.encoder.encode_basestring  # the ensure_ascii=False string encoder (C)


def _text(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _strings(column: list[Any]) -> list[str]:
    return cells_by_value(column, _text)


def _numbers(column: list[Any]) -> list[str]:
    """Numbers as ``json.dumps`` writes them: ``repr``, with NaN/Infinity/null spelled out."""
    texts = list(map(repr, column))
    return list(map(_JSON_NUMBER.get, texts, texts))


def _integers(column: list[Any]) -> list[str]:
    return list(map(repr, column))


def _booleans(column: list[Any]) -> list[str]:
    return list(map(_BOOL.__getitem__, column))


_CELLS: Final[tuple[Callable[[list[Any]], list[str]], ...]] = tuple(
    {
        ColumnType.TEXT: _strings,
        ColumnType.FLOAT: _numbers,
        ColumnType.INT: _integers,
        ColumnType.BOOL: _booleans,
    }[c.type]
    for c in SCHEMA
)


def json_text(columns: list[list[Any]]) -> str:
    """The JSON lines of a batch given as columns (see :func:`~.schema.batch_columns`).

    Each line is identical to ``json.dumps(row, ensure_ascii=False)`` of the row as a dict
    (keys in schema order) followed by ``\\n``; the equivalence is tested against
    ``json.dumps``. Written by hand because it runs for every stored sample and ``json.dumps``
    of a 22-key dict costs several times more: it works a column at a time (a column holding
    one value in every row is encoded once) and builds the lines with C loops.
    """
    pieces: list[str | list[str]] = []
    for name, column, cells in zip(COLUMNS, columns, _CELLS, strict=True):
        pieces.append(("{" if not pieces else ", ") + _string(name) + ": ")
        pieces.append(cells(column[:1])[0] if repeated(column) else cells(column))
    pieces.append("}\n")
    return join_rows(pieces, len(columns[0]), "")


class JsonlSink(LineFileSink):
    """Append one ``json.dumps(row, ensure_ascii=False)`` line per sample (utf-8, ``\\n``).

    Values are native JSON: booleans ``true``/``false``, numbers, strings, ``null``; keys in
    schema order. The file is opened in append mode: existing lines are always kept (if the
    file does not end with a line break, one is added first). Each ``write_many`` reaches the
    operating system before it returns.

    Args:
        path: the ``.jsonl`` file.
        rotate_bytes, rotate_seconds: optional rotation into ``stem.0001.jsonl``, … (see
            :class:`CsvSink`).
    """

    _format = "JSONL"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path, rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds, clock=clock
        )

    def _prepare(self, path: Path) -> tuple[BinaryIO, bytes]:
        prefix = b""
        if not ends_with_newline(path):
            logger.warning("%s does not end with a line break; starting a new line", path)
            prefix = b"\n"
        try:
            handle = open_append(path)
        except OSError as exc:
            raise self._write_error(f"could not open {path}", exc) from exc
        return handle, prefix

    def _encode(self, samples: Sequence[Sample]) -> bytes:
        return json_text(batch_columns(samples)).encode("utf-8")
