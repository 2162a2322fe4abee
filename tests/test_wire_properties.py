"""Property tests of the wire layer (hypothesis).

* ``build_frame`` → ``parse_frame`` round-trips for random content (through the three-ways
  helper: whole, byte by byte, wrapped in garbage);
* float32, name and unit register codecs round-trip; every finite float32 decodes to the
  shortest decimal that packs back to the same 4 bytes;
* the continuous value field is classified as a number, an over-range glyph or invalid;
* random bytes, alone or mixed with real frame fragments, through the splitter and the parser
  give frames or ``ServomexProtocolError`` subclasses only, and the splitter stays bounded.
"""

from __future__ import annotations

import contextlib
import decimal
import math
import struct
from datetime import datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import IDLE_CAPTURE, LIVE_CAPTURE, WORKED_FRAME, capture_frames, decode_one, parse
from servomexlib.devices.models import (
    CalGroupState,
    ChannelId,
    ChannelStatus,
    Frame,
    ValueState,
)
from servomexlib.errors import ServomexProtocolError
from servomexlib.units import Unit, coerce_unit
from servomexlib.wire.continuous import (
    FrameSplitter,
    build_frame,
    checksum,
    decode_value_field,
    format_block,
    format_header,
    format_value,
    frame_length,
)
from servomexlib.wire.registers import (
    decode_channel_block,
    decode_float32,
    decode_float32_value,
    decode_modbus_name,
    decode_modbus_unit,
    encode_float32,
    encode_text,
    shortest_float32,
    words_to_bytes,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REAL = capture_frames(IDLE_CAPTURE) + capture_frames(LIVE_CAPTURE) + [WORKED_FRAME[:-2]]

# Name characters: anything the display charset can carry except the field separator and line
# ends (and U+0082, whose byte 0x82 displays as ₂); spaces and '|' are over-represented because
# they drive the trimming and unlabelled rules.
NAME_CHARS = st.one_of(
    st.sampled_from(" |₂"),
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters=";\x82"),
)
UNIT_TEXTS = st.sampled_from([" % ", "%", " mA", "MA", "vpm", "VPM", "ppm", "ppb", "   ", "?"])


@st.composite
def statuses(draw: st.DrawFn) -> ChannelStatus:
    b = st.booleans()
    alarms = (draw(b), draw(b), draw(b), draw(b))
    return ChannelStatus(draw(b), draw(b), draw(b), draw(b), alarms)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[list[str | bytes], dict[str, object]]:
    cid = draw(st.sampled_from(list(ChannelId)))
    name = draw(st.none() | st.text(NAME_CHARS, min_size=0, max_size=6))
    decimals = draw(st.integers(0, 3))
    value = draw(
        st.none()
        | st.floats(min_value=-9999, max_value=99999, allow_nan=False)
        | st.sampled_from([math.nan, math.inf, -math.inf, 1e12])
    )
    unit = draw(UNIT_TEXTS)
    status = draw(statuses())
    text = format_value(value, decimals)
    fields = format_block(cid, name=name, value_text=text, unit=unit, status=status)
    name_field = str(fields[1])
    trimmed = name_field.strip()
    expected: dict[str, object] = {
        "channel": cid,
        "name": trimmed if trimmed.strip("|") else None,
        "value": float(text) if text.strip(" +") else None,
        # format_value writes None, non-finite and too-wide values as the "+" fill
        "value_state": ValueState.OK if text.strip(" +") else ValueState.OVER_RANGE,
        "unit": coerce_unit(unit),
        "status": status,
    }
    return fields, expected


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, dict[str, object], list[dict[str, object]]]:
    content = draw(st.lists(blocks(), min_size=1, max_size=10))
    clock = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
    clock = clock.replace(microsecond=0)
    groups = tuple(
        CalGroupState(g, draw(st.booleans()), draw(st.sampled_from([1, 2]))) for g in (1, 2, 3, 4)
    )
    fault, maintenance = draw(st.booleans()), draw(st.booleans())
    header = format_header(
        clock=clock,
        fault=fault,
        maintenance=maintenance,
        cal_groups=groups,
        n_blocks=len(content),
    )
    terminator = draw(st.sampled_from([b"\r\n", b"\n", b"\r", b""]))
    raw = build_frame(header, [fields for fields, _ in content], terminator=terminator)
    analyser = {"clock": clock, "fault": fault, "maintenance": maintenance, "groups": groups}
    return raw, analyser, [expected for _, expected in content]


@FAST
@given(frames())
def test_build_parse_round_trip(
    case: tuple[bytes, dict[str, object], list[dict[str, object]]],
) -> None:
    raw, analyser, expected = case
    body = raw.rstrip(b"\r\n")
    assert len(body) == frame_length(len(expected))
    f = decode_one(raw)
    assert f.raw == body
    assert f.analyser.clock == analyser["clock"]
    assert f.analyser.fault == analyser["fault"]
    assert f.analyser.maintenance == analyser["maintenance"]
    assert f.analyser.cal_groups == analyser["groups"]
    assert len(f.readings) == len(expected)
    for reading, exp in zip(f.readings, expected, strict=True):
        assert reading.channel is exp["channel"]
        assert reading.kind is reading.channel.kind
        assert reading.name == exp["name"]
        assert reading.value == exp["value"]
        assert reading.value_state is exp["value_state"]
        assert reading.unit is exp["unit"]
        assert reading.status == exp["status"]
        assert len(reading.raw) == 32


@FAST
@given(st.floats(width=32))
def test_float32_round_trip(value: float) -> None:
    high, low = encode_float32(value)
    assert 0 <= high <= 0xFFFF
    assert 0 <= low <= 0xFFFF
    back = decode_float32(high, low)
    if math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value
        assert math.copysign(1.0, back) == math.copysign(1.0, value)


@FAST
@given(st.floats(allow_nan=False))
@example(3.4e38)
@example(3.4028235e38)
@example(3.4028236e38)
@example(-1e39)
@example(5e-324)
def test_float32_encode_any_double(value: float) -> None:
    """Any double encodes as its nearest float32; beyond float32's range, as ±inf."""
    try:
        expected: float = struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:
        expected = math.copysign(math.inf, value)
    assert decode_float32(*encode_float32(value)) == expected


# --------------------------------------------------------------------------------------------
# Shortest float32 decimals (api.md §2)

_F32 = struct.Struct(">f")
FINITE_F32 = st.integers(0, 2**32 - 1).filter(lambda b: (b >> 23) & 0xFF != 0xFF)


def _significant_digits(value: float) -> int:
    mantissa = repr(value).partition("e")[0].lstrip("-").replace(".", "")
    return len(mantissa.strip("0")) or 1


def _round_trips(text: str | decimal.Decimal, packed: bytes) -> bool:
    try:
        return _F32.pack(float(text)) == packed
    except OverflowError:
        return False


def _check_shortest(bits: int) -> None:
    packed = bits.to_bytes(4, "big")
    value = decode_float32_value(packed)
    assert value is not None
    assert type(value) is float
    # It is the received float32 ...
    assert _F32.pack(value) == packed
    widened = decode_float32(bits >> 16, bits & 0xFFFF)
    assert math.copysign(1.0, value) == math.copysign(1.0, widened)
    # ... written with d <= 9 significant digits, and no decimal of d - 1 digits converts back
    # to it. Every decimal that does lies in one interval around the float32, so it is enough
    # to try the two (d - 1)-digit decimals either side of its exact value.
    digits = _significant_digits(value)
    assert 1 <= digits <= 9
    exact = decimal.Decimal(widened)
    if digits > 1:
        for rounding in (decimal.ROUND_FLOOR, decimal.ROUND_CEILING):
            shorter = decimal.Context(prec=digits - 1, rounding=rounding).plus(exact)
            assert not _round_trips(shorter, packed), (packed.hex(), value, shorter)
    assert shortest_float32(packed) == value


@settings(max_examples=2000, deadline=None)
@given(FINITE_F32)
@example(0x00000000)  # 0.0
@example(0x80000000)  # -0.0
@example(0x00000001)  # smallest subnormal
@example(0x007FFFFF)  # largest subnormal
@example(0x00800000)  # smallest normal
@example(0x7F7FFFFF)  # largest finite: a shorter decimal would round past it (overflow)
@example(0xFF7FFFFF)
@example(0x0F800000)  # powers of two whose nearest p-digit decimal is the wrong side
@example(0x6B000000)
@example(0xEC800000)
@example(0x41A2820C)  # 20.3135
def test_every_finite_float32_decodes_to_its_shortest_decimal(bits: int) -> None:
    _check_shortest(bits)


def test_every_power_of_two_decodes_to_its_shortest_decimal() -> None:
    # Powers of two have a lopsided rounding interval: the exhaustive check of all 508.
    for sign in (0, 1):
        for exponent in range(255):
            _check_shortest(sign << 31 | exponent << 23)


@FAST
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_a_float32_written_as_shortest_reads_back_unchanged(value: float) -> None:
    # What the analyser holds (any float32) → registers → Reading → the same float32; and a
    # value that already is its own shortest decimal (20.95, 0.084) comes back as typed.
    high, low = encode_float32(value)
    words = (high, low, 0x4F78, 0x7967, 0x656E, 0x2025, 0x2000)
    reading = decode_channel_block(
        ChannelId.I1, words, ChannelStatus(), received_at=datetime(2026, 1, 1), monotonic_ns=0
    )
    assert reading.value_state is ValueState.OK
    assert reading.value is not None
    assert _F32.pack(reading.value) == words_to_bytes(words[:2])
    short = float(f"{value:.6g}")
    if _F32.pack(short) == _F32.pack(value):
        assert _significant_digits(reading.value) <= _significant_digits(short)


@FAST
@given(st.integers(0, 2**23 - 1), st.booleans())
def test_non_finite_float32_patterns_decode_to_none(mantissa: int, negative: bool) -> None:
    bits = (negative << 31) | (0xFF << 23) | mantissa  # NaN (any payload) or ±inf
    packed = bits.to_bytes(4, "big")
    assert decode_float32_value(packed) is None
    words = (bits >> 16, bits & 0xFFFF, 0, 0, 0, 0, 0)
    reading = decode_channel_block(
        ChannelId.E2, words, ChannelStatus(), received_at=datetime(2026, 1, 1), monotonic_ns=0
    )
    assert reading.value is None
    assert reading.value_state is ValueState.INVALID
    assert not reading.ok


# --------------------------------------------------------------------------------------------
# The continuous value field (protocol.md §3.4, api.md §2)

GLYPH_FIELDS = st.text(st.sampled_from("*-+. "), min_size=1, max_size=6).filter(
    lambda t: any(c in t for c in "*-+")
)


@FAST
@given(GLYPH_FIELDS)
def test_range_glyphs_are_over_range(text: str) -> None:
    assert decode_value_field(text.encode()) == (None, ValueState.OVER_RANGE)


@FAST
@given(
    st.sampled_from(["over", "under"]),
    st.lists(st.booleans(), min_size=5, max_size=5),
    st.integers(0, 2),
    st.integers(0, 2),
)
def test_over_and_under_words_in_any_case(
    word: str, upper: list[bool], left: int, right: int
) -> None:
    cased = "".join(c.upper() if u else c for c, u in zip(word, upper, strict=False))
    field = " " * left + cased + " " * right
    assert decode_value_field(field.encode()) == (None, ValueState.OVER_RANGE)


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 3))
def test_numbers_are_ok(value: float, pad: int) -> None:
    text = " " * pad + repr(value)
    assert decode_value_field(text.encode()) == (value, ValueState.OK)


@FAST
@given(st.binary(max_size=8))
def test_any_value_field_is_classified(field: bytes) -> None:
    value, state = decode_value_field(field)
    assert isinstance(state, ValueState)
    assert (value is None) is (state is not ValueState.OK)
    if value is not None:
        assert math.isfinite(value)
    text = field.strip()
    if not text or (not text.strip(b"*-+. ") and not any(c in text for c in b"*-+")):
        assert state is ValueState.INVALID  # blank, or dots and spaces only


@FAST
@given(st.text(NAME_CHARS, min_size=1, max_size=6))
def test_name_register_round_trip(name: str) -> None:
    raw = encode_text(name, 6)
    assert len(raw) == 6
    decoded = decode_modbus_name(raw)
    stripped = name.rstrip(" \x00")
    if not stripped.strip("|"):
        assert decoded is None
    else:
        assert decoded == stripped
    # NUL padding decodes the same as space padding.
    assert decode_modbus_name(encode_text(name, 6, pad=b"\x00")) == decoded


@FAST
@given(
    st.sampled_from([u for u in Unit if u is not Unit.UNKNOWN]),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.sampled_from([b"\x00", b" "]),
)
def test_unit_register_round_trip(unit: Unit, upper: list[bool], pad: bytes) -> None:
    text = "".join(c.upper() if u else c.lower() for c, u in zip(unit.value, upper, strict=False))
    assert decode_modbus_unit(encode_text(text, 4, pad=pad)) is unit
    assert decode_modbus_unit(encode_text(unit.value, 4, pad=b"\x00")) is unit


# --------------------------------------------------------------------------------------------
# Fuzzing the splitter and the parser


def _pipeline(data: bytes, chunk: int, max_segment: int) -> list[Frame]:
    splitter = FrameSplitter(max_segment=max_segment)
    segments: list[bytes] = []
    for i in range(0, len(data), chunk):
        segments += splitter.feed(data[i : i + chunk])
        assert splitter.buffered <= max_segment
    segments += splitter.flush()
    assert splitter.buffered == 0
    stats = splitter.stats()
    assert stats.garbage_bytes >= 0
    out: list[Frame] = []
    for segment in segments:
        assert b"\r" not in segment
        assert b"\n" not in segment
        assert len(segment) <= max_segment
        with contextlib.suppress(ServomexProtocolError):
            out.append(parse(segment))
    return out


FRAGMENTS = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(REAL),
    st.builds(
        lambda f, a, b: f[min(a, b) : max(a, b)],
        st.sampled_from(REAL),
        st.integers(0, 204),
        st.integers(0, 204),
    ),
    st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b";", b"05;"]),
)


@FAST
@given(st.binary(max_size=3000), st.integers(1, 512), st.sampled_from([72, 300, 4096]))
def test_random_bytes_never_break_the_pipeline(data: bytes, chunk: int, max_segment: int) -> None:
    _pipeline(data, chunk, max_segment)


@FAST
@given(st.lists(FRAGMENTS, max_size=20), st.integers(1, 600), st.sampled_from([250, 4096]))
def test_noise_mixed_with_frame_fragments(parts: list[bytes], chunk: int, max_segment: int) -> None:
    data = b"".join(parts)
    frames = _pipeline(data, chunk, max_segment)
    # Whole real frames standing on their own line always come out.
    lone = [p for i, p in enumerate(parts) if p in REAL and _own_line(parts, i)]
    decoded = [f.raw for f in frames]
    for raw in lone:
        assert raw in decoded


def _own_line(parts: list[bytes], i: int) -> bool:
    before = b"".join(parts[:i])
    after = b"".join(parts[i + 1 :])
    starts = not before or before[-1:] in (b"\r", b"\n")
    ends = not after or after[:1] in (b"\r", b"\n")
    return starts and ends


@FAST
@given(
    st.sampled_from(REAL),
    st.lists(st.tuples(st.integers(0, 203), st.integers(0, 255)), min_size=1, max_size=6),
    st.booleans(),
)
def test_mutated_frames_parse_or_raise_protocol_errors(
    frame: bytes, edits: list[tuple[int, int]], fix_checksum: bool
) -> None:
    raw = bytearray(frame)
    for pos, byte in edits:
        raw[pos % len(raw)] = byte
    if fix_checksum and len(raw) >= 6:
        raw[-5:-1] = f"{checksum(bytes(raw[1:-5])):04X}".encode()
    with contextlib.suppress(ServomexProtocolError):
        parse(bytes(raw))
