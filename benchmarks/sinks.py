"""Group 5: sink throughput and memory.

* Throughput: 200 000 Samples (decoded from simulator frames, five channels each) written with
  ``write_many`` in batches of 1 000 to a fresh CsvSink, JsonlSink, SqliteSink, ParquetSink and
  — when ``SERVOMEXLIB_TEST_POSTGRES_DSN`` is set — PostgresSink (binary COPY, a table of its
  own, dropped afterwards). Time runs from ``open()`` to the end of ``close()``.
* Memory: a child process writes 1 000 000 samples to SQLite in batches of 1 000; its peak RSS
  (``VmHWM``) after the first 10 000 samples is compared with the peak at the end.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from servomexlib import Sample
from servomexlib.decode import decode_frame
from servomexlib.sim import Simulator

from .common import Figure, Settings, child_env, python_exe

__all__ = ["make_samples", "run"]

BATCH = 1000
DSN_ENV = "SERVOMEXLIB_TEST_POSTGRES_DSN"
# Issue 8: SQLite and Parquet >= 200 000 samples/s, CSV and JSONL >= 100 000 (PostgreSQL below).
TARGETS = {"CSV": 100_000, "JSONL": 100_000, "SQLite": 200_000, "Parquet": 200_000}
PG_TARGET = 100_000
RSS_LIMIT_MIB = 20.0


def make_samples(n: int, device: str = "bench") -> list[Sample]:
    """``n`` Samples from consecutive simulated live frames (values vary, clock ticks)."""
    sim = Simulator(mode="continuous", realtime=False, seed=5)
    sim.drift("I1", noise=0.002)
    sim.drift("I3", noise=0.001)
    t0 = sim.now()
    out: list[Sample] = []
    base = datetime.now(UTC).timestamp()
    i = 0
    while len(out) < n:
        frame = decode_frame(
            sim.model.continuous_frame(t0 + i),
            received_at=datetime.fromtimestamp(base + i, UTC),
            monotonic_ns=i * 1_000_000_000,
        )
        out.extend(frame.as_samples(device))
        i += 1
    return out[:n]


async def _write(
    make_sink: Callable[[], object], samples: list[Sample], batch: int = BATCH
) -> float:
    sink: object = make_sink()
    t0 = time.perf_counter()
    await sink.open()  # type: ignore[attr-defined]
    for i in range(0, len(samples), batch):
        await sink.write_many(samples[i : i + batch])  # type: ignore[attr-defined]
    await sink.close()  # type: ignore[attr-defined]
    return time.perf_counter() - t0


async def _drop_pg_table(dsn: str, table: str) -> None:
    import asyncpg  # type: ignore[import-not-found, unused-ignore]

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS public.{table}")
    finally:
        await conn.close()


def throughput(settings: Settings) -> list[Figure]:
    from servomexlib.sinks import CsvSink, JsonlSink, ParquetSink, SqliteSink

    n = 20_000 if settings.quick else 200_000
    samples = make_samples(n)
    # Optional back ends are imported by their sink's open(); import them first so the figures
    # are steady-state throughput, not a one-time import.
    for module in ("pyarrow", "pyarrow.parquet", "asyncpg"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    figures = []
    with tempfile.TemporaryDirectory(prefix="servomexlib-bench-") as tmp:
        makers: dict[str, Callable[[], object]] = {
            "CSV": lambda: CsvSink(os.path.join(tmp, "s.csv")),
            "JSONL": lambda: JsonlSink(os.path.join(tmp, "s.jsonl")),
            "SQLite": lambda: SqliteSink(os.path.join(tmp, "s.sqlite")),
            "Parquet": lambda: ParquetSink(os.path.join(tmp, "s.parquet")),
        }
        for name, make in makers.items():
            try:
                seconds = anyio.run(_write, make, samples)
            except Exception as exc:  # a sink that cannot run is reported, not fatal
                figures.append(
                    Figure("5", f"{name} sink", f"error: {exc!r}"[:60], "", status="ERROR")
                )
                continue
            rate = n / seconds
            target = TARGETS[name]
            figures.append(
                Figure(
                    "5",
                    f"{name} sink, {n:,} samples",
                    f"{rate:,.0f} samples/s",
                    f">= {target:,} samples/s",
                    rate / target,
                    (">=", 1.0),
                )
            )
        # Context: Parquet writes one row group per write_many, so its batch size matters.
        big = 10 * BATCH
        seconds = anyio.run(
            _write, lambda: ParquetSink(os.path.join(tmp, "big.parquet")), samples, big
        )
        figures.append(
            Figure(
                "5",
                f"context: Parquet sink, batches of {big:,}",
                f"{n / seconds:,.0f} samples/s",
                f"{TARGETS['Parquet']:,} samples/s",
                n / seconds / TARGETS["Parquet"],
                None,
            )
        )
    figures.append(_postgres(samples))
    return figures


def _postgres(samples: list[Sample]) -> Figure:
    dsn = os.environ.get(DSN_ENV)
    name = f"PostgreSQL sink (COPY), {len(samples):,} samples"
    if not dsn:
        return Figure("5", name, f"skipped: no DSN (set {DSN_ENV})", "", status="SKIP")
    from servomexlib.sinks import PostgresConfig, PostgresSink

    table = f"bench_samples_{os.getpid()}"
    config = PostgresConfig(dsn=dsn, table=table, create_table=True)
    try:
        seconds = anyio.run(_write, lambda: PostgresSink(config), samples)
    except Exception as exc:
        return Figure("5", name, f"error: {exc!r}"[:60], "", status="ERROR")
    finally:
        with contextlib.suppress(Exception):
            anyio.run(_drop_pg_table, dsn, table)
    rate = len(samples) / seconds
    return Figure(
        "5",
        name,
        f"{rate:,.0f} samples/s",
        f">= {PG_TARGET:,} samples/s",
        rate / PG_TARGET,
        (">=", 1.0),
    )


def rss_growth(settings: Settings) -> Figure:
    n = 50_000 if settings.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="servomexlib-bench-") as tmp:
        out = subprocess.run(
            [python_exe(), "-m", "benchmarks._rss_child", str(n), os.path.join(tmp, "r.sqlite")],
            env=child_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    growth = (data["hwm_end_kib"] - data["hwm_warm_kib"]) / 1024
    return Figure(
        "5",
        f"SQLite capture of {n:,} samples: peak RSS growth",
        f"{growth:.1f} MiB",
        f"< {RSS_LIMIT_MIB:g} MiB",
        growth / RSS_LIMIT_MIB,
        ("<=", 1.0),
        note=(
            f"VmHWM {data['hwm_warm_kib'] / 1024:.1f} MiB after {data['warm']:,} samples -> "
            f"{data['hwm_end_kib'] / 1024:.1f} MiB at the end; {data['rate']:,.0f} samples/s "
            f"(ru_maxrss {data['maxrss_kib'] / 1024:.1f} MiB also counts the parent image "
            f"inherited across fork+exec, so VmHWM is used)"
        ),
    )


def run(settings: Settings) -> list[Figure]:
    return [*throughput(settings), rss_growth(settings)]
