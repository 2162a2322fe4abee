"""Targets for the forwarder engine (docs/service.md §3): an in-memory one and a sink adapter.

Theory of operation
-------------------
A target stores ticks and confirms by returning from ``deliver``; it drops a tick it already
holds, recognised by ``(device, seq)``: the spool delivers each device's ticks in increasing
``seq``, so "already held" is "``seq`` at or below the last one stored for that device".

:class:`MemoryTarget` keeps ticks in lists that survive ``close()``/``open()`` (like a file or
a table), and can be told to fail, to hang, or to store part of a batch and then fail — what
the tests of the engine need. :class:`SinkTarget` puts any
:class:`~servomexlib.sinks.base.Sink` behind the protocol. A sink built for service rows
(``seq_column=True``, :class:`~servomexlib.sinks.base.SeqSink`) stores each row's ``seq`` and,
on every ``open()``, reports the last ``seq`` it holds per device: the filter is seeded from
that, so a batch stored just before the process was killed (and so never acknowledged in the
spool) is recognised after the restart and not stored again — exactly once. The SQL sinks
also drop such rows at the target (PostgreSQL: unique index and ON CONFLICT DO NOTHING). A
plain sink (no seq column) gets the in-memory filter only: a retry in the same process is
filtered, a batch stored just before a kill is stored again after the restart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.lowlevel

from ..devices.models import Sample
from ..errors import ServomexSinkWriteError
from ..sinks.base import SeqSink, Sink
from .spool_rows import SpooledTick

__all__ = ["MemoryTarget", "SinkTarget"]

_log = logging.getLogger("servomexlib.service")


class _Holds:
    """The last ``seq`` stored per device, and the filter it implies."""

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}
        self.duplicates = 0

    def new(self, ticks: Sequence[SpooledTick]) -> list[SpooledTick]:
        fresh: list[SpooledTick] = []
        last = dict(self.last_seq)
        for tick in ticks:
            if tick.seq <= last.get(tick.device, -1):
                self.duplicates += 1
                continue
            last[tick.device] = tick.seq
            fresh.append(tick)
        return fresh

    def stored(self, tick: SpooledTick) -> None:
        self.last_seq[tick.device] = tick.seq


class MemoryTarget:
    """Ticks kept in memory (``ticks``, and their rows in ``samples``), with switches for
    tests: ``failing`` (every open and delivery raises), ``hang`` (a delivery never returns),
    ``fail_after`` (store that many ticks of the next delivery, then raise)."""

    def __init__(self, label: str = "memory") -> None:
        self.label = label
        self.ticks: list[SpooledTick] = []
        self.is_open = False
        self.failing = False
        self.hang = False
        self.fail_after: int | None = None
        self.opens = 0
        self.deliveries = 0
        self._holds = _Holds()

    @property
    def samples(self) -> list[Sample]:
        """Every stored row, in delivery order."""
        return [s for t in self.ticks for s in t.samples]

    @property
    def keys(self) -> list[tuple[str, int]]:
        """``(device, seq)`` of every stored tick, in delivery order."""
        return [(t.device, t.seq) for t in self.ticks]

    @property
    def duplicates(self) -> int:
        """Ticks delivered again and dropped because they were held already."""
        return self._holds.duplicates

    def _refuse(self, what: str) -> ServomexSinkWriteError:
        return ServomexSinkWriteError(f"{self.label}: {what} refused (failing)")

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self.failing:
            raise self._refuse("open")
        self.is_open = True
        self.opens += 1

    async def deliver(self, ticks: Sequence[SpooledTick]) -> None:
        if not self.is_open:
            raise RuntimeError(f"{self.label} is not open")
        self.deliveries += 1
        if self.hang:
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()
        if self.failing:
            raise self._refuse("delivery")
        fresh = self._holds.new(ticks)
        budget, self.fail_after = self.fail_after, None
        for i, tick in enumerate(fresh):
            if budget is not None and i >= budget:
                raise ServomexSinkWriteError(f"{self.label}: failed after {budget} ticks")
            self.ticks.append(tick)
            self._holds.stored(tick)

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.is_open = False


class SinkTarget:
    """A :class:`~servomexlib.sinks.base.Sink` as a target: each delivery is one
    ``write_many`` of the new ticks' samples, with their ``seq`` when the sink has the seq
    column (module docstring for what it can dedupe)."""

    def __init__(self, sink: Sink | SeqSink) -> None:
        self.sink = sink
        self.carries_seq = bool(getattr(sink, "seq_column", False))
        self._holds = _Holds()

    @property
    def duplicates(self) -> int:
        return self._holds.duplicates

    async def open(self) -> None:
        await self.sink.open()
        if self.carries_seq:
            assert isinstance(self.sink, SeqSink)
            try:
                held = await self.sink.last_seq_by_device()
            except BaseException:
                await self.sink.close()
                raise
            # What the target holds is the truth: it may be ahead of this object (a batch
            # stored before a kill) and never behind what this process stored.
            for device, seq in held.items():
                if seq > self._holds.last_seq.get(device, -1):
                    self._holds.last_seq[device] = seq

    async def deliver(self, ticks: Sequence[SpooledTick]) -> None:
        fresh = self._holds.new(ticks)
        if len(fresh) < len(ticks):
            _log.info(
                "event=duplicates_dropped sink=%r ticks=%d reason='already held by the sink'",
                repr(self.sink), len(ticks) - len(fresh),
            )  # fmt: skip
        if fresh:
            samples = [s for t in fresh for s in t.samples]
            if self.carries_seq:
                assert isinstance(self.sink, SeqSink)
                seqs = [t.seq for t in fresh for _ in t.samples]
                await self.sink.write_many(samples, seqs=seqs)
            else:
                await self.sink.write_many(samples)
        for tick in fresh:
            self._holds.stored(tick)

    async def close(self) -> None:
        await self.sink.close()
