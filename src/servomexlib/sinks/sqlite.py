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
INSERT and so take their default (NULL unless the table declares another). A table created by a
version before ``value_state`` (21 columns) thus keeps receiving rows, without that column, and
the one warning says so.

Throughput: what a batch costs is mostly binding parameters. Python's ``sqlite3`` binds exact
``int``/``float``/``str`` directly but sends ``bool`` and ``None`` through its adapter
machinery, which costs several times more per value, and a sample row has 9 flags and usually
3-4 Nones. So each batch is first turned into columns and every column is classified: a column
that is None in every row becomes the literal ``NULL``, a flag column that is the same in every
row the literal ``0``/``1``, a text column with one value in every row (device, protocol) a
numbered parameter bound once per statement; only the rest are bound per row (flags as ints).
The stored values are exactly those of binding every value one by one. Rows go in multi-row
``INSERT … VALUES (…), (…)`` statements of 64 rows and, for the remainder, of 32, 16, … 1 rows,
so each batch "shape" needs at most seven statements, compiled once and kept in the
connection's statement cache.

Service rows (``seq_column=True``): the table has a 23rd column ``seq INTEGER NOT NULL`` and an
index on ``(device, seq)``; ``last_seq_by_device()`` is ``SELECT device, MAX(seq) … GROUP BY
device`` (one index walk per device). Each batch being one transaction, what the table holds is
whole batches, so the highest ``seq`` per device marks exactly what is stored. A sink without
the seq column refuses a table that has one (its NOT NULL would fail every batch), and a
service sink refuses a table without it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
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
from .schema import (
    COLUMNS,
    SCHEMA,
    SERVICE_SCHEMA,
    ColumnType,
    batch_columns,
    repeated,
    select_columns,
    with_seqs,
)

__all__ = ["SqliteSink"]

T = TypeVar("T")

_JOURNAL_MODES: Final = frozenset({"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"})
_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: Rows per multi-row INSERT: at most 64 x 22 = 1408 parameters, well below SQLite's limit of
#: 32766 host parameters (SQLite >= 3.32; Python 3.13 bundles 3.40 or later).
_CHUNK_ROWS: Final = 64
#: Distinct INSERT texts kept (shape x row count); the set is cleared when it grows past this.
_SQL_CACHE_LIMIT: Final = 256
#: Statements kept compiled by the connection (the ``sqlite3`` default is 128).
_CACHED_STATEMENTS: Final = 256


class SqliteSink(BaseSink):
    """Write samples into an SQLite table (docs/recording-and-sinks.md).

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
        seq_column: service rows: the 23-column schema with ``seq`` (``write_many(...,
            seqs=)``, ``last_seq_by_device()``); see the module documentation.

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
        seq_column: bool = False,
    ) -> None:
        super().__init__(seq_column=seq_column)
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
        self._inserts: _InsertBuilder | None = None
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

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        await self._call(self._write_sync, samples, seqs)

    async def _last_seqs(self) -> dict[str, int]:
        return await self._call(self._last_seqs_sync)

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
            conn = sqlite3.connect(
                path,
                autocommit=True,
                timeout=self.busy_timeout_ms / 1000.0,
                cached_statements=_CACHED_STATEMENTS,
            )
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
                    for c in (SERVICE_SCHEMA if self.seq_column else SCHEMA)
                )
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
                if self.seq_column:
                    index = quote_identifier(f"{self.table}_device_seq"[:63])
                    conn.execute(f'CREATE INDEX IF NOT EXISTS {index} ON {table} ("device", "seq")')
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
        if ("seq" in present) != self.seq_column:
            has = "has" if "seq" in present else "has no"
            wants = "with" if self.seq_column else "without"
            raise ServomexSinkSchemaError(
                f"SQLite table {self.table!r} in {self.path} {has} a seq column; refusing to "
                f"store rows {wants} seq in it (service rows and library rows are never mixed "
                "in one table): choose another table or file",
                context=self._context(),
            )
        self._columns = select_columns(present, f"SQLite table {self.table}")
        if self.seq_column:
            self._columns = (*self._columns, "seq")
        self._inserts = _InsertBuilder(table, self._columns)

    def _write_sync(self, samples: Sequence[Sample], seqs: list[int] | None) -> None:
        if self._rotation.enabled and self._rotation.due(self._file_size()):
            self._rotate()
        conn = self._conn
        inserts = self._inserts
        assert conn is not None
        assert inserts is not None
        statements = inserts.statements(with_seqs(batch_columns(samples), seqs))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ServomexSinkWriteError(
                f"could not write {len(samples)} samples to SQLite table {self.table} in "
                f"{self.path} (batch rolled back): {exc}",
                context=self._context(),
            ) from exc

    def _last_seqs_sync(self) -> dict[str, int]:
        # Rotation: the newest file of the series that holds rows (all of them hold whole
        # batches; a file just started may be empty).
        for index in range(self._index, -1, -1):
            path = rotation_path(self._base_path, index)
            if index != self._index and not path.exists():
                continue
            try:
                if index == self._index:
                    assert self._conn is not None
                    rows = self._conn.execute(self._max_seq_sql()).fetchall()
                else:
                    with contextlib.closing(sqlite3.connect(path)) as old:
                        rows = old.execute(self._max_seq_sql()).fetchall()
            except sqlite3.Error as exc:
                raise ServomexSinkWriteError(
                    f"could not read the last seqs of SQLite table {self.table} in {path}: {exc}",
                    context=self._context(),
                ) from exc
            if rows:
                return {str(device): int(seq) for device, seq in rows}
        return {}

    def _max_seq_sql(self) -> str:
        return f'SELECT "device", MAX("seq") FROM {quote_identifier(self.table)} GROUP BY "device"'

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


class _InsertBuilder:
    """Turns a batch of rows into multi-row INSERT statements and their parameters.

    See the module documentation for why. Each column of the batch is classified (``mode``):
    ``"NULL"`` (None in every row), ``"0"``/``"1"`` (a flag column, the same bool in every row),
    ``"?k"`` (a text column with one value, bound once as parameter ``k``) or ``"?"`` (bound per
    row; a flag that ``is`` True/False as the int 1/0, anything else unchanged).

    Constancy is :func:`~.schema.repeated` (C loops): for text and None it means the same stored
    value; for a flag column every value equals its first, a bool — ChannelStatus flags are
    bools, and the int literal stores what binding ``True``/``False`` (adapted to 1/0) stores.
    """

    __slots__ = ("_flags", "_indexes", "_prefix", "_sql")

    def __init__(self, table_sql: str, columns: tuple[str, ...]) -> None:
        names = ", ".join(quote_identifier(c) for c in columns)
        self._prefix = f"INSERT INTO {table_sql} ({names}) VALUES "
        #: The schema positions of the columns the table has, in schema order (``seq``, of
        #: service rows, is the 23rd).
        names_in_order = (*COLUMNS, "seq")
        self._indexes = tuple(names_in_order.index(name) for name in columns)
        self._flags = tuple(
            SERVICE_SCHEMA[names_in_order.index(name)].type is ColumnType.BOOL for name in columns
        )
        self._sql: dict[tuple[tuple[str, ...], int], str] = {}

    def statements(self, batch: list[list[Any]]) -> list[tuple[str, list[Any]]]:
        """The ``(sql, parameters)`` pairs that insert the rows of ``batch``, in order.

        ``batch`` holds the 22 schema columns of n >= 1 rows (:func:`~.schema.batch_columns`).
        """
        n = len(batch[0])
        modes: list[str] = []
        constants: list[Any] = []
        variable: list[list[Any]] = []
        for index, is_flag in zip(self._indexes, self._flags, strict=True):
            column = batch[index]
            if repeated(column):
                first = column[0]
                if first is None:
                    modes.append("NULL")
                    continue
                if is_flag:
                    modes.append("1" if first else "0")
                    continue
                if type(first) is str:
                    constants.append(first)
                    modes.append(f"?{len(constants)}")
                    continue
            modes.append("?")
            if is_flag:
                variable.append([1 if v is True else 0 if v is False else v for v in column])
            else:
                variable.append(column)
        shape = tuple(modes)
        k = len(constants)
        width = len(variable)
        out: list[tuple[str, list[Any]]] = []
        start = 0
        size = _CHUNK_ROWS
        while start < n:
            while size > n - start:
                size //= 2
            # The parameter list is filled column by column with strided slice assignments
            # (C loops, no per-row tuples): row r, column j goes to k + r * width + j.
            params = constants + [None] * (size * width)
            for j, values in enumerate(variable):
                params[k + j :: width] = values[start : start + size]
            out.append((self._statement(shape, k, size), params))
            start += size
        return out

    def _statement(self, shape: tuple[str, ...], constants: int, rows: int) -> str:
        """The INSERT of ``rows`` rows of ``shape`` (cached; ``constants`` = number of ?k)."""
        key = (shape, rows)
        sql = self._sql.get(key)
        if sql is None:
            row = "(" + ", ".join(shape) + ")"
            first = row
            if constants and "?" in shape:
                # SQLite numbers an anonymous "?" one above the largest number used so far:
                # naming the first per-row parameter ?k+1 keeps ?1..?k for the constants even
                # when a constant column comes after it.
                marks = list(shape)
                marks[marks.index("?")] = f"?{constants + 1}"
                first = "(" + ", ".join(marks) + ")"
            if len(self._sql) >= _SQL_CACHE_LIMIT:
                self._sql.clear()
            sql = self._prefix + ", ".join([first, *[row] * (rows - 1)])
            self._sql[key] = sql
        return sql


def _choice(value: str, allowed: frozenset[str], what: str) -> str:
    text = str(value).upper()
    if text not in allowed:
        raise ServomexValidationError(
            f"invalid {what} {value!r}; expected one of {', '.join(sorted(allowed))}"
        )
    return text


#: Extra advice in the "has no column" warning, per column.
