"""SqliteSink: round trip, WAL, one transaction per batch, rollback, schema handling, rotation."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import pytest

from servomexlib.errors import (
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from servomexlib.sinks import SqliteSink, rotated_paths
from sink_samples import (
    COLUMNS,
    LEGACY_COLUMNS,
    as_sqlite_row,
    batches,
    error_only_batch,
    expected_row,
    make_samples,
    many_expected,
    many_samples,
)

pytestmark = pytest.mark.anyio


def fetch(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_sqlite_round_trips_100k_samples(tmp_path: Path) -> None:
    path = tmp_path / "capture.db"
    with anyio.fail_after(30):
        async with SqliteSink(path) as sink:
            assert sink.columns == tuple(COLUMNS)
            for batch in batches(many_samples()):
                await sink.write_many(batch)
    rows = fetch(path, f"SELECT {', '.join(COLUMNS)} FROM samples ORDER BY rowid")
    assert rows == [as_sqlite_row(r) for r in many_expected()]
    declared = {r[1]: r[2] for r in fetch(path, "PRAGMA table_info(samples)")}
    assert declared["value"] == "REAL"
    assert declared["ok"] == "INTEGER"
    assert declared["monotonic_ns"] == "INTEGER"
    assert declared["received_at"] == "TEXT"
    types = fetch(
        path,
        "SELECT typeof(value), typeof(ok), typeof(monotonic_ns), typeof(latency_s) "
        "FROM samples WHERE rowid = 7",
    )
    assert types == [("real", "integer", "integer", "real")]
    assert fetch(path, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_all_none_first_batch_does_not_mistype_value(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    async with SqliteSink(path) as sink:
        await sink.write_many(error_only_batch())
        await sink.write_many(make_samples(2))
    assert {r[1]: r[2] for r in fetch(path, "PRAGMA table_info(samples)")}["value"] == "REAL"
    assert fetch(path, "SELECT typeof(value), value FROM samples WHERE rowid = 6") == [
        ("real", 20.95)
    ]
    assert fetch(path, "SELECT error FROM samples WHERE rowid = 1") == [("no reply",)]


async def test_sqlite_rolls_back_a_failed_batch(tmp_path: Path) -> None:
    path = tmp_path / "rb.db"
    samples = make_samples(30, error_every=0)
    async with SqliteSink(path) as sink:
        await sink.write_many(samples[:10])
        conn = sqlite3.connect(path)
        # Fail on the 5th row of the next batch: its first 4 rows must not stay behind.
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON samples "
            f"WHEN NEW.monotonic_ns = {samples[14].monotonic_ns} "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        conn.commit()
        conn.close()
        with pytest.raises(ServomexSinkWriteError) as info:
            await sink.write_many(samples[10:20])
        assert "rolled back" in str(info.value)
        assert "boom" in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.Error)
        assert fetch(path, "SELECT count(*) FROM samples") == [(10,)]
        # The sink is still usable afterwards.
        await sink.write_many(samples[20:])
    assert fetch(path, "SELECT count(*) FROM samples") == [(20,)]


async def test_sqlite_rolls_back_a_multi_row_chunk(tmp_path: Path) -> None:
    # Batches above 64 rows use multi-row INSERTs; a failure deep inside still rolls back all.
    path = tmp_path / "rb2.db"
    samples = make_samples(300, error_every=0)
    async with SqliteSink(path) as sink:
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON samples "
            f"WHEN NEW.monotonic_ns = {samples[250].monotonic_ns} "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        conn.commit()
        conn.close()
        with pytest.raises(ServomexSinkWriteError):
            await sink.write_many(samples)
        await sink.write_many(samples[:200])
    rows = fetch(path, "SELECT monotonic_ns FROM samples ORDER BY rowid")
    assert [r[0] for r in rows] == [s.monotonic_ns for s in samples[:200]]


async def test_sqlite_create_table_false_needs_the_table(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(ServomexSinkSchemaError, match="does not exist"):
        await SqliteSink(path, create_table=False).open()


async def test_sqlite_existing_table_with_other_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, device TEXT, channel TEXT, "
        "value REAL, received_at TEXT, note TEXT)"
    )
    conn.commit()
    conn.close()
    samples = make_samples(3)
    with caplog.at_level(logging.WARNING, logger="servomexlib.sinks"):
        async with SqliteSink(path, table="readings", create_table=False) as sink:
            assert sink.columns == ("device", "channel", "value", "received_at")
            await sink.write_many(samples)
            await sink.write_many(samples)
    rows = fetch(path, "SELECT id, device, channel, value, received_at, note FROM readings")
    want = [expected_row(s) for s in samples] * 2
    assert rows == [
        (i + 1, w["device"], w["channel"], w["value"], w["received_at"], None)
        for i, w in enumerate(want)
    ]
    dropped = [r for r in caplog.records if "has no column" in r.getMessage()]
    assert len(dropped) == len(COLUMNS) - 4  # one warning per missing column, not per batch
    assert any("'latency_s'" in r.getMessage() for r in dropped)


def _legacy_table_sql(table: str = "samples") -> str:
    """The table of versions before value_state: the 21 older columns, their declared types."""
    types = {"value": "REAL", "latency_s": "REAL", "monotonic_ns": "INTEGER"}
    types.update(dict.fromkeys(COLUMNS[6:15], "INTEGER"))
    columns = ", ".join(f"{c} {types.get(c, 'TEXT')}" for c in LEGACY_COLUMNS)
    return f"CREATE TABLE {table} ({columns})"


@pytest.mark.parametrize("create_table", [True, False])
async def test_sqlite_older_21_column_table_gets_rows_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, create_table: bool
) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(_legacy_table_sql())
    conn.commit()
    conn.close()
    samples = make_samples(30)
    with caplog.at_level(logging.WARNING, logger="servomexlib.sinks"):
        async with SqliteSink(path, create_table=create_table) as sink:
            assert sink.columns == tuple(LEGACY_COLUMNS)
            await sink.write_many(samples[:10])
            await sink.write_many(samples[10:])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # reported once, not per batch
    assert "'value_state'" in warnings[0]
    assert "older version" in warnings[0]
    assert "ADD COLUMN value_state TEXT" in warnings[0]
    rows = fetch(path, f"SELECT {', '.join(LEGACY_COLUMNS)} FROM samples ORDER BY rowid")
    assert rows == [as_sqlite_row(expected_row(s))[:21] for s in samples]
    # ok already follows the new rule: a row without a value is never ok.
    assert all(r[6] == 0 for r in rows if r[4] is None)
    assert [c[1] for c in fetch(path, "PRAGMA table_info(samples)")] == LEGACY_COLUMNS


async def test_sqlite_value_state_column(tmp_path: Path) -> None:
    path = tmp_path / "vs.db"
    samples = make_samples(100)  # sample 96 is an error sample
    async with SqliteSink(path) as sink:
        await sink.write_many(samples)
    declared = {r[1]: r[2] for r in fetch(path, "PRAGMA table_info(samples)")}
    assert declared["value_state"] == "TEXT"
    assert list(declared)[-1] == "value_state"
    got = fetch(path, "SELECT value IS NULL, value_state, ok FROM samples WHERE error IS NULL")
    assert {(bool(n), state, ok) for n, state, ok in got} == {
        (False, "ok", 0),
        (False, "ok", 1),
        (True, "over_range", 0),
        (True, "invalid", 0),
    }
    assert fetch(path, "SELECT DISTINCT value_state FROM samples WHERE error IS NOT NULL") == [
        (None,)
    ]


async def test_sqlite_existing_table_with_an_extra_column_gets_null(tmp_path: Path) -> None:
    path = tmp_path / "extra.db"
    async with SqliteSink(path) as sink:
        await sink.write_many(make_samples(1))
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE samples ADD COLUMN site TEXT")
    conn.commit()
    conn.close()
    async with SqliteSink(path) as sink:
        await sink.write_many(make_samples(1))
    assert fetch(path, "SELECT site FROM samples") == [(None,), (None,)]


@pytest.mark.parametrize("table", ["1abc", "a-b", "x" * 64, "samples; DROP TABLE t", ""])
def test_sqlite_rejects_bad_table_names(tmp_path: Path, table: str) -> None:
    with pytest.raises(ServomexValidationError, match="table"):
        SqliteSink(tmp_path / "x.db", table=table)


def test_sqlite_rejects_bad_pragmas_and_rotation_without_table(tmp_path: Path) -> None:
    with pytest.raises(ServomexValidationError, match="journal_mode"):
        SqliteSink(tmp_path / "x.db", journal_mode="WAL; DROP")
    with pytest.raises(ServomexValidationError, match="synchronous"):
        SqliteSink(tmp_path / "x.db", synchronous="sometimes")
    with pytest.raises(ValueError, match="create_table"):
        SqliteSink(tmp_path / "x.db", create_table=False, rotate_bytes=10)


async def test_sqlite_pragmas_are_applied(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with SqliteSink(path, journal_mode="delete", synchronous="full") as sink:
        await sink.write_many(make_samples(1))
        assert fetch(path, "PRAGMA journal_mode") == [("delete",)]


async def test_sqlite_unopenable_path_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    sink = SqliteSink(tmp_path / "dir.db")
    with pytest.raises(ServomexSinkWriteError, match=r"dir\.db"):
        await sink.open()
    assert not sink.is_open
    await sink.close()


async def test_sqlite_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "week.db"
    samples = make_samples(2000)
    async with SqliteSink(path, rotate_bytes=150_000) as sink:
        for batch in batches(samples, 200):
            await sink.write_many(batch)
    files = rotated_paths(path)
    assert len(files) > 1
    assert files[1].name == "week.0001.db"
    got = [
        row[0]
        for file in files
        for row in fetch(file, "SELECT monotonic_ns FROM samples ORDER BY rowid")
    ]
    assert got == [s.monotonic_ns for s in samples]
