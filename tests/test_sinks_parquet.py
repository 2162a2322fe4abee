"""ParquetSink: round trip with declared types, row groups, refusal, part files, missing pyarrow."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from servomexlib.errors import (
    ServomexSinkDependencyError,
    ServomexSinkError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from servomexlib.sinks import ParquetSink
from sink_samples import (
    COLUMNS,
    batches,
    error_only_batch,
    expected_row,
    make_samples,
    many_expected,
    many_samples,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.anyio


def expected_arrow_schema() -> object:
    types = {
        "value": pa.float64(),
        "latency_s": pa.float64(),
        "monotonic_ns": pa.int64(),
        **dict.fromkeys(COLUMNS[6:15], pa.bool_()),
    }
    return pa.schema([pa.field(c, types.get(c, pa.string()), nullable=True) for c in COLUMNS])


async def test_parquet_round_trips_100k_samples(tmp_path: Path) -> None:
    path = tmp_path / "capture.parquet"
    chunks = batches(many_samples())
    with anyio.fail_after(30):
        async with ParquetSink(path) as sink:
            for batch in chunks:
                await sink.write_many(batch)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == len(chunks)  # one row group per write_many
    assert meta.num_rows == len(many_samples())
    table = pq.read_table(path)
    assert table.schema.equals(expected_arrow_schema())
    assert table.to_pylist() == list(many_expected())


async def test_parquet_all_none_first_batch_keeps_declared_types(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    async with ParquetSink(path) as sink:
        await sink.write_many(error_only_batch())
        await sink.write_many(make_samples(3))
    table = pq.read_table(path)
    assert table.schema.equals(expected_arrow_schema())
    assert table.column("value").to_pylist()[5:] == [20.95, 0.1 + 0.2, None]
    assert table.column("error").to_pylist()[:5] == ["no reply"] * 5


async def test_parquet_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "old.parquet"
    path.write_bytes(b"precious")
    sink = ParquetSink(path)
    with pytest.raises(ServomexSinkWriteError, match="overwrite=True"):
        await sink.open()
    assert path.read_bytes() == b"precious"
    async with ParquetSink(path, overwrite=True) as sink:
        await sink.write_many(make_samples(2))
    assert pq.read_table(path).num_rows == 2


async def test_parquet_row_group_size_splits_big_batches(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    async with ParquetSink(path, row_group_size=40, compression="snappy") as sink:
        await sink.write_many(make_samples(100))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3


async def test_parquet_parts_mode_closes_complete_files(tmp_path: Path) -> None:
    path = tmp_path / "dataset"
    samples = make_samples(50)
    async with ParquetSink(path, part_batches=2) as sink:
        for i, batch in enumerate(batches(samples, 10)):
            await sink.write_many(batch)
            complete = sorted(p.name for p in path.glob("part-*.parquet"))
            assert len(complete) == (i + 1) // 2
            # What is complete is always readable, even while the sink is still writing.
            if complete:
                assert pq.read_table(path).num_rows == 20 * len(complete)
    assert sorted(p.name for p in path.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert pq.read_table(path).to_pylist() == [expected_row(s) for s in samples]
    with pytest.raises(ServomexSinkWriteError, match="overwrite=True"):
        await ParquetSink(path, part_batches=2).open()
    async with ParquetSink(path, part_batches=2, overwrite=True) as sink:
        await sink.write_many(samples[:1])
    assert pq.read_table(path).num_rows == 1


def test_parquet_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ServomexValidationError, match="compression"):
        ParquetSink(tmp_path / "x.parquet", compression="rar")
    with pytest.raises(ValueError, match="part_batches"):
        ParquetSink(tmp_path / "x.parquet", part_batches=0)


async def test_missing_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import pyarrow` raise ImportError.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    sink = ParquetSink(tmp_path / "x.parquet")  # constructing needs no pyarrow
    with pytest.raises(ServomexSinkDependencyError) as info:
        await sink.open()
    assert "pip install 'servomexlib[parquet]'" in str(info.value)
    assert isinstance(info.value, ServomexSinkError)
    assert isinstance(info.value.__cause__, ImportError)
    assert not (tmp_path / "x.parquet").exists()


async def test_journal_mode_consolidates_into_one_file_on_close(tmp_path: Path) -> None:
    path = tmp_path / "journal.parquet"
    samples = make_samples(30, error_every=0)
    async with ParquetSink(path, journal=True) as sink:
        for start in (0, 10, 20):
            await sink.write_many(samples[start : start + 10])
        parts = sorted((tmp_path / "journal.parquet.parts").glob("part-*.parquet"))
        assert len(parts) == 3  # one complete, readable part per batch while open
        assert not path.exists()
    assert not (tmp_path / "journal.parquet.parts").exists()
    meta = pq.ParquetFile(str(path)).metadata
    assert meta.num_row_groups == 3
    table = pq.read_table(path)
    assert table.num_rows == 30
    assert table.column("monotonic_ns").to_pylist() == [s.monotonic_ns for s in samples]
    with pytest.raises(ServomexSinkWriteError, match="overwrite=True"):
        await ParquetSink(path, journal=True).open()
    with pytest.raises(ValueError, match="journal"):
        ParquetSink(path, journal=True, part_batches=2)
