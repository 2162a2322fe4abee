"""The Continuous ASCII client: a background receiver over an unsolicited broadcast (private).

Theory of operation
-------------------
In continuous mode the analyser prints one frame every *frame period* (about 2 s on the
measured unit) and accepts no commands (protocol.md §2, §3). So nothing is ever requested:
a single receiver task, started in the Analyzer's task group, owns the transport's read side.

* It reads chunks with a 30 s timeout and simply reads again on timeout (a slow broadcast is
  not an error); end of stream or a closed or broken port stops it quietly (protocol.md §9.2).
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
* Timestamps stay "when the frame's last byte was received" (api.md §2): a frame completed by a
  chunk that also carries later bytes is stamped earlier by those bytes' wire time, never
  earlier than the previous read.
* A good frame becomes the latest-frame cache, wakes everyone waiting for the next frame and is
  fanned out, one :class:`~servomexlib.devices.models.Sample` per reading, to every subscriber's
  queue, and as the :class:`~servomexlib.devices.models.Frame` itself to every frame
  subscriber (:meth:`ContinuousClient.subscribe_frames`, what ``record(each_frame=True)``
  follows). A bad segment (parse or checksum failure) or a splitter overflow increments
  ``dropped_frames`` and is delivered to current subscribers as an error Sample (a
  :class:`FrameRejection` to frame subscribers); the loop keeps running whatever arrives.

Bounded subscriber queues
-------------------------
The receiver never waits for a subscriber (one task serves the cache, every waiter and every
subscriber), and a subscriber that stops reading must not make the process grow without end.
Each subscription is therefore a :class:`~servomexlib.clients.queue.LatestQueue`: at most
:data:`SUBSCRIBER_QUEUE_SAMPLES` samples (100 000: about 11 hours of a 5-channel broadcast
every 2 s, some 30 MB) per sample subscriber, at most :data:`FRAME_QUEUE_FRAMES` items
(20 000 frames: the same 11 hours) per frame subscriber. When a queue is full the **oldest**
item is dropped to make room for the new one — the newest data is kept — and counted: per
subscription (:meth:`ContinuousClient.subscriber_dropped`, which ``record(each_frame=True)``
adds to ``summary.samples_late``) and in total in ``statistics().subscriber_overflows``. Each
overflow episode logs one WARNING under ``servomexlib.continuous``.

A bug is not a lost line
------------------------
Only the transport's own ends — end of stream, a closed or broken port: a
``ServomexConnectionError`` from ``receive`` (or anyio's ``EndOfStream`` /
``ClosedResourceError`` / ``BrokenResourceError`` from a user's transport) — stop the receiver
as a connection loss. Any other exception is a bug: the receiver stops (waiters wake, every
subscription ends) with a ``ServomexConnectionError("… has stopped: internal error …")`` as its
:attr:`~ContinuousClient.stop_reason`, whose ``__cause__`` is the bug, and then re-raises the
bug itself, with its traceback, into the Analyzer's task group, so it surfaces from
``async with`` instead of being logged and forgotten.

Old bytes are not news
----------------------
A broadcast never stops, so whatever was queued before the receiver started — by the
operating system while the port was open but unread, by a pseudo-terminal or device server
while nobody was connected, by the simulator while its line was not read — is old: stamped on
arrival it would pass frames minutes old for new ones, a whole backlog with one timestamp. The
receiver therefore starts in three steps (api.md §5):

1. Bytes AUTO parked in the pushback buffer (the recognised frame, protocol.md §8) are
   processed first, stamped when the client was built, i.e. when AUTO received them — or, when
   the receiver starts more than one broadcast period later, discarded as superseded.
2. ``transport.flush_input()`` discards what the operating system holds (serial ports flush
   the kernel queue, TCP connections read off the socket; other transports keep everything).
3. **The line-rate check**, for transports that know their character time but could not
   flush (the in-process simulator, a user's transport): no line carries more than one
   character per character time, so if ``n`` bytes have been read since the receiver started
   ``t`` seconds ago, at least ``n − t / char_time`` of them (the oldest) were already waiting
   at the start. A line whose first byte lies in that provably old part is discarded (counted
   in ``statistics().stale_lines``), never published; the wait for the rest of a frame is
   skipped while reading ahead of the line rate, so a backlog is read off at once. A few
   characters of slack keep a frame that starts right at the boundary. After a successful
   flush nothing was waiting, and the check stays off: a pseudo-terminal has a nominal baud
   rate only and hands a writer's bytes over at memory speed.

The first line after the start that does not begin like a frame header is the tail of a frame
cut by the start (or by the flush): it is counted as stale, not as a dropped frame.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from datetime import UTC, datetime, timedelta

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
    ProtocolKind,
    Reading,
    Sample,
)
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexFrameError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from ..settings import SerialSettings
from ..transport.base import Transport
from ..wire.continuous import (
    HEADER_LENGTH,
    MAX_SEGMENT,
    FrameSplitter,
    frame_length,
    parse_frame,
)
from .queue import LatestQueue

__all__ = [
    "CHUNK_TIMEOUT_S",
    "CONTINUOUS_CAPABILITIES",
    "DEFAULT_FRAME_PERIOD_S",
    "FRAME_QUEUE_FRAMES",
    "SUBSCRIBER_QUEUE_SAMPLES",
    "ContinuousClient",
    "ContinuousStatistics",
    "FrameItem",
    "FrameRejection",
    "first_frame_wait",
]

_log = logging.getLogger("servomexlib.continuous")

#: The receiver's chunk timeout; on timeout it reads again (protocol.md §9.2).
CHUNK_TIMEOUT_S = 30.0
#: Bytes asked for per read: several frames, without a 64 KiB buffer per call.
RECEIVE_BYTES = 8192
#: Longest wait for the rest of a frame, in characters: a 7-block frame plus CR LF.
MAX_COALESCE_CHARS = frame_length(7) + 2
_SHORTEST = frame_length(1)
_ONE_US = timedelta(microseconds=1)
#: Characters of slack in the line-rate check: the character straddling the start, rounding,
#: and the few bytes a tty layer has in flight when the input queue is flushed.
BACKLOG_SLACK_CHARS = 16
#: Broadcast period assumed when the caller gives none (the measured unit's ~2 s).
DEFAULT_FRAME_PERIOD_S = 2.0
#: Most samples one ``subscribe()`` queue holds; past it the oldest are dropped and counted.
SUBSCRIBER_QUEUE_SAMPLES = 100_000
#: Most frames (or rejected lines) one ``subscribe_frames()`` queue holds; likewise.
FRAME_QUEUE_FRAMES = 20_000
#: What the receiver treats as the end of the line when a user's transport raises it bare.
_LINK_ENDS = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)
MODEL = "4000-series"


def first_frame_wait(timeout: float, frame_period: float | None) -> float:
    """``max(timeout, 2 × frame_period)``, ``frame_period`` defaulting to 2.0 s (api.md §4)."""
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


@dataclasses.dataclass(frozen=True, slots=True)
class FrameRejection:
    """A line the receiver rejected (parse or checksum failure, over-long line).

    What a frame subscriber gets instead of a :class:`~servomexlib.devices.models.Frame`;
    ``received_at`` / ``monotonic_ns`` are when the line was rejected.
    """

    error: ServomexError
    received_at: datetime
    monotonic_ns: int

    def as_sample(self, device: str = "") -> Sample:
        """The error Sample ``stream()`` delivers for this line (``channel=None``)."""
        return Sample(
            device=device,
            channel=None,
            reading=None,
            protocol=ProtocolKind.CONTINUOUS_ASCII,
            monotonic_ns=self.monotonic_ns,
            received_at=self.received_at,
            error=self.error,
        )


type FrameItem = Frame | FrameRejection
"""What :meth:`ContinuousClient.subscribe_frames` delivers: each frame, or a rejected line."""


@dataclasses.dataclass(slots=True, eq=False)
class _Subscriber:
    queue: LatestQueue[Sample]
    device: str


@dataclasses.dataclass(slots=True, eq=False)
class _FrameSubscriber:
    queue: LatestQueue[FrameItem]


class ContinuousClient:
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

    protocol: ProtocolKind = ProtocolKind.CONTINUOUS_ASCII
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
        self.transport = transport
        self.timeout = timeout
        self.frame_period = frame_period
        self._splitter = FrameSplitter(max_segment)
        self._latest: Frame | None = None
        self._frames_ok = 0
        self._dropped = 0
        self._bytes = 0
        self._overflows_seen = 0
        self._subscribers: list[_Subscriber] = []
        self._frame_subscribers: list[_FrameSubscriber] = []
        self._sample_queue = sample_queue
        self._frame_queue = frame_queue
        self._overflowed = 0  # items dropped from full subscriber queues, all subscriptions
        self._char_time = _line_char_time(transport)
        self._char_time_check = self._char_time  # None: no line-rate check (see _begin)
        self._last_read_ns = 0
        self._last_read_at: datetime | None = None
        self._last_frame_len: int | None = None
        # Backlog handling (module docstring): bytes AUTO parked just before this client was
        # built, and when; the loop-clock start of the receiver; bytes read off the line since.
        self._parked = _pending_bytes(transport)
        self._parked_at = (datetime.now(UTC), time.monotonic_ns()) if self._parked else None
        self._start_time: float | None = None
        self._line_bytes = 0
        self._stale_until = 0
        self._cut_line = False
        self._stale_lines = 0
        self._flushed = 0
        self._next_frame: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._started = False
        self._running = False
        self._stopped = False
        self._closed = False
        self._stop_reason: ServomexError | None = None
        self._crash: Exception | None = None  # the bug that stopped the receiver, if one did

    # ------------------------------------------------------------------ state

    @property
    def label(self) -> str:
        return self.transport.label

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
            subscribers=len(self._subscribers) + len(self._frame_subscribers),
            buffered=stats.buffered,
            running=self._running,
            stale_lines=self._stale_lines,
            flushed_bytes=self._flushed,
            subscriber_overflows=self._overflowed,
        )

    def __repr__(self) -> str:
        state = "running" if self._running else ("stopped" if self._stopped else "idle")
        subscribers = len(self._subscribers) + len(self._frame_subscribers)
        return (
            f"<ContinuousClient {self.label!r} {state} frames={self._frames_ok} "
            f"dropped={self._dropped} stale={self._stale_lines} subscribers={subscribers}>"
        )

    @property
    def stop_reason(self) -> ServomexError | None:
        """Why the receiver stopped (end of stream, lost port, a bug as its cause), or None."""
        return self._stop_reason

    def _ctx(self, **kw: object) -> ErrorContext:
        return ErrorContext(port=self.label, protocol=self.protocol).merged(**kw)

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

    async def _run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        reason: ServomexError | None = None
        with anyio.CancelScope() as scope:
            self._scope = scope
            self._running = True
            self._next_frame = anyio.Event()
            try:
                await self._begin()
            except BaseException as exc:
                # Raised from start() (a port that cannot even be flushed is unusable).
                if isinstance(exc, ServomexError):
                    self._finish(exc)
                else:
                    self._finish(self._crashed(exc) if isinstance(exc, Exception) else None)
                raise
            task_status.started()
            try:
                reason = await self._receive_loop()
            except Exception as exc:
                # A bug, not a lost line (module docstring): stop like a lost line for waiters
                # and subscribers, with the bug as the cause, then let the bug itself propagate
                # into the Analyzer's task group.
                reason = self._crashed(exc)
                raise
            finally:
                self._finish(reason)

    def _crashed(self, bug: Exception) -> ServomexConnectionError:
        """The stop reason for a receiver killed by ``bug`` (chained as its ``__cause__``)."""
        _log.debug("continuous receiver on %s stopped by %r", self.label, bug)
        self._crash = bug
        reason = ServomexConnectionError(
            f"continuous receiver on {self.label} stopped: internal error {bug!r}",
            context=self._ctx(),
        )
        reason.__cause__ = bug
        return reason

    async def _begin(self) -> None:
        """Start without a backlog: parked bytes, the OS queue, the line-rate origin."""
        parked = min(self._parked, _pending_bytes(self.transport))
        self._parked = 0
        data = b""
        while len(data) < parked:  # served from the pushback buffer: no waiting
            data += await self.transport.receive(parked - len(data))
        flush = getattr(self.transport, "flush_input", None)
        flushed: object = await flush() if callable(flush) else None
        if isinstance(flushed, int) and not isinstance(flushed, bool):
            self._flushed = max(flushed, 0)
            self._char_time_check = None  # nothing was left waiting: no line-rate check
        if data and self._parked_at is not None:
            at, ns = self._parked_at
            age_s = (time.monotonic_ns() - ns) / 1e9
            period = DEFAULT_FRAME_PERIOD_S if self.frame_period is None else self.frame_period
            if age_s <= period:
                self._process(data, final=False, stamp=(at, ns))
            else:
                self._stale_lines += 1
                _log.debug("%s: parked frame %.1fs old discarded", self.label, age_s)
            if self._flushed and self._splitter.buffered:
                # The rest of the parked partial line was flushed: what is held is a fragment.
                self._splitter.reset()
        if self._flushed:
            _log.debug("%s: discarded %d bytes waiting at start", self.label, self._flushed)
        self._start_time = anyio.current_time()
        self._last_read_at, self._last_read_ns = datetime.now(UTC), time.monotonic_ns()
        self._cut_line = not self._splitter.buffered

    async def _receive_loop(self) -> ServomexError:
        while True:
            chunk = b""
            with anyio.move_on_after(CHUNK_TIMEOUT_S):
                try:
                    chunk = await self.transport.receive(RECEIVE_BYTES)
                except (ServomexConnectionError, *_LINK_ENDS) as exc:
                    end = self._link_end(exc)
                    _log.debug("continuous stream on %s ended: %s", self.label, end)
                    self._process(b"", final=True, loop_time=anyio.current_time())
                    return end
            if chunk:
                now = anyio.current_time()
                self._process(chunk, final=False, loop_time=now)
                if len(chunk) >= RECEIVE_BYTES or self._reading_ahead(now):
                    continue  # a backlog is being read: more is waiting, read it at once
                rest = self._rest_of_frame_s()
                if rest > 0.0:
                    await anyio.sleep(rest)

    def _link_end(self, exc: BaseException) -> ServomexConnectionError:
        """The ServomexConnectionError for a transport end (anyio's own ones translated)."""
        if isinstance(exc, ServomexConnectionError):
            return exc
        what = "end of stream" if isinstance(exc, anyio.EndOfStream) else type(exc).__name__
        end = ServomexConnectionError(
            f"continuous stream on {self.label} ended: {what}", context=self._ctx()
        )
        end.__cause__ = exc
        return end

    def _reading_ahead(self, now: float) -> bool:
        """More bytes read since the start than the line could carry: a backlog is waiting."""
        char_time, start = self._char_time_check, self._start_time
        if char_time is None or start is None:
            return False
        return self._line_bytes - (now - start) / char_time > BACKLOG_SLACK_CHARS

    def _rest_of_frame_s(self) -> float:
        """Wire time of the bytes the partly received frame still needs (0.0: read at once)."""
        char_time = self._char_time
        if char_time is None:
            return 0.0
        splitter = self._splitter
        missing = splitter.pending_frame_bytes()
        if missing is None:
            held = splitter.buffered
            if not held:
                return 0.0
            # The header is not in yet: expect a frame as long as the last one (before the
            # first frame, as long as the shortest possible one, so the wait never overshoots).
            expected = self._last_frame_len if self._last_frame_len is not None else _SHORTEST
            missing = expected + 1 - held
        if missing < 2:
            return 0.0  # one byte away: waiting for readability costs the same
        return min(missing, MAX_COALESCE_CHARS) * char_time

    def _finish(self, reason: ServomexError | None) -> None:
        """Mark the receiver stopped: wake waiters, end every subscriber's iteration."""
        if self._stopped:
            return
        self._stopped = True
        self._running = False
        self._stop_reason = reason
        if self._next_frame is not None:
            self._next_frame.set()
        for sub in self._subscribers:
            sub.queue.close()
        self._subscribers.clear()
        for frame_sub in self._frame_subscribers:
            frame_sub.queue.close()
        self._frame_subscribers.clear()

    # ------------------------------------------------------------------ processing

    def _process(
        self,
        chunk: bytes,
        *,
        final: bool,
        loop_time: float | None = None,
        stamp: tuple[datetime, int] | None = None,
    ) -> None:
        """Split, parse and publish. Never raises for line content.

        Args:
            chunk: bytes just read (empty with ``final``).
            final: the stream ended: flush the splitter.
            loop_time: the loop clock of the read, for the line-rate check (None: no check —
                parked bytes and direct calls).
            stamp: when the chunk was received, instead of now (parked bytes).
        """
        self._bytes += len(chunk)
        segments = self._splitter.feed(chunk) if chunk else []
        if final:
            segments += self._splitter.flush()
        if stamp is None:
            received_at = datetime.now(UTC)
            monotonic_ns = time.monotonic_ns()
        else:
            received_at, monotonic_ns = stamp
        previous_ns, self._last_read_ns = self._last_read_ns, monotonic_ns
        previous_at, self._last_read_at = self._last_read_at, received_at
        # How far back a stamp may go: to the previous read, on both clocks (they are read a
        # moment apart, so each bounds its own stamp).
        since_ns = monotonic_ns - previous_ns
        if previous_at is not None:
            since_ns = min(since_ns, (received_at - previous_at) // _ONE_US * 1000)
        checked = loop_time is not None and self._check_line_rate(len(chunk), loop_time)
        overflows = self._splitter.stats().overflows
        while self._overflows_seen < overflows:
            self._overflows_seen += 1
            self._cut_line = False
            self._reject(
                ServomexFrameError(
                    f"line longer than {self._splitter.max_segment} bytes discarded",
                    context=self._ctx(),
                ),
                received_at,
                monotonic_ns,
            )
        if not segments:
            return
        afters = self._afters(segments)
        stamps = self._stamps(afters, len(chunk), received_at, monotonic_ns, since_ns)
        for segment, after, (seg_at, seg_ns) in zip(segments, afters, stamps, strict=True):
            if checked and self._line_bytes - after - len(segment) < self._stale_until:
                self._stale(segment, "waiting before the receiver started")
                continue
            if self._cut_line:
                self._cut_line = False
                if not _begins_like_a_frame(segment):
                    self._stale(segment, "the tail of a frame cut by the start")
                    continue
            try:
                frame = parse_frame(segment, received_at=seg_at, monotonic_ns=seg_ns)
            except ServomexProtocolError as exc:
                self._reject(exc.with_context(port=self.label), seg_at, seg_ns)
            else:
                self._last_frame_len = len(segment)
                self._publish(frame)

    def _check_line_rate(self, n: int, loop_time: float) -> bool:
        """Count ``n`` line bytes read at ``loop_time``; move the provably-old boundary.

        Returns True when the boundary applies (the line rate and the start are known).
        """
        self._line_bytes += n
        char_time, start = self._char_time_check, self._start_time
        if char_time is None or start is None:
            return False
        carried = int((loop_time - start) / char_time) + BACKLOG_SLACK_CHARS
        self._stale_until = max(self._stale_until, self._line_bytes - carried)
        return True

    def _stale(self, segment: bytes, why: str) -> None:
        self._stale_lines += 1
        _log.debug("%s: %d-byte line discarded: %s", self.label, len(segment), why)

    def _afters(self, segments: list[bytes]) -> list[int]:
        """For each segment, the bytes read after its last byte (counting one per terminator)."""
        afters: list[int] = []
        after = self._splitter.buffered  # bytes after the last terminator
        for segment in reversed(segments):
            afters.append(after)
            after += len(segment) + 1  # the segment and (at least) one terminator byte
        afters.reverse()
        return afters

    def _stamps(
        self,
        afters: list[int],
        chunk_len: int,
        received_at: datetime,
        monotonic_ns: int,
        since_ns: int,
    ) -> list[tuple[datetime, int]]:
        """When each segment's last byte arrived, by the wire time of the bytes after it.

        Only the bytes of this chunk count (older ones arrived before the previous read), and no
        stamp goes earlier than the previous read. Without a known character time, every segment
        gets the chunk's time.
        """
        char_time = self._char_time
        if char_time is None:
            return [(received_at, monotonic_ns)] * len(afters)
        stamps: list[tuple[datetime, int]] = []
        floor_back_ns = max(since_ns, 0)
        for after in afters:
            back_ns = min(int(min(after, chunk_len) * char_time * 1e9), floor_back_ns)
            if back_ns <= 0:
                stamps.append((received_at, monotonic_ns))
            else:
                stamps.append(
                    (received_at - timedelta(microseconds=back_ns / 1000), monotonic_ns - back_ns)
                )
        return stamps

    def _reject(self, error: ServomexError, received_at: datetime, monotonic_ns: int) -> None:
        self._dropped += 1
        _log.debug("dropped continuous frame on %s: %s", self.label, error)
        if not self._subscribers and not self._frame_subscribers:
            return
        rejection = FrameRejection(error, received_at, monotonic_ns)
        for sub in list(self._subscribers):
            self._deliver(sub, [rejection.as_sample(sub.device)])
        self._hand_over(rejection)

    def _publish(self, frame: Frame) -> None:
        self._latest = frame
        self._frames_ok += 1
        if self._next_frame is not None:
            self._next_frame.set()
        self._next_frame = anyio.Event()
        by_device: dict[str, list[Sample]] = {}
        for sub in list(self._subscribers):
            samples = by_device.get(sub.device)
            if samples is None:
                samples = by_device[sub.device] = frame.as_samples(sub.device)
            self._deliver(sub, samples)
        self._hand_over(frame)

    def _hand_over(self, item: FrameItem) -> None:
        for sub in list(self._frame_subscribers):
            try:
                self._overflowed += sub.queue.put(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop_frame_subscriber(sub)

    def _deliver(self, sub: _Subscriber, samples: list[Sample]) -> None:
        try:
            for sample in samples:
                self._overflowed += sub.queue.put(sample)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The subscriber closed its end without unsubscribing: forget it.
            self._drop_subscriber(sub)

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
        queue = LatestQueue[Sample](
            self._sample_queue, what=f"subscriber {device!r} on {self.label}", logger=_log
        )
        sub = _Subscriber(queue, device)
        self._subscribers.append(sub)
        return queue.receive, sub

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
        queue = LatestQueue[FrameItem](
            self._frame_queue, what=f"frame subscriber on {self.label}", logger=_log
        )
        sub = _FrameSubscriber(queue)
        self._frame_subscribers.append(sub)
        return queue.receive, sub

    def subscriber_dropped(self, token: object) -> int:
        """Items the subscription ``token`` lost to a full queue so far (0 for unknown tokens).

        Still answers after the subscription ended, so a consumer can account for every loss.
        """
        if isinstance(token, _Subscriber | _FrameSubscriber):
            return token.queue.dropped
        return 0

    def unsubscribe(self, token: object) -> None:
        """Stop delivering to the subscription ``token`` (samples or frames); idempotent."""
        if isinstance(token, _Subscriber):
            self._drop_subscriber(token)
        elif isinstance(token, _FrameSubscriber):
            self._drop_frame_subscriber(token)

    def _drop_subscriber(self, sub: _Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        sub.queue.close()

    def _drop_frame_subscriber(self, sub: _FrameSubscriber) -> None:
        if sub in self._frame_subscribers:
            self._frame_subscribers.remove(sub)
        sub.queue.close()

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


#: Offsets of the header's separators (protocol.md §3.2): after the date, time, FM, autocal, N.
_HEADER_SEPARATORS = (9, 18, 21, 30, 33)


def _begins_like_a_frame(segment: bytes) -> bool:
    """A leading space and the header's ``;`` where protocol.md §3.2 puts them.

    A frame's tail (the line cut by the receiver's start) practically never matches, a frame
    with a damaged body or checksum does — so that one is still reported as dropped.
    """
    return (
        len(segment) >= HEADER_LENGTH
        and segment[0] == 0x20
        and all(segment[i] == 0x3B for i in _HEADER_SEPARATORS)
    )


def _pending_bytes(transport: Transport) -> int:
    """Bytes in the transport's pushback buffer (0 when it does not say)."""
    value = getattr(transport, "pending", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _line_char_time(transport: Transport) -> float | None:
    """The transport's seconds per character, if it knows them (user transports may not)."""
    value = getattr(transport, "char_time_s", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if value > 0 else None
    return None
