"""``servomex run``: the acquisition service (docs/service.md §4, spec service.md §1-§3, §5).

Theory of operation
-------------------
:func:`run_service` (and the :class:`Service` behind it) runs one configuration:

1. **Spool.** The spool file is opened (one process per file: a second service is refused) and
   wrapped in an :class:`~servomexlib.service.spool_async.AsyncSpool`. Cursors of sinks that are
   no longer in the file are forgotten (logged): they would hold their backlog forever.
2. **Forwarders.** One :class:`~servomexlib.service.forwarding.Forwarder` per ``[[sink]]``
   through a :class:`~servomexlib.service.forwarding.ForwardingEngine`, each named by its
   sink's label (``sqlite plant.db``: stable across restarts, not the sink's index) and
   delivering through a :class:`~servomexlib.service.targets.SinkTarget`. A failing sink only
   grows its own backlog in the spool.
3. **Scheduler.** One task per analyser (:mod:`.pollers`): Modbus analysers on their absolute
   schedules over one manager per bus, continuous analysers following their broadcast. Every
   tick is committed to the spool before any sink sees it.
4. **Around it**: the systemd notifications (:mod:`.notify`: ``READY=1`` once every analyser
   has been tried, ``WATCHDOG=1`` each second while the scheduler runs, ``STOPPING=1``), the
   HTTP endpoints when asked for (:mod:`.http`, :mod:`.health`), and SIGINT/SIGTERM.

**Stopping.** A signal, ``duration`` running out or the caller's ``stop`` event sets one
event. Modbus analysers finish the tick in progress and start no other; continuous ones stop
waiting for the next frame (a commit in progress finishes). Then ``STOPPING=1``, the sinks
are given up to 5 s to catch up with the spool (measured on the wall clock: a stop is a
human-time promise, also when the event loop runs on virtual time), the forwarders are
cancelled, the spool is closed, and the exit code is 0. What was not delivered stays in the
spool for the next start. ``once``: every analyser is polled once, the sinks are given up to
30 s, one line per analyser is printed, and the exit code is 0 when every analyser answered,
else 1.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TextIO

import anyio
import anyio.abc

from ..devices.models import ProtocolKind
from ..errors import ServomexError
from .bus_load import bus_load
from .config_model import ServiceConfig, SinkConfig, SinkType
from .config_rules import ListenAddress
from .forwarding import ForwarderOptions, ForwardingEngine, Target
from .health import DeviceState, ServiceState
from .http import Response, serve_http
from .logs import configure_logging
from .notify import Notifier
from .pollers import ModbusBus, TickWriter, run_continuous, run_modbus_analyser
from .spool import Spool
from .spool_async import AsyncSpool
from .targets import SinkTarget

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "STOP_FLUSH_S",
    "Service",
    "build_targets",
    "run_service",
]

_log = logging.getLogger("servomexlib.service.runner")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
#: How long a stop waits for the sinks to catch up (seconds, wall clock).
STOP_FLUSH_S: Final = 5.0
#: How long ``--once`` waits for delivery.
ONCE_FLUSH_S: Final = 30.0


class UnavailableTarget:
    """A sink this build cannot deliver to yet: every open fails, saying so (its backlog
    stays in the spool until a build that can deliver it runs)."""

    def __init__(self, label: str, reason: str) -> None:
        self.label = label
        self.reason = reason

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()
        raise ServomexError(f"{self.label}: {self.reason}")

    async def deliver(self, ticks: Any) -> None:  # pragma: no cover - never opened
        raise ServomexError(f"{self.label}: {self.reason}")

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()


def _make_target(sink: SinkConfig) -> Target:
    rotate = sink.rotate
    if sink.type in (SinkType.CSV, SinkType.JSONL):
        from ..sinks.csv import CsvSink
        from ..sinks.jsonl import JsonlSink

        assert sink.path is not None
        line_sink = CsvSink if sink.type is SinkType.CSV else JsonlSink
        return SinkTarget(
            line_sink(
                sink.path,
                rotate_bytes=rotate.bytes if rotate is not None else None,
                rotate_seconds=rotate.seconds if rotate is not None else None,
                seq_column=True,
                fsync=True,
            )
        )
    if sink.type is SinkType.SQLITE:
        from ..sinks.sqlite import SqliteSink

        assert sink.path is not None
        return SinkTarget(SqliteSink(sink.path, seq_column=True))
    if sink.type is SinkType.PARQUET:
        from ..sinks.parquet import ParquetSink

        if rotate is not None:
            _log.warning(
                "event=rotate_not_applied sink=%r rotate=%s reason='the parquet sink writes "
                "journal parts and does not rotate yet'",
                sink.label, rotate.text,
            )  # fmt: skip
        assert sink.path is not None
        return SinkTarget(ParquetSink(sink.path, journal=True))
    if sink.type is SinkType.POSTGRES:
        from ..sinks.postgres import PostgresConfig, PostgresSink

        assert sink.dsn is not None
        config = PostgresConfig(dsn=sink.dsn, table=sink.table or "samples", create_table=True)
        return SinkTarget(PostgresSink(config, seq_column=True))
    return UnavailableTarget(sink.label, "the mqtt sink is not available in this build yet")


def build_targets(sinks: tuple[SinkConfig, ...]) -> dict[str, Target]:
    """One target per sink, keyed by the sink's label (its spool cursor's name)."""
    return {sink.label: _make_target(sink) for sink in sinks}


def _once_line(dev: DeviceState) -> str:
    payload = dev.latest
    if dev.up and payload is not None:
        values = " ".join(
            f"{r['channel']}={'-' if r['value'] is None else format(r['value'], 'g')}"
            f"{'' if not r['unit'] else ' ' + r['unit']}"
            for r in payload["readings"]
        )
        return f"{dev.name}: ok seq={payload['seq']} {values}".rstrip()
    return f"{dev.name}: error {dev.last_error or 'not polled'}"


class Service:
    """One run of a configuration (module docstring). ``run()`` returns the exit code.

    Args beyond :func:`run_service`'s: ``targets`` replaces the sinks' targets (tests),
    ``spool_inline`` runs spool calls on the event loop (virtual-time tests),
    ``forwarder_options`` tunes the forwarders, ``handle_signals`` installs the SIGINT/SIGTERM
    receiver, ``environ`` is where ``NOTIFY_SOCKET`` is read, ``out`` gets ``once``'s lines,
    ``configure_logs`` installs the stderr log handler.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        duration: float | None = None,
        once: bool = False,
        http: ListenAddress | None = None,
        quiet: bool = False,
        stop: anyio.Event | None = None,
        targets: Mapping[str, Target] | None = None,
        spool_inline: bool = False,
        forwarder_options: ForwarderOptions | None = None,
        handle_signals: bool = True,
        environ: Mapping[str, str] = os.environ,
        out: TextIO | None = None,
        configure_logs: bool = True,
        wall_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.duration = duration
        self.once = once
        self.listen = http if http is not None else config.http
        self.quiet = quiet
        self.stop = stop if stop is not None else anyio.Event()
        self._targets = targets
        self.spool_inline = spool_inline
        self.forwarder_options = forwarder_options
        self.handle_signals = handle_signals
        self.notifier = Notifier(environ)
        self.out = out
        self.configure_logs = configure_logs
        self._wall = wall_clock
        self.state = ServiceState(config.name)
        self.ready = anyio.Event()
        self.http_port: int | None = None
        self.http_started = anyio.Event()
        self.spool: AsyncSpool | None = None
        self.engine: ForwardingEngine | None = None
        self.flushed: bool | None = None

    # ------------------------------------------------------------------ pieces

    def _tried(self, dev: DeviceState) -> None:
        if not self.ready.is_set() and self.state.all_tried:
            self.ready.set()
            self.notifier.ready()
            _log.info("event=ready analysers=%d", len(self.state.devices))

    async def _respond(self, path: str) -> Response:
        if path == "/metrics":
            await self._refresh_sinks()
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.state.metrics_text()
        if path == "/healthz":
            await self._refresh_sinks()
            healthy, reasons = self.state.health(anyio.current_time())
            if healthy:
                return 200, "text/plain; charset=utf-8", b"ok\n"
            return 503, "text/plain; charset=utf-8", ("\n".join(reasons) + "\n").encode()
        if path == "/api/latest":
            body = json.dumps(self.state.latest(), ensure_ascii=False, allow_nan=False)
            return 200, "application/json", body.encode("utf-8")
        return 404, "text/plain; charset=utf-8", b"not found: /metrics /healthz /api/latest\n"

    async def _refresh_sinks(self) -> None:
        if self.spool is not None and self.engine is not None:
            await self.state.refresh_sinks(self.spool, self.engine.stats)

    async def _signals(self) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            with receiver as signals:
                async for signum in signals:
                    if self.stop.is_set():
                        _log.warning("event=signal signal=%s stop already in progress", signum)
                        continue
                    _log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
                    self.stop.set()
        except (NotImplementedError, RuntimeError, ValueError) as exc:  # not the main thread
            _log.warning("event=signals_unavailable error=%r", str(exc))

    async def _watchdog(self) -> None:
        if not self.notifier.enabled:
            return
        while True:
            self.notifier.watchdog()
            await anyio.sleep(1.0)

    async def _flush(self, engine: ForwardingEngine, seconds: float) -> bool:
        """Wait until every sink acknowledged the spool's head, at most ``seconds`` of wall
        time (module docstring)."""
        deadline = self._wall() + seconds
        head = engine.spool.head
        while True:
            lagging = [f for f in engine.forwarders.values() if f.stats.acked < head]
            if not lagging:
                return True
            left = deadline - self._wall()
            if left <= 0:
                _log.warning(
                    "event=flush_incomplete timeout_s=%g sinks=%s (undelivered ticks stay in "
                    "the spool)",
                    seconds, ",".join(repr(f.name) for f in lagging),
                )  # fmt: skip
                return False
            with anyio.move_on_after(min(left, 0.25)):
                await lagging[0].wait_acked(head)

    async def _schedule(self, writer: TickWriter) -> None:
        buses: list[ModbusBus] = []
        try:
            async with anyio.create_task_group() as tg:
                for bus in self.config.buses:
                    if bus.protocol is ProtocolKind.CONTINUOUS_ASCII:
                        for analyser in bus.analysers:
                            dev = self.state.devices[analyser.name]
                            tg.start_soon(
                                functools.partial(
                                    run_continuous, bus, analyser, dev, writer, self.stop,
                                    once=self.once,
                                ),
                                name=f"analyser {analyser.name}",
                            )  # fmt: skip
                        continue
                    modbus = ModbusBus(bus)
                    buses.append(modbus)
                    for analyser in bus.analysers:
                        dev = self.state.devices[analyser.name]
                        tg.start_soon(
                            functools.partial(
                                run_modbus_analyser, modbus, analyser, dev, writer, self.stop,
                                once=self.once,
                            ),
                            name=f"analyser {analyser.name}",
                        )  # fmt: skip
                if self.duration is not None and not self.once:
                    tg.start_soon(self._stop_after, self.duration)
        finally:
            for modbus in buses:
                await modbus.aclose()

    async def _stop_after(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.stop.wait()
        if not self.stop.is_set():
            _log.info("event=duration_reached duration_s=%g", seconds)
            self.stop.set()

    def _open_spool(self) -> Spool:
        max_bytes = max(1, int(self.config.spool_max_mb * 2**20))
        return Spool(self.config.spool, max_bytes=max_bytes)

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        config = self.config
        if self.configure_logs:
            configure_logging(config.log_level, quiet=self.quiet)
        for bus in config.buses:
            if bus.local_echo.value != "off":
                _log.warning(
                    "event=local_echo_not_applied bus=%s local_echo=%s reason='the transport "
                    "has no local-echo option yet'",
                    bus.table_path, bus.local_echo.value,
                )  # fmt: skip
            load = bus_load(bus)
            if load.utilisation is not None:
                self.state.bus_utilisation[bus.table_path] = load.utilisation
            for analyser in bus.analysers:
                period = None if analyser.rate_hz is None else 1.0 / analyser.rate_hz
                self.state.add_device(analyser.name, bus.table_path, period)
        try:
            spool = (
                self._open_spool()
                if self.spool_inline
                else await anyio.to_thread.run_sync(self._open_spool)
            )
        except ServomexError as exc:
            _log.error("event=spool_failed spool=%s error=%r", config.spool, str(exc))
            return EXIT_FAILED
        try:
            return await self._run_with(spool)
        finally:
            self.notifier.close()
            spool.close()

    async def _run_with(self, spool: Spool) -> int:
        config = self.config
        aspool = self.spool = AsyncSpool(spool, inline=self.spool_inline)
        targets = dict(self._targets) if self._targets is not None else build_targets(config.sinks)
        for name in spool.sinks():
            if name not in targets:
                await aspool.forget_sink(name)
                _log.warning("event=sink_forgotten sink=%r reason='no longer configured'", name)
        for name in targets:
            self.state.add_sink(name)
        _log.info(
            "event=start site=%s buses=%d analysers=%d sinks=%d spool=%s",
            config.name, len(config.buses), len(config.analysers), len(targets), config.spool,
        )  # fmt: skip
        writer = TickWriter(aspool, self._tried)
        async with ForwardingEngine(aspool, targets, self.forwarder_options) as engine:
            self.engine = engine
            async with anyio.create_task_group() as tg:
                if self.listen is not None:
                    self.http_port = await tg.start(serve_http, self.listen, self._respond)
                    self.http_started.set()
                if self.handle_signals:
                    tg.start_soon(self._signals)
                watchdog = anyio.CancelScope()

                async def beat() -> None:
                    with watchdog:
                        await self._watchdog()

                tg.start_soon(beat)
                await self._schedule(writer)
                watchdog.cancel()
                self.stop.set()
                self.notifier.stopping()
                _log.info("event=stopping head=%d", aspool.head)
                self.flushed = await self._flush(
                    engine, ONCE_FLUSH_S if self.once else STOP_FLUSH_S
                )
                tg.cancel_scope.cancel()
        await self._refresh_sinks()
        _log.info(
            "event=stopped flushed=%s backlog_rows=%s",
            self.flushed,
            ",".join(f"{n!r}:{s.backlog_rows}" for n, s in self.state.sinks.items()),
        )
        if not self.once:
            return EXIT_OK
        out = self.out if self.out is not None else sys.stdout
        for dev in self.state.devices.values():
            out.write(_once_line(dev) + "\n")
        out.flush()
        return EXIT_OK if all(d.up for d in self.state.devices.values()) else EXIT_FAILED


async def run_service(
    config: ServiceConfig,
    *,
    duration: float | None = None,
    once: bool = False,
    http: ListenAddress | None = None,
    quiet: bool = False,
    stop: anyio.Event | None = None,
    **options: Any,
) -> int:
    """Run the service of ``config`` until a signal, ``duration`` seconds or ``stop`` (or, with
    ``once``, one tick per analyser); returns the exit code (module docstring). ``http``
    overrides ``[http] listen``; ``quiet`` logs warnings and above only; ``options`` are
    :class:`Service`'s other keywords."""
    service = Service(
        config, duration=duration, once=once, http=http, quiet=quiet, stop=stop, **options
    )
    return await service.run()
