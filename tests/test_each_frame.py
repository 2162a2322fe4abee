"""record(each_frame=True): every broadcast frame exactly once (issue 11 item 2).

Polling a continuous analyser is sample-and-hold (api.md §7): at 1 Hz over a 2 s broadcast every
frame is written twice. ``each_frame=True`` follows the client's frame subscription instead: one
batch per broadcast frame, as it arrives, none twice, none skipped.

Every test runs on virtual time (tests/_virtual_time.py): the simulators run their line on the
event loop's clock (``line_clock=anyio.current_time``) and the recorder's schedule is on the
same clock, so a ten-second broadcast costs no wall time and its frame times are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from _virtual_time import virtual_anyio_backend as anyio_backend
from helpers import continuous_stats, two_block_frame
from servomexlib.decode import decode_frame
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_continuous, open_device
from servomexlib.devices.models import (
    ChannelId,
    OverflowPolicy,
    ProtocolKind,
    Sample,
)
from servomexlib.errors import ServomexChecksumError, ServomexConnectionError
from servomexlib.manager import ServomexManager
from servomexlib.sim import Simulator
from servomexlib.streaming.recorder import Recording, record
from servomexlib.transport import FakeTransport

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]


def frame(o2: float) -> bytes:
    return two_block_frame(o2)


def bad_checksum(o2: float) -> bytes:
    return frame(o2)[:-7] + b"0000;\r\n"


def o2_values(batches: Sequence[Sequence[Sample]]) -> list[float | None]:
    return [b[0].value for b in batches]


async def collect(rec: Recording[Sequence[Sample]]) -> list[Sequence[Sample]]:
    return [batch async for batch in rec.stream]


async def producer_finished(rec: Recording[Sequence[Sample]]) -> None:
    """Wait, without consuming, until the producer has closed its end of the stream."""
    stream = rec.stream
    assert isinstance(stream, MemoryObjectReceiveStream)
    # Polled: the stream offers no event for "the sender closed" short of receiving from it.
    while stream.statistics().open_send_streams:  # noqa: ASYNC110
        await anyio.sleep(0.01)


@asynccontextmanager
async def fake_analyser(device: str = "stack") -> AsyncIterator[tuple[FakeTransport, Analyzer]]:
    fake = FakeTransport(label="fake://stack")
    async with await open_continuous(fake, device=device) as anz:
        yield fake, anz


# --------------------------------------------------------------------------- the acceptance test


async def test_every_broadcast_frame_once_over_ten_seconds() -> None:
    """Issue 11 item 2, as stated: a 0.5 s broadcast recorded for 10 s, compared with the
    simulator's own list of the frames it put on the line."""
    period, duration = 0.5, 10.0
    sim = Simulator(
        mode=ProtocolKind.CONTINUOUS_ASCII,
        frame_period=period,
        seed=3,
        line_clock=anyio.current_time,
    )
    sim.drift("I1", rate_per_s=0.01)  # +0.005 per frame: every frame carries its own I1 value
    sent: list[tuple[float, bytes]] = []  # (line time the frame's last byte is out, frame)
    line = sim.line
    transmit = line.transmit

    def spy(data: bytes, start: float) -> float:
        end = transmit(data, start)
        sent.append((end, data))
        return end

    line.transmit = spy  # type: ignore[method-assign]
    with anyio.fail_after(25):
        async with await open_continuous(sim.transport(), device="stack") as anz:
            await anz.poll()  # the broadcast is running
            began = anyio.current_time()  # the simulator's line clock
            async with record(anz, rate_hz=1.0, duration=duration, each_frame=True) as rec:
                batches = await collect(rec)
    s = rec.summary
    assert s.samples_emitted == len(batches)
    assert s.samples_late == 0
    assert s.disconnects == 0
    samples = [sample for batch in batches for sample in batch]
    assert all(sample.error is None for sample in samples)
    # One batch per frame: the frame's readings, sharing its stamps; no sample twice.
    for batch in batches:
        assert [x.channel for x in batch] == [
            ChannelId.I1,
            ChannelId.I2,
            ChannelId.I3,
            ChannelId.E1,
            ChannelId.E2,
        ]
        assert len({(x.received_at, x.monotonic_ns) for x in batch}) == 1
        assert {x.device for x in batch} == {"stack"}
    keys = [(x.device, x.received_at, x.channel) for x in samples]
    assert len(keys) == len(set(keys))
    stamps = [b[0].monotonic_ns for b in batches]
    assert stamps == sorted(set(stamps))
    # The same frames the simulator transmitted, in order, each once, none skipped.
    sent_values = [decode_frame(raw).channel("I1").value for _, raw in sent]
    assert len(set(sent_values)) == len(sent_values)  # the drift makes every frame distinct
    got = o2_values(batches)
    first = sent_values.index(got[0])
    assert got == sent_values[first : first + len(got)]
    assert len(got) >= duration / period - 2
    # Nothing at either edge was skipped: the frame before the first one recorded was out
    # before the recording began (record() subscribes before anything else can run), the one
    # after the last one only about when it ended (a frame counts by when it is read: a
    # stalled machine reads it late, hence the margin).
    ends = [end for end, _ in sent]
    if first > 0:
        assert ends[first - 1] <= began + 0.01
    after = first + len(got)
    if after < len(ends):
        assert ends[after] >= began + duration - 0.25


async def test_polling_a_broadcaster_is_sample_and_hold() -> None:
    # The contrast that shows the test above can fail: without each_frame, ticks faster than
    # the broadcast re-read the same frame (the documented default, api.md §7).
    sim = Simulator(
        mode=ProtocolKind.CONTINUOUS_ASCII,
        frame_period=0.5,
        seed=3,
        line_clock=anyio.current_time,
    )
    with anyio.fail_after(10):
        async with await open_continuous(sim.transport()) as anz:
            await anz.poll()
            async with record(anz, rate_hz=8.0, duration=1.5) as rec:
                batches = await collect(rec)
    stamps = [b[0].monotonic_ns for b in batches]
    assert len(set(stamps)) < len(stamps)  # the same frame in several batches


# --------------------------------------------------------------------------- semantics


async def test_each_frame_batches_follow_the_feed() -> None:

    async def broadcast(fake: FakeTransport) -> None:
        for value in (20.1, 20.2):
            fake.feed(frame(value))
            await anyio.sleep(0.02)
        fake.feed(bad_checksum(20.3))
        await anyio.sleep(0.02)
        fake.feed(frame(20.4))

    with anyio.fail_after(5):
        async with (
            fake_analyser() as (fake, anz),
            record(anz, rate_hz=0.001, duration=0.5, each_frame=True) as rec,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(broadcast, fake)
            batches = await collect(rec)
    assert o2_values(batches) == [20.1, 20.2, None, 20.4]
    assert [len(b) for b in batches] == [2, 2, 1, 2]
    rejected = batches[2][0]
    assert rejected.channel is None
    assert rejected.reading is None
    assert rejected.device == "stack"
    assert isinstance(rejected.error, ServomexChecksumError)
    assert rejected.error.context.port == "fake://stack"
    s = rec.summary
    assert s.samples_emitted == 4
    assert s.samples_late == 1  # the rejected frame
    assert anz.dropped_frames == 1
    assert (s.tick_duration_ms_p50, s.tick_duration_ms_p99, s.max_drift_ms) == (0.0, 0.0, 0.0)


async def test_duration_is_wall_time_and_later_frames_are_left_out() -> None:
    with anyio.fail_after(5):
        async with fake_analyser() as (fake, anz):
            started = anyio.current_time()
            async with record(anz, rate_hz=1.0, duration=0.3, each_frame=True) as rec:
                fake.feed(frame(1.0))
                batches = [await rec.stream.__anext__()]
                await anyio.sleep(0.4)  # past the end of the recording
                fake.feed(frame(2.0))
                batches += await collect(rec)
            ended = anyio.current_time()
    assert o2_values(batches) == [1.0]
    assert ended - started >= 0.3
    assert rec.summary.samples_emitted == 1


async def test_a_silent_broadcast_ends_the_stream_on_time() -> None:
    with anyio.fail_after(5):
        async with fake_analyser() as (_, anz):
            started = anyio.current_time()
            async with record(anz, rate_hz=1.0, duration=0.2, each_frame=True) as rec:
                assert await collect(rec) == []
            assert anyio.current_time() - started >= 0.2
    assert rec.summary.samples_emitted == 0


async def test_frames_queued_at_the_end_are_still_handed_over() -> None:
    # A slow consumer and a one-batch buffer (BLOCK): the producer is stuck in send() when the
    # end comes; the frames that arrived before the end are delivered all the same.
    with anyio.fail_after(5):
        async with (
            fake_analyser() as (fake, anz),
            record(anz, rate_hz=1.0, duration=0.2, each_frame=True, buffer_size=1) as rec,
        ):
            for i in range(6):
                fake.feed(frame(10.0 + i))
            batches = []
            async for batch in rec.stream:
                batches.append(batch)
                await anyio.sleep(0.08)  # slower than the recording lasts in total
    assert o2_values(batches) == [10.0 + i for i in range(6)]
    assert rec.summary.samples_emitted == 6
    assert rec.summary.samples_late == 0


async def test_overflow_policies_apply_to_frame_batches() -> None:
    with anyio.fail_after(5):
        async with (
            fake_analyser() as (fake, anz),
            record(
                anz,
                rate_hz=1.0,
                duration=0.3,
                each_frame=True,
                buffer_size=2,
                overflow=OverflowPolicy.DROP_OLDEST,
            ) as rec,
        ):
            for i in range(5):
                fake.feed(frame(30.0 + i))
            await producer_finished(rec)  # no consumer until the recording is over
            batches = await collect(rec)
    assert o2_values(batches) == [33.0, 34.0]  # the newest two survive
    assert rec.summary.samples_emitted == 5
    assert rec.summary.samples_late == 3  # evicted


async def test_only_a_continuous_analyser_can_be_followed() -> None:
    modbus_sim = Simulator(
        mode=ProtocolKind.MODBUS_RTU, realtime=False, line_clock=anyio.current_time
    )
    anz = await open_device(modbus_sim.transport(), protocol="modbus_rtu", identify=False)
    try:
        with pytest.raises(ValueError, match="continuous Analyzer"):
            async with record(anz, rate_hz=1.0, each_frame=True):
                pass
        assert modbus_sim.requests == ()  # refused before anything was polled
    finally:
        await anz.aclose()
    async with ServomexManager() as manager:
        with pytest.raises(ValueError, match="each_frame"):
            async with record(manager, rate_hz=1.0, each_frame=True):
                pass
    with anyio.fail_after(5):
        async with fake_analyser() as (_, continuous):
            with pytest.raises(ValueError, match="rate_hz"):  # still validated
                async with record(continuous, rate_hz=0, each_frame=True):
                    pass


async def test_a_lost_stream_ends_the_recording_without_auto_reconnect() -> None:
    got: list[Sequence[Sample]] = []

    async def follow(fake: FakeTransport, anz: Analyzer) -> None:
        async with record(anz, rate_hz=1.0, duration=5.0, each_frame=True) as rec:
            fake.feed(frame(5.0))
            got.append(await rec.stream.__anext__())
            await fake.send_eof()
            got.extend(await collect(rec))

    with anyio.fail_after(5):
        async with fake_analyser() as (fake, anz):
            with pytest.raises(ServomexConnectionError, match="end of stream on fake://stack"):
                await follow(fake, anz)
    assert o2_values(got) == [5.0]


class Holder:
    """Opens continuous Analyzers over fresh FakeTransports, each entered and left in a task of
    its own (a continuous Analyzer is entered and exited in one task, api.md §5)."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.fakes: list[FakeTransport] = []
        self.analyzers: list[Analyzer] = []
        self._release = anyio.Event()

    async def open(self) -> Analyzer:
        anz: Analyzer = await self._tg.start(self._hold)
        return anz

    async def _hold(self, *, task_status: anyio.abc.TaskStatus[Analyzer]) -> None:
        fake = FakeTransport(label=f"fake://stack{len(self.fakes)}")
        self.fakes.append(fake)
        async with await open_continuous(fake, device="stack") as anz:
            self.analyzers.append(anz)
            task_status.started(anz)
            await self._release.wait()

    def release(self) -> None:
        self._release.set()


async def test_auto_reconnect_subscribes_to_the_rebuilt_source() -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            holder = Holder(tg)
            first = await holder.open()
            async with record(
                first,
                rate_hz=1.0,
                duration=1.5,
                each_frame=True,
                auto_reconnect=True,
                reconnect_factory=holder.open,
            ) as rec:
                stream = rec.stream
                holder.fakes[0].feed(frame(1.0))
                batches = [await stream.__anext__()]
                await holder.fakes[0].send_eof()  # the port is lost: the frame stream ends
                # The factory runs after the 0.5 s backoff; the recorder then subscribes.
                # Polled: nothing signals "subscribed" to an outsider.
                while (  # noqa: ASYNC110
                    len(holder.analyzers) < 2
                    or not continuous_stats(holder.analyzers[1]).subscribers
                ):
                    await anyio.sleep(0.01)
                holder.fakes[1].feed(frame(2.0))
                batches += await collect(rec)
            holder.release()
    assert o2_values(batches) == [1.0, 2.0]
    s = rec.summary
    assert s.disconnects == 1
    assert 0.5 <= s.outage_s < 1.4  # from the loss to the first frame of the new source
    assert s.samples_emitted == 2
