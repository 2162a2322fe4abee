"""The byte layout of a continuous frame: field counts, lengths and the checksum
(docs/protocol.md, §3.2, §3.6). Pure: no I/O, no clock.

A frame is ``0x20`` + 5 header fields + N channel blocks of 8 fields + a 4-hex-digit checksum,
every field followed by ``;``, then a line terminator. The header is 33 bytes after the leading
space (its last field, N, is two digits at offsets 31-32 followed by ``;`` at 33); each block is
33 bytes; the trailer is the 4 checksum digits and their ``;``. So a frame is ``39 + 33·N``
bytes long without the terminator (:func:`frame_length`).

The checksum is the 16-bit sum of every byte after the leading space up to and including the
``;`` before the checksum field (:func:`checksum`), written as 4 hex digits of either case.

The parser (:mod:`.frame_parse`), the builder (:mod:`.frame_build`) and the splitter
(:mod:`.frame_splitter`) all take their numbers from here.
"""

from __future__ import annotations

__all__ = [
    "BLOCK_FIELDS",
    "BLOCK_LENGTH",
    "HEADER_FIELDS",
    "HEADER_LENGTH",
    "HEX_DIGITS",
    "MAX_SEGMENT",
    "SPACE",
    "TRAILER_LENGTH",
    "UNLABELLED",
    "checksum",
    "checksum_field_matches",
    "declared_length",
    "frame_length",
]

HEADER_FIELDS = 5
BLOCK_FIELDS = 8
HEADER_LENGTH = 34  # leading space + 33 header bytes
BLOCK_LENGTH = 33
TRAILER_LENGTH = 5  # 4 checksum digits + ';'
UNLABELLED = "||||||"  # six 0x7C: the slot has no label (HW)
#: Hard bound on one line: a frame with N = 99 (the largest two-digit count) is 3306 bytes.
MAX_SEGMENT = 4096

#: The byte every frame starts with.
SPACE = 0x20
#: The bytes a checksum field may hold.
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_SEMI = 0x3B


def frame_length(n_blocks: int) -> int:
    """Bytes in a frame of ``n_blocks`` channel blocks, without terminator."""
    return HEADER_LENGTH + BLOCK_LENGTH * n_blocks + TRAILER_LENGTH


def checksum(summed: bytes) -> int:
    """Unsigned byte sum & 0xFFFF of the bytes the checksum covers."""
    return sum(summed) & 0xFFFF


def checksum_field_matches(field: bytes, computed: int) -> bool:
    """Whether ``field`` is 4 hex digits whose value is ``computed``."""
    return len(field) == 4 and HEX_DIGITS.issuperset(field) and int(field, 16) == computed


def declared_length(segment: bytes | bytearray, begin: int) -> int:
    """Length the frame starting at ``begin`` declares through its N field, or -1 when the bytes
    there do not start like a frame header."""
    if len(segment) - begin < HEADER_LENGTH or segment[begin] != SPACE:
        return -1
    digits = segment[begin + 31 : begin + 33]
    if segment[begin + 33] != _SEMI or not digits.isdigit():
        return -1
    return frame_length(int(digits))
