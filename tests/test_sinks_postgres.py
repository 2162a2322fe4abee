"""PostgresSink against a real server (SERVOMEXLIB_TEST_POSTGRES_DSN), and PostgresConfig.

The server tests are skipped when the DSN is unset on a developer machine, and FAIL when it is
unset under CI (``CI`` set): CI must run them (``.ci/postgres.sh`` starts a server).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from servomexlib.errors import (
    ServomexSinkDependencyError,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from servomexlib.sinks import PostgresConfig, PostgresSink
from sink_samples import (
    COLUMNS,
    LEGACY_COLUMNS,
    batches,
    error_only_batch,
    expected_row,
    make_samples,
    many_expected,
    many_samples,
)

pytestmark = pytest.mark.anyio

DSN_ENV = "SERVOMEXLIB_TEST_POSTGRES_DSN"


@pytest.fixture
def dsn() -> str:
    value = os.environ.get(DSN_ENV)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{DSN_ENV} is not set under CI: PostgreSQL tests must run there")
        pytest.skip(f"{DSN_ENV} not set (run .ci/postgres.sh to start a local server)")
    return value


def run_db[T](dsn: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(connection)`` with a plain asyncpg connection, on a private asyncio loop.

    The checks go through asyncpg directly (not through the sink) in a separate thread, so
    they work the same under trio.
    """
    import asyncio

    import asyncpg

    async def main() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    result: list[T] = []

    def target() -> None:
        result.append(asyncio.run(main()))

    import threading

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    return result[0]


async def db(dsn: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    return await anyio.to_thread.run_sync(run_db, dsn, work)


@pytest.fixture
async def table(dsn: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name

    async def drop(conn: Any) -> None:
        await conn.execute(f'DROP TABLE IF EXISTS public."{name}"')

    await db(dsn, drop)


def record_rows(records: list[Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


async def execute(dsn: str, sql: str) -> None:
    async def work(conn: Any) -> None:
        await conn.execute(sql)

    await db(dsn, work)


async def fetch_all(dsn: str, table: str) -> list[dict[str, Any]]:
    async def work(conn: Any) -> list[dict[str, Any]]:
        cols = ", ".join(COLUMNS)
        return record_rows(await conn.fetch(f'SELECT {cols} FROM "{table}" ORDER BY monotonic_ns'))

    result: list[dict[str, Any]] = await db(dsn, work)
    return result


async def test_postgres_round_trips_100k_samples_with_copy(dsn: str, table: str) -> None:
    config = PostgresConfig(dsn=dsn, table=table, create_table=True)
    with anyio.fail_after(60):
        async with PostgresSink(config) as sink:
            assert sink.columns == tuple(COLUMNS)
            for batch in batches(many_samples(), 10_000):
                await sink.write_many(batch)
    rows = await fetch_all(dsn, table)
    assert rows == list(many_expected())

    async def types(conn: Any) -> dict[str, str]:
        recs = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1",
            table,
        )
        return {r["column_name"]: r["data_type"] for r in recs}

    declared = await db(dsn, types)
    assert declared["value"] == "double precision"
    assert declared["ok"] == "boolean"
    assert declared["monotonic_ns"] == "bigint"
    assert declared["received_at"] == "text"


def test_postgres_round_trip_read_back_with_psql(dsn: str) -> None:
    # The format's own command-line reader sees the same typed values.
    table = f"t_{uuid.uuid4().hex[:12]}"
    samples = make_samples(50)

    async def main() -> None:
        async with PostgresSink(PostgresConfig(dsn=dsn, table=table, create_table=True)) as s:
            await s.write_many(samples)

    anyio.run(main)
    try:
        query = f'SELECT channel, value, ok, alarm2, monotonic_ns FROM "{table}" ORDER BY 5'
        out = subprocess.run(
            ["psql", "-X", "-q", "-tA", "-F", "|", dsn, "-c", query],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        ).stdout.splitlines()
    finally:

        async def drop(conn: Any) -> None:
            await conn.execute(f'DROP TABLE IF EXISTS "{table}"')

        run_db(dsn, drop)
    got = []
    for line in out:
        channel, value, ok, alarm2, mono = line.split("|")
        got.append(
            (
                channel or None,
                float(value) if value else None,
                {"t": True, "f": False, "": None}[ok],
                {"t": True, "f": False, "": None}[alarm2],
                int(mono),
            )
        )
    want = []
    for s in samples:
        row = expected_row(s)
        want.append((row["channel"], row["value"], row["ok"], row["alarm2"], row["monotonic_ns"]))
    assert got == want


async def test_postgres_executemany_path(dsn: str, table: str) -> None:
    samples = error_only_batch() + make_samples(3000)
    config = PostgresConfig(dsn=dsn, table=table, create_table=True, use_copy=False)
    async with PostgresSink(config) as sink:
        await sink.write_many(samples[:5])  # all-None first batch
        for batch in batches(samples[5:], 1000):
            await sink.write_many(batch)
    assert await fetch_all(dsn, table) == [expected_row(s) for s in samples]


async def test_postgres_host_form_and_server_settings(dsn: str, table: str) -> None:
    parts = urllib.parse.urlsplit(dsn)
    config = PostgresConfig(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        password=urllib.parse.unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
        table=table,
        create_table=True,
        statement_timeout_ms=12345,
    )
    async with PostgresSink(config) as sink:
        await sink.write_many(make_samples(1))

        async def activity(conn: Any) -> list[Any]:
            return list(
                await conn.fetch(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE application_name = 'servomexlib'"
                )
            )

        assert await db(dsn, activity)
    assert len(await fetch_all(dsn, table)) == 1


async def test_postgres_missing_table_is_a_schema_error(dsn: str, table: str) -> None:
    sink = PostgresSink(PostgresConfig(dsn=dsn, table=table))  # create_table=False default
    with pytest.raises(ServomexSinkSchemaError, match="does not exist"):
        await sink.open()
    assert not sink.is_open


async def test_postgres_existing_table_with_other_columns(
    dsn: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    await execute(
        dsn,
        f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, device text, value double '
        "precision, ok boolean, received_at text, site text)",
    )
    samples = make_samples(4)
    with caplog.at_level(logging.WARNING, logger="servomexlib.sinks"):
        async with PostgresSink(PostgresConfig(dsn=dsn, table=table)) as sink:
            assert sink.columns == ("device", "value", "ok", "received_at")
            await sink.write_many(samples)
    dropped = [r for r in caplog.records if "has no column" in r.getMessage()]
    assert len(dropped) == len(COLUMNS) - 4

    async def read(conn: Any) -> list[dict[str, Any]]:
        return record_rows(await conn.fetch(f'SELECT * FROM "{table}" ORDER BY id'))

    rows = await db(dsn, read)
    assert rows == [
        {
            "id": i + 1,
            "device": e["device"],
            "value": e["value"],
            "ok": e["ok"],
            "received_at": e["received_at"],
            "site": None,
        }
        for i, e in enumerate(expected_row(s) for s in samples)
    ]


@pytest.mark.parametrize("use_copy", [True, False])
async def test_postgres_older_21_column_table_gets_rows_and_one_warning(
    dsn: str, table: str, caplog: pytest.LogCaptureFixture, use_copy: bool
) -> None:
    types = {"value": "double precision", "latency_s": "double precision"}
    types.update({"monotonic_ns": "bigint", **dict.fromkeys(COLUMNS[6:15], "boolean")})
    columns = ", ".join(f"{c} {types.get(c, 'text')}" for c in LEGACY_COLUMNS)
    await execute(dsn, f'CREATE TABLE "{table}" ({columns})')
    samples = make_samples(120)
    config = PostgresConfig(dsn=dsn, table=table, use_copy=use_copy)
    with caplog.at_level(logging.WARNING, logger="servomexlib.sinks"):
        async with PostgresSink(config) as sink:
            assert sink.columns == tuple(LEGACY_COLUMNS)
            assert sink._encode_copy is True  # still the declared types: the fast COPY path
            await sink.write_many(samples[:60])
            await sink.write_many(samples[60:])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "'value_state'" in warnings[0]
    assert "older version" in warnings[0]

    async def read(conn: Any) -> list[dict[str, Any]]:
        cols = ", ".join(LEGACY_COLUMNS)
        return record_rows(await conn.fetch(f'SELECT {cols} FROM "{table}" ORDER BY monotonic_ns'))

    rows = await db(dsn, read)
    want = [{k: v for k, v in expected_row(s).items() if k != "value_state"} for s in samples]
    assert rows == want
    assert all(r["ok"] is False for r in rows if r["value"] is None and r["error"] is None)


async def test_postgres_stores_value_state(dsn: str, table: str) -> None:
    samples = make_samples(100)
    async with PostgresSink(PostgresConfig(dsn=dsn, table=table, create_table=True)) as sink:
        await sink.write_many(samples)
    rows = await fetch_all(dsn, table)
    assert [r["value_state"] for r in rows] == [expected_row(s)["value_state"] for s in samples]
    assert {r["value_state"] for r in rows} == {"ok", "over_range", "invalid", None}


async def test_postgres_table_of_other_types_is_written_through_asyncpg_codecs(
    dsn: str, table: str
) -> None:
    # The sink's own binary COPY encoding is for the declared types only: a table declaring
    # varchar/numeric columns must still be written (asyncpg encodes for the table's types).
    await execute(
        dsn,
        f'CREATE TABLE "{table}" (device varchar(64), value double precision, ok boolean, '
        "monotonic_ns numeric(20, 0))",
    )
    samples = make_samples(30)
    with anyio.fail_after(30):
        async with PostgresSink(PostgresConfig(dsn=dsn, table=table)) as sink:
            assert sink._encode_copy is False
            await sink.write_many(samples)

    async def read(conn: Any) -> list[dict[str, Any]]:
        return record_rows(await conn.fetch(f'SELECT * FROM "{table}" ORDER BY monotonic_ns'))

    rows = await db(dsn, read)
    expected = [expected_row(s) for s in samples]
    assert [r["device"] for r in rows] == [e["device"] for e in expected]
    assert [r["ok"] for r in rows] == [e["ok"] for e in expected]
    assert [r["value"] for r in rows] == [e["value"] for e in expected]
    assert [r["monotonic_ns"] for r in rows] == [e["monotonic_ns"] for e in expected]


async def test_postgres_declared_table_uses_the_sinks_own_copy_encoding(
    dsn: str, table: str
) -> None:
    samples = make_samples(250)
    config = PostgresConfig(dsn=dsn, table=table, create_table=True)
    with anyio.fail_after(30):
        async with PostgresSink(config) as sink:
            assert sink._encode_copy is True
            await sink.write_many(samples[:1])  # one row: every column "repeated"
            await sink.write_many(samples[1:])
    assert await fetch_all(dsn, table) == [expected_row(s) for s in samples]


async def test_postgres_write_failure_is_a_write_error(dsn: str, table: str) -> None:
    async def create(conn: Any) -> None:
        await conn.execute(f'CREATE TABLE "{table}" (device text, value double precision '
                           "CHECK (value < 100))")  # fmt: skip

    await db(dsn, create)
    samples = make_samples(10, error_every=0)  # sample 4 has 123456789.125
    async with PostgresSink(PostgresConfig(dsn=dsn, table=table)) as sink:
        with pytest.raises(ServomexSinkWriteError, match="check"):
            await sink.write_many(samples)
        await sink.write_many(samples[:2])

    async def count(conn: Any) -> int:
        value: int = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
        return value

    assert await db(dsn, count) == 2  # the failed COPY left nothing behind


async def test_wrong_password_never_shows_the_password(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Sup3r-s3cret-pw"
    parts = urllib.parse.urlsplit(dsn)
    bad_dsn = parts._replace(
        netloc=f"{parts.username}:{secret}@{parts.hostname}:{parts.port}"
    ).geturl()
    for config in (
        PostgresConfig(dsn=bad_dsn),
        PostgresConfig(
            host=parts.hostname,
            port=parts.port or 5432,
            user=parts.username,
            password=secret,
            database=parts.path.lstrip("/"),
        ),
    ):
        sink = PostgresSink(config)
        with caplog.at_level(logging.DEBUG), pytest.raises(ServomexSinkWriteError) as info:
            await sink.open()
        error = info.value
        assert "password authentication failed" in str(error)
        texts = [str(error), repr(error), repr(config), repr(sink), config.target(), caplog.text]
        cause: BaseException | None = error
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
        for text in texts:
            assert secret not in text
        assert not sink.is_open


# -- no server needed ---------------------------------------------------------------------------


def test_postgres_config_validation() -> None:
    with pytest.raises(ServomexValidationError, match="exactly one"):
        PostgresConfig()
    with pytest.raises(ServomexValidationError, match="exactly one"):
        PostgresConfig(dsn="postgresql://x@h/db", host="h")
    with pytest.raises(ServomexValidationError, match="table"):
        PostgresConfig(host="h", table='x"; DROP TABLE y; --')
    with pytest.raises(ServomexValidationError, match="schema"):
        PostgresConfig(host="h", schema="1bad")
    with pytest.raises(ServomexValidationError, match="pool"):
        PostgresConfig(host="h", min_size=5, max_size=2)


def test_postgres_config_target_is_log_safe() -> None:
    config = PostgresConfig(
        host="db.example", port=6543, user="ana", password="hunter2", database="lab", table="t1"
    )
    assert config.target() == "postgresql://ana@db.example:6543/lab public.t1"
    assert "hunter2" not in repr(config)
    url = PostgresConfig(dsn="postgresql://ana:hunter2@db:5432/lab?sslmode=require&password=x2")
    assert url.target() == "postgresql://ana@db:5432/lab?sslmode=require public.samples"
    assert "hunter2" not in repr(url)
    assert set(url.secrets()) == {"hunter2", "x2"}
    kv = PostgresConfig(dsn="host=db user=ana password=hunter2 dbname=lab")
    assert "hunter2" not in kv.target()
    assert "password=***" in kv.target()


async def test_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    sink = PostgresSink(PostgresConfig(host="127.0.0.1", port=1))
    with pytest.raises(ServomexSinkDependencyError) as info:
        await sink.open()
    assert "pip install 'servomexlib[postgres]'" in str(info.value)
    assert not sink.is_open
