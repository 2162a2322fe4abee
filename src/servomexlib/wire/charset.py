"""The analyser's display-ROM character set (docs/protocol.md, §6).

Names and units are stored as display-ROM bytes. Only 0x82 (subscript two, as in CO₂) is known
to differ from Latin-1; the table is one mapping so further glyphs can be added when they are
characterised. Decoding never raises and keeps the length of its input.
"""

from __future__ import annotations

__all__ = ["DISPLAY_GLYPHS", "decode_display", "encode_display"]

#: Display-ROM byte → glyph, for the bytes that are not plain Latin-1.
DISPLAY_GLYPHS: dict[int, str] = {
    0x82: "\u2082",  # SUBSCRIPT TWO: CO₂, NO₂ (HW: CO₂ reads 43 4F 82 20 20 20)
}

_DECODE = "".join(DISPLAY_GLYPHS.get(b, chr(b)) for b in range(256))
_ENCODE = {glyph: byte for byte, glyph in DISPLAY_GLYPHS.items()}


def decode_display(data: bytes) -> str:
    """Map display-ROM bytes to text, one character per byte; never raises."""
    return data.decode("latin-1").translate(_TRANSLATE) if data else ""


_TRANSLATE = {i: _DECODE[i] for i in DISPLAY_GLYPHS}


def encode_display(text: str) -> bytes:
    """Inverse of :func:`decode_display`; characters with no display byte become ``?``."""
    out = bytearray()
    for ch in text:
        code = _ENCODE.get(ch)
        if code is None:
            code = ord(ch) if ord(ch) < 256 else 0x3F
        out.append(code)
    return bytes(out)
