"""Old frames are never stamped as new (issue 11 items 5 and 10, transport part).

A broadcast never stops. Whatever waits in a buffer when a port is opened — or when the
receiver starts — is old: a pseudo-terminal keeps 4 KiB of what its peer wrote while nobody
read it, a TCP device server hands over what it buffered, the in-process simulator catches up
on the frames it owes a line that was not read. Reported on arrival, such a frame carries an
analyser clock minutes old and ``received_at`` = now (api.md §5: opening a port discards what
waits in its input buffer).

The acceptance test needs a broadcaster that ran 30 s before the port is opened; it is served
on a pseudo-terminal from a thread of its own (one for the module, so both backends share the
30 s wait) with its analyser clock on UTC, so the first frame reported can be checked against
``received_at``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc
import anyio.from_thread
import pytest

from helpers import ASYNCIO_ONLY, PtyFeeder, continuous_stats, served_on_pty, two_block_frame
from servomexlib.clients.continuous import ContinuousClient
from servomexlib.devices.factory import open_continuous, open_device
from servomexlib.devices.models import (
    ChannelId,
    Frame,
    ProtocolKind,
    Sample,
)
from servomexlib.errors import ServomexConnectionError, ServomexValidationError
from servomexlib.settings import SerialSettings
from servomexlib.sim import Simulator
from servomexlib.transport import FakeTransport, SerialTransport, TcpTransport
from servomexlib.transport.timed import TimedReader

pytestmark = pytest.mark.anyio

#: The 30 s broadcaster's period: longer than a 5-block frame's wire time at 19200 baud
#: (~112 ms), so the simulator never falls behind its own schedule and every frame's clock is
#: the moment it was sent. Fills a pty's 4 KiB in about 5 s.
PERIOD = 0.25
#: The analyser clock has whole seconds (the frame carries HH:MM:SS), read at the frame's start:
#: a fresh frame is received between 0 s and 1 s + its wire time after the clock it shows.
CLOCK_RESOLUTION = timedelta(seconds=1)


def utc_now_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def clock_lag(frame: Frame) -> timedelta:
    """How far ``received_at`` is ahead of the analyser clock the frame shows (UTC both)."""
    assert frame.analyser.clock is not None
    return frame.received_at.replace(tzinfo=None) - frame.analyser.clock


def assert_fresh(frame: Frame, period: float) -> None:
    """The frame was sent within one period (plus the clock's resolution) of ``received_at``."""
    lag = clock_lag(frame)
    assert -timedelta(seconds=period) <= lag <= CLOCK_RESOLUTION + timedelta(seconds=period), lag


def small_frame(o2: float) -> bytes:
    return two_block_frame(o2)


# --------------------------------------------------------------------------- the 30 s broadcaster


@dataclasses.dataclass
class Broadcaster:
    sim: Simulator
    path: str
    started: float  # time.monotonic() when it started broadcasting
    last_closed: float = 0.0  # when a test last closed the port


@pytest.fixture(scope="module")
def old_broadcaster() -> Iterator[Broadcaster]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        sim = Simulator(mode=ProtocolKind.CONTINUOUS_ASCII, frame_period=PERIOD, clock=None)
        sim.set_clock(utc_now_naive())  # the analyser clock runs on UTC from now on
        with portal.wrap_async_context_manager(served_on_pty(sim)) as (_, path):
            yield Broadcaster(sim, path, time.monotonic())


async def until_backlogged(b: Broadcaster) -> None:
    """Wait until the broadcaster has run 30 s and refilled the pty since the last close."""
    wake = max(b.started + 30.0, b.last_closed + 6.0)
    # A real sleep: the point of the test is a port opened long after the broadcast began.
    await anyio.sleep(max(0.0, wake - time.monotonic()))


@pytest.mark.timeout(90)  # the first run waits for the broadcaster's 30 s
@ASYNCIO_ONLY  # 30 s of a real pty broadcast; the backends' pty I/O: test_transport_serial.py
async def test_first_frame_after_a_thirty_second_broadcast_is_fresh(
    old_broadcaster: Broadcaster,
) -> None:
    b = old_broadcaster
    await until_backlogged(b)
    with anyio.fail_after(10):
        anz = await open_device(b.path, protocol="continuous", identify=False, frame_period=PERIOD)
        try:
            async with anz, anz.stream() as samples:
                # Subscribed before the first frame can be published: the stream's first
                # frame and poll()'s are the first one the receiver reported.
                first = await anz.poll()
                first_sample: Sample = await samples.__anext__()
                stats = continuous_stats(anz)
        finally:
            b.last_closed = time.monotonic()
    assert_fresh(first, PERIOD)
    assert first_sample.monotonic_ns == first.monotonic_ns
    assert first_sample.received_at == first.received_at
    # The pty held ~4 KiB of frames from the broadcast's first seconds: they were discarded
    # when the port was opened, not read. At most the rest of the frame on the wire at that
    # moment arrived, and was put aside as a cut line, not reported as a damaged frame.
    assert stats.stale_lines <= 1
    assert stats.bytes_received < 2 * len(b.sim.frame())
    assert anz.dropped_frames == 0


# --------------------------------------------------------------------------- serial


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    # The slave is kept open meanwhile, as a broadcaster serving the pty does.
    feeder = PtyFeeder(hold_slave=True)
    try:
        yield feeder.master, feeder.path
    finally:
        feeder.close()


async def test_serial_open_discards_what_the_pty_held(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    os.write(master, b"old frames " * 100)
    with anyio.fail_after(5):
        t = await SerialTransport.open(SerialSettings(port=path))
        try:
            assert await TimedReader(t).read_available(idle_timeout=0.2) == b""
            os.write(master, b"new\n")
            assert await TimedReader(t).read_until(b"\n", timeout=2) == b"new\n"
            os.write(master, b"waiting")
            await anyio.sleep(0.05)  # real: the bytes reach the tty's input queue
            assert await t.flush_input() == len(b"waiting")
            assert await TimedReader(t).read_available(idle_timeout=0.1) == b""
            await t.reopen()
            os.write(master, b"x" * 10)
            await anyio.sleep(0.05)
            await t.reopen()  # reopening discards the queue again
            assert await TimedReader(t).read_available(idle_timeout=0.1) == b""
        finally:
            await t.aclose()


async def test_without_the_flush_the_old_bytes_would_be_read(
    pty_pair: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The contrast that shows the test above can fail: the same open, with the flush skipped.
    master, path = pty_pair
    os.write(master, b"old frames " * 100)

    async def no_flush(self: SerialTransport) -> int:
        return 0

    monkeypatch.setattr(SerialTransport, "flush_input", no_flush)
    with anyio.fail_after(5):
        t = await SerialTransport.open(SerialSettings(port=path))
        try:
            assert (await TimedReader(t).read_available(idle_timeout=0.2)).startswith(b"old frames")
        finally:
            await t.aclose()


async def test_the_receiver_flushes_what_queued_between_open_and_start(
    pty_pair: tuple[int, str],
) -> None:
    # Opened, then entered a while later: what arrived in between is old by then.
    master, path = pty_pair
    with anyio.fail_after(5):
        anz = await open_continuous(path, frame_period=0.2)
        old = small_frame(1.0) + small_frame(2.0)
        os.write(master, old)
        await anyio.sleep(0.05)  # real: the bytes reach the tty's input queue
        async with anz:
            stats = continuous_stats(anz)
            os.write(master, small_frame(3.0))
            frame = await anz.poll()
    assert frame.channel("I1").value == 3.0
    assert stats.flushed_bytes == len(old)


# --------------------------------------------------------------------------- TCP


@dataclasses.dataclass
class Cues:
    """When the test device server sends its old buffer and its live frame."""

    old: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    live: anyio.Event = dataclasses.field(default_factory=anyio.Event)


@asynccontextmanager
async def device_server(old: bytes, new: bytes, cues: Cues) -> AsyncIterator[tuple[str, int]]:
    """A device server that sends ``old`` (what it buffered) and then ``new`` on cue."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await cues.old.wait()
            await stream.send(old)
            await cues.live.wait()
            await stream.send(new)
            await anyio.sleep(5)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield "127.0.0.1", port
        tg.cancel_scope.cancel()


async def test_tcp_flush_reads_off_what_the_socket_holds() -> None:
    cues = Cues()
    with anyio.fail_after(5):
        async with device_server(b"o" * 5000, b"fresh\n", cues) as (host, port):
            t = await TcpTransport.open(host, port)
            try:
                cues.old.set()
                await anyio.sleep(0.1)  # real: the server's old bytes reach our socket
                assert await t.flush_input() == 5000
                assert await t.flush_input() == 0  # never waits for more
                cues.live.set()
                assert await TimedReader(t).read_until(b"\n", timeout=2) == b"fresh\n"
            finally:
                await t.aclose()
        assert t.is_open is False
        with pytest.raises(ServomexConnectionError, match="closed"):
            await t.flush_input()


async def test_the_receiver_skips_a_device_servers_buffer() -> None:
    old = b"".join(small_frame(float(i)) for i in range(1, 6))
    cues = Cues()
    with anyio.fail_after(5):
        async with device_server(old, small_frame(99.0), cues) as (host, port):
            transport = await TcpTransport.open(host, port)
            cues.old.set()
            await anyio.sleep(0.1)  # real: the buffered frames arrive after the connect
            async with await open_continuous(transport) as anz:
                cues.live.set()
                frame = await anz.poll()
                stats = continuous_stats(anz)
    assert frame.channel("I1").value == 99.0
    assert stats.flushed_bytes == len(old)
    assert stats.frames_ok == 1
    assert stats.bytes_received == len(small_frame(99.0))


async def test_tcp_open_discards_what_is_readable_at_connect() -> None:
    # A device server that hands its buffer over the moment it accepts: by the time the
    # connection is handed to us the bytes may be in our socket already (then open discards
    # them) or still on their way (then the receiver's flush does). Either way none is read.
    old = b"".join(small_frame(float(i)) for i in range(1, 6))
    cues = Cues()
    cues.old.set()
    with anyio.fail_after(5):
        async with device_server(old, small_frame(99.0), cues) as (host, port):
            transport = await TcpTransport.open(host, port)
            await anyio.sleep(0.1)  # real: whatever was still on its way has arrived
            async with await open_continuous(transport) as anz:
                cues.live.set()
                frame = await anz.poll()
                stats = continuous_stats(anz)
    assert frame.channel("I1").value == 99.0
    assert stats.bytes_received == len(small_frame(99.0))


# --------------------------------------------------------------------------- the line-rate check


async def test_bytes_faster_than_the_line_were_waiting_before_the_start() -> None:
    """A transport that cannot flush but knows its line rate: the receiver itself refuses the
    frames that provably predate its start (more bytes than the line carried since then)."""
    char_time = 0.0005  # ~19200 baud
    fake = FakeTransport(char_time_s=char_time)
    backlog = [small_frame(float(i)) for i in range(10)]
    fake.feed(b"".join(backlog))  # queued before the receiver starts
    live = [small_frame(50.0 + i) for i in range(3)]
    client = ContinuousClient(fake, frame_period=0.2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            frames, token = client.subscribe_frames()
            # Live frames at the line's pace: each one's wire time passes before it is fed.
            await fake.emit(live, interval=len(live[0]) * char_time * 2)
            got = [await frames.receive() for _ in live]
            stats = client.statistics()
            client.unsubscribe(token)
            frames.close()
            tg.cancel_scope.cancel()
        await client.aclose()
    assert [f.channel("I1").value for f in got if isinstance(f, Frame)] == [50.0, 51.0, 52.0]
    assert stats.stale_lines == len(backlog)
    assert stats.frames_ok == len(live)
    assert stats.dropped_frames == 0


async def test_a_simulator_line_left_unread_is_not_dumped_as_new() -> None:
    """sim://: the transport attached at open; entered 2 s later, the simulator catches up on
    the frames it owes the line in one burst. None of them is reported."""
    period = 0.2  # longer than a frame's wire time (~112 ms): the schedule never falls behind
    sim = Simulator(mode=ProtocolKind.CONTINUOUS_ASCII, frame_period=period)
    sim.set_clock(utc_now_naive())
    with anyio.fail_after(10):
        anz = await open_continuous(sim.transport(), frame_period=period)
        await anyio.sleep(2.0)  # real: the broadcast goes on while nobody reads
        async with anz, anz.stream() as samples:
            first = await anz.poll()
            sample = await samples.__anext__()
            stats = continuous_stats(anz)
    assert_fresh(first, period)
    assert sample.monotonic_ns == first.monotonic_ns
    assert stats.stale_lines >= 2.0 / period - 3  # the owed frames, read and refused


async def test_a_new_simulator_attachment_hears_only_bytes_from_now() -> None:
    period = 0.2
    sim = Simulator(mode=ProtocolKind.CONTINUOUS_ASCII, frame_period=period)
    sim.set_clock(utc_now_naive())
    with anyio.fail_after(10):
        async with await open_continuous(sim.transport(), frame_period=period) as busy:
            for _ in range(5):  # the line is busy with a reader for a while
                await busy.poll(wait_fresh=True)
            async with await open_continuous(sim.transport(), frame_period=period) as late:
                first = await late.poll()
                stats = continuous_stats(late)
    assert_fresh(first, period)
    assert stats.stale_lines <= 1  # at most the tail of the frame on the wire at the attach


# --------------------------------------------------------------------------- AUTO's parked frame


async def test_autos_frame_is_stamped_when_auto_received_it() -> None:
    fake = FakeTransport(label="fake://auto")
    fake.feed(small_frame(7.0))  # the broadcast AUTO hears during its first probe
    with anyio.fail_after(10):
        anz = await open_device(fake, protocol="auto", identify=False, frame_period=0.5)
        detected_ns = time.monotonic_ns()
        async with anz:
            frame = await anz.poll()  # no waiting: the parked frame is the latest one
    assert frame.channel("I1").value == 7.0
    assert frame.monotonic_ns <= detected_ns  # when AUTO read it, not when the receiver did


async def test_autos_frame_is_dropped_when_the_start_comes_a_period_later() -> None:
    fake = FakeTransport(label="fake://auto")
    fake.feed(small_frame(7.0))
    with anyio.fail_after(10):
        anz = await open_device(fake, protocol="auto", identify=False, frame_period=0.2)
        await anyio.sleep(0.3)  # real: longer than a broadcast period
        async with anz:
            with pytest.raises(ServomexValidationError, match="no frame cached"):
                anz.snapshot()
            fake.feed(small_frame(8.0))
            frame = await anz.poll()
            stats = continuous_stats(anz)
    assert frame.channel("I1").value == 8.0
    assert stats.stale_lines == 1


# --------------------------------------------------------------------------- joining mid-frame


async def test_the_tail_of_a_frame_cut_by_the_start_is_not_a_dropped_frame() -> None:
    fake = FakeTransport()
    whole = small_frame(3.0)
    with anyio.fail_after(5):
        async with await open_continuous(fake) as anz, anz.stream() as samples:
            fake.feed(whole[60:] + small_frame(4.0))  # joined in the middle of a frame
            first = [await samples.__anext__() for _ in range(2)]
            fake.feed(whole[60:])  # the same bytes later on are damage, and reported
            fake.feed(small_frame(5.0))
            later = [await samples.__anext__() for _ in range(3)]
            stats = continuous_stats(anz)
    assert [(x.channel, x.value) for x in first] == [(ChannelId.I1, 4.0), (ChannelId.E1, 4.0)]
    assert later[0].error is not None
    assert [(x.channel, x.value) for x in later[1:]] == [(ChannelId.I1, 5.0), (ChannelId.E1, 4.0)]
    assert stats.stale_lines == 1
    assert anz.dropped_frames == 1
