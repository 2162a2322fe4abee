"""The Continuous ASCII client: a background receiver over an unsolicited broadcast (private).

Theory of operation
-------------------
In continuous mode the analyser prints one frame every *frame period* (about 2 s on the
measured unit) and accepts no commands (protocol.md §2, §3). So nothing is ever requested:
a single receiver task, started in the Analyzer's task group, owns the transport's read side.

* It reads chunks with a 30 s timeout and simply reads again on timeout (a slow broadcast is
  not an error); end of stream or a closed port stops it quietly (protocol.md §9.2).
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
  unbounded queue. A bad segment (parse or checksum failure) or a splitter overflow increments
  ``dropped_frames`` and is delivered to current subscribers as an error Sample; the loop keeps
  running whatever arrives.
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
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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
from ..wire.continuous import MAX_SEGMENT, FrameSplitter, frame_length, parse_frame

__all__ = [
    "CHUNK_TIMEOUT_S",
    "CONTINUOUS_CAPABILITIES",
    "DEFAULT_FRAME_PERIOD_S",
    "ContinuousClient",
    "ContinuousStatistics",
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
#: Broadcast period assumed when the caller gives none (the measured unit's ~2 s).
DEFAULT_FRAME_PERIOD_S = 2.0
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
    subscribers: int
    buffered: int  # bytes the splitter holds now (never more than its bound)
    running: bool


@dataclasses.dataclass(slots=True, eq=False)
class _Subscriber:
    send: MemoryObjectSendStream[Sample]
    device: str


class ContinuousClient:
    """Client for an analyser in Continuous ASCII mode (implements ``AnalyzerClient``).

    Args:
        transport: the line; owned (``aclose`` closes it).
        timeout: the open-time timeout, base of the first-frame wait.
        frame_period: expected broadcast period in seconds (None → 2.0).
        max_segment: the splitter's bound on one line.
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
    ) -> None:
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
        self._char_time = _line_char_time(transport)
        self._last_read_ns = 0
        self._last_read_at: datetime | None = None
        self._last_frame_len: int | None = None
        self._next_frame: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._started = False
        self._running = False
        self._stopped = False
        self._closed = False
        self._stop_reason: ServomexError | None = None

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
            subscribers=len(self._subscribers),
            buffered=stats.buffered,
            running=self._running,
        )

    def __repr__(self) -> str:
        state = "running" if self._running else ("stopped" if self._stopped else "idle")
        return (
            f"<ContinuousClient {self.label!r} {state} frames={self._frames_ok} "
            f"dropped={self._dropped} subscribers={len(self._subscribers)}>"
        )

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
            task_status.started()
            try:
                reason = await self._receive_loop()
            except Exception as exc:  # a bug must not kill the Analyzer's task group
                _log.exception("continuous receiver on %s crashed", self.label)
                reason = ServomexConnectionError(
                    f"continuous receiver on {self.label} failed: {exc!r}", context=self._ctx()
                )
            finally:
                self._finish(reason)

    async def _receive_loop(self) -> ServomexError:
        while True:
            chunk = b""
            with anyio.move_on_after(CHUNK_TIMEOUT_S):
                try:
                    chunk = await self.transport.receive(RECEIVE_BYTES)
                except ServomexConnectionError as exc:
                    _log.debug("continuous stream on %s ended: %s", self.label, exc)
                    self._process(b"", final=True)
                    return exc
            if chunk:
                self._process(chunk, final=False)
                rest = self._rest_of_frame_s()
                if rest > 0.0:
                    await anyio.sleep(rest)

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
            sub.send.close()
        self._subscribers.clear()

    # ------------------------------------------------------------------ processing

    def _process(self, chunk: bytes, *, final: bool) -> None:
        """Split, parse and publish. Never raises for line content."""
        self._bytes += len(chunk)
        segments = self._splitter.feed(chunk) if chunk else []
        if final:
            segments += self._splitter.flush()
        received_at = datetime.now(UTC)
        monotonic_ns = time.monotonic_ns()
        previous_ns, self._last_read_ns = self._last_read_ns, monotonic_ns
        previous_at, self._last_read_at = self._last_read_at, received_at
        # How far back a stamp may go: to the previous read, on both clocks (they are read a
        # moment apart, so each bounds its own stamp).
        since_ns = monotonic_ns - previous_ns
        if previous_at is not None:
            since_ns = min(since_ns, (received_at - previous_at) // _ONE_US * 1000)
        overflows = self._splitter.stats().overflows
        while self._overflows_seen < overflows:
            self._overflows_seen += 1
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
        stamps = self._stamps(segments, len(chunk), received_at, monotonic_ns, since_ns)
        for segment, (seg_at, seg_ns) in zip(segments, stamps, strict=True):
            try:
                frame = parse_frame(segment, received_at=seg_at, monotonic_ns=seg_ns)
            except ServomexProtocolError as exc:
                self._reject(exc.with_context(port=self.label), seg_at, seg_ns)
            else:
                self._last_frame_len = len(segment)
                self._publish(frame)

    def _stamps(
        self,
        segments: list[bytes],
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
            return [(received_at, monotonic_ns)] * len(segments)
        stamps: list[tuple[datetime, int]] = []
        after = self._splitter.buffered  # bytes after the last terminator
        floor_back_ns = max(since_ns, 0)
        for segment in reversed(segments):
            back_ns = min(int(min(after, chunk_len) * char_time * 1e9), floor_back_ns)
            if back_ns <= 0:
                stamps.append((received_at, monotonic_ns))
            else:
                stamps.append(
                    (received_at - timedelta(microseconds=back_ns / 1000), monotonic_ns - back_ns)
                )
            after += len(segment) + 1  # the segment and (at least) one terminator byte
        stamps.reverse()
        return stamps

    def _reject(self, error: ServomexError, received_at: datetime, monotonic_ns: int) -> None:
        self._dropped += 1
        _log.debug("dropped continuous frame on %s: %s", self.label, error)
        if not self._subscribers:
            return
        sample = Sample(
            device="",
            channel=None,
            reading=None,
            protocol=self.protocol,
            monotonic_ns=monotonic_ns,
            received_at=received_at,
            error=error,
        )
        for sub in list(self._subscribers):
            self._deliver(sub, [dataclasses.replace(sample, device=sub.device)])

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

    def _deliver(self, sub: _Subscriber, samples: list[Sample]) -> None:
        try:
            for sample in samples:
                sub.send.send_nowait(sample)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The subscriber closed its end without unsubscribing: forget it.
            self._drop_subscriber(sub)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, device: str = "") -> tuple[MemoryObjectReceiveStream[Sample], object]:
        """A new unbounded queue of Samples, labelled ``device``; returns (queue, token).

        Pass the token to :meth:`unsubscribe`. When the receiver stops, the queue ends.

        Raises:
            ServomexConnectionError: the receiver is not running.
        """
        self._require_running()
        send, receive = anyio.create_memory_object_stream[Sample](math.inf)
        sub = _Subscriber(send, device)
        self._subscribers.append(sub)
        return receive, sub

    def unsubscribe(self, token: object) -> None:
        """Stop delivering to the subscription ``token``; idempotent."""
        if isinstance(token, _Subscriber):
            self._drop_subscriber(token)

    def _drop_subscriber(self, sub: _Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        sub.send.close()

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
        detail = f": {self._stop_reason.message}" if self._stop_reason is not None else ""
        raise ServomexConnectionError(
            f"continuous receiver on {self.label} has stopped{detail}", context=self._ctx()
        )

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


def _line_char_time(transport: Transport) -> float | None:
    """The transport's seconds per character, if it knows them (user transports may not)."""
    value = getattr(transport, "char_time_s", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if value > 0 else None
    return None
