"""Register codecs (protocol.md §4.3, §4.5, §4.6) and the display charset (§6)."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servomexlib.devices.models import (
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    ValueState,
)
from servomexlib.units import Unit
from servomexlib.wire.charset import DISPLAY_GLYPHS, decode_display, encode_display
from servomexlib.wire.registers import (
    bytes_to_words,
    decode_channel_block,
    decode_float32,
    decode_float32_value,
    decode_modbus_name,
    decode_modbus_unit,
    encode_channel_block,
    encode_float32,
    encode_text,
    finite_or_none,
    shortest_float32,
    words_to_bytes,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def f32(value: float) -> float:
    """``value`` rounded to float32 and widened back, as the analyser's registers hold it."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


# --------------------------------------------------------------------------------------------
# float32 (§4.5)


@pytest.mark.parametrize(
    ("value", "wire", "words"),
    [
        (20.950, "41 A7 99 9A", (0x41A7, 0x999A)),
        (20.378, "41 A3 06 25", (0x41A3, 0x0625)),
        (0.084, "3D AC 08 31", (0x3DAC, 0x0831)),
        (0.25, "3E 80 00 00", (0x3E80, 0x0000)),
        (4.0, "40 80 00 00", (0x4080, 0x0000)),
    ],
)
def test_float32_table(value: float, wire: str, words: tuple[int, int]) -> None:
    assert encode_float32(value) == words
    assert words_to_bytes(words) == bytes.fromhex(wire)
    assert bytes_to_words(bytes.fromhex(wire)) == words
    decoded = decode_float32(*words)
    assert decoded == f32(value)
    assert finite_or_none(decoded) == decoded
    # A reading gives the value as the analyser holds it: the shortest decimal.
    assert decode_float32_value(bytes.fromhex(wire)) == value
    assert repr(decode_float32_value(bytes.fromhex(wire))) == repr(value)


def test_raw_codec_widens_readings_give_the_shortest_decimal() -> None:
    assert decode_float32(0x41A7, 0x999A) == 20.950000762939453
    assert decode_float32_value(bytes.fromhex("41A7999A")) == 20.95
    packed = struct.pack(">f", 20.3135)
    assert struct.unpack(">f", packed)[0] == 20.313499450683594
    assert repr(decode_float32_value(packed)) == "20.3135"
    # The next float32 up (the widened value of issue 11) needs 8 digits to stay itself.
    assert decode_float32(0x41A2, 0x820D) == 20.313501358032227
    assert repr(decode_float32_value(bytes.fromhex("41A2820D"))) == "20.313501"


@pytest.mark.parametrize(
    ("packed", "text"),
    [
        ("00000000", "0.0"),
        ("80000000", "-0.0"),
        ("3F800000", "1.0"),
        ("3DCCCCCD", "0.1"),
        ("41A2820C", "20.3135"),
        ("41A2820D", "20.313501"),
        ("3DAC0831", "0.084"),
        ("7F7FFFFF", "3.4028235e+38"),  # largest finite: shortest, not clamped or refused
        ("FF7FFFFF", "-3.4028235e+38"),
        ("00000001", "1e-45"),  # smallest subnormal
        ("00800000", "1.1754944e-38"),  # smallest normal
        ("4B800000", "16777216.0"),
        ("0F800000", "1.2621775e-29"),  # a power of two: the 8-digit decimal above it
    ],
)
def test_shortest_float32_examples(packed: str, text: str) -> None:
    data = bytes.fromhex(packed)
    assert repr(shortest_float32(data)) == text
    assert struct.pack(">f", shortest_float32(data)) == data


@pytest.mark.parametrize("packed", ["7FC00000", "7F800000", "FF800000", "", "41A7", "41A7999A00"])
def test_shortest_float32_refuses_what_is_not_a_finite_float32(packed: str) -> None:
    with pytest.raises(ValueError, match=r"not finite|is 4 bytes"):
        shortest_float32(bytes.fromhex(packed))


@pytest.mark.parametrize("packed", ["", "41A7", "7FC0000000", "41A7999A00"])
def test_decode_float32_value_refuses_a_wrong_length(packed: str) -> None:
    with pytest.raises(ValueError, match="is 4 bytes"):
        decode_float32_value(bytes.fromhex(packed))


def test_float32_value_accepts_any_bytes_like() -> None:
    data = bytes.fromhex("41A2820C")
    for form in (bytearray(data), memoryview(data)):
        assert decode_float32_value(form) == 20.3135  # type: ignore[arg-type]
        assert shortest_float32(form) == 20.3135  # type: ignore[arg-type]
    assert decode_float32_value(bytearray.fromhex("7FC00000")) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("words", "check"),
    [
        ((0x7FC0, 0x0000), math.isnan),
        ((0x7F80, 0x0000), lambda v: v == math.inf),
        ((0xFF80, 0x0000), lambda v: v == -math.inf),
        ((0x7FFF, 0xFFFF), math.isnan),
        ((0xFFC0, 0x0001), math.isnan),
    ],
    ids=["qnan", "+inf", "-inf", "nan-max", "-nan"],
)
def test_non_finite_words_decode_to_none(words: tuple[int, int], check: object) -> None:
    value = decode_float32(*words)
    assert check(value)  # type: ignore[operator]
    assert finite_or_none(value) is None


def test_non_finite_encodings() -> None:
    assert encode_float32(math.nan) == (0x7FC0, 0x0000)
    assert encode_float32(math.inf) == (0x7F80, 0x0000)
    assert encode_float32(-math.inf) == (0xFF80, 0x0000)
    # Too large for float32: saturates to an infinity of the same sign.
    assert encode_float32(1e39) == (0x7F80, 0x0000)
    assert encode_float32(-1e39) == (0xFF80, 0x0000)


def test_finite_or_none() -> None:
    assert finite_or_none(None) is None
    assert finite_or_none(math.nan) is None
    assert finite_or_none(math.inf) is None
    assert finite_or_none(-math.inf) is None
    assert finite_or_none(3.0e38) == 3.0e38  # large finite values pass through
    assert finite_or_none(-0.0) == 0.0
    assert finite_or_none(0.0) == 0.0


# --------------------------------------------------------------------------------------------
# Worked FC04 responses (§4.5)


def _fc04_data(adu_hex: str) -> bytes:
    adu = bytes.fromhex(adu_hex)
    assert adu[:2] == b"\x01\x04"
    assert adu[2] == 14 == len(adu) - 5
    return adu[3:-2]


def test_worked_fc04_oxygen_response() -> None:
    data = _fc04_data("01 04 0E 41 A7 99 9A 4F 78 79 67 65 6E 20 25 20 00 66 5E")
    words = bytes_to_words(data)
    assert words == encode_channel_block(20.95, b"Oxygen", b" % \x00")
    r = decode_channel_block(ChannelId.I1, words, ChannelStatus(), received_at=T0, monotonic_ns=9)
    assert r.channel is ChannelId.I1
    assert r.kind is ChannelKind.TRANSDUCER
    assert r.value == 20.95
    assert repr(r.value) == "20.95"
    assert r.value_state is ValueState.OK
    assert r.ok
    assert r.name == "Oxygen"
    assert r.unit is Unit.PERCENT
    assert r.raw == data
    assert r.protocol is ProtocolKind.MODBUS_RTU
    assert r.received_at == T0
    assert r.monotonic_ns == 9
    # The ASCII form carries the same data bytes.
    ascii_adu = b":01040E41A7999A4F787967656E20252000F3\r\n"
    assert bytes.fromhex(ascii_adu[7:-4].decode()) == data


def test_worked_fc04_co2_response() -> None:
    data = _fc04_data("01 04 0E 3E 80 00 00 43 4F 82 20 20 20 25 00 00 00 CA 20")
    words = bytes_to_words(data)
    assert words[2:5] == (0x434F, 0x8220, 0x2020)
    assert words == encode_channel_block(0.25, b"CO\x82   ", b"%")
    r = decode_channel_block(
        ChannelId.I3,
        words,
        ChannelStatus(),
        received_at=T0,
        monotonic_ns=0,
        protocol=ProtocolKind.MODBUS_ASCII,
    )
    assert r.value == 0.25
    assert r.name == "CO₂"
    assert r.unit is Unit.PERCENT
    assert r.raw == data
    assert r.protocol is ProtocolKind.MODBUS_ASCII


def test_decode_channel_block_nan_is_invalid_and_overrides() -> None:
    words = encode_channel_block(None, b"||||||", b" mA\x00")
    assert words[:2] == (0x7FC0, 0x0000)
    status = ChannelStatus(fault=True)
    r = decode_channel_block(ChannelId.E1, words, status, received_at=T0, monotonic_ns=1)
    assert r.value is None
    assert r.value_state is ValueState.INVALID
    assert r.name is None
    assert r.unit is Unit.MILLIAMP
    assert r.kind is ChannelKind.EXTERNAL_INPUT
    assert r.status is status
    assert len(r.raw) == 14
    cached = decode_channel_block(
        ChannelId.E1, words, status, received_at=T0, monotonic_ns=1, name="Flow", unit=Unit.PPM
    )
    assert (cached.name, cached.unit) == ("Flow", Unit.PPM)
    assert cached.raw == r.raw
    assert cached.value_state is ValueState.INVALID


@pytest.mark.parametrize("count", [0, 6, 8, 14])
def test_decode_channel_block_needs_seven_registers(count: int) -> None:
    with pytest.raises(ValueError, match="7 registers"):
        decode_channel_block(
            ChannelId.I1, [0] * count, ChannelStatus(), received_at=T0, monotonic_ns=0
        )


def test_encode_channel_block_pads_and_truncates() -> None:
    words = encode_channel_block(1.0, b"CO", b"%")
    assert words_to_bytes(words)[4:] == b"CO\x00\x00\x00\x00%\x00\x00\x00"
    words = encode_channel_block(1.0, b"LongName", b"ppm\x00extra")
    assert words_to_bytes(words)[4:] == b"LongNappm\x00"


# --------------------------------------------------------------------------------------------
# Name and unit registers (§4.6)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"Oxygen", "Oxygen"),
        (b"CO    ", "CO"),
        (b"CO\x00\x00\x00\x00", "CO"),
        (b"CO \x00 \x00", "CO"),
        (b"  CO  ", "  CO"),  # right side only
        (b"CO\x82   ", "CO₂"),
        (b"NO\x82\x00\x00\x00", "NO₂"),
        (b"||||||", None),
        (b"||| \x00\x00", None),
        (b"      ", None),
        (b"\x00" * 6, None),
        (b"", None),
        (b"A|B   ", "A|B"),
    ],
)
def test_decode_modbus_name(raw: bytes, name: str | None) -> None:
    assert decode_modbus_name(raw) == name


@pytest.mark.parametrize(
    ("raw", "unit"),
    [
        (b" % \x00", Unit.PERCENT),
        (b"%\x00\x00\x00", Unit.PERCENT),
        (b" mA\x00", Unit.MILLIAMP),
        (b"vpm\x00", Unit.VPM),
        (b"ppm\x00", Unit.PPM),
        (b"PPM ", Unit.PPM),
        (b"ppb\x00", Unit.UNKNOWN),
        (b"\x00\x00\x00\x00", Unit.UNKNOWN),
        (b"\xff\xfe\x82\x00", Unit.UNKNOWN),
    ],
)
def test_decode_modbus_unit(raw: bytes, unit: Unit) -> None:
    assert decode_modbus_unit(raw) is unit


def test_words_and_bytes() -> None:
    assert words_to_bytes([0x434F, 0x8220]) == b"CO\x82 "
    assert words_to_bytes([]) == b""
    assert bytes_to_words(b"CO\x82 ") == (0x434F, 0x8220)
    assert bytes_to_words(b"ABC") == (0x4142, 0x4300)  # odd length padded with NUL
    assert bytes_to_words(b"") == ()


def test_encode_text() -> None:
    assert encode_text("CO₂", 6) == b"CO\x82   "
    assert encode_text("Oxygen!", 6) == b"Oxygen"
    assert encode_text(None, 4, pad=b"\x00") == b"\x00" * 4
    assert encode_text(b"%", 4, pad=b"\x00") == b"%\x00\x00\x00"


# --------------------------------------------------------------------------------------------
# Display charset (§6)


def test_charset_table() -> None:
    assert DISPLAY_GLYPHS[0x82] == "₂"
    assert decode_display(b"\x82") == "\u2082"
    assert decode_display(b"CO\x82") == "CO₂"
    assert decode_display(b"\x7c" * 6) == "||||||"
    assert decode_display(b"") == ""
    for byte in range(256):
        expected = DISPLAY_GLYPHS.get(byte, chr(byte))
        assert decode_display(bytes([byte])) == expected


def test_charset_encode() -> None:
    assert encode_display("CO₂") == b"CO\x82"
    assert encode_display("||||||") == b"\x7c" * 6
    assert encode_display("é") == b"\xe9"
    assert encode_display("€") == b"?"  # no display byte
    assert encode_display(decode_display(bytes(range(256)))) == bytes(range(256))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_charset_decode_never_raises_and_keeps_length(data: bytes) -> None:
    text = decode_display(data)
    assert len(text) == len(data)
    assert encode_display(text) == data
