"""Serial ports through anyserial (api.md §3, §15).

Every :class:`~servomexlib.settings.SerialSettings` field is applied: baud, data bits, parity,
stop bits, RTS/CTS and XON/XOFF flow control and the exclusive lock. ``SerialSettings`` has
already rejected a baud rate outside 2400–19200, so a bad rate never reaches the port.

Device paths (``/dev/ttyUSB0``) and Windows COM names (``COM3``, ``com3``, ``\\\\.\\COM12``)
are passed to anyserial, which adds the ``\\\\.\\`` prefix Windows needs for COM10 and above.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Self

import anyio
import anyserial

from ..errors import ErrorContext, ServomexConnectionError, ServomexValidationError
from ..settings import ByteSize, Parity, SerialSettings, StopBits
from .base import ByteStreamTransport

__all__ = ["WINDOWS_OPEN_RETRIES", "WINDOWS_OPEN_RETRY_DELAY_S", "SerialTransport"]

_log = logging.getLogger("servomexlib.transport")

#: Windows releases an exclusively opened COM port with a lag: reopening it at once fails with
#: "Access is denied" (HW, protocol.md §12.12). Such an open is retried this often, this far apart.
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
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and attempt < retries and _is_permission_denied(exc):
                attempt += 1
                _log.debug("open %s denied (attempt %d), retrying: %s", path, attempt, exc)
                await anyio.sleep(WINDOWS_OPEN_RETRY_DELAY_S)
                continue
            detail = str(exc) or type(exc).__name__
            raise ServomexConnectionError(
                f"could not open {path}: {detail}",
                context=ErrorContext(
                    port=path,
                    elapsed_s=time.monotonic() - started,
                    extra={"attempts": attempt + 1},
                ),
            ) from exc


class SerialTransport(ByteStreamTransport):
    """A serial port. Build it with :meth:`open`; the label is the port path.

    ``aclose`` is idempotent; ``reopen`` closes and opens the port again (e.g. with new
    settings), dropping any pushed-back bytes.
    """

    def __init__(self, port: anyserial.SerialPort, settings: SerialSettings) -> None:
        super().__init__(
            port, label=settings.port, serial_settings=settings, char_time_s=settings.char_time_s
        )

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
        port = await _open_port(settings)
        return cls(port, settings)

    async def reopen(self, settings: SerialSettings | None = None) -> None:
        """Close the port (if open) and open it again with ``settings`` (default: the same)."""
        new = _checked(settings if settings is not None else self._require_settings())
        await self.aclose()
        port = await _open_port(new)
        self._stream = port
        self._settings = new
        self._char_time = new.char_time_s
        self._label = new.port
        self._pending.clear()
        self._closed = False

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
