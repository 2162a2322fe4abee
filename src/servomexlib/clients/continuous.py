"""The Continuous ASCII client: a background receiver over an unsolicited broadcast (private).

Theory of operation
-------------------
In continuous mode the analyser prints one frame every *frame period* (about 2 s on the
measured unit) and accepts no commands (docs/protocol.md, §2, §3). So nothing is ever requested:
a single receiver task, started in the Analyzer's task group, owns the transport's read side.

* It reads chunks with a 30 s timeout and simply reads again on timeout (a slow broadcast is
  not an error); end of stream or a closed or broken port stops it quietly (docs/protocol.md, §9.6).
* Chunks go through the pure, bounded :class:`~servomexlib.wire.continuous.FrameSplitter`
  (CR LF, LF or CR), each segment through :func:`~servomexlib.wire.continuous.parse_frame`,
  stamped with the UTC wall clock and ``time.monotonic_ns()`` of the chunk that completed it.
* Frame-sized reads. A serial line delivers a frame in many small chunks (a pty or a USB
  adapter hands over a few bytes per millisecond), and every chunk read costs an event-loop
  wake-up, which dominates the receiver's CPU. When the transport knows its character time
  (``char_time_s``: serial ports, the paced simulator), the receiver does not read again while
  a frame is still arriving: it sleeps for the wire time of the bytes the frame still needs (its
  declared length, or the last frame's length before the header is in), then reads the rest in
  one piece. Links with unknown rate (TCP) read chunk by chunk as before.
* Timestamps stay "when the frame's last byte was received" (docs/protocol.md, §9.6): a frame
  completed by a chunk that also carries later bytes is stamped earlier by those bytes' wire
  time, never earlier than the previous read (:mod:`.continuous_stamps`).
* A good frame becomes the latest-frame cache, wakes everyone waiting for the next frame and is
  fanned out, one :class:`~servomexlib.devices.models.Sample` per reading, to every subscriber's
  queue, and as the :class:`~servomexlib.devices.models.Frame` itself to every frame
  subscriber (:meth:`ContinuousClient.subscribe_frames`, what ``record(each_frame=True)``
  follows). A bad segment (parse or checksum failure) or a splitter overflow increments
  ``dropped_frames`` and is delivered to current subscribers as an error Sample (a
  :class:`FrameRejection` to frame subscribers); the loop keeps running whatever arrives.

Bounded subscriber queues
-------------------------
Every subscription is a bounded :class:`~servomexlib.clients.queue.LatestQueue` that drops its
oldest item when full and counts it (:mod:`.continuous_subscriptions`): at most
:data:`SUBSCRIBER_QUEUE_SAMPLES` samples per sample subscriber, :data:`FRAME_QUEUE_FRAMES`
items per frame subscriber.

The receiver itself — its start without a backlog, the loop, stamping, and why a bug is not
a lost line — is :mod:`.continuous_receiver`.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from ..devices.models import (
    CONTINUOUS_CAPABILITIES,
    AnalyserStatus,
    Capability,
    ChannelId,
    ChannelInfo,
    ChannelStatus,
    DeviceInfo,
    Frame,
    Reading,
    Sample,
)
from ..errors import (
    ServomexConnectionError,
    ServomexError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from ..settings import SerialSettings
from ..transport.base import Transport
from ..wire.continuous import MAX_SEGMENT
from .continuous_receiver import (
    CHUNK_TIMEOUT_S,
    DEFAULT_FRAME_PERIOD_S,
    MAX_COALESCE_CHARS,
    RECEIVE_BYTES,
    Receiver,
)
from .continuous_subscriptions import FrameItem, FrameRejection, Subscriptions

__all__ = [
    "CHUNK_TIMEOUT_S",
    "CONTINUOUS_CAPABILITIES",
    "DEFAULT_FRAME_PERIOD_S",
    "FRAME_QUEUE_FRAMES",
    "MAX_COALESCE_CHARS",
    "RECEIVE_BYTES",
    "SUBSCRIBER_QUEUE_SAMPLES",
    "ContinuousClient",
    "ContinuousStatistics",
    "FrameItem",
    "FrameRejection",
    "first_frame_wait",
]

_log = logging.getLogger("servomexlib.continuous")

#: Most samples one ``subscribe()`` queue holds; past it the oldest are dropped and counted.
SUBSCRIBER_QUEUE_SAMPLES = 100_000
#: Most frames (or rejected lines) one ``subscribe_frames()`` queue holds; likewise.
FRAME_QUEUE_FRAMES = 20_000
MODEL = "4000-series"


def first_frame_wait(timeout: float, frame_period: float | None) -> float:
    """``max(timeout, 2 × frame_period)``, ``frame_period`` defaulting to 2.0 s (docs/protocol.md
    §9.6)."""
    period = DEFAULT_FRAME_PERIOD_S if frame_period is None else frame_period
    return max(timeout, 2.0 * period)


@dataclasses.dataclass(frozen=True, slots=True)
class ContinuousStatistics:
    """Counters of one continuous client (all since it was created)."""

    frames_ok: int  # frames parsed and published
    dropped_frames: int  # segments rejected by parse/checksum + splitter overflows
    garbage_bytes: int  # bytes the splitter discarded (overflow, noise around frames)
    overflows: int  # times a line exceeded the splitter bound
    recovered: int  # frames cut out of a noisy line
    bytes_received: int
    subscribers: int  # sample and frame subscribers
    buffered: int  # bytes the splitter holds now (never more than its bound)
    running: bool
    stale_lines: int = 0  # lines discarded as waiting before the receiver started
    flushed_bytes: int = 0  # bytes the transport discarded when the receiver started
    subscriber_overflows: int = 0  # samples and frames dropped from full subscriber queues


class ContinuousClient(Receiver):
    """Client for an analyser in Continuous ASCII mode (implements ``AnalyzerClient``).

    Args:
        transport: the line; owned (``aclose`` closes it).
        timeout: the open-time timeout, base of the first-frame wait.
        frame_period: expected broadcast period in seconds (None → 2.0).
        max_segment: the splitter's bound on one line.
        sample_queue: most samples one ``subscribe()`` queue holds, oldest dropped past it
            (None → :data:`SUBSCRIBER_QUEUE_SAMPLES`).
        frame_queue: most items one ``subscribe_frames()`` queue holds, likewise
            (None → :data:`FRAME_QUEUE_FRAMES`).

    Raises:
        ValueError: a queue bound that is not an integer >= 1.
    """

    capabilities: Capability = CONTINUOUS_CAPABILITIES
    address: int = 0

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = 1.0,
        frame_period: float | None = None,
        max_segment: int = MAX_SEGMENT,
        sample_queue: int | None = None,
        frame_queue: int | None = None,
    ) -> None:
        # None: the module constants, read now (so a test or an application can change them).
        sample_queue = SUBSCRIBER_QUEUE_SAMPLES if sample_queue is None else sample_queue
        frame_queue = FRAME_QUEUE_FRAMES if frame_queue is None else frame_queue
        for name, bound in (("sample_queue", sample_queue), ("frame_queue", frame_queue)):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {bound!r}")
        super().__init__(
            transport,
            frame_period=frame_period,
            max_segment=max_segment,
            subscriptions=Subscriptions(transport.label, sample_queue, frame_queue),
        )
        self.timeout = timeout
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ state

    @property
    def first_frame_timeout(self) -> float:
        return first_frame_wait(self.timeout, self.frame_period)

    @property
    def latest_frame(self) -> Frame | None:
        """The most recent good frame, or None (no I/O)."""
        return self._latest

    @property
    def dropped_frames(self) -> int:
        return self._dropped

    @property
    def running(self) -> bool:
        return self._running

    def statistics(self) -> ContinuousStatistics:
        stats = self._splitter.stats()
        return ContinuousStatistics(
            frames_ok=self._frames_ok,
            dropped_frames=self._dropped,
            garbage_bytes=stats.garbage_bytes,
            overflows=stats.overflows,
            recovered=stats.recovered,
            bytes_received=self._bytes,
            subscribers=len(self._subs),
            buffered=stats.buffered,
            running=self._running,
            stale_lines=self._stale_lines,
            flushed_bytes=self._flushed,
            subscriber_overflows=self._subs.overflowed,
        )

    def __repr__(self) -> str:
        state = "running" if self._running else ("stopped" if self._stopped else "idle")
        subscribers = len(self._subs)
        return (
            f"<ContinuousClient {self.label!r} {state} frames={self._frames_ok} "
            f"dropped={self._dropped} stale={self._stale_lines} subscribers={subscribers}>"
        )

    @property
    def stop_reason(self) -> ServomexError | None:
        """Why the receiver stopped (end of stream, lost port, a bug as its cause), or None."""
        return self._stop_reason

    # ------------------------------------------------------------------ lifecycle

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the receiver in ``task_group``; returns once it is running."""
        if self._started:
            raise ServomexConnectionError(
                "continuous receiver already started", context=self._ctx()
            )
        if self._closed:
            raise ServomexConnectionError(f"{self.label} is closed", context=self._ctx())
        self._started = True
        await task_group.start(self._run)

    async def aclose(self) -> None:
        """Stop the receiver (if running), end every subscription and close the transport."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        self._finish(None)
        await self.transport.aclose()

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, device: str = "") -> tuple[MemoryObjectReceiveStream[Sample], object]:
        """A new queue of Samples, labelled ``device``; returns (queue, token).

        The queue holds at most ``sample_queue`` samples (:data:`SUBSCRIBER_QUEUE_SAMPLES`);
        when it is full the oldest sample is dropped for the new one and counted
        (:meth:`subscriber_dropped`). Pass the token to :meth:`unsubscribe`. When the receiver
        stops, the queue ends.

        Raises:
            ServomexConnectionError: the receiver is not running.
        """
        self._require_running()
        return self._subs.add_samples(device)

    def subscribe_frames(self) -> tuple[MemoryObjectReceiveStream[FrameItem], object]:
        """A new queue of every line the receiver handles from now on.

        Each good frame arrives as its :class:`~servomexlib.devices.models.Frame` (exactly
        once, in order), each rejected line as a :class:`FrameRejection`. The queue holds at
        most ``frame_queue`` items (:data:`FRAME_QUEUE_FRAMES`); when it is full the oldest is
        dropped for the new one and counted (:meth:`subscriber_dropped`). Returns (queue,
        token); pass the token to :meth:`unsubscribe`. The queue ends when the receiver stops
        (end of stream, lost port, ``aclose``); :attr:`stop_reason` then says why.

        Raises:
            ServomexConnectionError: the receiver is not running.
        """
        self._require_running()
        return self._subs.add_frames()

    def subscriber_dropped(self, token: object) -> int:
        """Items the subscription ``token`` lost to a full queue so far (0 for unknown tokens).

        Still answers after the subscription ended, so a consumer can account for every loss.
        """
        return self._subs.dropped(token)

    def unsubscribe(self, token: object) -> None:
        """Stop delivering to the subscription ``token`` (samples or frames); idempotent."""
        self._subs.remove(token)

    # ------------------------------------------------------------------ waiting

    def _require_running(self) -> None:
        if self._running:
            return
        if not self._started:
            raise ServomexConnectionError(
                "analyser not started: enter it with 'async with' first "
                "(continuous mode needs its background receiver)",
                context=self._ctx(),
            )
        reason = self._stop_reason
        if self._crash is not None:
            detail = f": internal error {self._crash!r}"
        else:
            detail = f": {reason.message}" if reason is not None else ""
        stopped = ServomexConnectionError(
            f"continuous receiver on {self.label} has stopped{detail}", context=self._ctx()
        )
        # Chained to what stopped it: the bug itself when a bug did, else the transport's end.
        cause = self._crash if self._crash is not None else reason
        if cause is not None:
            raise stopped from cause
        raise stopped

    async def wait_frame(self, *, timeout: float | None = None) -> Frame:
        """Wait for the **next** good frame (not the cached one).

        Args:
            timeout: seconds; None → the first-frame wait ``max(timeout, 2 × frame_period)``.

        Raises:
            ServomexTimeoutError: ``"no continuous frame within …"``.
            ServomexConnectionError: not started, or the stream ended while waiting.
        """
        self._require_running()
        limit = self.first_frame_timeout if timeout is None else timeout
        event = self._next_frame
        assert event is not None
        count = self._frames_ok
        started = time.monotonic()
        with anyio.move_on_after(limit):
            await event.wait()
        if self._frames_ok > count and self._latest is not None:
            return self._latest
        if self._stopped:
            self._require_running()
        raise ServomexTimeoutError(
            f"no continuous frame within {limit}s on {self.label}",
            context=self._ctx(elapsed_s=time.monotonic() - started),
        )

    # ------------------------------------------------------------------ AnalyzerClient

    async def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        """The cached latest frame; the next frame if none is cached yet or ``wait_fresh``."""
        self._require_running()
        if self._latest is not None and not wait_fresh:
            await anyio.lowlevel.checkpoint()
            return self._latest
        return await self.wait_frame(timeout=timeout)

    async def read_channel(self, ch: ChannelId, *, timeout: float | None = None) -> Reading:
        frame = await self.poll(timeout=timeout)
        try:
            return frame.channel(ch)
        except ServomexValidationError as exc:
            raise exc.with_context(port=self.label, protocol=self.protocol, channel=ch) from None

    async def status(self, ch: ChannelId, *, timeout: float | None = None) -> ChannelStatus:
        return (await self.read_channel(ch, timeout=timeout)).status

    async def analyser_status(self, *, timeout: float | None = None) -> AnalyserStatus:
        return (await self.poll(timeout=timeout)).analyser

    async def identify(self, *, timeout: float | None = None) -> DeviceInfo:
        """Every block of the latest (or first) frame; unlabelled blocks have name None."""
        frame = await self.poll(timeout=timeout)
        settings = self.transport.serial_settings
        return DeviceInfo(
            model=MODEL,
            channels=tuple(
                ChannelInfo(channel=r.channel, kind=r.kind, name=r.name, unit=r.unit)
                for r in frame.readings
            ),
            protocol=self.protocol,
            address=0,
            serial_settings=settings if settings is not None else SerialSettings(port=self.label),
        )
