"""servomexlib: async driver for Servomex SERVOPRO 4000-series gas analysers."""

from __future__ import annotations

from ._version import __version__
from .decode import decode_frame, split_frames
from .devices.analyzer import Analyzer
from .devices.factory import open_continuous, open_device
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
from .manager import ServomexManager
from .settings import SerialSettings
from .streaming.recorder import AcquisitionSummary, PollSource, Recording, record
from .streaming.stream_session import StreamingSession
from .transport.base import Transport
from .transport.fake import FakeTransport
from .units import Unit, UnitKind

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
    "__version__",
    "decode_frame",
    "open_continuous",
    "open_device",
    "record",
    "split_frames",
]
