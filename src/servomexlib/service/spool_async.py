"""The spool for the event loop: :class:`AsyncSpool` (docs/service.md §3).

Theory of operation
-------------------
:class:`~servomexlib.service.spool.Spool` is blocking (sqlite3; with ``synchronous=FULL`` each
commit waits for an fsync), so every call runs on a worker thread and the loop only waits.
Calls share one :class:`anyio.CapacityLimiter` of one token: they reach SQLite one at a time
and never compete with the sinks' own worker threads (anyio's default limiter), so a sink whose
thread hangs cannot delay a commit. A wait on a worker thread is not abandoned on cancellation:
a tick whose commit has started is always committed (or rolled back) before the cancellation is
delivered, so a cancelled caller never leaves half a tick behind.

Forwarders wait for new ticks with :meth:`AsyncSpool.wait_beyond` instead of polling: each
commit made through this object wakes them (an :class:`anyio.Event` replaced per commit).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from ..devices.models import Sample
from ..errors import ServomexError
from .spool import Spool
from .spool_rows import Backlog, NewTick, SpooledTick

__all__ = ["AsyncSpool"]


class AsyncSpool:
    """Async access to an open :class:`Spool` (which the caller owns and closes).

    ``inline=True`` runs each call on the event loop itself, blocking it for the call's
    duration: for tests on virtual time (a wait on a thread lets a virtual clock jump) and for
    measurements; a service uses the default, worker threads.
    """

    def __init__(self, spool: Spool, *, inline: bool = False) -> None:
        self.spool = spool
        self.inline = inline
        self._limiter = anyio.CapacityLimiter(1)
        self._changed = anyio.Event()

    async def _run[T](self, fn: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        call = functools.partial(fn, *args, **kw)
        if self.inline:
            await anyio.lowlevel.checkpoint()
            return call()
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    @property
    def head(self) -> int:
        """The position of the newest committed tick."""
        return self.spool.head

    async def wait_beyond(self, position: int) -> None:
        """Return once a tick after ``position`` is committed (at once if one is)."""
        while self.spool.head <= position:
            await self._changed.wait()

    async def append(
        self, device: str, samples: Sequence[Sample] | ServomexError | str, **kw: Any
    ) -> int:
        """:meth:`Spool.append` on a worker thread; wakes the forwarders."""
        try:
            return await self._run(self.spool.append, device, samples, **kw)
        finally:
            self._notify()

    async def append_many(self, ticks: Iterable[NewTick]) -> list[int]:
        """:meth:`Spool.append_many` on a worker thread; wakes the forwarders."""
        try:
            return await self._run(self.spool.append_many, list(ticks))
        finally:
            self._notify()

    async def register_sink(self, name: str, *, backfill: bool = False) -> None:
        await self._run(self.spool.register_sink, name, backfill=backfill)

    async def forget_sink(self, name: str) -> None:
        await self._run(self.spool.forget_sink, name)

    async def cursor(self, name: str) -> int:
        return await self._run(self.spool.cursor, name)

    async def pending(self, name: str, limit: int = 256) -> list[SpooledTick]:
        return await self._run(self.spool.pending, name, limit)

    async def ack(self, name: str, upto: int) -> None:
        await self._run(self.spool.ack, name, upto)

    async def backlog(self, name: str) -> Backlog:
        return await self._run(self.spool.backlog, name)

    async def dropped(self, name: str) -> int:
        return await self._run(self.spool.dropped, name)
