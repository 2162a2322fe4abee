"""Service rows in the sinks: the ``seq`` column, fsync, last_seq_by_device, ON CONFLICT.

The service (docs/service.md §3) builds every sink with ``seq_column=True``: each row carries
its tick's ``seq`` as a 23rd column, the file sinks fsync each batch, and after ``open()`` a
sink reports the highest ``seq`` it holds per device so a batch stored just before a kill is
not stored again. These tests read the files and tables back themselves (csv/json/sqlite3/
asyncpg), not through the sinks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from servomexlib.errors import ServomexSinkSchemaError, ServomexValidationError
from servomexlib.service.spool_rows import SpooledTick
from servomexlib.service.targets import SinkTarget
from servomexlib.sinks.csv import CsvSink
from servomexlib.sinks.jsonl import JsonlSink
from servomexlib.sinks.postgres import PostgresConfig, PostgresSink
from servomexlib.sinks.schema import COLUMNS, SERVICE_COLUMNS
from servomexlib.sinks.sqlite import SqliteSink
from sink_samples import make_samples
from test_sinks_postgres import db, dsn  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio

N = 60  # 12 ticks of 5 rows; with error_every=20 rows 19, 39, 59 are errors with a line break


def seqs_for(n: int, start: int = 0) -> list[int]:
    """One seq per sample: five samples per tick."""
    return [start + i // 5 for i in range(n)]


def expected_last(samples: list[Any], seqs: list[int]) -> dict[str, int]:
    last: dict[str, int] = {}
    for sample, seq in zip(samples, seqs, strict=True):
        last[sample.device] = max(seq, last.get(sample.device, -1))
    return last


def csv_records(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def listing(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def file_sink(kind: str, path: Path, **kw: Any) -> CsvSink | JsonlSink:
    return (CsvSink if kind == "csv" else JsonlSink)(path, **kw)


# -- the argument contract -------------------------------------------------------------------


async def test_seqs_are_required_exactly_with_the_seq_column(tmp_path: Path) -> None:
    samples = make_samples(5)
    async with CsvSink(tmp_path / "a.csv", seq_column=True) as sink:
        with pytest.raises(ServomexValidationError, match="needs seqs="):
            await sink.write_many(samples)
        with pytest.raises(ServomexValidationError, match="4 seqs for 5 samples"):
            await sink.write_many(samples, seqs=[1, 2, 3, 4])
        with pytest.raises(ServomexValidationError, match="not an integer"):
            await sink.write_many(samples, seqs=[1, 2, 3, 4, True])
    async with CsvSink(tmp_path / "b.csv") as plain:
        with pytest.raises(ServomexValidationError, match="seq_column=True"):
            await plain.write_many(samples, seqs=[0] * 5)
        with pytest.raises(RuntimeError, match="no seq column"):
            await plain.last_seq_by_device()
    assert len(csv_records(tmp_path / "a.csv")) == 0  # nothing written by a refused call


# -- file sinks ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
async def test_file_seq_column_written_and_read_back(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"s.{kind}"
    samples = make_samples(N, error_every=20)
    seqs = seqs_for(N, start=1000)
    async with file_sink(kind, path, seq_column=True) as sink:
        await sink.write_many(samples[:30], seqs=seqs[:30])
        await sink.write_many(samples[30:], seqs=seqs[30:])
        assert await sink.last_seq_by_device() == expected_last(samples, seqs)
    if kind == "csv":
        assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(SERVICE_COLUMNS)
        records: list[dict[str, Any]] = csv_records(path)
        assert [int(r["seq"]) for r in records] == seqs
    else:
        records = jsonl_records(path)
        assert [list(r) for r in records] == [list(SERVICE_COLUMNS)] * N
        assert [r["seq"] for r in records] == seqs
    assert [r["device"] for r in records] == [s.device for s in samples]
    # The error row (a message with a line break) is one record, its seq intact.
    assert records[-1]["error"].count("\n") == 1
    # Reopened: the same answer from the file alone.
    async with file_sink(kind, path, seq_column=True) as again:
        assert await again.last_seq_by_device() == expected_last(samples, seqs)


async def test_library_csv_is_byte_identical_without_seq(tmp_path: Path) -> None:
    samples = make_samples(N, error_every=20)
    async with CsvSink(tmp_path / "lib.csv") as sink:
        await sink.write_many(samples)
    text = (tmp_path / "lib.csv").read_bytes().decode("utf-8")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    reference = io.StringIO(newline="")
    writer = csv.writer(reference, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for record in csv_records(tmp_path / "lib.csv"):
        writer.writerow(record.values())
    assert text == reference.getvalue()


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("existing_seq", [False, True])
async def test_file_schemas_are_never_mixed(tmp_path: Path, kind: str, existing_seq: bool) -> None:
    path = tmp_path / f"m.{kind}"
    samples = make_samples(5)
    async with file_sink(kind, path, seq_column=existing_seq) as first:
        await first.write_many(samples, seqs=[7] * 5 if existing_seq else None)
    before = path.read_bytes()
    with pytest.raises(ServomexSinkSchemaError, match="seq") as info:
        await file_sink(kind, path, seq_column=not existing_seq).open()
    assert info.value.context.extra["path"] == str(path)
    assert path.read_bytes() == before
    # The same schema appends.
    async with file_sink(kind, path, seq_column=existing_seq) as same:
        await same.write_many(samples, seqs=[8] * 5 if existing_seq else None)
    assert len(path.read_bytes()) > len(before)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
async def test_file_fsync_after_each_batch(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    samples = make_samples(10)
    async with file_sink(kind, tmp_path / f"f.{kind}", seq_column=True, fsync=True) as sink:
        opened = len(synced)  # the new file (after its header) and its directory
        assert opened == 2
        for i in range(3):
            await sink.write_many(samples, seqs=[i] * 10)
        assert len(synced) == opened + 3
    synced.clear()
    async with file_sink(kind, tmp_path / f"g.{kind}") as plain:
        await plain.write_many(samples)
    assert synced == []  # the library default does not fsync


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
async def test_file_last_seq_follows_rotation(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"r.{kind}"
    samples = make_samples(N, error_every=20)
    seqs = seqs_for(N)
    async with file_sink(kind, path, seq_column=True, rotate_bytes=1) as sink:
        for start in range(0, N, 10):
            await sink.write_many(samples[start : start + 10], seqs=seqs[start : start + 10])
    files = listing(tmp_path, f"r*.{kind}")
    # One batch per file (a CSV's first file holds its header only: rotated before batch 1).
    assert len(files) == (7 if kind == "csv" else 6)
    # The newest file holds the last batch only: its devices and their seqs.
    async with file_sink(kind, path, seq_column=True, rotate_bytes=1) as again:
        assert await again.last_seq_by_device() == expected_last(samples[50:], seqs[50:])
    # A rotation that started a file and died before its batch: the previous file answers.
    newest = path.with_name(f"r.{len(files):04d}.{kind}")
    newest.write_bytes((",".join(SERVICE_COLUMNS) + "\r\n").encode() if kind == "csv" else b"")
    async with file_sink(kind, path, seq_column=True, rotate_bytes=1_000_000) as third:
        assert third.path == newest
        assert await third.last_seq_by_device() == expected_last(samples[50:], seqs[50:])


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
async def test_file_last_seq_reads_only_the_tail_and_skips_a_torn_row(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"t.{kind}"
    samples = make_samples(N, error_every=20)
    seqs = seqs_for(N)
    async with file_sink(kind, path, seq_column=True) as sink:
        await sink.write_many(samples, seqs=seqs)
    append(path, b"dev0,I1,transducer,Oxygen,20.9")  # a power cut in the middle of a row
    # A tail that holds the last two rows only.
    records = path.read_bytes().split(b"\r\n" if kind == "csv" else b"\n")
    tail = sum(len(r) + (2 if kind == "csv" else 1) for r in records[-3:-1]) + 40
    async with file_sink(kind, path, seq_column=True, tail_bytes=tail) as again:
        assert await again.last_seq_by_device() == expected_last(samples[-2:], seqs[-2:])


# -- SQLite ----------------------------------------------------------------------------------


async def test_sqlite_seq_column_and_last_seq(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    samples = make_samples(N, error_every=20)
    seqs = seqs_for(N, start=5)
    async with SqliteSink(path, seq_column=True) as sink:
        assert await sink.last_seq_by_device() == {}
        await sink.write_many(samples, seqs=seqs)
        assert sink.columns[-1] == "seq"
    with closing(sqlite3.connect(path)) as conn:
        stored = conn.execute("SELECT device, seq FROM samples ORDER BY rowid").fetchall()
        notnull = {r[1]: r[3] for r in conn.execute("PRAGMA table_info(samples)")}
        indexes = [r[1] for r in conn.execute("PRAGMA index_list(samples)")]
    assert stored == [(s.device, q) for s, q in zip(samples, seqs, strict=True)]
    assert notnull["seq"] == 1
    assert indexes == ["samples_device_seq"]
    async with SqliteSink(path, seq_column=True) as again:
        assert await again.last_seq_by_device() == expected_last(samples, seqs)


async def test_sqlite_last_seq_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    samples = make_samples(20)
    seqs = seqs_for(20)
    async with SqliteSink(path, seq_column=True, rotate_bytes=1) as sink:
        await sink.write_many(samples[:10], seqs=seqs[:10])
        await sink.write_many(samples[10:], seqs=seqs[10:])
    assert path.with_name("r.0001.db").exists()
    async with SqliteSink(path, seq_column=True, rotate_bytes=10**9) as again:
        assert await again.last_seq_by_device() == expected_last(samples[10:], seqs[10:])
    # A newest file without rows (created, then killed): the previous one answers.
    with closing(sqlite3.connect(path.with_name("r.0002.db"))):
        pass
    async with SqliteSink(path, seq_column=True, rotate_bytes=10**9) as third:
        assert third.path.name == "r.0002.db"
        assert await third.last_seq_by_device() == expected_last(samples[10:], seqs[10:])


@pytest.mark.parametrize("existing_seq", [False, True])
async def test_sqlite_schemas_are_never_mixed(tmp_path: Path, existing_seq: bool) -> None:
    path = tmp_path / "m.db"
    async with SqliteSink(path, seq_column=existing_seq) as first:
        await first.write_many(make_samples(3), seqs=[1, 1, 1] if existing_seq else None)
    with pytest.raises(ServomexSinkSchemaError, match="seq column") as info:
        await SqliteSink(path, seq_column=not existing_seq).open()
    assert info.value.context.extra["path"] == str(path)


# -- the target seeded from the sink ---------------------------------------------------------


def ticks_of(samples: list[Any], start_seq: int, position: int = 0) -> list[SpooledTick]:
    """Single-device ticks of five samples (the device of a tick's first sample)."""
    out: list[SpooledTick] = []
    for i in range(0, len(samples), 5):
        rows = tuple(s for s in samples[i : i + 5] if s.device == samples[i].device)
        out.append(
            SpooledTick(
                position=position + i // 5,
                device=samples[i].device,
                seq=start_seq + i // 5,
                committed_at=0.0,
                samples=rows,
            )
        )
    return out


@pytest.mark.parametrize("kind", ["csv", "sqlite"])
async def test_target_drops_a_batch_stored_before_a_kill(tmp_path: Path, kind: str) -> None:
    """A batch stored but never acknowledged is delivered again after a restart: a new
    SinkTarget (a new process) learns from the sink that it holds it already."""
    make: Callable[[], CsvSink | SqliteSink] = (
        (lambda: CsvSink(tmp_path / "t.csv", seq_column=True, fsync=True))
        if kind == "csv"
        else (lambda: SqliteSink(tmp_path / "t.db", seq_column=True))
    )
    ticks = ticks_of(make_samples(40, error_every=0), start_seq=0)
    first = SinkTarget(make())
    await first.open()
    await first.deliver(ticks[:5])
    await first.close()  # "killed" before the spool recorded the acknowledgement

    second = SinkTarget(make())
    await second.open()
    await second.deliver(ticks[2:])  # the spool resends from its last acknowledged tick
    await second.close()
    assert second.duplicates == 3
    if kind == "csv":
        stored = [(r["device"], int(r["seq"])) for r in csv_records(tmp_path / "t.csv")]
    else:
        with closing(sqlite3.connect(tmp_path / "t.db")) as conn:
            stored = conn.execute("SELECT device, seq FROM samples ORDER BY rowid").fetchall()
    want = [(s.device, t.seq) for t in ticks for s in t.samples]
    assert stored == want


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
async def pg_table(dsn: str) -> AsyncIterator[str]:  # noqa: F811
    name = f"seq_{uuid.uuid4().hex[:12]}"
    yield name

    async def drop(conn: Any) -> None:
        await conn.execute(f'DROP TABLE IF EXISTS public."{name}"')

    await db(dsn, drop)


async def pg_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:  # noqa: F811
    async def work(conn: Any) -> list[tuple[Any, ...]]:
        rows = await conn.fetch(f'SELECT device, seq, channel FROM "{table}" ORDER BY device, seq')
        return [tuple(r) for r in rows]

    result: list[tuple[Any, ...]] = await db(dsn, work)
    return result


@pytest.mark.parametrize("use_copy", [True, False])
async def test_postgres_seq_unique_index_and_on_conflict(
    dsn: str,  # noqa: F811
    pg_table: str,
    use_copy: bool,
) -> None:
    samples = make_samples(N, error_every=20)  # with error rows (channel NULL)
    seqs = seqs_for(N, start=100)
    config = PostgresConfig(dsn=dsn, table=pg_table, create_table=True, use_copy=use_copy)
    async with PostgresSink(config, seq_column=True) as sink:
        assert await sink.last_seq_by_device() == {}
        await sink.write_many(samples, seqs=seqs)
        await sink.write_many(samples, seqs=seqs)  # the same batch again: dropped
        await sink.write_many(samples[:30], seqs=seqs[:30])  # and part of it
        assert await sink.last_seq_by_device() == expected_last(samples, seqs)
    rows = await pg_rows(dsn, pg_table)
    want = [
        (s.device, q, None if s.reading is None else s.reading.channel.value)
        for s, q in zip(samples, seqs, strict=True)
    ]
    assert sorted(rows, key=lambda r: (r[0], r[1], r[2] or "")) == sorted(
        want, key=lambda r: (r[0], r[1], r[2] or "")
    )
    assert len(rows) == N

    async def index_defs(conn: Any) -> list[str]:
        found = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = $1", pg_table)
        return [r[0] for r in found]

    defs = await db(dsn, index_defs)
    assert any("UNIQUE" in d and "device, seq, COALESCE(channel" in d for d in defs), defs
    # Reopened by another process: the table alone answers.
    async with PostgresSink(config, seq_column=True) as again:
        assert await again.last_seq_by_device() == expected_last(samples, seqs)


async def test_postgres_schemas_are_never_mixed(dsn: str, pg_table: str) -> None:  # noqa: F811
    service = PostgresConfig(dsn=dsn, table=pg_table, create_table=True)
    async with PostgresSink(service, seq_column=True) as sink:
        await sink.write_many(make_samples(3), seqs=[1, 1, 1])
    with pytest.raises(ServomexSinkSchemaError, match="has a seq column"):
        await PostgresSink(PostgresConfig(dsn=dsn, table=pg_table)).open()
