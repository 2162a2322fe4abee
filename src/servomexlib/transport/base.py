"""The byte layer: the ``Transport`` protocol and :class:`ByteStreamTransport`.

Theory of operation
-------------------
Every way of reaching an analyser — a serial port (anyserial), a TCP device server
(``anyio.connect_tcp``), the in-process simulator and the test fake — is an anyio
``ByteStream``. :class:`ByteStreamTransport` wraps one and adds what the clients need on top:
a label for errors, the serial settings in use, the line's character time when known, a
pushback buffer (the AUTO ladder parks a recognised continuous frame there for the receiver),
the wrapped stream's typed attributes and ``drain``. :class:`Transport` is that contract as a
Protocol; every concrete transport implements all of it, so the clients call its members
directly and never probe for them. Deadline-bounded reads and writes live in a wrapper,
:class:`~servomexlib.transport.timed.TimedReader`; the old ``read_exact``/``read_until``/
``read_available``/``write`` methods remain here for one release as deprecated delegates
(each call warns with :class:`DeprecationWarning`).

Single reader: once a mode is chosen only one reader consumes the stream, and the Modbus framer
never sees pushed-back bytes (a Modbus line drops them when it starts).

Input that was already waiting is not news. ``drain_input()`` drops the pushback buffer only;
:meth:`ByteStreamTransport.flush_input` discards what the operating system has
queued for the stream, without waiting for more: serial ports flush the kernel input queue
(and do so when they open), TCP connections read off what the socket already holds. A generic
byte stream offers no way to read without waiting, so the base class discards nothing and
returns None; the continuous receiver then relies on its own check (the line rate,
docs/protocol.md, §9.6).

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
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import ErrorContext, ServomexConnectionError
from ..settings import SerialSettings

if TYPE_CHECKING:
    from .timed import TimedReader

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
    """What the clients use: an anyio byte stream plus pushback and a few line facts.

    Every concrete transport (:class:`ByteStreamTransport` and its subclasses — serial, TCP,
    simulator, the test fake) implements all of it, so clients call the members directly.
    End of stream, a closed transport and OS errors raise
    :class:`~servomexlib.errors.ServomexConnectionError` with ``port=label`` in the context.
    Deadline-bounded reads and writes are :class:`~servomexlib.transport.timed.TimedReader`'s.

    Members beyond the byte stream:

    * ``label`` — the port path or URL; used in errors and as the default device label.
    * ``is_open``; ``serial_settings`` — the line settings in use, when known.
    * ``char_time_s`` — seconds one character occupies on the line, when the line rate is known
      (None otherwise: a TCP device server); the continuous receiver reads frame-sized pieces
      with it (docs/protocol.md, §9.6).
    * ``pending`` — bytes already buffered in the transport (the pushback buffer), 0 if unknown.
    * ``pushback(data)`` — bytes back to the front of the read buffer; ``receive`` serves them
      first. ``drain_input()`` drops that buffer (only that) and says how many bytes it held.
    * ``flush_input()`` — discard, without waiting, what the operating system already holds for
      the stream; the byte count, or None when the transport cannot (docs/protocol.md, §9.6).
    * ``drain()`` — wait until written bytes have left the port; returns at once where the
      transport cannot tell.
    * ``extra_attributes`` — anyio typed attributes of the underlying stream (may be empty).
    """

    @property
    def label(self) -> str: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def serial_settings(self) -> SerialSettings | None: ...

    @property
    def char_time_s(self) -> float | None: ...

    @property
    def pending(self) -> int: ...

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]: ...

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_BYTES) -> bytes: ...

    async def send(self, item: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...

    def pushback(self, data: bytes) -> None: ...

    def drain_input(self) -> int: ...

    async def flush_input(self) -> int | None: ...

    async def drain(self) -> None: ...


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
            continuous receiver uses it to read each frame in one piece (docs/protocol.md, §9.6).
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

    # ---------------------------------------------------------------- line facts

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The wrapped stream's anyio typed attributes (a serial port's config, a socket)."""
        return self._stream.extra_attributes

    async def drain(self) -> None:
        """Wait until written bytes have left the port; the base class cannot tell and returns
        at once, without a checkpoint (the ``send`` before it was one; a Modbus transaction
        drains after every request, so an extra trip through the event loop per request is
        measurable). Serial ports override it."""

    # ---------------------------------------------------------------- deprecated helpers

    async def read_exact(self, n: int, *, timeout: float | None) -> bytes:
        """Deprecated: use ``TimedReader(transport).read_exact(n, timeout=…)``."""
        return await _timed(self, "read_exact").read_exact(n, timeout=timeout)

    async def read_until(self, sep: bytes, *, timeout: float | None) -> bytes:
        """Deprecated: use ``TimedReader(transport).read_until(sep, timeout=…)``."""
        return await _timed(self, "read_until").read_until(sep, timeout=timeout)

    async def read_available(self, *, idle_timeout: float, max_bytes: int | None = None) -> bytes:
        """Deprecated: use ``TimedReader(transport).read_available(idle_timeout=…)``."""
        reader = _timed(self, "read_available")
        return await reader.read_available(idle_timeout=idle_timeout, max_bytes=max_bytes)

    async def write(self, data: bytes, *, timeout: float | None) -> None:
        """Deprecated: use ``TimedReader(transport).write(data, timeout=…)``."""
        await _timed(self, "write").write(data, timeout=timeout)

    # ---------------------------------------------------------------- pushback and flushing

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


def _timed(transport: ByteStreamTransport, method: str) -> TimedReader:
    """The TimedReader behind a deprecated ``ByteStreamTransport`` helper (warns once per call
    site, as DeprecationWarning does)."""
    warnings.warn(
        f"{type(transport).__name__}.{method}() is deprecated; use "
        f"servomexlib.transport.TimedReader(transport).{method}()",
        DeprecationWarning,
        stacklevel=3,
    )
    # Imported here: timed.py builds on this module.
    from .timed import TimedReader

    return TimedReader(transport)
