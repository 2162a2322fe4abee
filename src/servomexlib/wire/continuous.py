"""Continuous ASCII frames: checksum, parse, build and an incremental splitter
(docs/protocol.md, §3).

Pure code: no I/O, no clock, no logging. Callers pass the timestamps a frame is stamped with.

Theory of operation
-------------------
A frame is ``0x20`` + 5 header fields + N channel blocks of 8 fields + a 4-hex-digit checksum,
every field followed by ``;``, then a line terminator. It is ``39 + 33·N`` bytes long without the
terminator. The checksum is the 16-bit sum of every byte after the leading space up to and
including the ``;`` before the checksum field.

This module is the one place to import the continuous-frame codec from; the work is split by
concern:

* :mod:`.frame_layout` — the byte layout: field counts, lengths, :func:`checksum`,
  :func:`frame_length`;
* :mod:`.frame_parse` — :func:`parse_frame` (validation in the order of docs/protocol.md, §3.9,
  the matching :class:`~servomexlib.errors.ServomexProtocolError` subclass) and
  :func:`decode_value_field` (a value field that is not a finite number decodes to
  ``value=None`` with a :class:`~servomexlib.devices.models.ValueState` saying why, never a
  guessed value), with the caches that make a repeated frame cheap;
* :mod:`.frame_build` — :func:`build_frame` and the field formatters at the analyser's widths;
* :mod:`.frame_splitter` — :class:`FrameSplitter` (segments at every CR or LF, bounded, frames
  glued to noise recovered) and :func:`split_frames` for a whole capture.
"""

from __future__ import annotations

from .frame_build import build_frame, format_block, format_header, format_value
from .frame_layout import (
    BLOCK_FIELDS,
    BLOCK_LENGTH,
    HEADER_FIELDS,
    HEADER_LENGTH,
    MAX_SEGMENT,
    TRAILER_LENGTH,
    UNLABELLED,
    checksum,
    frame_length,
)
from .frame_parse import decode_value_field, parse_frame
from .frame_splitter import FrameSplitter, SplitterStats, locate_frame, split_frames

__all__ = [
    "BLOCK_FIELDS",
    "BLOCK_LENGTH",
    "HEADER_FIELDS",
    "HEADER_LENGTH",
    "MAX_SEGMENT",
    "TRAILER_LENGTH",
    "UNLABELLED",
    "FrameSplitter",
    "SplitterStats",
    "build_frame",
    "checksum",
    "decode_value_field",
    "format_block",
    "format_header",
    "format_value",
    "frame_length",
    "locate_frame",
    "parse_frame",
    "split_frames",
]
