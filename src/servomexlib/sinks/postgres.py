"""PostgreSQL sink (asyncpg, extra ``postgres``): binary COPY into a validated table.

Theory of operation
-------------------
asyncpg is imported at ``open()``; when it is missing the sink raises
:class:`ServomexSinkDependencyError` naming ``pip install 'servomexlib[postgres]'``.

asyncpg runs only on asyncio. On asyncio the sink awaits it directly on the caller's loop. On any
other anyio backend (trio) the sink starts a **private asyncio event loop in one worker thread**
at ``open()`` and runs every database coroutine there, the calling task waiting in
``anyio.to_thread.run_sync`` (never abandoned, so a started batch finishes before a cancellation
is delivered); ``close()`` closes the pool and stops that loop. Both paths share the code below.

Each ``write_many`` is one statement on one pooled connection: binary ``COPY … FROM STDIN`` by
default, otherwise a transaction with ``executemany`` of an ``INSERT … VALUES ($1, …)``. Either
way a batch is stored whole or not at all. The COPY data is encoded by the sink itself, a column
at a time (:mod:`.pgcopy`), when the table's columns have the declared types; otherwise asyncpg
encodes the rows for the table's own types (``copy_records_to_table``).

Service rows (``seq_column=True``): the table has a 23rd column ``seq bigint NOT NULL`` and,
created with it (``create_table=True``), a UNIQUE index on ``(device, seq, COALESCE(channel,
''))`` — the COALESCE makes the error row of a failed tick (channel NULL) unique too, on every
PostgreSQL version. Every batch then goes through ``… ON CONFLICT DO NOTHING``: binary COPY
into a per-connection temporary staging table (``ON COMMIT DELETE ROWS``) and ``INSERT INTO
table SELECT … FROM staging ON CONFLICT DO NOTHING`` in one transaction (or ``executemany`` of
``INSERT … ON CONFLICT DO NOTHING``), so a batch stored twice — the one a killed service could
not acknowledge — is held once. ``last_seq_by_device()`` is ``SELECT device, MAX(seq) … GROUP BY
device``.

Secrets: the password (given as ``password=`` or inside the DSN) never appears in ``repr``,
``target()``, log lines or the messages of the errors this sink raises; an underlying error
whose text contains it is not chained either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import re
import struct
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn, TypeVar

import anyio

from ..devices.models import Sample
from ..errors import (
    ErrorContext,
    ServomexSinkDependencyError,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from .base import BaseSink, logger, quote_identifier, validate_identifier
from .pgcopy import PG_TYPE_NAMES, copy_payload
from .schema import (
    COLUMNS,
    SCHEMA,
    SERVICE_SCHEMA,
    ColumnType,
    RowValues,
    batch_columns,
    select_columns,
    with_seqs,
)

__all__ = ["PostgresConfig", "PostgresSink"]

T = TypeVar("T")

_INSTALL_HINT: Final = "pip install 'servomexlib[postgres]'"
#: The staging table of service batches (temporary: one per connection, emptied at COMMIT).
_STAGE: Final = "_servomexlib_stage"
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Where and how :class:`PostgresSink` writes (docs/recording-and-sinks.md).

    Give either ``dsn`` (``postgresql://user:password@host:port/database``) or ``host`` (with
    ``port``, ``user``, ``password``, ``database``), not both. ``schema`` and ``table`` must
    match ``^[A-Za-z_][A-Za-z0-9_]{0,62}$``. ``repr`` never shows the password or the DSN; use
    :meth:`target` to log where the sink writes.

    Raises:
        ServomexValidationError: both or neither of ``dsn``/``host``, bad identifiers, pool
            sizes or timeouts.
    """

    dsn: str | None = dataclasses.field(default=None, repr=False)
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    database: str | None = None
    schema: str = "public"
    table: str = "samples"
    min_size: int = 1
    max_size: int = 4
    statement_timeout_ms: int = 30000
    command_timeout_s: float = 10
    create_table: bool = False
    use_copy: bool = True

    def __post_init__(self) -> None:
        if (self.dsn is None) == (self.host is None):
            raise ServomexValidationError("PostgresConfig needs exactly one of dsn= or host=")
        validate_identifier(self.schema, "schema")
        validate_identifier(self.table, "table")
        if not (1 <= self.port <= 65535):
            raise ServomexValidationError(f"port must be 1-65535, got {self.port!r}")
        if not (0 <= self.min_size <= self.max_size and self.max_size >= 1):
            raise ServomexValidationError(
                f"pool sizes must satisfy 0 <= min_size <= max_size, max_size >= 1 "
                f"(got {self.min_size}, {self.max_size})"
            )
        if self.statement_timeout_ms < 0:
            raise ServomexValidationError("statement_timeout_ms must be >= 0 (0 = no limit)")
        if not self.command_timeout_s > 0:
            raise ServomexValidationError("command_timeout_s must be > 0")

    def target(self) -> str:
        """A log-safe description: ``postgresql://user@host:port/database schema.table``."""
        if self.dsn is not None:
            where = _redact_dsn(self.dsn)
        else:
            user = f"{self.user}@" if self.user else ""
            database = self.database or ""
            where = f"postgresql://{user}{self.host}:{self.port}/{database}"
        return f"{where} {self.schema}.{self.table}"

    def secrets(self) -> tuple[str, ...]:
        """Every form of the password that could leak into a message (longest first)."""
        found: set[str] = set()
        if self.password:
            found.add(self.password)
        if self.dsn:
            try:
                parts = urllib.parse.urlsplit(self.dsn)
                if parts.password:
                    found.update({parts.password, urllib.parse.unquote(parts.password)})
                for key, value in urllib.parse.parse_qsl(parts.query):
                    if key.lower() == "password" and value:
                        found.add(value)
            except ValueError:
                pass
            for match in _KV_PASSWORD.finditer(self.dsn):
                found.update({match.group(2), match.group(2).strip("'")})
        return tuple(sorted((s for s in found if s), key=len, reverse=True))


def _redact_dsn(dsn: str) -> str:
    """The DSN without its password (URL or key=value form)."""
    if "://" not in dsn:
        return _KV_PASSWORD.sub(r"\1***", dsn)
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "postgresql://<unparsable dsn>"
    netloc = parts.netloc.rpartition("@")
    host = netloc[2]
    user = netloc[0].partition(":")[0] if netloc[1] else ""
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() != "password"]
    )
    clean = parts._replace(netloc=f"{user}@{host}" if user else host, query=query)
    return urllib.parse.urlunsplit(clean)


def import_asyncpg() -> Any:
    """The asyncpg module, or ServomexSinkDependencyError naming the extra."""
    try:
        return importlib.import_module("asyncpg")
    except ImportError as exc:
        raise ServomexSinkDependencyError(
            f"PostgresSink needs asyncpg >= 0.30: {_INSTALL_HINT}"
        ) from exc


def _on_asyncio() -> bool:
    # asyncpg needs asyncio; anyio exposes no public backend query, and a running asyncio
    # loop in this thread is exactly the condition asyncpg needs.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _LoopThread:
    """A private asyncio loop in one daemon thread, for running asyncpg under trio."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="servomexlib-postgres", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def start(self) -> None:
        self._thread.start()
        await anyio.to_thread.run_sync(self._ready.wait)

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        async def wrapper() -> T:
            return await factory()

        future = asyncio.run_coroutine_threadsafe(wrapper(), self._loop)
        return await anyio.to_thread.run_sync(future.result)

    async def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            await anyio.to_thread.run_sync(self._thread.join)


class PostgresSink(BaseSink):
    """Write samples into a PostgreSQL table through an asyncpg pool (docs/recording-and-sinks.md).

    With ``create_table=True`` the schema and table are created if missing (text, double
    precision, boolean, bigint); otherwise (the default) the table must exist and its columns
    are read from ``information_schema.columns``: schema columns it lacks are dropped with one
    warning each, and its other columns take their defaults (NULL unless declared).

    Raises (from ``open``/``write_many``):
        ServomexSinkDependencyError: asyncpg is not installed.
        ServomexSinkSchemaError: the table does not exist (``create_table=False``) or shares
            no column with the schema.
        ServomexSinkWriteError: connection, authentication or statement failure (the message
            never contains the password).

    ``seq_column=True``: service rows with ``seq``, stored with ON CONFLICT DO NOTHING
    (module documentation); a table without a ``seq`` column is then refused, and a sink
    without it refuses a table that has one.
    """

    def __init__(self, config: PostgresConfig, *, seq_column: bool = False) -> None:
        super().__init__(seq_column=seq_column)
        if not isinstance(config, PostgresConfig):
            raise ServomexValidationError("PostgresSink needs a PostgresConfig")
        self.config = config
        self._secrets = config.secrets()
        self._asyncpg: Any = None
        self._loop_thread: _LoopThread | None = None
        self._pool: Any = None
        self._columns: tuple[str, ...] = ()
        self._indexes: tuple[int, ...] = ()
        self._types: tuple[ColumnType, ...] = ()
        self._encode_copy = False
        self._insert_sql = ""
        self._stage_sql = ""
        self._merge_sql = ""

    @property
    def columns(self) -> tuple[str, ...]:
        """The schema columns actually written (known after ``open()``)."""
        return self._columns

    def __repr__(self) -> str:
        return f"PostgresSink(target={self.config.target()!r}, open={self.is_open})"

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, factory: Callable[[], Awaitable[T]]) -> T:
        if self._loop_thread is None:
            return await factory()
        return await self._loop_thread.run(factory)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _fail(
        self,
        cls: type[ServomexSinkWriteError | ServomexSinkSchemaError],
        what: str,
        exc: BaseException,
    ) -> NoReturn:
        raw = f"{type(exc).__name__}: {exc}"
        message = f"{what} ({self.config.target()}): {self._redact(raw)}"
        error = cls(message, context=ErrorContext(extra={"target": self.config.target()}))
        if any(secret in raw for secret in self._secrets):
            raise error from None  # the cause itself would show the password
        raise error from exc

    def _db_errors(self) -> tuple[type[BaseException], ...]:
        pg = self._asyncpg
        return (pg.PostgresError, pg.InterfaceError, OSError, TimeoutError, ValueError)

    # -- life cycle --------------------------------------------------------------------------

    async def _open(self) -> None:
        self._asyncpg = import_asyncpg()
        if not _on_asyncio():
            self._loop_thread = _LoopThread()
            await self._loop_thread.start()
        try:
            await self._run(self._connect)
        except BaseException:
            await self._teardown()
            raise
        logger.info("writing samples to %s", self.config.target())

    async def _connect(self) -> None:
        cfg, pg = self.config, self._asyncpg
        try:
            self._pool = await pg.create_pool(
                dsn=cfg.dsn,
                host=cfg.host,
                port=cfg.port if cfg.host is not None else None,
                user=cfg.user,
                password=cfg.password,
                database=cfg.database,
                min_size=cfg.min_size,
                max_size=cfg.max_size,
                command_timeout=cfg.command_timeout_s,
                server_settings={
                    "application_name": "servomexlib",
                    "statement_timeout": str(cfg.statement_timeout_ms),
                },
            )
        except self._db_errors() as exc:
            self._fail(ServomexSinkWriteError, "could not connect to PostgreSQL", exc)
        try:
            async with self._pool.acquire() as conn:
                await self._prepare_table(conn)
        except self._db_errors() as exc:
            self._fail(ServomexSinkWriteError, "could not prepare the PostgreSQL table", exc)

    async def _prepare_table(self, conn: Any) -> None:
        cfg = self.config
        qualified = f"{quote_identifier(cfg.schema)}.{quote_identifier(cfg.table)}"
        if cfg.create_table:
            columns = ", ".join(
                f"{quote_identifier(c.name)} {c.type.postgres}"
                + ("" if c.nullable else " NOT NULL")
                for c in (SERVICE_SCHEMA if self.seq_column else SCHEMA)
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(cfg.schema)}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {qualified} ({columns})")
            if self.seq_column:
                index = quote_identifier(f"{cfg.table}_device_seq_channel"[:63])
                await conn.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {qualified} "
                    '("device", "seq", COALESCE("channel", \'\'))'
                )
        rows = await conn.fetch(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            cfg.schema,
            cfg.table,
        )
        if not rows:
            raise ServomexSinkSchemaError(
                f"PostgreSQL table {cfg.schema}.{cfg.table} does not exist or is not visible "
                f"({cfg.target()}); create it, or pass create_table=True",
                context=ErrorContext(extra={"target": cfg.target()}),
            )
        present = {row[0] for row in rows}
        if ("seq" in present) != self.seq_column:
            has = "has" if "seq" in present else "has no"
            wants = "with" if self.seq_column else "without"
            raise ServomexSinkSchemaError(
                f"PostgreSQL table {cfg.schema}.{cfg.table} {has} a seq column; refusing to "
                f"store rows {wants} seq in it (service rows and library rows are never mixed "
                f"in one table) ({cfg.target()})",
                context=ErrorContext(extra={"target": cfg.target()}),
            )
        self._columns = select_columns(present, f"PostgreSQL table {cfg.schema}.{cfg.table}")
        if self.seq_column:
            self._columns = (*self._columns, "seq")
        names_in_order = (*COLUMNS, "seq")
        self._indexes = tuple(names_in_order.index(name) for name in self._columns)
        self._types = tuple(SERVICE_SCHEMA[i].type for i in self._indexes)
        # Our own binary COPY encoding is only valid for the declared column types; a table
        # declared otherwise (real, numeric, timestamptz, …) is left to asyncpg's codecs.
        actual = {row[0]: row[1] for row in rows}
        self._encode_copy = all(
            actual[name] == PG_TYPE_NAMES[kind]
            for name, kind in zip(self._columns, self._types, strict=True)
        )
        names = ", ".join(quote_identifier(c) for c in self._columns)
        marks = ", ".join(f"${i}" for i in range(1, len(self._columns) + 1))
        self._insert_sql = f"INSERT INTO {qualified} ({names}) VALUES ({marks})"
        if self.seq_column:
            self._insert_sql += " ON CONFLICT DO NOTHING"
            self._stage_sql = (
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
                f"(LIKE {qualified} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._merge_sql = (
                f"INSERT INTO {qualified} ({names}) SELECT {names} FROM pg_temp.{_STAGE} "
                "ON CONFLICT DO NOTHING"
            )

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        batch = with_seqs(batch_columns(samples), seqs)
        columns = [batch[i] for i in self._indexes]
        data: bytes | None = None
        rows: list[RowValues] = []
        if self.config.use_copy and self._encode_copy:
            try:
                data = copy_payload(columns, self._types)
            except (struct.error, UnicodeEncodeError, AttributeError, TypeError) as exc:
                self._fail(
                    ServomexSinkWriteError,
                    f"could not encode {len(samples)} samples for PostgreSQL",
                    exc,
                )
        else:
            rows = list(zip(*columns, strict=True))
        await self._run(lambda: self._write_rows(data, rows, len(samples)))

    async def _write_rows(self, data: bytes | None, rows: list[RowValues], n: int) -> None:
        cfg = self.config
        try:
            async with self._pool.acquire() as conn:
                if self.seq_column:
                    await self._merge_rows(conn, data, rows)
                elif data is not None:
                    # A memoryview: asyncpg would take bytes for a file name.
                    await conn.copy_to_table(
                        cfg.table,
                        source=memoryview(data),
                        columns=self._columns,
                        schema_name=cfg.schema,
                        format="binary",
                    )
                elif cfg.use_copy:
                    await conn.copy_records_to_table(
                        cfg.table, records=rows, columns=self._columns, schema_name=cfg.schema
                    )
                else:
                    async with conn.transaction():
                        await conn.executemany(self._insert_sql, rows)
        except self._db_errors() as exc:
            self._fail(ServomexSinkWriteError, f"could not write {n} samples to PostgreSQL", exc)

    async def _merge_rows(self, conn: Any, data: bytes | None, rows: list[RowValues]) -> None:
        """Service rows: one transaction whose rows already held are dropped (ON CONFLICT)."""
        cfg = self.config
        async with conn.transaction():
            if not cfg.use_copy:
                await conn.executemany(self._insert_sql, rows)
                return
            await conn.execute(self._stage_sql)
            if data is not None:
                await conn.copy_to_table(
                    _STAGE, source=memoryview(data), columns=self._columns, format="binary"
                )
            else:
                await conn.copy_records_to_table(_STAGE, records=rows, columns=self._columns)
            await conn.execute(self._merge_sql)

    async def _last_seqs(self) -> dict[str, int]:
        cfg = self.config
        qualified = f"{quote_identifier(cfg.schema)}.{quote_identifier(cfg.table)}"
        sql = f'SELECT "device", MAX("seq") FROM {qualified} GROUP BY "device"'

        async def query() -> list[Any]:
            try:
                async with self._pool.acquire() as conn:
                    return list(await conn.fetch(sql))
            except self._db_errors() as exc:
                self._fail(ServomexSinkWriteError, "could not read the last seqs", exc)

        rows = await self._run(query)
        return {str(row[0]): int(row[1]) for row in rows}

    async def _close(self) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        pool, self._pool = self._pool, None
        try:
            if pool is not None:
                try:
                    await self._run(pool.close)
                except self._db_errors() as exc:
                    logger.warning("closing the PostgreSQL pool failed: %s", self._redact(str(exc)))
                    await self._run(_terminate(pool))
        finally:
            loop_thread, self._loop_thread = self._loop_thread, None
            if loop_thread is not None:
                await loop_thread.stop()


def _terminate(pool: Any) -> Callable[[], Awaitable[None]]:
    async def terminate() -> None:
        pool.terminate()

    return terminate
