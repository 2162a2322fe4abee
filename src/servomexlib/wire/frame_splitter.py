"""Cutting a continuous byte stream into frames (docs/protocol.md, §3.8). Pure: no I/O.

Theory of operation
-------------------
:class:`FrameSplitter` cuts a byte stream into segments at every CR or LF (CR LF, LF-only and
CR-only lines all work; the captures of the real unit are LF-only) and never holds more than
``max_segment`` bytes: past that the pending bytes are garbage, dropped and counted, and
everything up to the next terminator is discarded. A segment whose length does not match its
own header is searched for an embedded frame (:func:`locate_frame`: a ``0x20`` whose header
declares a length that fits and whose checksum verifies), so a frame glued to line noise is
still recovered; the noise around it is counted as garbage. Segments are handed out as they
are: whether one is a valid frame is :func:`~.frame_parse.parse_frame`'s to decide.

:func:`split_frames` does the same for a whole capture at once.
"""

from __future__ import annotations

import dataclasses

from .frame_layout import (
    MAX_SEGMENT,
    checksum,
    checksum_field_matches,
    declared_length,
    frame_length,
)

__all__ = ["FrameSplitter", "SplitterStats", "locate_frame", "split_frames"]

_SEMI = 0x3B


@dataclasses.dataclass(frozen=True, slots=True)
class SplitterStats:
    """Counters of a :class:`FrameSplitter` (:meth:`FrameSplitter.stats`)."""

    segments: int  # non-blank segments handed out
    recovered: int  # frames cut out of a longer noisy segment
    garbage_bytes: int  # bytes discarded (overflow and noise around recovered frames)
    overflows: int  # times the bound was hit
    buffered: int  # bytes currently held


class FrameSplitter:
    """Incremental splitter for a continuous byte stream.

    ``feed(data)`` returns the complete, non-blank segments (without terminators) found so far;
    partial data is kept for the next call, never more than ``max_segment`` bytes.
    """

    __slots__ = ("_buf", "_discarding", "_garbage", "_max", "_overflows", "_recovered", "_segments")

    def __init__(self, max_segment: int = MAX_SEGMENT) -> None:
        if max_segment < frame_length(1):
            raise ValueError(f"max_segment must be at least {frame_length(1)}")
        self._buf = bytearray()
        self._max = max_segment
        self._discarding = False
        self._garbage = 0
        self._overflows = 0
        self._segments = 0
        self._recovered = 0

    @property
    def max_segment(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def garbage_bytes(self) -> int:
        return self._garbage

    def stats(self) -> SplitterStats:
        return SplitterStats(
            self._segments, self._recovered, self._garbage, self._overflows, len(self._buf)
        )

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        n = len(data)
        while start < n:
            cut = _next_terminator(data, start)
            if cut < 0:
                self._append(data[start:])
                break
            self._append(data[start:cut])
            if self._discarding:
                self._discarding = False
            else:
                self._emit(bytes(self._buf), out)
            self._buf.clear()
            start = cut + 1
        return out

    def pending_frame_bytes(self) -> int | None:
        """Bytes still to come before the partial frame held now can end, or None if unknown.

        Known once the held bytes start with a frame header carrying its N field: the declared
        length minus what is held, plus one terminator byte. None when nothing is held, while an
        over-long line is being discarded, or when the held bytes do not start like a frame.
        """
        if not self._buf or self._discarding:
            return None
        declared = declared_length(self._buf, 0)
        if declared < 0:
            return None
        return max(declared - len(self._buf), 0) + 1

    def flush(self) -> list[bytes]:
        """Hand out whatever is pending as a final segment (end of stream)."""
        out: list[bytes] = []
        if not self._discarding:
            self._emit(bytes(self._buf), out)
        self._buf.clear()
        self._discarding = False
        return out

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False

    def _append(self, chunk: bytes) -> None:
        if self._discarding:
            self._garbage += len(chunk)
            return
        if len(self._buf) + len(chunk) > self._max:
            # A line longer than any frame can be: keep nothing of it.
            self._garbage += len(self._buf) + len(chunk)
            self._overflows += 1
            self._buf.clear()
            self._discarding = True
            return
        self._buf += chunk

    def _emit(self, segment: bytes, out: list[bytes]) -> None:
        if not segment.strip(b" "):
            self._garbage += len(segment)
            return
        self._segments += 1
        if declared_length(segment, 0) == len(segment):
            out.append(segment)
            return
        found = locate_frame(segment)
        if found is None:
            out.append(segment)
            return
        begin, end = found
        self._recovered += 1
        self._garbage += len(segment) - (end - begin)
        out.append(segment[begin:end])


def _next_terminator(data: bytes, start: int) -> int:
    cr = data.find(b"\r", start)
    lf = data.find(b"\n", start)
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)


def locate_frame(segment: bytes) -> tuple[int, int] | None:
    """Find a checksum-valid frame embedded in a noisy segment: (begin, end) or None."""
    begin = segment.find(b" ")
    while begin >= 0:
        length = declared_length(segment, begin)
        end = begin + length
        if length > 0 and end <= len(segment):
            candidate = segment[begin:end]
            if candidate[-1] == _SEMI and checksum_field_matches(
                candidate[-5:-1], checksum(candidate[1:-5])
            ):
                return begin, end
        begin = segment.find(b" ", begin + 1)
    return None


def split_frames(capture: bytes) -> list[bytes]:
    """Split a whole capture into frames (docs/protocol.md, §3.8), terminators removed.

    Segments end at any CR or LF; blank segments are dropped. Frames glued to noise on the same
    line are cut out when their checksum verifies.
    """
    splitter = FrameSplitter()
    return splitter.feed(capture) + splitter.flush()
