"""Targets for the forwarder engine (docs/service.md §3): an in-memory one and a sink adapter.

Theory of operation
-------------------
A target stores ticks and confirms by returning from ``deliver``; it drops a tick it already
holds, recognised by ``(device, seq)``: the spool delivers each device's ticks in increasing
``seq``, so "already held" is "``seq`` at or below the last one stored for that device".

:class:`MemoryTarget` keeps ticks in lists that survive ``close()``/``open()`` (like a file or
a table), and can be told to fail, to hang, or to store part of a batch and then fail — what
the tests of the engine need. :class:`SinkTarget` puts any
:class:`~servomexlib.sinks.base.Sink` behind the protocol. Today's sinks store no ``seq``, so
it can remember what it delivered only for the life of the object: a retry in the same process
is filtered, but a batch stored just before the process was killed (and so not acknowledged)
is stored once more after the restart. It becomes exactly-once when the sinks carry ``seq``
and report the last one they hold per device on open (the service report describes the change).
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel

from ..devices.models import Sample
from ..errors import ServomexSinkWriteError
from ..sinks.base import Sink
from .spool_rows import SpooledTick

__all__ = ["MemoryTarget", "SinkTarget"]


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
    ``write_many`` of the new ticks' samples (module docstring for what it can dedupe)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._holds = _Holds()

    @property
    def duplicates(self) -> int:
        return self._holds.duplicates

    async def open(self) -> None:
        await self.sink.open()

    async def deliver(self, ticks: Sequence[SpooledTick]) -> None:
        fresh = self._holds.new(ticks)
        if fresh:
            await self.sink.write_many([s for t in fresh for s in t.samples])
        for tick in fresh:
            self._holds.stored(tick)

    async def close(self) -> None:
        await self.sink.close()
