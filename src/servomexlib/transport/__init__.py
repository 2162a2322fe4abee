"""The byte layer: serial, TCP, simulator and fake transports (api.md §15).

Operating-system and library errors are translated to ``Servomex*`` errors here and nowhere
else.
"""

from __future__ import annotations

from ..settings import MAX_BAUD, MIN_BAUD, ByteSize, Parity, SerialSettings, StopBits
from .base import (
    ByteStreamTransport,
    Transport,
    TransportBrokenError,
    TransportClosedError,
    TransportEndOfStreamError,
)
from .fake import FakeTransport
from .ports import PortKind, PortSpec, open_transport, parse_port, resolve_transport
from .serial import SerialTransport
from .sim import SimTransport
from .tcp import TcpTransport

__all__ = [
    "MAX_BAUD",
    "MIN_BAUD",
    "ByteSize",
    "ByteStreamTransport",
    "FakeTransport",
    "Parity",
    "PortKind",
    "PortSpec",
    "SerialSettings",
    "SerialTransport",
    "SimTransport",
    "StopBits",
    "TcpTransport",
    "Transport",
    "TransportBrokenError",
    "TransportClosedError",
    "TransportEndOfStreamError",
    "open_transport",
    "parse_port",
    "resolve_transport",
]
