"""The channel table and status decoding (docs/protocol.md, §4.2–§4.10). Pure: no I/O, no clock.

Theory of operation
-------------------
The analyser has ten channel slots. Each slot owns a 7-register block in the FC04 input-register
space (value float32, 6 name bytes, 4 unit bytes) and an 8-bit block in the FC02 discrete space
(fault, maintenance, calibration, warm-up, alarms 1-4). :data:`CHANNEL_TABLE` states the
manual's table as data; every address used anywhere in the library is derived from it, and the
module checks at import that no register or discrete belongs to two channels.

Kind-specific status rules (MAN, docs/protocol.md, §4.8): external inputs use bit 0 for *Invalid*
(reported through ``fault`` so that ``ok`` is right) and reserve bits 1-3; derived channels'
bits 0-3 are copies of a parent transducer and are reported as read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..devices.models import (
    AnalyserStatus,
    CalGroupState,
    CalibrationProgress,
    ChannelId,
    ChannelKind,
    ChannelStatus,
)

__all__ = [
    "ANALYSER_STATUS_COUNT",
    "ANALYSER_STATUS_PDU",
    "CAL_GROUPS",
    "CAL_STATUS_COUNT",
    "CAL_STATUS_PDU",
    "CHANNEL_TABLE",
    "DISCRETES_PER_CHANNEL",
    "REGISTERS_PER_CHANNEL",
    "STOP_CALIBRATION_COIL",
    "ChannelSpec",
    "calibration_progress",
    "decode_analyser_bits",
    "decode_status_bits",
    "encode_analyser_bits",
    "encode_status_bits",
    "spec_for",
    "start_calibration_coil",
]

REGISTERS_PER_CHANNEL = 7  # value 2 + name 3 + unit 2 (docs/protocol.md, §4.3)
DISCRETES_PER_CHANNEL = 8  # fault, maint, cal, warm-up, alarms 1-4 (docs/protocol.md, §4.8)
ANALYSER_STATUS_PDU = 1000  # discrete 11001, not 0: it would collide with I1 (HW)
ANALYSER_STATUS_COUNT = 16  # 11001-11016: fault, maint, 6 undocumented, 4 × (cal, gas-2)
CAL_STATUS_PDU = 1008  # 11009: group 1 calibrating
CAL_STATUS_COUNT = 8
CAL_GROUPS = (1, 2, 3, 4)
STOP_CALIBRATION_COIL = 8  # coil 00009 stops every group (MAN)


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One row of the manual's channel map, with PDU (zero-based) addresses."""

    channel: ChannelId
    kind: ChannelKind
    value_register: int  # FC04, 2 registers, float32 high word first
    name_register: int  # FC04, 3 registers, 6 display-ROM bytes
    unit_register: int  # FC04, 2 registers, 3 unit characters + NUL
    status_discrete: int  # FC02, 8 bits

    @property
    def register_end(self) -> int:
        """One past the block's last register."""
        return self.value_register + REGISTERS_PER_CHANNEL

    @property
    def discrete_end(self) -> int:
        return self.status_discrete + DISCRETES_PER_CHANNEL


_T, _D, _E = ChannelKind.TRANSDUCER, ChannelKind.DERIVED, ChannelKind.EXTERNAL_INPUT

#: docs/protocol.md, §4.4, as data: data-model numbers 30001+ / 10001+ written as PDU addresses.
CHANNEL_TABLE: tuple[ChannelSpec, ...] = (
    ChannelSpec(ChannelId.I1, _T, 0, 2, 5, 0),
    ChannelSpec(ChannelId.I2, _T, 7, 9, 12, 8),
    ChannelSpec(ChannelId.I3, _T, 14, 16, 19, 16),
    ChannelSpec(ChannelId.I4, _T, 21, 23, 26, 24),
    ChannelSpec(ChannelId.D1, _D, 28, 30, 33, 32),
    ChannelSpec(ChannelId.D2, _D, 35, 37, 40, 40),
    ChannelSpec(ChannelId.D3, _D, 42, 44, 47, 48),
    ChannelSpec(ChannelId.D4, _D, 49, 51, 54, 56),
    ChannelSpec(ChannelId.E1, _E, 56, 58, 61, 64),
    ChannelSpec(ChannelId.E2, _E, 63, 65, 68, 72),
)

_BY_ID: dict[ChannelId, ChannelSpec] = {spec.channel: spec for spec in CHANNEL_TABLE}


def _require(condition: bool, what: object) -> None:
    if not condition:
        raise RuntimeError(f"channel table inconsistent: {what}")


def _check_table() -> None:
    """Fail at import if the table contradicts itself (LIB: docs/protocol.md, §4.4)."""
    registers: dict[int, ChannelId] = {}
    discretes: dict[int, ChannelId] = {}
    for spec in CHANNEL_TABLE:
        _require(spec.kind is spec.channel.kind, spec)
        _require(spec.name_register == spec.value_register + 2, spec)
        _require(spec.unit_register == spec.value_register + 5, spec)
        for reg in range(spec.value_register, spec.register_end):
            _require(reg not in registers, f"register {reg} twice ({spec.channel})")
            registers[reg] = spec.channel
        for bit in range(spec.status_discrete, spec.discrete_end):
            _require(bit not in discretes, f"discrete {bit} twice ({spec.channel})")
            discretes[bit] = spec.channel
    _require(set(_BY_ID) == set(ChannelId), "every ChannelId has one row")
    _require(max(discretes) < ANALYSER_STATUS_PDU, "channel discretes stay below 1000")
    assert CAL_STATUS_PDU == ANALYSER_STATUS_PDU + 8


_check_table()


def spec_for(channel: ChannelId) -> ChannelSpec:
    return _BY_ID[channel]


def start_calibration_coil(group: int) -> int:
    """PDU coil address that starts cal group ``group`` (coil 00001 + group - 1)."""
    return group - 1


def decode_status_bits(kind: ChannelKind, bits: Sequence[bool]) -> ChannelStatus:
    """Decode a channel's 8 status discretes (missing bits read as clear).

    Transducers and derived channels: fault, maintenance, calibrating, warming-up, alarms.
    External inputs: bit 0 = Invalid → ``fault``; bits 1-3 reserved → False.
    """
    b = [bool(x) for x in bits[:DISCRETES_PER_CHANNEL]]
    b.extend([False] * (DISCRETES_PER_CHANNEL - len(b)))
    alarms = (b[4], b[5], b[6], b[7])
    if kind is ChannelKind.EXTERNAL_INPUT:
        return ChannelStatus(fault=b[0], alarms=alarms)
    return ChannelStatus(
        fault=b[0], maintenance=b[1], calibrating=b[2], warming_up=b[3], alarms=alarms
    )


def encode_status_bits(kind: ChannelKind, status: ChannelStatus) -> tuple[bool, ...]:
    """The 8 discretes a device would present for ``status`` (inverse of decode)."""
    if kind is ChannelKind.EXTERNAL_INPUT:
        head = (status.fault, False, False, False)
    else:
        head = (status.fault, status.maintenance, status.calibrating, status.warming_up)
    return head + tuple(status.alarms)


def decode_analyser_bits(bits: Sequence[bool]) -> AnalyserStatus:
    """Decode FC02 (1000, 16): bit 0 fault, bit 1 maintenance, bits 8-15 the cal groups."""
    b = [bool(x) for x in bits[:ANALYSER_STATUS_COUNT]]
    b.extend([False] * (ANALYSER_STATUS_COUNT - len(b)))
    groups = tuple(
        CalGroupState(g, b[8 + 2 * (g - 1)], 2 if b[9 + 2 * (g - 1)] else 1) for g in CAL_GROUPS
    )
    return AnalyserStatus(b[0], b[1], groups, None)  # type: ignore[arg-type]


def encode_analyser_bits(status: AnalyserStatus) -> tuple[bool, ...]:
    bits = [status.fault, status.maintenance] + [False] * 6
    for group in status.cal_groups:
        bits += [group.calibrating, group.cal_gas == 2]
    return tuple(bits)


def calibration_progress(group: int, bits: Sequence[bool]) -> CalibrationProgress:
    """Decode FC02 (1008, 8) for ``group``: active = the group's cal bit; phase from gas bit."""
    b = [bool(x) for x in bits[:CAL_STATUS_COUNT]]
    b.extend([False] * (CAL_STATUS_COUNT - len(b)))
    state = CalGroupState(group, b[2 * (group - 1)], 2 if b[2 * (group - 1) + 1] else 1)
    return CalibrationProgress(group=group, active=state.calibrating, phase=state.phase)
