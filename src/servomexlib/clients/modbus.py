"""The Modbus RTU/ASCII client: anymodbus bound to our transport (protocol.md §4, §5, §9, §11).

Theory of operation
-------------------
**The line.** A :class:`ModbusLine` is one serial line (one port): the transport, one
``anymodbus.Bus`` over it, a lock and the time of the last byte that crossed the line. Several
:class:`ModbusClient` objects — one per slave address — may share a line; everything about
timing lives in the line, so the rules below hold across a change of slave address.

**Silence before every request (HW).** Through a USB-RS485 adapter the measured analyser lost
26 % of requests sent back to back and none sent after 50 ms of quiet. So before *every*
request — first attempts and retries alike — the line waits until 50 ms have passed since the
last byte sent or received on it, reading whatever arrives meanwhile and throwing it away (a
late reply or noise is stale by definition, and each stale byte restarts the 50 ms; a device
that needs more makes the line learn a longer silence, see "Learned silence"). The line's
stream wrapper stamps every send and receive, so "last byte" is exact, including the
bytes anymodbus itself reads.

**Why we drive single attempts ourselves.** anymodbus's knobs cannot express the rules exactly:

* its ``request_timeout`` is fixed per ``Bus`` (an immutable ``BusConfig``), but our per-call
  ``timeout=`` must override the response timeout of every transaction of that call, and the
  line (and thus the Bus) is shared by clients with different timeouts;
* its inter-frame gap only sleeps; it does not read and discard bytes arriving during the gap,
  and it runs from the end of its own attempts, not from the last byte on the line;
* its retry policy retries every ``ProtocolError`` (including a well-formed reply that does not
  match the request, which we report as ``ServomexProtocolError`` at once) and knows nothing of
  our error mapping.

So the Bus is configured for exactly one attempt per call (``RetryPolicy(retries=0)``), no
inter-frame gap of its own, and a generous ``request_timeout`` ceiling; this module runs the
attempt loop: silence → one ``Slave`` call under ``anyio.fail_after(timeout)`` → classify. Up to
2 retries follow only for the idempotent function codes FC01–04 and FC08 and only after no
reply, a CRC/LRC error or a malformed frame; FC05 is never retried; exception replies are never
retried. There is no deadline around a multi-transaction operation (HW lesson: it cancelled
valid retries mid-sweep).

**Late replies** (api.md §5, "No wrong value from a late reply"). RTU and ASCII carry no
transaction id, and a read reply does not repeat its register address: a reply that arrives
after its request timed out looks exactly like the answer to the next read of the same shape
(I1's block returned as I2's, or the previous poll's values as this poll's). Three rules keep
that from ever producing a value:

* *Retries of the same request* may take a late reply to an earlier attempt: it answers the
  same question, asked after the transaction began.
* *The fence.* An attempt whose outcome leaves a reply possibly in flight — a timeout, a
  checksum or frame error, a mismatched reply, a cancellation once the request started
  out — makes the line *uncertain* for that slave address, and it stays so, whatever
  later attempts of the same transaction bring, until a fence completes. Every new
  transaction (not a retry) to an uncertain address — even one with an identical ADU, such as
  the next poll's FC04 (0, 70) — is preceded by a fence: FC08 sub-function 0 with a fresh
  2-byte payload (a counter from a random start that skips every payload used on this line
  recently, ``AB CD`` and ``00 00`` included). Every byte read before the echo of *that*
  payload is discarded and counted as stale; a serial slave answers in order, so nothing it
  was asked before the fence can arrive after the echo. An exception reply (``0x88``, e.g.
  exception 01 from firmware without FC08) ends the fence too: it is still a reply, so it
  proves the ordering as well (it names no payload, so after an unanswered fence attempt the
  exception taken may be that attempt's and the newer one still on its way — an FC08 reply,
  which no read decodes as a value: it fails that read as mismatched, and the line is
  uncertain again). A fence attempt that times out is retried like any request (a fresh
  payload each time; the echo of an earlier attempt's payload is stale); when none is
  answered the operation fails with ``ServomexTimeoutError`` without sending its request. FC08
  loopbacks themselves are neither fenced nor fences: their echo is checked against their own
  payload, so a late reply cannot become a value.
* *Too early.* No reply is taken on trust that began sooner after its request than this
  line's smallest measured turnaround minus one character time. Such a reply either belongs
  to an older request or is ours and merely faster than any timed so far (the analyser
  answers in 20-40 ms, so the first few timings overstate its floor, and a fixed rule would
  keep rejecting good replies). In order, a stale reply is followed by the reply to our
  request, so the line is listened to for as long as this slave has ever taken to answer
  (plus the silence): if anything arrives, the early reply was stale — it is rejected
  (counted in ``early_replies``), what followed is discarded up to the silence, and the
  request is retried on the now clean line; if nothing does, the early reply was the only
  one in flight, hence ours: it is accepted and becomes the line's new smallest turnaround.
  Nothing is sent for this, and the listening stands in for the silence the next request
  waits anyway. FC08 loopbacks are exempt (their echo names its payload).

  Turnarounds (request sent → the read that brought the reply's first byte) are learned only
  from replies that cannot be stale — fence echoes, first attempts on a certain line, early
  replies proved alone — and only when nothing arrived before them (a reply queued behind
  others times them, not the slave); never from retries, which may take an earlier attempt's
  late reply. The start is not back-dated by the bytes that came in the same read: a TCP
  device server or the unpaced simulator delivers a whole reply at once, and a USB adapter
  holds small replies back for its latency timer, so back-dating would make short and long
  replies disagree; timed this way, all replies of a line are timed alike.

*The fence lives in the line, at the address that may still answer.* Uncertainty is recorded
per slave address on the :class:`ModbusLine`, which every client of that port shares, so it
holds whichever client object or slave address talks next. Another slave's late reply cannot
become this slave's value (the framer drops frames of other addresses), but it can collide
with this slave's reply; so before a transaction to address X, every *other* uncertain address
Y is sent one courtesy fence attempt first. If Y does not answer it, X's transaction goes ahead
(its replies are told apart by address) and Y gets no more courtesy fences until it next
becomes uncertain after having answered — one dead analyser must not stall a multidrop line.
Y's own next transaction still waits for a completed fence at Y, or fails.

anymodbus's own late-reply window stays on (50 ms, the silence): the line learns of uncertain
attempts through the transaction observer and folds the window into its silence, extended to
cover the slowest plausible reply measured from when the request left (turnaround + the reply's
characters), so late bytes are waited out *before* the next attempt's response timeout starts.

**Fast recovery from a lost reply** (api.md §5). A lost reply used to cost the whole response
timeout (1 s by default) although the analyser answers in 20-40 ms. So each slave's reply times
are learned, per slave address on the line (several clients of one slave share them): the time
from an attempt's start to its whole reply, minus the wire time of request and reply — the
slave's *excess*, the same for every reply size. Only replies that surely answer their own
attempt are timed: first attempts on a certain line, retries after attempts that received
nothing at all (a lost request or reply, not a late one), fence and probe echoes — each only
when nothing else arrived with it. When the caller gave no per-call ``timeout``, every attempt
but the last waits ``wire time + allowance``, the allowance being the p99 of the last 64
excesses plus a margin (20 ms or half of it, whichever is more), never less than 50 ms, capped by
the open-time timeout; until 8 replies were timed the open-time timeout is used. The **last**
attempt of a transaction always waits the whole open-time timeout, so a slow but alive device is
never lost, and a dead one costs 2 × learned + 1 × timeout. A per-call ``timeout=`` switches
learned waits off for that call (fences included). Fence attempts follow the same rule; a
courtesy fence at another address waits that slave's learned time.

A short wait can give up on a reply that is merely slow. That is exactly the late reply the
fence handles: the attempt leaves the line uncertain, a retry may take the reply (it answers the
same question), and the next transaction is fenced. So no value can be lost or misattributed;
it costs a retry. And it is evidence: an attempt that gave up after a learned wait with nothing
received is *watched*; if stale bytes arrive before that slave's next transaction starts (in a
silence or a fence), its reply was late, and the slave's allowance is boosted to twice what it
was (the boost fades as new replies are timed, which by then cover the slower ones). A reply
that is simply lost leaves nothing to see, so random loss never lengthens the wait.

**Learned silence.** Some devices need more quiet than 50 ms. Every attempt is classed by the
silence before it: *tight* (within 5 ms of the current silence: the silence was what it waited
for) or *loose* (at least 20 ms more: after an idle period, or a retry after a timeout). When 7
of the last 8 tight attempts went unanswered (no byte at all) while at most a quarter of the
last loose ones did (at least 4 of them), the device is telling us the silence it needs: the
line's silence is raised by 10 ms (up to 250 ms) and the tight record restarts. Random loss
hits tight and loose attempts alike, so it does not raise the silence (7 of 8 lost at 30 % loss
while loose ones get through is a ~0.1 % event). Every 200 answered tight attempts lower the
silence by 1 ms, never below the open-time silence: a device that needs 80 ms gets 80-89 ms,
and loses a few requests (about 7) when the decay probes below 80 ms once per ~2000
transactions. The silence is the line's (one bus, one
rule); sweeps are planned with it (``WireModel.with_silence``). Probes teach nothing about the
silence (an empty address is no evidence). ``statistics()`` shows ``learned_wait_s``,
``silence_s``, the turnaround percentiles and the counters; ``servomex diag link`` prints them.

**Errors** (protocol.md §4.12) are translated here and nowhere else: exception 01/02/other →
``ServomexIllegalFunctionError`` / ``ServomexIllegalDataAddressError`` / ``ServomexModbusError``;
no valid reply after the retries → ``ServomexTimeoutError``; a closed or lost port →
``ServomexConnectionError``; a well-formed reply that does not answer the request →
``ServomexProtocolError``; bad parameters → ``ServomexValidationError`` before any I/O. Every
error carries port, protocol, address, function code, register (or 1-based coil), channel,
the request ADU, the bytes received for it and the time spent.

**Sweeps** follow the :class:`~servomexlib.planner.ReadPlanner`: FC04 reads, channel FC02 reads,
then FC02 (1000, 16). A slot whose name and unit are cached (by ``identify()`` or by its first
read) is read value-only — its 2 value registers, not its 7-register block — and its reading
takes name and unit from the cache, with ``raw`` the 4 value bytes as received; a slot read for
the first time is read whole, which fills the cache. ``read_channel`` always reads the whole
block (protocol.md §5), names still from the cache; only ``identify()`` refreshes it. An
exception 02 is fed to the planner; when that changes the plan the step is re-run once with the
new plan (reads already done are kept). Timeouts never change the plan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anymodbus
from anymodbus.crc import verify_crc
from anymodbus.framing import get_framer
from anymodbus.lrc import verify_lrc

from ..devices.models import (
    AnalyserStatus,
    CalibrationProgress,
    Capability,
    ChannelId,
    ChannelInfo,
    ChannelStatus,
    DeviceInfo,
    Frame,
    ProtocolKind,
    Reading,
    ValueState,
    _build_reading,
)
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexIllegalDataAddressError,
    ServomexIllegalFunctionError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from ..planner import VALUE_REGISTERS, PlannedRead, ReadFunction, ReadPlanner, WireModel
from ..settings import SerialSettings
from ..units import Unit
from ..wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CAL_GROUPS,
    CAL_STATUS_COUNT,
    CAL_STATUS_PDU,
    CHANNEL_TABLE,
    DISCRETES_PER_CHANNEL,
    REGISTERS_PER_CHANNEL,
    STOP_CALIBRATION_COIL,
    calibration_progress,
    decode_analyser_bits,
    decode_status_bits,
    spec_for,
    start_calibration_coil,
)
from ..wire.registers import (
    decode_channel_block,
    decode_float32_value,
    decode_modbus_name,
    decode_modbus_unit,
    slot_populated,
    words_to_bytes,
)

if TYPE_CHECKING:
    from ..transport.base import Transport

__all__ = [
    "DEFAULT_TIMEOUT",
    "MODEL_NAME",
    "RETRIES",
    "SILENCE_S",
    "ModbusClient",
    "ModbusLine",
    "ModbusStatistics",
]

_log = logging.getLogger("servomexlib.modbus")

SILENCE_S = 0.05  # HW: 0 ms → 26 % lost, 10-20 ms → 8 %, 50 ms → 0 % (USB-RS485, 19200)
RETRIES = 2  # extra attempts for idempotent function codes (LIB)
DEFAULT_TIMEOUT = 1.0  # per-attempt response timeout (LIB)
MODEL_NAME = "4000-series"  # the unit reports no model identity anywhere (protocol.md §13)
LOOPBACK_PAYLOAD_LEN = 2
_MAX_TURNAROUND_S = 0.1  # replies came after 20-40 ms (HW); allow for a slow one
_REPLY_WINDOW = 64  # reply-time samples kept per slave (the wait is their p99 + a margin)
_MIN_REPLY_SAMPLES = 8  # until then every attempt waits the open-time timeout
_WAIT_FLOOR_S = 0.05  # a learned wait is never under the wire time + 50 ms (api.md §5)
_WAIT_MARGIN_S = 0.020  # over the p99, at least this …
_WAIT_MARGIN_FRACTION = 0.5  # … or this fraction of it
_BOOST_DECAY = 0.95  # a late-reply boost fades by this factor per new sample
_SILENCE_STEP_S = 0.010  # raise per piece of evidence
_SILENCE_CAP_S = 0.250  # never learn more than this
_SILENCE_DECAY_S = 0.001  # decay step, back towards the open-time silence …
_SILENCE_DECAY_EVERY = 200  # … once per this many answered tight attempts
_SILENCE_WINDOW = 8  # attempts remembered per class (tight / loose)
_SILENCE_EVIDENCE = 7  # tight attempts of the window unanswered: the silence is too short
_SILENCE_LOOSE_MIN = 4  # loose attempts needed to compare with …
_SILENCE_LOOSE_MAX_MISS = 0.25  # … of which at most this fraction unanswered
_TIGHT_SLACK_S = 0.005  # a request within this of the silence followed it tightly
_LOOSE_EXTRA_S = 0.020  # a request this much past the silence followed a longer one
_PROBE_TURNAROUND_S = 0.06  # a probe's turnaround allowance: the analyser answers in 20-40 ms
_PROBE_MARGIN_S = 0.02  # over the slowest turnaround seen, when that exceeds the allowance
_MAX_RTU_ADU = 256
_MAX_ASCII_ADU = 2 * 255 + 3  # ':' + hex(addr · PDU · LRC) + CR LF
_BUS_CEILING_S = 60.0  # anymodbus' maximum request_timeout; ours (fail_after) fires first
_MIN_INTER_CHAR_S = 0.010  # RTU stray-frame drain gap; USB adapters deliver in 1-16 ms bursts
_DISCARD_CHUNK = 256
_IDEMPOTENT = frozenset({0x01, 0x02, 0x03, 0x04, 0x08})
_FC_READ_COILS = 0x01
_FC_WRITE_COIL = 0x05
_FC_DIAGNOSTICS = 0x08
_FENCE_PREFIX = b"\x08\x00\x00"  # FC08 sub-function 0 "return query data" (protocol.md §4.10)
_RESERVED_PAYLOADS = frozenset({b"\xab\xcd", b"\x00\x00"})  # AUTO's probe, loopback's default
_RECENT_PAYLOADS = 64  # payloads remembered per line, so a fence never reuses a recent one
_PAYLOAD_STEP = 0x9E37  # odd: the counter visits all 65536 payloads before repeating
_RTU_EXCEPTION_LEN = 5  # addr · fc|0x80 · code · CRC
_ASCII_EXCEPTION_LEN = 11  # ':' · 8 hex digits · CR LF
_UNCERTAIN = frozenset(
    {
        anymodbus.TransactionOutcome.TIMEOUT,
        anymodbus.TransactionOutcome.CHECKSUM_ERROR,
        anymodbus.TransactionOutcome.UNEXPECTED_RESPONSE,
        anymodbus.TransactionOutcome.FRAME_ERROR,
        anymodbus.TransactionOutcome.CANCELLED,
        anymodbus.TransactionOutcome.ERROR,
    }
)
_FRAMINGS = {
    ProtocolKind.MODBUS_RTU: anymodbus.Framing.RTU,
    ProtocolKind.MODBUS_ASCII: anymodbus.Framing.ASCII,
}


def _framing(kind: ProtocolKind | str) -> ProtocolKind:
    try:
        framing = ProtocolKind(kind)
    except ValueError:
        framing = None
    if framing not in _FRAMINGS:
        raise ServomexValidationError(
            f"a Modbus client needs framing modbus_rtu or modbus_ascii, got {kind!r}",
            context=ErrorContext(protocol=kind),
        )
    return framing


def _check_timeout(timeout: float | None, what: str = "timeout") -> None:
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ServomexValidationError(
            f"{what} must be a positive number of seconds, got {timeout!r}"
        )


class _LineStream(anyio.abc.ByteStream):
    """The transport as anymodbus sees it: stamps every byte and records each attempt's reply."""

    def __init__(self, transport: Transport, line: ModbusLine) -> None:
        self._transport = transport
        self._line = line

    @property
    def extra_attributes(self) -> Any:
        # Forward typed attributes (anyserial's config) so anymodbus can see the port.
        extra = getattr(self._transport, "extra_attributes", None)
        return extra if extra is not None else {}

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._transport.receive(max_bytes)
        self._line._received(data)
        return data

    async def send(self, item: bytes) -> None:
        try:
            await self._transport.send(item)
        finally:
            self._line._sent()

    async def drain(self) -> None:
        """Wait until the request has left the port when the transport can tell (RS485)."""
        drain = getattr(self._transport, "drain", None)
        if drain is not None:
            await drain()
            self._line._sent()  # the request left now: replies are timed from here

    async def send_eof(self) -> None:
        await self._transport.send_eof()

    async def aclose(self) -> None:
        await self._transport.aclose()


class ModbusLine:
    """One serial line shared by the :class:`ModbusClient` of every slave on it.

    Holds the transport, one ``anymodbus.Bus``, the lock that serialises transactions, the
    time of the last byte on the line (so the 50 ms silence holds across a change of slave
    address) and the late-reply state of every slave on it: which addresses are uncertain and
    must be fenced before their next transaction, the payloads used recently and the smallest
    turnaround measured (see the module docstring). Closing the line closes the transport.

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
        self._framing = _framing(framing)
        if not math.isfinite(silence_s) or silence_s < 0:
            raise ServomexValidationError(f"silence_s must be >= 0, got {silence_s!r}")
        self._transport = transport
        self._base_silence = float(silence_s)
        self._silence = float(silence_s)
        self._silence_raises = 0
        self._tight: deque[bool] = deque(maxlen=_SILENCE_WINDOW)  # True = unanswered
        self._loose: deque[bool] = deque(maxlen=_SILENCE_WINDOW)
        self._answered_tight = 0
        self._attempt_gap: float | None = None
        self._replies: dict[int, _ReplyTimes] = {}
        self._late_watch: set[int] = set()
        self._on_receive = on_receive
        settings = transport.serial_settings
        char_time = settings.char_time_s if settings is not None else 10 / 19200
        self._char_time = char_time
        max_adu = _MAX_RTU_ADU if self._framing is ProtocolKind.MODBUS_RTU else _MAX_ASCII_ADU
        # The slowest reply, measured from when its request left: turnaround + the reply's
        # characters (the longest ADU until the client names the expected reply).
        self._late_reply_s = _MAX_TURNAROUND_S + max_adu * char_time
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
        self._suspects: dict[int, _Suspect] = {}
        self._fence_enabled = True  # private knob: tests switch fences off to show they matter
        self._recent_payloads: deque[bytes] = deque(maxlen=_RECENT_PAYLOADS)
        # A random start: a new line (a reconnect) does not repeat the last session's payloads.
        self._payload_counter = random.getrandbits(16)
        self._min_turnaround: float | None = None
        self._max_turnaround: float | None = None
        self.lock = anyio.Lock()
        config = anymodbus.BusConfig(
            request_timeout=_BUS_CEILING_S,
            timing=anymodbus.TimingConfig(
                inter_frame_idle=0.0,  # the line enforces the silence itself
                inter_char_idle=max(1.5 * char_time, _MIN_INTER_CHAR_S),
                late_reply_window=self._silence,
            ),
            retries=anymodbus.RetryPolicy(retries=0),  # the client runs the attempt loop
            reset_input_buffer_before_request=False,  # stale bytes are read and discarded
        )
        self.bus = anymodbus.Bus(
            self._stream,
            config=config,
            framing=_FRAMINGS[self._framing],
            on_transaction=self._observe,
        )
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
    def silence_s(self) -> float:
        """The pre-request silence now: the open-time one, or more once the line learned that
        its device needs it (module docstring, "Learned silence")."""
        return self._silence

    @property
    def base_silence_s(self) -> float:
        """The open-time silence: the learned one never falls below it."""
        return self._base_silence

    @property
    def silence_raises(self) -> int:
        """How often the silence was raised on evidence."""
        return self._silence_raises

    def reply_times(self, address: int) -> _ReplyTimes:
        """The reply-time record of the slave at ``address`` (created empty)."""
        times = self._replies.get(address)
        if times is None:
            times = self._replies[address] = _ReplyTimes()
        return times

    def learned_wait(self, address: int, request_chars: int, reply_chars: int) -> float | None:
        """How long an attempt at ``address`` waits for a reply of ``reply_chars`` when the
        caller gave no per-call timeout: the wire time of the request and the reply plus the
        slave's learned allowance; None until enough replies were timed."""
        allowance = self.reply_times(address).allowance()
        if allowance is None:
            return None
        return (request_chars + reply_chars) * self._char_time + allowance

    def learn_reply(
        self, address: int, elapsed: float, request_chars: int, reply_chars: int
    ) -> None:
        """Record one reply that surely answered its own request: ``elapsed`` seconds from
        the attempt's start to the whole reply; the allowance learns the part beyond the wire
        time of request and reply."""
        excess = elapsed - (request_chars + reply_chars) * self._char_time
        self.reply_times(address).add(excess)

    def watch_for_late_reply(self, address: int) -> None:
        """An attempt gave up after a learned wait with nothing received: if bytes arrive late
        (stale) before the slave's next transaction, the wait was too short — boost it."""
        self._late_watch.add(address)

    def end_late_watch(self, address: int) -> None:
        self._late_watch.discard(address)

    def _count_stale(self, n: int) -> None:
        if n <= 0:
            return
        self._stale_bytes += n
        if self._late_watch:
            for address in self._late_watch:
                boosted = self.reply_times(address).boost_after_late_reply()
                _log.info(
                    "%s: a reply came after its attempt gave up: waits at address %d now "
                    "at least %.0f ms beyond the wire time",
                    self._transport.label,
                    address,
                    1000 * boosted,
                )
            self._late_watch.clear()

    def note_silence_outcome(self, answered: bool) -> None:
        """Classify the attempt just made by the silence before it and learn from it.

        A *tight* attempt followed the current silence closely (the silence was what it
        waited for); a *loose* one followed clearly more. When nearly all recent tight
        attempts went unanswered while loose ones were answered, the device needs more quiet
        than it is given: raise the silence one step (capped). Answered tight attempts let it
        decay, slowly, towards the open-time silence (never below).
        """
        gap, self._attempt_gap = self._attempt_gap, None
        if gap is None:
            return
        if gap < self._silence + _TIGHT_SLACK_S:
            self._tight.append(not answered)
            if answered:
                self._answered_tight += 1
                if self._answered_tight >= _SILENCE_DECAY_EVERY:
                    self._answered_tight = 0
                    self._silence = max(self._base_silence, self._silence - _SILENCE_DECAY_S)
                return
            self._maybe_raise_silence()
        elif gap >= self._silence + _LOOSE_EXTRA_S:
            self._loose.append(not answered)

    def _maybe_raise_silence(self) -> None:
        if len(self._tight) < _SILENCE_WINDOW or sum(self._tight) < _SILENCE_EVIDENCE:
            return
        if len(self._loose) < _SILENCE_LOOSE_MIN:
            return
        if sum(self._loose) > _SILENCE_LOOSE_MAX_MISS * len(self._loose):
            return  # longer silences fail as often: a loss, not the silence
        if self._silence >= _SILENCE_CAP_S:
            return
        old = self._silence
        self._silence = min(_SILENCE_CAP_S, self._silence + _SILENCE_STEP_S)
        self._silence_raises += 1
        self._tight.clear()
        self._answered_tight = 0
        _log.warning(
            "%s: requests after %.0f ms of silence go unanswered, after longer ones they are "
            "answered: silence raised to %.0f ms",
            self._transport.label,
            1000 * old,
            1000 * self._silence,
        )

    @property
    def stale_bytes(self) -> int:
        """Bytes read and discarded during pre-request silences."""
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
        return self._min_turnaround

    def encode_adu(self, slave_address: int, pdu: bytes) -> bytes:
        """The ADU the line would send for ``pdu`` to ``slave_address``."""
        return get_framer(_FRAMINGS[self._framing]).encode_adu(slave_address=slave_address, pdu=pdu)

    async def aclose(self) -> None:
        """Close the Bus and the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.bus.aclose()

    # -- timing (call with the lock held) -------------------------------------------------

    async def wait_silence(self) -> None:
        """Wait for ``silence_s`` of quiet since the last byte (and any late-reply window).

        Bytes arriving meanwhile are stale: they are read, counted, dropped, and restart the
        wait. A line opened just now counts as active now (its past is unknown).
        """
        if self._last_activity is None:
            self._last_activity = anyio.current_time()
        while True:
            now = anyio.current_time()
            until = max(self._last_activity + self._silence, self._quiet_until)
            if now >= until:
                self._attempt_gap = now - self._last_activity
                return
            with anyio.move_on_after(until - now):
                data = await self._transport.receive(_DISCARD_CHUNK)
                self._received(data, stale=True)

    def begin_capture(self, reply_chars: int | None = None) -> None:
        """Start recording the attempt's reply; ``reply_chars`` sizes its late-reply window."""
        self._capture = bytearray()
        self._capture_received = False
        self._chunks.clear()
        self._attempt_sent = False
        if reply_chars is not None:
            self._late_reply_s = _MAX_TURNAROUND_S + reply_chars * self._char_time

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

    def is_too_early(self, turnaround: float | None) -> bool:
        """Whether a reply that began ``turnaround`` s after its request cannot answer it:
        sooner than the smallest turnaround measured on this line minus one character."""
        floor = self._min_turnaround
        if turnaround is None or floor is None:
            return False
        return turnaround < floor - self._char_time

    def learn_turnaround(self, turnaround: float | None) -> None:
        """Record the turnaround of a reply known to answer its own request."""
        if turnaround is None:
            return
        if self._min_turnaround is None or turnaround < self._min_turnaround:
            self._min_turnaround = turnaround
        if self._max_turnaround is None or turnaround > self._max_turnaround:
            self._max_turnaround = turnaround

    async def another_reply_follows(self) -> bool:
        """After an early reply: does anything follow it? (Call with the lock held.)

        Listens until the slowest turnaround this line has shown (100 ms before any) has
        passed since the request left, and at least ``silence_s`` since now. A reply to the
        request would have begun by then. True when a byte came: it and everything after it,
        up to ``silence_s`` of quiet, is read and counted stale. False when nothing came.
        """
        now = anyio.current_time()
        slowest = _MAX_TURNAROUND_S if self._max_turnaround is None else self._max_turnaround
        sent = now if self._last_sent is None else self._last_sent
        deadline = max(now, sent + slowest) + self._silence
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
            self._suspects[address] = _Suspect(anyio.current_time())

    def note_payload(self, payload: bytes) -> None:
        """Remember an FC08 payload sent on this line, so no fence reuses it soon."""
        self._recent_payloads.append(bytes(payload))

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

    def _open_late_window(self, sent: float | None, ended: float, reply_chars: int) -> None:
        """After an uncertain attempt: quiet until a late reply to it would have arrived."""
        until = ended + self._silence
        if sent is not None:
            until = max(until, sent + _MAX_TURNAROUND_S + reply_chars * self._char_time)
        self._quiet_until = max(self._quiet_until, until)

    # -- the fence (call with the lock held) ----------------------------------------------

    async def settle(
        self, address: int, timeout: float, *, attempts: int, learned: bool = False
    ) -> _FenceReport:
        """Fence the line before a new transaction to ``address`` (module docstring).

        First one courtesy fence attempt at every *other* uncertain address that has not
        already ignored one; then, when ``address`` itself is uncertain, its fence with up to
        ``attempts`` attempts. Returns what was done; ``own_failed`` when ``address`` stayed
        uncertain (its transaction must not be sent). With ``learned`` (no per-call timeout)
        fence attempts wait the fenced slave's learned wait, except the last of ``address``'s
        own fence, which waits ``timeout``; a courtesy attempt always waits the learned one.

        Raises:
            ServomexConnectionError: the port failed or closed.
        """
        report = _FenceReport()
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
        report: _FenceReport,
        *,
        learned: bool,
        courtesy: bool = False,
    ) -> bool:
        echo_chars = len(self.encode_adu(address, _FENCE_PREFIX + b"\x00\x00"))
        for attempt in range(attempts):
            report.attempts += 1
            await self.wait_silence()
            wait = timeout
            if learned and (courtesy or attempt + 1 < attempts):
                short = self.learned_wait(address, echo_chars, echo_chars)
                if short is not None and short < timeout:
                    wait = short
            if await self._fence_attempt(address, wait, short=wait < timeout):
                self._suspects.pop(address, None)
                report.completed += 1
                return True
            if wait < timeout:
                report.short_failed += 1
            _log.debug(
                "%s: fence attempt %d/%d at address %d unanswered",
                self._transport.label,
                attempt + 1,
                attempts,
                address,
            )
        report.failed += 1
        _log.info(
            "%s: no reply to the fence at address %d after %d attempt(s)",
            self._transport.label,
            address,
            attempts,
        )
        return False

    async def _fence_attempt(self, address: int, timeout: float, *, short: bool = False) -> bool:
        """Send one fence; read until its reply (True) or ``timeout`` (False).

        The exchange bypasses anymodbus (which would stop at the first frame): bytes are read
        from the transport and searched for the reply; everything else is stale. ``short``:
        ``timeout`` is a learned wait (an echo after it is evidence that it was too short).
        """
        payload = self._fresh_payload()
        request = self.encode_adu(address, _FENCE_PREFIX + payload)
        matcher = _FenceMatcher(self._framing, address, request)
        started = anyio.current_time()
        await self._stream.send(request)  # stamps _last_sent (again after a drain)
        await self._stream.drain()
        sent = self._last_sent
        done_at: float | None = None
        with anyio.move_on_after(max(0.0, started + timeout - anyio.current_time())):
            while done_at is None:
                data = await self._transport.receive(_DISCARD_CHUNK)
                now = self._note_activity(data)
                if matcher.feed(data, now):
                    done_at = now
        self.note_silence_outcome(done_at is not None)
        if matcher.stale:
            self._count_stale(matcher.stale)
            _log.debug(
                "fence on %s discarded %d stale byte(s)", self._transport.label, matcher.stale
            )
        if done_at is not None:
            # An echo that queued behind stale replies times them, not the slave.
            if (
                matcher.echo
                and not matcher.stale
                and matcher.began is not None
                and sent is not None
            ):
                self.learn_turnaround(matcher.began - sent)
                self.learn_reply(address, done_at - started, len(request), len(request))
            return True
        if short:
            self.watch_for_late_reply(address)
        self._open_late_window(sent, anyio.current_time(), len(request))
        return False

    # -- the probe (call with the lock held) ----------------------------------------------

    def probe_wait(self, address: int) -> float:
        """The default wait of :meth:`ModbusClient.probe`: the request and its echo on the wire
        plus a turnaround allowance (60 ms, or more when this line has shown slower replies)."""
        chars = 2 * len(self.encode_adu(address, _FENCE_PREFIX + b"\x00\x00"))
        allowance = _PROBE_TURNAROUND_S
        if self._max_turnaround is not None:
            allowance = max(allowance, self._max_turnaround + _PROBE_MARGIN_S)
        return chars * self._char_time + allowance

    async def probe(self, address: int, wait: float) -> float | None:
        """One FC08 echo attempt at ``address`` after the silence; no retry, no fence.

        Returns the seconds from handing the request to the port until its reply (the echo of
        a fresh payload, or an exception reply 0x88 from ``address``) was complete, or None
        when none came within ``wait``. Every other byte is stale. An unanswered probe does not
        make the line uncertain (a late echo names its payload, so no read can take it as a
        value); the next request waits until a late echo would have arrived, and whatever
        arrives meanwhile is discarded by its silence.

        Raises:
            ServomexConnectionError: the port failed or closed.
        """
        await self.wait_silence()
        self._attempt_gap = None  # an empty address is no evidence about the silence
        payload = self._fresh_payload()
        request = self.encode_adu(address, _FENCE_PREFIX + payload)
        matcher = _FenceMatcher(self._framing, address, request)
        started = anyio.current_time()
        sent: float | None = None
        done_at: float | None = None
        try:
            await self._stream.send(request)
            await self._stream.drain()
            sent = self._last_sent
            with anyio.move_on_after(max(0.0, started + wait - anyio.current_time())):
                while done_at is None:
                    data = await self._transport.receive(_DISCARD_CHUNK)
                    now = self._note_activity(data)
                    if matcher.feed(data, now):
                        done_at = now
        finally:
            self._count_stale(matcher.stale)
            if done_at is None:
                self._open_late_window(
                    sent if sent is not None else started, anyio.current_time(), len(request)
                )
        if (
            done_at is not None
            and matcher.echo
            and not matcher.stale
            and matcher.began is not None
            and sent is not None
        ):
            self.learn_turnaround(matcher.began - sent)
            self.learn_reply(address, done_at - started, len(request), len(request))
        return None if done_at is None else done_at - started

    def _fresh_payload(self) -> bytes:
        while True:
            self._payload_counter = (self._payload_counter + _PAYLOAD_STEP) & 0xFFFF
            payload = self._payload_counter.to_bytes(2, "big")
            if payload not in _RESERVED_PAYLOADS and payload not in self._recent_payloads:
                self.note_payload(payload)
                return payload

    def _observe(self, info: anymodbus.TransactionInfo) -> None:
        """anymodbus transaction observer: open the late-reply window after uncertain attempts."""
        if info.outcome not in _UNCERTAIN or info.sent_at is None:
            return
        until = max(info.ended_at + self._silence, info.sent_at + self._late_reply_s)
        self._quiet_until = max(self._quiet_until, until)


class _ReplyTimes:
    """One slave's measured reply times, as the part beyond the wire time (its *excess*).

    The excess of a reply — seconds from the start of its attempt to the whole reply, minus the
    characters of request and reply on the wire — is the slave's turnaround plus whatever the
    adapter and the host add; unlike the reply time it is the same for every reply size, so
    one record serves every read. The *allowance* an attempt waits beyond the wire time is the
    p99 of the last 64 excesses plus a margin (20 ms or half of it, whichever is more),
    never under 50 ms, and never under the *boost* a late reply left (see
    :meth:`boost_after_late_reply`); None until 8 replies were timed.
    """

    __slots__ = ("_allowance", "_samples", "boost", "boosts")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_REPLY_WINDOW)
        self._allowance: float | None = None
        self.boost = 0.0
        self.boosts = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, excess: float) -> None:
        self._samples.append(max(0.0, excess))
        self.boost *= _BOOST_DECAY
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
        if len(self._samples) < _MIN_REPLY_SAMPLES:
            return None
        if self._allowance is None:
            p99 = self.percentile(0.99) or 0.0
            margin = max(_WAIT_MARGIN_S, _WAIT_MARGIN_FRACTION * p99)
            self._allowance = max(p99 + margin, _WAIT_FLOOR_S)
        return max(self._allowance, self.boost)

    def boost_after_late_reply(self) -> float:
        """A reply came after an attempt gave up on it: wait at least twice as long from now
        on (the boost fades as new replies are timed, which by then cover the slower
        replies). Returns the new boost."""
        current = self.allowance()
        base = current if current is not None else _WAIT_FLOOR_S
        self.boost = 2.0 * base
        self.boosts += 1
        return self.boost


@dataclasses.dataclass(slots=True)
class _Suspect:
    """An address whose reply may still be in flight."""

    since: float  # when it became uncertain (line clock)
    courtesy_failed: bool = False  # ignored a courtesy fence sent for another address


@dataclasses.dataclass(slots=True)
class _FenceReport:
    """What :meth:`ModbusLine.settle` did before one transaction."""

    completed: int = 0  # fences answered (echo or exception reply)
    failed: int = 0  # fences none of whose attempts was answered
    attempts: int = 0  # fence requests sent
    short_failed: int = 0  # fence attempts that gave up after a learned (shorter) wait
    own_failed: bool = False  # the transaction's own address is still uncertain


class _FenceMatcher:
    """Finds the reply to one fence in the bytes that arrive; the rest is stale.

    The reply is the echo of the fence request (byte for byte, protocol.md §4.10) or an
    exception reply (function code 0x88) from the fenced address with a valid CRC/LRC. The
    buffer is bounded: only the tail that could still begin a reply is kept.
    """

    def __init__(self, framing: ProtocolKind, address: int, request: bytes) -> None:
        self._ascii = framing is ProtocolKind.MODBUS_ASCII
        self._echo = request.upper() if self._ascii else request
        self._exc_head = b":%02X88" % address if self._ascii else bytes((address, 0x88))
        self._exc_len = _ASCII_EXCEPTION_LEN if self._ascii else _RTU_EXCEPTION_LEN
        self._keep = max(len(self._echo), self._exc_len) - 1
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._chunks: deque[tuple[float, int]] = deque()  # (arrival, end offset)
        self.received = 0
        self.match_len = 0
        self.echo = False
        self.began: float | None = None

    @property
    def stale(self) -> int:
        """Bytes received that are not the fence's reply."""
        return self.received - self.match_len

    def feed(self, data: bytes, now: float) -> bool:
        self.received += len(data)
        self._chunks.append((now, self.received))
        self._buf += data.upper() if self._ascii else data
        found = self._find(bytes(self._buf))
        if found is not None:
            index, self.match_len, self.echo = found
            start = self._base + index
            for at, end in self._chunks:
                if end > start:
                    self.began = at  # when the read with the reply's first byte returned
                    break
            return True
        excess = len(self._buf) - self._keep
        if excess > 0:
            del self._buf[:excess]
            self._base += excess
            while len(self._chunks) > 1 and self._chunks[0][1] <= self._base:
                self._chunks.popleft()
        return False

    def _find(self, buf: bytes) -> tuple[int, int, bool] | None:
        best: tuple[int, int, bool] | None = None
        i = buf.find(self._echo)
        if i >= 0:
            best = (i, len(self._echo), True)
        j = buf.find(self._exc_head)
        while j >= 0 and (best is None or j < best[0]):
            frame = buf[j : j + self._exc_len]
            if len(frame) < self._exc_len:
                break  # may still complete
            if self._valid_exception(frame):
                return (j, self._exc_len, False)
            j = buf.find(self._exc_head, j + 1)
        return best

    def _valid_exception(self, frame: bytes) -> bool:
        if not self._ascii:
            return verify_crc(frame)
        if frame[-2:] != b"\r\n":
            return False
        try:
            raw = bytes.fromhex(frame[1:-2].decode("ascii"))
        except ValueError:
            return False
        return verify_lrc(raw)


@dataclasses.dataclass(frozen=True, slots=True)
class ModbusStatistics:
    """Counters of one client (one slave address).

    ``transactions`` counts requests (each once, however many attempts); ``attempts`` every
    request sent; ``retries`` the extra attempts; ``timeouts`` transactions that ended in
    ``ServomexTimeoutError``; ``exceptions`` Modbus exception replies; ``checksum_errors``
    attempts answered with a bad CRC/LRC; ``stale_bytes`` bytes the line discarded — during
    its silences and while waiting for a fence's reply (line-wide: every client of the line
    reports the same number). The late-reply counters (module docstring) count this client's
    transactions: ``fences`` fences completed before them (courtesy fences at other addresses
    included), ``fence_failures`` fences none of whose attempts was answered, ``early_replies``
    replies rejected because they began sooner after their request than the line's fastest
    turnaround minus one character.

    Fast recovery (module docstring): ``short_timeouts`` attempts (fence attempts included)
    that gave up after a learned wait, shorter than the timeout, and were followed by a retry;
    ``learned_wait_s`` how long an attempt waits for this slave beyond the wire time of its
    request and reply (None while the open-time timeout is used); ``silence_s`` the line's
    pre-request silence now (50 ms, or more when learned; line-wide); ``turnaround_p50_s`` /
    ``turnaround_p99_s`` the median and 99th percentile of this slave's measured reply times
    beyond the wire time, over the last 64 replies timed (``reply_samples``; None before any);
    ``silence_raises`` how often the line raised its silence on evidence (line-wide);
    ``wait_boosts`` how often a reply that came after its attempt gave up doubled the wait.
    """

    transactions: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    exceptions: int = 0
    checksum_errors: int = 0
    stale_bytes: int = 0
    fences: int = 0
    fence_failures: int = 0
    early_replies: int = 0
    short_timeouts: int = 0
    learned_wait_s: float | None = None
    silence_s: float = SILENCE_S
    turnaround_p50_s: float | None = None
    turnaround_p99_s: float | None = None
    reply_samples: int = 0
    silence_raises: int = 0
    wait_boosts: int = 0


@dataclasses.dataclass(slots=True)
class _Counters:
    transactions: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    exceptions: int = 0
    checksum_errors: int = 0
    fences: int = 0
    fence_failures: int = 0
    early_replies: int = 0
    short_timeouts: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Timeout:
    """The response timeout of one call: ``seconds`` caps every attempt; ``learned`` when the
    caller gave no per-call timeout, so attempts but the last may wait the learned time."""

    seconds: float
    learned: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _Meta:
    name: str | None
    unit: Unit


@dataclasses.dataclass(slots=True)
class _SweepData:
    registers: dict[ChannelId, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    bits: dict[ChannelId, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    analyser: tuple[bool, ...] | None = None

    def covers(self, read: PlannedRead) -> bool:
        if read.is_analyser:
            return self.analyser is not None
        done = (
            self.registers if read.function_code == ReadFunction.READ_INPUT_REGISTERS else self.bits
        )
        return all(c in done for c in read.channels)


class ModbusClient:
    """One analyser (slave address) in Modbus RTU or ASCII mode; implements ``ControlClient``.

    Args:
        transport_or_line: a transport (the client creates and owns a line over it, and closes
            it in :meth:`aclose`) or an existing :class:`ModbusLine` shared with other slaves
            (not closed by the client).
        framing: ``MODBUS_RTU`` or ``MODBUS_ASCII``; must match a given line's framing.
        address: slave address 1-247.
        timeout: default per-attempt response timeout in seconds.
        device: label for logs.
        planner: the read planner; default one for the line's baud rate and framing.

    Raises:
        ServomexValidationError: bad framing, address or timeout, or a line of another framing.
    """

    capabilities: Capability = (
        Capability.READ_CHANNELS
        | Capability.READ_STATUS
        | Capability.IDENTIFY
        | Capability.AUTOCAL
        | Capability.LOOPBACK
    )

    def __init__(
        self,
        transport_or_line: Transport | ModbusLine,
        *,
        framing: ProtocolKind | str,
        address: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        device: str = "",
        planner: ReadPlanner | None = None,
    ) -> None:
        kind = _framing(framing)
        if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
            raise ServomexValidationError(
                f"Modbus slave address must be 1-247, got {address!r}",
                context=ErrorContext(
                    protocol=kind, address=address if isinstance(address, int) else None
                ),
            )
        _check_timeout(timeout)
        if isinstance(transport_or_line, ModbusLine):
            if transport_or_line.framing is not kind:
                raise ServomexValidationError(
                    f"line speaks {transport_or_line.framing.value}, client asked for {kind.value}",
                    context=ErrorContext(port=transport_or_line.transport.label, protocol=kind),
                )
            self._line = transport_or_line
            self._owns_line = False
        else:
            self._line = ModbusLine(transport_or_line, framing=kind)
            self._owns_line = True
        self.protocol: ProtocolKind = kind
        self.transport: Transport = self._line.transport
        self.address: int = address
        self.device = device or self.transport.label
        self._timeout = float(timeout)
        settings = self.transport.serial_settings
        if planner is None:
            model = (
                WireModel.from_settings(settings, kind)
                if settings is not None
                else WireModel(framing=kind)
            )
            planner = ReadPlanner(model)
        self.read_planner: ReadPlanner = planner
        self._planned_silence = self._line.base_silence_s
        self._slave = self._line.bus.slave(address)
        self._meta: dict[ChannelId, _Meta] = {}
        self._populated: tuple[ChannelId, ...] | None = None
        self._counters = _Counters()
        self._warned_unreadable: set[ChannelId] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<ModbusClient {self.transport.label!r} {self.protocol.value} address={self.address} "
            f"transactions={self._counters.transactions} timeouts={self._counters.timeouts}>"
        )

    @property
    def line(self) -> ModbusLine:
        return self._line

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def sweep_channels(self) -> tuple[ChannelId, ...]:
        """The slots a sweep covers: those ``identify()`` found populated, else all ten."""
        return self._populated if self._populated else tuple(s.channel for s in CHANNEL_TABLE)

    def statistics(self) -> ModbusStatistics:
        c = self._counters
        line = self._line
        times = line.reply_times(self.address)
        return ModbusStatistics(
            c.transactions,
            c.attempts,
            c.retries,
            c.timeouts,
            c.exceptions,
            c.checksum_errors,
            line.stale_bytes,
            c.fences,
            c.fence_failures,
            c.early_replies,
            c.short_timeouts,
            times.allowance(),
            line.silence_s,
            times.percentile(0.5),
            times.percentile(0.99),
            len(times),
            line.silence_raises,
            times.boosts,
        )

    def sweep_plan(self) -> tuple[PlannedRead, ...]:
        """The reads the next :meth:`poll` will make (no I/O): value-only spans for the slots
        whose name and unit are cached, costed with the line's current silence — e.g. for a
        rate check on an open analyser."""
        return self._plan(self.sweep_channels, include_analyser=True)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Nothing runs in the background in Modbus mode."""

    async def aclose(self) -> None:
        """Close the line (and so the transport) if this client created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_line:
            await self._line.aclose()

    # -- public operations ----------------------------------------------------------------

    async def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        """One sweep (protocol.md §5) over :attr:`sweep_channels`; ``wait_fresh`` is a no-op.

        Slots the device refused even singly are omitted (one warning each).
        """
        t = self._resolve_timeout(timeout)
        received_at, mono_ns, started = _stamp()
        data = await self._sweep(self.sweep_channels, t, include_analyser=True)
        readings = self._readings(data, received_at, mono_ns)
        assert data.analyser is not None
        analyser = decode_analyser_bits(data.analyser)
        latency = time.monotonic() - started
        return Frame(
            readings=readings,
            analyser=analyser,
            protocol=self.protocol,
            received_at=received_at,
            monotonic_ns=mono_ns,
            raw=b"".join(r.raw for r in readings),
            requested_at=received_at,
            latency_s=latency,
        )

    async def read_channel(self, ch: ChannelId, *, timeout: float | None = None) -> Reading:
        """FC04 (block, 7) then FC02 (block, 8).

        Raises:
            ServomexIllegalDataAddressError: the slot is (or turns out to be) unreadable.
        """
        t = self._resolve_timeout(timeout)
        channel = ChannelId(ch)
        if channel in self.read_planner.unreadable:
            raise ServomexIllegalDataAddressError(
                f"channel {channel.value} was refused by the device (exception 02)",
                context=self._context(channel=channel, register=spec_for(channel).value_register),
            )
        received_at, mono_ns, _ = _stamp()
        data = _SweepData()
        for read in self.read_planner.plan([channel], include_analyser=False):
            try:
                await self._execute(read, data, t)
            except ServomexIllegalDataAddressError:
                if self.read_planner.learn_rejection(read):
                    self._warn_unreadable()
                raise
        return self._readings(data, received_at, mono_ns)[0]

    async def status(self, ch: ChannelId, *, timeout: float | None = None) -> ChannelStatus:
        """FC02 (status block, 8), decoded with the channel kind's rules."""
        t = self._resolve_timeout(timeout)
        channel = ChannelId(ch)
        spec = spec_for(channel)
        bits = await self._read_bits(
            spec.status_discrete, DISCRETES_PER_CHANNEL, t, channel=channel
        )
        return decode_status_bits(channel.kind, bits)

    async def analyser_status(self, *, timeout: float | None = None) -> AnalyserStatus:
        """FC02 (1000, 16); ``clock`` is always None over Modbus."""
        t = self._resolve_timeout(timeout)
        bits = await self._read_bits(ANALYSER_STATUS_PDU, ANALYSER_STATUS_COUNT, t)
        return decode_analyser_bits(bits)

    async def identify(self, *, timeout: float | None = None) -> DeviceInfo:
        """FC04 (0, 70) on every call: refresh the name/unit cache and list populated slots.

        A slot is populated when its name registers hold a label (not blank, not ``||||||``) or
        its unit registers are not blank (api.md §5): ``||||||`` with a blank unit is an empty
        slot; an unlabelled slot that reports a unit is listed with name None. Later sweeps
        cover only those slots; when none qualifies, sweeps stay at all ten.

        Firmware that refuses the broad read with exception 02 (it covers unmapped slots) is
        asked slot by slot instead, FC04 (block, 7); a slot refused on its own is unpopulated
        and marked unreadable in the read planner (protocol.md §9.3).
        """
        t = self._resolve_timeout(timeout)
        total = len(CHANNEL_TABLE) * REGISTERS_PER_CHANNEL
        blocks: dict[ChannelId, bytes] = {}
        try:
            raw = words_to_bytes(await self._read_registers(0, total, t))
        except ServomexIllegalDataAddressError:
            _log.info("%s: FC04 (0, %d) refused; identifying slot by slot", self.device, total)
            for spec in CHANNEL_TABLE:
                read = self.read_planner.plan([spec.channel], include_analyser=False)
                if not read:  # already known unreadable
                    continue
                try:
                    words = await self._read_registers(
                        spec.value_register, REGISTERS_PER_CHANNEL, t, channel=spec.channel
                    )
                except ServomexIllegalDataAddressError:
                    # An unmapped slot: unpopulated, and unreadable for read_channel. Sweeps
                    # never asked for it, so this is not worth a warning.
                    if self.read_planner.learn_rejection(read[0]):
                        self._warned_unreadable.add(spec.channel)
                        _log.info("%s: slot %s is not mapped", self.device, spec.channel.value)
                    continue
                blocks[spec.channel] = words_to_bytes(words)
        else:
            for spec in CHANNEL_TABLE:
                blocks[spec.channel] = raw[spec.value_register * 2 : spec.register_end * 2]
        infos: list[ChannelInfo] = []
        for spec in CHANNEL_TABLE:
            block = blocks.get(spec.channel)
            if block is None:
                continue
            text = block[4:14]
            meta = _Meta(decode_modbus_name(text[:6]), decode_modbus_unit(text[6:]))
            self._meta[spec.channel] = meta
            if slot_populated(text[:6], text[6:]):
                infos.append(ChannelInfo(spec.channel, spec.kind, meta.name, meta.unit))
        self._populated = tuple(i.channel for i in infos) or None
        settings = self.transport.serial_settings
        return DeviceInfo(
            model=MODEL_NAME,
            channels=tuple(infos),
            protocol=self.protocol,
            address=self.address,
            serial_settings=settings
            if settings is not None
            else SerialSettings(self.transport.label),
        )

    async def start_calibration(self, group: int, *, timeout: float | None = None) -> None:
        """Pulse the group's start coil: FC05 ON → FC01 read-back → FC05 OFF (protocol.md §4.9)."""
        t = self._resolve_timeout(timeout)
        if group not in CAL_GROUPS:
            raise ServomexValidationError(
                f"calibration group must be 1-4, got {group!r}", context=self._context()
            )
        await self._pulse(start_calibration_coil(group), t)

    async def stop_calibration(self, *, timeout: float | None = None) -> None:
        """Pulse coil 00009 (PDU 8), which stops every group."""
        await self._pulse(STOP_CALIBRATION_COIL, self._resolve_timeout(timeout))

    async def calibration_status(
        self, group: int, *, timeout: float | None = None
    ) -> CalibrationProgress:
        """FC02 (1008, 8) decoded for ``group``."""
        t = self._resolve_timeout(timeout)
        if group not in CAL_GROUPS:
            raise ServomexValidationError(
                f"calibration group must be 1-4, got {group!r}", context=self._context()
            )
        bits = await self._read_bits(CAL_STATUS_PDU, CAL_STATUS_COUNT, t)
        return calibration_progress(group, bits)

    async def loopback(
        self, payload: bytes = b"\x00\x00", *, timeout: float | None = None
    ) -> bytes:
        """FC08 sub-function 0 with a 2-byte payload; returns the echo.

        Raises:
            ServomexValidationError: ``payload`` is not exactly 2 bytes.
            ServomexProtocolError: the echo differs from the payload.
        """
        t = self._resolve_timeout(timeout)
        data = bytes(payload)
        if len(data) != LOOPBACK_PAYLOAD_LEN:
            raise ServomexValidationError(
                f"loopback payload must be exactly 2 bytes, got {len(data)}",
                context=self._context(function_code=_FC_DIAGNOSTICS),
            )
        pdu = bytes((_FC_DIAGNOSTICS, 0, 0)) + data
        self._line.note_payload(data)
        echo = await self._transact(
            _FC_DIAGNOSTICS, 0, pdu, lambda s: s.diagnostic_loopback(data), t
        )
        if echo != data:
            # Another request's echo: this one's may still be on its way.
            self._line.mark_uncertain(self.address)
            raise ServomexProtocolError(
                f"loopback echoed {echo.hex(' ')} for {data.hex(' ')}",
                context=self._context(
                    function_code=_FC_DIAGNOSTICS,
                    register=0,
                    request=self._line.encode_adu(self.address, pdu),
                ),
            )
        return echo

    async def probe(self, *, wait: float | None = None) -> float | None:
        """Is anything answering at this address? One short FC08 echo attempt (a bus scan).

        After the line's silence, sends FC08 sub-function 0 with a fresh payload (never one
        used on this line recently) and listens for ``wait`` seconds: by default the wire time
        of the request and its echo plus a turnaround allowance of 60 ms (or the slowest
        turnaround this line has measured plus 20 ms, when that is longer) — about 68 ms at
        19200 baud RTU, so 247 addresses take well under a minute. There is no retry and no
        fence, and an unanswered probe never makes the line uncertain: the echo names its own
        payload, so a late one can never be taken as a value; it is discarded as stale by a
        later silence or fence, and the next request waits until a late echo would have come.
        An exception reply (``0x88``, e.g. exception 01 from firmware without FC08) counts:
        something answers at this address.

        Returns:
            Seconds from handing the request to the port until the reply was complete, or
            None when no valid reply came within ``wait`` (a reply with a bad CRC/LRC, another
            address's reply or an echo of another payload is not one).

        Raises:
            ServomexValidationError: ``wait`` is not a positive number, before any I/O.
            ServomexConnectionError: the port is closed or failed.
        """
        _check_timeout(wait, "wait")
        line = self._line
        if line.is_closed:
            raise ServomexConnectionError(
                f"{self.transport.label} is closed",
                context=self._context(function_code=_FC_DIAGNOSTICS, register=0),
            )
        limit = line.probe_wait(self.address) if wait is None else float(wait)
        started = time.monotonic()
        async with line.lock:
            self._counters.transactions += 1
            self._counters.attempts += 1
            try:
                return await line.probe(self.address, limit)
            except ServomexError as exc:
                raise exc.with_context(
                    **_fields(
                        self._context(
                            function_code=_FC_DIAGNOSTICS,
                            register=0,
                            elapsed_s=time.monotonic() - started,
                        )
                    )
                ) from exc.__cause__

    # -- sweeps -----------------------------------------------------------------------------

    async def _sweep(
        self, channels: tuple[ChannelId, ...], timeout: _Timeout, *, include_analyser: bool
    ) -> _SweepData:
        """Run the plan; on exception 02 that teaches the planner something, re-plan and re-run
        the rest once per learning step (reads already done are kept)."""
        data = _SweepData()
        while True:
            pending = [
                r
                for r in self._plan(channels, include_analyser=include_analyser)
                if not data.covers(r)
            ]
            replanned = False
            for read in pending:
                try:
                    await self._execute(read, data, timeout)
                except ServomexIllegalDataAddressError:
                    if not self.read_planner.learn_rejection(read):
                        raise
                    _log.info(
                        "%s: exception 02 on FC%02d (%d, %d); read plan now %r",
                        self.device,
                        read.function_code,
                        read.address,
                        read.count,
                        self.read_planner,
                    )
                    self._warn_unreadable()
                    replanned = True
                    break
            if not replanned:
                return data

    def _plan(
        self, channels: tuple[ChannelId, ...], *, include_analyser: bool
    ) -> tuple[PlannedRead, ...]:
        """The planner's reads for a sweep: value-only spans for the slots whose name and unit
        are cached, costed with the line's current silence."""
        planner = self.read_planner
        silence = self._line.silence_s
        if silence != self._planned_silence:  # learned: cost the plan with the real silence
            planner.model = planner.model.with_silence(silence)
            self._planned_silence = silence
        return planner.plan(
            channels, include_analyser=include_analyser, value_only=frozenset(self._meta)
        )

    async def _execute(self, read: PlannedRead, data: _SweepData, timeout: _Timeout) -> None:
        channel = read.channels[0] if len(read.channels) == 1 else None
        if read.function_code == ReadFunction.READ_INPUT_REGISTERS:
            words = await self._read_registers(read.address, read.count, timeout, channel=channel)
            for ch in read.channels:
                off = read.offset_of(ch)
                data.registers[ch] = tuple(words[off : off + read.items_of(ch)])
        else:
            bits = await self._read_bits(read.address, read.count, timeout, channel=channel)
            if read.is_analyser:
                data.analyser = bits
            for ch in read.channels:
                off = read.offset_of(ch)
                data.bits[ch] = tuple(bits[off : off + DISCRETES_PER_CHANNEL])

    def _readings(
        self, data: _SweepData, received_at: datetime, mono_ns: int
    ) -> tuple[Reading, ...]:
        readings: list[Reading] = []
        for spec in CHANNEL_TABLE:
            ch = spec.channel
            if ch not in data.registers or ch not in data.bits:
                continue
            status = decode_status_bits(spec.kind, data.bits[ch])
            words = data.registers[ch]
            meta = self._meta.get(ch)
            if len(words) == VALUE_REGISTERS and meta is not None:
                # A value-only read: the name and unit are the cached ones; raw is the 4
                # value bytes as received.
                raw = words_to_bytes(words)
                value = decode_float32_value(raw)
                reading = _build_reading(
                    ch,
                    spec.kind,
                    meta.name,
                    value,
                    meta.unit,
                    status,
                    self.protocol,
                    received_at,
                    mono_ns,
                    raw,
                    ValueState.INVALID if value is None else ValueState.OK,
                )
            else:
                reading = decode_channel_block(
                    ch,
                    words,
                    status,
                    received_at=received_at,
                    monotonic_ns=mono_ns,
                    protocol=self.protocol,
                )
                if meta is None:  # first read of this slot: cache its name and unit
                    self._meta[ch] = _Meta(reading.name, reading.unit)
                elif reading.name != meta.name or reading.unit != meta.unit:
                    reading = dataclasses.replace(reading, name=meta.name, unit=meta.unit)
            readings.append(reading)
        return tuple(readings)

    def _warn_unreadable(self) -> None:
        for ch in sorted(self.read_planner.unreadable - self._warned_unreadable):
            self._warned_unreadable.add(ch)
            _log.warning(
                "%s: channel %s refused by the device (exception 02); omitted from sweeps",
                self.device,
                ch.value,
            )

    # -- transactions ---------------------------------------------------------------------

    async def _read_registers(
        self, address: int, count: int, timeout: _Timeout, *, channel: ChannelId | None = None
    ) -> tuple[int, ...]:
        pdu = bytes((ReadFunction.READ_INPUT_REGISTERS,)) + _u16(address) + _u16(count)
        return await self._transact(
            int(ReadFunction.READ_INPUT_REGISTERS),
            address,
            pdu,
            lambda s: s.read_input_registers(address, count=count),
            timeout,
            channel=channel,
        )

    async def _read_bits(
        self, address: int, count: int, timeout: _Timeout, *, channel: ChannelId | None = None
    ) -> tuple[bool, ...]:
        pdu = bytes((ReadFunction.READ_DISCRETE_INPUTS,)) + _u16(address) + _u16(count)
        return await self._transact(
            int(ReadFunction.READ_DISCRETE_INPUTS),
            address,
            pdu,
            lambda s: s.read_discrete_inputs(address, count=count),
            timeout,
            channel=channel,
        )

    async def _pulse(self, coil: int, timeout: _Timeout) -> None:
        """FC05 ON, FC01 read-back (value ignored), FC05 OFF — in that order.

        A failed ON raises at once (FC05 is never retried and we cannot know whether it
        landed). Once ON succeeded, OFF is always attempted so the coil is left at 0 for the
        next 0→1 edge; the first failure is raised.
        """
        number = coil + 1  # errors name the 1-based coil (protocol.md §4.12)
        on_pdu = bytes((_FC_WRITE_COIL,)) + _u16(coil) + b"\xff\x00"
        off_pdu = bytes((_FC_WRITE_COIL,)) + _u16(coil) + b"\x00\x00"
        read_pdu = bytes((_FC_READ_COILS,)) + _u16(coil) + _u16(1)
        await self._transact(
            _FC_WRITE_COIL, number, on_pdu, lambda s: s.write_coil(coil, on=True), timeout
        )
        try:
            await self._transact(
                _FC_READ_COILS, number, read_pdu, lambda s: s.read_coils(coil, count=1), timeout
            )
        except ServomexError:
            with anyio.CancelScope(shield=True):
                try:
                    await self._transact(
                        _FC_WRITE_COIL,
                        number,
                        off_pdu,
                        lambda s: s.write_coil(coil, on=False),
                        timeout,
                    )
                except ServomexError as exc:
                    _log.warning("%s: could not return coil %d to 0: %s", self.device, number, exc)
            raise
        await self._transact(
            _FC_WRITE_COIL, number, off_pdu, lambda s: s.write_coil(coil, on=False), timeout
        )

    async def _transact[T](
        self,
        function_code: int,
        register: int,
        request_pdu: bytes,
        call: Callable[[anymodbus.Slave], Awaitable[T]],
        timeout: _Timeout,
        *,
        channel: ChannelId | None = None,
    ) -> T:
        """One transaction: fence when needed, then silence, attempt, classify.

        Retries per protocol.md §9.1; the late-reply rules (fence, too-early replies) and the
        learned waits (fast recovery) per the module docstring. FC08 loopbacks are not fenced:
        their echo names its own payload.
        """
        if self._line.is_closed:
            raise ServomexConnectionError(
                f"{self.transport.label} is closed",
                context=self._context(function_code=function_code, register=register),
            )
        line = self._line
        request = line.encode_adu(self.address, request_pdu)
        reply_chars = _reply_chars(self.protocol, request_pdu)
        exception_chars = (
            _RTU_EXCEPTION_LEN if self.protocol is ProtocolKind.MODBUS_RTU else _ASCII_EXCEPTION_LEN
        )
        attempts = 1 + RETRIES if function_code in _IDEMPOTENT else 1
        started = time.monotonic()
        self._counters.transactions += 1
        last: BaseException | None = None
        response: bytes | None = None

        def context(**kw: Any) -> ErrorContext:
            return self._context(
                function_code=function_code,
                register=register,
                channel=channel,
                request=request,
                response=response,
                elapsed_s=time.monotonic() - started,
            ).merged(**kw)

        async with line.lock:
            if function_code != _FC_DIAGNOSTICS:
                await self._settle(timeout, context)
            # Bytes that came late for this slave's earlier attempts have had their chance to
            # show up (in the silences and the fence): from here on, nothing is watched.
            line.end_late_watch(self.address)
            # Only a first attempt on a certain line times a reply that surely answers it.
            certain_line = not line.is_uncertain(self.address)
            # A retry times its reply as surely when nothing at all came for the attempts
            # before it (a request or reply lost, not late) — for the learned wait only.
            quiet = certain_line
            stale_at_start = line.stale_bytes
            # FC08 echoes name their own payload: the early rule is for replies that do not.
            judge_early = function_code != _FC_DIAGNOSTICS
            for attempt in range(attempts):
                self._counters.attempts += 1
                if attempt:
                    self._counters.retries += 1
                try:
                    await line.wait_silence()
                except ServomexError as exc:
                    raise exc.with_context(**_fields(context())) from exc.__cause__
                wait = timeout.seconds
                if timeout.learned and attempt + 1 < attempts:
                    learned = line.learned_wait(self.address, len(request), reply_chars)
                    if learned is not None and learned < wait:
                        wait = learned
                short = wait < timeout.seconds
                line.begin_capture(reply_chars)
                settled = False  # nothing from this attempt can still be on its way
                clean = quiet and line.stale_bytes == stale_at_start
                cancelled = False
                t0 = anyio.current_time()
                try:
                    try:
                        with anyio.fail_after(wait):
                            result = await call(self._slave)
                    except anyio.get_cancelled_exc_class():
                        cancelled = True  # says nothing about the device or the silence
                        raise
                except anymodbus.ModbusExceptionResponse as exc:
                    elapsed = anyio.current_time() - t0  # before any listening for more
                    turnaround = line.reply_turnaround(exception_chars)
                    alone = line.reply_alone(exception_chars)
                    response = line.end_capture()
                    early = judge_early and line.is_too_early(turnaround)
                    if early and not await self._judge_early(turnaround):
                        settled = True  # what followed it was read to the silence
                        last = self._early_error(turnaround)
                    else:
                        settled = True
                        if alone and clean:
                            line.learn_reply(self.address, elapsed, len(request), exception_chars)
                        if attempt == 0 and certain_line and alone:
                            line.learn_turnaround(turnaround)
                        self._counters.exceptions += 1
                        raise _exception_reply(exc, context()) from exc
                except anymodbus.UnexpectedResponseError as exc:
                    response = line.end_capture()
                    raise ServomexProtocolError(str(exc), context=context()) from exc
                except anymodbus.ConfigurationError as exc:
                    raise ServomexValidationError(str(exc), context=context()) from exc
                except (anymodbus.ProtocolError, anymodbus.FrameTimeoutError, TimeoutError) as exc:
                    response = line.end_capture()
                    lost = _connection_cause(exc)
                    if lost is not None:
                        raise lost.with_context(**_fields(context())) from exc
                    if isinstance(exc, anymodbus.ChecksumError):
                        self._counters.checksum_errors += 1
                    if short and response is None:
                        # Gave up after the learned wait with nothing received: if the reply
                        # turns up late after all, the wait was too short (it is raised).
                        self._counters.short_timeouts += 1
                        line.watch_for_late_reply(self.address)
                    last = exc
                except (anymodbus.ConnectionLostError, anymodbus.BusClosedError) as exc:
                    response = line.end_capture()
                    lost = _connection_cause(exc)
                    if lost is not None:
                        raise lost.with_context(**_fields(context())) from exc
                    raise ServomexConnectionError(str(exc), context=context()) from exc
                except anymodbus.ModbusError as exc:
                    response = line.end_capture()
                    raise ServomexModbusError(
                        str(exc) or type(exc).__name__, context=context()
                    ) from exc
                except ServomexError as exc:
                    response = line.end_capture()
                    raise exc.with_context(**_fields(context())) from exc
                else:
                    elapsed = anyio.current_time() - t0  # before any listening for more
                    turnaround = line.reply_turnaround(reply_chars)
                    early = judge_early and line.is_too_early(turnaround)
                    if early and not await self._judge_early(turnaround):
                        response = line.end_capture()
                        settled = True  # what followed it was read to the silence
                        last = self._early_error(turnaround)
                    else:
                        settled = True
                        alone = line.reply_alone(reply_chars)
                        if alone and clean:
                            line.learn_reply(self.address, elapsed, len(request), reply_chars)
                        if attempt == 0 and certain_line and alone:
                            line.learn_turnaround(turnaround)
                        return result
                finally:
                    received = line.capture_received
                    if line.attempt_sent and not cancelled:
                        line.note_silence_outcome(received)
                    if received:
                        quiet = False
                    if not settled and line.attempt_sent:
                        # Whatever ended the attempt (timeout, bad frame, a stale or too-early
                        # reply, cancellation), a reply to it may still be on its way.
                        line.mark_uncertain(self.address)
                    line.end_capture()
                if attempt + 1 < attempts:
                    _log.debug(
                        "%s: attempt %d/%d of FC%02d at %d failed after %.0f ms (%s); retrying",
                        self.device,
                        attempt + 1,
                        attempts,
                        function_code,
                        register,
                        1000 * wait,
                        _describe(last),
                    )
        self._counters.timeouts += 1
        message = (
            "no response from slave"
            if isinstance(last, TimeoutError)
            else f"no valid response from slave: {_describe(last)}"
        )
        raise ServomexTimeoutError(message, context=context(extra={"attempts": attempts})) from last

    async def _settle(self, timeout: _Timeout, context: Callable[..., ErrorContext]) -> None:
        """Fence the line before a new transaction; raise when this address stays uncertain."""
        try:
            report = await self._line.settle(
                self.address, timeout.seconds, attempts=1 + RETRIES, learned=timeout.learned
            )
        except ServomexError as exc:
            raise exc.with_context(**_fields(context())) from exc.__cause__
        self._counters.fences += report.completed
        self._counters.fence_failures += report.failed
        self._counters.short_timeouts += report.short_failed
        if report.own_failed:
            self._counters.timeouts += 1
            raise ServomexTimeoutError(
                f"no response from slave to the line fence (FC08 echo, {1 + RETRIES} attempts): "
                "a late reply to an earlier request may still be on its way, so this request "
                "was not sent",
                context=context(extra={"fence_attempts": report.attempts}),
            )

    async def _judge_early(self, turnaround: float | None) -> bool:
        """A reply began sooner than the line's fastest turnaround: is it ours?

        In order, a stale reply is followed by the reply to our request. So the line is
        listened to for as long as this slave has ever taken to answer: when something comes,
        the early reply was stale (False: rejected, counted; what followed is discarded up to
        the silence, so the retry finds a clean line). When nothing comes, it was the only
        reply in flight — ours, just faster than any timed so far (True: accepted, and it
        becomes the line's fastest turnaround). Nothing is sent, and the listening replaces
        most of the silence the next request would have waited anyway.
        """
        line = self._line
        floor = line.min_turnaround_s
        if await line.another_reply_follows():
            self._counters.early_replies += 1
            return False
        line.learn_turnaround(turnaround)
        _log.debug(
            "%s: a reply %.1f ms after its request (fastest so far %.1f ms) was the only one "
            "in flight; accepted",
            self.device,
            1000 * (turnaround or 0.0),
            1000 * (floor or 0.0),
        )
        return True

    def _early_error(self, turnaround: float | None) -> _EarlyReplyError:
        error = _EarlyReplyError(
            f"a reply began {1000 * (turnaround or 0.0):.1f} ms after the request, sooner than "
            "this line's fastest turnaround minus one character, and another reply followed "
            "it: it answered an older request"
        )
        _log.info("%s: %s; discarded", self.device, error)
        return error

    # -- helpers ----------------------------------------------------------------------------

    def _resolve_timeout(self, timeout: float | None) -> _Timeout:
        _check_timeout(timeout)
        if timeout is None:
            return _Timeout(self._timeout, learned=True)
        return _Timeout(float(timeout), learned=False)

    def _context(self, **kw: Any) -> ErrorContext:
        return ErrorContext(
            port=self.transport.label, protocol=self.protocol, address=self.address
        ).merged(**kw)


class _EarlyReplyError(Exception):
    """A reply that began too soon after its request to answer it (never raised to users)."""


def _stamp() -> tuple[datetime, int, float]:
    """received_at/requested_at, monotonic_ns and a monotonic start, taken at one instant."""
    return datetime.now(UTC), time.monotonic_ns(), time.monotonic()


def _reply_chars(framing: ProtocolKind, request_pdu: bytes) -> int:
    """Characters of the normal reply to ``request_pdu`` (reads: from the count; else 5 bytes)."""
    fc = request_pdu[0]
    count = int.from_bytes(request_pdu[3:5], "big") if len(request_pdu) >= 5 else 0
    if fc in (0x01, 0x02):
        pdu_len = 2 + math.ceil(count / 8)
    elif fc in (0x03, 0x04):
        pdu_len = 2 + 2 * count
    else:
        pdu_len = 5  # FC05 and FC08 sub 0 echo their request
    if framing is ProtocolKind.MODBUS_RTU:
        return 1 + pdu_len + 2
    return 1 + 2 * (1 + pdu_len + 1) + 2


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    return str(exc) or type(exc).__name__


def _fields(ctx: ErrorContext) -> dict[str, Any]:
    """A context's set fields as keywords for ``with_context`` (keeps the error's own extras)."""
    out: dict[str, Any] = {
        f.name: getattr(ctx, f.name)
        for f in dataclasses.fields(ctx)
        if f.name != "extra" and getattr(ctx, f.name) is not None
    }
    if ctx.extra:
        out["extra"] = dict(ctx.extra)
    return out


def _connection_cause(exc: BaseException) -> ServomexConnectionError | None:
    """The transport's connection error behind an anymodbus error (EOF mid-frame, closed)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ServomexConnectionError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _exception_reply(exc: anymodbus.ModbusExceptionResponse, ctx: ErrorContext) -> ServomexError:
    """protocol.md §4.12: 01 → IllegalFunction, 02 → IllegalDataAddress, else ModbusError."""
    code = exc.exception_code
    ctx = ctx.merged(exception_code=code)
    message = str(exc) or type(exc).__name__
    if code == 0x01:
        return ServomexIllegalFunctionError(message, context=ctx)
    if code == 0x02:
        return ServomexIllegalDataAddressError(message, context=ctx)
    return ServomexModbusError(message, context=ctx)
