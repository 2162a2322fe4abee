"""The forwarder engine: every sink reads the spool in order, delivers, and acknowledges only
what its target confirmed (docs/service.md §3).

Theory of operation
-------------------
A :class:`Target` is a sink seen from the spool: ``open()``, ``deliver(ticks)`` and ``close()``.
``deliver`` returning *is* the confirmation (a file flushed and fsync'd, a PostgreSQL
transaction committed, every MQTT PUBACK received); raising is a failure. A target is handed
whole :class:`~servomexlib.service.spool_rows.SpooledTick` objects, ``seq`` included, and must
drop ticks it already holds — ``(device, seq)`` at or below the last it stored for that device
— because a batch that was stored but not yet acknowledged when the process died, or when a
delivery timed out, is delivered again.

One :class:`Forwarder` task per sink loops: take up to ``batch_ticks`` ticks after the sink's
cursor (:meth:`AsyncSpool.pending`), deliver them under a deadline, then move the cursor
(:meth:`AsyncSpool.ack`). With nothing pending it sleeps until the next commit wakes it, then
lingers ``linger_s`` so that ticks arriving together go out as one batch. Any failure (open,
deliver, the deadline, even reading the spool) is counted, logged once with the sink's name,
the target is closed (bounded, shielded) and reopened after a backoff of 1 s doubling to 30 s;
a success resets the backoff and logs the recovery. Nothing is acknowledged that the target did
not confirm, so the backlog stays in the spool until the target is back and then drains in
order.

Isolation. Each forwarder is its own task: a failing sink only ever waits on its own backoff,
and polling commits to the spool through :class:`AsyncSpool`'s own thread token, never behind a
sink's thread. A hung delivery is cancelled at ``deliver_timeout_s``. Cancellation reaches a
target at its next checkpoint; a target blocked inside a worker thread (a hung NFS write) keeps
its forwarder waiting until the thread returns — that forwarder only: the others and polling go
on, and its backlog is visible in the metrics meanwhile.

:class:`ForwardingEngine` runs the forwarders of a set of named targets (the name is the
spool cursor's key, so it must stay stable across restarts: a sink's label, not its index in
the file) and :meth:`ForwardingEngine.flush` waits, bounded, until every sink has caught up
with the spool — what a clean stop does before cancelling them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import anyio
import anyio.abc

from ..errors import ServomexValidationError
from .spool_async import AsyncSpool
from .spool_rows import SpooledTick

__all__ = ["Forwarder", "ForwarderOptions", "ForwarderStats", "ForwardingEngine", "Target"]

_log = logging.getLogger("servomexlib.service.forwarding")


@runtime_checkable
class Target(Protocol):
    """Where one sink's ticks go (module docstring). ``deliver`` returns only once the ticks
    are stored for good, and skips ticks it already holds (by ``(device, seq)``)."""

    async def open(self) -> None: ...

    async def deliver(self, ticks: Sequence[SpooledTick]) -> None: ...

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ForwarderOptions:
    """How forwarders deliver: batch size in ticks, deadlines, backoff and linger (seconds)."""

    batch_ticks: int = 256
    deliver_timeout_s: float = 30.0
    open_timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    linger_s: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.batch_ticks, bool) or self.batch_ticks < 1:
            raise ServomexValidationError(f"batch_ticks must be >= 1, got {self.batch_ticks!r}")
        for name in ("deliver_timeout_s", "open_timeout_s", "close_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ServomexValidationError(f"{name} must be > 0, got {value!r}")
        if not (0 < self.backoff_initial_s <= self.backoff_max_s):
            raise ServomexValidationError(
                "backoff needs 0 < backoff_initial_s <= backoff_max_s, got "
                f"{self.backoff_initial_s!r}, {self.backoff_max_s!r}"
            )
        if not (math.isfinite(self.linger_s) and self.linger_s >= 0):
            raise ServomexValidationError(f"linger_s must be >= 0, got {self.linger_s!r}")


@dataclasses.dataclass(slots=True)
class ForwarderStats:
    """A forwarder's live counters (for metrics and logs); written by the forwarder only.

    ``state`` is ``starting``, ``delivering``, ``idle`` (caught up), ``backoff`` (waiting to
    retry after ``last_error``) or ``stopped``; ``acked`` is the sink's cursor as this
    forwarder knows it; ``last_ack_at`` is wall-clock seconds.
    """

    name: str
    state: str = "starting"
    delivered_ticks: int = 0
    delivered_rows: int = 0
    deliveries: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    acked: int = 0
    last_ack_at: float | None = None


class Forwarder:
    """Delivers one sink's backlog from the spool to its target (module docstring)."""

    def __init__(
        self,
        spool: AsyncSpool,
        name: str,
        target: Target,
        options: ForwarderOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.name = name
        self.target = target
        self.options = options or ForwarderOptions()
        self.stats = ForwarderStats(name)
        self._clock = clock
        self._is_open = False
        self._backoff = self.options.backoff_initial_s
        self._progress = anyio.Event()

    async def run(self) -> None:
        """Deliver until cancelled; the target is closed on the way out."""
        try:
            self._advanced(await self.spool.cursor(self.name))
            while True:
                await self._step()
        finally:
            self.stats.state = "stopped"
            await self._close_target()

    async def wait_acked(self, position: int) -> None:
        """Return once the sink's cursor is at or beyond ``position``."""
        while self.stats.acked < position:
            await self._progress.wait()

    def _advanced(self, position: int) -> None:
        if position > self.stats.acked:
            self.stats.acked = position
            progress, self._progress = self._progress, anyio.Event()
            progress.set()

    async def _step(self) -> None:
        opts = self.options
        if not self._is_open:
            try:
                with anyio.fail_after(opts.open_timeout_s):
                    await self.target.open()
            except Exception as exc:
                await self._failed("open", exc, opts.open_timeout_s)
                return
            self._is_open = True
        head = self.spool.head
        try:
            ticks = await self.spool.pending(self.name, opts.batch_ticks)
        except Exception as exc:
            await self._failed("read the spool", exc, None)
            return
        if not ticks:
            self._advanced(head)
            self.stats.state = "idle"
            await self.spool.wait_beyond(head)
            if opts.linger_s:
                await anyio.sleep(opts.linger_s)
            return
        self.stats.state = "delivering"
        try:
            with anyio.fail_after(opts.deliver_timeout_s):
                await self.target.deliver(ticks)
            await self.spool.ack(self.name, ticks[-1].position)
        except Exception as exc:
            await self._failed("deliver", exc, opts.deliver_timeout_s)
            return
        self._delivered(ticks)

    def _delivered(self, ticks: Sequence[SpooledTick]) -> None:
        stats = self.stats
        if stats.consecutive_failures:
            _log.warning(
                "event=sink_recovered sink=%s after_failures=%d",
                self.name, stats.consecutive_failures,
            )  # fmt: skip
        stats.deliveries += 1
        stats.delivered_ticks += len(ticks)
        stats.delivered_rows += sum(len(t.samples) for t in ticks)
        stats.consecutive_failures = 0
        stats.last_error = None
        stats.last_ack_at = self._clock()
        self._backoff = self.options.backoff_initial_s
        self._advanced(ticks[-1].position)

    async def _failed(self, during: str, exc: Exception, deadline: float | None) -> None:
        stats = self.stats
        if isinstance(exc, TimeoutError) and deadline is not None:
            message = f"no confirmation within {deadline:g} s (cancelled)"
        else:
            message = f"{type(exc).__name__}: {exc}"
        stats.errors += 1
        stats.consecutive_failures += 1
        stats.last_error = message
        stats.state = "backoff"
        delay = self._backoff
        self._backoff = min(self.options.backoff_max_s, delay * 2)
        log = _log.error if stats.consecutive_failures == 1 else _log.warning
        log(
            "event=sink_failed sink=%s during=%r error=%r failures=%d retry_in_s=%g",
            self.name, during, message, stats.consecutive_failures, delay,
        )  # fmt: skip
        await self._close_target()
        await anyio.sleep(delay)

    async def _close_target(self) -> None:
        """Close the target (it is reopened before the next attempt); bounded and shielded, a
        failing close is only logged."""
        if not self._is_open:
            return
        self._is_open = False
        with anyio.move_on_after(self.options.close_timeout_s, shield=True) as scope:
            try:
                await self.target.close()
            except Exception as exc:
                _log.warning("event=sink_close_failed sink=%s error=%r", self.name, str(exc))
        if scope.cancelled_caught:
            _log.warning(
                "event=sink_close_timeout sink=%s timeout_s=%g",
                self.name, self.options.close_timeout_s,
            )  # fmt: skip


class ForwardingEngine:
    """Runs one :class:`Forwarder` per named target while the ``async with`` block runs.

    On entry every name is registered in the spool (a new sink starts after the newest tick,
    or with ``backfill`` at the oldest tick held: :meth:`Spool.register_sink`); on exit the
    forwarders are cancelled and their targets closed. Call :meth:`flush` first for a clean
    stop.
    """

    def __init__(
        self,
        spool: AsyncSpool,
        targets: Mapping[str, Target],
        options: ForwarderOptions | None = None,
        *,
        backfill: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.backfill = backfill
        self.forwarders = {
            name: Forwarder(spool, name, target, options, clock=clock)
            for name, target in targets.items()
        }
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def stats(self) -> dict[str, ForwarderStats]:
        """Each sink's live counters, by name."""
        return {name: f.stats for name, f in self.forwarders.items()}

    async def __aenter__(self) -> Self:
        for name in self.forwarders:
            await self.spool.register_sink(name, backfill=self.backfill)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        for forwarder in self.forwarders.values():
            tg.start_soon(forwarder.run, name=f"forwarder {forwarder.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        return await tg.__aexit__(exc_type, exc, tb)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every sink has acknowledged every tick committed so far, at most
        ``timeout_s``; True when they all did."""
        head = self.spool.head
        with anyio.move_on_after(timeout_s):
            for forwarder in self.forwarders.values():
                await forwarder.wait_acked(head)
            return True
        lagging = [f.name for f in self.forwarders.values() if f.stats.acked < head]
        _log.warning("event=flush_incomplete timeout_s=%g sinks=%s", timeout_s, ",".join(lagging))
        return False
