"""Serial ports through anyserial (docs/protocol.md, §1; docs/architecture.md, transport layer).

Every :class:`~servomexlib.settings.SerialSettings` field is applied: baud, data bits, parity,
stop bits, RTS/CTS and XON/XOFF flow control and the exclusive lock. ``SerialSettings`` has
already rejected a baud rate outside 2400–19200, so a bad rate never reaches the port.

Device paths (``/dev/ttyUSB0``) and Windows COM names (``COM3``, ``com3``, ``\\\\.\\COM12``)
are passed to anyserial, which adds the ``\\\\.\\`` prefix Windows needs for COM10 and above.

Opening
-------
* **Only serial ports.** On POSIX the path is checked before anything touches it: a missing
  path, a directory, a regular file, a FIFO or a block device is refused with
  ``ServomexConnectionError("could not open <path>: …")`` naming the port, and so is a character
  device that is not a terminal (``/dev/null``: the terminal ioctls fail with ENOTTY, which
  termios reports as ``termios.error`` — not an ``OSError`` — and is translated here too).
* **No backlog.** Bytes can be waiting before the first read: a pseudo-terminal or a virtual
  port keeps what its peer wrote while nobody had it open (4 KiB on Linux: minutes of old frames
  at a slow broadcast period), an adapter's FIFO holds a few, and an open port queues whatever
  arrives until it is read. :meth:`SerialTransport.open` and :meth:`~SerialTransport.reopen`
  discard the kernel input queue (``tcflush(TCIFLUSH)`` through anyserial's
  ``reset_input_buffer``) right after the open, so nothing received before the open is read as
  new (docs/protocol.md, §9.6, "Old bytes are not news"); :meth:`~SerialTransport.flush_input`
  does it again on demand (the continuous receiver calls it when it starts).
* **Drain.** :meth:`SerialTransport.drain` waits until the kernel's output queue is empty
  (anyserial's ``drain``: it polls the queue, it does not block a thread), so a Modbus request is
  timed from when it left the port.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Self

import anyio
import anyio.lowlevel
import anyserial

from ..errors import ErrorContext, ServomexConnectionError, ServomexValidationError
from ..settings import ByteSize, Parity, SerialSettings, StopBits
from .base import ByteStreamTransport

__all__ = ["WINDOWS_OPEN_RETRIES", "WINDOWS_OPEN_RETRY_DELAY_S", "SerialTransport"]

_log = logging.getLogger("servomexlib.transport")

#: Windows releases an exclusively opened COM port with a lag: reopening it at once fails with
#: "Access is denied" (HW, docs/protocol.md, §14 #12). Such an open is retried this often, this
#: far apart.
WINDOWS_OPEN_RETRIES = 6
WINDOWS_OPEN_RETRY_DELAY_S = 0.4

_BYTE_SIZE = {ByteSize.SEVEN: anyserial.ByteSize.SEVEN, ByteSize.EIGHT: anyserial.ByteSize.EIGHT}
_PARITY = {
    Parity.NONE: anyserial.Parity.NONE,
    Parity.EVEN: anyserial.Parity.EVEN,
    Parity.ODD: anyserial.Parity.ODD,
}
_STOP_BITS = {StopBits.ONE: anyserial.StopBits.ONE, StopBits.TWO: anyserial.StopBits.TWO}

type _Opener = Callable[[str, anyserial.SerialConfig], Awaitable[anyserial.SerialPort]]

if sys.platform == "win32":  # pragma: no cover - no termios on Windows
    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = ()
else:
    import termios

    _TERMIOS_ERRORS = (termios.error,)


def serial_config(settings: SerialSettings) -> anyserial.SerialConfig:
    """The anyserial configuration for ``settings`` (every field applied)."""
    return anyserial.SerialConfig(
        baudrate=settings.baudrate,
        byte_size=_BYTE_SIZE[settings.bytesize],
        parity=_PARITY[settings.parity],
        stop_bits=_STOP_BITS[settings.stopbits],
        flow_control=anyserial.FlowControl(
            rts_cts=settings.rtscts, xon_xoff=settings.xonxoff, dtr_dsr=False
        ),
        exclusive=settings.exclusive,
    )


def _is_permission_denied(exc: OSError) -> bool:
    winerror = getattr(exc, "winerror", None)
    return (
        isinstance(exc, PermissionError | anyserial.PortBusyError)
        or exc.errno == errno.EACCES
        or winerror == 5  # ERROR_ACCESS_DENIED
    )


async def _open_port(
    settings: SerialSettings,
    *,
    opener: _Opener | None = None,
    windows: bool | None = None,
) -> anyserial.SerialPort:
    """Open the port; translate failures; on Windows retry a permission-denied open.

    ``opener`` and ``windows`` exist for tests (the retry is Windows-only in production).
    """
    open_fn: _Opener = opener if opener is not None else anyserial.open_serial_port
    on_windows = sys.platform == "win32" if windows is None else windows
    config = serial_config(settings)
    path = settings.port
    started = time.monotonic()
    retries = WINDOWS_OPEN_RETRIES if on_windows else 0
    attempt = 0
    while True:
        try:
            return await open_fn(path, config)
        except (OSError, ValueError, *_TERMIOS_ERRORS) as exc:
            if isinstance(exc, OSError) and attempt < retries and _is_permission_denied(exc):
                attempt += 1
                _log.debug("open %s denied (attempt %d), retrying: %s", path, attempt, exc)
                await anyio.sleep(WINDOWS_OPEN_RETRY_DELAY_S)
                continue
            raise ServomexConnectionError(
                f"could not open {path}: {_open_failure(exc)}",
                context=ErrorContext(
                    port=path,
                    elapsed_s=time.monotonic() - started,
                    extra={"attempts": attempt + 1},
                ),
            ) from exc


def _open_failure(exc: BaseException) -> str:
    """Why an open failed, in words: ``not a serial port (…)`` for a non-terminal device."""
    if isinstance(exc, OSError):
        code = exc.errno
        detail = str(exc) or type(exc).__name__
    else:  # termios.error carries (errno, text) but is no OSError; ValueError: bad config
        args = exc.args
        code = args[0] if len(args) == 2 and isinstance(args[0], int) else None
        detail = str(args[1]) if code is not None else (str(exc) or type(exc).__name__)
    if code == errno.ENOTTY:
        return f"not a serial port ({os.strerror(errno.ENOTTY)})"
    return detail


#: What a path is when it is not a character device, for the refusal message.
_NOT_A_PORT: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISBLK, "a block device"),
)


def _check_device_path(path: str) -> None:
    """Refuse, before anything opens it, a POSIX path that cannot be a serial port.

    Windows COM names are not file-system paths; they are left to the driver.

    Raises:
        ServomexConnectionError: ``could not open <path>: …`` — missing, not reachable, or
            not a character device (a directory, a regular file, a FIFO, a socket, a block
            device).
    """
    if sys.platform == "win32":  # pragma: no cover - COM names are not stat()-able paths
        return
    ctx = ErrorContext(port=path)
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise ServomexConnectionError(
            f"could not open {path}: no such device ({exc.strerror})", context=ctx
        ) from exc
    except PermissionError as exc:
        raise ServomexConnectionError(
            f"could not open {path}: permission denied ({exc.strerror})", context=ctx
        ) from exc
    except (OSError, ValueError) as exc:  # ENOTDIR, ELOOP, ENAMETOOLONG, an embedded NUL …
        raise ServomexConnectionError(f"could not open {path}: {exc}", context=ctx) from exc
    mode = info.st_mode
    if stat.S_ISCHR(mode):
        return  # a terminal or not: the open itself tells (``/dev/null`` fails with ENOTTY)
    kind = next((name for test, name in _NOT_A_PORT if test(mode)), "not a character device")
    raise ServomexConnectionError(f"could not open {path}: not a serial port ({kind})", context=ctx)


class SerialTransport(ByteStreamTransport):
    """A serial port. Build it with :meth:`open`; the label is the port path.

    ``aclose`` is idempotent; ``reopen`` closes and opens the port again (e.g. with new
    settings), dropping any pushed-back bytes. Both ``open`` and ``reopen`` discard what the
    operating system queued before the open (see :meth:`flush_input`).
    """

    def __init__(self, port: anyserial.SerialPort, settings: SerialSettings) -> None:
        super().__init__(
            port, label=settings.port, serial_settings=settings, char_time_s=settings.char_time_s
        )
        self._port = port

    @classmethod
    async def open(cls, settings: SerialSettings) -> Self:
        """Open ``settings.port`` with every field of ``settings`` applied.

        Raises:
            ServomexValidationError: ``settings`` is not a SerialSettings (a bad baud rate was
                already rejected when it was built).
            ServomexConnectionError: ``"could not open <port>: …"`` — missing device, busy,
                permission denied (after the Windows retries), unsupported setting.
        """
        settings = _checked(settings)
        _check_device_path(settings.port)
        port = await _open_port(settings)
        transport = cls(port, settings)
        await transport.flush_after_open()
        return transport

    async def reopen(self, settings: SerialSettings | None = None) -> None:
        """Close the port (if open) and open it again with ``settings`` (default: the same)."""
        new = _checked(settings if settings is not None else self._require_settings())
        await self.aclose()
        _check_device_path(new.port)
        port = await _open_port(new)
        self._stream = port
        self._port = port
        self._settings = new
        self._char_time = new.char_time_s
        self._label = new.port
        self._pending.clear()
        self._closed = False
        await self.flush_after_open()

    async def flush_input(self) -> int | None:
        """Discard what waits in the kernel's input queue (``tcflush(TCIFLUSH)``), at once.

        The pushback buffer is kept (:meth:`drain_input` clears that). Returns the number of
        bytes discarded (0 when the platform cannot count them), or None when the port cannot
        be flushed at all.

        Raises:
            ServomexConnectionError: the port is closed or the device is gone.
        """
        port = self._port
        try:
            waiting: int | None = port.input_waiting()
        except (OSError, anyio.ClosedResourceError):
            waiting = None  # the flush below reports a real failure
        try:
            await port.reset_input_buffer()
        except NotImplementedError:  # pragma: no cover - every anyserial backend implements it
            _log.debug("%s cannot discard its input queue", self._label)
            return None
        except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise self._translate(exc, "flush_input") from exc
        return waiting if waiting is not None else 0

    async def drain(self) -> None:
        """Wait until the bytes written so far have left the kernel's output queue.

        Returns at once (after a checkpoint) on a backend that cannot tell.

        Raises:
            ServomexConnectionError: the port is closed or the device is gone.
        """
        try:
            await self._port.drain()
        except NotImplementedError:  # pragma: no cover - every anyserial backend implements it
            await anyio.lowlevel.checkpoint()
        except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise self._translate(exc, "drain") from exc

    def _require_settings(self) -> SerialSettings:
        assert self._settings is not None
        return self._settings


def _checked(settings: SerialSettings) -> SerialSettings:
    if not isinstance(settings, SerialSettings):
        raise ServomexValidationError(
            f"serial_settings must be a SerialSettings, got {type(settings).__name__}"
        )
    # replace() re-runs the validation (baud range, enum coercion) before any I/O, even for an
    # instance whose fields were tampered with after construction.
    return dataclasses.replace(settings)
