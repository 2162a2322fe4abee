"""CSV sink: the 22 schema columns (23 with ``seq`` for service rows), one line per sample,
never truncating silently."""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..devices.models import Sample
from ..errors import ServomexSinkSchemaError, ServomexSinkWriteError
from .base import file_context, logger, rotated_paths
from .files import DEFAULT_TAIL_BYTES, LineFileSink, ends_with_newline, open_append
from .schema import (
    COLUMNS,
    LEGACY_COLUMNS,
    SERVICE_COLUMNS,
    batch_columns,
    cells_by_value,
    join_rows,
    repeated,
    with_seqs,
)

__all__ = ["CsvSink"]

_LINE_END: Final = "\r\n"  # the csv module's default dialect
_DIGIT: Final = {True: "1", False: "0", None: ""}
_NEEDS_QUOTES: Final = re.compile(r'[,"\r\n]')


def _text(value: str | None) -> str:
    """A free-text field exactly as ``csv.writer`` (QUOTE_MINIMAL) writes it."""
    if value is None:
        return ""
    if _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + value.replace('"', '""') + '"'


def _plain(column: list[Any]) -> list[str]:
    """Enum values and ISO-8601 timestamps: never quoted (no comma, quote or line break)."""
    if None not in column:
        return column
    return list(map(_NONE_AS_EMPTY.get, column, column))


def _number(column: list[Any]) -> list[str]:
    """Floats and ints with ``repr``, None as an empty field (what ``csv.writer`` writes)."""
    texts = list(map(repr, column))
    if None in column:  # no number's repr is "None"
        texts = list(map(_NONE_AS_EMPTY.get, texts, texts))
    return texts


def _digits(column: list[Any]) -> list[str]:
    return list(map(_DIGIT.__getitem__, column))


def _free_text(column: list[Any]) -> list[str]:
    return cells_by_value(column, _text)


_NONE_AS_EMPTY: Final[dict[Any, str]] = {None: "", "None": ""}
#: How each column of COLUMNS is written: only ``device``, ``name`` and ``error`` are free text
#: that may need quotes; the other text columns hold enum values and timestamps.
_CELLS: Final[tuple[Callable[[list[Any]], list[str]], ...]] = (
    _free_text,  # device
    _plain,  # channel
    _plain,  # kind
    _free_text,  # name
    _number,  # value
    _plain,  # unit
    *(_digits,) * 9,  # ok … alarm4
    _plain,  # protocol
    _number,  # monotonic_ns
    _plain,  # received_at
    _plain,  # requested_at
    _number,  # latency_s
    _free_text,  # error
    _plain,  # value_state
)
assert len(_CELLS) == len(COLUMNS)
#: Service rows: the 22 columns, then ``seq`` (an integer).
_SERVICE_CELLS: Final = (*_CELLS, _number)


def csv_text(
    columns: list[list[Any]], cells_of: tuple[Callable[[list[Any]], list[str]], ...] = _CELLS
) -> str:
    """The CSV lines of a batch given as columns (see :func:`~.schema.batch_columns`).

    Byte-identical to ``csv.writer().writerow`` of each row after mapping booleans to 1/0 (the
    equivalence is tested against ``csv.writer`` for arbitrary text). Written by hand because
    it runs for every stored sample and ``csv.writer`` costs several times more: it works a
    column at a time (a column holding one value in every row is formatted once) and builds
    the lines with C loops (:func:`~.schema.join_rows`).
    """
    pieces: list[str | list[str]] = []
    for column, cells in zip(columns, cells_of, strict=True):
        if pieces:
            pieces.append(",")
        pieces.append(cells(column[:1])[0] if repeated(column) else cells(column))
    pieces.append(_LINE_END)
    return join_rows(pieces, len(columns[0]), "")


def _header_bytes(columns: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=_LINE_END).writerow(columns)
    return buffer.getvalue().encode("utf-8")


_HEADER: Final = _header_bytes(COLUMNS)
_SERVICE_HEADER: Final = _header_bytes(SERVICE_COLUMNS)


class CsvSink(LineFileSink):
    """Write samples as CSV (utf-8, ``newline=""`` semantics, ``\\r\\n`` line ends).

    Encoding: booleans ``1``/``0``, floats with ``repr``, None as an empty field, every other
    value as text. Each ``write_many`` reaches the operating system before it returns.

    Opening rules (the file is never truncated silently):

    * missing or empty file → header, then rows;
    * existing file whose first line is exactly the schema header → rows are **appended** (if
      the file does not end with a line break, e.g. after a power cut, one is added first so
      a damaged last line cannot swallow the next row);
    * an existing file of the older 21-column schema (no ``value_state``, written by an
      earlier version) → :class:`ServomexSinkSchemaError` saying so: 22-column rows are never
      mixed into it (it stays readable as it is; write to a new file, or replace it);
    * any other existing file → :class:`ServomexSinkSchemaError` naming the file and telling
      the caller to pass ``overwrite=True``;
    * ``overwrite=True`` → the file is replaced (with rotation: the whole series is removed).

    Both refusals carry ``context.extra`` ``path`` (the file) and ``header`` (``"older"`` or
    ``"different"``), so a front end can word them in its own terms.

    Args:
        path: the CSV file.
        overwrite: replace an existing file instead of appending or refusing.
        rotate_bytes: start a new file (``stem.0001.csv``, …) once the current one holds at
            least this many bytes; each file has its own header.
        rotate_seconds: start a new file once the current one is this many seconds old.
            Both rotation checks happen before a batch is written; batches are never split.
        seq_column: service rows: a 23rd column ``seq`` (``write_many(..., seqs=)``). A
            22-column file is then "different" and refused, and a 23-column file is refused by
            a sink without it: the two schemas are never mixed in one file.
        fsync: ``os.fsync`` after each batch (and the directory when a file is created).
        tail_bytes: how much of the newest file ``last_seq_by_device()`` reads.
    """

    _format = "CSV"
    # Rows end in \r\n; an error text's own line breaks (Python messages use \n) stay inside
    # its quoted field.
    _record_end = _LINE_END.encode()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
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
        self._overwrite = bool(overwrite)

    @property
    def columns(self) -> tuple[str, ...]:
        """The header written to (and expected in) the file."""
        return SERVICE_COLUMNS if self.seq_column else COLUMNS

    def _start_series(self) -> None:
        if not self._overwrite:
            return
        # overwrite=True: the capture starts again at `path`; older rotated files go too,
        # otherwise a later append would continue an old series.
        for old in reversed(rotated_paths(self._base_path)):
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ServomexSinkWriteError(
                    f"could not replace {old}: {exc}", context=file_context(old)
                ) from exc
        self._index = 0

    def _prepare(self, path: Path) -> tuple[BinaryIO, bytes]:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        except OSError as exc:
            raise self._write_error(f"could not open {path}", exc) from exc
        prefix = b""
        if size == 0:
            prefix = _SERVICE_HEADER if self.seq_column else _HEADER
        else:
            self._check_header(path)
            if not ends_with_newline(path):
                logger.warning("%s does not end with a line break; starting a new line", path)
                prefix = _LINE_END.encode()
        try:
            handle = open_append(path)
        except OSError as exc:
            raise self._write_error(f"could not open {path}", exc) from exc
        return handle, prefix

    def _check_header(self, path: Path) -> None:
        try:
            with open(path, encoding="utf-8", newline="") as existing:
                header = next(csv.reader(existing), [])
        except OSError as exc:
            raise self._write_error(f"could not read {path}", exc) from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ServomexSinkSchemaError(
                f"existing file {path} is not a CSV file of this schema ({exc}); "
                "pass overwrite=True to replace it, or choose another path",
                context=file_context(path).merged(header="different"),
            ) from exc
        expected = self.columns
        if tuple(header) == expected:
            return
        if tuple(header) in (COLUMNS, SERVICE_COLUMNS):
            has, wants = ("with", "without") if not self.seq_column else ("without", "with")
            raise ServomexSinkSchemaError(
                f"existing file {path} has {len(header)} columns, {has} the service column "
                f"seq; refusing to append {len(expected)}-column rows {wants} it (service rows "
                "and library rows are never mixed in one file): choose another path, or pass "
                "overwrite=True to replace it",
                context=file_context(path).merged(header="different"),
            )
        if tuple(header) == LEGACY_COLUMNS:
            raise ServomexSinkSchemaError(
                f"existing file {path} was written by an older version of servomexlib "
                f"({len(LEGACY_COLUMNS)} columns, without value_state); refusing to append "
                f"{len(expected)}-column rows to it: the file stays readable as it is; write to "
                "another path, or pass overwrite=True to replace it",
                context=file_context(path).merged(header="older"),
            )
        raise ServomexSinkSchemaError(
            f"existing file {path} has a different CSV header "
            f"({len(header)} columns, expected {len(expected)}: {','.join(expected[:3])},…); "
            "refusing to append: pass overwrite=True to replace it, or choose another path",
            context=file_context(path).merged(header="different"),
        )

    def _encode(self, samples: Sequence[Sample], seqs: list[int] | None) -> bytes:
        if seqs is None:
            return csv_text(batch_columns(samples)).encode("utf-8")
        columns = with_seqs(batch_columns(samples), seqs)
        return csv_text(columns, _SERVICE_CELLS).encode("utf-8")

    def _row_seq(self, line: bytes) -> tuple[str, int] | None:
        try:
            fields = next(csv.reader([line.decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error):
            return None
        if len(fields) != len(SERVICE_COLUMNS) or not fields[-1].isdigit():
            return None  # the header, or a line damaged by a crash
        return fields[0], int(fields[-1])

    def _open_sync(self) -> None:
        if self._overwrite:
            self._index = 0
            self._start_series()
            path = self.path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise self._write_error(f"could not replace {path}", exc) from exc
            self._open_file()
            # Only the first open() of this sink replaces; a reopen appends what it wrote.
            self._overwrite = False
            return
        super()._open_sync()
