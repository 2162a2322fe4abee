"""The values of the public API: enums and frozen, slotted models (docs/protocol.md, §13).

This module is a leaf: it imports only other value modules (errors, units, settings), never
I/O code, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ..errors import ErrorContext, ServomexError, ServomexValidationError
from ..settings import SerialSettings
from ..units import Unit

__all__ = [
    "CONTINUOUS_CAPABILITIES",
    "MODBUS_CAPABILITIES",
    "AnalyserStatus",
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
    "ErrorPolicy",
    "Frame",
    "OverflowPolicy",
    "ProtocolKind",
    "Reading",
    "SafetyTier",
    "Sample",
    "StreamMode",
    "ValueState",
]


class ProtocolKind(enum.StrEnum):
    """The analyser's three mutually exclusive wire modes, plus AUTO (open time only)."""

    AUTO = "auto"
    CONTINUOUS_ASCII = "continuous"  # unsolicited broadcast, read only (docs/protocol.md, §3)
    MODBUS_RTU = "modbus_rtu"  # binary Modbus with CRC-16 (docs/protocol.md, §4)
    MODBUS_ASCII = "modbus_ascii"  # hex Modbus with LRC (docs/protocol.md, §4)


class ChannelId(enum.StrEnum):
    """Channel slots; the value is the id as it appears on the wire."""

    I1 = "I1"  # transducers
    I2 = "I2"
    I3 = "I3"
    I4 = "I4"
    D1 = "D1"  # derived channels; status bits 0-3 copy a parent transducer (MAN)
    D2 = "D2"
    D3 = "D3"
    D4 = "D4"
    E1 = "E1"  # external mA inputs; status bit 0 = Invalid (MAN)
    E2 = "E2"

    @property
    def kind(self) -> ChannelKind:
        return _KIND_BY_LETTER[self.value[0]]


class ChannelKind(enum.StrEnum):
    """What a channel slot measures: a transducer, a derived value or an external mA input."""

    TRANSDUCER = "transducer"
    DERIVED = "derived"
    EXTERNAL_INPUT = "external_input"


_KIND_BY_LETTER = {
    "I": ChannelKind.TRANSDUCER,
    "D": ChannelKind.DERIVED,
    "E": ChannelKind.EXTERNAL_INPUT,
}


class StreamMode(enum.StrEnum):
    """How a stream gets its data: the host polls (Modbus) or the analyser broadcasts."""

    POLL = "poll"  # the host asks (Modbus)
    AUTOPRINT = "autoprint"  # the analyser broadcasts (continuous)


class CalPhase(enum.StrEnum):
    """Where an autocalibration group is in its cycle (docs/protocol.md, §12)."""

    IDLE = "idle"
    SAMPLING = "sampling"  # reserved: no known wire state produces it (docs/protocol.md, §12)
    CAL_GAS_1 = "cal_gas_1"
    CAL_GAS_2 = "cal_gas_2"


class Capability(enum.Flag):
    """What the active wire mode can do; continuous has the first three, Modbus all five."""

    READ_CHANNELS = enum.auto()
    READ_STATUS = enum.auto()
    IDENTIFY = enum.auto()
    AUTOCAL = enum.auto()  # coils 00001-00004 and 00009 (Modbus only)
    LOOPBACK = enum.auto()  # FC08 sub-function 0 (Modbus only)


#: What each wire mode can do (docs/protocol.md, §2): continuous is read-only, Modbus has all five.
CONTINUOUS_CAPABILITIES = Capability.READ_CHANNELS | Capability.READ_STATUS | Capability.IDENTIFY
MODBUS_CAPABILITIES = CONTINUOUS_CAPABILITIES | Capability.AUTOCAL | Capability.LOOPBACK


class SafetyTier(enum.StrEnum):
    """Whether an operation only reads or changes the analyser's state."""

    READONLY = "readonly"
    STATEFUL = "stateful"  # changes the analyser's state; needs confirm=True


class Availability(enum.StrEnum):
    """Tri-state availability, exported for applications; unused by the core."""

    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    UNKNOWN = "unknown"


class OverflowPolicy(enum.Enum):
    """What record() does when the consumer falls ``buffer_size`` batches behind."""

    BLOCK = "block"
    DROP_NEWEST = "drop_newest"
    DROP_OLDEST = "drop_oldest"


class ValueState(enum.StrEnum):
    """Whether a reading carries a number and, if not, why (docs/protocol.md, §3.5, §13).

    ``Reading.value`` is None exactly when the state is not OK.
    """

    OK = "ok"  # the value field held a finite number
    OVER_RANGE = "over_range"  # the analyser sent an over/under-range glyph (******, OVER, ...)
    INVALID = "invalid"  # blank, unparsable or non-finite (Modbus NaN/±inf)


class ErrorPolicy(enum.Enum):
    """How ServomexManager.execute_each reports failing analysers."""

    RAISE = "raise"
    RETURN = "return"


def coerce_channel(cid: ChannelId | str) -> ChannelId:
    """Accept a ChannelId or its exact wire string; anything else is a validation error."""
    if isinstance(cid, ChannelId):
        return cid
    if isinstance(cid, str):
        try:
            return ChannelId(cid)
        except ValueError:
            pass
    valid = ", ".join(c.value for c in ChannelId)
    raise ServomexValidationError(f"unknown channel {cid!r}; expected one of {valid}")


def coerce_protocol(protocol: ProtocolKind | str, ctx: ErrorContext | None = None) -> ProtocolKind:
    """Accept a ProtocolKind or its value in any case (``"Modbus_RTU"``); anything else is a
    :class:`~servomexlib.errors.ServomexValidationError` listing the valid values, with ``ctx``
    attached."""
    if isinstance(protocol, ProtocolKind):
        return protocol
    if isinstance(protocol, str):
        try:
            return ProtocolKind(protocol.strip().lower())
        except ValueError:
            pass
    valid = ", ".join(p.value for p in ProtocolKind)
    raise ServomexValidationError(
        f"unknown protocol {protocol!r}; expected one of {valid}", context=ctx
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelStatus:
    """Per-channel flags. For external inputs ``fault`` carries the Invalid bit."""

    fault: bool = False
    maintenance: bool = False
    calibrating: bool = False
    warming_up: bool = False
    alarms: tuple[bool, bool, bool, bool] = (False, False, False, False)

    @property
    def ok(self) -> bool:
        """No fault and no alarm; maintenance, calibration and warm-up do not matter."""
        return not self.fault and not any(self.alarms)


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """One channel's value and status, as decoded from one frame or one Modbus read.

    ``value`` is None for over-range, invalid, blank, unparsable and non-finite readings, and
    ``value_state`` says which: :attr:`ValueState.OK` when ``value`` is a number,
    :attr:`ValueState.OVER_RANGE` for an over/under-range glyph, :attr:`ValueState.INVALID`
    otherwise. ``raw`` holds the bytes the reading came from: the channel block's 8 fields
    joined by ``;`` (continuous), or the register bytes received in this read (Modbus): 14
    (value·name·unit) for a whole block, 4 (the value) for a value-only sweep.

    ``value_state`` may be omitted (it is the last field, so older positional and keyword
    constructions keep working): it is then OK for a number and INVALID for None.

    Raises:
        ServomexValidationError: ``value`` is a non-finite number, ``value_state`` is not a
            ValueState (or its text), or the two disagree (``value`` is None exactly when
            ``value_state`` is not OK).
    """

    channel: ChannelId
    kind: ChannelKind
    name: str | None
    value: float | None
    unit: Unit
    status: ChannelStatus
    protocol: ProtocolKind
    received_at: datetime
    monotonic_ns: int
    raw: bytes
    # Declared as ValueState (what every constructed Reading holds); None only as the
    # "derive it" default, replaced in __post_init__.
    value_state: ValueState = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        value = self.value
        # Wider than the declared type: the default None and a state given as text arrive here.
        state: ValueState | str | None = self.value_state
        if value is not None:
            try:
                finite = math.isfinite(value)
            except TypeError:
                finite = False
            if not finite or isinstance(value, bool):
                raise ServomexValidationError(
                    f"Reading of channel {self.channel}: value {value!r} is not a finite "
                    "number; a reading without a number has value=None and a value_state "
                    "of over_range or invalid"
                )
        if state is None:
            state = ValueState.INVALID if value is None else ValueState.OK
            object.__setattr__(self, "value_state", state)
            return
        if not isinstance(state, ValueState):
            try:
                state = ValueState(state)
            except ValueError:
                valid = ", ".join(s.value for s in ValueState)
                raise ServomexValidationError(
                    f"Reading of channel {self.channel}: unknown value_state {state!r}; "
                    f"expected one of {valid}"
                ) from None
            object.__setattr__(self, "value_state", state)
        if (value is None) != (state is not ValueState.OK):
            raise ServomexValidationError(
                f"Reading of channel {self.channel}: value {value!r} contradicts value_state "
                f"{state.value!r} (value is None exactly when value_state is not 'ok')"
            )

    @property
    def ok(self) -> bool:
        """The channel status is ok *and* the reading has a value (docs/protocol.md, §13;
        docs/recording-and-sinks.md for ``ok`` in rows)."""
        return self.value_state is ValueState.OK and self.status.ok

    def as_dict(self) -> dict[str, Any]:
        """A flat row without timing fields: booleans as 0/1, enums as their values."""
        s = self.status
        return {
            "channel": self.channel.value,
            "kind": self.kind.value,
            "name": self.name,
            "value": self.value,
            "unit": self.unit.value,
            "fault": int(s.fault),
            "maintenance": int(s.maintenance),
            "calibrating": int(s.calibrating),
            "warming_up": int(s.warming_up),
            "alarm1": int(s.alarms[0]),
            "alarm2": int(s.alarms[1]),
            "alarm3": int(s.alarms[2]),
            "alarm4": int(s.alarms[3]),
            "ok": int(self.ok),
            "protocol": self.protocol.value,
        }

    def __format__(self, spec: str) -> str:
        if not spec:
            return repr(self)
        if self.value is None:
            return "None"
        return format(self.value, spec)


@dataclasses.dataclass(frozen=True, slots=True)
class CalGroupState:
    """One autocalibration group's state (groups 1-4)."""

    group: int
    calibrating: bool
    cal_gas: int = 1

    @property
    def phase(self) -> CalPhase:
        if not self.calibrating:
            return CalPhase.IDLE
        return CalPhase.CAL_GAS_2 if self.cal_gas == 2 else CalPhase.CAL_GAS_1


def idle_cal_groups() -> tuple[CalGroupState, CalGroupState, CalGroupState, CalGroupState]:
    return tuple(CalGroupState(g, False, 1) for g in range(1, 5))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, slots=True)
class AnalyserStatus:
    """Analyser-level flags. ``clock`` is the analyser's own naive clock; None over Modbus."""

    fault: bool
    maintenance: bool
    cal_groups: tuple[CalGroupState, CalGroupState, CalGroupState, CalGroupState]
    clock: datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CalibrationProgress:
    group: int
    active: bool
    phase: CalPhase


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelInfo:
    channel: ChannelId
    kind: ChannelKind
    name: str | None
    unit: Unit


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What ``identify()`` found. ``model`` is always "4000-series"; ``address`` 0 in continuous."""

    model: str
    channels: tuple[ChannelInfo, ...]
    protocol: ProtocolKind
    address: int
    serial_settings: SerialSettings


_EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One reading (or one error) from one device, as streamed and recorded.

    ``reading`` and ``error`` are mutually exclusive; an error sample has ``channel=None``.
    """

    device: str
    channel: ChannelId | None
    reading: Reading | None
    protocol: ProtocolKind
    monotonic_ns: int
    received_at: datetime
    requested_at: datetime | None = None
    latency_s: float | None = None
    metadata: Mapping[str, Any] = _EMPTY_METADATA
    error: ServomexError | None = None

    def __post_init__(self) -> None:
        if self.metadata is not _EMPTY_METADATA:
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        if self.reading is not None and self.error is not None:
            raise ServomexValidationError("a Sample holds a reading or an error, not both")
        if self.error is not None and self.channel is not None:
            raise ServomexValidationError("an error Sample has channel=None")

    def __reduce__(self) -> tuple[Any, ...]:
        # A MappingProxyType cannot be pickled or deep-copied: rebuild from a plain dict.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["metadata"] = dict(self.metadata)
        return (_rebuild_sample, (values,))

    @property
    def value(self) -> float | None:
        return self.reading.value if self.reading is not None else None

    @property
    def unit(self) -> Unit | None:
        return self.reading.unit if self.reading is not None else None

    @property
    def value_state(self) -> ValueState | None:
        """``reading.value_state``, or None for an error sample."""
        return self.reading.value_state if self.reading is not None else None

    @property
    def ok(self) -> bool:
        """``reading.ok`` (status ok and a value); False for errors."""
        return self.reading is not None and self.reading.ok


def _rebuild_sample(values: dict[str, Any]) -> Sample:
    return Sample(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One complete snapshot of the analyser: every reading plus the analyser status.

    Continuous frames are stamped when their last byte arrived and have no ``requested_at``;
    a Modbus sweep is stamped just before its first request and ``latency_s`` runs until the
    last reply was decoded.
    """

    readings: tuple[Reading, ...]
    analyser: AnalyserStatus
    protocol: ProtocolKind
    received_at: datetime
    monotonic_ns: int
    raw: bytes
    requested_at: datetime | None = None
    latency_s: float | None = None

    def channel(self, cid: ChannelId | str) -> Reading:
        """The reading of channel ``cid`` (a ChannelId or its exact string).

        Raises:
            ServomexValidationError: unknown id, or the channel is not in this frame.
        """
        wanted = coerce_channel(cid)
        for reading in self.readings:
            if reading.channel is wanted:
                return reading
        present = ", ".join(r.channel.value for r in self.readings) or "none"
        raise ServomexValidationError(
            f"channel {wanted.value} is not in this frame (channels: {present})"
        )

    @property
    def channels(self) -> tuple[ChannelId, ...]:
        return tuple(r.channel for r in self.readings)

    def as_samples(self, device: str = "") -> list[Sample]:
        """One Sample per reading, sharing the frame's timestamps."""
        return [
            Sample(
                device=device,
                channel=r.channel,
                reading=r,
                protocol=self.protocol,
                monotonic_ns=self.monotonic_ns,
                received_at=self.received_at,
                requested_at=self.requested_at,
                latency_s=self.latency_s,
            )
            for r in self.readings
        ]


# --------------------------------------------------------------------------------------------
# Fast construction for the decode hot path
#
# The generated ``__init__`` of a frozen dataclass stores each field through
# ``object.__setattr__`` (the class's own ``__setattr__`` refuses); for a Reading that is about
# 60 % of decoding a continuous frame. These builders create the same objects by calling the
# slot descriptors directly. They do no conversion or validation, so only decoders that already
# hold correctly typed values use them (the wire decoders and the Modbus client); the public
# constructors are unchanged. Arguments are positional, in field order, and every field must be
# given. They are public for those decoders but not part of ``__all__`` (not re-exported at the
# top level): application code builds models with their constructors.


def build_reading(
    channel: ChannelId,
    kind: ChannelKind,
    name: str | None,
    value: float | None,
    unit: Unit,
    status: ChannelStatus,
    protocol: ProtocolKind,
    received_at: datetime,
    monotonic_ns: int,
    raw: bytes,
    value_state: ValueState,
) -> Reading:
    """``Reading(...)`` without the frozen ``__init__`` (equal to it, field for field).

    Like every builder here it does not validate: the caller guarantees that ``value`` is
    None exactly when ``value_state`` is not OK.
    """
    r: Reading = _new(Reading)
    _r0(r, channel)
    _r1(r, kind)
    _r2(r, name)
    _r3(r, value)
    _r4(r, unit)
    _r5(r, status)
    _r6(r, protocol)
    _r7(r, received_at)
    _r8(r, monotonic_ns)
    _r9(r, raw)
    _r10(r, value_state)
    return r


def build_frame(
    readings: tuple[Reading, ...],
    analyser: AnalyserStatus,
    protocol: ProtocolKind,
    received_at: datetime,
    monotonic_ns: int,
    raw: bytes,
    requested_at: datetime | None,
    latency_s: float | None,
) -> Frame:
    """``Frame(...)`` without the frozen ``__init__`` (equal to it, field for field)."""
    f: Frame = _new(Frame)
    _f0(f, readings)
    _f1(f, analyser)
    _f2(f, protocol)
    _f3(f, received_at)
    _f4(f, monotonic_ns)
    _f5(f, raw)
    _f6(f, requested_at)
    _f7(f, latency_s)
    return f


def build_analyser_status(
    fault: bool,
    maintenance: bool,
    cal_groups: tuple[CalGroupState, CalGroupState, CalGroupState, CalGroupState],
    clock: datetime | None,
) -> AnalyserStatus:
    """``AnalyserStatus(...)`` without the frozen ``__init__`` (equal to it, field for field)."""
    a: AnalyserStatus = _new(AnalyserStatus)
    _a0(a, fault)
    _a1(a, maintenance)
    _a2(a, cal_groups)
    _a3(a, clock)
    return a


def _slot_setters(cls: type, builder: Any) -> list[Any]:
    """The slot setters of ``cls`` in field order, which must be ``builder``'s parameter order.

    Guards against a field being added, removed or reordered without updating the builder.
    """
    fields = tuple(f.name for f in dataclasses.fields(cls))
    code = builder.__code__
    params = code.co_varnames[: code.co_argcount]
    if fields != params:  # pragma: no cover - a development-time error
        raise TypeError(f"fast builder of {cls.__name__} is out of date: {fields} != {params}")
    return [getattr(cls, name).__set__ for name in fields]


_new = object.__new__
(_r0, _r1, _r2, _r3, _r4, _r5, _r6, _r7, _r8, _r9, _r10) = _slot_setters(Reading, build_reading)
(_f0, _f1, _f2, _f3, _f4, _f5, _f6, _f7) = _slot_setters(Frame, build_frame)
(_a0, _a1, _a2, _a3) = _slot_setters(AnalyserStatus, build_analyser_status)
