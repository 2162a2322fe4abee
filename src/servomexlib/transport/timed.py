"""``TimedReader``: deadline-bounded reads and writes over any :class:`Transport`.

Theory of operation
-------------------
A :class:`~servomexlib.transport.base.Transport` is a plain anyio byte stream with a pushback
buffer; it has no notion of a deadline. The few callers that want one — tests, tools and
scripts that talk to a port by hand — wrap the transport::

    reader = TimedReader(transport)
    await reader.write(request, timeout=1.0)
    reply = await reader.read_exact(8, timeout=1.0)

The reader holds no state of its own: every byte it reads but does not return goes back to the
transport with ``pushback``, so wrapping, unwrapping and re-wrapping a transport loses nothing,
and bytes read before a timeout or an end of stream are there for the next reader.

Timeouts are in seconds; ``None`` waits for ever. A timeout raises
:class:`~servomexlib.errors.ServomexTimeoutError` reading ``"{op} on {label} timed out after
{t}s"`` with ``port=label``, ``elapsed_s`` and ``op`` in its context. End of stream, a closed
transport and link failures propagate as the transport raised them
(:class:`~servomexlib.errors.ServomexConnectionError`).

The library's own clients do not use this wrapper: the continuous receiver and the Modbus line
read with ``receive`` under their own deadlines. ``ByteStreamTransport`` keeps the old
``read_exact``/``read_until``/``read_available``/``write`` methods for one release as
deprecated delegates to this class.
"""

from __future__ import annotations

import time

import anyio

from ..errors import ErrorContext, ServomexConnectionError, ServomexTimeoutError
from .base import DEFAULT_RECEIVE_BYTES, Transport

__all__ = ["TimedReader"]

# What a transport's receive may raise at end of stream or on a failed link. Servomex
# transports raise ServomexConnectionError subclasses; a user's transport may raise anyio's.
_END = (ServomexConnectionError, anyio.EndOfStream, anyio.ClosedResourceError)


class TimedReader:
    """Timed reads and writes over ``transport`` (see the module docstring).

    Args:
        transport: the transport to read from and write to; not owned (never closed here).
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @property
    def transport(self) -> Transport:
        return self._transport

    def _timeout(self, op: str, timeout: float | None, started: float) -> ServomexTimeoutError:
        label = self._transport.label
        shown = timeout if timeout is not None else 0.0
        return ServomexTimeoutError(
            f"{op} on {label} timed out after {shown}s",
            context=ErrorContext(
                port=label, elapsed_s=time.monotonic() - started, extra={"op": op}
            ),
        )

    async def read_exact(self, n: int, *, timeout: float | None) -> bytes:
        """Exactly ``n`` bytes. On timeout the bytes read so far are pushed back (not lost).

        Raises:
            ServomexTimeoutError: fewer than ``n`` bytes within ``timeout``.
            ServomexConnectionError: end of stream, closed or broken before ``n`` bytes.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        transport = self._transport
        buf = bytearray()
        started = time.monotonic()
        with anyio.move_on_after(timeout) as scope:
            try:
                while len(buf) < n:
                    buf += await transport.receive(n - len(buf))
            except _END:
                transport.pushback(bytes(buf))
                raise
        if scope.cancelled_caught:
            transport.pushback(bytes(buf))
            raise self._timeout("read_exact", timeout, started)
        return bytes(buf)

    async def read_until(self, sep: bytes, *, timeout: float | None) -> bytes:
        """Bytes up to and including the first ``sep``; bytes after it are pushed back.

        On timeout or end of stream the bytes read so far are pushed back.

        Raises:
            ServomexTimeoutError: no ``sep`` within ``timeout``.
            ServomexConnectionError: end of stream, closed or broken before ``sep``.
        """
        if not sep:
            raise ValueError("sep must not be empty")
        transport = self._transport
        buf = bytearray()
        started = time.monotonic()
        with anyio.move_on_after(timeout) as scope:
            try:
                while True:
                    # Search only the tail that can hold a new match.
                    start = max(0, len(buf) - len(sep) + 1)
                    buf += await transport.receive(DEFAULT_RECEIVE_BYTES)
                    index = buf.find(sep, start)
                    if index >= 0:
                        end = index + len(sep)
                        transport.pushback(bytes(buf[end:]))
                        return bytes(buf[:end])
            except _END:
                transport.pushback(bytes(buf))
                raise
        assert scope.cancelled_caught
        transport.pushback(bytes(buf))
        raise self._timeout("read_until", timeout, started)

    async def read_available(self, *, idle_timeout: float, max_bytes: int | None = None) -> bytes:
        """Everything that arrives during a window of ``idle_timeout`` seconds.

        Returns early once ``max_bytes`` bytes are collected. Returns ``b""`` when nothing
        arrived. End of stream ends the window early; it is raised only when nothing at all was
        collected.
        """
        transport = self._transport
        buf = bytearray()
        limit = max_bytes if max_bytes is not None else -1
        with anyio.move_on_after(idle_timeout):
            try:
                while limit < 0 or len(buf) < limit:
                    want = DEFAULT_RECEIVE_BYTES if limit < 0 else limit - len(buf)
                    buf += await transport.receive(want)
            except _END:
                if not buf:
                    raise
        return bytes(buf)

    async def write(self, data: bytes, *, timeout: float | None) -> None:
        """Send all of ``data`` within ``timeout``.

        Raises:
            ServomexTimeoutError: the write did not complete in time (flow control, full pipe).
            ServomexConnectionError: closed or broken.
        """
        started = time.monotonic()
        with anyio.move_on_after(timeout) as scope:
            await self._transport.send(data)
        if scope.cancelled_caught:
            raise self._timeout("write", timeout, started)
