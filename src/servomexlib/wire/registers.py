"""Register codecs for the Modbus profile (protocol.md §4.3, §4.5, §4.6). Pure: no I/O.

Registers are 16-bit words, big-endian on the wire. A channel block is 7 words: the value as an
IEEE-754 float32 high word first (so the wire bytes are the plain big-endian float, "ABCD"), the
name as 6 display-ROM bytes and the unit as 3 characters plus a NUL.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from datetime import datetime

from ..devices.models import ChannelId, ChannelStatus, ProtocolKind, Reading
from ..units import Unit, coerce_unit
from .channels import REGISTERS_PER_CHANNEL
from .charset import decode_display, encode_display

__all__ = [
    "bytes_to_words",
    "decode_channel_block",
    "decode_float32",
    "decode_modbus_name",
    "decode_modbus_unit",
    "encode_channel_block",
    "encode_float32",
    "encode_text",
    "finite_or_none",
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
    """Two registers, high word first → the float32 value widened to a Python float.

    No rounding is applied (20.95 reads back as 20.950000762939453); NaN and ±inf pass through
    (see :func:`finite_or_none`).
    """
    value: float = _FLOAT.unpack(_WORDS2.pack(high, low))[0]
    return value


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

    ``name``/``unit`` override the registers' text when given (the client's metadata cache);
    ``raw`` is always the 14 bytes received in this read.
    """
    if len(words) != REGISTERS_PER_CHANNEL:
        raise ValueError(f"a channel block is {REGISTERS_PER_CHANNEL} registers, got {len(words)}")
    raw = words_to_bytes(words)
    return Reading(
        channel=channel,
        kind=channel.kind,
        name=decode_modbus_name(raw[4:10]) if name is None else name,
        value=finite_or_none(decode_float32(words[0], words[1])),
        unit=decode_modbus_unit(raw[10:14]) if unit is None else unit,
        status=status,
        protocol=protocol,
        received_at=received_at,
        monotonic_ns=monotonic_ns,
        raw=raw,
    )
