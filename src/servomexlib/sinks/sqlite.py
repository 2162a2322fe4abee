"""SQLite sink: WAL journal, one transaction per batch, one connection on one worker thread.

Theory of operation
-------------------
``sqlite3`` is blocking, so the sink owns a single-thread executor: the connection is created,
used and closed on that one thread, and the event loop only waits for it (the wait is never
abandoned on cancellation, so a started batch always ends in COMMIT or ROLLBACK).

The connection is in autocommit mode and every ``write_many`` is wrapped explicitly in
``BEGIN IMMEDIATE`` … ``COMMIT`` (the write lock is taken up front, so a concurrent writer
makes the batch wait up to ``busy_timeout_ms`` instead of failing half way); on any error the
transaction is rolled back and :class:`ServomexSinkWriteError` is raised, so the file holds
whole batches only. With the default ``journal_mode="WAL"`` and ``synchronous="NORMAL"`` a
committed batch survives the process being killed (SIGKILL); only an operating-system crash
or power cut can lose the last commits (``synchronous="FULL"`` closes that window too).

Against an existing table the sink writes the schema columns the table has (those it lacks are
dropped with one warning each); table columns that are not in the schema are left out of the
INSERT and so take their default (NULL unless the table declares another).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio

from ..devices.models import Sample
from ..errors import (
    ErrorContext,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from .base import (
    BaseSink,
    Rotation,
    latest_rotation_index,
    logger,
    quote_identifier,
    rotation_path,
    validate_identifier,
)
from .schema import COLUMNS, SCHEMA, RowValues, sample_to_values

__all__ = ["SqliteSink"]

T = TypeVar("T")

_JOURNAL_MODES: Final = frozenset({"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"})
_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: Rows per multi-row INSERT: 64 x 21 = 1344 parameters, well below SQLite's limit of 32766
#: host parameters (SQLite >= 3.32; Python 3.13 bundles 3.40 or later).
_CHUNK_ROWS: Final = 64


class SqliteSink(BaseSink):
    """Write samples into an SQLite table (api.md §10).

    Args:
        path: the database file (created if missing; parent directories too).
        table: table name, ``^[A-Za-z_][A-Za-z0-9_]{0,62}$``.
        create_table: run ``CREATE TABLE IF NOT EXISTS`` with the schema's columns and types
            (TEXT, REAL, INTEGER; booleans as INTEGER 0/1). With False the table must exist
            and its columns are read with ``PRAGMA table_info``.
        journal_mode: ``PRAGMA journal_mode`` (WAL by default).
        synchronous: ``PRAGMA synchronous`` (NORMAL by default).
        busy_timeout_ms: how long a batch waits for another writer's lock.
        rotate_bytes, rotate_seconds: optional rotation into ``stem.0001.db``, … (each file a
            complete database with the table); checked before each batch, which is never
            split. Requires ``create_table=True``.

    Raises:
        ServomexValidationError: bad table name, journal mode or synchronous level.
        ValueError: bad rotation arguments.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "samples",
        create_table: bool = True,
        journal_mode: str = "WAL",
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._base_path = Path(path)
        self.table = validate_identifier(table, "table")
        self.create_table = bool(create_table)
        self.journal_mode = _choice(journal_mode, _JOURNAL_MODES, "journal_mode")
        self.synchronous = _choice(synchronous, _SYNCHRONOUS, "synchronous")
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int):
            raise ValueError(f"busy_timeout_ms must be an integer, got {busy_timeout_ms!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms!r}")
        self.busy_timeout_ms = busy_timeout_ms
        self._rotation = Rotation(rotate_bytes, rotate_seconds, clock)
        if self._rotation.enabled and not self.create_table:
            raise ValueError("rotation needs create_table=True (each new file needs the table)")
        self._index = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._insert_sql = ""
        self._insert_chunk_sql = ""
        self._pick: Callable[[RowValues], RowValues] | None = None
        self._columns: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """The database file being written (the newest of the series when rotating)."""
        return rotation_path(self._base_path, self._index)

    @property
    def columns(self) -> tuple[str, ...]:
        """The schema columns actually written (known after ``open()``)."""
        return self._columns

    def __repr__(self) -> str:
        return f"SqliteSink(path={str(self.path)!r}, table={self.table!r}, open={self.is_open})"

    # -- worker thread ---------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        assert executor is not None
        future = executor.submit(fn, *args)
        # Not abandoned on cancellation: the batch always finishes (COMMIT or ROLLBACK).
        return await anyio.to_thread.run_sync(future.result)

    async def _open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="servomexlib-sqlite"
        )
        try:
            await self._call(self._open_sync)
        except BaseException:
            await self._shutdown()
            raise

    async def _write(self, samples: Sequence[Sample]) -> None:
        await self._call(self._write_sync, samples)

    async def _close(self) -> None:
        try:
            if self._executor is not None:
                await self._call(self._close_sync)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await anyio.to_thread.run_sync(executor.shutdown)

    # -- on the worker thread ------------------------------------------------------------------

    def _context(self) -> ErrorContext:
        return ErrorContext(extra={"path": str(self.path), "table": self.table})

    def _open_sync(self) -> None:
        if self._rotation.enabled:
            self._index = latest_rotation_index(self._base_path)
        self._connect()

    def _connect(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, autocommit=True, timeout=self.busy_timeout_ms / 1000.0)
        except (OSError, sqlite3.Error) as exc:
            raise ServomexSinkWriteError(
                f"could not open SQLite database {path}: {exc}", context=self._context()
            ) from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._rotation.restart()

    def _setup(self, conn: sqlite3.Connection) -> None:
        table = quote_identifier(self.table)
        try:
            conn.execute(f"PRAGMA journal_mode={self.journal_mode}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            if self.create_table:
                columns = ", ".join(
                    f"{quote_identifier(c.name)} {c.type.sqlite}"
                    + ("" if c.nullable else " NOT NULL")
                    for c in SCHEMA
                )
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        except sqlite3.Error as exc:
            raise ServomexSinkWriteError(
                f"could not prepare SQLite table {self.table} in {self.path}: {exc}",
                context=self._context(),
            ) from exc
        if not info:
            raise ServomexSinkSchemaError(
                f"SQLite table {self.table!r} does not exist in {self.path} "
                "(create it, or pass create_table=True)",
                context=self._context(),
            )
        present = {row[1] for row in info}
        self._columns, self._pick = _select_columns(present, f"SQLite table {self.table}")
        names = ", ".join(quote_identifier(c) for c in self._columns)
        marks = "(" + ", ".join("?" for _ in self._columns) + ")"
        self._insert_sql = f"INSERT INTO {table} ({names}) VALUES {marks}"
        self._insert_chunk_sql = (
            f"INSERT INTO {table} ({names}) VALUES {', '.join([marks] * _CHUNK_ROWS)}"
        )

    def _write_sync(self, samples: Sequence[Sample]) -> None:
        if self._rotation.enabled and self._rotation.due(self._file_size()):
            self._rotate()
        conn = self._conn
        assert conn is not None
        pick = self._pick
        if pick is None:
            rows = [sample_to_values(s) for s in samples]
        else:
            rows = [pick(sample_to_values(s)) for s in samples]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Full chunks as multi-row INSERTs (fewer statement steps), the rest one by one.
                whole = len(rows) - len(rows) % _CHUNK_ROWS
                chunk_sql = self._insert_chunk_sql
                for start in range(0, whole, _CHUNK_ROWS):
                    flat = list(chain.from_iterable(rows[start : start + _CHUNK_ROWS]))
                    conn.execute(chunk_sql, flat)
                conn.executemany(self._insert_sql, rows[whole:])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ServomexSinkWriteError(
                f"could not write {len(rows)} samples to SQLite table {self.table} in "
                f"{self.path} (batch rolled back): {exc}",
                context=self._context(),
            ) from exc

    def _file_size(self) -> int:
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return size

    def _rotate(self) -> None:
        old = self.path
        self._close_sync()
        self._index += 1
        self._connect()
        logger.info("rotated %s to %s", old, self.path)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise ServomexSinkWriteError(
                    f"could not close SQLite database {self.path}: {exc}",
                    context=self._context(),
                ) from exc


def _choice(value: str, allowed: frozenset[str], what: str) -> str:
    text = str(value).upper()
    if text not in allowed:
        raise ServomexValidationError(
            f"invalid {what} {value!r}; expected one of {', '.join(sorted(allowed))}"
        )
    return text


def _select_columns(
    present: set[str], where: str
) -> tuple[tuple[str, ...], Callable[[RowValues], RowValues] | None]:
    """The schema columns ``present`` in the target, and a picker for their row values.

    Schema columns the target lacks are dropped with one warning each. The picker is None when
    every column is present (the row is used as is).
    """
    keep = [i for i, name in enumerate(COLUMNS) if name in present]
    for name in COLUMNS:
        if name not in present:
            logger.warning("%s has no column %r: its values are dropped", where, name)
    if not keep:
        raise ServomexSinkSchemaError(f"{where} has none of the sample columns")
    columns = tuple(COLUMNS[i] for i in keep)
    if len(keep) == len(COLUMNS):
        return columns, None
    getter = operator.itemgetter(*keep)
    if len(keep) == 1:
        return columns, lambda row: (getter(row),)
    return columns, getter
