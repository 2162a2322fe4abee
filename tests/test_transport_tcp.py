"""TcpTransport against a local anyio TCP listener."""

from __future__ import annotations

import time

import anyio
import anyio.abc
import pytest

from servomexlib.errors import ServomexConnectionError
from servomexlib.settings import SerialSettings
from servomexlib.transport import TcpTransport, TransportEndOfStreamError
from servomexlib.transport.timed import TimedReader

pytestmark = pytest.mark.anyio


async def test_round_trip_and_peer_close() -> None:
    async def echo_once(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = await stream.receive()
            await stream.send(data.upper())

    with anyio.fail_after(5):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo_once)
            settings = SerialSettings(port=f"tcp://127.0.0.1:{port}", baudrate=9600)
            t = await TcpTransport.open("127.0.0.1", port, serial_settings=settings)
            try:
                assert t.label == f"tcp://127.0.0.1:{port}"
                assert t.serial_settings == settings
                await TimedReader(t).write(b"abc", timeout=1)
                assert await TimedReader(t).read_exact(3, timeout=2) == b"ABC"
                with pytest.raises(TransportEndOfStreamError):
                    await t.receive()
            finally:
                await t.aclose()
                await t.aclose()
            tg.cancel_scope.cancel()


async def test_refused_connection_names_the_port() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now
    start = time.monotonic()
    with anyio.fail_after(5), pytest.raises(ServomexConnectionError) as info:
        await TcpTransport.open("127.0.0.1", port)
    assert time.monotonic() - start < 1.0
    assert info.value.message.startswith(f"could not open tcp://127.0.0.1:{port}")
    assert info.value.context.port == f"tcp://127.0.0.1:{port}"
