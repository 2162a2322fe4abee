"""The curated public surface: exactly the names of api.md §0 (plus the offline decoders and
``ValueState``, exported per api.md §2)."""

from __future__ import annotations

import importlib

import servomexlib

SPEC_NAMES = {
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
    "open_continuous",
    "open_device",
    "record",
} | {"__version__", "decode_frame", "split_frames"}


def test_all_matches_the_spec() -> None:
    assert set(servomexlib.__all__) == SPEC_NAMES
    assert len(servomexlib.__all__) == len(SPEC_NAMES), "no duplicates in __all__"


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in servomexlib.__all__:
        obj = getattr(servomexlib, name)
        if name == "__version__":
            assert isinstance(obj, str)
            assert obj
            continue
        assert getattr(obj, "__doc__", None), f"{name} has no docstring"


def test_modbus_error_subclasses_live_in_errors_only() -> None:
    errors = importlib.import_module("servomexlib.errors")
    for name in ("ServomexIllegalFunctionError", "ServomexIllegalDataAddressError"):
        assert hasattr(errors, name)
        assert name not in servomexlib.__all__
    for name in errors.__all__:
        assert getattr(errors, name).__doc__, f"errors.{name} has no docstring"
