"""Raw bytes over TCP to a serial device server (``tcp://host:port``, docs/troubleshooting.md).

No MBAP header: the server forwards the serial line's bytes as they are, so RTU-over-TCP,
Modbus ASCII and continuous frames all pass unchanged. The serial settings given here are only
recorded (the device server owns the line); Modbus uses the baud rate for timing and planning.

Many device servers buffer the serial side while no client is connected and hand the buffer
over as soon as one connects, so a fresh connection can start with minutes of old broadcast
frames. :meth:`TcpTransport.open` therefore discards whatever the socket already holds when the
connection is made, and :meth:`TcpTransport.flush_input` does it again on demand (the continuous
receiver calls it when it starts). Both read the socket without waiting: bytes still on their
way are not waited for. (On asyncio, bytes that the event loop already moved into the stream's
own buffer are out of reach; anyio reads the socket only while a ``receive`` is in progress, so
between reads that buffer is empty.)
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Self

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import ErrorContext, ServomexConnectionError
from ..settings import SerialSettings
from .base import ByteStreamTransport

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "TcpTransport", "tcp_label"]

_log = logging.getLogger("servomexlib.transport")

DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Most bytes one flush reads off the socket: a peer that sends faster than we can discard
#: must not keep the flush going for ever.
MAX_FLUSH_BYTES = 1 << 20


def tcp_label(host: str, port: int) -> str:
    """``tcp://host:port`` (IPv6 literals in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"tcp://{shown}:{port}"


class TcpTransport(ByteStreamTransport):
    """A TCP connection to a serial device server; the label is ``tcp://host:port``."""

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        serial_settings: SerialSettings | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> Self:
        """Connect to ``host:port``.

        Raises:
            ServomexConnectionError: ``"could not open tcp://host:port: …"`` — refused,
                unreachable, name resolution failure or no connection within
                ``connect_timeout`` seconds.
        """
        label = tcp_label(host, port)
        started = time.monotonic()
        detail = ""
        cause: BaseException | None = None
        with anyio.move_on_after(connect_timeout) as scope:
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError as exc:
                detail, cause = str(exc) or type(exc).__name__, exc
        if scope.cancelled_caught:
            detail = f"no connection within {connect_timeout}s"
        if detail:
            raise ServomexConnectionError(
                f"could not open {label}: {detail}",
                context=ErrorContext(port=label, elapsed_s=time.monotonic() - started),
            ) from cause
        transport = cls(stream, label=label, serial_settings=serial_settings)
        await transport.flush_after_open()
        return transport

    async def flush_input(self) -> int | None:
        """Discard what the socket already holds, without waiting; returns the byte count.

        The pushback buffer is kept. A peer that has closed its side is left for the next
        ``receive`` to report. Returns None when the stream exposes no socket.

        Raises:
            ServomexConnectionError: the transport is closed or the connection is broken.
        """
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise self._translate(anyio.ClosedResourceError(), "flush_input")
        try:
            raw: socket.socket = self._stream.extra(anyio.abc.SocketAttribute.raw_socket)
            # asyncio hands out a restricted proxy (no recv); a duplicate descriptor reads the
            # same socket and is closed again below.
            sock = raw.dup()
        except anyio.TypedAttributeLookupError:
            return None
        except OSError as exc:
            raise self._translate(exc, "flush_input") from exc
        dropped = 0
        with sock:
            sock.setblocking(False)  # an empty buffer raises BlockingIOError, never waits
            while dropped < MAX_FLUSH_BYTES:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    raise self._translate(exc, "flush_input") from exc
                if not data:
                    break  # end of stream: the next receive reports it
                dropped += len(data)
        return dropped
