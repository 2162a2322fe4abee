"""The byte layer: the ``Transport`` protocol and :class:`ByteStreamTransport` (api.md §15).

Theory of operation
-------------------
Every way of reaching an analyser — a serial port (anyserial), a TCP device server
(``anyio.connect_tcp``), the in-process simulator and the test fake — is an anyio
``ByteStream``. :class:`ByteStreamTransport` wraps one and adds what the clients need on top:
a label for errors, the serial settings in use, a pushback buffer (the AUTO ladder parks a
recognised continuous frame there for the receiver) and timed read/write helpers.

Input that was already waiting is not news. ``drain_input()`` drops the pushback buffer only
(api.md §15); :meth:`ByteStreamTransport.flush_input` discards what the operating system has
queued for the stream, without waiting for more: serial ports flush the kernel input queue
(and do so when they open), TCP connections read off what the socket already holds. A generic
byte stream offers no way to read without waiting, so the base class discards nothing and
returns None; the continuous receiver then relies on its own check (the line rate).

This is the one place where operating-system, anyserial and anyio stream errors become
``Servomex*`` errors. The translated stream errors keep their anyio meaning as well: end of
stream is raised as :class:`TransportEndOfStreamError`, which is both a
:class:`~servomexlib.errors.ServomexConnectionError` and an :class:`anyio.EndOfStream`, so generic
anyio code layered on a transport (anymodbus' framers and ``Bus``) still recognises a clean
close, a closed resource or a broken link.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol, Self, runtime_checkable

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import ErrorContext, ServomexConnectionError, ServomexTimeoutError
from ..settings import SerialSettings

__all__ = [
    "DEFAULT_RECEIVE_BYTES",
    "ByteStreamTransport",
    "Transport",
    "TransportBrokenError",
    "TransportClosedError",
    "TransportEndOfStreamError",
]

_log = logging.getLogger("servomexlib.transport")

DEFAULT_RECEIVE_BYTES = 65536

# What a failing stream raises; OSError covers anyserial's SerialError family.
_STREAM_ERRORS = (OSError, anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class TransportEndOfStreamError(ServomexConnectionError, anyio.EndOfStream):
    """The peer closed the stream (or the fake ran dry after ``send_eof``)."""


class TransportClosedError(ServomexConnectionError, anyio.ClosedResourceError):
    """The transport was used after it was closed."""


class TransportBrokenError(ServomexConnectionError, anyio.BrokenResourceError):
    """The link failed: an OS error, a vanished device or a reset connection."""


@runtime_checkable
class Transport(Protocol):
    """What the clients use: an anyio byte stream plus a few helpers (api.md §15).

    Timeouts are in seconds; ``None`` waits for ever. A timeout raises
    :class:`~servomexlib.errors.ServomexTimeoutError` reading ``"{op} on {label} timed out after
    {t}s"``; end of stream, a closed transport and OS errors raise
    :class:`~servomexlib.errors.ServomexConnectionError`, with ``port=label`` in the context.
    """

    @property
    def label(self) -> str: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def serial_settings(self) -> SerialSettings | None: ...

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_BYTES) -> bytes: ...

    async def send(self, item: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...

    async def read_exact(self, n: int, *, timeout: float | None) -> bytes: ...

    async def read_until(self, sep: bytes, *, timeout: float | None) -> bytes: ...

    async def read_available(
        self, *, idle_timeout: float, max_bytes: int | None = None
    ) -> bytes: ...

    async def write(self, data: bytes, *, timeout: float | None) -> None: ...

    def pushback(self, data: bytes) -> None: ...

    def drain_input(self) -> int: ...


class ByteStreamTransport(anyio.abc.ByteStream):
    """A :class:`Transport` over any anyio ``ByteStream``.

    ``receive`` serves pushed-back bytes first, then reads the stream. ``aclose`` is idempotent
    and always releases the stream, even when closing it fails (the failure is logged, not
    raised). The wrapped stream is owned: closing the transport closes it.

    Args:
        stream: the byte stream to wrap.
        label: name used in errors and as the default device label (port path or URL).
        serial_settings: the line settings in use, when known (DeviceInfo echoes them).
        char_time_s: seconds one character occupies on the line feeding this stream, when known
            (a serial port: from its settings; the in-process simulator: its pacing). None (the
            default) for links whose line rate is unknown, such as a TCP device server. The
            continuous receiver uses it to read each frame in one piece (api.md §15).
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        label: str,
        serial_settings: SerialSettings | None = None,
        char_time_s: float | None = None,
    ) -> None:
        if char_time_s is not None and not (math.isfinite(char_time_s) and char_time_s > 0):
            raise ValueError(f"char_time_s must be a positive number or None, got {char_time_s!r}")
        self._stream = stream
        self._label = label
        self._settings = serial_settings
        self._char_time = char_time_s
        self._pending = bytearray()
        self._closed = False

    # ---------------------------------------------------------------- properties

    @property
    def label(self) -> str:
        return self._label

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def serial_settings(self) -> SerialSettings | None:
        return self._settings

    @property
    def char_time_s(self) -> float | None:
        """Seconds per character on the line, or None when the line rate is unknown."""
        return self._char_time

    @property
    def pending(self) -> int:
        """Bytes currently held in the pushback buffer."""
        return len(self._pending)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self._label!r} {state}>"

    # ---------------------------------------------------------------- error translation

    def _context(self, **kw: object) -> ErrorContext:
        return ErrorContext(port=self._label).merged(**kw)

    def _translate(self, exc: BaseException, op: str) -> ServomexConnectionError:
        """Map a stream/OS error met during ``op`` to a ServomexConnectionError subclass."""
        if isinstance(exc, ServomexConnectionError):
            return exc
        ctx = self._context(extra={"op": op})
        if isinstance(exc, anyio.EndOfStream):
            return TransportEndOfStreamError(f"end of stream on {self._label}", context=ctx)
        if isinstance(exc, anyio.ClosedResourceError):
            return TransportClosedError(f"{self._label} is closed", context=ctx)
        detail = str(exc) or type(exc).__name__
        return TransportBrokenError(f"{op} on {self._label} failed: {detail}", context=ctx)

    def _timeout(self, op: str, timeout: float, started: float) -> ServomexTimeoutError:
        return ServomexTimeoutError(
            f"{op} on {self._label} timed out after {timeout}s",
            context=self._context(elapsed_s=time.monotonic() - started, extra={"op": op}),
        )

    # ---------------------------------------------------------------- ByteStream

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_BYTES) -> bytes:
        """Up to ``max_bytes`` bytes: pushed-back bytes first, else one read of the stream.

        Raises:
            TransportEndOfStreamError: the peer closed the stream (also an anyio.EndOfStream).
            TransportClosedError: the transport was closed.
            TransportBrokenError: an OS or link error.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if self._pending:
            data = bytes(self._pending[:max_bytes])
            del self._pending[:max_bytes]
            return data
        try:
            return await self._stream.receive(max_bytes)
        except _STREAM_ERRORS as exc:
            raise self._translate(exc, "receive") from exc

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.send(item)
        except _STREAM_ERRORS as exc:
            raise self._translate(exc, "send") from exc

    async def send_eof(self) -> None:
        try:
            await self._stream.send_eof()
        except _STREAM_ERRORS as exc:
            raise self._translate(exc, "send_eof") from exc

    async def aclose(self) -> None:
        """Close the stream. Idempotent; never raises for a failing close (it is logged)."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        await self._close_stream()

    async def _close_stream(self) -> None:
        # Shielded: a cancelled caller must still release the port/socket.
        with anyio.CancelScope(shield=True):
            try:
                await self._stream.aclose()
            except _STREAM_ERRORS as exc:
                _log.debug("closing %s failed: %r", self._label, exc)

    async def __aenter__(self) -> Self:
        return self

    # ---------------------------------------------------------------- helpers

    async def read_exact(self, n: int, *, timeout: float | None) -> bytes:
        """Exactly ``n`` bytes. On timeout the bytes read so far are pushed back (not lost).

        Raises:
            ServomexTimeoutError: fewer than ``n`` bytes within ``timeout``.
            ServomexConnectionError: end of stream, closed or broken before ``n`` bytes.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        buf = bytearray()
        started = time.monotonic()
        with anyio.move_on_after(timeout) as scope:
            try:
                while len(buf) < n:
                    buf += await self.receive(n - len(buf))
            except ServomexConnectionError:
                self._pending[:0] = buf
                raise
        if scope.cancelled_caught:
            self._pending[:0] = buf
            raise self._timeout("read_exact", timeout if timeout is not None else 0.0, started)
        return bytes(buf)

    async def read_until(self, sep: bytes, *, timeout: float | None) -> bytes:
        """Bytes up to and including the first ``sep``; bytes after it are pushed back.

        On timeout or end of stream the bytes read so far are pushed back.
        """
        if not sep:
            raise ValueError("sep must not be empty")
        buf = bytearray()
        started = time.monotonic()
        with anyio.move_on_after(timeout) as scope:
            try:
                while True:
                    # Search only the tail that can hold a new match.
                    start = max(0, len(buf) - len(sep) + 1)
                    buf += await self.receive()
                    index = buf.find(sep, start)
                    if index >= 0:
                        end = index + len(sep)
                        self._pending[:0] = buf[end:]
                        return bytes(buf[:end])
            except ServomexConnectionError:
                self._pending[:0] = buf
                raise
        assert scope.cancelled_caught
        self._pending[:0] = buf
        raise self._timeout("read_until", timeout if timeout is not None else 0.0, started)

    async def read_available(self, *, idle_timeout: float, max_bytes: int | None = None) -> bytes:
        """Everything that arrives during a window of ``idle_timeout`` seconds.

        Returns early once ``max_bytes`` bytes are collected (any surplus is pushed back).
        Returns ``b""`` when nothing arrived. End of stream ends the window early; it is raised
        only when nothing at all was collected.
        """
        buf = bytearray()
        limit = max_bytes if max_bytes is not None else -1
        with anyio.move_on_after(idle_timeout):
            try:
                while limit < 0 or len(buf) < limit:
                    want = DEFAULT_RECEIVE_BYTES if limit < 0 else limit - len(buf)
                    buf += await self.receive(want)
            except ServomexConnectionError:
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
            await self.send(data)
        if scope.cancelled_caught:
            raise self._timeout("write", timeout if timeout is not None else 0.0, started)

    def pushback(self, data: bytes) -> None:
        """Put ``data`` back at the front of the read buffer; ``receive`` serves it first."""
        self._pending[:0] = data

    def drain_input(self) -> int:
        """Drop the pushback buffer (not the OS buffer); returns how many bytes were dropped."""
        dropped = len(self._pending)
        self._pending.clear()
        return dropped

    async def flush_after_open(self) -> None:
        """Discard the backlog of a fresh open (:meth:`flush_input`); a failure closes the
        transport and is reported as an open error (``could not open …``)."""
        try:
            dropped = await self.flush_input()
        except ServomexConnectionError as exc:
            await self.aclose()
            raise ServomexConnectionError(
                f"could not open {self.label}: {exc.message}", context=exc.context
            ) from exc
        if dropped:
            _log.debug("%s: discarded %d bytes queued before the open", self.label, dropped)

    async def flush_input(self) -> int | None:
        """Discard bytes already waiting in the operating system's input buffer, at once.

        Never waits for bytes to arrive and keeps the pushback buffer (see
        :meth:`drain_input`). Returns how many bytes were discarded, or None when this transport
        cannot discard anything — the base class: a generic byte stream offers no way to read
        without waiting, so it keeps everything. Serial ports and TCP connections override it.

        Raises:
            ServomexConnectionError: the transport is closed or the link is broken.
        """
        await anyio.lowlevel.checkpoint()
        return None
