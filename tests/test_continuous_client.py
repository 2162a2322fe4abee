"""The continuous client over FakeTransport: cache, wait_fresh, fan-out, dropped frames."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from helpers import two_block_frame
from servomexlib.clients.base import AnalyzerClient
from servomexlib.clients.continuous import ContinuousClient, first_frame_wait
from servomexlib.devices.models import (
    ChannelId,
    ProtocolKind,
    Sample,
    idle_cal_groups,
)
from servomexlib.errors import (
    ServomexChecksumError,
    ServomexConnectionError,
    ServomexFrameError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.transport import FakeTransport

pytestmark = pytest.mark.anyio


def frame(o2: float, *, term: bytes = b"\r\n") -> bytes:
    return two_block_frame(o2, terminator=term)


def bad_checksum(o2: float) -> bytes:
    good = frame(o2)
    return good[:-7] + b"0000;\r\n"


@asynccontextmanager
async def running(fake: FakeTransport, **kw: float | None) -> AsyncIterator[ContinuousClient]:
    client = ContinuousClient(fake, **kw)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await client.start(tg)
        try:
            yield client
        finally:
            await client.aclose()


async def recv(stream: anyio.abc.ObjectReceiveStream[Sample], n: int) -> list[Sample]:
    return [await stream.receive() for _ in range(n)]


def test_first_frame_wait() -> None:
    assert first_frame_wait(1.0, None) == 4.0
    assert first_frame_wait(5.0, None) == 5.0
    assert first_frame_wait(1.0, 0.1) == 1.0
    assert first_frame_wait(1.0, 10.0) == 20.0


async def test_client_implements_the_protocol() -> None:
    client = ContinuousClient(FakeTransport())
    assert isinstance(client, AnalyzerClient)
    assert client.protocol is ProtocolKind.CONTINUOUS_ASCII
    assert client.address == 0
    await client.aclose()


async def test_not_started_is_a_connection_error() -> None:
    client = ContinuousClient(FakeTransport())
    with pytest.raises(ServomexConnectionError, match="analyser not started"):
        await client.poll()
    with pytest.raises(ServomexConnectionError, match="analyser not started"):
        client.subscribe()
    await client.aclose()


async def test_latest_frame_cache_and_wait_fresh() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with running(fake, frame_period=0.5) as client:
            fake.feed(frame(20.1))
            first = await client.poll()  # waits for the first frame
            assert first.channel("I1").value == pytest.approx(20.1)
            assert first.requested_at is None
            assert first.latency_s is None
            assert first.received_at.tzinfo is not None
            # cached: no new data needed
            assert await client.poll() is first
            assert client.latest_frame is first

            async def later() -> None:
                await anyio.sleep(0.05)
                fake.feed(frame(20.2))

            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                fresh = await client.poll(wait_fresh=True)
            assert fresh.channel("I1").value == pytest.approx(20.2)
            assert fresh.monotonic_ns > first.monotonic_ns


async def test_first_frame_timeout_message_and_bound() -> None:
    fake = FakeTransport(label="/dev/ttySILENT")
    with anyio.fail_after(5):
        async with running(fake, timeout=0.1, frame_period=0.05) as client:
            start = anyio.current_time()
            with pytest.raises(ServomexTimeoutError) as info:
                await client.poll()
            elapsed = anyio.current_time() - start
            assert 0.09 <= elapsed < 1.0
            with pytest.raises(ServomexTimeoutError):
                await client.poll(timeout=0.05)
    err = info.value
    assert err.message.startswith("no continuous frame within 0.1s")
    assert err.context.port == "/dev/ttySILENT"
    assert err.context.protocol is ProtocolKind.CONTINUOUS_ASCII


async def test_reads_from_the_latest_frame() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with running(fake) as client:
            fake.feed(frame(20.5))
            reading = await client.read_channel(ChannelId.I1)
            assert reading.name == "Oxygen"
            assert reading.value == pytest.approx(20.5)
            assert (await client.status(ChannelId.E1)).ok
            assert (await client.analyser_status()).cal_groups == idle_cal_groups()
            with pytest.raises(ServomexValidationError, match="I2") as info:
                await client.read_channel(ChannelId.I2)
            assert info.value.context.port == "fake://test"
            info_ = await client.identify()
            assert [c.channel for c in info_.channels] == [ChannelId.I1, ChannelId.E1]
            assert info_.channels[1].name is None
            assert info_.address == 0
            assert info_.serial_settings.port == "fake://test"


async def test_fan_out_error_samples_and_dropped_count() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with running(fake) as client:
            a, token_a = client.subscribe("dev-a")
            b, token_b = client.subscribe("dev-b")
            fake.feed(frame(1.0) + bad_checksum(2.0) + b"no frame here\n" + frame(3.0, term=b"\n"))
            got_a = await recv(a, 6)
            got_b = await recv(b, 6)
            assert [s.value for s in got_a] == [1.0, 4.0, None, None, 3.0, 4.0]
            assert [s.device for s in got_a] == ["dev-a"] * 6
            assert [s.device for s in got_b] == ["dev-b"] * 6
            assert isinstance(got_a[2].error, ServomexChecksumError)
            assert isinstance(got_a[3].error, ServomexFrameError)
            for err_sample in got_a[2:4]:
                assert err_sample.channel is None
                assert err_sample.reading is None
                assert err_sample.protocol is ProtocolKind.CONTINUOUS_ASCII
                assert err_sample.error is not None
                assert err_sample.error.context.port == "fake://test"
            assert client.dropped_frames == 2
            stats = client.statistics()
            assert stats.frames_ok == 2
            assert stats.dropped_frames == 2
            assert stats.subscribers == 2
            client.unsubscribe(token_a)
            client.unsubscribe(token_a)  # idempotent
            assert client.statistics().subscribers == 1
            with pytest.raises(anyio.EndOfStream):
                await a.receive()  # the unsubscribed queue ends after what it had
            a.close()
            client.unsubscribe(token_b)
            b.close()


async def test_splitter_overflow_is_counted_and_loop_continues() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with running(fake, max_segment=512) as client:
            sub, token = client.subscribe()
            fake.feed(b"x" * 2000)
            fake.feed(b"yyy\n" + frame(7.0))
            samples = await recv(sub, 3)
            assert isinstance(samples[0].error, ServomexFrameError)
            assert "longer than 512" in samples[0].error.message
            assert [s.value for s in samples[1:]] == [7.0, 4.0]
            stats = client.statistics()
            assert stats.overflows == 1
            assert stats.garbage_bytes >= 2003
            assert client.dropped_frames == 1
            client.unsubscribe(token)
            sub.close()


async def test_end_of_stream_stops_quietly_and_flushes_the_last_frame() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with running(fake) as client:
            sub, _ = client.subscribe()
            fake.feed(frame(9.0, term=b""))  # no terminator: delivered at end of stream
            await fake.send_eof()
            values = [s.value async for s in sub]
            sub.close()
            assert values == [9.0, 4.0]
            assert not client.running
            assert client.latest_frame is not None
            with pytest.raises(ServomexConnectionError, match="stopped"):
                await client.poll(wait_fresh=True)


async def test_waiter_is_woken_when_the_stream_ends() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with running(fake) as client:

            async def close_soon() -> None:
                await anyio.sleep(0.05)
                await fake.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(close_soon)
                with pytest.raises(ServomexConnectionError, match="stopped"):
                    await client.poll(timeout=3)


async def test_aclose_closes_transport_and_ends_subscriptions() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            client = ContinuousClient(fake)
            await client.start(tg)
            sub, _ = client.subscribe()
            await client.aclose()
            await client.aclose()
            assert not fake.is_open
            with pytest.raises(anyio.EndOfStream):
                await sub.receive()
            sub.close()
        with pytest.raises(ServomexConnectionError):
            await client.start(tg)
