"""Register codecs for the Modbus profile (docs/protocol.md, §4.3, §4.5–§4.7). Pure: no I/O.

Registers are 16-bit words, big-endian on the wire. A channel block is 7 words: the value as an
IEEE-754 float32 high word first (so the wire bytes are the plain big-endian float, "ABCD"), the
name as 6 display-ROM bytes and the unit as 3 characters plus a NUL.

Values: shortest float32 decimals
---------------------------------
The analyser holds a reading as a float32. Widened to a Python float it carries binary noise
(``20.3135`` reads as ``20.313499450683594``) that would show in every print, CSV cell and JSON
line. :func:`decode_float32_value` therefore gives the **shortest decimal that converts back to
the same float32**, as a Python float: ``repr()`` then prints ``20.3135``, and packing it as
float32 gives the very bytes that were received, so nothing the analyser sent is lost or
invented. Non-finite patterns (NaN, ±inf) are not numbers: they decode to None
(:attr:`~servomexlib.devices.models.ValueState.INVALID`).

How: for p = 1 … 9 significant digits, the value rounded to p digits (``"%.*g"``) is parsed back
and packed; the first that packs to the received 4 bytes wins (9 digits always do). Every
decimal that converts back to a float32 lies in one interval around it; that interval is
symmetric except at exact powers of two, whose lower neighbour is twice as close as the upper
one, so only there the p-digit decimal next away from zero is tried too. Values repeat from one
poll to the next, so results are cached by bit pattern (bounded; cleared when full).
"""

from __future__ import annotations

import decimal
import math
import struct
from collections.abc import Sequence
from datetime import datetime

from ..devices.models import (
    ChannelId,
    ChannelStatus,
    ProtocolKind,
    Reading,
    ValueState,
    build_reading,
)
from ..units import Unit, coerce_unit
from .channels import REGISTERS_PER_CHANNEL
from .charset import decode_display, encode_display

__all__ = [
    "bytes_to_words",
    "decode_channel_block",
    "decode_float32",
    "decode_float32_value",
    "decode_modbus_name",
    "decode_modbus_unit",
    "encode_channel_block",
    "encode_float32",
    "encode_text",
    "finite_or_none",
    "shortest_float32",
    "slot_populated",
    "words_to_bytes",
]

_FLOAT = struct.Struct(">f")
_WORDS2 = struct.Struct(">HH")


def words_to_bytes(words: Sequence[int]) -> bytes:
    """Registers → bytes, each register big-endian (high byte first)."""
    return struct.pack(f">{len(words)}H", *words)


def bytes_to_words(data: bytes) -> tuple[int, ...]:
    """Bytes → registers; an odd trailing byte is padded with NUL."""
    if len(data) % 2:
        data += b"\x00"
    return struct.unpack(f">{len(data) // 2}H", data)


def decode_float32(high: int, low: int) -> float:
    """Two registers, high word first → the float32 value widened exactly to a Python float.

    The raw codec: no rounding (20.95 reads back as 20.950000762939453) and NaN/±inf pass
    through. Readings use :func:`decode_float32_value`, which gives the shortest decimal.
    """
    value: float = _FLOAT.unpack(_WORDS2.pack(high, low))[0]
    return value


_F32_PACK = _FLOAT.pack
_F32_UNPACK = _FLOAT.unpack
_EXPONENT_MASK = 0x7F800000
_MANTISSA_MASK = 0x007FFFFF
_SMALLEST_NORMAL_ABOVE = 0x00800000  # exponent field 1: 2**-126 has symmetric neighbours
_SHORTEST_CACHE: dict[bytes, float] = {}
_SHORTEST_CACHE_LIMIT = 4096


def _packs_to(candidate: float, packed: bytes) -> bool:
    try:
        return _F32_PACK(candidate) == packed
    except OverflowError:  # rounded up past the largest float32
        return False


def _shortest(packed: bytes) -> float:
    widened: float = _F32_UNPACK(packed)[0]
    bits = int.from_bytes(packed)
    exponent = bits & _EXPONENT_MASK
    # A power of two (mantissa 0, above the smallest normal) has an interval twice as wide
    # away from zero as towards it; everywhere else the nearest p-digit decimal is the best.
    lopsided = not bits & _MANTISSA_MASK and exponent > _SMALLEST_NORMAL_ABOVE
    for digits in range(1, 10):
        candidate = float("%.*g" % (digits, widened))  # noqa: UP031 - fastest form measured
        if _packs_to(candidate, packed):
            return candidate
        if lopsided and abs(candidate) < abs(widened):
            context = decimal.Context(prec=digits, rounding=decimal.ROUND_UP)
            outward = float(context.plus(decimal.Decimal(widened)))
            if _packs_to(outward, packed):
                return outward
    return widened  # pragma: no cover - 9 significant digits always round-trip a float32


def shortest_float32(packed: bytes) -> float:
    """The shortest decimal that converts back to the float32 ``packed``, as a Python float.

    Args:
        packed: 4 bytes, a finite big-endian float32 (the value registers as received).

    Returns:
        The float whose ``repr`` is the fewest significant digits (1-9) that pack back to
        ``packed``: ``20.3135`` for ``41 A2 82 0C``; ``-0.0``, subnormals and the largest
        finite values (``3.4028235e+38``) included.

    Raises:
        ValueError: ``packed`` is not 4 bytes or is NaN/±inf.
    """
    try:
        return _SHORTEST_CACHE[packed]
    except (KeyError, TypeError):  # not seen yet, or an unhashable bytearray/memoryview
        pass
    if len(packed) != 4:
        raise ValueError(f"a float32 is 4 bytes, got {len(packed)}")
    if int.from_bytes(packed) & _EXPONENT_MASK == _EXPONENT_MASK:
        raise ValueError(f"float32 {packed.hex(' ')} is not finite")
    value = _shortest(bytes(packed))
    if len(_SHORTEST_CACHE) >= _SHORTEST_CACHE_LIMIT:
        _SHORTEST_CACHE.clear()
    _SHORTEST_CACHE[bytes(packed)] = value
    return value


def decode_float32_value(packed: bytes) -> float | None:
    """The value registers of a reading (4 bytes, high word first) → its value.

    Returns:
        The shortest decimal of the float32 (:func:`shortest_float32`), or None when the
        pattern is NaN or ±inf (the reading is then ``ValueState.INVALID``).

    Raises:
        ValueError: ``packed`` is not 4 bytes.
    """
    try:
        return _SHORTEST_CACHE[packed]
    except (KeyError, TypeError):
        pass
    if len(packed) == 4 and int.from_bytes(packed) & _EXPONENT_MASK == _EXPONENT_MASK:
        return None
    return shortest_float32(packed)


def encode_float32(value: float) -> tuple[int, int]:
    """A float → (high word, low word) of its float32 representation; NaN and ±inf allowed."""
    try:
        packed = _FLOAT.pack(value)
    except OverflowError:
        packed = _FLOAT.pack(math.copysign(math.inf, value))
    high, low = _WORDS2.unpack(packed)
    return high, low


def finite_or_none(value: float | None) -> float | None:
    """Non-finite values (NaN, ±inf) become None: over-range always surfaces as None (LIB)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def decode_modbus_name(raw: bytes) -> str | None:
    """6 name bytes → text through the display charset; right-stripped of spaces and NULs.

    None when nothing is left or only ``|`` characters (an unlabelled slot).
    """
    text = decode_display(raw).rstrip(" \x00")
    if not text or not text.strip("|"):
        return None
    return text


def decode_modbus_unit(raw: bytes) -> Unit:
    """4 unit bytes → :class:`Unit` (trailing NULs stripped, unknown → UNKNOWN)."""
    return coerce_unit(decode_display(raw))


def slot_populated(name_raw: bytes, unit_raw: bytes) -> bool:
    """Whether a Modbus slot is populated (docs/protocol.md, §4.7): its name registers hold a
    label (not blank, not only ``|``) or its unit registers are not blank (spaces and NULs)."""
    return decode_modbus_name(name_raw) is not None or bool(unit_raw.strip(b" \x00"))


def encode_text(text: str | bytes | None, length: int, *, pad: bytes = b" ") -> bytes:
    """Text → exactly ``length`` display-ROM bytes, padded with ``pad`` and truncated if longer."""
    if text is None:
        data = b""
    elif isinstance(text, bytes):
        data = text
    else:
        data = encode_display(text)
    return (data + pad * length)[:length]


def encode_channel_block(value: float | None, name: bytes, unit: bytes) -> tuple[int, ...]:
    """The 7 registers of a channel block: float32 value (None → NaN), 6 name, 4 unit bytes."""
    high, low = encode_float32(math.nan if value is None else value)
    name6 = (name + b"\x00" * 6)[:6]
    unit4 = (unit + b"\x00" * 4)[:4]
    return (high, low, *bytes_to_words(name6 + unit4))


def decode_channel_block(
    channel: ChannelId,
    words: Sequence[int],
    status: ChannelStatus,
    *,
    received_at: datetime,
    monotonic_ns: int,
    protocol: ProtocolKind = ProtocolKind.MODBUS_RTU,
    name: str | None = None,
    unit: Unit | None = None,
) -> Reading:
    """Decode one channel's 7 registers into a :class:`Reading`.

    The value is the shortest decimal of the float32 (:func:`decode_float32_value`) with
    ``ValueState.OK``, or None with ``ValueState.INVALID`` for NaN/±inf. ``name``/``unit``
    override the registers' text when given (the client's metadata cache); ``raw`` is always
    the 14 bytes received in this read.

    Raises:
        ValueError: ``words`` is not 7 registers.
    """
    if len(words) != REGISTERS_PER_CHANNEL:
        raise ValueError(f"a channel block is {REGISTERS_PER_CHANNEL} registers, got {len(words)}")
    raw = words_to_bytes(words)
    value = decode_float32_value(raw[:4])
    return build_reading(
        channel,
        channel.kind,
        decode_modbus_name(raw[4:10]) if name is None else name,
        value,
        decode_modbus_unit(raw[10:14]) if unit is None else unit,
        status,
        protocol,
        received_at,
        monotonic_ns,
        raw,
        _INVALID if value is None else _OK,
    )


_OK, _INVALID = ValueState.OK, ValueState.INVALID
