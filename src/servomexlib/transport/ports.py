"""The port string grammar (api.md §16.2) and opening a transport from a port argument.

| Form | Example | Transport |
|---|---|---|
| device path | ``/dev/ttyUSB0`` | serial |
| COM name | ``COM3``, ``com3``, ``\\\\.\\COM12`` | serial |
| ``sim://[name][?query]`` | ``sim://?mode=continuous`` | in-process simulator |
| ``tcp://host:port`` | ``tcp://10.0.0.5:4001`` | raw bytes over TCP |

Any other ``scheme://`` is a :class:`~servomexlib.errors.ServomexValidationError`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import urllib.parse

from ..errors import ErrorContext, ServomexValidationError
from ..settings import SerialSettings
from .base import ByteStreamTransport, Transport
from .serial import SerialTransport
from .sim import SimTransport
from .tcp import TcpTransport

__all__ = ["PortKind", "PortSpec", "open_transport", "parse_port", "resolve_transport"]

_COM = re.compile(r"^(?:\\\\\.\\)?COM[0-9]+$", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class PortKind(enum.StrEnum):
    SERIAL = "serial"
    TCP = "tcp"
    SIM = "sim"


@dataclasses.dataclass(frozen=True, slots=True)
class PortSpec:
    """A parsed port string. ``host``/``tcp_port`` are set for TCP only."""

    kind: PortKind
    text: str
    host: str | None = None
    tcp_port: int | None = None

    @property
    def is_com_name(self) -> bool:
        return self.kind is PortKind.SERIAL and bool(_COM.match(self.text))


def parse_port(port: str) -> PortSpec:
    """Classify a port string without opening anything.

    Raises:
        ServomexValidationError: empty string, unknown scheme, or a malformed ``tcp://`` URL.
    """
    if not isinstance(port, str):
        raise ServomexValidationError(f"port must be a string or a Transport, got {port!r}")
    text = port.strip()
    ctx = ErrorContext(port=port)
    if not text:
        raise ServomexValidationError("port must not be empty", context=ctx)
    match = _SCHEME.match(text)
    if match is None:
        return PortSpec(PortKind.SERIAL, text)
    scheme = match.group(1).lower()
    if scheme == "sim":
        return PortSpec(PortKind.SIM, text)
    if scheme == "tcp":
        return _parse_tcp(text, ctx)
    raise ServomexValidationError(
        f"unsupported port scheme {scheme!r}: use a device path, a COM name, "
        "sim://… or tcp://host:port",
        context=ctx,
    )


def _parse_tcp(text: str, ctx: ErrorContext) -> PortSpec:
    parts = urllib.parse.urlsplit(text)
    try:
        number = parts.port
    except ValueError as exc:
        raise ServomexValidationError(f"bad TCP port in {text!r}: {exc}", context=ctx) from exc
    if not parts.hostname or number is None or number == 0:
        raise ServomexValidationError(f"expected tcp://host:port, got {text!r}", context=ctx)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ServomexValidationError(f"tcp:// takes only host and port, got {text!r}", context=ctx)
    return PortSpec(PortKind.TCP, text, host=parts.hostname, tcp_port=number)


async def resolve_transport(
    port: str | Transport, serial_settings: SerialSettings | None = None
) -> Transport:
    """Open the transport a ``port`` argument names (api.md §3, §16.2).

    A :class:`Transport` is returned as is. A string is parsed with :func:`parse_port` and
    opened; the caller owns the result. Serial ports and ``tcp://`` use ``serial_settings``
    (its ``port`` replaced by ``port``) or ``SerialSettings(port=port)``; ``sim://`` uses the
    simulator's own line settings.

    Raises:
        ServomexValidationError: bad port string or bad settings — before anything is opened.
        ServomexConnectionError: ``"could not open …"`` naming the port.
    """
    if not isinstance(port, str):
        if isinstance(port, ByteStreamTransport | Transport):
            return port
        raise ServomexValidationError(f"port must be a string or a Transport, got {port!r}")
    spec = parse_port(port)
    if serial_settings is not None and not isinstance(serial_settings, SerialSettings):
        raise ServomexValidationError(
            f"serial_settings must be a SerialSettings, got {type(serial_settings).__name__}",
            context=ErrorContext(port=port),
        )
    if spec.kind is PortKind.SIM:
        # Imported lazily: the simulator is a heavy, optional layer above the transport.
        from ..sim import connect_url

        conn = connect_url(spec.text)
        return SimTransport(
            conn.stream,
            label=spec.text,
            serial_settings=conn.serial_settings,
            char_time_s=conn.line.paced_char_time,
        )
    # replace() re-validates (baud 2400-19200) before any I/O.
    settings = (
        dataclasses.replace(serial_settings, port=spec.text)
        if serial_settings is not None
        else SerialSettings(port=spec.text)
    )
    if spec.kind is PortKind.TCP:
        assert spec.host is not None
        assert spec.tcp_port is not None
        return await TcpTransport.open(spec.host, spec.tcp_port, serial_settings=settings)
    return await SerialTransport.open(settings)


open_transport = resolve_transport
"""Alias of :func:`resolve_transport`."""
