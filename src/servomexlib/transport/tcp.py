"""Raw bytes over TCP to a serial device server (``tcp://host:port``, api.md §16.2).

No MBAP header: the server forwards the serial line's bytes as they are, so RTU-over-TCP,
Modbus ASCII and continuous frames all pass unchanged. The serial settings given here are only
recorded (the device server owns the line); Modbus uses the baud rate for timing and planning.
"""

from __future__ import annotations

import time
from typing import Self

import anyio

from ..errors import ErrorContext, ServomexConnectionError
from ..settings import SerialSettings
from .base import ByteStreamTransport

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "TcpTransport", "tcp_label"]

DEFAULT_CONNECT_TIMEOUT_S = 5.0


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
        return cls(stream, label=label, serial_settings=serial_settings)
