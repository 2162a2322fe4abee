"""The service's scheduler: one task per analyser, ticks committed to the spool
(docs/service.md §2, §3).

Theory of operation
-------------------
**Modbus buses.** Each ``[[bus]]`` gets one :class:`ModbusBus`: one
:class:`~servomexlib.manager.ServomexManager` holding that port, with every analyser of the bus
added to it. The manager keeps one line per port — one lock, the 50 ms silence before every
request whatever its address — and identifies each analyser lazily before its first sweep, so a
sweep covers its populated slots. Each analyser has its own task and its own **absolute**
schedule (``record()`` semantics): tick ``n`` is due at ``start + n / rate_hz`` on the event
loop's clock, a slow tick never shifts later ones, and slots that have wholly passed are skipped
and counted late. A tick is one ``manager.poll([name])``, which takes the port's lock, so two
analysers of one bus never interleave on the wire; different buses run concurrently.

A tick that fails (timeout, exception reply, a bad frame) is stored as an *error tick* — one
error row, its own ``seq`` — so the record says when and why data is missing. A lost
connection (``ServomexConnectionError``) also closes the bus's manager: the next tick of any of
its analysers after a backoff (0.5, 1, 2, 5, 10, 30 s … as ``record()``) reopens the port and
re-adds every analyser; the slots that fall inside the backoff are counted late, and each
failed reopening is an error tick of the analyser that tried. One outage counts one disconnect
per analyser.

``channels`` in the file restricts what is stored to those slots (in frame order); a configured
slot the analyser does not deliver is logged once, never invented. (The sweep itself still
covers the populated slots: the library has no public way to narrow a managed analyser's sweep.)

**Continuous buses.** The one analyser of the bus is opened with ``open_continuous`` and its
client's frame subscription is followed: every broadcast frame is one tick (every frame
exactly once, the broadcast sets the cadence); a line the receiver rejected is an error tick;
frames the bounded subscription dropped are counted late. When the stream ends (the port was
lost) the port is reopened with the same backoff.

**Ticks and the spool.** :class:`TickWriter` commits each tick to the spool before anything
else sees it; ``seq`` comes from that commit. Then the analyser's
:class:`~servomexlib.service.health.DeviceState` is updated (with the tick's §4 payload, for
``/api/latest``). Stopping is cooperative for Modbus (an event checked between ticks: the tick
in progress finishes) and by cancellation for continuous analysers (the wait for the next frame
is cancelled; a commit in progress is shielded and finishes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import anyio

from ..clients.continuous import first_frame_wait
from ..devices.factory import open_continuous
from ..devices.models import AnalyserStatus, Frame, ProtocolKind, Sample
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexTimeoutError,
)
from ..manager import ServomexManager
from ..streaming.poll_source import FrameFeed
from ..streaming.recorder import BACKOFF_STEPS_S
from .config_model import AnalyserConfig, BusConfig
from .health import DeviceState
from .payload import tick_payload
from .spool_async import AsyncSpool

__all__ = ["BusDown", "ModbusBus", "TickWriter", "run_continuous", "run_modbus_analyser"]

_log = logging.getLogger("servomexlib.service.runner")


class BusDown(ServomexConnectionError):
    """The bus is waiting out its reconnect backoff: the tick is skipped (counted late)."""


def _backoff(step: int) -> float:
    return BACKOFF_STEPS_S[min(step, len(BACKOFF_STEPS_S) - 1)]


class TickWriter:
    """Commits ticks to the spool, then updates the analyser's state and logs error streaks."""

    def __init__(self, spool: AsyncSpool, on_tried: Callable[[DeviceState], None]) -> None:
        self.spool = spool
        self.on_tried = on_tried
        self._streak: dict[str, int] = {}

    async def ok(
        self,
        dev: DeviceState,
        samples: Sequence[Sample],
        analyser: AnalyserStatus | None,
        duration_s: float | None,
    ) -> int | None:
        try:
            with anyio.CancelScope(shield=True):
                seq = await self.spool.append(dev.name, samples, analyser=analyser)
        except ServomexError as exc:
            self._spool_failed(dev, exc)
            return None
        if duration_s is not None:
            dev.observe_duration(duration_s)
        payload = tick_payload(
            dev.name,
            seq,
            samples,
            fault=None if analyser is None else analyser.fault,
            maintenance=None if analyser is None else analyser.maintenance,
        )
        dev.succeeded(anyio.current_time(), payload)
        streak = self._streak.pop(dev.name, 0)
        if streak:
            _log.warning(
                "event=tick_recovered device=%s after_errors=%d seq=%d", dev.name, streak, seq
            )
        self.on_tried(dev)
        return seq

    async def error(
        self,
        dev: DeviceState,
        exc: ServomexError,
        *,
        protocol: ProtocolKind,
        requested_at: datetime | None,
        monotonic_ns: int,
        received_at: datetime | None = None,
    ) -> int | None:
        received = received_at or datetime.now(UTC)
        sample = Sample(
            dev.name, None, None, protocol, monotonic_ns, received, requested_at, None, error=exc
        )
        try:
            with anyio.CancelScope(shield=True):
                seq = await self.spool.append(dev.name, [sample])
        except ServomexError as spool_exc:
            self._spool_failed(dev, spool_exc)
            seq = None
        dev.failed(exc, outage=isinstance(exc, ServomexConnectionError), spooled=seq is not None)
        dev.latest = tick_payload(dev.name, seq if seq is not None else -1, [sample])
        streak = self._streak[dev.name] = self._streak.get(dev.name, 0) + 1
        log = _log.error if streak == 1 else _log.debug
        log("event=tick_error device=%s seq=%s error=%r", dev.name, seq, str(exc))
        self.on_tried(dev)
        return seq

    def _spool_failed(self, dev: DeviceState, exc: ServomexError) -> None:
        dev.tick_errors["ServomexSpoolError"] = dev.tick_errors.get("ServomexSpoolError", 0) + 1
        _log.error("event=spool_append_failed device=%s error=%r", dev.name, str(exc))


class ModbusBus:
    """One Modbus ``[[bus]]``: its manager, opened lazily and reopened after a lost line."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.name = config.table_path or config.port
        self._manager: ServomexManager | None = None
        self._lock = anyio.Lock()
        self._retry_at = -math.inf
        self._attempts = 0
        self._wanted = {a.name: a for a in config.analysers}
        self._missing_logged: set[str] = set()

    async def _connect(self) -> None:
        bus = self.config
        manager = ServomexManager()
        try:
            for analyser in bus.analysers:
                assert analyser.address is not None
                await manager.add(
                    analyser.name,
                    bus.port,
                    protocol=bus.protocol,
                    address=analyser.address,
                    serial_settings=bus.serial_settings,
                    timeout=bus.timeout,
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _close_quietly(manager, self.name)
            raise
        self._manager = manager
        self._attempts = 0
        _log.info("event=bus_open bus=%s port=%s protocol=%s", self.name, bus.port, bus.protocol)

    async def _drop(self, manager: ServomexManager, error: BaseException) -> None:
        async with self._lock:
            if self._manager is not manager:
                return  # another analyser of the bus dropped it already
            self._manager = None
            delay = _backoff(0)
            self._attempts = 1
            self._retry_at = anyio.current_time() + delay
            _log.error(
                "event=bus_lost bus=%s port=%s error=%r retry_in_s=%g",
                self.name, self.config.port, str(error), delay,
            )  # fmt: skip
            with anyio.CancelScope(shield=True):
                await _close_quietly(manager, self.name)

    async def poll(self, name: str) -> Frame:
        """One sweep of analyser ``name`` (reopening the bus when it is due).

        Raises:
            BusDown: the bus waits out its backoff (nothing was sent).
            ServomexError: the sweep (or the reopening) failed.
        """
        async with self._lock:
            if self._manager is None:
                now = anyio.current_time()
                if now < self._retry_at:
                    raise BusDown(
                        f"bus {self.name} ({self.config.port}) is reconnecting: next attempt in "
                        f"{self._retry_at - now:.1f} s",
                        context=ErrorContext(port=self.config.port),
                    )
                try:
                    await self._connect()
                except ServomexError as exc:
                    delay = _backoff(self._attempts)
                    self._attempts += 1
                    self._retry_at = anyio.current_time() + delay
                    _log.warning(
                        "event=bus_reconnect_failed bus=%s error=%r retry_in_s=%g",
                        self.name, str(exc), delay,
                    )  # fmt: skip
                    raise
            manager = self._manager
            assert manager is not None
        try:
            result = (await manager.poll([name]))[name]
        except ServomexConnectionError as exc:  # the manager was closed meanwhile
            raise ServomexConnectionError(
                f"bus {self.name}: {exc}", context=ErrorContext(port=self.config.port)
            ) from exc
        if result.error is not None:
            if isinstance(result.error, ServomexConnectionError):
                await self._drop(manager, result.error)
            if isinstance(result.error, ServomexError):
                raise result.error
            raise ServomexError(f"{name}: {result.error}")  # pragma: no cover - manager only
        assert result.value is not None
        return result.value

    def samples(self, name: str, frame: Frame) -> list[Sample]:
        """The tick's samples: the frame's, restricted to the configured ``channels``."""
        samples = frame.as_samples(name)
        wanted = self._wanted[name].channels
        if wanted is None:
            return samples
        keep = set(wanted)
        missing = keep - {s.channel for s in samples}
        if missing and name not in self._missing_logged:
            self._missing_logged.add(name)
            _log.warning(
                "event=channels_missing device=%s channels=%s (configured, not delivered)",
                name, ",".join(sorted(c.value for c in missing)),
            )  # fmt: skip
        return [s for s in samples if s.channel in keep]

    async def aclose(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            with anyio.CancelScope(shield=True):
                await _close_quietly(manager, self.name)


async def _close_quietly(manager: ServomexManager, bus: str) -> None:
    try:
        await manager.close()
    except BaseExceptionGroup as group:
        _log.warning("event=bus_close_failed bus=%s error=%r", bus, str(group.exceptions[0]))


def _now_stamp() -> tuple[datetime, int]:
    return datetime.now(UTC), time.monotonic_ns()


async def run_modbus_analyser(
    bus: ModbusBus,
    analyser: AnalyserConfig,
    dev: DeviceState,
    writer: TickWriter,
    stop: anyio.Event,
    *,
    once: bool = False,
) -> None:
    """One analyser's absolute schedule until ``stop`` is set (``once``: a single tick)."""
    assert analyser.rate_hz is not None
    period = 1.0 / analyser.rate_hz
    start = anyio.current_time()
    n = 0
    while not stop.is_set():
        target = start + n * period
        now = anyio.current_time()
        if now > target + period:
            missed = int((now - target) / period)
            dev.late_ticks += missed
            n += missed
            target = start + n * period
        if target > now:
            with anyio.move_on_at(target):
                await stop.wait()
            if stop.is_set():
                break
        await modbus_tick(bus, analyser, dev, writer)
        n += 1
        if once:
            break


async def modbus_tick(
    bus: ModbusBus, analyser: AnalyserConfig, dev: DeviceState, writer: TickWriter
) -> None:
    requested_at, mono = _now_stamp()
    began = anyio.current_time()
    try:
        frame = await bus.poll(analyser.name)
    except BusDown as exc:
        dev.late_ticks += 1
        dev.failed(exc, outage=True, spooled=False)
        dev.tick_errors.pop(type(exc).__name__, None)  # a skipped slot, not an error
        writer.on_tried(dev)
        return
    except ServomexError as exc:
        await writer.error(
            dev, exc, protocol=bus.config.protocol, requested_at=requested_at, monotonic_ns=mono
        )
        return
    duration = anyio.current_time() - began
    samples = bus.samples(analyser.name, frame)
    if not samples:
        wanted = ",".join(c.value for c in analyser.channels or ())
        error = ServomexError(
            f"{analyser.name}: the sweep holds none of the configured channels ({wanted})",
            context=ErrorContext(port=bus.config.port, address=analyser.address),
        )
        await writer.error(
            dev, error, protocol=bus.config.protocol, requested_at=requested_at, monotonic_ns=mono
        )
        return
    await writer.ok(dev, samples, frame.analyser, duration)


async def run_continuous(
    bus: BusConfig,
    analyser: AnalyserConfig,
    dev: DeviceState,
    writer: TickWriter,
    stop: anyio.Event,
    *,
    once: bool = False,
) -> None:
    """Follow the broadcast of a continuous bus's analyser until ``stop`` (``once``: the
    first frame, or the first failure)."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await _follow_continuous(bus, analyser, dev, writer, once=once)
        tg.cancel_scope.cancel()


async def _follow_continuous(
    bus: BusConfig, analyser: AnalyserConfig, dev: DeviceState, writer: TickWriter, *, once: bool
) -> None:
    protocol = ProtocolKind.CONTINUOUS_ASCII
    attempts = 0
    while True:
        requested_at, mono = _now_stamp()
        lost: ServomexError | None
        try:
            anz = await open_continuous(
                bus.port,
                device=analyser.name,
                timeout=bus.timeout,
                serial_settings=bus.serial_settings,
            )
            async with anz:
                lost, delivered = await _pump(anz.frame_feed(), bus, analyser, dev, writer, once)
        except ServomexError as exc:
            lost, delivered = exc, False
        if lost is None:
            return  # once: done
        if delivered:
            attempts = 0
        if not isinstance(lost, ServomexConnectionError):
            lost = ServomexConnectionError(
                str(lost), context=ErrorContext(port=bus.port, protocol=protocol)
            )
        await writer.error(
            dev, lost, protocol=protocol, requested_at=requested_at, monotonic_ns=mono
        )
        if once:
            return
        await anyio.sleep(_backoff(attempts))
        attempts += 1


async def _pump(
    feed: FrameFeed | None,
    bus: BusConfig,
    analyser: AnalyserConfig,
    dev: DeviceState,
    writer: TickWriter,
    once: bool,
) -> tuple[ServomexError | None, bool]:
    """Store every frame of the subscription; returns (why the stream ended — None when
    ``once`` is done —, whether any frame was stored)."""
    protocol = ProtocolKind.CONTINUOUS_ASCII
    assert feed is not None
    wait_first = first_frame_wait(bus.timeout, None)
    receive, token = feed.subscribe_frames()
    dropped_seen = 0
    waiting_first = True
    delivered = False
    try:
        while True:
            with anyio.move_on_after(wait_first if waiting_first else math.inf) as scope:
                try:
                    item = await receive.receive()
                except anyio.EndOfStream:
                    reason = feed.stop_reason
                    return reason or ServomexConnectionError(
                        f"the broadcast on {bus.port} ended",
                        context=ErrorContext(port=bus.port, protocol=protocol),
                    ), delivered
            if scope.cancelled_caught:
                waiting_first = False  # tried: the error tick says why until a frame comes
                error = ServomexTimeoutError(
                    f"{analyser.name}: no broadcast frame on {bus.port} within {wait_first:g} s",
                    context=ErrorContext(port=bus.port, protocol=protocol),
                )
                await writer.error(
                    dev, error, protocol=protocol, requested_at=None,
                    monotonic_ns=time.monotonic_ns(),
                )  # fmt: skip
                if once:
                    return None, delivered
                continue
            waiting_first = False
            dropped = feed.subscriber_dropped(token)
            dev.late_ticks += dropped - dropped_seen
            dropped_seen = dropped
            if isinstance(item, Frame):
                await writer.ok(dev, item.as_samples(analyser.name), item.analyser, None)
                delivered = True
            else:
                await writer.error(
                    dev, item.error, protocol=protocol, requested_at=None,
                    monotonic_ns=item.monotonic_ns, received_at=item.received_at,
                )  # fmt: skip
            if once:
                return None, delivered
    finally:
        feed.unsubscribe(token)
        receive.close()
