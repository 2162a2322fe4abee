"""servomexlib: async driver for Servomex SERVOPRO 4000-series gas analysers.

The value types, errors and offline decoding are imported with the package. The I/O layers —
the Analyzer and its factories, the manager, the recorder, streaming and the transports, which
pull in anyio, anyserial and anymodbus — are imported on first use of their names (PEP 562), so
``import servomexlib`` stays cheap for scripts that only decode captures or handle values.
``from servomexlib import open_device`` and ``servomexlib.open_device`` work as usual.

The package also wires the ``sim://`` port scheme: the transport layer sits below the simulator
and must not import it, so the transport's scheme registry (:mod:`servomexlib.transport.schemes`,
which loads nothing heavy) gets an opener from here that imports :mod:`servomexlib.sim` only
when a ``sim://`` port is first opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__
from .decode import decode_frame, split_frames
from .devices.models import (
    AnalyserStatus,
    Availability,
    CalGroupState,
    CalibrationProgress,
    CalPhase,
    Capability,
    ChannelId,
    ChannelInfo,
    ChannelKind,
    ChannelStatus,
    DeviceInfo,
    ErrorPolicy,
    Frame,
    OverflowPolicy,
    ProtocolKind,
    Reading,
    SafetyTier,
    Sample,
    StreamMode,
    ValueState,
)
from .errors import (
    ErrorContext,
    ServomexCapabilityError,
    ServomexChecksumError,
    ServomexConfigurationError,
    ServomexConfirmationRequiredError,
    ServomexConnectionError,
    ServomexError,
    ServomexFrameError,
    ServomexModbusError,
    ServomexParseError,
    ServomexProtocolError,
    ServomexProtocolUnsupportedError,
    ServomexTimeoutError,
    ServomexTransportError,
    ServomexValidationError,
)
from .settings import SerialSettings
from .transport.schemes import register_scheme as _register_scheme
from .units import Unit, UnitKind

if TYPE_CHECKING:
    from .devices.analyzer import Analyzer
    from .devices.factory import open_continuous, open_device
    from .manager import ServomexManager
    from .streaming.recorder import AcquisitionSummary, PollSource, Recording, record
    from .streaming.stream_session import StreamingSession
    from .transport.base import Transport
    from .transport.fake import FakeTransport


async def _open_sim_port(url: str, serial_settings: SerialSettings | None) -> Transport:
    """The ``sim://`` opener: attach to the simulated line the URL names."""
    # Imported on first use: the simulator is a heavy layer above the transport.
    from .sim import open_url_transport

    return await open_url_transport(url, serial_settings)


_register_scheme("sim", _open_sim_port)

#: Public names of the I/O layers → the module that defines them (imported on first use).
_LAZY = {
    "Analyzer": "servomexlib.devices.analyzer",
    "open_continuous": "servomexlib.devices.factory",
    "open_device": "servomexlib.devices.factory",
    "ServomexManager": "servomexlib.manager",
    "AcquisitionSummary": "servomexlib.streaming.recorder",
    "PollSource": "servomexlib.streaming.recorder",
    "Recording": "servomexlib.streaming.recorder",
    "record": "servomexlib.streaming.recorder",
    "StreamingSession": "servomexlib.streaming.stream_session",
    "Transport": "servomexlib.transport.base",
    "FakeTransport": "servomexlib.transport.fake",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = [
    "AcquisitionSummary",
    "AnalyserStatus",
    "Analyzer",
    "Availability",
    "CalGroupState",
    "CalPhase",
    "CalibrationProgress",
    "Capability",
    "ChannelId",
    "ChannelInfo",
    "ChannelKind",
    "ChannelStatus",
    "DeviceInfo",
    "ErrorContext",
    "ErrorPolicy",
    "FakeTransport",
    "Frame",
    "OverflowPolicy",
    "PollSource",
    "ProtocolKind",
    "Reading",
    "Recording",
    "SafetyTier",
    "Sample",
    "SerialSettings",
    "ServomexCapabilityError",
    "ServomexChecksumError",
    "ServomexConfigurationError",
    "ServomexConfirmationRequiredError",
    "ServomexConnectionError",
    "ServomexError",
    "ServomexFrameError",
    "ServomexManager",
    "ServomexModbusError",
    "ServomexParseError",
    "ServomexProtocolError",
    "ServomexProtocolUnsupportedError",
    "ServomexTimeoutError",
    "ServomexTransportError",
    "ServomexValidationError",
    "StreamMode",
    "StreamingSession",
    "Transport",
    "Unit",
    "UnitKind",
    "ValueState",
    "__version__",
    "decode_frame",
    "open_continuous",
    "open_device",
    "record",
    "split_frames",
]
