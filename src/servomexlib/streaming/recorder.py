"""Fixed-rate acquisition: :func:`record` and its live :class:`AcquisitionSummary`.

Usage and the summary's fields: docs/recording-and-sinks.md.

Theory of operation
-------------------
One producer task polls the source on an **absolute** schedule: tick ``n`` targets
``start + n · period`` on anyio's clock, so a slow tick never pushes later ticks back (no
drift accumulates). When a poll overruns so far that whole slots have passed
(``now > target + period``), those slots are skipped and counted in ``samples_late`` rather
than fired back to back. Each tick's batch goes into a bounded queue of ``buffer_size``
batches; what happens when the consumer is slower than the schedule is the
:class:`~servomexlib.devices.models.OverflowPolicy`.

A lost connection (``ServomexConnectionError``) either ends the recording or, with
``auto_reconnect``, costs one tick, a backoff sleep (0.5, 1, 2, 5, 10, 30 s …) and optionally a
rebuild of the source through ``reconnect_factory``. Any other error ends the recording and
propagates from the ``async with`` block as the bare error.

**Outages.** Everything from the first ``ServomexConnectionError`` until the next successful
poll (each-frame mode: the next frame) is one outage: it counts one ``disconnect`` however many
reconnect attempts it takes, and its length goes into ``outage_s`` (an outage still running
when the recording ends counts up to the end). A backoff sleep never runs past the end of a
finite recording: the slots it would have covered are counted late and the recording ends on
time.

**Each frame once** (``each_frame=True``, continuous Analyzers only). Polling a broadcaster is
sample-and-hold: every tick re-reads the latest frame, so a frame is recorded as often as ticks
fall into its period (twice at 1 Hz over a 2 s broadcast) or not at all. Following the
client's frame subscription instead (``source.frame_feed().subscribe_frames()``, taken when
``record()`` is entered, so a frame arriving right after is not missed) hands over one batch
per broadcast frame as it arrives, every frame exactly once: the broadcast sets the cadence,
``rate_hz`` is only validated, and ``duration`` is wall time on anyio's clock (frames received
before ``start + duration`` are recorded). A line the receiver rejected (parse or checksum
error) becomes a one-sample batch holding the error Sample, as in ``stream()``, and counts as
late. When the frame stream ends (the port was lost) the recording reconnects as in polled
mode and subscribes to the rebuilt source. The subscription's queue is bounded (the client's
``FRAME_QUEUE_FRAMES``, 20 000 frames): if the consumer falls that far behind, the client drops
the oldest frames, and every frame dropped is counted in ``samples_late`` — a recording never
misses a frame without saying so.

Tick durations for the percentiles are kept exactly for the first 2**20 ticks (8 MiB), then as
a uniform reservoir of that size, so a week-long recording stays flat in memory.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..devices.models import Frame, OverflowPolicy, Sample
from ..errors import ErrorContext, ServomexConnectionError, unwrap_group
from .poll_source import FrameFeed, FrameSource, PollSource

if TYPE_CHECKING:
    from ..clients.continuous import FrameItem

__all__ = [
    "BACKOFF_STEPS_S",
    "AcquisitionSummary",
    "PollSource",
    "Recording",
    "percentile",
    "record",
]

#: Sleep before each reconnect attempt; the last step repeats.
BACKOFF_STEPS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_RESERVOIR = 1 << 20


@dataclasses.dataclass(slots=True)
class AcquisitionSummary:
    """Live counters of a recording; written only by the recorder.

    ``disconnects`` counts outages (one per outage, however many reconnect attempts it took);
    ``outage_s`` is their total length in seconds, an outage still running at the end counted
    up to the end. In each-frame mode ``samples_emitted`` counts the batches handed over (one
    per frame, rejected lines included), ``samples_late`` the rejected lines plus the batches
    the overflow policy dropped plus the frames the client's bounded subscription queue
    dropped; the tick statistics stay 0 (nothing is polled).
    """

    started_at: datetime
    finished_at: datetime | None = None
    samples_emitted: int = 0
    samples_late: int = 0
    max_drift_ms: float = 0.0
    tick_duration_ms_p50: float = 0.0
    tick_duration_ms_p99: float = 0.0
    disconnects: int = 0
    outage_s: float = 0.0


@dataclasses.dataclass(slots=True)
class Recording[T]:
    """What ``async with record(...)`` yields: the batch stream and its live summary."""

    stream: AsyncIterator[T]
    summary: AcquisitionSummary
    rate_hz: float


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile at index ``p·(n−1)`` of the sorted values; 0.0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Durations:
    """Tick durations in seconds: exact up to the reservoir size, then a uniform sample."""

    def __init__(self) -> None:
        self.values = array("d")
        self.seen = 0
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < _RESERVOIR:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < _RESERVOIR:
            self.values[slot] = value


def _connection_error(exc: BaseException) -> ServomexConnectionError | None:
    """The ServomexConnectionError inside ``exc`` (possibly a single-member group), or None."""
    leaf = unwrap_group(exc)
    return leaf if isinstance(leaf, ServomexConnectionError) else None


def _frame_feed(source: object) -> tuple[FrameFeed, str]:
    """The frame subscription and device label of a continuous Analyzer, for ``each_frame``.

    Raises:
        ValueError: ``source`` is not a :class:`FrameSource` whose ``frame_feed()`` is a feed
            (a continuous Analyzer).
    """
    feed = source.frame_feed() if isinstance(source, FrameSource) else None
    if feed is None:
        raise ValueError(
            "each_frame=True follows the broadcast of a continuous Analyzer, and "
            f"{source!r} is not one: polled sources (Modbus analysers, a ServomexManager) "
            "are recorded tick by tick, without each_frame"
        )
    assert isinstance(source, FrameSource)
    return feed, source.device


@dataclasses.dataclass(slots=True)
class _Subscription:
    """One frame subscription of a continuous Analyzer's client."""

    feed: FrameFeed
    token: object
    receive: MemoryObjectReceiveStream[FrameItem]
    device: str
    dropped_seen: int = 0

    def take_dropped(self) -> int:
        """Frames the client dropped from this subscription's full queue since the last call."""
        dropped = self.feed.subscriber_dropped(self.token)
        new, self.dropped_seen = dropped - self.dropped_seen, dropped
        return new

    def close(self) -> None:
        self.feed.unsubscribe(self.token)
        self.receive.close()


def _subscribe(source: object) -> _Subscription | ServomexConnectionError:
    """Subscribe to ``source``'s frames; a lost (or never started) receiver is returned.

    Raises:
        ValueError: ``source`` is not a continuous Analyzer.
    """
    feed, device = _frame_feed(source)
    try:
        receive, token = feed.subscribe_frames()
    except Exception as exc:
        lost = _connection_error(exc)
        if lost is None:
            raise
        return lost
    return _Subscription(feed, token, receive, device)


def _stream_ended(feed: FrameFeed) -> ServomexConnectionError:
    """Why a frame feed ended: the receiver's own reason when it is a ConnectionError."""
    reason = feed.stop_reason
    if isinstance(reason, ServomexConnectionError):
        return reason
    return ServomexConnectionError(
        f"the continuous frame stream on {feed.label} ended (the receiver stopped)",
        context=ErrorContext(port=feed.label),
    )


def _validate(rate_hz: float, duration: float | None, buffer_size: int) -> None:
    if not (isinstance(rate_hz, int | float) and math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be None or a positive number, got {duration!r}")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        raise ValueError(f"buffer_size must be an integer >= 1, got {buffer_size!r}")


class _Producer:
    def __init__(
        self,
        source: PollSource,
        *,
        rate_hz: float,
        duration: float | None,
        names: Sequence[str] | None,
        timeout: float | None,
        overflow: OverflowPolicy,
        auto_reconnect: bool,
        reconnect_factory: Callable[[], Awaitable[PollSource]] | None,
        each_frame: bool,
        send: MemoryObjectSendStream[Sequence[Sample]],
        evict: MemoryObjectReceiveStream[Sequence[Sample]],
        summary: AcquisitionSummary,
    ) -> None:
        self.source = source
        self.period = 1.0 / rate_hz
        self.duration = duration
        self.total = None if duration is None else max(1, round(duration * rate_hz))
        self.names = names
        self.timeout = timeout
        self.overflow = overflow
        self.auto_reconnect = auto_reconnect
        self.reconnect_factory = reconnect_factory
        self.each_frame = each_frame
        self.send = send
        self.evict = evict
        self.summary = summary
        self.durations = _Durations()
        self._outage_since: float | None = None  # anyio clock at the outage's first error
        self._outage_total = 0.0  # seconds of the outages that have ended
        #: each_frame: the subscription record() made before its body ran (or the error that
        #: prevented it), so no frame after ``async with record(...)`` is missed.
        self.subscription: _Subscription | ServomexConnectionError | None = None

    async def run(self) -> None:
        summary = self.summary
        try:
            async with self.send, self.evict:
                if self.each_frame:
                    await self._follow_frames()
                else:
                    await self._loop()
        except anyio.BrokenResourceError:
            pass  # the consumer closed the stream: nothing left to do
        finally:
            if isinstance(self.subscription, _Subscription):
                self.subscription.close()
            self._count_outage(anyio.current_time())
            values = self.durations.values
            summary.tick_duration_ms_p50 = percentile(values, 0.50) * 1000.0
            summary.tick_duration_ms_p99 = percentile(values, 0.99) * 1000.0

    # ------------------------------------------------------------------ outages

    def _outage_begins(self, now: float) -> None:
        """A ConnectionError was absorbed; the first one of an outage counts a disconnect."""
        if self._outage_since is None:
            self._outage_since = now
            self.summary.disconnects += 1
        self._count_outage(now)

    def _outage_ends(self, now: float) -> None:
        """Data flows again: close the running outage, if any."""
        if self._outage_since is not None:
            self._outage_total += now - self._outage_since
            self._outage_since = None
            self.summary.outage_s = self._outage_total

    def _count_outage(self, now: float) -> None:
        """Bring ``outage_s`` up to ``now`` (a running outage counts so far)."""
        running = 0.0 if self._outage_since is None else now - self._outage_since
        self.summary.outage_s = self._outage_total + running

    async def _reconnect(self, backoff: int, deadline: float | None) -> int | None:
        """Back off, then rebuild the source if a factory is given.

        Returns the next backoff index (0 after a rebuild), or None when the recording's end
        (``deadline`` on anyio's clock) came during the backoff.
        """
        step = BACKOFF_STEPS_S[min(backoff, len(BACKOFF_STEPS_S) - 1)]
        wake = anyio.current_time() + step
        if deadline is not None and wake >= deadline:
            await anyio.sleep_until(deadline)
            return None
        await anyio.sleep_until(wake)
        self._count_outage(anyio.current_time())
        if self.reconnect_factory is None:
            return backoff + 1
        try:
            source = await self.reconnect_factory()
        except Exception as exc:
            if _connection_error(exc) is None:
                raise
            self._count_outage(anyio.current_time())
            return backoff + 1
        if self.each_frame:
            _frame_feed(source)  # a factory that builds something else is a programming error
        self.source = source
        return 0

    # ------------------------------------------------------------------ polled

    async def _loop(self) -> None:
        summary, period = self.summary, self.period
        start = anyio.current_time()
        summary.started_at = datetime.now(UTC)
        end = None if self.total is None else start + self.total * period
        tick = 0
        backoff = 0
        while self.total is None or tick < self.total:
            target = start + tick * period
            now = anyio.current_time()
            if now > target + period:
                # A slot that begins exactly now is not missed: the 1e-9 keeps float rounding
                # of (now - target) / period from counting one slot fewer.
                missed = int((now - target) / period + 1e-9)
                if self.total is not None:
                    missed = min(missed, self.total - tick)  # never count slots past the end
                summary.samples_late += missed
                tick += missed
                if self.total is not None and tick >= self.total:
                    break
                target = start + tick * period
            if target > now:
                await anyio.sleep_until(target)
            began = anyio.current_time()
            try:
                batch = await self.source.poll_samples(names=self.names, timeout=self.timeout)
            except Exception as exc:
                lost = _connection_error(exc)
                if lost is None or not self.auto_reconnect:
                    raise
                self._outage_begins(anyio.current_time())
                summary.samples_late += 1  # the tick that failed
                tick += 1
                next_backoff = await self._reconnect(backoff, end)
                if next_backoff is None:
                    # The end came during the backoff: the slots left were never polled.
                    assert self.total is not None
                    summary.samples_late += max(self.total - tick, 0)
                    break
                backoff = next_backoff
                continue
            ended = anyio.current_time()
            self._outage_ends(ended)
            self.durations.add(ended - began)
            summary.max_drift_ms = max(summary.max_drift_ms, (ended - target) * 1000.0)
            await self._deliver(batch)
            tick += 1

    # ------------------------------------------------------------------ each frame

    async def _follow_frames(self) -> None:
        summary = self.summary
        start = anyio.current_time()
        start_ns = time.monotonic_ns()
        summary.started_at = datetime.now(UTC)
        duration = self.duration
        end = None if duration is None else start + duration
        end_ns = None if duration is None else start_ns + round(duration * 1e9)
        backoff = 0
        while end is None or anyio.current_time() < end:
            first, self.subscription = self.subscription, None
            sub = first if first is not None else _subscribe(self.source)
            if isinstance(sub, _Subscription):
                try:
                    lost = await self._pump(sub, end, end_ns)
                finally:
                    sub.close()
                    self.summary.samples_late += sub.take_dropped()
                if lost is None:
                    return  # the end of the recording
                lost = _stream_ended(sub.feed)
            else:
                lost = sub
            if not self.auto_reconnect:
                raise lost
            self._outage_begins(anyio.current_time())
            next_backoff = await self._reconnect(backoff, end)
            if next_backoff is None:
                return
            backoff = next_backoff

    async def _pump(
        self, sub: _Subscription, end: float | None, end_ns: int | None
    ) -> ServomexConnectionError | None:
        """Hand over every frame until the end (returns None) or until the feed ends.

        When the feed ends, returns the ConnectionError that says so (completed by the caller
        with the receiver's own reason). Frames received before ``end_ns`` that are still
        queued when the deadline passes are handed over too. Frames the client dropped from
        the full queue meanwhile are counted late as each item is handed over (and once more
        when the subscription closes, by the caller).
        """
        receive = sub.receive
        while True:
            item: FrameItem | None = None
            with anyio.move_on_at(math.inf if end is None else end):
                try:
                    item = await receive.receive()
                except anyio.EndOfStream:
                    return ServomexConnectionError("the continuous frame stream ended")
            if item is None:  # the deadline: what arrived before it still counts
                while True:
                    try:
                        item = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        return None
                    if end_ns is not None and item.monotonic_ns > end_ns:
                        return None
                    await self._hand_over(item, sub)
            if end_ns is not None and item.monotonic_ns > end_ns:
                return None
            await self._hand_over(item, sub)

    async def _hand_over(self, item: FrameItem, sub: _Subscription) -> None:
        self.summary.samples_late += sub.take_dropped()
        device = sub.device
        self._outage_ends(anyio.current_time())
        if isinstance(item, Frame):
            batch: Sequence[Sample] = item.as_samples(device)
        else:
            batch = [item.as_sample(device)]
            self.summary.samples_late += 1  # a broadcast frame that could not be decoded
        await self._deliver(batch)

    async def _deliver(self, batch: Sequence[Sample]) -> None:
        summary = self.summary
        if self.overflow is OverflowPolicy.BLOCK:
            await self.send.send(batch)
        elif self.overflow is OverflowPolicy.DROP_NEWEST:
            try:
                self.send.send_nowait(batch)
            except anyio.WouldBlock:
                summary.samples_late += 1
                return
        else:
            while True:
                try:
                    self.send.send_nowait(batch)
                    break
                except anyio.WouldBlock:
                    try:
                        self.evict.receive_nowait()
                    except anyio.WouldBlock:
                        # The consumer took a batch meanwhile; try again.
                        continue
                    summary.samples_late += 1
        summary.samples_emitted += 1


@asynccontextmanager
async def record(
    source: PollSource,
    *,
    rate_hz: float,
    duration: float | None = None,
    names: Sequence[str] | None = None,
    timeout: float | None = None,
    overflow: OverflowPolicy = OverflowPolicy.BLOCK,
    buffer_size: int = 64,
    auto_reconnect: bool = False,
    reconnect_factory: Callable[[], Awaitable[PollSource]] | None = None,
    each_frame: bool = False,
) -> AsyncIterator[Recording[Sequence[Sample]]]:
    """Poll ``source`` at ``rate_hz`` and stream one batch of samples per tick.

    Usage::

        async with record(analyzer, rate_hz=10, duration=60) as rec:
            async for batch in rec.stream:
                ...
            print(rec.summary)

    **Continuous analysers: each frame once.** Polling a broadcaster is sample-and-hold (every
    tick re-reads the latest frame, so a frame shows up once per tick that falls into its
    period — or not at all). To record every broadcast frame exactly once, pass
    ``each_frame=True``::

        async with await open_continuous("/dev/ttyUSB0") as anz:
            async with record(anz, rate_hz=1, duration=600, each_frame=True) as rec:
                async for batch in rec.stream:  # one batch per broadcast frame
                    ...

    Args:
        source: a :class:`PollSource` (an Analyzer or a ServomexManager); with
            ``each_frame``, an entered continuous Analyzer.
        rate_hz: ticks per second (> 0). With ``each_frame`` it is validated but sets no
            cadence (the broadcast does).
        duration: seconds to record (> 0), or None to run until the block exits. The stream
            ends by itself after ``max(1, round(duration × rate_hz))`` ticks (skipped ones
            included); with ``each_frame``, at ``start + duration`` on anyio's clock.
        names, timeout: forwarded to ``source.poll_samples`` on every tick; ``timeout`` keeps
            its per-transaction meaning. Unused with ``each_frame``.
        overflow: what to do when ``buffer_size`` batches are waiting for the consumer.
        auto_reconnect: absorb ``ServomexConnectionError`` with backoff instead of ending.
            One outage (first error until the next successful poll or frame) counts one
            disconnect; ``summary.outage_s`` adds up their length.
        reconnect_factory: awaited after each backoff to rebuild the source (with
            ``each_frame``, a new entered continuous Analyzer, which is subscribed to).
        each_frame: hand over one batch per broadcast frame as it arrives
            (``frame.as_samples(device)``), every frame exactly once, instead of polling. A
            line the receiver rejected arrives as a one-sample batch holding the error Sample
            and counts in ``samples_late``.

    Raises:
        ValueError: ``rate_hz`` ≤ 0, ``duration`` ≤ 0, ``buffer_size`` < 1; ``each_frame``
            with a source that is not a continuous Analyzer (before anything starts).
        ServomexError: whatever ended the recording (a connection error only without
            ``auto_reconnect``), unwrapped from the task group.
    """
    _validate(rate_hz, duration, buffer_size)
    overflow = OverflowPolicy(overflow)
    subscription: _Subscription | ServomexConnectionError | None = None
    if each_frame:
        # Subscribed before the body runs: a frame that arrives right after entering counts.
        subscription = _subscribe(source)
        if isinstance(subscription, ServomexConnectionError) and not auto_reconnect:
            raise subscription
    send, receive = anyio.create_memory_object_stream[Sequence[Sample]](buffer_size)
    summary = AcquisitionSummary(started_at=datetime.now(UTC))
    producer = _Producer(
        source,
        rate_hz=rate_hz,
        duration=duration,
        names=names,
        timeout=timeout,
        overflow=overflow,
        auto_reconnect=auto_reconnect,
        reconnect_factory=reconnect_factory,
        each_frame=bool(each_frame),
        send=send,
        evict=receive.clone(),
        summary=summary,
    )
    producer.subscription = subscription
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(producer.run)
            try:
                yield Recording(stream=receive, summary=summary, rate_hz=float(rate_hz))
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        failure = unwrap_group(group)
        if failure is group:
            raise
    finally:
        if isinstance(producer.subscription, _Subscription):
            producer.subscription.close()  # the producer never took it over
        summary.finished_at = datetime.now(UTC)
    if failure is not None:
        # Raised outside the except block so the bare error keeps its own cause chain.
        raise failure
