"""servomexlib: async driver for Servomex SERVOPRO 4000-series gas analysers.

The value types, errors and offline decoding are imported with the package. The I/O layers —
the Analyzer and its factories, the manager, the recorder, streaming and the transports, which
pull in anyio, anyserial and anymodbus — are imported on first use of their names (PEP 562), so
``import servomexlib`` stays cheap for scripts that only decode captures or handle values.
``from servomexlib import open_device`` and ``servomexlib.open_device`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from .units import Unit, UnitKind

if TYPE_CHECKING:
    from .devices.analyzer import Analyzer
    from .devices.factory import open_continuous, open_device
    from .manager import ServomexManager
    from .streaming.recorder import AcquisitionSummary, PollSource, Recording, record
    from .streaming.stream_session import StreamingSession
    from .transport.base import Transport
    from .transport.fake import FakeTransport

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


def __getattr__(name: str) -> Any:
    """Import a lazy public name (or a subpackage such as ``servomexlib.transport``) on use."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups bypass this hook
        return value
    if not name.startswith("_"):
        qualified = f"{__name__}.{name}"
        try:
            return importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
