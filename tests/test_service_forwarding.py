"""The forwarder engine (docs/service.md §3): in-order exactly-once delivery, isolation of a
failing or hung sink, backoff, resume from the cursor.

Most tests run on virtual time with the spool called inline (a wait on a worker thread would
let the virtual clock jump); one runs the production path (worker threads) on real time.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import pytest

from servomexlib.devices.models import ChannelId
from servomexlib.errors import ServomexSinkWriteError
from servomexlib.service.forwarding import ForwarderOptions, ForwardingEngine
from servomexlib.service.spool import Spool
from servomexlib.service.spool_async import AsyncSpool
from servomexlib.service.targets import MemoryTarget, SinkTarget
from servomexlib.sinks.memory import InMemorySink
from test_service_spool import WALL, tick

FAST = ForwarderOptions(batch_ticks=4, deliver_timeout_s=5.0, linger_s=0.0)


def spool_at(path: Path, *, inline: bool = True) -> tuple[Spool, AsyncSpool]:
    spool = Spool(path, synchronous="NORMAL", clock=lambda: WALL)
    return spool, AsyncSpool(spool, inline=inline)


async def poll(aspool: AsyncSpool, devices: list[str], ticks: int, period: float = 1.0) -> None:
    """Stand-in for polling: one tick per device every ``period`` (virtual) seconds."""
    for i in range(ticks):
        for device in devices:
            await aspool.append(device, tick(device, 2, value=float(i)))
        await anyio.sleep(period)


def expected(spool: Spool, devices: list[str], n: int) -> list[tuple[str, int]]:
    origin = int(WALL * 1_000_000)
    return [(d, origin + i) for i in range(n) for d in devices]


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_a_failing_sink_does_not_stall_the_other_and_drains_exactly_once(
    tmp_path: Path,
) -> None:
    spool, aspool = spool_at(tmp_path / "s.db")
    good, bad = MemoryTarget("good"), MemoryTarget("bad")
    bad.failing = True
    with spool:
        async with ForwardingEngine(aspool, {"good": good, "bad": bad}, FAST) as engine:
            await poll(aspool, ["a", "b"], 20)
            # While "bad" was down, "good" got every tick, and polling never waited.
            assert good.keys == expected(spool, ["a", "b"], 20)
            assert bad.ticks == []
            assert engine.stats["bad"].errors >= 3
            assert engine.stats["bad"].state == "backoff"
            assert spool.backlog("bad").ticks == 40
            assert spool.backlog("good").ticks == 0
            bad.failing = False
            assert await engine.flush(timeout_s=60)
            assert bad.keys == expected(spool, ["a", "b"], 20)  # in order, once each
            assert bad.samples == good.samples
            assert engine.stats["bad"].consecutive_failures == 0
            assert engine.stats["bad"].delivered_rows == 80
        assert spool.backlog("bad").ticks == 0


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_a_batch_stored_in_part_is_delivered_again_and_deduplicated(tmp_path: Path) -> None:
    spool, aspool = spool_at(tmp_path / "s.db")
    target = MemoryTarget()
    with spool:
        spool.register_sink("t")
        for i in range(10):
            spool.append("a", tick("a", 1, value=float(i)))
        target.fail_after = 2  # stores 2 ticks of the first batch of 4, then fails
        async with ForwardingEngine(aspool, {"t": target}, FAST) as engine:
            assert await engine.flush(timeout_s=60)
        assert target.keys == expected(spool, ["a"], 10)
        assert target.duplicates == 2  # the two stored ticks came again and were dropped
        assert engine.stats["t"].errors == 1
        assert target.opens == 2


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_a_hung_sink_is_cancelled_and_retried_within_its_deadline(tmp_path: Path) -> None:
    spool, aspool = spool_at(tmp_path / "s.db")
    good, hung = MemoryTarget("good"), MemoryTarget("hung")
    hung.hang = True
    options = ForwarderOptions(deliver_timeout_s=3.0, linger_s=0.0)
    with spool:
        async with ForwardingEngine(aspool, {"good": good, "hung": hung}, options) as engine:
            start = anyio.current_time()
            await poll(aspool, ["a"], 30)
            stats = engine.stats["hung"]
            # Each attempt is cut at 3 s, then waits 1, 2, 4, 8 … s: in 30 s at least 4 tries.
            assert stats.errors >= 4
            assert hung.deliveries == stats.errors + (stats.state == "delivering")
            assert "no confirmation within 3 s" in (stats.last_error or "")
            assert good.keys == expected(spool, ["a"], 30)
            hung.hang = False
            assert await engine.flush(timeout_s=120)
            assert hung.keys == good.keys
            assert anyio.current_time() - start < 30 + 3 + 30 + 1  # one capped backoff at most


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_backoff_doubles_from_one_second_to_thirty(tmp_path: Path) -> None:
    spool, aspool = spool_at(tmp_path / "s.db")
    opens: list[float] = []

    class Down(MemoryTarget):
        async def open(self) -> None:
            opens.append(anyio.current_time())
            raise ServomexSinkWriteError("connection refused")

    with spool:
        async with ForwardingEngine(aspool, {"down": Down()}, FAST):
            await anyio.sleep(100)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(opens)]
    assert gaps[:7] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_delivery_resumes_from_the_cursor_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    target = MemoryTarget()  # outlives the engines, as a file or a table would
    spool, aspool = spool_at(path)
    with spool:
        async with ForwardingEngine(aspool, {"t": target}, FAST) as engine:
            await poll(aspool, ["a"], 5)
            assert await engine.flush(timeout_s=10)
        for i in range(5, 9):  # committed while no forwarder runs
            spool.append("a", tick("a", 2, value=float(i)))
    spool, aspool = spool_at(path)
    with spool:
        async with ForwardingEngine(aspool, {"t": target, "new": MemoryTarget()}, FAST) as engine:
            assert await engine.flush(timeout_s=10)
        assert target.keys == expected(spool, ["a"], 9)
        assert target.duplicates == 0
        assert engine.stats["t"].delivered_ticks == 4
        assert engine.stats["new"].delivered_ticks == 0  # a new sink starts from now


@pytest.mark.anyio
async def test_worker_thread_spool_with_a_sink_adapter(tmp_path: Path) -> None:
    # Real time: the production path runs every spool call on a worker thread.
    spool, aspool = spool_at(tmp_path / "s.db", inline=False)
    sink = InMemorySink()
    flaky = MemoryTarget()
    flaky.failing = True
    options = ForwarderOptions(backoff_initial_s=0.01, backoff_max_s=0.05, linger_s=0.0)
    with spool:
        async with ForwardingEngine(
            aspool, {"mem": SinkTarget(sink), "flaky": flaky}, options
        ) as engine:
            for i in range(30):
                await aspool.append("a", tick("a", 2, value=float(i)))
            flaky.failing = False
            with anyio.fail_after(20):
                assert await engine.flush(timeout_s=15)
    assert [s.reading.value for s in sink.samples if s.channel is ChannelId.I1] == [  # type: ignore[union-attr]
        float(i) for i in range(30)
    ]
    assert flaky.keys == expected(spool, ["a"], 30)
