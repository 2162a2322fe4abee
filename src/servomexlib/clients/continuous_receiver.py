"""The continuous receiver: start without a backlog, read, split, stamp, publish (private).

:class:`Receiver` is the part of :class:`~servomexlib.clients.continuous.ContinuousClient` that
runs in the background task: it owns the transport's read side, the splitter, the counters and
the latest-frame cache, and hands every line to the subscriptions
(:mod:`.continuous_subscriptions`). The pure timing rules it applies are
:mod:`.continuous_stamps`.

Theory of operation
-------------------
The loop reads chunks with a 30 s timeout and simply reads again on timeout (a slow broadcast
is not an error); chunks go through the bounded
:class:`~servomexlib.wire.continuous.FrameSplitter`, each segment through
:func:`~servomexlib.wire.continuous.parse_frame`, stamped with the UTC wall clock and
``time.monotonic_ns()`` of the read that completed it (corrected by the wire time of later bytes
in the same read, docs/protocol.md, §9.6). When the transport knows its character time, the loop
does not read again while a frame is still arriving: it sleeps for the wire time of the bytes
the frame still needs, then reads the rest in one piece (one event-loop wake-up instead of one
per small chunk).

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
receiver therefore starts in three steps (docs/protocol.md, §9.6, "Old bytes are not news"):

1. Bytes AUTO parked in the pushback buffer (the recognised frame, docs/protocol.md, §8) are
   processed first, stamped when the client was built, i.e. when AUTO received them — or, when
   the receiver starts more than one broadcast period later, discarded as superseded.
2. ``transport.flush_input()`` discards what the operating system holds (serial ports flush
   the kernel queue, TCP connections read off the socket; other transports keep everything).
3. **The line-rate check** (:class:`~.continuous_stamps.LineRateCheck`), for transports that
   know their character time but could not flush (the in-process simulator, a user's
   transport): a line whose first byte was provably waiting at the start is discarded
   (counted in ``statistics().stale_lines``), and the wait for the rest of a frame is skipped
   while reading ahead of the line rate, so a backlog is read off at once. After a successful
   flush nothing was waiting, and the check stays off: a pseudo-terminal has a nominal baud
   rate only and hands a writer's bytes over at memory speed.

The first line after the start that does not begin like a frame header is the tail of a frame
cut by the start (or by the flush): it is counted as stale, not as a dropped frame.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc

from ..devices.models import Frame, ProtocolKind
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexFrameError,
    ServomexProtocolError,
)
from ..transport.base import Transport
from ..wire.continuous import FrameSplitter, frame_length, parse_frame
from .continuous_stamps import LineRateCheck, begins_like_a_frame, segment_afters, segment_stamps
from .continuous_subscriptions import FrameRejection, Subscriptions

__all__ = [
    "CHUNK_TIMEOUT_S",
    "DEFAULT_FRAME_PERIOD_S",
    "MAX_COALESCE_CHARS",
    "RECEIVE_BYTES",
    "Receiver",
]

_log = logging.getLogger("servomexlib.continuous")

#: The receiver's chunk timeout; on timeout it reads again (docs/protocol.md, §9.6).
CHUNK_TIMEOUT_S = 30.0
#: Bytes asked for per read: several frames, without a 64 KiB buffer per call.
RECEIVE_BYTES = 8192
#: Longest wait for the rest of a frame, in characters: a 7-block frame plus CR LF.
MAX_COALESCE_CHARS = frame_length(7) + 2
#: Broadcast period assumed when the caller gives none (the measured unit's ~2 s).
DEFAULT_FRAME_PERIOD_S = 2.0
_SHORTEST = frame_length(1)
_ONE_US = timedelta(microseconds=1)
#: What the receiver treats as the end of the line when a user's transport raises it bare.
_LINK_ENDS = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class Receiver:
    """The background half of a continuous client (module docstring).

    Args:
        transport: the line (its read side is the receiver's).
        frame_period: expected broadcast period in seconds (None → 2.0).
        max_segment: the splitter's bound on one line.
        subscriptions: where every frame and rejected line goes.
    """

    protocol: ProtocolKind = ProtocolKind.CONTINUOUS_ASCII

    def __init__(
        self,
        transport: Transport,
        *,
        frame_period: float | None,
        max_segment: int,
        subscriptions: Subscriptions,
    ) -> None:
        self.transport = transport
        self.frame_period = frame_period
        self._subs = subscriptions
        self._splitter = FrameSplitter(max_segment)
        self._latest: Frame | None = None
        self._frames_ok = 0
        self._dropped = 0
        self._bytes = 0
        self._overflows_seen = 0
        char_time = transport.char_time_s
        known = char_time is not None and math.isfinite(char_time) and char_time > 0
        self._char_time = char_time if known else None
        self._rate = LineRateCheck(self._char_time)  # switched off after a flush (_begin)
        self._last_read_ns = 0
        self._last_read_at: datetime | None = None
        self._last_frame_len: int | None = None
        # Old bytes (module docstring): bytes AUTO parked just before this client was built,
        # and when.
        self._parked = transport.pending
        self._parked_at = (datetime.now(UTC), time.monotonic_ns()) if self._parked else None
        self._cut_line = False
        self._stale_lines = 0
        self._flushed = 0
        self._next_frame: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._running = False
        self._stopped = False
        self._stop_reason: ServomexError | None = None
        self._crash: Exception | None = None  # the bug that stopped the receiver, if one did

    @property
    def label(self) -> str:
        return self.transport.label

    def _ctx(self, **kw: object) -> ErrorContext:
        return ErrorContext(port=self.label, protocol=self.protocol).merged(**kw)

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
        parked = min(self._parked, self.transport.pending)
        self._parked = 0
        data = b""
        while len(data) < parked:  # served from the pushback buffer: no waiting
            data += await self.transport.receive(parked - len(data))
        flushed = await self.transport.flush_input()
        if flushed is not None:
            self._flushed = max(flushed, 0)
            self._rate.char_time = None  # nothing was left waiting: no line-rate check
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
        self._rate.start = anyio.current_time()
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
                if len(chunk) >= RECEIVE_BYTES or self._rate.reading_ahead(now):
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
        self._subs.close_all()

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
        checked = loop_time is not None and self._rate.count(len(chunk), loop_time)
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
        afters = segment_afters(segments, self._splitter.buffered)
        stamps = segment_stamps(
            afters, len(chunk), received_at, monotonic_ns, since_ns, self._char_time
        )
        for segment, after, (seg_at, seg_ns) in zip(segments, afters, stamps, strict=True):
            if checked and self._rate.is_old(after, len(segment)):
                self._stale(segment, "waiting before the receiver started")
                continue
            if self._cut_line:
                self._cut_line = False
                if not begins_like_a_frame(segment):
                    self._stale(segment, "the tail of a frame cut by the start")
                    continue
            try:
                frame = parse_frame(segment, received_at=seg_at, monotonic_ns=seg_ns)
            except ServomexProtocolError as exc:
                self._reject(exc.with_context(port=self.label), seg_at, seg_ns)
            else:
                self._last_frame_len = len(segment)
                self._publish(frame)

    def _stale(self, segment: bytes, why: str) -> None:
        self._stale_lines += 1
        _log.debug("%s: %d-byte line discarded: %s", self.label, len(segment), why)

    def _reject(self, error: ServomexError, received_at: datetime, monotonic_ns: int) -> None:
        self._dropped += 1
        _log.debug("dropped continuous frame on %s: %s", self.label, error)
        if len(self._subs):
            self._subs.reject(FrameRejection(error, received_at, monotonic_ns))

    def _publish(self, frame: Frame) -> None:
        self._latest = frame
        self._frames_ok += 1
        if self._next_frame is not None:
            self._next_frame.set()
        self._next_frame = anyio.Event()
        self._subs.publish(frame)
