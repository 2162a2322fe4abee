"""ByteStreamTransport and FakeTransport: helpers, pushback, timeouts and error translation."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from anyio.streams.stapled import StapledObjectStream

from servomexlib.errors import ServomexConnectionError, ServomexTimeoutError
from servomexlib.transport import (
    ByteStreamTransport,
    FakeTransport,
    Transport,
    TransportBrokenError,
    TransportClosedError,
    TransportEndOfStreamError,
)
from servomexlib.transport.timed import TimedReader

pytestmark = pytest.mark.anyio


class _BrokenStream(anyio.abc.ByteStream):
    """A stream whose every operation fails like a vanished device."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise OSError(5, "Input/output error")

    async def send(self, item: bytes) -> None:
        raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        raise OSError(9, "bad file descriptor")


async def test_fake_is_a_transport() -> None:
    fake = FakeTransport()
    assert isinstance(fake, Transport)
    assert isinstance(fake, ByteStreamTransport)
    assert fake.label == "fake://test"
    assert fake.serial_settings is None
    assert fake.is_open
    await fake.aclose()
    assert not fake.is_open


async def test_script_replies_exact_match_only() -> None:
    fake = FakeTransport({b"\x01\x02": b"\xaa"})
    fake.add_script(b"ping", [b"po", b"ng"])
    fake.add_script(b"echo", lambda req: req[::-1])
    with anyio.fail_after(2):
        await fake.send(b"\x01\x02")
        assert await fake.receive() == b"\xaa"
        await fake.send(b"ping")
        assert await TimedReader(fake).read_exact(4, timeout=1) == b"pong"
        await fake.send(b"echo")
        assert await TimedReader(fake).read_exact(4, timeout=1) == b"ohce"
        await fake.send(b"\x01\x02\x03")  # not an exact key: no reply
        assert await TimedReader(fake).read_available(idle_timeout=0.05) == b""
    assert fake.writes == [b"\x01\x02", b"ping", b"echo", b"\x01\x02\x03"]
    fake.add_script(b"ping", b"overwritten")
    await fake.send(b"ping")
    assert await fake.receive() == b"overwritten"


async def test_emit_feeds_frames_one_by_one_with_interval() -> None:
    fake = FakeTransport()
    with anyio.fail_after(2):
        start = anyio.current_time()
        await fake.emit([b"a\n", b"b\n"], interval=0.05)
        assert anyio.current_time() - start >= 0.09
        assert await TimedReader(fake).read_until(b"\n", timeout=1) == b"a\n"
        assert await TimedReader(fake).read_until(b"\n", timeout=1) == b"b\n"


async def test_receive_waits_for_feed_and_ends_after_close() -> None:
    fake = FakeTransport()
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await fake.receive())

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.01)
            fake.feed(b"late")
        assert got == [b"late"]
        fake.feed(b"tail")
        await fake.send_eof()
        assert await fake.receive() == b"tail"
        with pytest.raises(TransportEndOfStreamError) as info:
            await fake.receive()
    err = info.value
    assert isinstance(err, ServomexConnectionError)
    assert isinstance(err, anyio.EndOfStream)  # anyio code (anymodbus) still sees EOF
    assert err.context.port == "fake://test"


async def test_send_after_close_is_a_connection_error() -> None:
    fake = FakeTransport()
    await fake.aclose()
    await fake.aclose()  # idempotent
    with pytest.raises(TransportClosedError) as info:
        await fake.send(b"x")
    assert isinstance(info.value, anyio.ClosedResourceError)
    assert info.value.context.port == "fake://test"


async def test_pushback_is_served_first_and_drain_clears_it() -> None:
    fake = FakeTransport()
    fake.feed(b"stream")
    fake.pushback(b"back-")
    assert fake.pending == 5
    with anyio.fail_after(2):
        assert await TimedReader(fake).read_exact(11, timeout=1) == b"back-stream"
    fake.pushback(b"xyz")
    assert fake.drain_input() == 3
    assert fake.pending == 0


async def test_read_until_keeps_the_surplus() -> None:
    fake = FakeTransport()
    fake.feed(b"one\r\ntwo\r\nthr")
    with anyio.fail_after(2):
        assert await TimedReader(fake).read_until(b"\r\n", timeout=1) == b"one\r\n"
        assert await TimedReader(fake).read_until(b"\r\n", timeout=1) == b"two\r\n"
        with pytest.raises(ServomexTimeoutError) as info:
            await TimedReader(fake).read_until(b"\r\n", timeout=0.05)
        assert await TimedReader(fake).read_exact(3, timeout=1) == b"thr"  # partial data not lost
    err = info.value
    assert err.message == "read_until on fake://test timed out after 0.05s"
    assert err.context.port == "fake://test"
    assert err.context.extra["op"] == "read_until"
    assert err.context.elapsed_s is not None
    assert err.context.elapsed_s >= 0.04


async def test_read_exact_timeout_pushes_partial_back() -> None:
    fake = FakeTransport()
    fake.feed(b"ab")
    with anyio.fail_after(2):
        with pytest.raises(ServomexTimeoutError, match=r"read_exact on fake://test timed out"):
            await TimedReader(fake).read_exact(3, timeout=0.05)
        fake.feed(b"c")
        assert await TimedReader(fake).read_exact(3, timeout=1) == b"abc"


async def test_read_exact_eof_is_connection_error() -> None:
    fake = FakeTransport()
    fake.feed(b"a")
    await fake.send_eof()
    with anyio.fail_after(2), pytest.raises(ServomexConnectionError):
        await TimedReader(fake).read_exact(2, timeout=1)


async def test_read_available_collects_for_the_whole_window() -> None:
    fake = FakeTransport()

    async def drip() -> None:
        for part in (b"1", b"2", b"3"):
            await anyio.sleep(0.02)
            fake.feed(part)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drip)
            assert await TimedReader(fake).read_available(idle_timeout=0.3) == b"123"
        fake.feed(b"abcdef")
        assert await TimedReader(fake).read_available(idle_timeout=0.3, max_bytes=4) == b"abcd"
        assert await TimedReader(fake).read_available(idle_timeout=0.05) == b"ef"
        await fake.send_eof()
        with pytest.raises(ServomexConnectionError):
            await TimedReader(fake).read_available(idle_timeout=0.05)


async def test_write_timeout_and_success() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](0)
    # An object stream with no buffer and no reader blocks the writer: a stuck line.
    stuck = ByteStreamTransport(
        StapledObjectStream(send, receive),  # type: ignore[arg-type]
        label="stuck://",
    )
    with anyio.fail_after(2), pytest.raises(ServomexTimeoutError) as info:
        await TimedReader(stuck).write(b"x", timeout=0.05)
    assert info.value.message == "write on stuck:// timed out after 0.05s"
    await stuck.aclose()
    fake = FakeTransport()
    with anyio.fail_after(2):
        await TimedReader(fake).write(b"ok", timeout=1)
    assert fake.writes == [b"ok"]


async def test_os_errors_are_translated_with_port() -> None:
    t = ByteStreamTransport(_BrokenStream(), label="/dev/ttyGONE")
    with pytest.raises(TransportBrokenError) as info:
        await t.receive()
    err = info.value
    assert isinstance(err, ServomexConnectionError)
    assert isinstance(err, anyio.BrokenResourceError)
    assert isinstance(err.__cause__, OSError)
    assert err.context.port == "/dev/ttyGONE"
    assert "/dev/ttyGONE" in str(err)
    with pytest.raises(TransportBrokenError):
        await t.send(b"x")
    await t.aclose()  # a failing close is logged, never raised
    await t.aclose()
    assert not t.is_open
    assert "closed" in repr(t)


class _UserTransport:
    """A user's own transport that lacks the contract's line facts (pushback only)."""

    label = "user://"
    is_open = True
    serial_settings = None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return b""

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def pushback(self, data: bytes) -> None:
        pass

    def drain_input(self) -> int:
        return 0


async def test_every_transport_class_implements_the_whole_contract() -> None:
    from servomexlib.transport import SerialTransport, SimTransport, TcpTransport

    members = [
        "label",
        "is_open",
        "serial_settings",
        "char_time_s",
        "pending",
        "extra_attributes",
        "receive",
        "send",
        "send_eof",
        "aclose",
        "pushback",
        "drain_input",
        "flush_input",
        "drain",
    ]
    for cls in (ByteStreamTransport, FakeTransport, SerialTransport, SimTransport, TcpTransport):
        missing = [m for m in members if not hasattr(cls, m)]
        assert missing == [], f"{cls.__name__} lacks {missing}"
    # The runtime check refuses a transport without the line facts (no silent defaults).
    assert not isinstance(_UserTransport(), Transport)


async def test_contract_members_of_the_fake() -> None:
    fake = FakeTransport(char_time_s=10 / 9600)
    assert fake.char_time_s == pytest.approx(10 / 9600)
    assert FakeTransport().char_time_s is None
    assert fake.pending == 0
    fake.pushback(b"abc")
    assert fake.pending == 3
    fake.feed(b"queued")
    with anyio.fail_after(2):
        # The fake has no OS buffer: nothing is flushed, the pushback buffer is kept.
        assert await fake.flush_input() is None
        assert fake.pending == 3
        await fake.send(b"req")
        await fake.drain()  # nothing to wait for: returns at once
        assert fake.writes == [b"req"]
        assert await fake.receive() == b"abc"
        assert await fake.receive() == b"queued"
    assert dict(fake.extra_attributes) == {}
    await fake.aclose()


async def test_extra_attributes_are_the_wrapped_streams() -> None:
    with anyio.fail_after(5):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            stream = await anyio.connect_tcp("127.0.0.1", port)
            t = ByteStreamTransport(stream, label="tcp://test")
            assert anyio.abc.SocketAttribute.raw_socket in t.extra_attributes
            assert t.extra(anyio.abc.SocketAttribute.remote_port) == port
            await t.aclose()


async def test_deprecated_helpers_warn_and_still_work() -> None:
    fake = FakeTransport({b"ping": b"pong\n"})
    with anyio.fail_after(2):
        with pytest.warns(DeprecationWarning, match=r"TimedReader\(transport\)\.write"):
            await fake.write(b"ping", timeout=1)
        with pytest.warns(DeprecationWarning, match="read_exact"):
            assert await fake.read_exact(2, timeout=1) == b"po"
        with pytest.warns(DeprecationWarning, match="read_until"):
            assert await fake.read_until(b"\n", timeout=1) == b"ng\n"
        fake.feed(b"rest")
        with pytest.warns(DeprecationWarning, match="read_available"):
            assert await fake.read_available(idle_timeout=0.05) == b"rest"
        with (
            pytest.warns(DeprecationWarning, match="read_exact"),
            pytest.raises(ServomexTimeoutError, match="read_exact on fake://test timed out"),
        ):
            await fake.read_exact(1, timeout=0.01)


async def test_timed_reader_keeps_nothing_of_its_own() -> None:
    fake = FakeTransport()
    fake.feed(b"12345")
    with anyio.fail_after(2):
        assert await TimedReader(fake).read_exact(2, timeout=1) == b"12"
        with pytest.raises(ServomexTimeoutError):
            await TimedReader(fake).read_until(b"\n", timeout=0.02)
        # What the first reader saw and did not return is back in the transport.
        assert fake.pending == 3
        assert await fake.receive() == b"345"
    assert TimedReader(fake).transport is fake
