"""Exceptions propagate, queues are bounded (issue 13 item 7).

* A bug in the continuous receiver is not a lost line: it stops the receiver with a
  ServomexConnectionError whose ``__cause__`` is the bug, and the bug itself surfaces from the
  Analyzer's ``async with``. Only the transport's ends stop the receiver quietly.
* The manager folds only ServomexErrors into per-device results; anything else propagates.
* Every live queue is bounded: full → the oldest item is dropped, kept count of, logged once per
  overflow episode; ``record(each_frame=True)`` counts every dropped frame as late.
* One helper, :func:`servomexlib.errors.unwrap_group`, peels single-member exception groups.

Everything runs on FakeTransport or an unpaced simulator; waits are on the library's own
counters, never on wall-clock time.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from helpers import continuous_stats, two_block_frame
from servomexlib.cli.common import connection_lost
from servomexlib.clients import continuous_receiver
from servomexlib.clients.continuous import ContinuousClient, FrameRejection
from servomexlib.clients.queue import LatestQueue
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import (
    ChannelId,
    ErrorPolicy,
    Frame,
    Sample,
    StreamMode,
)
from servomexlib.errors import (
    ServomexConnectionError,
    ServomexTimeoutError,
    unwrap_group,
)
from servomexlib.manager import ServomexManager
from servomexlib.streaming import stream_session
from servomexlib.streaming.recorder import record
from servomexlib.streaming.stream_session import SampleSender, StreamingSession
from servomexlib.sync.portal import unwrap_single
from servomexlib.transport import FakeTransport
from servomexlib.wire.continuous import parse_frame

pytestmark = pytest.mark.anyio

RTU_A = "sim://?mode=modbus_rtu&realtime=0&address=1"
RTU_B = "sim://?mode=modbus_rtu&realtime=0&address=2"


def frame(o2: float) -> bytes:
    return two_block_frame(o2)


async def fed(fake: FakeTransport, data: bytes) -> None:
    """Feed ``data`` and return once the receiver has handled it (every task blocked again)."""
    fake.feed(data)
    await anyio.wait_all_tasks_blocked()


# ------------------------------------------------------------------------------ unwrap_group


def test_unwrap_group_peels_single_member_groups_only() -> None:
    bare = ValueError("bare")
    assert unwrap_group(bare) is bare
    leaf = ServomexTimeoutError("leaf")
    assert unwrap_group(ExceptionGroup("one", [leaf])) is leaf
    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [leaf])])
    assert unwrap_group(nested) is leaf
    several = ExceptionGroup("two", [leaf, bare])
    assert unwrap_group(several) is several
    # Peeling stops at the first level with several members.
    inner = ExceptionGroup("inner", [leaf, bare])
    assert unwrap_group(ExceptionGroup("outer", [inner])) is inner
    interrupt = KeyboardInterrupt()
    assert unwrap_group(BaseExceptionGroup("ctrl-c", [interrupt])) is interrupt


def test_unwrap_group_keeps_traceback_and_cause() -> None:
    cause = OSError("the port went away")
    try:
        try:
            raise ServomexConnectionError("lost") from cause
        except ServomexConnectionError as exc:
            raise ExceptionGroup("tg", [exc]) from None
    except ExceptionGroup as group:
        leaf = unwrap_group(group)
    assert isinstance(leaf, ServomexConnectionError)
    assert leaf.__cause__ is cause
    assert leaf.__traceback__ is not None
    names = [f.name for f in traceback.extract_tb(leaf.__traceback__)]
    assert "test_unwrap_group_keeps_traceback_and_cause" in names


def test_every_call_site_uses_the_one_helper() -> None:
    assert unwrap_single is unwrap_group  # the sync portal's public name is an alias
    lost = ServomexConnectionError("lost")
    assert connection_lost(ExceptionGroup("a", [ExceptionGroup("b", [lost])])) is lost
    assert connection_lost(ExceptionGroup("a", [lost, ValueError()])) is None
    assert connection_lost(ServomexTimeoutError("late")) is None


# ------------------------------------------------------------------- the continuous receiver


#: What a test feeds to make a TrippingTransport's read fail.
TRIP = b"<trip>"


class TrippingTransport(FakeTransport):
    """A FakeTransport whose read raises ``error`` once it would return :data:`TRIP`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(label="fake://tripping")
        self.error = error

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await super().receive(max_bytes)
        if data.startswith(TRIP):
            raise self.error
        return data


async def test_a_bug_in_the_transport_read_surfaces_from_async_with() -> None:
    bug = RuntimeError("transport bug")
    fake = TrippingTransport(bug)
    client = ContinuousClient(fake)
    anz = Analyzer(client)
    fake.feed(frame(20.5))
    first: list[Frame] = []

    async def use() -> None:
        async with anz:
            first.append(await anz.poll())
            fake.feed(TRIP)
            await anz.poll(wait_fresh=True)  # the next read is the bug

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await use()
    assert first[0].channel(ChannelId.I1).value == 20.5
    surfaced = unwrap_group(info.value)
    assert surfaced is bug  # the bug itself, not a ConnectionError standing in for it
    frames = [f.name for f in traceback.extract_tb(surfaced.__traceback__)]
    assert "receive" in frames  # with the traceback of where it was raised
    reason = client.stop_reason
    assert isinstance(reason, ServomexConnectionError)
    assert reason.__cause__ is bug
    assert "internal error RuntimeError('transport bug')" in reason.message
    assert not client.running
    assert not fake.is_open  # the port was still released


async def test_a_waiting_reader_sees_a_connection_error_caused_by_the_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    real_parse = parse_frame

    def parse_then_fail(segment: bytes, **kw: Any) -> Frame:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("parser bug")
        return real_parse(segment, **kw)

    monkeypatch.setattr(continuous_receiver, "parse_frame", parse_then_fail)
    fake = FakeTransport()
    client = ContinuousClient(fake)
    anz = Analyzer(client)
    entered = anyio.Event()
    caught: dict[str, BaseException] = {}

    async def host() -> None:
        try:
            async with anz:
                await anz.poll()  # the first frame parses
                entered.set()
                await anyio.sleep_forever()
        except ExceptionGroup as group:
            caught["host"] = group

    async def reader() -> None:
        await entered.wait()
        try:
            await anz.poll(wait_fresh=True)
        except ServomexConnectionError as exc:
            caught["reader"] = exc

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(host)
            tg.start_soon(reader)
            fake.feed(frame(20.0))
            await entered.wait()
            await anyio.wait_all_tasks_blocked()  # the reader waits for the next frame
            fake.feed(frame(21.0))  # parsing it is the bug
    bug = unwrap_group(caught["host"])
    assert isinstance(bug, RuntimeError)
    assert str(bug) == "parser bug"
    seen = caught["reader"]
    assert isinstance(seen, ServomexConnectionError)
    assert "has stopped: internal error RuntimeError('parser bug')" in seen.message
    assert seen.__cause__ is bug
    assert seen.context.port == "fake://test"


async def test_a_bug_ends_every_subscription_and_is_not_a_frame_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(segment: bytes, **kw: Any) -> Frame:
        raise KeyError("parser bug")

    monkeypatch.setattr(continuous_receiver, "parse_frame", broken)
    fake = FakeTransport()
    client = ContinuousClient(fake)
    got: list[Sample] = []

    async def follow() -> None:
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            samples, _ = client.subscribe("dev")
            fake.feed(frame(20.0))
            with samples:
                async for sample in samples:  # ends: the receiver stopped
                    got.append(sample)

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await follow()
    assert isinstance(unwrap_group(info.value), KeyError)
    assert got == []  # no error Sample pretends the bug was a bad frame
    assert client.dropped_frames == 0
    assert isinstance(client.stop_reason, ServomexConnectionError)
    await client.aclose()


@pytest.mark.parametrize(
    "end",
    [anyio.EndOfStream(), anyio.BrokenResourceError(), anyio.ClosedResourceError()],
    ids=["eof", "broken", "closed"],
)
async def test_anyio_stream_ends_from_a_user_transport_stop_quietly(end: Exception) -> None:
    fake = TrippingTransport(end)
    client = ContinuousClient(fake)
    anz = Analyzer(client)
    fake.feed(frame(20.5))
    with anyio.fail_after(5):
        async with anz:  # no exception: a lost line is not a bug
            assert (await anz.poll()).channel(ChannelId.I1).value == 20.5
            fake.feed(TRIP)
            with pytest.raises(ServomexConnectionError) as info:
                await anz.poll(wait_fresh=True)
    reason = client.stop_reason
    assert isinstance(reason, ServomexConnectionError)
    assert reason.__cause__ is end
    assert info.value.__cause__ is reason  # the reader's error names the transport's end


async def test_transport_end_of_stream_is_the_readers_cause() -> None:
    fake = FakeTransport()
    client = ContinuousClient(fake)
    fake.feed(frame(20.0))
    with anyio.fail_after(5):
        async with Analyzer(client) as anz:
            await anz.poll()
            await fake.send_eof()
            with pytest.raises(ServomexConnectionError, match="has stopped") as info:
                await anz.poll(wait_fresh=True)
    assert info.value.__cause__ is client.stop_reason
    assert isinstance(client.stop_reason, ServomexConnectionError)


# ------------------------------------------------------------------------------ the manager


async def test_manager_folds_only_servomex_errors_into_results() -> None:
    async def op(anz: Analyzer) -> str:
        if anz.device == "a":
            raise ServomexTimeoutError("a is late")
        return anz.device

    with anyio.fail_after(10):
        async with ServomexManager(error_policy=ErrorPolicy.RETURN) as mgr:
            await mgr.add("a", RTU_A, address=1)
            await mgr.add("b", RTU_B, address=2)
            results = await mgr.execute_each(op)
    assert isinstance(results["a"].error, ServomexTimeoutError)
    assert results["b"].value == "b"


@pytest.mark.parametrize("policy", [ErrorPolicy.RAISE, ErrorPolicy.RETURN])
async def test_a_bug_in_an_operation_propagates_bare(policy: ErrorPolicy) -> None:
    bug = TypeError("op bug")

    async def op(anz: Analyzer) -> str:
        if anz.device == "b":
            raise bug
        return anz.device

    with anyio.fail_after(10):
        async with ServomexManager(error_policy=policy) as mgr:
            await mgr.add("a", RTU_A, address=1)
            await mgr.add("b", RTU_B, address=2)
            with pytest.raises(TypeError) as info:
                await mgr.execute_each(op)
            assert mgr.names == ("a", "b")  # the manager itself is fine
    assert info.value is bug
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "op" in names


async def test_poll_samples_drops_device_errors_but_not_bugs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def late(**kw: Any) -> Frame:
        raise ServomexTimeoutError("no reply", context=None)

    async def buggy(**kw: Any) -> Frame:
        raise ZeroDivisionError("poll bug")

    with anyio.fail_after(10):
        async with ServomexManager() as mgr:
            a = await mgr.add("a", RTU_A, address=1)
            b = await mgr.add("b", RTU_B, address=2)
            monkeypatch.setattr(b, "poll", late)
            with caplog.at_level(logging.WARNING, logger="servomexlib.manager"):
                samples = await mgr.poll_samples()
            assert samples
            assert {s.device for s in samples} == {"a"}
            assert any("b failed: no reply" in r.getMessage() for r in caplog.records)
            monkeypatch.setattr(a, "poll", buggy)
            with pytest.raises(ZeroDivisionError, match="poll bug"):
                await mgr.poll_samples()
            with pytest.raises(ZeroDivisionError, match="poll bug"):
                await mgr.poll()


# ------------------------------------------------------------------------ LatestQueue itself


async def test_latest_queue_keeps_the_newest_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("servomexlib.test")
    queue = LatestQueue[int](4, what="test feed", logger=log)
    with caplog.at_level(logging.INFO, logger="servomexlib.test"):
        displaced = [queue.put(i) for i in range(10_000)]
        assert queue.queued == 4  # memory stays bounded however long nobody reads
        assert queue.dropped == 9_996
        assert sum(displaced) == 9_996
        assert displaced[:4] == [0, 0, 0, 0]
        assert [queue.receive.receive_nowait() for _ in range(4)] == [9996, 9997, 9998, 9999]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # one line per overflow episode, not one per item
        assert "test feed is full (4 items)" in warnings[0].getMessage()
        queue.put(1)  # drained: the episode ends
        assert any("9996 item(s) were dropped" in r.getMessage() for r in caplog.records)
        for i in range(5):
            queue.put(i)  # a second episode
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert queue.dropped == 9_998  # 1 left after the drain + 5 more into 4 places
    queue.close()
    queue.receive.close()


async def test_latest_queue_ends_and_notices_a_gone_consumer() -> None:
    queue = LatestQueue[int](2, what="x", logger=logging.getLogger("servomexlib.test"))
    queue.put(1)
    queue.close()
    assert queue.closed
    with pytest.raises(anyio.ClosedResourceError):
        queue.put(2)
    assert await queue.receive.receive() == 1
    with pytest.raises(anyio.EndOfStream):
        await queue.receive.receive()
    queue.receive.close()
    gone = LatestQueue[int](2, what="y", logger=logging.getLogger("servomexlib.test"))
    gone.receive.close()
    with pytest.raises(anyio.BrokenResourceError):
        gone.put(1)  # the eviction clone does not hide that nobody reads
    gone.close()
    with pytest.raises(ValueError, match="integer >= 1"):
        LatestQueue[int](0, what="z", logger=logging.getLogger("servomexlib.test"))


# --------------------------------------------------------------- continuous subscriber queues


async def test_subscriber_queues_drop_the_oldest_and_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTransport()
    client = ContinuousClient(fake, sample_queue=4, frame_queue=2)
    with anyio.fail_after(5), caplog.at_level(logging.WARNING, logger="servomexlib.continuous"):
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            samples, token = client.subscribe("dev")
            frames, frame_token = client.subscribe_frames()
            for i in range(5):  # 5 frames of 2 readings, nobody reading
                await fed(fake, frame(20.0 + i))
            await fed(fake, b" not a frame\r\n")  # a rejected line is one more item
            assert client.dropped_frames == 1
            stats = client.statistics()
            # 11 samples into 4 places; 6 frame items into 2.
            assert client.subscriber_dropped(token) == 7
            assert client.subscriber_dropped(frame_token) == 4
            assert stats.subscriber_overflows == 11
            with samples, frames:
                kept = [samples.receive_nowait() for _ in range(4)]
                kept_frames = [frames.receive_nowait() for _ in range(2)]
            await client.aclose()
    # The newest are kept, in order: frame 23.0's E1, frame 24.0, the rejected line.
    assert [(s.channel, s.value) for s in kept] == [
        (ChannelId.E1, 4.0),
        (ChannelId.I1, 24.0),
        (ChannelId.E1, 4.0),
        (None, None),
    ]
    assert kept[-1].error is not None
    assert isinstance(kept_frames[0], Frame)
    assert kept_frames[0].channel(ChannelId.I1).value == 24.0
    assert isinstance(kept_frames[1], FrameRejection)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one episode per queue
    assert any("subscriber 'dev' on fake://test is full (4 items)" in w for w in warnings)
    assert client.subscriber_dropped(object()) == 0


async def test_a_stalled_stream_keeps_the_receiver_and_other_subscribers_going() -> None:
    fake = FakeTransport()
    client = ContinuousClient(fake, sample_queue=2)
    with anyio.fail_after(5):
        async with Analyzer(client) as anz:
            stalled = anz.stream()  # never read
            live, token = client.subscribe("live")
            with live:
                for i in range(20):
                    fake.feed(frame(20.0 + i))
                    # The live subscriber reads everything; the stalled one costs 2 samples.
                    got = [await live.receive(), await live.receive()]
                    assert got[0].value == 20.0 + i
                assert continuous_stats(anz).frames_ok == 20
                assert client.subscriber_dropped(token) == 0
                assert continuous_stats(anz).subscriber_overflows == 38  # 40 samples into 2 places
                assert stalled.dropped == 38  # the Analyzer's session reports its own losses
                newest = [await stalled.__anext__(), await stalled.__anext__()]
                assert [(s.channel, s.value) for s in newest] == [
                    (ChannelId.I1, 39.0),
                    (ChannelId.E1, 4.0),
                ]
                await stalled.aclose()


async def test_a_subscription_session_reports_what_its_queue_dropped() -> None:
    fake = FakeTransport()
    client = ContinuousClient(fake, sample_queue=3)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            receive, token = client.subscribe("dev")
            session = StreamingSession(
                receive,
                mode=StreamMode.AUTOPRINT,
                on_close=lambda: client.unsubscribe(token),
                dropped=lambda: client.subscriber_dropped(token),
            )
            assert session.dropped == 0
            for i in range(3):
                await fed(fake, frame(20.0 + i))
            assert session.dropped == 3  # 6 samples into 3 places
            assert "dropped=3" in repr(session)
            assert [(s.channel, s.value) async for s in _take(session, 3)] == [
                (ChannelId.E1, 4.0),
                (ChannelId.I1, 22.0),
                (ChannelId.E1, 4.0),
            ]
            await session.aclose()
            await client.aclose()


async def _take(session: StreamingSession, n: int) -> AsyncIterator[Sample]:
    for _ in range(n):
        yield await session.__anext__()


# -------------------------------------------------------------------- producer (POLL) sessions


async def test_a_producer_session_drops_the_oldest_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frame_20 = parse_frame(
        frame(20.0).rstrip(b"\r\n"), received_at=datetime.now(UTC), monotonic_ns=0
    )
    pushed = anyio.Event()

    async def producer(send: SampleSender) -> None:
        for i in range(6):
            for sample in frame_20.as_samples(f"tick{i}"):  # 2 samples per tick
                if i % 2:
                    await send.send(sample)
                else:
                    send.send_nowait(sample)
        pushed.set()
        await anyio.sleep_forever()

    session = StreamingSession.with_producer(producer, limit=5)
    with anyio.fail_after(5), caplog.at_level(logging.WARNING, logger="servomexlib.streaming"):
        async with session:
            await pushed.wait()
            assert session.dropped == 7  # 12 samples into 5 places
            got = [await session.__anext__() for _ in range(5)]
    assert [s.device for s in got] == ["tick3", "tick4", "tick4", "tick5", "tick5"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "queue of poll stream is full (5 items): dropping the oldest; the consumer is not "
        "keeping up"
    ]
    with pytest.raises(ValueError, match="integer >= 1"):
        StreamingSession.with_producer(producer, limit=0)


@pytest.mark.virtual_time  # in-process sim://: the producer's schedule on the loop's clock
async def test_a_modbus_stream_nobody_reads_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_session, "STREAM_QUEUE_SAMPLES", 10)
    anz = await open_device(RTU_A, protocol="modbus_rtu")
    with anyio.fail_after(20):
        async with anz, anz.stream(rate_hz=50) as samples:
            # The producer polls on its own schedule while nobody reads.
            while samples.dropped < 25:  # noqa: ASYNC110 (5 ticks of 5 samples past the bound)
                await anyio.sleep(0.01)
            dropped = samples.dropped
            got: list[Sample] = []
            while len(got) < 10:
                got.append(await samples.__anext__())
    assert dropped >= 25
    stamps = [s.monotonic_ns for s in got]
    assert stamps == sorted(stamps)  # in order
    assert len({s.channel for s in got}) == 5  # whole sweeps of the 5 populated slots


# ------------------------------------------------------------------ record(each_frame=True)


async def test_each_frame_counts_every_frame_the_queue_dropped() -> None:
    fake = FakeTransport()
    client = ContinuousClient(fake, frame_queue=2)
    total = 8
    batches: list[Sequence[Sample]] = []
    anz = Analyzer(client)
    with anyio.fail_after(10):
        async with anz, record(anz, rate_hz=1.0, each_frame=True, buffer_size=1) as rec:
            for i in range(total):  # the consumer does not read meanwhile
                await fed(fake, frame(20.0 + i))
            async for batch in rec.stream:
                batches.append(batch)
                if batch[0].value == 20.0 + total - 1:
                    break
            summary = rec.summary
            emitted, late = summary.samples_emitted, summary.samples_late
    values = [b[0].value or 0.0 for b in batches]
    assert values == sorted(values)
    assert values[-1] == 20.0 + total - 1  # the newest frame is never the one dropped
    # Every frame is accounted for: recorded, or dropped and counted late.
    assert emitted == len(batches)
    assert emitted + late == total
    assert late >= total - (2 + 1 + 1)  # queue + stream buffer + the one in the producer's hand
    assert client.statistics().subscriber_overflows == late
