"""The channel table and status-bit decoding (protocol.md §4.4, §4.7–§4.9)."""

from __future__ import annotations

import dataclasses

import pytest

from servomexlib.devices.models import (
    AnalyserStatus,
    CalPhase,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    idle_cal_groups,
)
from servomexlib.wire import channels
from servomexlib.wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CAL_STATUS_COUNT,
    CAL_STATUS_PDU,
    CHANNEL_TABLE,
    DISCRETES_PER_CHANNEL,
    REGISTERS_PER_CHANNEL,
    STOP_CALIBRATION_COIL,
    ChannelSpec,
    calibration_progress,
    decode_analyser_bits,
    decode_status_bits,
    encode_analyser_bits,
    encode_status_bits,
    spec_for,
    start_calibration_coil,
)

# protocol.md §4.4 verbatim, in data-model numbers: (ch, kind, value, name, unit, first, last).
SPEC_TABLE = [
    ("I1", "transducer", 30001, 30003, 30006, 10001, 10008),
    ("I2", "transducer", 30008, 30010, 30013, 10009, 10016),
    ("I3", "transducer", 30015, 30017, 30020, 10017, 10024),
    ("I4", "transducer", 30022, 30024, 30027, 10025, 10032),
    ("D1", "derived", 30029, 30031, 30034, 10033, 10040),
    ("D2", "derived", 30036, 30038, 30041, 10041, 10048),
    ("D3", "derived", 30043, 30045, 30048, 10049, 10056),
    ("D4", "derived", 30050, 30052, 30055, 10057, 10064),
    ("E1", "external_input", 30057, 30059, 30062, 10065, 10072),
    ("E2", "external_input", 30064, 30066, 30069, 10073, 10080),
]


def bits_lsb_first(data: bytes, count: int) -> list[bool]:
    """Unpack an FC01/FC02 reply's data bytes, least significant bit first (§4.7)."""
    bits = [bool(byte >> i & 1) for byte in data for i in range(8)]
    return bits[:count]


# --------------------------------------------------------------------------------------------
# The table


def test_table_matches_the_spec_row_by_row() -> None:
    assert len(CHANNEL_TABLE) == len(SPEC_TABLE)
    for spec, (ch, kind, value, name, unit, first, last) in zip(
        CHANNEL_TABLE, SPEC_TABLE, strict=True
    ):
        assert spec.channel is ChannelId(ch)
        assert spec.kind is ChannelKind(kind)
        assert spec.value_register == value - 30001
        assert spec.name_register == name - 30001
        assert spec.unit_register == unit - 30001
        assert spec.status_discrete == first - 10001
        assert spec.discrete_end - 1 == last - 10001
        assert spec.register_end - spec.value_register == REGISTERS_PER_CHANNEL
        assert spec_for(ChannelId(ch)) is spec


def test_table_covers_the_broad_reads() -> None:
    registers = sorted(r for s in CHANNEL_TABLE for r in range(s.value_register, s.register_end))
    discretes = sorted(b for s in CHANNEL_TABLE for b in range(s.status_discrete, s.discrete_end))
    assert registers == list(range(70))
    assert discretes == list(range(80))


def test_constants() -> None:
    assert REGISTERS_PER_CHANNEL == 7
    assert DISCRETES_PER_CHANNEL == 8
    assert (ANALYSER_STATUS_PDU, ANALYSER_STATUS_COUNT) == (1000, 16)
    assert (CAL_STATUS_PDU, CAL_STATUS_COUNT) == (1008, 8)
    assert STOP_CALIBRATION_COIL == 8
    assert [start_calibration_coil(g) for g in (1, 2, 3, 4)] == [0, 1, 2, 3]


def test_table_is_immutable() -> None:
    assert isinstance(CHANNEL_TABLE, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CHANNEL_TABLE[0].value_register = 1  # type: ignore[misc]


def _replace_row(index: int, **changes: int) -> tuple[ChannelSpec, ...]:
    rows = list(CHANNEL_TABLE)
    rows[index] = dataclasses.replace(rows[index], **changes)  # type: ignore[arg-type]
    return tuple(rows)


@pytest.mark.parametrize(
    "bad_table",
    [
        # I2's register block starts inside I1's.
        _replace_row(1, value_register=5, name_register=7, unit_register=10),
        # E2's status bits overlap E1's.
        _replace_row(9, status_discrete=70),
        # Name register not value + 2.
        _replace_row(0, name_register=3),
        # Unit register not value + 5.
        _replace_row(3, unit_register=25),
        # A channel missing.
        CHANNEL_TABLE[:-1],
        # A derived row claiming to be a transducer.
        tuple(
            dataclasses.replace(s, kind=ChannelKind.TRANSDUCER) if s.channel is ChannelId.D2 else s
            for s in CHANNEL_TABLE
        ),
    ],
    ids=["register-overlap", "discrete-overlap", "name-offset", "unit-offset", "missing", "kind"],
)
def test_import_time_check_rejects_bad_tables(
    monkeypatch: pytest.MonkeyPatch, bad_table: tuple[ChannelSpec, ...]
) -> None:
    channels._check_table()  # the real table passes (it also ran at import)
    monkeypatch.setattr(channels, "CHANNEL_TABLE", bad_table)
    monkeypatch.setattr(channels, "_BY_ID", {s.channel: s for s in bad_table})
    with pytest.raises(RuntimeError, match="channel table inconsistent"):
        channels._check_table()


# --------------------------------------------------------------------------------------------
# Per-channel status bits (§4.7)


@pytest.mark.parametrize("kind", [ChannelKind.TRANSDUCER, ChannelKind.DERIVED])
def test_transducer_and_derived_bits_read_as_is(kind: ChannelKind) -> None:
    names = ["fault", "maintenance", "calibrating", "warming_up"]
    for bit, name in enumerate(names):
        bits = [False] * 8
        bits[bit] = True
        status = decode_status_bits(kind, bits)
        assert getattr(status, name) is True
        assert all(getattr(status, other) is False for other in names if other != name)
        assert status.alarms == (False,) * 4
    for alarm in range(4):
        bits = [False] * 8
        bits[4 + alarm] = True
        status = decode_status_bits(kind, bits)
        assert status.alarms == tuple(i == alarm for i in range(4))
        assert status.ok is False


def test_external_input_bit0_is_invalid_and_bits_1_to_3_are_ignored() -> None:
    kind = ChannelKind.EXTERNAL_INPUT
    invalid = decode_status_bits(kind, [True] + [False] * 7)
    assert invalid == ChannelStatus(fault=True)
    assert invalid.ok is False
    reserved = decode_status_bits(kind, [False, True, True, True, False, False, False, False])
    assert reserved == ChannelStatus()
    assert reserved.ok is True
    everything = decode_status_bits(kind, [True] * 8)
    assert everything == ChannelStatus(fault=True, alarms=(True, True, True, True))


def test_derived_bits_are_copies_reported_as_read() -> None:
    status = decode_status_bits(
        ChannelKind.DERIVED, [True, True, True, True, False, True, False, False]
    )
    assert status == ChannelStatus(True, True, True, True, (False, True, False, False))


@pytest.mark.parametrize("kind", list(ChannelKind))
def test_missing_bits_read_as_clear(kind: ChannelKind) -> None:
    assert decode_status_bits(kind, []) == ChannelStatus()
    assert decode_status_bits(kind, [True]) == ChannelStatus(fault=True)
    # Extra bits beyond 8 are ignored.
    assert decode_status_bits(kind, [False] * 8 + [True] * 8) == ChannelStatus()


@pytest.mark.parametrize("kind", list(ChannelKind))
def test_status_bits_round_trip(kind: ChannelKind) -> None:
    for pattern in range(256):
        bits = tuple(bool(pattern >> i & 1) for i in range(8))
        status = decode_status_bits(kind, bits)
        encoded = encode_status_bits(kind, status)
        if kind is ChannelKind.EXTERNAL_INPUT:
            assert encoded == (bits[0], False, False, False, *bits[4:])
        else:
            assert encoded == bits
        assert decode_status_bits(kind, encoded) == status


def test_worked_fc02_channel_response() -> None:
    data = bytes.fromhex("10 01 00 00 00 00 00 00 01 00")
    bits = bits_lsb_first(data, 80)
    assert [i for i, b in enumerate(bits) if b] == [4, 8, 64]
    statuses = {
        s.channel: decode_status_bits(s.kind, bits[s.status_discrete : s.discrete_end])
        for s in CHANNEL_TABLE
    }
    assert statuses[ChannelId.I1] == ChannelStatus(alarms=(True, False, False, False))
    assert statuses[ChannelId.I2] == ChannelStatus(fault=True)
    assert statuses[ChannelId.E1] == ChannelStatus(fault=True)
    assert [c for c, s in statuses.items() if not s.ok] == [
        ChannelId.I1,
        ChannelId.I2,
        ChannelId.E1,
    ]
    assert all(
        s == ChannelStatus()
        for c, s in statuses.items()
        if c not in (ChannelId.I1, ChannelId.I2, ChannelId.E1)
    )
    # And back: what a simulator would pack for these statuses.
    packed = [b for s in CHANNEL_TABLE for b in encode_status_bits(s.kind, statuses[s.channel])]
    assert packed == bits


# --------------------------------------------------------------------------------------------
# Analyser status bits (§4.8)


def test_worked_analyser_status_response() -> None:
    status = decode_analyser_bits(bits_lsb_first(bytes.fromhex("01 0C"), 16))
    assert status.fault is True
    assert status.maintenance is False
    assert status.clock is None
    assert [(g.group, g.calibrating, g.cal_gas, g.phase) for g in status.cal_groups] == [
        (1, False, 1, CalPhase.IDLE),
        (2, True, 2, CalPhase.CAL_GAS_2),
        (3, False, 1, CalPhase.IDLE),
        (4, False, 1, CalPhase.IDLE),
    ]
    assert encode_analyser_bits(status) == tuple(bits_lsb_first(bytes.fromhex("01 0C"), 16))


def test_analyser_status_all_clear() -> None:
    status = decode_analyser_bits(bits_lsb_first(b"\x00\x00", 16))
    assert status == AnalyserStatus(False, False, idle_cal_groups(), None)
    assert [g.group for g in status.cal_groups] == [1, 2, 3, 4]


@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_analyser_group_bits(group: int) -> None:
    cal_bit, gas_bit = 8 + 2 * (group - 1), 9 + 2 * (group - 1)
    for cal in (False, True):
        for gas in (False, True):
            bits = [False] * 16
            bits[cal_bit], bits[gas_bit] = cal, gas
            state = decode_analyser_bits(bits).cal_groups[group - 1]
            assert state.group == group
            assert state.calibrating is cal
            # cal_gas follows the gas bit whether or not the group is calibrating.
            assert state.cal_gas == (2 if gas else 1)
            expected = (
                CalPhase.IDLE if not cal else CalPhase.CAL_GAS_2 if gas else CalPhase.CAL_GAS_1
            )
            assert state.phase is expected


def test_analyser_maintenance_and_undocumented_bits() -> None:
    bits = [False, True, True, True, True, True, True, True] + [False] * 8
    status = decode_analyser_bits(bits)
    assert (status.fault, status.maintenance) == (False, True)
    assert all(g.phase is CalPhase.IDLE for g in status.cal_groups)
    assert decode_analyser_bits([True]).fault is True  # short reply: the rest reads clear


def test_analyser_bits_round_trip() -> None:
    for pattern in range(1 << 10):
        head = [bool(pattern & 1), bool(pattern & 2)]
        groups = [bool(pattern >> (2 + i) & 1) for i in range(8)]
        bits = (*head, *[False] * 6, *groups)
        assert encode_analyser_bits(decode_analyser_bits(bits)) == bits


# --------------------------------------------------------------------------------------------
# Calibration progress (FC02 1008 ×8)


@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_calibration_progress(group: int) -> None:
    idle = calibration_progress(group, [False] * 8)
    assert (idle.group, idle.active, idle.phase) == (group, False, CalPhase.IDLE)
    bits = [False] * 8
    bits[2 * (group - 1)] = True
    gas1 = calibration_progress(group, bits)
    assert (gas1.active, gas1.phase) == (True, CalPhase.CAL_GAS_1)
    bits[2 * (group - 1) + 1] = True
    gas2 = calibration_progress(group, bits)
    assert (gas2.active, gas2.phase) == (True, CalPhase.CAL_GAS_2)
    # Other groups' bits do not leak in.
    others = [True] * 8
    others[2 * (group - 1)] = others[2 * (group - 1) + 1] = False
    assert calibration_progress(group, others).active is False


def test_calibration_progress_matches_the_analyser_block() -> None:
    bits16 = bits_lsb_first(bytes.fromhex("01 0C"), 16)
    cal8 = bits16[CAL_STATUS_PDU - ANALYSER_STATUS_PDU :]
    progress = calibration_progress(2, cal8)
    assert (progress.active, progress.phase) == (True, CalPhase.CAL_GAS_2)
    assert calibration_progress(1, cal8).active is False
    assert calibration_progress(3, cal8[:3]).active is False  # short reply reads clear
