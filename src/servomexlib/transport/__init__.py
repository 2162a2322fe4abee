"""The byte layer: serial, TCP, simulator and fake transports (docs/architecture.md).

Operating-system and library errors are translated to ``Servomex*`` errors here and nowhere
else. :class:`Transport` is the contract every transport implements (a byte stream plus
pushback, the line's settings and character time, ``flush_input``, ``drain`` and typed
attributes); :class:`TimedReader` adds deadline-bounded reads and writes on top of any of them;
:func:`register_scheme` lets a higher layer open its own ``scheme://`` port strings (the
package registers ``sim://``).

The names are imported on first use (PEP 562): importing :mod:`servomexlib.transport.schemes`
to register a scheme does not load the serial and TCP machinery (anyio, anyserial).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
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
    from .schemes import register_scheme
    from .serial import SerialTransport
    from .sim import SimTransport
    from .tcp import TcpTransport
    from .timed import TimedReader

#: Public name → the module that defines it (imported on first use).
_LAZY = {
    "MAX_BAUD": "servomexlib.settings",
    "MIN_BAUD": "servomexlib.settings",
    "ByteSize": "servomexlib.settings",
    "Parity": "servomexlib.settings",
    "SerialSettings": "servomexlib.settings",
    "StopBits": "servomexlib.settings",
    "ByteStreamTransport": "servomexlib.transport.base",
    "Transport": "servomexlib.transport.base",
    "TransportBrokenError": "servomexlib.transport.base",
    "TransportClosedError": "servomexlib.transport.base",
    "TransportEndOfStreamError": "servomexlib.transport.base",
    "FakeTransport": "servomexlib.transport.fake",
    "PortKind": "servomexlib.transport.ports",
    "PortSpec": "servomexlib.transport.ports",
    "open_transport": "servomexlib.transport.ports",
    "parse_port": "servomexlib.transport.ports",
    "resolve_transport": "servomexlib.transport.ports",
    "register_scheme": "servomexlib.transport.schemes",
    "SerialTransport": "servomexlib.transport.serial",
    "SimTransport": "servomexlib.transport.sim",
    "TcpTransport": "servomexlib.transport.tcp",
    "TimedReader": "servomexlib.transport.timed",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


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
    "TimedReader",
    "Transport",
    "TransportBrokenError",
    "TransportClosedError",
    "TransportEndOfStreamError",
    "open_transport",
    "parse_port",
    "register_scheme",
    "resolve_transport",
]
