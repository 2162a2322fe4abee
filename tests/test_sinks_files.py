"""CsvSink and JsonlSink: round trips, append/refuse/overwrite, life cycle, rotation."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import anyio
import pytest

from servomexlib.devices.models import Sample
from servomexlib.errors import ServomexSinkSchemaError, ServomexSinkWriteError
from servomexlib.sinks import CsvSink, InMemorySink, JsonlSink, Sink, rotated_paths
from sink_samples import (
    COLUMNS,
    LEGACY_COLUMNS,
    as_csv_fields,
    batches,
    error_only_batch,
    expected_row,
    make_samples,
    many_expected,
    many_samples,
)

pytestmark = pytest.mark.anyio


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def read_jsonl(path: Path) -> list[dict[str, object]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- CSV ----------------------------------------------------------------------------------------


async def test_csv_round_trips_100k_samples(tmp_path: Path) -> None:
    path = tmp_path / "capture.csv"
    with anyio.fail_after(30):
        async with CsvSink(path) as sink:
            assert sink.columns == tuple(COLUMNS)
            for batch in batches(many_samples()):
                await sink.write_many(batch)
    rows = read_csv(path)
    assert rows[0] == COLUMNS
    assert len(rows) == 1 + len(many_samples())
    for got, want in zip(rows[1:], many_expected(), strict=True):
        assert got == as_csv_fields(want)
    # Floats are written with repr, so they read back bit-exact.
    assert float(rows[2][4]) == 0.1 + 0.2
    raw = path.read_bytes()
    assert raw.startswith(b"device,channel,kind,name,value,unit,ok,fault,")
    assert raw.endswith(b"\r\n")


async def test_csv_error_samples_and_booleans(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    samples = error_only_batch(2) + make_samples(3)
    async with CsvSink(path) as sink:
        await sink.write_many(samples)
    rows = read_csv(path)
    error_row = dict(zip(COLUMNS, rows[1], strict=True))
    assert all(error_row[c] == "" for c in COLUMNS[1:15])
    assert error_row["error"] == "no reply"
    ok_row = dict(zip(COLUMNS, rows[3], strict=True))
    assert {ok_row[c] for c in COLUMNS[6:15]} <= {"0", "1"}
    assert ok_row["value"] == "20.95"


async def test_csv_appends_when_the_header_matches(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    samples = make_samples(20)
    async with CsvSink(path) as sink:
        await sink.write_many(samples[:10])
    async with CsvSink(path) as sink:
        await sink.write_many(samples[10:])
    rows = read_csv(path)
    assert rows[0] == COLUMNS
    assert rows.count(COLUMNS) == 1
    assert rows[1:] == [as_csv_fields(expected_row(s)) for s in samples]


async def test_csv_refuses_a_different_header_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_bytes(b"time,value\r\n1,2\r\n")
    sink = CsvSink(path)
    with pytest.raises(ServomexSinkSchemaError) as info:
        await sink.open()
    message = str(info.value)
    assert str(path) in message
    assert "overwrite=True" in message
    assert path.read_bytes() == b"time,value\r\n1,2\r\n"
    assert not sink.is_open


async def test_csv_different_header_error_carries_the_path(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_bytes(b"time,value\r\n1,2\r\n")
    with pytest.raises(ServomexSinkSchemaError) as info:
        await CsvSink(path).open()
    assert info.value.context.extra["path"] == str(path)
    assert info.value.context.extra["header"] == "different"


def _legacy_csv(path: Path, samples: list[Sample]) -> bytes:
    """A CSV as versions before value_state wrote it: the 21 older columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEGACY_COLUMNS)
    for sample in samples:
        writer.writerow(as_csv_fields(expected_row(sample))[:21])
    data = buffer.getvalue().encode("utf-8")
    path.write_bytes(data)
    return data


async def test_csv_refuses_to_append_to_an_older_21_column_file(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    before = _legacy_csv(path, make_samples(4))
    sink = CsvSink(path)
    with pytest.raises(ServomexSinkSchemaError) as info:
        await sink.open()
    message = str(info.value)
    assert str(path) in message
    assert "older version" in message
    assert "21 columns" in message
    assert "value_state" in message
    assert "overwrite=True" in message  # how to proceed (or another path)
    assert info.value.context.extra["path"] == str(path)
    assert info.value.context.extra["header"] == "older"
    assert path.read_bytes() == before  # nothing added, nothing truncated
    assert not sink.is_open
    # With overwrite=True it is replaced by a file of the current schema.
    async with CsvSink(path, overwrite=True) as sink:
        await sink.write_many(make_samples(2))
    rows = read_csv(path)
    assert rows[0] == COLUMNS
    assert [len(r) for r in rows] == [22] * 3


async def test_csv_rows_carry_value_state_and_ok(tmp_path: Path) -> None:
    path = tmp_path / "states.csv"
    samples = make_samples(40)
    async with CsvSink(path) as sink:
        await sink.write_many(samples)
    rows = [dict(zip(COLUMNS, r, strict=True)) for r in read_csv(path)[1:]]
    states = {(r["value"] == "", r["value_state"], r["ok"]) for r in rows if not r["error"]}
    # Every row without a value says why and is not ok; a row with a value is "ok".
    assert (True, "over_range", "0") in states
    assert (True, "invalid", "0") in states
    assert {s for s in states if s[0]} == {(True, "over_range", "0"), (True, "invalid", "0")}
    assert {s[1] for s in states if not s[0]} == {"ok"}


async def test_csv_refuses_a_file_that_is_not_utf8_csv(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ServomexSinkSchemaError, match="overwrite=True"):
        await CsvSink(path).open()
    assert path.read_bytes() == b"\xff\xfe\x00garbage"


async def test_csv_overwrite_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("time,value\n1,2\n")
    async with CsvSink(path, overwrite=True) as sink:
        await sink.write_many(make_samples(3))
    rows = read_csv(path)
    assert rows[0] == COLUMNS
    assert len(rows) == 4


async def test_csv_writes_a_header_into_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.touch()
    async with CsvSink(path) as sink:
        await sink.write_many(make_samples(1))
    assert read_csv(path)[0] == COLUMNS


async def test_csv_repairs_a_missing_final_line_break_before_appending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cut.csv"
    async with CsvSink(path) as sink:
        await sink.write_many(make_samples(2))
    append_bytes(path, b"dev0,I1,transducer,cut-off")  # a line cut by a power loss
    with caplog.at_level(logging.WARNING, logger="servomexlib.sinks"):
        async with CsvSink(path) as sink:
            await sink.write_many(make_samples(1))
    rows = read_csv(path)
    assert rows[3] == ["dev0", "I1", "transducer", "cut-off"]
    assert rows[4] == as_csv_fields(expected_row(make_samples(1)[0]))
    assert "line break" in caplog.text


async def test_csv_open_failure_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ServomexSinkWriteError) as info:
        await CsvSink(tmp_path / "dir.csv").open()
    assert "dir.csv" in str(info.value)


# -- life cycle (every sink shares BaseSink; exercised here on the file sinks) -------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl", "memory"])
async def test_life_cycle(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.{kind}"
    sink = (
        CsvSink(path) if kind == "csv" else JsonlSink(path) if kind == "jsonl" else InMemorySink()
    )
    assert isinstance(sink, Sink)
    with pytest.raises(RuntimeError, match="open"):
        await sink.write_many(make_samples(1))
    await sink.open()
    await sink.open()  # idempotent
    await sink.write_many([])  # no-op
    await sink.write_many(make_samples(2))
    await sink.close()
    await sink.close()  # idempotent
    with pytest.raises(RuntimeError):
        await sink.write_many(make_samples(1))
    if kind == "csv":
        assert len(read_csv(path)) == 3
    elif kind == "jsonl":
        assert len(read_jsonl(path)) == 2
    else:
        assert isinstance(sink, InMemorySink)
        assert sink.samples == make_samples(2)  # close() keeps them


async def test_in_memory_sink_keeps_sample_objects() -> None:
    samples = make_samples(7)
    async with InMemorySink() as sink:
        await sink.write_many(samples[:3])
        await sink.write_many(samples[3:])
    assert sink.samples == samples
    assert sink.samples[0] is samples[0]


# -- JSONL --------------------------------------------------------------------------------------


async def test_jsonl_round_trips_100k_samples(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    with anyio.fail_after(30):
        async with JsonlSink(path) as sink:
            for batch in batches(many_samples()):
                await sink.write_many(batch)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # every line terminated
    rows = [json.loads(line) for line in lines[:-1]]
    assert rows == list(many_expected())
    assert list(rows[0]) == COLUMNS
    # ensure_ascii=False: non-ASCII text is stored as UTF-8, not escaped.
    assert "CO₂ ñ" in path.read_text(encoding="utf-8")
    assert rows[1]["value"] == 0.1 + 0.2
    assert rows[96]["error"] is not None  # an error sample
    assert rows[96]["value"] is None
    assert rows[96]["ok"] is None
    assert rows[96]["value_state"] is None
    assert list(rows[0])[-1] == "value_state"
    assert {r["value_state"] for r in rows} == {"ok", "over_range", "invalid", None}
    assert all(r["ok"] is False for r in rows if r["value_state"] in ("over_range", "invalid"))


async def test_jsonl_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"earlier": 1}')  # no final line break
    samples = make_samples(4)
    async with JsonlSink(path) as sink:
        await sink.write_many(samples[:2])
    async with JsonlSink(path) as sink:
        await sink.write_many(samples[2:])
    rows = read_jsonl(path)
    assert rows[0] == {"earlier": 1}
    assert rows[1:] == [expected_row(s) for s in samples]


# -- rotation -----------------------------------------------------------------------------------


async def test_csv_rotates_by_size_without_losing_or_splitting_batches(tmp_path: Path) -> None:
    path = tmp_path / "week.csv"
    samples = make_samples(300)
    async with CsvSink(path, rotate_bytes=4000) as sink:
        for batch in batches(samples, 20):
            await sink.write_many(batch)
    files = rotated_paths(path)
    assert files[0] == path
    assert len(files) > 3
    assert files[1].name == "week.0001.csv"
    collected: list[list[str]] = []
    for file in files:
        rows = read_csv(file)
        assert rows[0] == COLUMNS  # every file has its header
        assert (len(rows) - 1) % 20 == 0  # whole batches only
        collected += rows[1:]
    assert collected == [as_csv_fields(expected_row(s)) for s in samples]


async def test_jsonl_rotates_by_time_and_reopen_continues_the_newest_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.jsonl"
    clock = FakeClock()
    samples = make_samples(60)
    chunks = batches(samples, 10)
    async with JsonlSink(path, rotate_seconds=60, clock=clock) as sink:
        for i, batch in enumerate(chunks[:4]):
            clock.now = i * 40.0  # 0, 40 | 80, 120 | ...
            await sink.write_many(batch)
    assert [p.name for p in rotated_paths(path)] == ["log.jsonl", "log.0001.jsonl"]
    assert len(read_jsonl(path)) == 20
    async with JsonlSink(path, rotate_seconds=60, clock=clock) as sink:
        assert sink.path.name == "log.0001.jsonl"
        for batch in chunks[4:]:
            await sink.write_many(batch)
    rows = [row for p in rotated_paths(path) for row in read_jsonl(p)]
    assert rows == [expected_row(s) for s in samples]


async def test_csv_overwrite_with_rotation_restarts_the_series(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    async with CsvSink(path, rotate_bytes=2000) as sink:
        for batch in batches(make_samples(100), 10):
            await sink.write_many(batch)
    assert len(rotated_paths(path)) > 1
    async with CsvSink(path, rotate_bytes=2000, overwrite=True) as sink:
        await sink.write_many(make_samples(2))
    assert rotated_paths(path) == [path]
    assert len(read_csv(path)) == 3


def test_rotation_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotate_bytes"):
        CsvSink(tmp_path / "x.csv", rotate_bytes=0)
    with pytest.raises(ValueError, match="rotate_seconds"):
        JsonlSink(tmp_path / "x.jsonl", rotate_seconds=-1)
