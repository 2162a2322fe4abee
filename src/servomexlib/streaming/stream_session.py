"""``StreamingSession``: an async iterator and async context manager over Samples.

Usage: docs/quickstart-async.md ("Continuous mode: the broadcast").

Two shapes share this class:

* **Subscription** (continuous, AUTOPRINT): the queue is filled by the client's receiver; the
  session is live as soon as it is created, so it can be iterated with or without ``async with``.
  ``aclose()`` unsubscribes and frees the queue.
* **Producer** (Modbus, POLL): a coroutine factory fills the queue; entering the session starts
  it in a task group the session owns, closing cancels it. An error the producer raises is
  re-raised to the consumer once the queued samples are read.

Bounded queues
--------------
Neither shape's queue grows without end behind a consumer that stopped reading. A
subscription's queue is the receiver's (``clients.continuous.SUBSCRIBER_QUEUE_SAMPLES``,
100 000 samples); a producer session's queue holds at most :data:`STREAM_QUEUE_SAMPLES`
(100 000 samples: over five hours of a 5-channel analyser polled at 1 Hz). The rule is the
same for both: the producer never waits, and when the queue is full the **oldest** sample is
dropped for the new one — a live stream wants the newest data — and counted in
:attr:`StreamingSession.dropped`, with one WARNING per overflow episode (logged under
``servomexlib.streaming`` or ``servomexlib.continuous``).

Cancellation: the task group is entered and left by the task that runs ``async with``. If that
task is cancelled while entering (the producer is being started) or while leaving, the task
group is still exited there and then — a task group left entered would leave its cancel scope
on the caller's cancel-scope stack and break every scope the caller opens afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Protocol, Self

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from ..clients.queue import LatestQueue
from ..devices.models import Sample, StreamMode
from ..errors import ServomexValidationError

__all__ = ["STREAM_QUEUE_SAMPLES", "Producer", "SampleSender", "StreamingSession"]

_log = logging.getLogger("servomexlib.streaming")

#: Most samples a producer session queues for its consumer; past it the oldest are dropped.
STREAM_QUEUE_SAMPLES = 100_000


class SampleSender(Protocol):
    """The send side a producer fills: a memory object send stream, or the session's queue."""

    def send_nowait(self, item: Sample, /) -> None: ...

    async def send(self, item: Sample, /) -> None: ...

    def close(self) -> None: ...


type Producer = Callable[[SampleSender], Awaitable[None]]
"""Fills the queue until done or cancelled; must not close the send side itself."""


class StreamingSession:
    """Samples from one Analyzer, in arrival order.

    Build it through ``Analyzer.stream()``. Iteration ends when the session is closed or the
    underlying stream ends (e.g. the Analyzer exits).

    Args:
        receive: the queue the samples are read from.
        mode: AUTOPRINT (subscription) or POLL (producer).
        on_close: called once by ``aclose`` (unsubscribes from the receiver).
        producer: for producer sessions, the coroutine factory started on entry.
        send: the queue's send side, handed to ``producer`` (and closed when it ends).
        dropped: for subscription sessions, how many samples the receiver has dropped from
            this subscription's full queue (what :attr:`dropped` reports).
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Sample],
        *,
        mode: StreamMode,
        on_close: Callable[[], None] | None = None,
        producer: Producer | None = None,
        send: SampleSender | None = None,
        dropped: Callable[[], int] | None = None,
    ) -> None:
        if (producer is None) != (send is None):
            raise ValueError("producer and send are given together")
        self._receive = receive
        self._send = send
        self._dropped = dropped
        self._mode = mode
        self._on_close = on_close
        self._producer = producer
        self._stack: AsyncExitStack | None = None
        self._scope: anyio.CancelScope | None = None
        self._error: BaseException | None = None
        self._closed = False

    @classmethod
    def with_producer(
        cls,
        producer: Producer,
        *,
        mode: StreamMode = StreamMode.POLL,
        limit: int | None = None,
    ) -> Self:
        """A producer session over a fresh queue of at most ``limit`` samples.

        ``limit`` None means :data:`STREAM_QUEUE_SAMPLES` (read when the session is made).
        The producer's ``send_nowait``/``send`` never wait: on a full queue the oldest sample
        is dropped and counted in :attr:`dropped` (module docstring).

        Raises:
            ValueError: ``limit`` is not an integer >= 1.
        """
        bound = STREAM_QUEUE_SAMPLES if limit is None else limit
        queue = LatestQueue[Sample](bound, what=f"{mode.value} stream", logger=_log)
        session = cls(queue.receive, mode=mode, producer=producer, send=queue)
        session._dropped = lambda: queue.dropped
        return session

    @property
    def mode(self) -> StreamMode:
        return self._mode

    @property
    def dropped(self) -> int:
        """Samples dropped so far because this session's queue was full (oldest first).

        0 when the session was built without a way to know (a subscription whose receiver
        does not report it).
        """
        return self._dropped() if self._dropped is not None else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<StreamingSession mode={self._mode.value} {state} dropped={self.dropped}>"

    # ------------------------------------------------------------------ context manager

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ServomexValidationError("streaming session is closed")
        if self._producer is not None and self._stack is None:
            stack = AsyncExitStack()
            tg = await stack.enter_async_context(anyio.create_task_group())
            try:
                await tg.start(self._run_producer)
            except BaseException as exc:
                # Cancelled (or failed) while starting the producer: leave the task group here,
                # in LIFO order, before the exception propagates.
                self._shutdown()
                await _exit(stack, exc)
                raise
            self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous part first: nothing between here and the task group's exit can be
        # interrupted by a cancellation, so the group is always left.
        self._shutdown()
        stack, self._stack = self._stack, None
        if stack is not None:
            await _exit(stack, exc)

    async def _run_producer(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._producer is not None
        assert self._send is not None
        send = self._send
        with anyio.CancelScope() as scope:
            self._scope = scope
            task_status.started()
            try:
                await self._producer(send)
            except Exception as exc:
                # Re-raised to the consumer after the queued samples (bare, not a group).
                self._error = exc
            finally:
                send.close()

    # ------------------------------------------------------------------ iteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Sample:
        if self._producer is not None and self._stack is None and not self._closed:
            raise ServomexValidationError(
                "enter the POLL streaming session first: async with anz.stream(...) as samples:"
            )
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            error, self._error = self._error, None
            if error is not None:
                raise error from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop the producer (if any), unsubscribe, free the queue. Idempotent."""
        self._shutdown()
        await anyio.lowlevel.checkpoint()

    def _shutdown(self) -> None:
        """The synchronous part of closing: cancel the producer, unsubscribe, close the queue."""
        if self._closed:
            return
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        if self._on_close is not None:
            self._on_close()
        if self._send is not None and self._stack is None:
            self._send.close()
        self._receive.close()


async def _exit(stack: AsyncExitStack, exc: BaseException | None) -> None:
    """Leave the session's task group with ``exc`` in flight.

    A cancellation is handed to the task group (it is the host task's own); any other error is
    not, so it propagates bare — the caller's own exception, not an exception group.
    """
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        await stack.__aexit__(type(exc), exc, exc.__traceback__)
    else:
        await stack.aclose()
