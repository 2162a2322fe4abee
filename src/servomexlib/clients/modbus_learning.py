"""What a Modbus line learns from its own traffic: reply times, turnarounds, the silence (private).

Pure: no I/O, no clock, no logging. Every time is passed in (seconds on the line's clock), so
each rule is a unit test without a device. :class:`~servomexlib.clients.modbus_line.ModbusLine`
owns one :class:`SilenceLearner` and one :class:`TurnaroundRecord` per line and one
:class:`ReplyTimes` per slave address (docs/protocol.md, §9.1, §9.3, §9.4).

Theory of operation
-------------------
**Reply times and the learned wait** (docs/protocol.md, §9.4). A lost reply used to cost the
whole response timeout (1 s by default) although the analyser answers in 20-40 ms. So each
slave's reply times are learned: the time from an attempt's start to its whole reply, minus the
wire time of request and reply — the slave's *excess*, the same for every reply size, so one
record serves every read. When the caller gave no per-call timeout, every attempt but the last
waits ``wire time + allowance``, the allowance being the p99 of the last 64 excesses plus a
margin (20 ms or half of it, whichever is more), never less than 50 ms; until 8 replies were
timed the open-time timeout is used. A reply that came after its attempt gave up on it doubles
the allowance (:meth:`ReplyTimes.boost_after_late_reply`); the boost fades by 5 % per new
sample, which by then covers the slower replies. Random loss leaves nothing to see, so it
never lengthens the wait.

**Turnarounds and the too-early rule** (docs/protocol.md, §9.3). The turnaround of a reply is
the time from its request leaving to the read that brought its first byte. The line keeps the
smallest and largest measured (only from replies that cannot be stale); a reply that began
sooner than the smallest minus one character time cannot be taken on trust.

**Learned silence** (docs/protocol.md, §9.1). Every attempt is classed by the silence before
it: *tight* (within 5 ms of the current silence: the silence was what it waited for) or
*loose* (at least 20 ms more: after an idle period, or a retry after a timeout). When 7 of the
last 8 tight attempts went unanswered (no byte at all) while at most a quarter of the last loose
ones did (at least 4 of them), the device needs more quiet: the silence is raised by 10 ms (up
to 250 ms) and the tight record restarts. Random loss hits tight and loose attempts alike, so
it does not raise the silence. Every 200 answered tight attempts lower it by 1 ms, never below
the open-time silence.
"""

from __future__ import annotations

import math
from collections import deque

from ..devices.models import ProtocolKind

__all__ = [
    "ASCII_EXCEPTION_LEN",
    "MAX_TURNAROUND_S",
    "RTU_EXCEPTION_LEN",
    "LineReplyTimes",
    "ReplyTimes",
    "SilenceLearner",
    "TurnaroundRecord",
    "exception_chars",
    "reply_chars",
]

MAX_TURNAROUND_S = 0.1  # replies came after 20-40 ms (HW); allow for a slow one
RTU_EXCEPTION_LEN = 5  # addr · fc|0x80 · code · CRC
ASCII_EXCEPTION_LEN = 11  # ':' · 8 hex digits · CR LF
REPLY_WINDOW = 64  # reply-time samples kept per slave (the wait is their p99 + a margin)
MIN_REPLY_SAMPLES = 8  # until then every attempt waits the open-time timeout
WAIT_FLOOR_S = 0.05  # a learned wait is never under the wire time + 50 ms (docs/protocol.md, §9.4)
WAIT_MARGIN_S = 0.020  # over the p99, at least this …
WAIT_MARGIN_FRACTION = 0.5  # … or this fraction of it
BOOST_DECAY = 0.95  # a late-reply boost fades by this factor per new sample
SILENCE_STEP_S = 0.010  # raise per piece of evidence
SILENCE_CAP_S = 0.250  # never learn more than this
SILENCE_DECAY_S = 0.001  # decay step, back towards the open-time silence …
SILENCE_DECAY_EVERY = 200  # … once per this many answered tight attempts
SILENCE_WINDOW = 8  # attempts remembered per class (tight / loose)
SILENCE_EVIDENCE = 7  # tight attempts of the window unanswered: the silence is too short
SILENCE_LOOSE_MIN = 4  # loose attempts needed to compare with …
SILENCE_LOOSE_MAX_MISS = 0.25  # … of which at most this fraction unanswered
TIGHT_SLACK_S = 0.005  # a request within this of the silence followed it tightly
LOOSE_EXTRA_S = 0.020  # a request this much past the silence followed a longer one


def reply_chars(framing: ProtocolKind, request_pdu: bytes) -> int:
    """Characters of the normal reply to ``request_pdu`` (reads: from the count; else 5 bytes)."""
    fc = request_pdu[0]
    count = int.from_bytes(request_pdu[3:5], "big") if len(request_pdu) >= 5 else 0
    if fc in (0x01, 0x02):
        pdu_len = 2 + math.ceil(count / 8)
    elif fc in (0x03, 0x04):
        pdu_len = 2 + 2 * count
    else:
        pdu_len = 5  # FC05 and FC08 sub 0 echo their request
    return adu_chars(framing, pdu_len)


def adu_chars(framing: ProtocolKind, pdu_len: int) -> int:
    """Characters on the wire of an ADU carrying a ``pdu_len``-byte PDU: RTU address + PDU +
    CRC; ASCII ``:`` + hex of address, PDU and LRC + CR LF."""
    if framing is ProtocolKind.MODBUS_RTU:
        return 1 + pdu_len + 2
    return 1 + 2 * (1 + pdu_len + 1) + 2


def exception_chars(framing: ProtocolKind) -> int:
    """Characters of an exception reply in ``framing``."""
    return RTU_EXCEPTION_LEN if framing is ProtocolKind.MODBUS_RTU else ASCII_EXCEPTION_LEN


class ReplyTimes:
    """One slave's measured reply times, as the part beyond the wire time (its *excess*).

    The *allowance* an attempt waits beyond the wire time is the p99 of the last 64 excesses
    plus a margin (20 ms or half of it, whichever is more), never under 50 ms, and never under
    the *boost* a late reply left (see :meth:`boost_after_late_reply`); None until 8 replies
    were timed.
    """

    __slots__ = ("_allowance", "_samples", "boost", "boosts")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=REPLY_WINDOW)
        self._allowance: float | None = None
        self.boost = 0.0
        self.boosts = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, excess: float) -> None:
        self._samples.append(max(0.0, excess))
        self.boost *= BOOST_DECAY
        self._allowance = None

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the recorded excesses; None when empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1]

    def allowance(self) -> float | None:
        """Seconds an attempt waits beyond the wire time; None until enough samples."""
        if len(self._samples) < MIN_REPLY_SAMPLES:
            return None
        if self._allowance is None:
            p99 = self.percentile(0.99) or 0.0
            margin = max(WAIT_MARGIN_S, WAIT_MARGIN_FRACTION * p99)
            self._allowance = max(p99 + margin, WAIT_FLOOR_S)
        return max(self._allowance, self.boost)

    def boost_after_late_reply(self) -> float:
        """A reply came after an attempt gave up on it: wait at least twice as long from now
        on (the boost fades as new replies are timed, which by then cover the slower
        replies). Returns the new boost."""
        current = self.allowance()
        base = current if current is not None else WAIT_FLOOR_S
        self.boost = 2.0 * base
        self.boosts += 1
        return self.boost


class LineReplyTimes:
    """The :class:`ReplyTimes` of every slave on one line, and which slaves are *watched*: an
    attempt gave up on them after a learned wait with nothing received, so stale bytes before
    their next transaction mean the wait was too short.

    Args:
        char_time: seconds per character on the line (the wire time of request and reply).
    """

    __slots__ = ("_by_address", "_char_time", "_watched")

    def __init__(self, char_time: float) -> None:
        self._char_time = char_time
        self._by_address: dict[int, ReplyTimes] = {}
        self._watched: set[int] = set()

    def of(self, address: int) -> ReplyTimes:
        """The record of the slave at ``address`` (created empty)."""
        times = self._by_address.get(address)
        if times is None:
            times = self._by_address[address] = ReplyTimes()
        return times

    def learned_wait(self, address: int, request_chars: int, reply_chars: int) -> float | None:
        """The wire time of request and reply plus the slave's allowance; None until learned."""
        allowance = self.of(address).allowance()
        if allowance is None:
            return None
        return (request_chars + reply_chars) * self._char_time + allowance

    def learn(self, address: int, elapsed: float, request_chars: int, reply_chars: int) -> None:
        """One reply that surely answered its own attempt, ``elapsed`` s after its start."""
        self.of(address).add(elapsed - (request_chars + reply_chars) * self._char_time)

    def watch(self, address: int) -> None:
        self._watched.add(address)

    def unwatch(self, address: int) -> None:
        self._watched.discard(address)

    def late_bytes(self) -> list[tuple[int, float]]:
        """Stale bytes arrived: boost every watched slave; returns (address, new boost) each."""
        boosted = [(a, self.of(a).boost_after_late_reply()) for a in self._watched]
        self._watched.clear()
        return boosted


class TurnaroundRecord:
    """The smallest and largest turnaround measured on one line (replies that cannot be stale)."""

    __slots__ = ("fastest", "slowest")

    def __init__(self) -> None:
        self.fastest: float | None = None
        self.slowest: float | None = None

    def learn(self, turnaround: float | None) -> None:
        """Record the turnaround of a reply known to answer its own request."""
        if turnaround is None:
            return
        if self.fastest is None or turnaround < self.fastest:
            self.fastest = turnaround
        if self.slowest is None or turnaround > self.slowest:
            self.slowest = turnaround

    def is_too_early(self, turnaround: float | None, char_time: float) -> bool:
        """Whether a reply that began ``turnaround`` s after its request cannot answer it:
        sooner than the fastest turnaround measured minus one character time."""
        if turnaround is None or self.fastest is None:
            return False
        return turnaround < self.fastest - char_time


class SilenceLearner:
    """The pre-request silence of one line and the evidence that moves it (module docstring).

    Args:
        base_s: the open-time silence; the learned one never falls below it.
    """

    __slots__ = ("_answered_tight", "_loose", "_tight", "base_s", "raises", "silence_s")

    def __init__(self, base_s: float) -> None:
        self.base_s = base_s
        self.silence_s = base_s
        self.raises = 0
        self._tight: deque[bool] = deque(maxlen=SILENCE_WINDOW)  # True = unanswered
        self._loose: deque[bool] = deque(maxlen=SILENCE_WINDOW)
        self._answered_tight = 0

    def observe(self, gap: float, answered: bool) -> bool:
        """One attempt that followed ``gap`` seconds of quiet; True when the silence was raised.

        A *tight* attempt followed the current silence closely; a *loose* one clearly more.
        Answered tight attempts let the silence decay, slowly, towards the open-time one.
        """
        silence = self.silence_s
        if gap < silence + TIGHT_SLACK_S:
            self._tight.append(not answered)
            if answered:
                self._answered_tight += 1
                if self._answered_tight >= SILENCE_DECAY_EVERY:
                    self._answered_tight = 0
                    self.silence_s = max(self.base_s, silence - SILENCE_DECAY_S)
                return False
            return self._maybe_raise()
        if gap >= silence + LOOSE_EXTRA_S:
            self._loose.append(not answered)
        return False

    def _maybe_raise(self) -> bool:
        if len(self._tight) < SILENCE_WINDOW or sum(self._tight) < SILENCE_EVIDENCE:
            return False
        if len(self._loose) < SILENCE_LOOSE_MIN:
            return False
        if sum(self._loose) > SILENCE_LOOSE_MAX_MISS * len(self._loose):
            return False  # longer silences fail as often: a loss, not the silence
        if self.silence_s >= SILENCE_CAP_S:
            return False
        self.silence_s = min(SILENCE_CAP_S, self.silence_s + SILENCE_STEP_S)
        self.raises += 1
        self._tight.clear()
        self._answered_tight = 0
        return True
