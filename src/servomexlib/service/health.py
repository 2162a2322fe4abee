"""The live state of a running service and what ``/metrics`` and ``/healthz`` make of it
(docs/service.md §5).

Theory of operation
-------------------
:class:`ServiceState` is written by the scheduler (one :class:`DeviceState` per analyser: the
outcome of every tick, late ticks, outages, the latest payload, tick durations) and by the
stop/refresh path (one :class:`SinkState` per sink: backlog rows and age, errors, dropped rows,
read from the spool and the forwarders). Nothing in it does I/O; the HTTP handler calls
:meth:`ServiceState.refresh_sinks` (a few spool queries) before it answers.

``/metrics`` is exposed through a collector of our own on a private
:class:`prometheus_client.CollectorRegistry` (never the process-global one): at each scrape it
turns the state into metric families, so the numbers a scrape shows are those of one moment
and nothing is double-counted. Metric names are exactly those of service.md §5.

``/healthz`` (:meth:`ServiceState.health`) is healthy when every analyser had a successful tick
within three of its periods and no sink's oldest undelivered tick waits longer than 60 s. A
Modbus analyser's period is ``1 / rate_hz``; a continuous analyser's is the interval observed
between its last two frames (2 s, the client's default broadcast period, until two are seen).
Ages are measured on the event loop's clock (ticks) and the wall clock (the spool's commit
times). Before its first successful tick an analyser is unhealthy: "no successful tick yet".
"""

from __future__ import annotations

import dataclasses
import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .forwarding import ForwarderStats
from .spool_async import AsyncSpool

__all__ = [
    "BACKLOG_MAX_AGE_S",
    "CONTINUOUS_DEFAULT_PERIOD_S",
    "DURATION_BUCKETS_S",
    "HEALTHY_PERIODS",
    "DeviceState",
    "ServiceState",
    "SinkState",
]

HEALTHY_PERIODS: Final = 3
BACKLOG_MAX_AGE_S: Final = 60.0
CONTINUOUS_DEFAULT_PERIOD_S: Final = 2.0
#: Upper bounds of the ``servomex_tick_duration_seconds`` buckets (then +Inf).
DURATION_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclasses.dataclass(slots=True)
class DeviceState:
    """One analyser's live counters (written by its scheduler task only)."""

    name: str
    bus: str
    period_s: float | None  # None: continuous (observed, see :attr:`expected_period_s`)
    up: bool = False
    tried: bool = False
    ticks: int = 0
    tick_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    late_ticks: int = 0
    disconnects: int = 0
    in_outage: bool = False
    last_tick_wall: float | None = None  # wall clock of the last tick (ok or not)
    last_ok_at: float | None = None  # loop clock of the last successful tick
    last_error: str | None = None
    latest: dict[str, Any] | None = None  # the §4 payload of the last tick
    readings: dict[str, tuple[str, str, float | None, bool]] = dataclasses.field(
        default_factory=dict
    )  # channel -> (name, unit, value, ok) of the last successful tick
    observed_period_s: float | None = None
    duration_buckets: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1)
    )
    duration_sum_s: float = 0.0
    duration_count: int = 0

    @property
    def expected_period_s(self) -> float:
        if self.period_s is not None:
            return self.period_s
        return self.observed_period_s or CONTINUOUS_DEFAULT_PERIOD_S

    def observe_duration(self, seconds: float) -> None:
        self.duration_buckets[bisect_left(DURATION_BUCKETS_S, seconds)] += 1
        self.duration_sum_s += seconds
        self.duration_count += 1

    def succeeded(self, now: float, payload: dict[str, Any]) -> None:
        """A tick with readings, at ``now`` on the loop clock."""
        if self.period_s is None and self.last_ok_at is not None:
            interval = now - self.last_ok_at
            if interval > 0:
                self.observed_period_s = interval
        self.ticks += 1
        self.tried = True
        self.up = True
        self.in_outage = False
        self.last_ok_at = now
        self.last_error = None
        self.last_tick_wall = time.time()
        self.latest = payload
        self.readings = {
            r["channel"]: (r["name"] or "", r["unit"] or "", r["value"], bool(r["ok"]))
            for r in payload["readings"]
        }

    def failed(self, error: BaseException | str, *, outage: bool, spooled: bool) -> None:
        """A failed tick (``spooled``: an error tick was stored); ``outage``: the failure is
        a lost connection (the first of an outage counts one disconnect)."""
        kind = type(error).__name__ if isinstance(error, BaseException) else "Error"
        self.tick_errors[kind] = self.tick_errors.get(kind, 0) + 1
        self.tried = True
        self.up = False
        self.last_error = str(error)
        if spooled:
            self.ticks += 1
            self.last_tick_wall = time.time()
        if outage and not self.in_outage:
            self.in_outage = True
            self.disconnects += 1


@dataclasses.dataclass(slots=True)
class SinkState:
    """One sink as the metrics see it (refreshed from the spool and its forwarder)."""

    name: str
    backlog_rows: int = 0
    backlog_ticks: int = 0
    backlog_age_s: float = 0.0
    errors: int = 0
    dropped_rows: int = 0
    last_error: str | None = None


class ServiceState:
    """Everything ``/metrics``, ``/healthz`` and ``/api/latest`` report (module docstring)."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.devices: dict[str, DeviceState] = {}
        self.bus_utilisation: dict[str, float] = {}
        self.sinks: dict[str, SinkState] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def add_device(self, name: str, bus: str, period_s: float | None) -> DeviceState:
        state = self.devices[name] = DeviceState(name, bus, period_s)
        return state

    def add_sink(self, name: str) -> SinkState:
        state = self.sinks[name] = SinkState(name)
        return state

    async def refresh_sinks(
        self, spool: AsyncSpool, forwarders: Mapping[str, ForwarderStats]
    ) -> None:
        """Read each sink's backlog and drops from the spool, its errors from its forwarder."""
        now = time.time()
        for name, sink in self.sinks.items():
            backlog = await spool.backlog(name)
            sink.backlog_rows = backlog.rows
            sink.backlog_ticks = backlog.ticks
            sink.backlog_age_s = backlog.age_s(now)
            sink.dropped_rows = await spool.dropped(name)
            stats = forwarders.get(name)
            if stats is not None:
                sink.errors = stats.errors
                sink.last_error = stats.last_error

    @property
    def all_tried(self) -> bool:
        return all(d.tried for d in self.devices.values())

    def health(self, now: float) -> tuple[bool, list[str]]:
        """(healthy, reasons) at ``now`` on the loop clock; call :meth:`refresh_sinks` first
        for current sink ages."""
        reasons: list[str] = []
        for device in self.devices.values():
            window = HEALTHY_PERIODS * device.expected_period_s
            if device.last_ok_at is None:
                why = f"device={device.name} no successful tick yet"
            elif now - device.last_ok_at > window:
                why = (
                    f"device={device.name} no successful tick for "
                    f"{now - device.last_ok_at:.1f} s (> {window:g} s)"
                )
            else:
                continue
            if device.last_error:
                why += f" last_error={device.last_error!r}"
            reasons.append(why)
        for sink in self.sinks.values():
            if sink.backlog_age_s > BACKLOG_MAX_AGE_S:
                why = (
                    f"sink={sink.name!r} backlog of {sink.backlog_rows} rows, the oldest "
                    f"{sink.backlog_age_s:.0f} s old (> {BACKLOG_MAX_AGE_S:g} s)"
                )
                if sink.last_error:
                    why += f" last_error={sink.last_error!r}"
                reasons.append(why)
        return (not reasons, reasons)

    def latest(self) -> dict[str, Any]:
        """device → its latest §4 payload (devices without a tick yet are left out)."""
        return {n: d.latest for n, d in self.devices.items() if d.latest is not None}

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of the state now."""
        return generate_latest(self.registry)


class _Collector(Collector):
    """Turns a :class:`ServiceState` into the metric families of service.md §5."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        devices = self.state.devices.values()
        up = GaugeMetricFamily("servomex_up", "1 when the last tick succeeded", labels=["device"])
        ticks = CounterMetricFamily("servomex_ticks", "ticks stored", labels=["device"])
        errors = CounterMetricFamily(
            "servomex_tick_errors", "failed ticks by error class", labels=["device", "error"]
        )
        late = CounterMetricFamily(
            "servomex_late_ticks", "scheduled ticks skipped (late)", labels=["device"]
        )
        disconnects = CounterMetricFamily(
            "servomex_disconnects", "outages (lost connections)", labels=["device"]
        )
        value = GaugeMetricFamily(
            "servomex_reading_value",
            "the latest value (NaN when it is not a number)",
            labels=["device", "channel", "name", "unit"],
        )
        ok = GaugeMetricFamily(
            "servomex_reading_ok", "1 when the latest reading is ok", labels=["device", "channel"]
        )
        last = GaugeMetricFamily(
            "servomex_last_tick_timestamp_seconds",
            "wall clock of the last tick",
            labels=["device"],
        )
        duration = HistogramMetricFamily(
            "servomex_tick_duration_seconds", "time one poll took", labels=["device"]
        )
        for d in devices:
            up.add_metric([d.name], 1.0 if d.up else 0.0)
            ticks.add_metric([d.name], d.ticks)
            for kind, count in sorted(d.tick_errors.items()):
                errors.add_metric([d.name, kind], count)
            late.add_metric([d.name], d.late_ticks)
            disconnects.add_metric([d.name], d.disconnects)
            for channel, (name, unit, number, good) in d.readings.items():
                value.add_metric(
                    [d.name, channel, name, unit], math.nan if number is None else number
                )
                ok.add_metric([d.name, channel], 1.0 if good else 0.0)
            if d.last_tick_wall is not None:
                last.add_metric([d.name], d.last_tick_wall)
            if d.period_s is not None:
                running = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip(
                    (*DURATION_BUCKETS_S, math.inf), d.duration_buckets, strict=True
                ):
                    running += count
                    buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
                duration.add_metric([d.name], buckets, d.duration_sum_s)
        utilisation = GaugeMetricFamily(
            "servomex_bus_utilisation_ratio", "Σ rate_hz × sweep cost", labels=["bus"]
        )
        for bus, ratio in self.state.bus_utilisation.items():
            utilisation.add_metric([bus], ratio)
        backlog = GaugeMetricFamily(
            "servomex_sink_backlog_rows", "rows not yet acknowledged", labels=["sink"]
        )
        sink_errors = CounterMetricFamily(
            "servomex_sink_errors", "failed deliveries", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            "servomex_spool_dropped_rows", "rows dropped by a full spool", labels=["sink"]
        )
        for s in self.state.sinks.values():
            backlog.add_metric([s.name], s.backlog_rows)
            sink_errors.add_metric([s.name], s.errors)
            dropped.add_metric([s.name], s.dropped_rows)
        yield from (up, ticks, errors, late, disconnects, value, ok, last, duration)
        yield from (utilisation, backlog, sink_errors, dropped)
