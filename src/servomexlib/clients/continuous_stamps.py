"""When each continuous line arrived, and which lines were already waiting: pure rules (private).

No I/O and no clock: the receiver of :mod:`servomexlib.clients.continuous` passes in the times
it read and the bytes it counted (docs/protocol.md, §9.6).

Theory of operation
-------------------
**Stamps.** A frame is stamped "when its last byte was received". A read that completes a
frame often brings later bytes too (the next frame's start); on a line whose character time is
known, the frame's last byte arrived earlier by the wire time of the bytes after it in this
read (:func:`segment_stamps`) — never earlier than the previous read, on either clock (the wall
clock and the monotonic clock of a read are taken a moment apart, so each interval bounds its
own stamp). Without a known character time every segment gets the read's time.

**Old bytes are not news: the line-rate check.** No line carries more than one character per
character time, so if ``n`` bytes have been read since the receiver started ``t`` seconds ago,
at least ``n − t / char_time`` of them (the oldest) were already waiting at the start
(:class:`LineRateCheck`). A line whose first byte lies in that provably old part is stale. A
few characters of slack (:data:`BACKLOG_SLACK_CHARS`) keep a frame that starts right at the
boundary.

**A cut line.** The first line after the start that does not begin like a frame header
(:func:`begins_like_a_frame`: a leading space and the header's ``;`` where docs/protocol.md
§3.2 puts them) is the tail of a frame cut by the start; a frame with a damaged body or
checksum still begins like one, so it is still reported as dropped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..wire.continuous import HEADER_LENGTH

__all__ = [
    "BACKLOG_SLACK_CHARS",
    "LineRateCheck",
    "begins_like_a_frame",
    "segment_afters",
    "segment_stamps",
]

#: Characters of slack in the line-rate check: the character straddling the start, rounding,
#: and the few bytes a tty layer has in flight when the input queue is flushed.
BACKLOG_SLACK_CHARS = 16
#: Offsets of the header's separators (docs/protocol.md, §3.2): after the date, time, FM,
#: autocal, N.
_HEADER_SEPARATORS = (9, 18, 21, 30, 33)


def begins_like_a_frame(segment: bytes) -> bool:
    """A leading space and the header's ``;`` where docs/protocol.md, §3.2 puts them."""
    return (
        len(segment) >= HEADER_LENGTH
        and segment[0] == 0x20
        and all(segment[i] == 0x3B for i in _HEADER_SEPARATORS)
    )


def segment_afters(segments: list[bytes], buffered: int) -> list[int]:
    """For each segment, the bytes read after its last byte (counting one per terminator);
    ``buffered`` is what the splitter holds after the last terminator."""
    afters: list[int] = []
    after = buffered
    for segment in reversed(segments):
        afters.append(after)
        after += len(segment) + 1  # the segment and (at least) one terminator byte
    afters.reverse()
    return afters


def segment_stamps(
    afters: list[int],
    chunk_len: int,
    received_at: datetime,
    monotonic_ns: int,
    since_ns: int,
    char_time: float | None,
) -> list[tuple[datetime, int]]:
    """When each segment's last byte arrived, by the wire time of the bytes after it.

    Only the bytes of this chunk count (older ones arrived before the previous read), and no
    stamp goes back more than ``since_ns`` (to the previous read). Without a known character
    time, every segment gets the chunk's time.
    """
    if char_time is None:
        return [(received_at, monotonic_ns)] * len(afters)
    stamps: list[tuple[datetime, int]] = []
    floor_back_ns = max(since_ns, 0)
    for after in afters:
        back_ns = min(int(min(after, chunk_len) * char_time * 1e9), floor_back_ns)
        if back_ns <= 0:
            stamps.append((received_at, monotonic_ns))
        else:
            stamps.append(
                (received_at - timedelta(microseconds=back_ns / 1000), monotonic_ns - back_ns)
            )
    return stamps


class LineRateCheck:
    """Which bytes read since the start were provably waiting at it (module docstring).

    Args:
        char_time: seconds per character; None switches the check off.
    """

    __slots__ = ("char_time", "line_bytes", "stale_until", "start")

    def __init__(self, char_time: float | None) -> None:
        self.char_time = char_time
        self.start: float | None = None  # the receiver's start, loop clock
        self.line_bytes = 0  # bytes read off the line since
        self.stale_until = 0  # line offsets below this were waiting at the start

    def count(self, n: int, loop_time: float) -> bool:
        """Count ``n`` bytes read at ``loop_time``; move the provably-old boundary. True when
        the boundary applies (the line rate and the start are known)."""
        self.line_bytes += n
        char_time, start = self.char_time, self.start
        if char_time is None or start is None:
            return False
        carried = int((loop_time - start) / char_time) + BACKLOG_SLACK_CHARS
        self.stale_until = max(self.stale_until, self.line_bytes - carried)
        return True

    def reading_ahead(self, now: float) -> bool:
        """More bytes read since the start than the line could carry: a backlog is waiting."""
        char_time, start = self.char_time, self.start
        if char_time is None or start is None:
            return False
        return self.line_bytes - (now - start) / char_time > BACKLOG_SLACK_CHARS

    def is_old(self, after: int, length: int) -> bool:
        """Whether a segment of ``length`` bytes followed by ``after`` bytes began in the old
        part."""
        return self.line_bytes - after - length < self.stale_until
