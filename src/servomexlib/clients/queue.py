"""Bounded queues that keep the newest items: :class:`LatestQueue` (private).

Theory of operation
-------------------
A live feed must neither block its producer nor grow without bound when its consumer stalls.
The continuous receiver serves the latest-frame cache, every waiter and every subscriber from
one task, so one subscriber that stops reading must not stop the others; and an unbounded
queue behind a consumer that stopped reading grows until the process runs out of memory.

A :class:`LatestQueue` is an anyio memory object stream of at most ``limit`` items whose
producer side never waits. When it is full, the **oldest** queued item is discarded to make
room for the new one — for a live view and for a recording the newest data matters most — and
counted in :attr:`LatestQueue.dropped`. The consumer reads the ordinary
:class:`~anyio.streams.memory.MemoryObjectReceiveStream` (:attr:`LatestQueue.receive`) and gets
the items in order, with a gap where items were dropped; nothing is dropped silently.

To evict, the queue holds a clone of the receive side. That clone would keep the stream open
after the consumer closed its own end, so :meth:`LatestQueue.put` checks the stream's
statistics and raises :class:`anyio.BrokenResourceError` — what the stream itself would raise —
once only the clone is left.

**Overflow episodes.** The first item dropped starts an episode, logged as one WARNING; the
episode ends when the queue has drained to half its limit (logged at INFO with the number of
items lost), and the next overflow logs again. A consumer stalled for an hour costs one log
line, not one per item.
"""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["LatestQueue"]


class LatestQueue[T]:
    """A memory object stream of at most ``limit`` items; overflow drops the oldest.

    Args:
        limit: the most items queued at once (>= 1).
        what: what the queue feeds, for the overflow log lines (``"subscriber 'x' on …"``).
        logger: where the overflow episodes are logged.

    Raises:
        ValueError: ``limit`` is not an integer >= 1.
    """

    def __init__(self, limit: int, *, what: str, logger: logging.Logger) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"queue limit must be an integer >= 1, got {limit!r}")
        self.limit = limit
        self.what = what
        self._log = logger
        self._send: MemoryObjectSendStream[T]
        self._send, self.receive = anyio.create_memory_object_stream[T](limit)
        self._evict: MemoryObjectReceiveStream[T] = self.receive.clone()
        self.dropped = 0  # items discarded to make room, since the queue was made
        self._episode = 0  # items dropped in the overflow episode running now (0: none)
        self._closed = False

    def __repr__(self) -> str:
        used = self._send.statistics().current_buffer_used
        return f"<LatestQueue {self.what} {used}/{self.limit} dropped={self.dropped}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Items waiting for the consumer now (never more than ``limit``)."""
        return self._send.statistics().current_buffer_used

    def put(self, item: T) -> int:
        """Queue ``item`` without waiting; returns how many old items it displaced (0 or 1).

        Raises:
            anyio.BrokenResourceError: the consumer closed its end.
            anyio.ClosedResourceError: the queue was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        stats = self._send.statistics()
        if stats.open_receive_streams <= 1:
            raise anyio.BrokenResourceError  # only the eviction clone is left: nobody reads
        if self._episode and stats.current_buffer_used <= self.limit // 2:
            self._log.info(
                "queue of %s drained; %d item(s) were dropped while it was full",
                self.what,
                self._episode,
            )
            self._episode = 0
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            pass
        else:
            return 0
        # Full (the consumer is not keeping up): make room by dropping the oldest item. All
        # of this is synchronous, so nothing can take the freed place in between.
        self._evict.receive_nowait()
        self._send.send_nowait(item)
        self.dropped += 1
        if not self._episode:
            self._log.warning(
                "queue of %s is full (%d items): dropping the oldest; the consumer is not "
                "keeping up",
                self.what,
                self.limit,
            )
        self._episode += 1
        return 1

    def send_nowait(self, item: T) -> None:
        """:meth:`put`, for producers written against a memory object send stream."""
        self.put(item)

    async def send(self, item: T) -> None:
        """:meth:`put` after a checkpoint: never waits for room."""
        await anyio.lowlevel.checkpoint()
        self.put(item)

    def close(self) -> None:
        """End the stream: the consumer reads what is queued, then the end of stream."""
        self._closed = True
        self._send.close()
        self._evict.close()
