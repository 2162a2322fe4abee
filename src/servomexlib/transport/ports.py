"""The port string grammar and opening a transport from a port argument.

| Form | Example | Transport |
|---|---|---|
| device path | ``/dev/ttyUSB0`` | serial |
| COM name | ``COM3``, ``com3``, ``\\\\.\\COM12`` | serial |
| ``sim://[name][?query]`` | ``sim://?mode=continuous`` | in-process simulator |
| ``tcp://host:port`` | ``tcp://10.0.0.5:4001`` | raw bytes over TCP |
| ``scheme://…`` | any scheme given to :func:`register_scheme` | what its opener returns |

A string without ``scheme://`` is a serial port (device path or COM name; surrounding blanks are
ignored). Schemes are case-insensitive. ``tcp://`` takes a host and a port 1-65535 and nothing
else (no path, query or user). ``sim://`` is not opened here: the transport layer sits below the
simulator, so the top-level package registers the ``sim`` opener (:mod:`.schemes`), which
imports the simulator on first use. Any other scheme is a
:class:`~servomexlib.errors.ServomexValidationError` naming the forms that are accepted.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import urllib.parse

from ..errors import ErrorContext, ServomexValidationError
from ..settings import SerialSettings
from .base import ByteStreamTransport, Transport
from .schemes import BUILTIN_SCHEMES, register_scheme, registered_schemes, scheme_opener
from .serial import SerialTransport
from .tcp import TcpTransport

__all__ = [
    "PortKind",
    "PortSpec",
    "check_port",
    "open_transport",
    "parse_port",
    "register_scheme",
    "resolve_transport",
]

_COM = re.compile(r"^(?:\\\\\.\\)?COM[0-9]+$", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class PortKind(enum.StrEnum):
    SERIAL = "serial"
    TCP = "tcp"
    SIM = "sim"
    REGISTERED = "registered"  # another scheme given to register_scheme()


@dataclasses.dataclass(frozen=True, slots=True)
class PortSpec:
    """A parsed port string. ``host``/``tcp_port`` are set for TCP only; ``scheme`` (lower
    case) for every ``scheme://`` form."""

    kind: PortKind
    text: str
    host: str | None = None
    tcp_port: int | None = None
    scheme: str | None = None

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
    if scheme == "tcp":
        return _parse_tcp(text, ctx)
    if scheme_opener(scheme) is not None:
        kind = PortKind.SIM if scheme == "sim" else PortKind.REGISTERED
        return PortSpec(kind, text, scheme=scheme)
    others = "".join(f", {name}://…" for name in registered_schemes() if name != "sim")
    raise ServomexValidationError(
        f"unsupported port scheme {scheme!r}: use a device path, a COM name, "
        f"sim://…, tcp://host:port{others}",
        context=ctx,
    )


def check_port(port: object) -> None:
    """A port string of valid grammar (checked before any I/O) or a :class:`Transport`.

    Raises:
        ServomexValidationError: a malformed port string, or neither a string nor a Transport.
    """
    if isinstance(port, str):
        parse_port(port)
    elif not isinstance(port, Transport):
        raise ServomexValidationError(f"port must be a string or a Transport, got {port!r}")


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
    return PortSpec(PortKind.TCP, text, host=parts.hostname, tcp_port=number, scheme="tcp")


async def resolve_transport(
    port: str | Transport, serial_settings: SerialSettings | None = None
) -> Transport:
    """Open the transport a ``port`` argument names (docs/protocol.md, §1; docs/index.md).

    A :class:`Transport` is returned as is. A string is parsed with :func:`parse_port` and
    opened; the caller owns the result. Serial ports and ``tcp://`` use ``serial_settings``
    (its ``port`` replaced by ``port``) or ``SerialSettings(port=port)``; a registered scheme's
    opener gets the port string and ``serial_settings`` as given (``sim://`` uses the
    simulator's own line settings).

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
    if spec.scheme is not None and spec.scheme not in BUILTIN_SCHEMES:
        opener = scheme_opener(spec.scheme)
        if opener is None:  # unregistered between parse_port and here
            raise ServomexValidationError(
                f"no opener is registered for {spec.scheme}:// ports",
                context=ErrorContext(port=port),
            )
        return await opener(spec.text, serial_settings)
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
