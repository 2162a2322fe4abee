"""Continuous ASCII frames (protocol.md §3): captures, the worked frame, field rules, validation.

Every decoding test goes through :func:`helpers.decode_all_ways`: the input is fed whole, one
byte at a time and wrapped in garbage, and the three results must be identical.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

import servomexlib
from helpers import (
    IDLE_CAPTURE,
    LIVE_CAPTURE,
    MONOTONIC_NS,
    RECEIVED_AT,
    WORKED_FRAME,
    capture_frames,
    decode_error,
    decode_frames,
    decode_one,
    parse,
)
from servomexlib.devices.models import (
    CalGroupState,
    CalPhase,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    ValueState,
)
from servomexlib.errors import (
    ServomexChecksumError,
    ServomexFrameError,
    ServomexParseError,
    ServomexProtocolError,
)
from servomexlib.units import Unit
from servomexlib.wire import frame_parse
from servomexlib.wire.continuous import (
    build_frame,
    checksum,
    decode_value_field,
    format_block,
    format_header,
    format_value,
    frame_length,
    parse_frame,
)

WORKED_HEADER = ["14-03-24", "09:05:30", "F ", "S1C2S1S1", "05"]
WORKED_BLOCKS = [
    ["I1", "Oxygen", "20.950", " % ", "    ", "  ", " ", " "],
    ["I2", "CO    ", " 0.012", " % ", "    ", "F ", " ", " "],
    ["I3", "CO2   ", " 1.875", " % ", "    ", "  ", "C", " "],
    ["E1", "||||||", "   4.0", " mA", "    ", "  ", " ", " "],
    ["E2", "||||||", "   0.0", " mA", "    ", "  ", " ", " "],
]
IDLE_HEADER = ["06-10-20", "02:54:12", "  ", "S1S1S1S1"]
BLANK_STATUS = ["    ", "  ", " ", " "]


def seal(summed: bytes, *, tail: bytes = b";") -> bytes:
    """A frame around ``summed`` with a correct checksum (``tail`` replaces the final ';')."""
    return b" " + summed + f"{checksum(summed):04X}".encode() + tail


def one_block_frame(
    *, n: str = "01", block: list[str] | None = None, header: list[str] | None = None
) -> bytes:
    fields = header if header is not None else IDLE_HEADER
    blk = block if block is not None else ["I1", "Oxygen", "20.376", " % ", *BLANK_STATUS]
    return build_frame([*fields, n], [blk], terminator=b"\r\n")


def block_frame(**overrides: str) -> Frame:
    """Decode a one-block frame whose fields are the idle I1 block with ``overrides``."""
    fields = {
        "id": "I1",
        "name": "Oxygen",
        "value": "20.376",
        "unit": " % ",
        "alarms": "    ",
        "fm": "  ",
        "cal": " ",
        "warm": " ",
    }
    fields.update(overrides)
    return decode_one(one_block_frame(block=list(fields.values())))


# --------------------------------------------------------------------------------------------
# Real captures (tests/data, the captures README of the shared fixtures, protocol.md §3.9)


IDLE_CLOCKS = ["02:54:12", "02:54:14", "02:54:16", "02:54:18", "02:54:21", "02:54:23"]
IDLE_SUMS = ["2A1D", "2A1F", "2A21", "2A23", "2A1D", "2A1F"]
LIVE_CLOCKS = ["09:17:58", "09:18:00", "09:18:03", "09:18:05", "09:18:07", "09:18:09"]
LIVE_SUMS = ["2A36", "2A29", "2A2C", "2A2E", "2A30", "2A32"]


def check_capture_frame(
    f: Frame, raw: bytes, clock: str, checksum_text: str, o2: str, co2: str
) -> None:
    assert f.raw == raw
    assert len(f.raw) == 204 == frame_length(5)
    assert f.raw[-5:-1].decode() == checksum_text
    assert checksum(f.raw[1:-5]) == int(checksum_text, 16)
    assert f.protocol is ProtocolKind.CONTINUOUS_ASCII
    assert f.received_at == RECEIVED_AT
    assert f.monotonic_ns == MONOTONIC_NS
    assert f.requested_at is None
    assert f.latency_s is None
    hh, mm, ss = (int(p) for p in clock.split(":"))
    assert f.analyser.clock == datetime(2020, 10, 6, hh, mm, ss)
    assert f.analyser.clock.tzinfo is None
    assert f.analyser.fault is False
    assert f.analyser.maintenance is False
    assert f.analyser.cal_groups == tuple(CalGroupState(g, False, 1) for g in (1, 2, 3, 4))
    assert [g.phase for g in f.analyser.cal_groups] == [CalPhase.IDLE] * 4
    assert f.channels == (ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.E1, ChannelId.E2)
    expected = [
        (ChannelKind.TRANSDUCER, "Oxygen", float(o2), Unit.PERCENT),
        (ChannelKind.TRANSDUCER, "CO", 0.084, Unit.PERCENT),
        (ChannelKind.TRANSDUCER, "CO2", float(co2), Unit.PERCENT),
        (ChannelKind.EXTERNAL_INPUT, None, 0.0, Unit.MILLIAMP),
        (ChannelKind.EXTERNAL_INPUT, None, 0.0, Unit.MILLIAMP),
    ]
    assert [(r.kind, r.name, r.value, r.unit) for r in f.readings] == expected
    assert all(r.status == ChannelStatus() and r.status.ok for r in f.readings)
    assert [r.raw for r in f.readings] == [
        f"I1;Oxygen;{o2}; % ;    ;  ; ; ".encode(),
        b"I2;CO    ; 0.084; % ;    ;  ; ; ",
        f"I3;CO2   ; {co2}; % ;    ;  ; ; ".encode(),
        b"E1;||||||;   0.0; mA;    ;  ; ; ",
        b"E2;||||||;   0.0; mA;    ;  ; ; ",
    ]
    for r in f.readings:
        assert r.protocol is ProtocolKind.CONTINUOUS_ASCII
        assert r.received_at == RECEIVED_AT
        assert r.monotonic_ns == MONOTONIC_NS


def test_idle_capture() -> None:
    data = IDLE_CAPTURE.read_bytes()
    assert len(data) == 1230
    assert b"\r" not in data
    raws = capture_frames(IDLE_CAPTURE)
    frames = decode_frames(data)
    assert len(frames) == 6
    for f, raw, clock, ck in zip(frames, raws, IDLE_CLOCKS, IDLE_SUMS, strict=True):
        check_capture_frame(f, raw, clock, ck, o2="20.376", co2="0.250")


def test_live_capture() -> None:
    data = LIVE_CAPTURE.read_bytes()
    raws = capture_frames(LIVE_CAPTURE)
    frames = decode_frames(data)
    assert len(frames) == 6
    o2 = ["20.379", "20.378", "20.378", "20.378", "20.378", "20.378"]
    for f, raw, clock, ck, oxy in zip(frames, raws, LIVE_CLOCKS, LIVE_SUMS, o2, strict=True):
        check_capture_frame(f, raw, clock, ck, o2=oxy, co2="0.247")


@pytest.mark.parametrize("terminator", [b"\r\n", b"\r", b"\n"], ids=["crlf", "cr", "lf"])
def test_captures_with_any_terminator(terminator: bytes) -> None:
    raws = capture_frames(IDLE_CAPTURE) + capture_frames(LIVE_CAPTURE)
    data = b"".join(raw + terminator for raw in raws)
    frames = decode_frames(data)
    assert [f.raw for f in frames] == raws
    assert frames == [parse(raw) for raw in raws]


def test_public_offline_decoder() -> None:
    data = IDLE_CAPTURE.read_bytes() + LIVE_CAPTURE.read_bytes()
    raws = servomexlib.split_frames(data)
    assert raws == capture_frames(IDLE_CAPTURE) + capture_frames(LIVE_CAPTURE)
    f = servomexlib.decode_frame(raws[6] + b"\r\n")
    assert f.channel("I1").value == 20.379
    assert f.received_at.tzinfo is UTC
    assert isinstance(f.monotonic_ns, int)
    stamped = servomexlib.decode_frame(raws[0], received_at=RECEIVED_AT, monotonic_ns=5)
    assert stamped.received_at == RECEIVED_AT
    assert stamped.monotonic_ns == 5


# --------------------------------------------------------------------------------------------
# The worked frame (protocol.md §3.6)


def test_worked_frame_is_built_byte_for_byte() -> None:
    assert build_frame(WORKED_HEADER, WORKED_BLOCKS) == WORKED_FRAME
    assert len(WORKED_FRAME) == 206
    fields = WORKED_HEADER + [f for b in WORKED_BLOCKS for f in b]
    summed = (";".join(fields) + ";").encode("ascii")
    assert len(summed) == 198
    assert checksum(summed) == 10892 == 0x2A8C
    assert WORKED_FRAME[1:-7] == summed
    assert WORKED_FRAME[-7:] == b"2A8C;\r\n"


def test_worked_frame_region_sums() -> None:
    summed = WORKED_FRAME[1:-7]
    regions = [summed[i : i + 33] for i in range(0, len(summed), 33)]
    assert regions == [
        b"14-03-24;09:05:30;F ;S1C2S1S1;05;",
        b"I1;Oxygen;20.950; % ;    ;  ; ; ;",
        b"I2;CO    ; 0.012; % ;    ;F ; ; ;",
        b"I3;CO2   ; 1.875; % ;    ;  ;C; ;",
        b"E1;||||||;   4.0; mA;    ;  ; ; ;",
        b"E2;||||||;   0.0; mA;    ;  ; ; ;",
    ]
    assert [sum(r) for r in regions] == [1824, 1887, 1537, 1571, 2038, 2035]
    assert sum(sum(r) for r in regions) == 10892


def test_worked_frame_from_the_formatters() -> None:
    cal_groups = (
        CalGroupState(1, False, 1),
        CalGroupState(2, True, 2),
        CalGroupState(3, False, 1),
        CalGroupState(4, False, 1),
    )
    header = format_header(
        clock=datetime(2024, 3, 14, 9, 5, 30),
        fault=True,
        maintenance=False,
        cal_groups=cal_groups,
        n_blocks=5,
    )
    assert header == WORKED_HEADER
    blocks = [
        format_block(
            ChannelId.I1,
            name="Oxygen",
            value_text=format_value(20.95),
            unit="%",
            status=ChannelStatus(),
        ),
        format_block(
            ChannelId.I2,
            name="CO",
            value_text=format_value(0.012),
            unit="%",
            status=ChannelStatus(fault=True),
        ),
        format_block(
            ChannelId.I3,
            name="CO2",
            value_text=format_value(1.875),
            unit="%",
            status=ChannelStatus(calibrating=True),
        ),
        format_block(
            ChannelId.E1,
            name=None,
            value_text=format_value(4.0, 1),
            unit="mA",
            status=ChannelStatus(),
        ),
        format_block(
            ChannelId.E2,
            name=None,
            value_text=format_value(0.0, 1),
            unit="mA",
            status=ChannelStatus(),
        ),
    ]
    # format_block right-aligns the unit to 3 characters; the worked frame centres '%'.
    blocks[0][3] = blocks[1][3] = blocks[2][3] = " % "
    assert blocks == WORKED_BLOCKS
    assert build_frame(header, blocks) == WORKED_FRAME


@pytest.mark.parametrize(
    "terminator", [b"\r\n", b"\n", b"\r", b""], ids=["crlf", "lf", "cr", "none"]
)
def test_worked_frame_decodes_as_documented(terminator: bytes) -> None:
    f = decode_one(WORKED_FRAME[:-2] + terminator)
    assert f.raw == WORKED_FRAME[:-2]
    a = f.analyser
    assert (a.fault, a.maintenance) == (True, False)
    assert a.clock == datetime(2024, 3, 14, 9, 5, 30)
    assert [(g.group, g.calibrating, g.cal_gas, g.phase) for g in a.cal_groups] == [
        (1, False, 1, CalPhase.IDLE),
        (2, True, 2, CalPhase.CAL_GAS_2),
        (3, False, 1, CalPhase.IDLE),
        (4, False, 1, CalPhase.IDLE),
    ]
    i1, i2, i3, e1, e2 = f.readings
    assert (i1.channel, i1.name, i1.value, i1.unit, i1.status.ok) == (
        ChannelId.I1,
        "Oxygen",
        20.95,
        Unit.PERCENT,
        True,
    )
    assert (i2.name, i2.value, i2.unit, i2.status.fault, i2.status.ok) == (
        "CO",
        0.012,
        Unit.PERCENT,
        True,
        False,
    )
    assert (i3.name, i3.value, i3.status.calibrating, i3.status.ok) == ("CO2", 1.875, True, True)
    assert (e1.kind, e1.name, e1.value, e1.unit) == (
        ChannelKind.EXTERNAL_INPUT,
        None,
        4.0,
        Unit.MILLIAMP,
    )
    assert (e2.kind, e2.name, e2.value, e2.unit) == (
        ChannelKind.EXTERNAL_INPUT,
        None,
        0.0,
        Unit.MILLIAMP,
    )
    assert i2.raw == b"I2;CO    ; 0.012; % ;    ;F ; ; "
    assert i3.raw == b"I3;CO2   ; 1.875; % ;    ;  ;C; "


def test_flag_field_example() -> None:
    raw = one_block_frame(block=["I1", "Oxygen", "20.376", " % ", "1 3 ", "FM", "C", "W"])
    assert len(raw) == frame_length(1) + 2 == 72 + 2
    r = decode_one(raw).readings[0]
    assert r.status.alarms == (True, False, True, False)
    assert r.status.fault is True
    assert r.status.maintenance is True
    assert r.status.calibrating is True
    assert r.status.warming_up is True
    assert r.status.ok is False
    assert r.raw == b"I1;Oxygen;20.376; % ;1 3 ;FM;C;W"


# --------------------------------------------------------------------------------------------
# Field rules (protocol.md §3.4)


OK, OVER, INVALID = ValueState.OK, ValueState.OVER_RANGE, ValueState.INVALID


@pytest.mark.parametrize(
    ("text", "value", "state"),
    [
        ("20.376", 20.376, OK),
        (" 0.084", 0.084, OK),
        ("   0.0", 0.0, OK),
        ("-1.500", -1.5, OK),
        ("  1e-3", 0.001, OK),
        ("    -0", -0.0, OK),
        # over/under-range glyphs (api.md §2)
        ("******", None, OVER),
        ("  OVER", None, OVER),
        ("------", None, OVER),
        (" -.-- ", None, OVER),
        ("  *** ", None, OVER),
        ("*.*   ", None, OVER),
        ("-- -- ", None, OVER),
        ("     -", None, OVER),
        ("  over", None, OVER),
        (" Under", None, OVER),
        ("UNDER ", None, OVER),
        ("++++++", None, OVER),  # the simulator's over-range fill (api.md §16.1)
        # blank, unparsable, non-finite
        ("      ", None, INVALID),
        ("", None, INVALID),
        ("   ...", None, INVALID),
        ("   nan", None, INVALID),
        ("   NaN", None, INVALID),
        ("   inf", None, INVALID),
        ("  -inf", None, INVALID),
        ("  +Inf", None, INVALID),
        (" 1e999", None, INVALID),
        ("  abc ", None, INVALID),
        ("1.2.3 ", None, INVALID),
        ("20,376", None, INVALID),
        ("**1***", None, INVALID),
        ("OVER 1", None, INVALID),
        ("OVERR ", None, INVALID),
        ("-*-E  ", None, INVALID),
    ],
)
def test_value_field(text: str, value: float | None, state: ValueState) -> None:
    reading = block_frame(value=text).readings[0]
    assert reading.value_state is state
    if value is None:
        assert reading.value is None
    else:
        assert reading.value == value
        assert math.copysign(1.0, reading.value) == math.copysign(1.0, value)
    assert decode_value_field(text.encode()) == (reading.value, state)
    # The status is not touched by the value: a reading without a value is never ok.
    assert reading.status.ok
    assert reading.ok is (state is OK)


def test_e_channel_invalid_bit_is_status_not_value() -> None:
    # api.md §2: the Invalid bit (continuous: F in the channel FM field) leaves the value.
    reading = block_frame(id="E1", name="||||||", value="   4.0", unit=" mA", fm="F ").readings[0]
    assert reading.value == 4.0
    assert reading.value_state is OK
    assert not reading.status.ok
    assert not reading.ok


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        (" % ", Unit.PERCENT),
        ("%  ", Unit.PERCENT),
        (" mA", Unit.MILLIAMP),
        (" MA", Unit.MILLIAMP),
        ("vpm", Unit.VPM),
        ("VPM", Unit.VPM),
        ("ppm", Unit.PPM),
        ("ppb", Unit.UNKNOWN),
        ("   ", Unit.UNKNOWN),
        ("degC", Unit.UNKNOWN),
        ("%\x00\x00", Unit.PERCENT),
    ],
)
def test_unit_field(text: str, unit: Unit) -> None:
    assert block_frame(unit=text).readings[0].unit is unit


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Oxygen", "Oxygen"),
        ("CO    ", "CO"),
        ("  CO  ", "CO"),
        ("CO2   ", "CO2"),
        ("CO₂   ", "CO₂"),  # 0x82 on the wire, through the display charset
        ("||||||", None),
        ("|||   ", None),
        ("      ", None),
        ("N|O   ", "N|O"),
        ("", None),
    ],
)
def test_name_field(text: str, name: str | None) -> None:
    assert block_frame(name=text).readings[0].name == name


def test_name_byte_0x82_is_subscript_two() -> None:
    raw = build_frame(
        [*IDLE_HEADER, "01"],
        [[b"I3", b"CO\x82   ", b" 0.250", b" % ", *(s.encode() for s in BLANK_STATUS)]],
    )
    assert decode_one(raw).readings[0].name == "CO₂"


@pytest.mark.parametrize(
    ("alarms", "expected"),
    [
        ("    ", (False, False, False, False)),
        ("1234", (True, True, True, True)),
        ("1 3 ", (True, False, True, False)),
        ("   4", (False, False, False, True)),
        ("x   ", (True, False, False, False)),
        ("12", (True, True, False, False)),
        ("", (False, False, False, False)),
    ],
)
def test_alarm_field(alarms: str, expected: tuple[bool, ...]) -> None:
    status = block_frame(alarms=alarms).readings[0].status
    assert status.alarms == expected
    assert status.ok is not any(expected)


@pytest.mark.parametrize(
    ("fm", "cal", "warm", "flags"),
    [
        ("  ", " ", " ", (False, False, False, False)),
        ("F ", " ", " ", (True, False, False, False)),
        (" M", " ", " ", (False, True, False, False)),
        ("FM", "C", "W", (True, True, True, True)),
        ("M ", " ", " ", (False, False, False, False)),  # position matters
        (" F", " ", " ", (False, False, False, False)),
        ("f ", "c", "w", (False, False, False, False)),  # case matters
        ("  ", "X", "X", (False, False, False, False)),
        ("", "", "", (False, False, False, False)),
    ],
)
def test_status_flag_fields(fm: str, cal: str, warm: str, flags: tuple[bool, ...]) -> None:
    s = block_frame(fm=fm, cal=cal, warm=warm).readings[0].status
    assert (s.fault, s.maintenance, s.calibrating, s.warming_up) == flags


def test_e_channels_have_no_status_exceptions_in_continuous_mode() -> None:
    s = block_frame(id="E1", unit=" mA", fm="FM", cal="C", warm="W").readings[0].status
    assert (s.fault, s.maintenance, s.calibrating, s.warming_up) == (True, True, True, True)


@pytest.mark.parametrize("cid", list(ChannelId))
def test_every_channel_id_and_kind(cid: ChannelId) -> None:
    r = block_frame(id=cid.value).readings[0]
    assert r.channel is cid
    assert r.kind is cid.kind


@pytest.mark.parametrize(
    ("fm", "fault", "maintenance"),
    [("  ", False, False), ("F ", True, False), (" M", False, True), ("FM", True, True)],
)
def test_analyser_fm(fm: str, fault: bool, maintenance: bool) -> None:
    f = decode_one(one_block_frame(header=["06-10-20", "02:54:12", fm, "S1S1S1S1"]))
    assert (f.analyser.fault, f.analyser.maintenance) == (fault, maintenance)


@pytest.mark.parametrize(
    ("autocal", "states"),
    [
        ("S1S1S1S1", [(False, 1, CalPhase.IDLE)] * 4),
        (
            "C1S2C2S1",
            [
                (True, 1, CalPhase.CAL_GAS_1),
                (False, 2, CalPhase.IDLE),
                (True, 2, CalPhase.CAL_GAS_2),
                (False, 1, CalPhase.IDLE),
            ],
        ),
        (
            "C3C0S9C2",
            [
                (True, 1, CalPhase.CAL_GAS_1),
                (True, 1, CalPhase.CAL_GAS_1),
                (False, 1, CalPhase.IDLE),
                (True, 2, CalPhase.CAL_GAS_2),
            ],
        ),
        ("C2", [(True, 2, CalPhase.CAL_GAS_2)] + [(False, 1, CalPhase.IDLE)] * 3),
        ("        ", [(False, 1, CalPhase.IDLE)] * 4),
    ],
)
def test_autocal_field(autocal: str, states: list[tuple[bool, int, CalPhase]]) -> None:
    f = decode_one(one_block_frame(header=["06-10-20", "02:54:12", "  ", autocal]))
    groups = f.analyser.cal_groups
    assert [g.group for g in groups] == [1, 2, 3, 4]
    assert [(g.calibrating, g.cal_gas, g.phase) for g in groups] == states


@pytest.mark.parametrize(
    ("date", "time", "clock"),
    [
        ("06-10-20", "02:54:12", datetime(2020, 10, 6, 2, 54, 12)),
        ("31-12-99", "23:59:59", datetime(2099, 12, 31, 23, 59, 59)),
        ("00-00-00", "00:00:00", None),
        ("32-01-20", "00:00:00", None),
        ("01-13-20", "00:00:00", None),
        ("06-10-20", "24:00:00", None),
        ("06-10-20", "12:60:00", None),
        ("xx-10-20", "02:54:12", None),
        ("06/10/20", "02:54:12", None),
        ("06-10-20", "02-54-12", None),
        ("        ", "        ", None),
        ("06-10", "02:54:12", None),
    ],
)
def test_clock(date: str, time: str, clock: datetime | None) -> None:
    f = decode_one(one_block_frame(header=[date, time, "  ", "S1S1S1S1"]))
    assert f.analyser.clock == clock


def test_n_is_trimmed_and_not_range_checked() -> None:
    assert len(decode_one(one_block_frame(n=" 1")).readings) == 1
    assert len(decode_one(one_block_frame(n="1")).readings) == 1
    ten = [[cid.value, "||||||", "   0.0", " mA", *BLANK_STATUS] for cid in ChannelId]
    f = decode_one(build_frame([*IDLE_HEADER, "10"], ten))
    assert f.channels == tuple(ChannelId)
    empty = decode_one(build_frame([*IDLE_HEADER, "00"], []))
    assert empty.readings == ()
    assert empty.analyser.clock == datetime(2020, 10, 6, 2, 54, 12)


def test_lowercase_checksum_accepted() -> None:
    upper = WORKED_FRAME[:-2]
    lower = upper[:-5] + b"2a8c;"
    f = decode_one(lower + b"\r\n")
    assert f.raw == lower
    reference = parse(upper)
    assert f.readings[0].value == reference.readings[0].value
    assert [r.raw for r in f.readings] == [r.raw for r in reference.readings]
    assert f.analyser == reference.analyser


def test_timestamps_are_the_callers() -> None:
    stamp = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    f = parse_frame(WORKED_FRAME, received_at=stamp, monotonic_ns=7)
    assert f.received_at == stamp
    assert f.monotonic_ns == 7
    assert all(r.received_at == stamp and r.monotonic_ns == 7 for r in f.readings)
    assert f.requested_at is None
    assert f.latency_s is None


def test_parse_accepts_bytearray_and_memoryview() -> None:
    reference = parse(WORKED_FRAME)
    assert parse(bytearray(WORKED_FRAME)) == reference  # type: ignore[arg-type]
    assert parse(memoryview(WORKED_FRAME)) == reference  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Validation order (protocol.md §3.8)


def _corrupt_checksum(raw: bytes) -> bytes:
    """Same frame, checksum field off by one (still 4 uppercase hex digits)."""
    body = raw.rstrip(b"\r\n")
    value = (int(body[-5:-1], 16) + 1) & 0xFFFF
    return body[:-5] + f"{value:04X};".encode() + b"\r\n"


def test_step1_empty_frame() -> None:
    for raw in (b"", b"\r\n", b"\n", b"\r\r\n"):
        with pytest.raises(ServomexFrameError):
            parse(raw)


def test_step1_no_leading_space() -> None:
    err = decode_error(WORKED_FRAME[1:])
    assert type(err) is ServomexFrameError
    # Even with a wrong checksum too, the start byte is reported first.
    err = decode_error(b"X" + _corrupt_checksum(WORKED_FRAME)[1:])
    assert type(err) is ServomexFrameError


def test_step2_checksum_mismatch() -> None:
    bad = _corrupt_checksum(WORKED_FRAME)
    err = decode_error(bad)
    assert type(err) is ServomexChecksumError
    assert err.context.protocol is ProtocolKind.CONTINUOUS_ASCII
    assert err.context.response == bad.rstrip(b"\r\n")
    assert dict(err.context.extra) == {"computed": "2A8C", "expected": "2A8D"}
    assert "2A8C" in err.message


def test_step2_checksum_context_is_uppercase() -> None:
    bad = WORKED_FRAME[:-7] + b"ffff;\r\n"
    err = decode_error(bad)
    assert type(err) is ServomexChecksumError
    assert dict(err.context.extra) == {"computed": "2A8C", "expected": "FFFF"}


@pytest.mark.parametrize(
    "field", [b"2A8G", b"2A8 ", b" 2A8", b"+2A8", b"0x2A", b"\xff\xff\xff\xff"]
)
def test_step2_checksum_not_hex(field: bytes) -> None:
    err = decode_error(WORKED_FRAME[:-7] + field + b";\r\n")
    assert type(err) is ServomexChecksumError
    assert err.context.extra["computed"] == "2A8C"


def test_step2_before_every_later_step() -> None:
    # Bad checksum AND bad N.
    bad_n = build_frame([*IDLE_HEADER, "x5"], WORKED_BLOCKS)
    assert type(decode_error(bad_n)) is ServomexParseError
    assert type(decode_error(_corrupt_checksum(bad_n))) is ServomexChecksumError
    # Bad checksum AND wrong field count.
    wrong_count = build_frame([*IDLE_HEADER, "04"], WORKED_BLOCKS)
    assert type(decode_error(wrong_count)) is ServomexFrameError
    assert type(decode_error(_corrupt_checksum(wrong_count))) is ServomexChecksumError
    # Bad checksum AND unknown channel id.
    bad_id = build_frame([*IDLE_HEADER, "01"], [["X1", "Oxygen", "20.376", " % ", *BLANK_STATUS]])
    assert type(decode_error(bad_id)) is ServomexParseError
    assert type(decode_error(_corrupt_checksum(bad_id))) is ServomexChecksumError
    # Bad checksum AND too few fields.
    short = seal(b"14-03-24;09:05:30;")
    assert type(decode_error(short)) is ServomexFrameError
    assert type(decode_error(_corrupt_checksum(short))) is ServomexChecksumError


def test_step3_too_few_tokens() -> None:
    for summed in (b"14-03-24;09:05:30;", b"", b"a;b;c;d;e;"):
        # 'a;b;c;d;e;' has 5 + checksum + '' = 7 tokens: passes step 3, fails at N.
        err = decode_error(seal(summed))
        expected = ServomexParseError if summed == b"a;b;c;d;e;" else ServomexFrameError
        assert type(err) is expected, summed


def test_step3_last_token_not_empty() -> None:
    summed = WORKED_FRAME[1:-7]
    raw = seal(summed, tail=b"Z")  # checksum still at [-5:-1] and valid
    err = decode_error(raw)
    assert type(err) is ServomexFrameError
    assert err.context.response == raw


def test_step3_missing_final_semicolon_fails_the_checksum_first() -> None:
    # Without the final ';' the checksum field is not where it must be.
    err = decode_error(WORKED_FRAME[:-3] + b"\r\n")
    assert type(err) is ServomexChecksumError


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b" ;", ServomexFrameError),  # shorter than a checksum field
        (b" 2A8C", ServomexFrameError),
        (b" 0000;", ServomexFrameError),  # checksum of nothing is 0000: fails at step 3
        (b" 0001;", ServomexChecksumError),
        (b" 00 0;", ServomexChecksumError),
    ],
)
def test_degenerate_short_frames(raw: bytes, error: type[ServomexProtocolError]) -> None:
    assert type(decode_error(raw)) is error
    # A space-only line never reaches the parser; the parser alone rejects it at step 1/3.
    with pytest.raises(ServomexFrameError):
        parse(b" ")


@pytest.mark.parametrize("n", ["x5", "  ", "5.0", "", "0x5", "五"])
def test_step4_n_not_an_integer(n: str) -> None:
    err = decode_error(build_frame([*IDLE_HEADER, n], WORKED_BLOCKS))
    assert type(err) is ServomexParseError
    assert err.context.protocol is ProtocolKind.CONTINUOUS_ASCII


def test_step4_before_step5() -> None:
    # N not an integer and the wrong number of blocks: the N error comes first.
    err = decode_error(build_frame([*IDLE_HEADER, "zz"], WORKED_BLOCKS[:2]))
    assert type(err) is ServomexParseError


@pytest.mark.parametrize(("n", "blocks"), [("04", 5), ("06", 5), ("00", 1), ("-1", 0), ("01", 0)])
def test_step5_token_count(n: str, blocks: int) -> None:
    err = decode_error(build_frame([*IDLE_HEADER, n], WORKED_BLOCKS[:blocks]))
    assert type(err) is ServomexFrameError


def test_step5_extra_field_in_a_block() -> None:
    blocks = [list(b) for b in WORKED_BLOCKS]
    blocks[1].append("extra")
    err = decode_error(build_frame(WORKED_HEADER, blocks))
    assert type(err) is ServomexFrameError


def test_step5_before_step6() -> None:
    blocks = [list(b) for b in WORKED_BLOCKS]
    blocks[2][0] = "X3"
    assert type(decode_error(build_frame(WORKED_HEADER, blocks))) is ServomexParseError
    assert type(decode_error(build_frame([*IDLE_HEADER, "06"], blocks))) is ServomexFrameError


@pytest.mark.parametrize("cid", ["X1", "i1", "I5", "E3", "D0", "  ", "I 1"])
def test_step6_unknown_channel_id(cid: str) -> None:
    blocks = [list(b) for b in WORKED_BLOCKS]
    blocks[3][0] = cid
    err = decode_error(build_frame(WORKED_HEADER, blocks))
    assert type(err) is ServomexParseError
    assert err.context.protocol is ProtocolKind.CONTINUOUS_ASCII


def test_channel_id_is_trimmed() -> None:
    blocks = [list(b) for b in WORKED_BLOCKS]
    blocks[0][0] = " I1"
    f = decode_one(build_frame(WORKED_HEADER, blocks))
    assert f.readings[0].channel is ChannelId.I1
    assert f.readings[0].raw.startswith(b" I1;Oxygen;")


def test_fragment_joined_mid_frame_fails() -> None:
    fragment = WORKED_FRAME[60:]
    err = decode_error(fragment)
    assert isinstance(err, ServomexProtocolError)


# --------------------------------------------------------------------------------------------
# Decode caches (performance) never change results


def test_repeated_frame_gets_its_own_stamps() -> None:
    first = parse_frame(WORKED_FRAME, received_at=RECEIVED_AT, monotonic_ns=1)
    later = datetime(2030, 1, 1, tzinfo=UTC)
    second = parse_frame(WORKED_FRAME, received_at=later, monotonic_ns=2)
    assert [r.received_at for r in second.readings] == [later] * 5
    assert [r.monotonic_ns for r in second.readings] == [2] * 5
    assert [r.received_at for r in first.readings] == [RECEIVED_AT] * 5
    assert [(r.name, r.value, r.status) for r in first.readings] == [
        (r.name, r.value, r.status) for r in second.readings
    ]


def test_block_cache_is_bounded_and_transparent() -> None:
    for i in range(1500):
        value = i / 1000
        raw = one_block_frame(block=["I1", "Oxygen", format_value(value), " % ", *BLANK_STATUS])
        r = parse(raw).readings[0]
        assert r.value == float(format_value(value))
        assert len(frame_parse._BLOCK_CACHE) <= frame_parse._BLOCK_CACHE_LIMIT
    # An entry seen before the cache was cleared still decodes the same.
    again = one_block_frame(block=["I1", "Oxygen", format_value(0.001), " % ", *BLANK_STATUS])
    assert parse(again).readings[0].value == 0.001


def test_value_state_through_the_general_parse_and_the_caches() -> None:
    # A 7-character date makes the header non-standard: the general parse (not the fast
    # path) decodes the frame, and must classify the value field the same way.
    header = ["6-10-20", "02:54:12", "  ", "S1S1S1S1", "03"]
    blocks = [
        ["I1", "Oxygen", "******", " % ", *BLANK_STATUS],
        ["I2", "CO    ", "      ", " % ", *BLANK_STATUS],
        ["I3", "CO2   ", " 0.250", " % ", *BLANK_STATUS],
    ]
    raw = build_frame(header, blocks)
    for _ in range(2):  # the second time from the block cache
        f = parse(raw)
        assert [(r.value, r.value_state) for r in f.readings] == [
            (None, ValueState.OVER_RANGE),
            (None, ValueState.INVALID),
            (0.25, ValueState.OK),
        ]
        assert [r.ok for r in f.readings] == [False, False, True]
    # The standard layout (fast path) gives equal readings.
    standard = parse(build_frame(["06-10-20", *header[1:]], blocks))
    assert [(r.value, r.value_state, r.raw) for r in standard.readings] == [
        (r.value, r.value_state, r.raw) for r in f.readings
    ]
