"""What an existing ``capture --out`` file holds, and whether capture may write to it (docs/cli.md).

Theory of operation
-------------------
``servomex capture`` must never corrupt a file: appending JSON lines to a Parquet file, CSV rows
to a SQLite database or 22-column rows to a 21-column CSV all leave something no reader can
use. So before any I/O the command asks :func:`sniff_recording` what the file is, looking only
at bytes a reader of that format would trust, and :func:`plan_output` decides:

* **CSV** — the first line, read as CSV, equals the schema header
  (:data:`servomexlib.sinks.schema.COLUMNS`). A header equal to the columns of files written
  before ``value_state`` existed (:data:`~servomexlib.sinks.schema.LEGACY_COLUMNS`) is an
  *older* recording: readers (``servomex plot``) still accept it,
  but rows of today's schema cannot be added to it.
* **JSONL** — the first and the last complete lines are JSON objects whose keys are the schema
  columns in order (or the older columns: an older recording). A crashed capture may leave a
  partial last line; the sink starts a new line before appending, so only complete lines count.
* **SQLite** — the 16-byte magic ``SQLite format 3\\0`` and a ``samples`` table holding (at least)
  the columns of the older schema; a table without ``value_state`` is appendable, the sink reports
  the missing column once (docs/recording-and-sinks.md). The database is opened read-only, and
  ``immutable`` when it has no write-ahead log, so inspecting it creates no ``-wal``/``-shm`` files
  and changes no byte.
* **Parquet** — the magic ``PAR1``. Parquet files are never appended to (the format has no
  append; :class:`~servomexlib.sinks.ParquetSink` refuses existing files). A journalled
  capture that crashed leaves ``<out>.parts/``: that too is a Parquet recording in progress.
* An empty file is a new file; anything else is "not a recording".

:func:`plan_output` then returns what to do — create, append (same format, appendable) or
replace (only with ``--overwrite``) — or raises :class:`~servomexlib.errors.
ServomexValidationError` with one line that names the file, what it holds and the
``--overwrite`` flag. Pure apart from reading the file: no sink is opened here.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import enum
import io
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..errors import ServomexValidationError
from ..sinks.schema import COLUMNS, LEGACY_COLUMNS

__all__ = [
    "FORMAT_NAMES",
    "LEGACY_COLUMNS",
    "OutputAction",
    "OutputPlan",
    "Recognised",
    "plan_output",
    "remove_recording",
    "sniff_recording",
]

#: ``--format`` value → the name used in messages.
FORMAT_NAMES: Final[dict[str, str]] = {
    "csv": "CSV",
    "jsonl": "JSONL",
    "sqlite": "SQLite",
    "parquet": "Parquet",
}

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_PARQUET_MAGIC: Final = b"PAR1"
#: Bytes read from each end of a text file: a line of the schema is well under 2 KiB.
_PROBE_BYTES: Final = 64 * 1024
_TABLE: Final = "samples"


@dataclasses.dataclass(frozen=True, slots=True)
class Recognised:
    """What :func:`sniff_recording` found.

    Attributes:
        format: ``"csv"``, ``"jsonl"``, ``"sqlite"`` or ``"parquet"`` when the file is a
            recording of that format (current or older schema); None otherwise.
        exists: False when nothing is at the path (and no Parquet journal either).
        empty: an existing file of 0 bytes (treated as new).
        older: a recording of the older schema (without ``value_state``).
        directory: the path is a directory.
        description: what the file holds, for messages ("a CSV recording", …).
    """

    format: str | None
    exists: bool = True
    empty: bool = False
    older: bool = False
    directory: bool = False
    description: str = ""

    @property
    def is_new(self) -> bool:
        """Nothing worth keeping is there: missing, or an empty file."""
        return not self.exists or self.empty


class OutputAction(enum.StrEnum):
    """What capture does with ``--out``."""

    CREATE = "create"  # nothing there (or an empty file): a new recording
    APPEND = "append"  # a recording of the same format and schema: rows are added
    REPLACE = "replace"  # --overwrite: whatever is there is replaced


@dataclasses.dataclass(frozen=True, slots=True)
class OutputPlan:
    """The decision of :func:`plan_output` and what it was based on."""

    action: OutputAction
    found: Recognised


def _article(name: str) -> str:
    return "an" if name[:1].upper() in "AEIOS" else "a"


def _described(fmt: str, *, older: bool = False, extra: str = "") -> Recognised:
    name = FORMAT_NAMES[fmt]
    if older:
        text = f"an older {name} recording (without the value_state column)"
    else:
        text = f"{_article(name)} {name} recording{extra}"
    return Recognised(format=fmt, older=older, description=text)


def _not_a_recording(why: str = "") -> Recognised:
    return Recognised(format=None, description="something that is not a recording" + why)


def _csv_header(first_line: str) -> tuple[str, ...] | None:
    try:
        return tuple(next(csv.reader(io.StringIO(first_line)), []))
    except csv.Error:
        return None


def _json_keys(line: str) -> tuple[str, ...] | None:
    try:
        document = json.loads(line)
    except ValueError:
        return None
    return tuple(document) if isinstance(document, dict) else None


def _schema_of(columns: Sequence[str] | None) -> str | None:
    """ "current" or "older" when ``columns`` are the schema's, else None."""
    if columns is None:
        return None
    columns = tuple(columns)
    if columns == COLUMNS:
        return "current"
    if columns == LEGACY_COLUMNS:
        return "older"
    return None


def _sniff_text(path: Path, head: bytes, size: int) -> Recognised:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The probe may end inside a multi-byte character; only that is forgiven.
        try:
            text = head[:-4].decode("utf-8") if len(head) == _PROBE_BYTES else ""
        except UnicodeDecodeError:
            text = ""
        if not text:
            return _not_a_recording()
    first, newline, _ = text.partition("\n")
    if not newline and size > len(head):
        return _not_a_recording()  # no line break in the first 64 KiB: not one of ours
    if first.lstrip().startswith("{"):
        return _sniff_jsonl(path, first, size)
    schema = _schema_of(_csv_header(first.rstrip("\r")))
    if schema is None:
        return _not_a_recording()
    return _described("csv", older=schema == "older")


def _last_complete_line(path: Path, size: int) -> str | None:
    """The last line of ``path`` that ends with a line break (a crash may leave a partial one)."""
    with path.open("rb") as f:
        f.seek(max(0, size - _PROBE_BYTES))
        tail = f.read()
    end = tail.rfind(b"\n")
    if end < 0:
        return None
    start = tail.rfind(b"\n", 0, end) + 1
    if start == 0 and size > len(tail):
        return None  # the line starts before the probe: longer than any line of ours
    try:
        return tail[start:end].decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return None


def _sniff_jsonl(path: Path, first: str, size: int) -> Recognised:
    first_schema = _schema_of(_json_keys(first))
    if first_schema is None:
        return _not_a_recording()
    last = _last_complete_line(path, size)
    last_schema = first_schema if last is None else _schema_of(_json_keys(last))
    if last_schema is None:
        return _not_a_recording(" (its last line is not a row of the schema)")
    if first_schema != last_schema:
        return _not_a_recording(" (its lines mix two schemas)")
    return _described("jsonl", older=first_schema == "older")


def _sqlite_columns(path: Path) -> list[str] | None:
    """The columns of the ``samples`` table (None: no such table).

    Raises:
        sqlite3.Error: the database cannot be read.
    """
    wal = path.with_name(path.name + "-wal")
    # Without a write-ahead log "immutable" reads the file as it is and creates nothing next
    # to it; with one, read-only mode is needed so committed rows in the log are seen.
    query = "?mode=ro" if wal.exists() else "?mode=ro&immutable=1"
    con = sqlite3.connect(path.resolve().as_uri() + query, uri=True)
    try:
        row = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
        ).fetchone()
        if row is None:
            return None
        return [str(r[1]) for r in con.execute(f"PRAGMA table_info({_TABLE})")]
    finally:
        con.close()


def _sniff_sqlite(path: Path) -> Recognised:
    try:
        columns = _sqlite_columns(path)
    except sqlite3.Error as exc:
        return _not_a_recording(f" (a SQLite database that cannot be read: {exc})")
    if columns is None:
        return _not_a_recording(f" (a SQLite database without a {_TABLE!r} table)")
    missing = [c for c in LEGACY_COLUMNS if c not in columns]
    if missing:
        return _not_a_recording(
            f" (a SQLite database whose {_TABLE!r} table lacks {', '.join(missing[:3])}…)"
        )
    return _described("sqlite", extra=f" ({_TABLE!r} table)")


def sniff_recording(path: str | Path) -> Recognised:
    """Look at ``path`` and say what recording it holds. Reads at most 128 KiB (plus the
    schema of a SQLite database); never writes.

    Raises:
        ServomexValidationError: the path exists but cannot be read.
    """
    path = Path(path)
    journal = path.with_name(path.name + ".parts")
    try:
        if path.is_dir():
            return Recognised(format=None, directory=True, description="a directory")
        if not path.exists():
            if journal.is_dir():
                return _described(
                    "parquet", extra=f" left unfinished by an interrupted capture ({journal})"
                )
            return Recognised(format=None, exists=False, description="nothing")
        size = path.stat().st_size
        if size == 0:
            return Recognised(format=None, empty=True, description="an empty file")
        with path.open("rb") as f:
            head = f.read(_PROBE_BYTES)
        if head.startswith(_SQLITE_MAGIC):
            return _sniff_sqlite(path)
        if head.startswith(_PARQUET_MAGIC):
            return _described("parquet")
        return _sniff_text(path, head, size)
    except OSError as exc:
        raise ServomexValidationError(f"cannot read --out {str(path)!r}: {exc}") from exc


def _refusal(out: str, found: Recognised, fmt: str) -> str:
    name = FORMAT_NAMES[fmt]
    fix = "pass --overwrite to replace it, or choose another --out"
    if found.format == fmt == "parquet":
        return (
            f"{out} already holds {found.description}; Parquet files cannot be appended to: {fix}"
        )
    if found.format == fmt and found.older:
        return (
            f"{out} is {found.description}: rows of today's schema cannot be appended to it "
            f"(servomex plot still reads it); {fix}"
        )
    if found.format is not None:
        return f"{out} already holds {found.description}, not {name}: {fix}"
    return f"{out} already exists and holds {found.description}: {fix}"


def plan_output(out: str, fmt: str, *, overwrite: bool) -> OutputPlan:
    """Decide what ``capture --out out --format fmt`` does with the file at ``out``.

    Returns:
        CREATE for a missing or empty file; APPEND for a recording of format ``fmt`` with
        the current schema (CSV, JSONL; SQLite with a ``samples`` table), Parquet excepted;
        REPLACE for anything else when ``overwrite`` is set.

    Raises:
        ServomexValidationError: ``out`` is a directory; or it holds something capture may
            not append to (another format, an older schema, Parquet, not a recording) and
            ``overwrite`` is not set — the message names the file, what it holds and
            ``--overwrite``.
    """
    if fmt not in FORMAT_NAMES:
        raise ServomexValidationError(f"unknown capture format {fmt!r}")
    found = sniff_recording(out)
    if found.directory:
        raise ServomexValidationError(f"--out {out} is a directory; give a file name")
    if found.is_new:
        return OutputPlan(OutputAction.CREATE, found)
    if overwrite:
        return OutputPlan(OutputAction.REPLACE, found)
    appendable = found.format == fmt and not found.older and fmt != "parquet"
    if appendable:
        return OutputPlan(OutputAction.APPEND, found)
    raise ServomexValidationError(_refusal(out, found, fmt))


def remove_recording(out: str | Path) -> None:
    """Remove the file at ``out`` and the files SQLite keeps beside a database (``-wal``,
    ``-shm``, ``-journal``), as ``--overwrite`` does before a new recording starts. A missing
    file is fine.

    Raises:
        ServomexValidationError: a file could not be removed.
    """
    path = Path(out)
    for name in (path, *(path.with_name(path.name + e) for e in ("-wal", "-shm", "-journal"))):
        try:
            with contextlib.suppress(FileNotFoundError):
                if not name.is_dir():
                    name.unlink()
        except OSError as exc:
            raise ServomexValidationError(f"could not replace {name}: {exc}") from exc
