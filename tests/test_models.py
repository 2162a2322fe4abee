"""Enums and frozen, slotted models (api.md §1–§2)."""

from __future__ import annotations

import dataclasses
import enum
import pickle
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from servomexlib.devices import models
from servomexlib.devices.models import (
    CONTINUOUS_CAPABILITIES,
    MODBUS_CAPABILITIES,
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
    coerce_channel,
    idle_cal_groups,
)
from servomexlib.errors import ServomexTimeoutError, ServomexValidationError
from servomexlib.settings import SerialSettings
from servomexlib.units import Unit

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def reading(
    channel: ChannelId = ChannelId.I1,
    value: float | None = 20.376,
    *,
    name: str | None = "Oxygen",
    unit: Unit = Unit.PERCENT,
    status: ChannelStatus | None = None,
    value_state: ValueState | str | None = None,
) -> Reading:
    extra: dict[str, Any] = {} if value_state is None else {"value_state": value_state}
    return Reading(
        channel=channel,
        kind=channel.kind,
        name=name,
        value=value,
        unit=unit,
        status=status if status is not None else ChannelStatus(),
        protocol=ProtocolKind.CONTINUOUS_ASCII,
        received_at=T0,
        monotonic_ns=42,
        raw=b"I1;Oxygen;20.376; % ;    ;  ; ; ",
        **extra,
    )


def frame(*readings: Reading, requested_at: datetime | None = None) -> Frame:
    return Frame(
        readings=readings,
        analyser=AnalyserStatus(False, False, idle_cal_groups(), None),
        protocol=ProtocolKind.MODBUS_RTU,
        received_at=T0,
        monotonic_ns=99,
        raw=b"",
        requested_at=requested_at,
        latency_s=0.25 if requested_at is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Enums


@pytest.mark.parametrize(
    ("enum_cls", "base", "members"),
    [
        (
            ProtocolKind,
            enum.StrEnum,
            {
                "AUTO": "auto",
                "CONTINUOUS_ASCII": "continuous",
                "MODBUS_RTU": "modbus_rtu",
                "MODBUS_ASCII": "modbus_ascii",
            },
        ),
        (
            ChannelId,
            enum.StrEnum,
            {c: c for c in ["I1", "I2", "I3", "I4", "D1", "D2", "D3", "D4", "E1", "E2"]},
        ),
        (
            ChannelKind,
            enum.StrEnum,
            {
                "TRANSDUCER": "transducer",
                "DERIVED": "derived",
                "EXTERNAL_INPUT": "external_input",
            },
        ),
        (StreamMode, enum.StrEnum, {"POLL": "poll", "AUTOPRINT": "autoprint"}),
        (
            CalPhase,
            enum.StrEnum,
            {
                "IDLE": "idle",
                "SAMPLING": "sampling",
                "CAL_GAS_1": "cal_gas_1",
                "CAL_GAS_2": "cal_gas_2",
            },
        ),
        (SafetyTier, enum.StrEnum, {"READONLY": "readonly", "STATEFUL": "stateful"}),
        (
            Availability,
            enum.StrEnum,
            {"AVAILABLE": "available", "UNAVAILABLE": "unavailable", "UNKNOWN": "unknown"},
        ),
        (
            OverflowPolicy,
            enum.Enum,
            {"BLOCK": "block", "DROP_NEWEST": "drop_newest", "DROP_OLDEST": "drop_oldest"},
        ),
        (ErrorPolicy, enum.Enum, {"RAISE": "raise", "RETURN": "return"}),
        (
            ValueState,
            enum.StrEnum,
            {"OK": "ok", "OVER_RANGE": "over_range", "INVALID": "invalid"},
        ),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_enum_members(enum_cls: type[enum.Enum], base: type, members: dict[str, str]) -> None:
    assert issubclass(enum_cls, base)
    assert {m.name: m.value for m in enum_cls} == members
    # Declaration order is part of the contract (tables, CLI listings).
    assert [m.name for m in enum_cls] == list(members)


def test_capability_is_a_flag_with_the_mode_sets() -> None:
    assert issubclass(Capability, enum.Flag)
    assert [m.name for m in Capability] == [
        "READ_CHANNELS",
        "READ_STATUS",
        "IDENTIFY",
        "AUTOCAL",
        "LOOPBACK",
    ]
    assert set(CONTINUOUS_CAPABILITIES) == {
        Capability.READ_CHANNELS,
        Capability.READ_STATUS,
        Capability.IDENTIFY,
    }
    assert set(MODBUS_CAPABILITIES) == set(Capability)
    assert Capability.AUTOCAL not in CONTINUOUS_CAPABILITIES
    assert Capability.LOOPBACK in MODBUS_CAPABILITIES


@pytest.mark.parametrize(
    ("cid", "kind"),
    [
        (ChannelId.I1, ChannelKind.TRANSDUCER),
        (ChannelId.I4, ChannelKind.TRANSDUCER),
        (ChannelId.D1, ChannelKind.DERIVED),
        (ChannelId.D4, ChannelKind.DERIVED),
        (ChannelId.E1, ChannelKind.EXTERNAL_INPUT),
        (ChannelId.E2, ChannelKind.EXTERNAL_INPUT),
    ],
)
def test_channel_kind(cid: ChannelId, kind: ChannelKind) -> None:
    assert cid.kind is kind


def test_coerce_channel() -> None:
    assert coerce_channel("E2") is ChannelId.E2
    assert coerce_channel(ChannelId.D3) is ChannelId.D3
    for bad in ("i1", " I1", "X9", "", 1):
        with pytest.raises(ServomexValidationError):
            coerce_channel(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Frozen + slots


def _instances() -> list[Any]:
    settings = SerialSettings("/dev/ttyUSB0")
    r = reading()
    return [
        ChannelStatus(),
        r,
        CalGroupState(1, False, 1),
        AnalyserStatus(False, False, idle_cal_groups(), None),
        frame(r),
        ChannelInfo(ChannelId.I1, ChannelKind.TRANSDUCER, "Oxygen", Unit.PERCENT),
        DeviceInfo("4000-series", (), ProtocolKind.MODBUS_RTU, 1, settings),
        CalibrationProgress(1, False, CalPhase.IDLE),
        Sample("dev", ChannelId.I1, r, ProtocolKind.CONTINUOUS_ASCII, 1, T0),
        settings,
    ]


@pytest.mark.parametrize("obj", _instances(), ids=lambda o: type(o).__name__)
def test_every_model_is_frozen_and_slotted(obj: Any) -> None:
    cls = type(obj)
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in cls.__dict__
    assert not hasattr(obj, "__dict__")
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, first, getattr(obj, first))
    with pytest.raises((AttributeError, TypeError)):
        obj.not_a_field = 1
    assert pickle.loads(pickle.dumps(obj)) == obj


def test_model_field_order() -> None:
    def names(cls: Any) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    assert names(ChannelStatus) == ["fault", "maintenance", "calibrating", "warming_up", "alarms"]
    assert names(Reading) == [
        "channel",
        "kind",
        "name",
        "value",
        "unit",
        "status",
        "protocol",
        "received_at",
        "monotonic_ns",
        "raw",
        "value_state",
    ]
    assert names(CalGroupState) == ["group", "calibrating", "cal_gas"]
    assert names(AnalyserStatus) == ["fault", "maintenance", "cal_groups", "clock"]
    assert names(Frame) == [
        "readings",
        "analyser",
        "protocol",
        "received_at",
        "monotonic_ns",
        "raw",
        "requested_at",
        "latency_s",
    ]
    assert names(ChannelInfo) == ["channel", "kind", "name", "unit"]
    assert names(DeviceInfo) == ["model", "channels", "protocol", "address", "serial_settings"]
    assert names(CalibrationProgress) == ["group", "active", "phase"]
    assert names(Sample) == [
        "device",
        "channel",
        "reading",
        "protocol",
        "monotonic_ns",
        "received_at",
        "requested_at",
        "latency_s",
        "metadata",
        "error",
    ]


# --------------------------------------------------------------------------------------------
# Reading


def test_reading_as_dict() -> None:
    status = ChannelStatus(
        fault=True,
        maintenance=False,
        calibrating=True,
        warming_up=False,
        alarms=(1, 0, 0, 1),  # type: ignore[arg-type]
    )
    row = reading(ChannelId.E1, 4.0, name=None, unit=Unit.MILLIAMP, status=status).as_dict()
    assert list(row) == [
        "channel",
        "kind",
        "name",
        "value",
        "unit",
        "fault",
        "maintenance",
        "calibrating",
        "warming_up",
        "alarm1",
        "alarm2",
        "alarm3",
        "alarm4",
        "ok",
        "protocol",
    ]
    assert row == {
        "channel": "E1",
        "kind": "external_input",
        "name": None,
        "value": 4.0,
        "unit": "mA",
        "fault": 1,
        "maintenance": 0,
        "calibrating": 1,
        "warming_up": 0,
        "alarm1": 1,
        "alarm2": 0,
        "alarm3": 0,
        "alarm4": 1,
        "ok": 0,
        "protocol": "continuous",
    }
    for key in ("fault", "maintenance", "calibrating", "warming_up", "alarm1", "ok"):
        assert type(row[key]) is int
    for key in ("channel", "kind", "unit", "protocol"):
        assert type(row[key]) is str


def test_reading_as_dict_ok_row() -> None:
    row = reading().as_dict()
    assert row["ok"] == 1
    assert row["name"] == "Oxygen"
    assert row["value"] == 20.376


def test_reading_format() -> None:
    r = reading(value=20.376)
    assert f"{r:.2f}" == "20.38"
    assert f"{r:8.3f}" == "  20.376"
    assert format(r, "") == repr(r)
    assert f"{r}" == repr(r)
    assert repr(r).startswith("Reading(channel=<ChannelId.I1: 'I1'>")
    assert f"{reading(value=None):.2f}" == "None"
    assert f"{reading(value=None)}" == repr(reading(value=None))


@pytest.mark.parametrize(
    ("value", "given", "state"),
    [
        (20.376, None, ValueState.OK),
        (0.0, None, ValueState.OK),
        (-0.0, None, ValueState.OK),
        (None, None, ValueState.INVALID),
        (None, ValueState.OVER_RANGE, ValueState.OVER_RANGE),
        (None, "over_range", ValueState.OVER_RANGE),
        (None, "invalid", ValueState.INVALID),
        (3.0e38, "ok", ValueState.OK),
    ],
)
def test_reading_value_state(
    value: float | None, given: ValueState | str | None, state: ValueState
) -> None:
    r = reading(value=value, value_state=given)
    assert r.value_state is state
    assert (r.value is None) is (state is not ValueState.OK)


@pytest.mark.parametrize(
    ("value", "given", "match"),
    [
        (20.376, ValueState.OVER_RANGE, "contradicts"),
        (20.376, ValueState.INVALID, "contradicts"),
        (None, ValueState.OK, "contradicts"),
        (None, "ok", "contradicts"),
        (None, "overrange", "unknown value_state"),
        (float("nan"), None, "not a finite number"),
        (float("inf"), None, "not a finite number"),
        (float("-inf"), ValueState.OK, "not a finite number"),
        (True, None, "not a finite number"),
        ("20.1", None, "not a finite number"),
    ],
)
def test_reading_refuses_a_value_and_state_that_disagree(
    value: Any, given: Any, match: str
) -> None:
    with pytest.raises(ServomexValidationError, match=match) as info:
        reading(ChannelId.I3, value, value_state=given)
    assert "channel I3" in str(info.value)


def test_reading_positional_construction_old_and_new() -> None:
    args = (
        ChannelId.I2,
        ChannelKind.TRANSDUCER,
        "CO",
        0.084,
        Unit.PERCENT,
        ChannelStatus(),
        ProtocolKind.MODBUS_RTU,
        T0,
        7,
        b"",
    )
    old = Reading(*args)  # the 10 fields of earlier versions
    assert old.value_state is ValueState.OK
    assert Reading(*args, ValueState.OK) == old
    over = Reading(
        ChannelId.I2,
        ChannelKind.TRANSDUCER,
        "CO",
        None,
        Unit.PERCENT,
        ChannelStatus(),
        ProtocolKind.MODBUS_RTU,
        T0,
        7,
        b"",
        ValueState.OVER_RANGE,
    )
    assert over.value is None
    assert over.value_state is ValueState.OVER_RANGE


def test_dataclasses_replace_keeps_the_invariant() -> None:
    r = reading(value=20.376)
    with pytest.raises(ServomexValidationError, match="contradicts"):
        dataclasses.replace(r, value=None)
    over = dataclasses.replace(r, value=None, value_state=ValueState.OVER_RANGE)
    assert over.value_state is ValueState.OVER_RANGE
    assert dataclasses.replace(over, name="O2").value_state is ValueState.OVER_RANGE
    assert pickle.loads(pickle.dumps(over)) == over


@pytest.mark.parametrize(
    ("value", "state", "status", "ok"),
    [
        (20.376, None, ChannelStatus(), True),
        (20.376, None, ChannelStatus(calibrating=True, warming_up=True), True),
        (20.376, None, ChannelStatus(fault=True), False),
        (20.376, None, ChannelStatus(alarms=(False, True, False, False)), False),
        (None, ValueState.OVER_RANGE, ChannelStatus(), False),
        (None, ValueState.INVALID, ChannelStatus(), False),
        (None, ValueState.INVALID, ChannelStatus(fault=True), False),
    ],
)
def test_reading_ok_needs_a_good_status_and_a_value(
    value: float | None, state: ValueState | None, status: ChannelStatus, ok: bool
) -> None:
    r = reading(value=value, value_state=state, status=status)
    assert r.ok is ok
    assert r.as_dict()["ok"] == int(ok)
    s = Sample("d", r.channel, r, ProtocolKind.CONTINUOUS_ASCII, 1, T0)
    assert s.ok is ok
    assert s.value_state is r.value_state


def test_reading_as_dict_and_format_of_an_over_range_reading() -> None:
    r = reading(value=None, value_state=ValueState.OVER_RANGE)
    row = r.as_dict()
    assert "value_state" not in row  # as_dict keeps the keys of api.md §2
    assert row["value"] is None
    assert row["ok"] == 0
    assert f"{r:.2f}" == "None"


def test_fast_reading_builder_equals_the_constructor() -> None:
    public = reading(ChannelId.I2, None, value_state=ValueState.OVER_RANGE)
    fields = [getattr(public, f.name) for f in dataclasses.fields(Reading)]
    built = models.build_reading(*fields)
    assert built == public
    assert type(built) is Reading
    assert built.value_state is ValueState.OVER_RANGE


# --------------------------------------------------------------------------------------------
# Status


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        (ChannelStatus(), True),
        (ChannelStatus(fault=True), False),
        (ChannelStatus(alarms=(False, False, True, False)), False),
        (ChannelStatus(maintenance=True), True),
        (ChannelStatus(calibrating=True), True),
        (ChannelStatus(warming_up=True), True),
        (ChannelStatus(maintenance=True, calibrating=True, warming_up=True), True),
        (ChannelStatus(fault=True, alarms=(True, True, True, True)), False),
    ],
)
def test_channel_status_ok(status: ChannelStatus, ok: bool) -> None:
    assert status.ok is ok


@pytest.mark.parametrize(
    ("calibrating", "cal_gas", "phase"),
    [
        (False, 1, CalPhase.IDLE),
        (False, 2, CalPhase.IDLE),
        (True, 1, CalPhase.CAL_GAS_1),
        (True, 2, CalPhase.CAL_GAS_2),
    ],
)
def test_cal_group_phase(calibrating: bool, cal_gas: int, phase: CalPhase) -> None:
    assert CalGroupState(3, calibrating, cal_gas).phase is phase


def test_cal_group_defaults_and_idle_groups() -> None:
    assert CalGroupState(1, False).cal_gas == 1
    groups = idle_cal_groups()
    assert [g.group for g in groups] == [1, 2, 3, 4]
    assert all(g.phase is CalPhase.IDLE and g.cal_gas == 1 for g in groups)


# --------------------------------------------------------------------------------------------
# Frame


def test_frame_channel_lookup() -> None:
    i1, e2 = reading(ChannelId.I1), reading(ChannelId.E2, 0.0, name=None, unit=Unit.MILLIAMP)
    f = frame(i1, e2)
    assert f.channel(ChannelId.I1) is i1
    assert f.channel("E2") is e2
    assert f.channels == (ChannelId.I1, ChannelId.E2)


@pytest.mark.parametrize("cid", ["I2", ChannelId.D1, "i1", "I1 ", "Oxygen", ""])
def test_frame_channel_unknown_or_absent(cid: Any) -> None:
    with pytest.raises(ServomexValidationError):
        frame(reading(ChannelId.I1)).channel(cid)


def test_frame_as_samples_shares_stamps() -> None:
    requested = T0 - timedelta(seconds=1)
    f = frame(reading(ChannelId.I1), reading(ChannelId.I2, 0.084), requested_at=requested)
    samples = f.as_samples("rack-1")
    assert len(samples) == 2
    for s, r in zip(samples, f.readings, strict=True):
        assert s.device == "rack-1"
        assert s.channel is r.channel
        assert s.reading is r
        assert s.protocol is f.protocol
        assert s.received_at == f.received_at
        assert s.monotonic_ns == f.monotonic_ns
        assert s.requested_at == requested
        assert s.latency_s == 0.25
        assert s.error is None
        assert dict(s.metadata) == {}
    assert frame(reading()).as_samples()[0].device == ""
    plain = frame(reading()).as_samples()[0]
    assert plain.requested_at is None
    assert plain.latency_s is None


# --------------------------------------------------------------------------------------------
# Sample


def test_sample_value_and_unit() -> None:
    r = reading(value=20.376)
    s = Sample("d", ChannelId.I1, r, ProtocolKind.CONTINUOUS_ASCII, 1, T0)
    assert s.value == 20.376
    assert s.unit is Unit.PERCENT
    none_value = Sample("d", ChannelId.I1, reading(value=None), ProtocolKind.MODBUS_RTU, 1, T0)
    assert none_value.value is None
    assert none_value.unit is Unit.PERCENT


def test_error_sample() -> None:
    err = ServomexTimeoutError("no response")
    s = Sample("d", None, None, ProtocolKind.MODBUS_RTU, 1, T0, error=err)
    assert s.value is None
    assert s.unit is None
    assert s.value_state is None
    assert s.ok is False
    assert s.error is err
    assert pickle.loads(pickle.dumps(s)).error.message == "no response"


def test_sample_reading_and_error_are_exclusive() -> None:
    with pytest.raises(ServomexValidationError):
        Sample(
            "d",
            None,
            reading(),
            ProtocolKind.MODBUS_RTU,
            1,
            T0,
            error=ServomexTimeoutError("x"),
        )
    with pytest.raises(ServomexValidationError):
        Sample(
            "d", ChannelId.I1, None, ProtocolKind.MODBUS_RTU, 1, T0, error=ServomexTimeoutError("x")
        )


def test_sample_metadata_read_only() -> None:
    source = {"site": "lab"}
    s = Sample("d", ChannelId.I1, reading(), ProtocolKind.MODBUS_RTU, 1, T0, metadata=source)
    assert isinstance(s.metadata, MappingProxyType)
    source["site"] = "changed"
    assert s.metadata["site"] == "lab"
    with pytest.raises(TypeError):
        s.metadata["x"] = 1  # type: ignore[index]
    default = Sample("d", ChannelId.I1, reading(), ProtocolKind.MODBUS_RTU, 1, T0)
    assert isinstance(default.metadata, MappingProxyType)
    with pytest.raises(TypeError):
        default.metadata["x"] = 1  # type: ignore[index]
    back = pickle.loads(pickle.dumps(s))
    assert back == s
    assert isinstance(back.metadata, MappingProxyType)


def test_models_module_exports() -> None:
    for name in models.__all__:
        assert hasattr(models, name)
