"""JSON Lines sink: one JSON object per sample, appended."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..devices.models import Sample
from ..errors import ServomexSinkSchemaError
from .base import file_context, logger
from .files import DEFAULT_TAIL_BYTES, LineFileSink, ends_with_newline, open_append
from .schema import (
    COLUMNS,
    SCHEMA,
    SERVICE_COLUMNS,
    ColumnType,
    batch_columns,
    cells_by_value,
    join_rows,
    repeated,
    with_seqs,
)

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
_SERVICE_CELLS: Final = (*_CELLS, _integers)


def json_text(columns: list[list[Any]], service: bool = False) -> str:
    """The JSON lines of a batch given as columns (see :func:`~.schema.batch_columns`).

    Each line is identical to ``json.dumps(row, ensure_ascii=False)`` of the row as a dict
    (keys in schema order) followed by ``\\n``; the equivalence is tested against
    ``json.dumps``. Written by hand because it runs for every stored sample and ``json.dumps``
    of a 22-key dict costs several times more: it works a column at a time (a column holding
    one value in every row is encoded once) and builds the lines with C loops.
    """
    pieces: list[str | list[str]] = []
    names, cells_of = (SERVICE_COLUMNS, _SERVICE_CELLS) if service else (COLUMNS, _CELLS)
    for name, column, cells in zip(names, columns, cells_of, strict=True):
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
        seq_column: bool = False,
        fsync: bool = False,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        super().__init__(
            path,
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            clock=clock,
            seq_column=seq_column,
            fsync=fsync,
            tail_bytes=tail_bytes,
        )

    def _check_first_line(self, path: Path) -> None:
        """Refuse to mix service rows (with ``seq``) and library rows in one file."""
        try:
            with open(path, "rb") as reader:
                first = reader.readline()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._write_error(f"could not read {path}", exc) from exc
        try:
            row = json.loads(first)
        except ValueError:
            return  # not a row of ours: appended to as before (JSONL keeps every line)
        if not isinstance(row, dict) or "device" not in row:
            return
        if ("seq" in row) != self.seq_column:
            has = "with" if "seq" in row else "without"
            wants = "with" if self.seq_column else "without"
            raise ServomexSinkSchemaError(
                f"existing file {path} holds rows {has} the service key seq; refusing to "
                f"append rows {wants} it (service rows and library rows are never mixed in "
                "one file): choose another path",
                context=file_context(path).merged(header="different"),
            )

    def _prepare(self, path: Path) -> tuple[BinaryIO, bytes]:
        self._check_first_line(path)
        prefix = b""
        if not ends_with_newline(path):
            logger.warning("%s does not end with a line break; starting a new line", path)
            prefix = b"\n"
        try:
            handle = open_append(path)
        except OSError as exc:
            raise self._write_error(f"could not open {path}", exc) from exc
        return handle, prefix

    def _encode(self, samples: Sequence[Sample], seqs: list[int] | None) -> bytes:
        if seqs is None:
            return json_text(batch_columns(samples)).encode("utf-8")
        return json_text(with_seqs(batch_columns(samples), seqs), service=True).encode("utf-8")

    def _row_seq(self, line: bytes) -> tuple[str, int] | None:
        try:
            row = json.loads(line)
        except ValueError:
            return None  # a line damaged by a crash
        if not isinstance(row, dict):
            return None
        device, seq = row.get("device"), row.get("seq")
        if type(device) is not str or type(seq) is not int:
            return None
        return device, seq
