"""Fixed-rate acquisition: :func:`record` and its live :class:`AcquisitionSummary` (api.md §7).

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

Tick durations for the percentiles are kept exactly for the first 2**20 ticks (8 MiB), then as
a uniform reservoir of that size, so a week-long recording stays flat in memory.
"""

from __future__ import annotations

import dataclasses
import math
import random
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..devices.models import OverflowPolicy, Sample
from ..errors import ServomexConnectionError

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


@runtime_checkable
class PollSource(Protocol):
    """Anything that yields one batch of samples per call (an Analyzer, a ServomexManager)."""

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> Sequence[Sample]: ...


@dataclasses.dataclass(slots=True)
class AcquisitionSummary:
    """Live counters of a recording; written only by the recorder."""

    started_at: datetime
    finished_at: datetime | None = None
    samples_emitted: int = 0
    samples_late: int = 0
    max_drift_ms: float = 0.0
    tick_duration_ms_p50: float = 0.0
    tick_duration_ms_p99: float = 0.0
    disconnects: int = 0


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
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, ServomexConnectionError) else None


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


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
        send: MemoryObjectSendStream[Sequence[Sample]],
        evict: MemoryObjectReceiveStream[Sequence[Sample]],
        summary: AcquisitionSummary,
    ) -> None:
        self.source = source
        self.period = 1.0 / rate_hz
        self.total = None if duration is None else max(1, round(duration * rate_hz))
        self.names = names
        self.timeout = timeout
        self.overflow = overflow
        self.auto_reconnect = auto_reconnect
        self.reconnect_factory = reconnect_factory
        self.send = send
        self.evict = evict
        self.summary = summary
        self.durations = _Durations()

    async def run(self) -> None:
        summary = self.summary
        try:
            async with self.send, self.evict:
                await self._loop()
        except anyio.BrokenResourceError:
            pass  # the consumer closed the stream: nothing left to do
        finally:
            values = self.durations.values
            summary.tick_duration_ms_p50 = percentile(values, 0.50) * 1000.0
            summary.tick_duration_ms_p99 = percentile(values, 0.99) * 1000.0

    async def _loop(self) -> None:
        summary, period = self.summary, self.period
        start = anyio.current_time()
        summary.started_at = datetime.now(UTC)
        tick = 0
        backoff = 0
        while self.total is None or tick < self.total:
            target = start + tick * period
            now = anyio.current_time()
            if now > target + period:
                missed = int((now - target) / period)
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
                backoff = await self._reconnect(backoff)
                tick += 1
                continue
            ended = anyio.current_time()
            self.durations.add(ended - began)
            summary.max_drift_ms = max(summary.max_drift_ms, (ended - target) * 1000.0)
            await self._deliver(batch)
            tick += 1

    async def _reconnect(self, backoff: int) -> int:
        """Absorb one lost connection; returns the next backoff index."""
        summary = self.summary
        summary.samples_late += 1
        summary.disconnects += 1
        await anyio.sleep(BACKOFF_STEPS_S[min(backoff, len(BACKOFF_STEPS_S) - 1)])
        if self.reconnect_factory is None:
            return backoff + 1
        try:
            self.source = await self.reconnect_factory()
        except Exception as exc:
            if _connection_error(exc) is None:
                raise
            return backoff + 1
        return 0

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
) -> AsyncIterator[Recording[Sequence[Sample]]]:
    """Poll ``source`` at ``rate_hz`` and stream one batch of samples per tick.

    Usage::

        async with record(analyzer, rate_hz=10, duration=60) as rec:
            async for batch in rec.stream:
                ...
            print(rec.summary)

    Args:
        source: a :class:`PollSource` (an Analyzer or a ServomexManager).
        rate_hz: ticks per second (> 0).
        duration: seconds to record (> 0), or None to run until the block exits. The stream
            ends by itself after ``max(1, round(duration × rate_hz))`` ticks (skipped ones
            included).
        names, timeout: forwarded to ``source.poll_samples`` on every tick; ``timeout`` keeps
            its per-transaction meaning.
        overflow: what to do when ``buffer_size`` batches are waiting for the consumer.
        auto_reconnect: absorb ``ServomexConnectionError`` with backoff instead of ending.
        reconnect_factory: awaited after each backoff to rebuild the source.

    Raises:
        ValueError: ``rate_hz`` ≤ 0, ``duration`` ≤ 0, ``buffer_size`` < 1.
        ServomexError: whatever ended the recording (a connection error only without
            ``auto_reconnect``), unwrapped from the task group.
    """
    _validate(rate_hz, duration, buffer_size)
    overflow = OverflowPolicy(overflow)
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
        send=send,
        evict=receive.clone(),
        summary=summary,
    )
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(producer.run)
            try:
                yield Recording(stream=receive, summary=summary, rate_hz=float(rate_hz))
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        failure = _unwrap(group)
        if failure is group:
            raise
    finally:
        summary.finished_at = datetime.now(UTC)
    if failure is not None:
        # Raised outside the except block so the bare error keeps its own cause chain.
        raise failure
