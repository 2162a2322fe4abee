"""One Modbus serial line: the silence, the late-reply window, the fence and the probe (private).

Theory of operation
-------------------
**The line.** A :class:`ModbusLine` is one serial line (one port): the transport, one
``anymodbus.Bus`` over it, a lock and the time of the last byte that crossed the line. Several
:class:`~servomexlib.clients.modbus.ModbusClient` objects — one per slave address — may share a
line; all timing lives in the line, so the rules below hold across slave addresses. Its stream
wrapper stamps every send and receive (anymodbus's reads too), so "last byte" is exact.

**Silence before every request (HW, docs/protocol.md, §9.1).** Through a USB-RS485 adapter the
measured analyser lost 26 % of requests sent back to back and none sent after 50 ms of quiet.
So before *every* request (retries too) the line waits until 50 ms have passed since the last
byte sent or received on it, reading and discarding what arrives meanwhile (stale by
definition; each stale byte restarts the wait). A device that needs more quiet makes the line
learn a longer silence (:class:`~servomexlib.clients.modbus_learning.SilenceLearner`).

**The late-reply window.** anymodbus reports every transaction to the line's observer; after an
uncertain one (:data:`~servomexlib.clients.modbus_outcomes.UNCERTAIN_TRANSACTIONS`) the line
stays quiet until the slowest plausible reply would have arrived, measured from when the request
left (100 ms turnaround + the reply's characters), so late bytes are waited out *before* the
next attempt's response timeout starts. anymodbus's own late-reply window stays at the silence.

**Capture.** :meth:`ModbusLine.begin_capture` / :meth:`~ModbusLine.end_capture` bracket each
attempt: the bytes received and when each read returned, so the reply's turnaround (request
sent → the read with its first byte) and whether it came alone are known (docs/protocol.md, §9.3).

**The fence lives in the line, at the address that may still answer** (docs/protocol.md, §9.3).
Uncertainty is recorded per slave address, so it holds whichever client object talks next.
Before a transaction to X, every *other* uncertain address gets one courtesy fence attempt (its
late reply could collide with X's); one that ignores it gets no more until it has answered
again, so a dead analyser never stalls a multidrop line. Fences and probes (docs/protocol.md
§9.4: one echo attempt, no retry, never leaving the line uncertain) bypass anymodbus, which
would stop at the first frame: a :class:`~servomexlib.clients.modbus_fence.FenceMatcher`
searches the bytes read for the reply.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anymodbus
from anymodbus.framing import get_framer

from ..devices.models import ProtocolKind
from ..errors import ErrorContext, ServomexValidationError
from ..validation import check_non_negative
from .bus_lock import uncontended_bus_lock
from .modbus_fence import FENCE_PREFIX, FenceMatcher, FenceReport, PayloadSource, Suspect
from .modbus_learning import (
    MAX_TURNAROUND_S,
    LineReplyTimes,
    ReplyTimes,
    SilenceLearner,
    TurnaroundRecord,
)
from .modbus_outcomes import UNCERTAIN_TRANSACTIONS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..transport.base import Transport

__all__ = ["FRAMINGS", "SILENCE_S", "ModbusLine", "check_framing"]

_log = logging.getLogger("servomexlib.modbus")

SILENCE_S = 0.05  # HW: 0 ms → 26 % lost, 10-20 ms → 8 %, 50 ms → 0 % (USB-RS485, 19200)
_PROBE_TURNAROUND_S = 0.06  # a probe's turnaround allowance: the analyser answers in 20-40 ms
_PROBE_MARGIN_S = 0.02  # over the slowest turnaround seen, when that exceeds the allowance
_MAX_RTU_ADU = 256
_MAX_ASCII_ADU = 2 * 255 + 3  # ':' + hex(addr · PDU · LRC) + CR LF
_BUS_CEILING_S = 60.0  # anymodbus' maximum request_timeout; ours (fail_after) fires first
_MIN_INTER_CHAR_S = 0.010  # RTU stray-frame drain gap; USB adapters deliver in 1-16 ms bursts
_DISCARD_CHUNK = 256
FRAMINGS = {
    ProtocolKind.MODBUS_RTU: anymodbus.Framing.RTU,
    ProtocolKind.MODBUS_ASCII: anymodbus.Framing.ASCII,
}


def check_framing(kind: ProtocolKind | str) -> ProtocolKind:
    """``kind`` as MODBUS_RTU or MODBUS_ASCII, or ServomexValidationError."""
    try:
        framing = ProtocolKind(kind)
    except ValueError:
        framing = None
    if framing not in FRAMINGS:
        raise ServomexValidationError(
            f"a Modbus client needs framing modbus_rtu or modbus_ascii, got {kind!r}",
            context=ErrorContext(protocol=kind),
        )
    return framing


class _LineStream(anyio.abc.ByteStream):
    """The transport as anymodbus sees it: stamps every byte and records each attempt's reply."""

    def __init__(self, transport: Transport, line: ModbusLine) -> None:
        self._transport = transport
        self._line = line

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        # Forward typed attributes (anyserial's config) so anymodbus can see the port.
        return self._transport.extra_attributes

    async def receive(self, max_bytes: int = 65536) -> bytes:
        # One read of all that came serves anymodbus's piecewise reads (excess pushed back).
        data = await self._transport.receive(max(max_bytes, _DISCARD_CHUNK))
        if len(data) > max_bytes:
            self._transport.pushback(data[max_bytes:])
            data = data[:max_bytes]
        self._line._received(data)
        return data

    async def send(self, item: bytes) -> None:
        try:
            await self._transport.send(item)
        finally:
            self._line._sent()

    async def drain(self) -> None:
        """Wait until the request has left the port (immediate where the transport can't tell)."""
        await self._transport.drain()
        self._line._sent()  # the request left now: replies are timed from here

    async def send_eof(self) -> None:
        await self._transport.send_eof()

    async def aclose(self) -> None:
        await self._transport.aclose()


class ModbusLine:
    """One serial line shared by the :class:`~servomexlib.clients.modbus.ModbusClient` of every
    slave on it.

    Holds the transport, one ``anymodbus.Bus``, the transaction lock, the time of the last
    byte on the line and the late-reply state of every slave on it (module docstring).
    Closing the line closes the transport.

    Args:
        transport: the byte transport (pushed-back bytes are dropped: the Modbus framer never
            sees bytes parked for a continuous reader).
        framing: ``MODBUS_RTU`` or ``MODBUS_ASCII``.
        silence_s: pre-request silence (default 50 ms, HW).
        on_receive: called with every chunk read from the transport — stale bytes discarded
            during a silence and reply bytes alike — before anything else looks at it. AUTO
            uses it to spot continuous frames while its Modbus probes run; it must not raise.

    Raises:
        ServomexValidationError: a non-Modbus framing or a negative silence.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        framing: ProtocolKind | str,
        silence_s: float = SILENCE_S,
        on_receive: Callable[[bytes], None] | None = None,
    ) -> None:
        self._framing = check_framing(framing)
        silence = check_non_negative("silence_s", silence_s, ErrorContext(port=transport.label))
        self._transport = transport
        self._silence = SilenceLearner(silence)
        self._attempt_gap: float | None = None
        self._on_receive = on_receive
        settings = transport.serial_settings
        char_time = settings.char_time_s if settings is not None else 10 / 19200
        self._char_time = char_time
        self._times = LineReplyTimes(char_time)
        max_adu = _MAX_RTU_ADU if self._framing is ProtocolKind.MODBUS_RTU else _MAX_ASCII_ADU
        # The slowest reply, measured from when its request left: turnaround + the reply's
        # characters (the longest ADU until the client names the expected reply).
        self._late_reply_s = MAX_TURNAROUND_S + max_adu * char_time
        self._last_activity: float | None = None
        self._last_sent: float | None = None
        self._quiet_until = -math.inf
        self._capture: bytearray | None = None
        self._capture_received = False
        self._stale_bytes = 0
        self._closed = False
        self._stream = _LineStream(transport, self)
        self._chunks: list[tuple[float, int]] = []  # captured reads: (arrival, end offset)
        self._attempt_sent = False
        self._suspects: dict[int, Suspect] = {}
        self._fence_enabled = True  # private knob: tests switch fences off to show they matter
        self._payloads = PayloadSource()
        self._turnarounds = TurnaroundRecord()
        self._framer = get_framer(FRAMINGS[self._framing])
        self.lock = anyio.Lock(fast_acquire=True)  # free: taken without a loop trip
        config = anymodbus.BusConfig(
            request_timeout=_BUS_CEILING_S,
            timing=anymodbus.TimingConfig(
                inter_frame_idle=0.0,  # the line enforces the silence itself
                inter_char_idle=max(1.5 * char_time, _MIN_INTER_CHAR_S),
                late_reply_window=silence,
            ),
            retries=anymodbus.RetryPolicy(retries=0),  # the client runs the attempt loop
            reset_input_buffer_before_request=False,  # stale bytes are read and discarded
        )
        self.bus = anymodbus.Bus(
            self._stream,
            config=config,
            framing=FRAMINGS[self._framing],
            on_transaction=self._observe,
        )
        uncontended_bus_lock(self.bus)
        transport.drain_input()

    def __repr__(self) -> str:
        uncertain = ",".join(str(a) for a in self._suspects) or "none"
        return f"<ModbusLine {self._transport.label!r} {self._framing.value} uncertain={uncertain}>"

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def framing(self) -> ProtocolKind:
        return self._framing

    @property
    def char_time_s(self) -> float:
        """Seconds per character on this line (19200 baud 8N1 when the settings are unknown)."""
        return self._char_time

    @property
    def silence_s(self) -> float:
        """The pre-request silence now: the open-time one, or more once the line learned that
        its device needs it (docs/protocol.md, §9.1, "Learned silence")."""
        return self._silence.silence_s

    @property
    def base_silence_s(self) -> float:
        """The open-time silence: the learned one never falls below it."""
        return self._silence.base_s

    @property
    def silence_raises(self) -> int:
        """How often the silence was raised on evidence."""
        return self._silence.raises

    @property
    def stale_bytes(self) -> int:
        """Bytes read and discarded during pre-request silences and fences."""
        return self._stale_bytes

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def uncertain_addresses(self) -> tuple[int, ...]:
        """Slave addresses whose next transaction must be preceded by a fence."""
        return tuple(self._suspects)

    @property
    def min_turnaround_s(self) -> float | None:
        """The smallest request-to-reply time measured on this line (None before any)."""
        return self._turnarounds.fastest

    def encode_adu(self, slave_address: int, pdu: bytes) -> bytes:
        """The ADU the line would send for ``pdu`` to ``slave_address``."""
        return self._framer.encode_adu(slave_address=slave_address, pdu=pdu)

    async def aclose(self) -> None:
        """Close the Bus and the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.bus.aclose()

    # -- what the line learns (docs/protocol.md, §9.1, §9.3, §9.4) --------------------------

    def reply_times(self, address: int) -> ReplyTimes:
        """The reply-time record of the slave at ``address`` (created empty)."""
        return self._times.of(address)

    def learned_wait(self, address: int, request_chars: int, reply_chars: int) -> float | None:
        """How long an attempt at ``address`` waits for a reply of ``reply_chars`` when the
        caller gave no per-call timeout (None until enough replies were timed)."""
        return self._times.learned_wait(address, request_chars, reply_chars)

    def learn_reply(
        self, address: int, elapsed: float, request_chars: int, reply_chars: int
    ) -> None:
        """Record one reply that surely answered its own request, ``elapsed`` s after the
        attempt's start."""
        self._times.learn(address, elapsed, request_chars, reply_chars)

    def watch_for_late_reply(self, address: int) -> None:
        """An attempt gave up after a learned wait with nothing received: if bytes arrive late
        (stale) before the slave's next transaction, the wait was too short — boost it."""
        self._times.watch(address)

    def end_late_watch(self, address: int) -> None:
        self._times.unwatch(address)

    def note_silence_outcome(self, answered: bool) -> None:
        """Classify the attempt just made by the silence before it and learn from it
        (``SilenceLearner.observe``)."""
        gap, self._attempt_gap = self._attempt_gap, None
        if gap is None:
            return
        old = self._silence.silence_s
        if self._silence.observe(gap, answered):
            _log.warning(
                "%s: requests after %.0f ms of silence go unanswered, after longer ones they "
                "are answered: silence raised to %.0f ms",
                self._transport.label,
                1000 * old,
                1000 * self._silence.silence_s,
            )

    def is_too_early(self, turnaround: float | None) -> bool:
        """Whether a reply that began ``turnaround`` s after its request cannot answer it:
        sooner than the smallest turnaround measured on this line minus one character."""
        return self._turnarounds.is_too_early(turnaround, self._char_time)

    def learn_turnaround(self, turnaround: float | None) -> None:
        """Record the turnaround of a reply known to answer its own request."""
        self._turnarounds.learn(turnaround)

    def _count_stale(self, n: int) -> None:
        if n <= 0:
            return
        self._stale_bytes += n
        for address, boosted in self._times.late_bytes():
            label, ms = self._transport.label, 1000 * boosted
            _log.info(
                "%s: a reply came after its attempt gave up: waits at address %d now "
                "at least %.0f ms beyond the wire time", label, address, ms
            )  # fmt: skip

    # -- timing (call with the lock held) -------------------------------------------------

    async def wait_silence(self) -> None:
        """Wait for ``silence_s`` of quiet since the last byte (and any late-reply window).

        Bytes arriving meanwhile are stale: they are read, counted, dropped, and restart the
        wait. A line opened just now counts as active now (its past is unknown).
        """
        now = anyio.current_time()
        if self._last_activity is None:
            self._last_activity = now
        while True:
            until = max(self._last_activity + self._silence.silence_s, self._quiet_until)
            if now >= until:
                self._attempt_gap = now - self._last_activity
                return
            with anyio.move_on_after(until - now):
                data = await self._transport.receive(_DISCARD_CHUNK)
                self._received(data, stale=True)
            now = anyio.current_time()

    def begin_capture(self, reply_chars: int | None = None) -> None:
        """Start recording the attempt's reply; ``reply_chars`` sizes its late-reply window."""
        self._capture = bytearray()
        self._capture_received = False
        self._chunks.clear()
        self._attempt_sent = False
        if reply_chars is not None:
            self._late_reply_s = MAX_TURNAROUND_S + reply_chars * self._char_time

    def end_capture(self) -> bytes | None:
        data, self._capture = self._capture, None
        return bytes(data) if data else None

    @property
    def capture_received(self) -> bool:
        """Whether any byte arrived during the current (or last) attempt's capture."""
        return self._capture_received

    @property
    def attempt_sent(self) -> bool:
        """Whether the current attempt has started sending its request (a reply may follow)."""
        return self._attempt_sent

    def reply_turnaround(self, reply_len: int) -> float | None:
        """Seconds from the request leaving to the read that brought the reply's first byte.

        The reply is the capture's last ``reply_len`` bytes (the framers read exactly to the
        end of the frame). None when nothing is known.
        """
        if self._capture is None or self._last_sent is None:
            return None
        start = max(len(self._capture) - reply_len, 0)
        for at, end in self._chunks:
            if end > start:
                return at - self._last_sent
        return None

    def reply_alone(self, reply_len: int) -> bool:
        """Whether the attempt received nothing but its reply (its timing is the slave's)."""
        return self._capture is not None and len(self._capture) == reply_len

    async def another_reply_follows(self) -> bool:
        """After an early reply: does anything follow it before a reply to the request would
        have begun (its slowest turnaround since the request left, 100 ms before any, plus the
        silence)? True when a byte came: it and all up to the silence are read off as stale.
        """
        now = anyio.current_time()
        slowest = self._turnarounds.slowest
        slowest = MAX_TURNAROUND_S if slowest is None else slowest
        sent = now if self._last_sent is None else self._last_sent
        deadline = max(now, sent + slowest) + self._silence.silence_s
        came = False
        with anyio.move_on_after(deadline - now):
            data = await self._transport.receive(_DISCARD_CHUNK)
            self._received(data, stale=True)
            came = True
        if came:
            await self.wait_silence()
        return came

    def is_uncertain(self, address: int) -> bool:
        """Whether ``address`` must be fenced before its next transaction."""
        return address in self._suspects

    def mark_uncertain(self, address: int) -> None:
        """A reply from ``address`` may still be on its way: fence before its next transaction."""
        if address not in self._suspects:
            self._suspects[address] = Suspect(anyio.current_time())

    def note_payload(self, payload: bytes) -> None:
        """Remember an FC08 payload sent on this line, so no fence reuses it soon."""
        self._payloads.note(payload)

    def _received(self, data: bytes, *, stale: bool = False) -> None:
        now = self._note_activity(data)
        if stale:
            self._count_stale(len(data))
            _log.debug("discarded %d stale byte(s) on %s", len(data), self._transport.label)
        elif self._capture is not None:
            self._capture += data
            self._capture_received = self._capture_received or bool(data)
            self._chunks.append((now, len(self._capture)))

    def _note_activity(self, data: bytes) -> float:
        now = self._last_activity = anyio.current_time()
        if self._on_receive is not None and data:
            self._on_receive(data)
        return now

    def _sent(self) -> None:
        self._last_activity = self._last_sent = anyio.current_time()
        self._attempt_sent = True

    def _open_late_window(self, sent: float, ended: float, reply_chars: int) -> None:
        """After an unanswered echo: quiet until a late reply to it would have arrived."""
        until = max(
            ended + self._silence.silence_s,
            sent + MAX_TURNAROUND_S + reply_chars * self._char_time,
        )
        self._quiet_until = max(self._quiet_until, until)

    def _observe(self, info: anymodbus.TransactionInfo) -> None:
        """anymodbus transaction observer: open the late-reply window after uncertain attempts."""
        if info.outcome not in UNCERTAIN_TRANSACTIONS or info.sent_at is None:
            return
        until = max(info.ended_at + self._silence.silence_s, info.sent_at + self._late_reply_s)
        self._quiet_until = max(self._quiet_until, until)

    # -- echo exchanges: the fence and the probe (call with the lock held) -------------------

    async def _echo(self, address: int, wait: float) -> float | None:
        """One FC08 echo with a fresh payload: seconds from handing it to the port until its
        reply was complete, or None after ``wait``. Every other byte is stale; an echo that came
        alone times the slave; unanswered, the next request waits out a late echo.
        """
        request = self.encode_adu(address, FENCE_PREFIX + self._payloads.fresh())
        matcher = FenceMatcher(self._framing, address, request)
        started = anyio.current_time()
        sent = started
        done_at: float | None = None
        try:
            await self._stream.send(request)  # stamps _last_sent (again after the drain)
            await self._stream.drain()
            sent = self._last_sent if self._last_sent is not None else started
            with anyio.move_on_after(max(0.0, started + wait - anyio.current_time())):
                while done_at is None:
                    data = await self._transport.receive(_DISCARD_CHUNK)
                    now = self._note_activity(data)
                    if matcher.feed(data, now):
                        done_at = now
        finally:
            if matcher.stale:
                self._count_stale(matcher.stale)
                _log.debug(
                    "echo on %s discarded %d stale byte(s)", self._transport.label, matcher.stale
                )
            if done_at is None:
                self._open_late_window(sent, anyio.current_time(), len(request))
        if done_at is None:
            return None
        if matcher.timed_alone and matcher.began is not None:
            # An echo that queued behind stale replies times them, not the slave.
            self.learn_turnaround(matcher.began - sent)
            self.learn_reply(address, done_at - started, len(request), len(request))
        return done_at - started

    async def settle(
        self, address: int, timeout: float, *, attempts: int, learned: bool = False
    ) -> FenceReport:
        """Fence the line before a new transaction to ``address`` (module docstring): one
        courtesy attempt at every *other* uncertain address that has not ignored one, then, if
        ``address`` is uncertain, its own fence of up to ``attempts`` attempts (``own_failed``
        when none was answered: its request must not be sent). With ``learned`` (no per-call
        timeout) attempts wait the slave's learned wait, except the last of its own fence.

        Raises:
            ServomexConnectionError: the port failed or closed.
        """
        report = FenceReport()
        if not self._fence_enabled or not self._suspects:
            return report
        for other, suspect in list(self._suspects.items()):
            courtesy = other != address and not suspect.courtesy_failed
            if courtesy and not await self._fence(
                other, timeout, 1, report, learned=learned, courtesy=True
            ):
                suspect.courtesy_failed = True
        if address in self._suspects and not await self._fence(
            address, timeout, attempts, report, learned=learned
        ):
            report.own_failed = True
        return report

    async def _fence(
        self,
        address: int,
        timeout: float,
        attempts: int,
        report: FenceReport,
        *,
        learned: bool,
        courtesy: bool = False,
    ) -> bool:
        echo_chars = len(self.encode_adu(address, FENCE_PREFIX + b"\x00\x00"))
        for attempt in range(attempts):
            report.attempts += 1
            await self.wait_silence()
            wait = timeout
            if learned and (courtesy or attempt + 1 < attempts):
                short = self.learned_wait(address, echo_chars, echo_chars)
                if short is not None and short < timeout:
                    wait = short
            took = await self._echo(address, wait)
            self.note_silence_outcome(took is not None)
            if took is not None:
                self._suspects.pop(address, None)
                report.completed += 1
                return True
            if wait < timeout:
                report.short_failed += 1
                self.watch_for_late_reply(address)  # an echo after it: the wait was too short
            label = self._transport.label
            _log.debug(
                "%s: fence attempt %d/%d at address %d unanswered", label, attempt + 1, attempts,
                address
            )  # fmt: skip
        report.failed += 1
        _log.info(
            "%s: no reply to the fence at address %d after %d attempt(s)",
            self._transport.label,
            address,
            attempts,
        )
        return False

    def probe_wait(self, address: int) -> float:
        """The default wait of :meth:`ModbusClient.probe`: the request and its echo on the wire
        plus a turnaround allowance (60 ms, or more when this line has shown slower replies)."""
        chars = 2 * len(self.encode_adu(address, FENCE_PREFIX + b"\x00\x00"))
        allowance = _PROBE_TURNAROUND_S
        slowest = self._turnarounds.slowest
        if slowest is not None:
            allowance = max(allowance, slowest + _PROBE_MARGIN_S)
        return chars * self._char_time + allowance

    async def probe(self, address: int, wait: float) -> float | None:
        """One FC08 echo attempt at ``address`` after the silence; no retry, no fence.

        Returns the seconds until its reply (the echo, or an exception reply 0x88 from
        ``address``) was complete, or None when none came within ``wait``. An unanswered probe
        leaves the line certain (a late echo names its payload: no read takes it as a value).

        Raises:
            ServomexConnectionError: the port failed or closed.
        """
        await self.wait_silence()
        self._attempt_gap = None  # an empty address is no evidence about the silence
        return await self._echo(address, wait)
