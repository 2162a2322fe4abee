"""``Analyzer``: the protocol-neutral facade over one analyser.

Usage: docs/quickstart-async.md. What each operation puts on the wire: docs/protocol.md, §5.

The Analyzer owns a client (continuous or Modbus, see ``servomexlib.clients.base``) and adds
what is the same for every wire mode:

* **Gates before I/O**, in this order: confirmation (STATEFUL operations need
  ``confirm=True``) → capability (the active mode can do it) → validation (arguments). So
  ``start_calibration(7)`` raises ServomexConfirmationRequiredError, and
  ``start_calibration(7, confirm=True)`` raises ServomexProtocolUnsupportedError in continuous
  mode and ServomexValidationError over Modbus — before any byte is sent (docs/protocol.md, §12).
* **A session lock** serialising calls on one Analyzer.
* **The session** (``async with``). A continuous Analyzer owns a task group in which its client
  runs the receiver, so it is entered and left in one task. A Modbus Analyzer runs nothing in
  the background and owns **no** task group: entering it only marks the session started (and
  identifies when asked), so it may be entered in one task and closed in another — e.g. by a
  ``reconnect_factory`` that runs inside ``record()`` and enters the new Analyzer in the
  caller's ``AsyncExitStack``. Modbus Analyzers also work without being entered. Exit cancels
  the receiver and closes the client and transport even when the graceful part fails.
* **Cancellation at any point** unwinds cleanly: a failed or cancelled entry exits whatever it
  had entered (in LIFO order, in the entering task) before the error propagates, and the close
  paths are shielded, so the caller's cancel scopes, the port and its fd are never left behind.
* **Identify is cached** (docs/protocol.md, §5): the first ``identify()`` reads the device and
  caches the result in ``info``; later calls return ``info`` with no I/O unless
  ``refresh=True``. With ``identify_lazily`` (set by the manager for the Analyzers it builds) a
  sweep — ``poll``, ``read_all``, ``poll_samples`` — first identifies, under the session lock,
  when nothing is cached yet, so a Modbus sweep covers only the populated slots; a failed
  identify fails that sweep and is tried again by the next one (never a fallback sweep of all
  ten slots, which would report empty slots as readings).
* **Typed client surface.** The client is an ``AnalyzerClient`` (``clients.base``); a
  continuous one is also a ``BroadcastClient`` (latest frame, dropped frames, subscriptions)
  and one with AUTOCAL | LOOPBACK a ``ControlClient`` (calibration, loopback, its
  ``ReadPlanner``), as its declared mode and capabilities say. The Analyzer calls those
  members directly; it never probes for attributes.
* **Streaming sits below the device.** ``stream()`` returns a
  :class:`~servomexlib.streaming.stream_session.StreamingSession` (continuous: a subscription;
  Modbus: a session running :func:`~servomexlib.streaming.recorder.record` over this
  Analyzer), and ``record(each_frame=True)`` reaches the broadcast through
  :meth:`Analyzer.frame_feed` — the acquisition layer knows protocols, not this class.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import anyio
import anyio.abc
import anyio.lowlevel

from ..clients.base import AnalyzerClient, BroadcastClient, ControlClient
from ..errors import (
    ErrorContext,
    ServomexConfirmationRequiredError,
    ServomexError,
    ServomexProtocolUnsupportedError,
    ServomexValidationError,
)
from ..streaming.poll_source import FrameFeed
from ..streaming.recorder import record
from ..streaming.stream_session import SampleSender, StreamingSession
from ..transport.base import Transport
from ..validation import check_positive, check_timeout
from .models import (
    AnalyserStatus,
    CalibrationProgress,
    Capability,
    ChannelId,
    ChannelStatus,
    DeviceInfo,
    Frame,
    ProtocolKind,
    Reading,
    Sample,
    StreamMode,
    coerce_channel,
)

if TYPE_CHECKING:
    from ..clients.continuous import ContinuousStatistics
    from ..clients.modbus import ModbusStatistics
    from ..planner import ReadPlanner

__all__ = ["Analyzer"]

_log = logging.getLogger("servomexlib.analyzer")

_CAL_GROUPS = (1, 2, 3, 4)


class Analyzer:
    """One analyser, whatever its wire mode. Users get one from ``open_device``.

    Args:
        client: the protocol client (``ContinuousClient`` or ``ModbusClient``); owned.
        device: label used in samples and errors; empty → the transport label.
        identify_on_enter: run ``identify()`` when the session starts and cache it in ``info``.
        identify_lazily: identify before the first sweep (``poll``/``read_all``/
            ``poll_samples``) while ``info`` is not cached; a failed identify fails that sweep
            and is retried by the next. ``ServomexManager`` sets it for the Analyzers it builds.
    """

    def __init__(
        self,
        client: AnalyzerClient,
        *,
        device: str = "",
        identify_on_enter: bool = False,
        identify_lazily: bool = False,
    ) -> None:
        self._client = client
        self._device = device or client.transport.label
        # The client's declared mode and capabilities say which surface it has (clients.base):
        # a continuous client is a BroadcastClient, one with AUTOCAL | LOOPBACK a ControlClient.
        self._broadcast: BroadcastClient | None = None
        if client.protocol is ProtocolKind.CONTINUOUS_ASCII:
            self._broadcast = cast(BroadcastClient, client)
        self._controls: ControlClient | None = None
        if client.capabilities & (Capability.AUTOCAL | Capability.LOOPBACK):
            self._controls = cast(ControlClient, client)
        self._identify_on_enter = identify_on_enter
        self._identify_lazily = identify_lazily
        self._lock = anyio.Lock(fast_acquire=True)  # taken once per call: no loop trip when free
        self._info: DeviceInfo | None = None
        self._last_frame: Frame | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._entered = False
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def client(self) -> AnalyzerClient:
        return self._client

    @property
    def device(self) -> str:
        return self._device

    @property
    def protocol(self) -> ProtocolKind:
        return self._client.protocol

    @property
    def capabilities(self) -> Capability:
        return self._client.capabilities

    @property
    def info(self) -> DeviceInfo | None:
        return self._info

    @property
    def dropped_frames(self) -> int:
        """Continuous frames rejected by parse/checksum; always 0 for Modbus."""
        return self._broadcast.dropped_frames if self._broadcast is not None else 0

    @property
    def read_planner(self) -> ReadPlanner | None:
        """The Modbus ``ReadPlanner``; None in continuous mode."""
        return self._controls.read_planner if self._controls is not None else None

    @property
    def transport(self) -> Transport:
        return self._client.transport

    def statistics(self) -> ContinuousStatistics | ModbusStatistics:
        """The client's counters: ``ContinuousStatistics`` (continuous) or ``ModbusStatistics``."""
        return self._client.statistics()

    def frame_feed(self) -> FrameFeed | None:
        """The continuous client's frame subscription (``record(each_frame=True)`` follows it);
        None in Modbus mode."""
        return self._broadcast

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("started" if self._entered else "idle")
        return f"<Analyzer {self._device!r} {self.protocol.value} {state}>"

    def _check_timeout(self, timeout: float | None) -> None:
        """A per-call ``timeout`` must be a positive number (None: the default); the error
        context is built only when there is a value to check (poll runs once a tick)."""
        if timeout is not None:
            check_timeout(timeout, self._ctx(), optional=True)

    def _ctx(self, **kw: object) -> ErrorContext:
        address = (
            self._client.address if self.protocol is not ProtocolKind.CONTINUOUS_ASCII else None
        )
        return ErrorContext(
            port=self._client.transport.label, protocol=self.protocol, address=address
        ).merged(**kw)

    # ------------------------------------------------------------------ session

    @property
    def _runs_receiver(self) -> bool:
        """Only a continuous client has background work (its receiver) and so a task group."""
        return self.protocol is ProtocolKind.CONTINUOUS_ASCII

    async def __aenter__(self) -> Self:
        if self._entered or self._closed:
            raise ServomexValidationError(
                "an Analyzer can be entered only once", context=self._ctx()
            )
        self._entered = True
        stack = AsyncExitStack()
        # Callbacks run in reverse: the task group (if any) exits first, then the client closes.
        stack.push_async_callback(self._close_client)
        try:
            if self._runs_receiver:
                self._tg = await stack.enter_async_context(anyio.create_task_group())
                await self._client.start(self._tg)
            if self._identify_on_enter:
                await self.identify()
        except BaseException as exc:
            # Failed or cancelled part-way: leave what was entered, in this task, with the
            # exception in flight (a task group left unexited would corrupt the caller's cancel
            # scope stack), then let the exception propagate.
            self._closed = True
            await self._unwind(stack, exc)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(exc)

    async def aclose(self) -> None:
        """End the session: cancel the receiver, close client and transport. Idempotent.

        A continuous Analyzer must be closed by the task that entered it (its task group);
        a Modbus Analyzer may be closed from any task.
        """
        await self._close(None)

    async def _close(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is None:
            await self._close_client()
        else:
            await self._unwind(stack, exc)

    async def _unwind(self, stack: AsyncExitStack, exc: BaseException | None) -> None:
        # No shield around the task group's exit: cancel scopes must unwind in LIFO order
        # (trio). The receiver is cancelled explicitly and the close paths shield themselves.
        # A cancellation in flight is handed to the task group (it is the host's own); any
        # other error is not, so it propagates bare instead of wrapped in an exception group.
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        self._tg = None
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
        else:
            await stack.aclose()

    async def _close_client(self) -> None:
        # Shielded: a cancelled caller must still release the port.
        with anyio.CancelScope(shield=True):
            try:
                await self._client.aclose()
            except Exception:
                _log.warning("closing %s failed", self._device, exc_info=True)
                # The transport must be released even if the client's graceful close failed.
                await self._client.transport.aclose()

    # ------------------------------------------------------------------ gates

    def _require(self, capability: Capability, operation: str) -> None:
        if capability not in self.capabilities:
            raise ServomexProtocolUnsupportedError(
                f"{operation} is not supported in {self.protocol.value} mode",
                context=self._ctx(extra={"operation": operation}),
            )

    def _require_confirm(self, confirm: bool, operation: str) -> None:
        if confirm is not True:
            raise ServomexConfirmationRequiredError(
                f"{operation} changes the analyser's state; pass confirm=True",
                context=self._ctx(extra={"operation": operation}),
            )

    def _channel(self, ch: ChannelId | str) -> ChannelId:
        try:
            return coerce_channel(ch)
        except ServomexValidationError as exc:
            raise exc.with_context(**_ctx_fields(self._ctx())) from None

    def _group(self, group: int) -> int:
        if isinstance(group, bool) or group not in _CAL_GROUPS:
            raise ServomexValidationError(
                f"calibration group must be 1-4, got {group!r}", context=self._ctx()
            )
        return int(group)

    def _control(self) -> ControlClient:
        if self._controls is None:  # pragma: no cover - the capability gate runs first
            raise ServomexProtocolUnsupportedError(
                f"{type(self._client).__name__} has no control surface", context=self._ctx()
            )
        return self._controls

    # ------------------------------------------------------------------ reads

    async def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        """A whole frame (docs/protocol.md, §5, §9.6). Continuous: the latest cached frame, or the
        next one when none is cached or ``wait_fresh``. Modbus: one sweep.

        With ``identify_lazily`` and nothing cached in ``info`` yet, identifies first (under the
        same lock hold), so the sweep covers only the populated slots.

        Raises:
            ServomexConnectionError: continuous Analyzer not entered, or its stream ended.
            ServomexTimeoutError: no frame / no reply in time (the lazy identify included).
        """
        self._require(Capability.READ_CHANNELS, "poll")
        self._check_timeout(timeout)
        async with self._lock:
            if self._identify_lazily and self._info is None:
                self._info = await _io(self._client.identify(timeout=timeout))
            frame = await _io(self._client.poll(wait_fresh=wait_fresh, timeout=timeout))
        self._last_frame = frame
        return frame

    async def read_channel(self, ch: ChannelId | str, *, timeout: float | None = None) -> Reading:
        """One channel's reading; an unknown id raises ServomexValidationError before I/O."""
        self._require(Capability.READ_CHANNELS, "read_channel")
        cid = self._channel(ch)
        self._check_timeout(timeout)
        async with self._lock:
            return await _io(self._client.read_channel(cid, timeout=timeout))

    async def read_all(self, *, timeout: float | None = None) -> dict[ChannelId, Reading]:
        """One poll keyed by channel, in frame order."""
        frame = await self.poll(timeout=timeout)
        return {r.channel: r for r in frame.readings}

    async def status(self, ch: ChannelId | str, *, timeout: float | None = None) -> ChannelStatus:
        self._require(Capability.READ_STATUS, "status")
        cid = self._channel(ch)
        self._check_timeout(timeout)
        async with self._lock:
            return await _io(self._client.status(cid, timeout=timeout))

    async def analyser_status(self, *, timeout: float | None = None) -> AnalyserStatus:
        self._require(Capability.READ_STATUS, "analyser_status")
        self._check_timeout(timeout)
        async with self._lock:
            return await _io(self._client.analyser_status(timeout=timeout))

    async def identify(self, *, refresh: bool = False, timeout: float | None = None) -> DeviceInfo:
        """The analyser's identity, cached in ``info`` (docs/protocol.md, §5).

        The first call reads the device; later calls return ``info`` with no I/O unless
        ``refresh=True``, which re-reads it and replaces the cache (over Modbus this also
        refreshes the name/unit cache and the populated slots that sweeps cover).

        Raises:
            ServomexProtocolUnsupportedError: the client cannot identify.
            ServomexValidationError: a bad ``timeout``.
        """
        self._require(Capability.IDENTIFY, "identify")
        self._check_timeout(timeout)
        cached = self._info
        if cached is not None and not refresh:
            return cached
        async with self._lock:
            cached = self._info
            if cached is not None and not refresh:
                return cached  # filled by a call that held the lock before us
            info = await _io(self._client.identify(timeout=timeout))
            self._info = info
        return info

    def snapshot(self) -> Frame:
        """The latest frame without I/O (continuous: the receiver's; Modbus: the last poll's).

        Raises:
            ServomexValidationError: ``"no frame cached yet …"``.
        """
        frame: Frame | None = self._last_frame
        if self._broadcast is not None:
            frame = self._broadcast.latest_frame or frame
        if frame is None:
            raise ServomexValidationError(
                "no frame cached yet: call poll() first (or wait for a broadcast)",
                context=self._ctx(),
            )
        return frame

    async def poll_samples(
        self, *, names: object = None, timeout: float | None = None
    ) -> list[Sample]:
        """``poll()`` as one Sample per reading (``names`` is ignored): a ``PollSource``."""
        frame = await self.poll(timeout=timeout)
        return frame.as_samples(self._device)

    # ------------------------------------------------------------------ control (Modbus)

    async def start_calibration(
        self, group: int, *, confirm: bool = False, timeout: float | None = None
    ) -> None:
        """Start autocalibration of ``group`` (1–4). STATEFUL: needs ``confirm=True``."""
        self._require_confirm(confirm, "start_calibration")
        self._require(Capability.AUTOCAL, "start_calibration")
        g = self._group(group)
        self._check_timeout(timeout)
        async with self._lock:
            await self._control().start_calibration(g, timeout=timeout)

    async def stop_calibration(
        self, *, confirm: bool = False, timeout: float | None = None
    ) -> None:
        """Stop every autocalibration (coil 00009). STATEFUL: needs ``confirm=True``."""
        self._require_confirm(confirm, "stop_calibration")
        self._require(Capability.AUTOCAL, "stop_calibration")
        self._check_timeout(timeout)
        async with self._lock:
            await self._control().stop_calibration(timeout=timeout)

    async def calibration_status(
        self, group: int = 1, *, timeout: float | None = None
    ) -> CalibrationProgress:
        """Progress of ``group``'s autocalibration (READONLY)."""
        self._require(Capability.AUTOCAL, "calibration_status")
        g = self._group(group)
        self._check_timeout(timeout)
        async with self._lock:
            return await self._control().calibration_status(g, timeout=timeout)

    async def loopback(
        self, payload: bytes = b"\x00\x00", *, timeout: float | None = None
    ) -> bytes:
        """FC08 echo of a 2-byte ``payload`` (Modbus only)."""
        self._require(Capability.LOOPBACK, "loopback")
        if not isinstance(payload, bytes | bytearray) or len(payload) != 2:
            raise ServomexValidationError(
                f"loopback payload must be exactly 2 bytes, got {payload!r}", context=self._ctx()
            )
        self._check_timeout(timeout)
        async with self._lock:
            return await self._control().loopback(bytes(payload), timeout=timeout)

    # ------------------------------------------------------------------ streaming

    def stream(
        self, *, mode: StreamMode | str | None = None, rate_hz: float | None = None
    ) -> StreamingSession:
        """A :class:`StreamingSession` of Samples (usage: docs/quickstart-async.md).

        Continuous (AUTOPRINT): subscribes now; ``rate_hz`` is ignored; ``mode=POLL`` →
        ServomexValidationError. Modbus (POLL): the session runs ``record()`` once entered;
        ``mode=AUTOPRINT`` → ServomexValidationError.
        """
        self._require(Capability.READ_CHANNELS, "stream")
        wanted = _coerce_mode(mode, self._ctx())
        if self.protocol is ProtocolKind.CONTINUOUS_ASCII:
            if wanted is StreamMode.POLL:
                raise ServomexValidationError(
                    "continuous mode streams AUTOPRINT only (the analyser broadcasts); "
                    "use record() for sample-and-hold polling",
                    context=self._ctx(),
                )
            return self._subscribe()
        if wanted is StreamMode.AUTOPRINT:
            raise ServomexValidationError(
                f"{self.protocol.value} streams in POLL mode only", context=self._ctx()
            )
        rate = check_positive("rate_hz", 1.0 if rate_hz is None else rate_hz, self._ctx())
        return self._poll_session(rate)

    def _subscribe(self) -> StreamingSession:
        client = self._broadcast
        if client is None:  # pragma: no cover - stream() only subscribes in continuous mode
            raise ServomexProtocolUnsupportedError("this client cannot stream", context=self._ctx())
        receive, token = client.subscribe(self._device)

        def unsubscribe() -> None:
            client.unsubscribe(token)

        def dropped() -> int:
            return client.subscriber_dropped(token)

        return StreamingSession(
            receive, mode=StreamMode.AUTOPRINT, on_close=unsubscribe, dropped=dropped
        )

    def _poll_session(self, rate_hz: float) -> StreamingSession:
        async def produce(send: SampleSender) -> None:
            async with record(self, rate_hz=rate_hz) as recording:
                async for batch in recording.stream:
                    for sample in batch:
                        send.send_nowait(sample)

        return StreamingSession.with_producer(produce, mode=StreamMode.POLL)


async def _io[T](operation: Awaitable[T]) -> T:
    """Await a client read; a cancelled caller gets its cancellation, never a stale error.

    A continuous receiver runs in a task group inside the caller's cancel scopes, so cancelling
    the caller can stop the receiver first; a read waiting for a frame then wakes up to
    "receiver stopped" before its own cancellation is delivered. That error is an artefact of
    the cancellation: deliver the cancellation instead.
    """
    try:
        return await operation
    except ServomexError:
        await anyio.lowlevel.checkpoint_if_cancelled()
        raise


def _coerce_mode(mode: StreamMode | str | None, ctx: ErrorContext) -> StreamMode | None:
    if mode is None or isinstance(mode, StreamMode):
        return mode
    try:
        return StreamMode(mode)
    except ValueError:
        raise ServomexValidationError(
            f"unknown stream mode {mode!r}; expected 'poll' or 'autoprint'", context=ctx
        ) from None


def _ctx_fields(ctx: ErrorContext) -> dict[str, Any]:
    return {"port": ctx.port, "protocol": ctx.protocol, "address": ctx.address}
