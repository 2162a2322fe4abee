"""Group 8: the acquisition service (``servomex run``) end to end, over ``sim://`` buses.

Both figures run the real :class:`~servomexlib.service.runner.Service` in this process, from a
TOML text that :func:`~servomexlib.service.parse_config` validates exactly as ``servomex run``
and ``servomex config check`` do (a plant over 100 % of a bus would be refused here, before
anything is measured). Each run gets a fresh temporary directory (spool, SQLite, CSV) and
uniquely named simulated lines, and stops through ``duration`` (the service's own clean stop:
the tick in progress finishes, the sinks catch up with the spool, the spool closes).

**CPU per 1 000 samples (poll → spool → SQLite + CSV).** One Modbus RTU bus at 19200 baud,
three analysers (addresses 1-3) with five channels each (I1 I2 I3 E1 E2) at 1 Hz, simulated
with ``realtime=0`` (no byte pacing, no turnaround: the wire costs nothing, so the CPU left is
the service's). The client still keeps the 50 ms of silence before every request, so the
schedule, not the simulator, sets the tick rate. CPU is ``time.process_time()`` around
``Service.run()`` — every thread of this process: the event loop, the spool's and the sinks'
worker threads and the fsyncs' system time — and so includes the in-process simulator's
(small without pacing) and the start (spool open, identify) and stop (final flush).
Samples are counted in the SQLite sink afterwards (every row, error rows shown apart); the
CSV sink's row count must match it.

**40 analysers on 10 buses at 1 Hz.** Ten Modbus RTU buses at 19200 baud, four analysers
each (three channels I1 I2 I3), realistic simulated line timing (byte pacing, the
simulator's turnaround). The planner costs that at 99.8 % of each bus (``config check``
accepts it with its > 80 % warning), so it is also the tightest schedule the checker lets
through. Figures: the bus utilisation from the planner (must be < 100 %), ticks per analyser
counted in the SQLite sink (rows of channel I1 without error; ``rate_hz × duration ± 1``),
the service's late-tick counters (``DeviceState.late_ticks``: slots skipped because the
previous ticks overran), split at ``SETTLE_S`` into start-up (identify) and steady state,
what one sweep really occupies the wire (from the simulators' request logs, beside the
planner's cost: when it is longer, a plant the checker accepts near 100 % cannot keep its
rate), and CPU % of one core = process CPU ÷ wall time of the run.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import math
import os
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime

import anyio

from servomexlib.service import bus_load, parse_config
from servomexlib.service.config_model import ServiceConfig
from servomexlib.service.runner import EXIT_OK, Service
from servomexlib.sim.framing import RequestOutcome
from servomexlib.sim.line import lookup_line

from .common import Figure, Settings

__all__ = ["run"]

GROUP = "8"
#: Seconds after the start by which every analyser has been identified and its schedule has
#: settled: the steady-state figures count from there.
SETTLE_S = 3.0
_names = itertools.count(1)


def _plant(
    root: str,
    *,
    buses: int,
    addresses: int,
    channels: tuple[str, ...],
    rate_hz: float,
    realtime: bool,
) -> tuple[str, list[str]]:
    """A service file: ``buses`` Modbus RTU buses of ``addresses`` simulated analysers; and
    the names of the simulated lines, bus by bus."""
    chan_query = ",".join(channels)
    chan_list = ", ".join(f'"{c}"' for c in channels)
    addr_query = ",".join(str(a) for a in range(1, addresses + 1))
    pacing = "" if realtime else "&realtime=0"
    lines = [
        "[service]",
        'name = "bench"',
        f'spool = "{os.path.join(root, "bench.spool.db")}"',
        'log_level = "warning"',
        "",
    ]
    line_names = []
    for b in range(buses):
        line = f"bench-{os.getpid()}-{next(_names)}"
        line_names.append(line)
        lines += [
            "[[bus]]",
            f'port = "sim://{line}?mode=modbus_rtu&address={addr_query}'
            f'&channels={chan_query}{pacing}"',
            'protocol = "modbus_rtu"',
            "baudrate = 19200",
            "",
        ]
        for a in range(1, addresses + 1):
            lines += [
                "[[bus.analyser]]",
                f'name = "bus{b}-a{a}"',
                f"address = {a}",
                f"rate_hz = {rate_hz:g}",
                f"channels = [{chan_list}]",
                "",
            ]
    lines += [
        "[[sink]]",
        'type = "sqlite"',
        f'path = "{os.path.join(root, "bench.db")}"',
        "",
        "[[sink]]",
        'type = "csv"',
        f'path = "{os.path.join(root, "bench.csv")}"',
        "",
    ]
    return "\n".join(lines), line_names


@dataclasses.dataclass(slots=True)
class _Snapshot:
    """The process at one moment of a run: CPU, wall, loop clock, late-tick counters."""

    cpu_s: float
    wall_s: float
    stamp: datetime  # UTC, comparable with the sinks' ``received_at``
    late: dict[str, int]


@dataclasses.dataclass(slots=True)
class _Run:
    config: ServiceConfig
    exit_code: int
    start: _Snapshot
    settled: _Snapshot  # SETTLE_S after the start: identification is over
    end: _Snapshot
    rows: int
    error_rows: int
    rows_after_settle: int  # rows whose received_at is after ``settled.stamp``
    csv_rows: int
    ticks: dict[str, int]  # device -> ticks with readings (SQLite rows of channel I1)
    flushed: bool | None
    request_times: list[list[float]]  # per bus: every request's time on the simulated line


def _snapshot(service: Service | None) -> _Snapshot:
    late = {} if service is None else {n: d.late_ticks for n, d in service.state.devices.items()}
    return _Snapshot(time.process_time(), time.perf_counter(), datetime.now(UTC), late)


def _run_plant(root: str, plant: tuple[str, list[str]], duration: float) -> _Run:
    text, line_names = plant
    config = parse_config(text, source="bench.toml")
    snaps: list[_Snapshot] = []
    services: list[Service] = []

    async def settle(service: Service) -> None:
        await anyio.sleep(SETTLE_S)  # the loop's clock: the same one the schedules run on
        snaps.append(_snapshot(service))

    async def main() -> int:
        # Built inside the loop: the service's events belong to it.
        service = Service(
            config, duration=duration, quiet=True, handle_signals=False, configure_logs=False
        )
        services.append(service)
        async with anyio.create_task_group() as tg:
            tg.start_soon(settle, service)
            code = await service.run()
            tg.cancel_scope.cancel()
        return code

    # Warnings (e.g. a late tick's log line) are the service's business, not the table's.
    logger = logging.getLogger("servomexlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        start = _snapshot(None)
        code = anyio.run(main)
        service = services[0]
        end = _snapshot(service)
    finally:
        logger.setLevel(level)
    db = sqlite3.connect(os.path.join(root, "bench.db"))
    try:
        stamps = [r[0] for r in db.execute("SELECT received_at FROM samples")]
        errors = db.execute("SELECT COUNT(*) FROM samples WHERE error IS NOT NULL").fetchone()[0]
        per_device = dict(
            db.execute(
                "SELECT device, COUNT(*) FROM samples WHERE channel = 'I1' AND error IS NULL "
                "GROUP BY device"
            ).fetchall()
        )
    finally:
        db.close()
    with open(os.path.join(root, "bench.csv"), newline="", encoding="utf-8") as fh:
        csv_rows = sum(1 for _ in csv.reader(fh)) - 1  # minus the header
    settled = snaps[0] if snaps else end
    after = sum(1 for s in stamps if datetime.fromisoformat(s) > settled.stamp)
    return _Run(
        config=config,
        exit_code=code,
        start=start,
        settled=settled,
        end=end,
        rows=len(stamps),
        error_rows=errors,
        rows_after_settle=after,
        csv_rows=csv_rows,
        ticks={a.name: int(per_device.get(a.name, 0)) for a in config.analysers},
        flushed=service.flushed,
        request_times=[_request_times(name) for name in line_names],
    )


def _request_times(line_name: str) -> list[float]:
    line = lookup_line(line_name)
    if line is None:
        return []
    # Every simulator on a line logs every request it hears (a multi-drop bus): keep each
    # request once, in the log of the analyser it was addressed to.
    return sorted(
        req.time
        for sim in line.simulators
        for req in sim.requests
        if req.outcome is not RequestOutcome.OTHER_ADDRESS
    )


def _wire_sweep_s(times: list[list[float]], reads_per_sweep: int) -> float:
    """Mean request-to-request interval on the busy buses × reads per sweep: what one sweep
    occupies the line, measured (intervals over 0.5 s are idle gaps and left out)."""
    gaps = [b - a for bus in times for a, b in itertools.pairwise(bus) if b - a < 0.5]
    return statistics.fmean(gaps) * reads_per_sweep if gaps else math.nan


def _cpu_per_1000(settings: Settings) -> list[Figure]:
    duration = 10.0 if settings.quick else 30.0
    with tempfile.TemporaryDirectory(prefix="servomex-bench-") as root:
        plant = _plant(
            root,
            buses=1,
            addresses=3,
            channels=("I1", "I2", "I3", "E1", "E2"),
            rate_hz=1.0,
            realtime=False,
        )
        r = _run_plant(root, plant, duration)
    load = bus_load(r.config.buses[0]).utilisation or 0.0
    steady_cpu = r.end.cpu_s - r.settled.cpu_s
    whole_cpu = r.end.cpu_s - r.start.cpu_s
    wall = r.end.wall_s - r.start.wall_s
    steady = _per_1000(steady_cpu, r.rows_after_settle)
    whole = _per_1000(whole_cpu, r.rows)
    consistent = r.csv_rows == r.rows and r.exit_code == EXIT_OK and r.flushed
    return [
        Figure(
            GROUP,
            f"service CPU per 1000 samples, poll → spool → SQLite + CSV "
            f"(1 bus, 3 × 5 ch at 1 Hz, realtime=0, {duration:g} s)",
            f"{steady:.0f} ms CPU ({r.rows_after_settle} samples after {SETTLE_S:g} s)",
            "",
            None,
            None,
            status=None if consistent else "ERROR",
            note=(
                f"CPU = time.process_time() of the whole process (all threads; includes the "
                f"in-process simulator) from {SETTLE_S:g} s after the start to the end of the "
                f"stop (final flush); whole run incl. spool open and identify: {whole:.0f} ms "
                f"per 1000 ({r.rows} samples, {whole_cpu:.2f} CPU-s, {wall:.1f} s wall, "
                f"{100 * whole_cpu / wall:.1f} % of one core); SQLite {r.rows} rows "
                f"({r.error_rows} error rows), CSV {r.csv_rows} rows; exit {r.exit_code}, "
                f"flushed {r.flushed}; bus utilisation (planner) {100 * load:.1f} %"
            ),
        )
    ]


def _per_1000(cpu_s: float, samples: int) -> float:
    return cpu_s * 1000.0 / samples * 1000.0 if samples else math.nan


def _plant_40(settings: Settings) -> list[Figure]:
    duration = 15.0 if settings.quick else 60.0
    rate_hz = 1.0
    with tempfile.TemporaryDirectory(prefix="servomex-bench-") as root:
        plant = _plant(
            root,
            buses=10,
            addresses=4,
            channels=("I1", "I2", "I3"),
            rate_hz=rate_hz,
            realtime=True,
        )
        r = _run_plant(root, plant, duration)
    loads = [bus_load(b).utilisation or 0.0 for b in r.config.buses]
    expected = rate_hz * duration
    counts = sorted(r.ticks.values())
    worst = max(abs(c - expected) for c in counts)
    off = [f"{n}={c}" for n, c in r.ticks.items() if abs(c - expected) > 1]
    early = {n: r.settled.late.get(n, 0) for n in r.end.late}
    steady = {n: c - early[n] for n, c in r.end.late.items()}
    cpu = r.end.cpu_s - r.start.cpu_s
    wall = r.end.wall_s - r.start.wall_s
    label = f"40 analysers on 10 buses at {rate_hz:g} Hz for {duration:g} s"
    model = r.config.buses[0]
    sweep_model = bus_load(model).analysers[0]
    sweep_wire = _wire_sweep_s(r.request_times, len(sweep_model.reads))

    def listing(counts: dict[str, int]) -> str:
        return ", ".join(f"{n}={c}" for n, c in counts.items() if c) or "none"

    return [
        Figure(
            GROUP,
            "40-analyser plant: highest bus utilisation (planner, 4 × 3 ch at 1 Hz, 19200 RTU)",
            f"{100 * max(loads):.1f} %",
            "<= 100 % (config check refuses above)",
            max(loads),
            ("<=", 1.0),
        ),
        Figure(
            GROUP,
            f"{label}: ticks per analyser (SQLite)",
            f"min {counts[0]}, max {counts[-1]}",
            f"{expected:g} ± 1",
            worst,
            ("<=", 1.0),
            note=(
                f"ratio = worst |ticks − {expected:g}|; off by more than 1: "
                f"{', '.join(off) or 'none'}; SQLite {r.rows} rows ({r.error_rows} error "
                f"rows), CSV {r.csv_rows} rows; exit {r.exit_code}, flushed {r.flushed}"
            ),
        ),
        Figure(
            GROUP,
            f"{label}: late ticks after the first {SETTLE_S:g} s (service counters)",
            f"{sum(steady.values())}",
            "0",
            float(sum(steady.values())),
            ("<=", 0.0),
            note=f"late per analyser: {listing(steady)}",
        ),
        Figure(
            GROUP,
            f"{label}: late ticks in the first {SETTLE_S:g} s (start-up: identify)",
            f"{sum(early.values())}",
            "",
            None,
            None,
            note=(
                "each analyser is identified inside its first tick (extra reads); late per "
                f"analyser: {listing(early)}"
            ),
        ),
        Figure(
            GROUP,
            f"{label}: one sweep on the wire (simulator log, mean)",
            f"{1000 * sweep_wire:.1f} ms",
            f"planner {1000 * sweep_model.sweep_cost_s:.1f} ms",
            sweep_wire / sweep_model.sweep_cost_s,
            None,
            note=(
                "mean interval between consecutive requests on a bus (busy stretches) × "
                f"{len(sweep_model.reads)} reads per sweep; × 4 analysers = "
                f"{4000 * sweep_wire:.0f} ms of each 1 s period"
            ),
        ),
        Figure(
            GROUP,
            f"{label}: CPU % of one core",
            f"{100 * cpu / wall:.1f} % ({cpu:.1f} CPU-s / {wall:.1f} s)",
            "",
            None,
            None,
            note=(
                "process CPU (all threads, includes the 40 in-process simulated analysers "
                f"with byte pacing) ÷ wall time of the run; {_per_1000(cpu, r.rows):.0f} ms "
                "CPU per 1000 samples"
            ),
        ),
    ]


def run(settings: Settings) -> list[Figure]:
    return [*_cpu_per_1000(settings), *_plant_40(settings)]
