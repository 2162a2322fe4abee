"""Frame-sized reads in continuous mode, and "last byte received" timestamps.

When the transport knows its character time, the continuous receiver waits for the rest of a
partly received frame instead of reading every few bytes, and stamps a frame that arrived
together with later bytes by the wire time of those bytes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servomexlib.clients.continuous import MAX_COALESCE_CHARS, ContinuousClient
from servomexlib.decode import decode_frame
from servomexlib.devices.factory import open_continuous
from servomexlib.devices.models import ChannelId, ChannelStatus, Frame, idle_cal_groups
from servomexlib.sim import Simulator
from servomexlib.transport import ByteStreamTransport, FakeTransport, open_transport
from servomexlib.wire.continuous import (
    HEADER_LENGTH,
    FrameSplitter,
    build_frame,
    format_block,
    format_header,
    format_value,
    frame_length,
)

pytestmark = pytest.mark.anyio

SIM_URL = "sim://?mode=continuous&period=0.25&seed=4"
#: What the default simulated analyser broadcasts on I1.
SIM_O2 = decode_frame(Simulator(mode="continuous", realtime=False).frame()).channel("I1").value


def frame(o2: float, n_blocks: int = 2, *, term: bytes = b"\r\n") -> bytes:
    channels = [ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.E1, ChannelId.E2]
    channels += [ChannelId.D1, ChannelId.D2]
    blocks = [
        format_block(
            ch,
            name="Oxygen" if ch is ChannelId.I1 else None,
            value_text=format_value(o2 + i),
            unit=" % ",
            status=ChannelStatus(),
        )
        for i, ch in enumerate(channels[:n_blocks])
    ]
    header = format_header(
        clock=None, fault=False, maintenance=False, cal_groups=idle_cal_groups(), n_blocks=n_blocks
    )
    return build_frame(header, blocks, terminator=term)


# --------------------------------------------------------------------------- the pure splitter


def test_pending_frame_bytes_is_unknown_until_the_header_is_in() -> None:
    raw = frame(20.5, term=b"")
    splitter = FrameSplitter()
    assert splitter.pending_frame_bytes() is None  # nothing held
    splitter.feed(raw[: HEADER_LENGTH - 1])
    assert splitter.pending_frame_bytes() is None  # N field not complete yet
    splitter.feed(raw[HEADER_LENGTH - 1 : HEADER_LENGTH + 10])
    assert splitter.pending_frame_bytes() == len(raw) - (HEADER_LENGTH + 10) + 1
    splitter.feed(raw[HEADER_LENGTH + 10 :])
    assert splitter.pending_frame_bytes() == 1  # only the terminator is missing
    assert splitter.feed(b"\r\n") == [raw]
    assert splitter.pending_frame_bytes() is None


def test_pending_frame_bytes_ignores_noise_and_discarded_lines() -> None:
    splitter = FrameSplitter(max_segment=300)
    splitter.feed(b"x" * 60)
    assert splitter.pending_frame_bytes() is None  # does not start like a frame
    splitter.feed(b"y" * 400)  # over the bound: the line is being discarded
    assert splitter.stats().overflows == 1
    assert splitter.pending_frame_bytes() is None


@given(
    n_blocks=st.integers(min_value=1, max_value=7),
    cut=st.integers(min_value=HEADER_LENGTH, max_value=10_000),
)
def test_pending_frame_bytes_counts_what_the_frame_still_needs(n_blocks: int, cut: int) -> None:
    raw = frame(1.0, n_blocks, term=b"")
    cut = min(cut, len(raw))
    splitter = FrameSplitter()
    splitter.feed(raw[:cut])
    assert splitter.pending_frame_bytes() == len(raw) - cut + 1


# --------------------------------------------------------------------------- reads per frame


def count_receives(transport: ByteStreamTransport) -> list[int]:
    """Wrap ``transport.receive`` to count calls; returns the one-element counter."""
    calls = [0]
    original = transport.receive

    async def counted(max_bytes: int = 65536) -> bytes:
        calls[0] += 1
        return await original(max_bytes)

    transport.receive = counted  # type: ignore[method-assign]
    return calls


async def stream_frames(transport: ByteStreamTransport, calls: list[int], n: int) -> list[Frame]:
    """``n`` fresh frames after a first one (which teaches the receiver the frame length)."""
    got: list[Frame] = []
    anz = await open_continuous(transport, frame_period=0.25)
    async with anz:
        await anz.poll(wait_fresh=True)
        calls[0] = 0
        for _ in range(n):
            got.append(await anz.poll(wait_fresh=True))
    return got


async def test_a_paced_line_is_read_in_frame_sized_pieces() -> None:
    transport = await open_transport(SIM_URL)
    assert isinstance(transport, ByteStreamTransport)
    assert transport.char_time_s == pytest.approx(10 / 19200)
    calls = count_receives(transport)
    with anyio.fail_after(20):
        frames = await stream_frames(transport, calls, 4)
    assert [f.channel("I1").value for f in frames] == [SIM_O2] * 4
    # ~215 bytes at 19200 baud arrive over ~110 ms, a few bytes per simulator tick; the
    # receiver reads a frame's first chunk, waits for the rest, reads it: about 2 reads each.
    assert calls[0] <= 3 * len(frames) + 1


async def test_without_a_line_rate_every_chunk_is_read() -> None:
    # The contrast that shows the test above measures something: the same line read by a
    # receiver that does not know the character time wakes for every chunk.
    transport = await open_transport(SIM_URL)
    assert isinstance(transport, ByteStreamTransport)
    transport._char_time = None
    calls = count_receives(transport)
    with anyio.fail_after(20):
        frames = await stream_frames(transport, calls, 3)
    assert [f.channel("I1").value for f in frames] == [SIM_O2] * 3
    assert calls[0] > 5 * len(frames)  # ~100 in practice (a couple of bytes per read)


async def test_the_wait_for_the_rest_is_bounded_by_the_longest_frame() -> None:
    fake = FakeTransport(char_time_s=0.001)
    client = ContinuousClient(fake)
    # A header declaring 99 blocks (a damaged N field): the wait stops at a 7-block frame.
    head = bytearray(frame(1.0, 1, term=b""))
    head[31:33] = b"99"
    client._splitter.feed(bytes(head[:HEADER_LENGTH]))
    assert client._rest_of_frame_s() == pytest.approx(MAX_COALESCE_CHARS * 0.001)
    # No header yet and no frame seen: wait for the shortest possible frame.
    client._splitter.reset()
    client._splitter.feed(b" 2")
    assert client._rest_of_frame_s() == pytest.approx((frame_length(1) + 1 - 2) * 0.001)
    # Nothing held: read at once.
    client._splitter.reset()
    assert client._rest_of_frame_s() == 0.0


# --------------------------------------------------------------------------- timestamps


#: The fake's line rate is fictitious and it hands over whatever is fed at once. Bytes that
#: arrive faster than the line carries them were waiting before the receiver started, and the
#: receiver rightly drops them as a backlog (tests/test_backlog.py). So these tests let the
#: wire time of what they feed pass after the start, for real, before feeding it.
async def wire_time_since_start(seconds: float) -> None:
    await anyio.sleep(seconds)


async def test_a_frame_followed_by_more_bytes_is_stamped_at_its_own_end() -> None:
    char_time = 0.001
    fake = FakeTransport(char_time_s=char_time)
    client = ContinuousClient(fake, frame_period=0.5)
    first, second, third = frame(20.0), frame(21.0), frame(22.0)
    trailing = third[:40]  # the start of the next frame came in the same read
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            samples, token = client.subscribe("d")
            await wire_time_since_start(len(first + second + trailing) * char_time + 0.05)
            before_ns = time.monotonic_ns()
            fake.feed(first + second + trailing)
            got = [await samples.receive() for _ in range(4)]  # 2 readings per frame
            after_ns = time.monotonic_ns()
            client.unsubscribe(token)
            samples.close()
            tg.cancel_scope.cancel()
        await client.aclose()
    assert [s.value for s in got] == [20.0, 21.0, 21.0, 22.0]
    one_ns, two_ns = got[0].monotonic_ns, got[2].monotonic_ns
    # the second frame's last byte came 40 characters before the read that brought it
    back_ns = round(len(trailing) * char_time * 1e9)
    assert before_ns - back_ns <= two_ns <= after_ns - back_ns
    # the first one a whole frame earlier: the second frame and its terminator (counted as
    # one byte: CR LF or a lone CR/LF cannot be told apart once split)
    body = len(second) - 2
    assert round((body + 1) * char_time * 1e9) == two_ns - one_ns
    assert got[0].received_at < got[2].received_at


async def test_stamps_never_go_before_the_previous_read() -> None:
    char_time = 0.005  # a slow line: 40 bytes are 0.2 s of wire time
    fake = FakeTransport(char_time_s=char_time)
    client = ContinuousClient(fake, frame_period=0.5)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            # Time for both feeds below at the line rate (a frame is 107 bytes).
            await wire_time_since_start((2 * 107 + 40) * char_time)
            fake.feed(frame(20.0))
            one = await client.wait_frame(timeout=5)
            # Right after that read, a frame arrives with 40 bytes behind it: its computed end
            # (0.2 s back) would be before the previous read, so it is clamped to that read.
            fake.feed(frame(21.0) + frame(22.0)[:40])
            two = await client.wait_frame(timeout=5)
            assert two.channel("I1").value == 21.0
            assert one.monotonic_ns <= two.monotonic_ns
            assert one.received_at <= two.received_at
            tg.cancel_scope.cancel()
        await client.aclose()


async def test_without_a_line_rate_frames_get_the_read_time() -> None:
    fake = FakeTransport()
    client = ContinuousClient(fake, frame_period=0.5)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            before_ns = time.monotonic_ns()
            fake.feed(frame(20.0) + frame(21.0)[:40])
            got = await client.wait_frame(timeout=5)
            assert got.monotonic_ns >= before_ns
            tg.cancel_scope.cancel()
        await client.aclose()


def test_transports_report_their_line_rate() -> None:
    assert FakeTransport().char_time_s is None
    assert FakeTransport(char_time_s=0.002).char_time_s == 0.002
    with pytest.raises(ValueError, match="char_time_s"):
        FakeTransport(char_time_s=0.0)


def test_both_clocks_respect_the_previous_read_when_they_were_read_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wall clock and the monotonic clock of a read are taken a moment apart; a pause in
    # between (a busy machine) makes one interval longer than the other. Neither stamp may go
    # before the previous read's: the shorter interval bounds the correction of both.
    import servomexlib.clients.continuous_receiver as module

    wall0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    reads = iter([(wall0, 5_000_000_000), (wall0 + timedelta(milliseconds=5), 5_008_000_000)])
    current: list[tuple[datetime, int]] = []

    class Clock:
        @staticmethod
        def now(tz: object = None) -> datetime:
            current[:] = [next(reads)]
            return current[0][0]

        @staticmethod
        def monotonic_ns() -> int:
            return current[0][1]

    monkeypatch.setattr(module, "datetime", Clock)
    monkeypatch.setattr(module, "time", Clock)
    client = ContinuousClient(FakeTransport(char_time_s=0.001))
    client._process(frame(20.0), final=False)
    one = client.latest_frame
    client._process(frame(21.0) + frame(22.0)[:100], final=False)  # 100 ms of later bytes
    two = client.latest_frame
    assert one is not None
    assert two is not None
    assert two.channel("I1").value == 21.0
    assert (one.received_at, one.monotonic_ns) == (wall0, 5_000_000_000)
    # wall: 5 ms since the previous read; monotonic: 8 ms. Both go back 5 ms.
    assert two.received_at == wall0
    assert two.monotonic_ns == 5_003_000_000
