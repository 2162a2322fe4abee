"""Property tests of the wire layer (hypothesis).

* ``build_frame`` → ``parse_frame`` round-trips for random content (through the three-ways
  helper: whole, byte by byte, wrapped in garbage);
* float32, name and unit register codecs round-trip;
* random bytes, alone or mixed with real frame fragments, through the splitter and the parser
  give frames or ``ServomexProtocolError`` subclasses only, and the splitter stays bounded.
"""

from __future__ import annotations

import contextlib
import math
import struct
from datetime import datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import IDLE_CAPTURE, LIVE_CAPTURE, WORKED_FRAME, capture_frames, decode_one, parse
from servomexlib.devices.models import CalGroupState, ChannelId, ChannelStatus, Frame
from servomexlib.errors import ServomexProtocolError
from servomexlib.units import Unit, coerce_unit
from servomexlib.wire.continuous import (
    FrameSplitter,
    build_frame,
    checksum,
    format_block,
    format_header,
    format_value,
    frame_length,
)
from servomexlib.wire.registers import (
    decode_float32,
    decode_modbus_name,
    decode_modbus_unit,
    encode_float32,
    encode_text,
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
