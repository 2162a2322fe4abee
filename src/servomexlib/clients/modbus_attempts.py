"""The Modbus attempt loop: fence, silence, one attempt, classify, retry (private).

Theory of operation
-------------------
**Why we drive single attempts ourselves.** anymodbus's knobs cannot express the rules exactly:
its ``request_timeout`` is fixed per ``Bus``, but our per-call ``timeout=`` must override the
response timeout of every transaction of that call, and the line (and so the Bus) is shared by
clients with different timeouts; its inter-frame gap only sleeps, it does not read and discard
bytes arriving during the gap; and its retry policy retries every ``ProtocolError`` (including
a well-formed reply that does not answer the request, which we report at once) and knows
nothing of our error mapping. So the Bus makes exactly one attempt per call, and
:meth:`Transactions.run` runs the loop: fence when needed → silence → one ``Slave`` call under
``anyio.fail_after(wait)`` → classify by the table of
:mod:`~servomexlib.clients.modbus_outcomes`. Up to 2 retries follow only for the idempotent
function codes FC01-04 and FC08 and only after a retryable outcome; FC05 is never retried.
There is no deadline around a multi-transaction operation (HW lesson: it cancelled valid
retries mid-sweep; docs/protocol.md, §9.2).

**Late replies** (docs/protocol.md, §9.3). RTU and ASCII carry no transaction id, and a read
reply does not repeat its register address: a reply that arrives after its request timed out
looks exactly like the answer to the next read of the same shape. Three rules keep that from
ever producing a value:

* *Retries of the same request* may take a late reply to an earlier attempt: it answers the
  same question, asked after the transaction began.
* *The fence.* An attempt whose outcome is uncertain (a timeout, a checksum or frame error, a
  mismatched reply, a cancellation once the request started out) makes the line uncertain for
  that slave address until a fence completes; every new transaction (not a retry) to an
  uncertain address is preceded by one (:meth:`~servomexlib.clients.modbus_line.ModbusLine.settle`).
  When none of its attempts is answered the operation fails with ``ServomexTimeoutError``
  without sending its request. FC08 loopbacks are neither fenced nor fences: their echo is
  checked against their own payload.
* *Too early.* No reply is taken on trust that began sooner after its request than the line's
  smallest measured turnaround minus one character time. The line is then listened to for as
  long as this slave has ever taken to answer (plus the silence): if anything arrives, the
  early reply was stale — rejected (``early_replies``), what followed discarded, the request
  retried; if nothing does, it was ours: accepted, and the line's new fastest turnaround.
  FC08 loopbacks are exempt (their echo names its payload).

Turnarounds are learned only from replies that cannot be stale — first attempts on a certain
line, fence echoes, early replies proved alone — and only when nothing arrived before them.

**Fast recovery** (docs/protocol.md, §9.4). When the caller gave no per-call ``timeout``, every
attempt but the last waits the slave's learned wait (wire time + allowance,
:class:`~servomexlib.clients.modbus_learning.ReplyTimes`); the **last** attempt always waits
the whole open-time timeout, so a slow but alive device is never lost, and a dead one costs
2 × learned + 1 × timeout. Replies are timed for it only when they surely answer their own
attempt: first attempts on a certain line, retries after attempts that received nothing at
all, each only when nothing else arrived with it. An attempt that gave up after a learned wait
with nothing received is *watched*: stale bytes before the slave's next transaction boost its
wait. A per-call ``timeout=`` switches learned waits off for that call (fences included).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ErrorContext, ServomexConnectionError, ServomexError, ServomexTimeoutError
from .modbus_learning import adu_chars, exception_chars, reply_chars
from .modbus_line import SILENCE_S
from .modbus_outcomes import (
    EarlyReplyError,
    classify,
    connection_cause,
    context_fields,
    describe,
    exhausted_error,
)

if TYPE_CHECKING:
    import anymodbus

    from ..devices.models import ChannelId, ProtocolKind
    from .modbus_line import ModbusLine

__all__ = [
    "FC_DIAGNOSTICS",
    "IDEMPOTENT",
    "RETRIES",
    "CallTimeout",
    "Counters",
    "ModbusStatistics",
    "Transactions",
]

_log = logging.getLogger("servomexlib.modbus")

RETRIES = 2  # extra attempts for idempotent function codes (LIB)
IDEMPOTENT = frozenset({0x01, 0x02, 0x03, 0x04, 0x08})
FC_DIAGNOSTICS = 0x08


@dataclasses.dataclass(slots=True)
class Counters:
    """One client's counters (reported by ``ModbusClient.statistics()``)."""

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

    def add(self, name: str) -> None:
        """One more of the counter ``name`` (an outcome's ``counter``: a field of this class)."""
        setattr(self, name, getattr(self, name) + 1)


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


@dataclasses.dataclass(frozen=True, slots=True)
class CallTimeout:
    """The response timeout of one call: ``seconds`` caps every attempt; ``learned`` when the
    caller gave no per-call timeout, so attempts but the last may wait the learned time."""

    seconds: float
    learned: bool


class Transactions:
    """The attempt loop of one slave address on a line (module docstring)."""

    def __init__(self, line: ModbusLine, address: int, protocol: ProtocolKind, device: str) -> None:
        self.line = line
        self.address = address
        self.protocol = protocol
        self.device = device
        self.counters = Counters()
        self._slave = line.bus.slave(address)
        self._exception_chars = exception_chars(protocol)

    def statistics(self) -> ModbusStatistics:
        """This address's counters with the line's learned state."""
        c = self.counters
        line = self.line
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

    def context(self, **kw: Any) -> ErrorContext:
        return ErrorContext(
            port=self.line.transport.label, protocol=self.protocol, address=self.address
        ).merged(**kw)

    async def run[T](
        self,
        function_code: int,
        register: int,
        request_pdu: bytes,
        call: Callable[[anymodbus.Slave], Awaitable[T]],
        timeout: CallTimeout,
        *,
        channel: ChannelId | None = None,
    ) -> T:
        """One transaction: fence when needed, then silence, attempt, classify (docs/protocol.md
        §9.2, §9.3, §9.4). FC08 loopbacks are not fenced: their echo names its own payload.

        Raises:
            ServomexError: as the outcome table says (docs/protocol.md, §4.14), every error with
                port, protocol, address, function code, register, channel, request, the bytes
                received and the time spent.
        """
        line = self.line
        if line.is_closed:
            raise ServomexConnectionError(
                f"{line.transport.label} is closed",
                context=self.context(function_code=function_code, register=register),
            )
        # The request's length is arithmetic; its bytes (a CRC or LRC) are built only for an
        # error's context: anymodbus frames what it sends.
        request_len = adu_chars(self.protocol, len(request_pdu))
        reply_len = reply_chars(self.protocol, request_pdu)
        attempts = 1 + RETRIES if function_code in IDEMPOTENT else 1
        started = time.monotonic()
        counters = self.counters
        counters.transactions += 1
        last: BaseException | None = None
        response: bytes | None = None

        def context(**kw: Any) -> ErrorContext:
            return self.context(
                function_code=function_code,
                register=register,
                channel=channel,
                request=line.encode_adu(self.address, request_pdu),
                response=response,
                elapsed_s=time.monotonic() - started,
            ).merged(**kw)

        async with line.lock:
            if function_code != FC_DIAGNOSTICS:
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
            judge_early = function_code != FC_DIAGNOSTICS
            for attempt in range(attempts):
                counters.attempts += 1
                if attempt:
                    counters.retries += 1
                try:
                    await line.wait_silence()
                except ServomexError as exc:
                    raise exc.with_context(**context_fields(context())) from exc.__cause__
                wait = timeout.seconds
                if timeout.learned and attempt + 1 < attempts:
                    learned = line.learned_wait(self.address, request_len, reply_len)
                    if learned is not None and learned < wait:
                        wait = learned
                short = wait < timeout.seconds
                line.begin_capture(reply_len)
                settled = False  # nothing from this attempt can still be on its way
                clean = quiet and line.stale_bytes == stale_at_start
                first_on_certain = attempt == 0 and certain_line
                cancelled = False
                t0 = anyio.current_time()
                try:
                    try:
                        with anyio.fail_after(wait):
                            result = await call(self._slave)
                    except anyio.get_cancelled_exc_class():
                        cancelled = True  # says nothing about the device or the silence
                        raise
                except Exception as exc:
                    outcome = classify(exc)
                    if outcome is None:
                        raise  # not an outcome of an attempt: a bug, unchanged
                    if outcome.is_reply:
                        elapsed = anyio.current_time() - t0  # before any listening for more
                        settled = True  # a reply; anything after an early one was read off
                        accepted, turnaround = await self._take_reply(
                            self._exception_chars,
                            elapsed,
                            request_len,
                            first_on_certain=first_on_certain,
                            clean=clean,
                            judge_early=judge_early,
                        )
                        response = line.end_capture()
                        if not accepted:
                            last = self._early_error(turnaround)
                        else:
                            if outcome.counter is not None:
                                counters.add(outcome.counter)
                            assert outcome.error is not None
                            raise outcome.error(exc, context()) from exc
                    else:
                        if outcome.captures_response:
                            response = line.end_capture()
                        lost = connection_cause(exc) if outcome.transport_cause else None
                        if lost is not None:
                            raise lost.with_context(**context_fields(context())) from exc
                        if outcome.counter is not None:
                            counters.add(outcome.counter)
                        if not outcome.retryable:
                            assert outcome.error is not None
                            raise outcome.error(exc, context()) from exc
                        if short and response is None:
                            # Gave up after the learned wait with nothing received: if the
                            # reply turns up late after all, the wait was too short.
                            counters.short_timeouts += 1
                            line.watch_for_late_reply(self.address)
                        last = exc
                else:
                    elapsed = anyio.current_time() - t0  # before any listening for more
                    settled = True  # accepted, or an early reply whose follower was read off
                    accepted, turnaround = await self._take_reply(
                        reply_len,
                        elapsed,
                        request_len,
                        first_on_certain=first_on_certain,
                        clean=clean,
                        judge_early=judge_early,
                    )
                    if accepted:
                        return result
                    response = line.end_capture()
                    last = self._early_error(turnaround)
                finally:
                    received = line.capture_received
                    if line.attempt_sent and not cancelled:
                        line.note_silence_outcome(received)
                    if received:
                        quiet = False
                    if not settled and line.attempt_sent:
                        # Whatever ended the attempt (timeout, bad frame, a mismatched reply,
                        # cancellation), a reply to it may still be on its way.
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
                        describe(last),
                    )
        counters.timeouts += 1
        raise exhausted_error(last, context(extra={"attempts": attempts})) from last

    async def _take_reply(
        self,
        reply_len: int,
        elapsed: float,
        request_len: int,
        *,
        first_on_certain: bool,
        clean: bool,
        judge_early: bool,
    ) -> tuple[bool, float | None]:
        """A reply of ``reply_len`` characters came (still in the capture): take it (True, and
        learn from its timing) or reject it as too early (False: another reply followed it).
        Returns that and the reply's turnaround."""
        line = self.line
        turnaround = line.reply_turnaround(reply_len)
        alone = line.reply_alone(reply_len)
        if (
            judge_early
            and line.is_too_early(turnaround)
            and not await self._judge_early(turnaround)
        ):
            return False, turnaround
        if alone and clean:
            line.learn_reply(self.address, elapsed, request_len, reply_len)
        if first_on_certain and alone:
            line.learn_turnaround(turnaround)
        return True, turnaround

    async def _settle(self, timeout: CallTimeout, context: Callable[..., ErrorContext]) -> None:
        """Fence the line before a new transaction; raise when this address stays uncertain."""
        try:
            report = await self.line.settle(
                self.address, timeout.seconds, attempts=1 + RETRIES, learned=timeout.learned
            )
        except ServomexError as exc:
            raise exc.with_context(**context_fields(context())) from exc.__cause__
        counters = self.counters
        counters.fences += report.completed
        counters.fence_failures += report.failed
        counters.short_timeouts += report.short_failed
        if report.own_failed:
            counters.timeouts += 1
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
        becomes the line's fastest turnaround).
        """
        line = self.line
        floor = line.min_turnaround_s
        if await line.another_reply_follows():
            self.counters.early_replies += 1
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

    def _early_error(self, turnaround: float | None) -> EarlyReplyError:
        error = EarlyReplyError(
            f"a reply began {1000 * (turnaround or 0.0):.1f} ms after the request, sooner than "
            "this line's fastest turnaround minus one character, and another reply followed "
            "it: it answered an older request"
        )
        _log.info("%s: %s; discarded", self.device, error)
        return error
