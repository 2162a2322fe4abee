"""A simulated week of ``record()`` into SQLite (issue 13 item 2): slow, on virtual time.

Theory of operation
-------------------
``record()`` polls a Modbus RTU simulator at 1 Hz for ``SERVOMEXLIB_SOAK_DAYS`` simulated days
(default 7, i.e. 604 800 ticks) and ``pipe()`` writes every batch into an :class:`SqliteSink`.
The simulator runs on the event loop's clock (``line_clock=anyio.current_time``) without line
pacing (``realtime=False``: the client still waits its 50 ms silences, learns its waits, fences
after lost replies), and the loop runs on virtual time (tests/_virtual_time.py): a week passes
in minutes of CPU, with exactly the timeline a real week would have.

What the week holds (a scenario task sleeps to each event on the same clock):

* **1 % of replies lost** (``sim.lose_replies(0.01)``, seeded): retries, learned waits and
  fences run all week. At 1 % a transaction loses all three attempts about once in 10**6, ~2
  times a week at 3 transactions per tick, and api.md §7 makes any error but a
  ServomexConnectionError end the recording. So the source is wrapped in
  :class:`AskAgainOnTimeout`, which asks a timed-out poll once more inside its tick (what an
  application recording for a week has to do today) and counts it; see the report of H13-soak.
* **One outage a day**: at noon the device vanishes for ``OUTAGE_S`` (``sim.vanish()``: the
  open stream ends, opens fail) and comes back (``sim.reappear()``); ``reconnect_factory``
  reopens it. Each outage is one disconnect; the ticks it costs are counted late.
* **A name change**: I2 is relabelled on the second day (the first with a one-day run).
  Modbus names are cached per Analyzer and refreshed only by ``identify()`` (api.md §5), and
  ``record()`` never identifies, so the new name appears from the reconnect after the change:
  rows before it keep the old name, rows after it carry the new one.
* **Known values**: I1 drifts at exactly 1 unit per second from 0 at the start, so a row's I1
  value *is* the virtual time of its poll (to float32 precision, 0.06 s at a week) and
  ``floor(I1)`` its tick slot. I2, I3, E1 and E2 step to new values every ``STEP_S`` seconds,
  ``STEP_LEAD_S`` (50 ms) before a slot; every read of a tick happens within 0.9 s of its slot
  (asserted), so the value each row must hold is a function of its slot, checked for every row
  in SQL.

Assertions, from the AcquisitionSummary and from the rows themselves: every slot accounted for
(emitted + late == slots; the slots without rows are exactly the outages', each one run of
``OUTAGE_S`` to ``OUTAGE_S`` + one backoff step), one row per populated channel per emitted
tick, no duplicate (monotonic_ns, channel) row and no slot twice, every value the simulator
held at that slot, one disconnect per outage with ``outage_s`` the outages' length, the name
change visible after the reconnect that follows it, and memory flat.

**Memory.** tracemalloc's allocation hooks make this workload about 4 times slower (measured:
0.74 ms → 2.9 ms per tick), which a whole week cannot afford; so the probes after each half
day (``gc.collect()`` first) read the process's resident set (/proc/self/statm) and the number
of live Python heap blocks (``sys.getallocatedblocks()``), and from 12 h on, when the bounded
buffers (the simulator's request log of 100 000 entries) have filled, both must stay flat: the
resident set may grow by the recorder's tick-duration array (8 bytes a tick, kept exactly up
to 2**20 ticks by design) plus ``RSS_SLACK_BYTES``, the heap by ``BLOCKS_SLACK`` blocks.
tracemalloc runs in two **windows** of ``TRACE_WINDOW_S`` ticks (20 min; ``Plan.windows``):
one on the second day (14 h into it; the first day's, with a one-day run), one on the last
day (18 h into it), both clear of the noon outage. A window starts tracing, runs its ticks
and, after ``gc.collect()``, reads what is still traced (allocated in the window and alive:
the net growth) and the window's peak; ``check_windows`` bounds both (``TRACE_GROWTH_BYTES``,
``TRACE_PEAK_BYTES``) once the bounded buffers have filled (windows from 12 h on; in runs
under a day they are reported only). With ``SERVOMEXLIB_SOAK_TRACEMALLOC=1`` tracemalloc
instead runs all along (4 times the CPU) and its current traced size is bounded like the
resident set.

**Both backends within budget.** The week runs on asyncio (``SERVOMEXLIB_SOAK_DAYS``), the
cheaper backend per tick; trio runs ``SERVOMEXLIB_SOAK_TRIO_DAYS`` (default 1) with identical
assertions: trio's MockClock costs ~40 % more per tick, and a week on both would be ~2.4 times
the time of the asyncio week alone. Run ``SERVOMEXLIB_SOAK_DAYS=0.1`` while developing.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import os
import resource
import sqlite3
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from _virtual_time import virtual_anyio_backend as anyio_backend
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import ChannelId, ProtocolKind, Sample
from servomexlib.errors import ServomexTimeoutError
from servomexlib.sim import Simulator
from servomexlib.sinks import SqliteSink, pipe
from servomexlib.streaming import recorder as recorder_module
from servomexlib.streaming.recorder import BACKOFF_STEPS_S, AcquisitionSummary, record

__all__ = ["anyio_backend"]

DAY_S = 86_400
#: Simulated days on asyncio (the week) and on trio.
DAYS = float(os.environ.get("SERVOMEXLIB_SOAK_DAYS", "7"))
TRIO_DAYS = float(os.environ.get("SERVOMEXLIB_SOAK_TRIO_DAYS", "1"))
TRACE = os.environ.get("SERVOMEXLIB_SOAK_TRACEMALLOC", "") not in ("", "0")
#: How long the device stays away each day.
OUTAGE_S = 300.0
#: Seconds between value steps of I2, I3, E1, E2.
STEP_S = 600
#: How long before a slot the values step: not 0.1 s, where a read 0.9 s into the slot before
#: could tie with the step on virtual time (seen once: a read at exactly 80399.9 s took the
#: new I2, and its float32 I1 read 0.89999 into the slot).
STEP_LEAD_S = 0.05
LOSS = 0.01
#: The per-transaction timeout (before the client has learned its wait).
TIMEOUT = 0.25
#: Memory allowed to appear from 12 h on beyond the recorder's tick-duration array. The heap
#: block count is the sharp leak detector (one object leaked per tick is ~500 000 blocks a
#: week; measured: 657 000 +- 5 000 from 12 h to 48 h); the resident set also holds SQLite's
#: page cache and malloc's arenas (measured +4.7 MiB from 12 h to 48 h), so its slack is wide.
RSS_SLACK_BYTES = 24 << 20
BLOCKS_SLACK = 20_000
#: Ticks per tracemalloc window, and its bounds: the net growth (what was allocated in the
#: window and is still alive after it) beyond the tick-duration array (8 bytes a tick, and up
#: to its whole size when it is reallocated in the window: tracemalloc then traces the new
#: block), and the window's peak (the sink's batches in flight, the simulator's log entries
#: replaced in the window, the recorder's buffer).
#: 20 minutes: tracemalloc slows the sink's thread, which runs in wall time while the ticks
#: run on virtual time, so the recorder's queue fills during a window (measured: with an hour,
#: 780 ticks in flight at its end in one run, the whole queue and late ticks in another).
TRACE_WINDOW_S = 1200
TRACE_GROWTH_BYTES = 1 << 20
#: ... plus, per tick in flight at the window's end (batches the recorder queued and pipe()
#: has not taken, and two sink batches: one being gathered, one being written), its samples'
#: traced size (measured: ~2.7 KiB; 0.3 MiB growth at 14 h with few in flight, 2.1 MiB at
#: 18 h with ~780 ticks in flight, the sink's thread having fallen behind for a while).
TRACE_PER_TICK_BYTES = 4096
TRACE_PEAK_BYTES = 8 << 20
#: The recorder's queue (``buffer_size``, in ticks): a full one may be traced at the peak.
RECORDER_BUFFER = 4096
#: SinkPacer: how far (in ticks) the recorder may run ahead of pipe(), and the wall-time pause
#: of a tick's poll beyond that.
PACE_AHEAD_TICKS = 512
PACE_S = 0.002
#: Frames kept per traced allocation. One: the simulator's log entries (SimRequest, request
#: and reply bytes, line times) are all allocated on lines of servomexlib/sim, and more frames
#: slow the sink's thread so much (it runs in wall time, the ticks on virtual time) that the
#: recorder's buffer fills and ticks come late (measured with 8 frames: a gap in the window).
TRACE_FRAMES = 1
#: Traced apart from the net growth: the recorder's tick-duration array, which grows by design
#: (8 bytes a tick up to 2**20 ticks; a reallocation in a window traces all of it), and the
#: simulator's own allocations — its request log is a ring of 100 000 entries, so each entry
#: it logs in a window replaces one logged before tracing began (untraced): it would look like
#: growth though the ring is full.
_RECORDER_SOURCE = Path(recorder_module.__file__)
_APPEND_LINE = next(
    n
    for n, text in enumerate(_RECORDER_SOURCE.read_text().splitlines(), 1)
    if "self.values.append(value)" in text
)
DURATIONS = tracemalloc.Filter(True, str(_RECORDER_SOURCE), _APPEND_LINE)
NOT_GROWTH = [
    tracemalloc.Filter(False, str(_RECORDER_SOURCE), _APPEND_LINE),
    tracemalloc.Filter(False, "*/servomexlib/sim/*"),
]
#: Memory probes every half day; flatness is judged from the first one on.
PROBE_S = DAY_S / 2
CHANNELS = ("I1", "I2", "I3", "E1", "E2")
NEW_NAME = "CO-B"
#: Samples per SQLite write: 100 ticks, a few ms of the sink's thread.
SINK_BATCH = 500


def stepped(channel: str, j: int) -> float:
    """The value of ``channel`` during step ``j`` (exact in float32). Mirrored in SQL below."""
    if channel == "I2":
        return (j % 97) * 0.5
    if channel == "I3":
        return 100.0 + (j % 13)
    if channel == "E1":
        return 4.0 + (j % 16) * 0.25
    assert channel == "E2"
    return 12.0 - (j % 7) * 0.125


#: ``stepped`` as SQL over a row's ``slot``; step j = slot / STEP_S (integer division).
STEPPED_SQL = {
    "I2": "((slot / {s}) % 97) * 0.5",
    "I3": "100.0 + ((slot / {s}) % 13)",
    "E1": "4.0 + ((slot / {s}) % 16) * 0.25",
    "E2": "12.0 - ((slot / {s}) % 7) * 0.125",
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The scenario's timeline in seconds after the start (slot n is at n)."""

    slots: int

    @property
    def days(self) -> int:
        return max(1, round(self.slots / DAY_S))

    @property
    def day_s(self) -> float:
        return self.slots / self.days

    @property
    def outages(self) -> list[tuple[float, float]]:
        """(vanish, reappear) each day at noon, half a slot after a tick."""
        day = self.day_s
        return [
            (d * day + day / 2 + 0.5, d * day + day / 2 + 0.5 + OUTAGE_S) for d in range(self.days)
        ]

    @property
    def rename_at(self) -> float:
        """I2's relabelling: 6 h into the second day (the first, with one day)."""
        return (1 if self.days > 1 else 0) * self.day_s + self.day_s / 4 + 0.5

    @property
    def windows(self) -> list[tuple[float, float]]:
        """The tracemalloc windows (start, end): 14 h into the second day (the first with one
        day), 18 h into the last; ``TRACE_WINDOW_S`` each (at most an eighth of a day)."""
        length = min(TRACE_WINDOW_S, self.day_s / 8)
        first = min(1, self.days - 1) * self.day_s + self.day_s * 14 / 24
        last = (self.days - 1) * self.day_s + self.day_s * 18 / 24
        return [(at - 0.5, at - 0.5 + length) for at in (first, last)]

    @property
    def probes(self) -> list[float]:
        return [k * PROBE_S - 0.5 for k in range(1, int(self.slots // PROBE_S) + 1)]


@dataclasses.dataclass
class TraceWindow:
    """One tracemalloc window: its slots, the traced bytes still alive at its end but the
    tick-duration array's and the simulator's (the net growth; ``top``: its three largest
    sources), the array's (its growth, or all of it when it was reallocated in the window),
    the window's peak, the array's size at its end and the ticks in flight to the sink."""

    start: float
    end: float
    growth: int = 0
    peak: int = 0
    durations_bytes: int = 0
    array_bytes: int = 0
    in_flight: int = 0
    top: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class MemoryProbe:
    at_slot: float
    rss: int
    blocks: int
    traced: int | None


def probe_memory(at: float) -> MemoryProbe:
    gc.collect()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * resource.getpagesize()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    return MemoryProbe(at, rss, sys.getallocatedblocks(), traced)


class SinkPacer:
    """Wall-time backpressure from the sink's thread onto the virtual-time ticks.

    The ticks run on virtual time, as fast as the CPU allows; the SQLite sink writes in a
    worker thread, in wall time, sharing the GIL with them (and virtual time jumps while the
    loop waits for it). Once the recorder is a few hundred ticks ahead of what pipe() took, a
    tick's poll first blocks the loop thread for ``PACE_S`` of wall time (``time.sleep``:
    virtual time must not move, and the sleep lets the sink's thread run), so the recorder's
    queue never fills; without it a faster poll path can outrun the sink for good (measured on
    trio: every tick late from 5 h on). It costs wall time only while behind (``paced``).
    """

    def __init__(self) -> None:
        self.rec: Any = None  # the Recording, once record() runs
        self.taken = 0  # batches pipe() has taken from the recorder
        self.paced = 0

    @property
    def behind(self) -> int:
        return (self.rec.summary.samples_emitted - self.taken) if self.rec is not None else 0

    def pace(self) -> None:
        if self.behind > PACE_AHEAD_TICKS:
            self.paced += 1
            time.sleep(PACE_S)  # real, on purpose: see the class docstring

    async def counted(
        self, stream: AsyncIterator[Sequence[Sample]]
    ) -> AsyncIterator[Sequence[Sample]]:
        async for batch in stream:
            self.taken += 1
            yield batch


class AskAgainOnTimeout:
    """A PollSource over the current Analyzer: a poll that timed out is asked once more.

    record() ends on any error but a ServomexConnectionError (api.md §7); at 1 % reply loss a
    transaction loses all three attempts about once in 10**6 (~2 a week here).
    """

    def __init__(self, analyzer: Analyzer, counts: Counts, pacer: SinkPacer) -> None:
        self.analyzer = analyzer
        self.counts = counts
        self.pacer = pacer

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[Sample]:
        self.pacer.pace()
        try:
            return await self.analyzer.poll_samples(names=names, timeout=timeout)
        except ServomexTimeoutError:
            self.counts.asked_again += 1
            return await self.analyzer.poll_samples(names=names, timeout=timeout)


@dataclasses.dataclass
class Counts:
    opened: int = 0
    failed_opens: int = 0
    asked_again: int = 0
    paced: int = 0  # ticks SinkPacer held back


class Reopener:
    """``reconnect_factory``: close the lost Analyzer, open a new one on the simulator and
    identify it (names, populated slots). A Modbus Analyzer needs no session task."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.counts = Counts()
        self.pacer = SinkPacer()
        self.current: Analyzer | None = None

    async def open(self) -> AskAgainOnTimeout:
        if self.current is not None:
            await self.current.aclose()
            self.current = None
        try:
            transport = self.sim.transport()  # ServomexConnectionError while vanished
        except Exception:
            self.counts.failed_opens += 1
            raise
        anz = await open_device(transport, protocol="modbus_rtu", timeout=TIMEOUT, identify=False)
        try:
            for attempt in range(3):
                try:
                    await anz.identify(refresh=True)
                    break
                except ServomexTimeoutError:
                    if attempt == 2:
                        raise
        except BaseException:
            await anz.aclose()
            raise
        self.current = anz
        self.counts.opened += 1
        return AskAgainOnTimeout(anz, self.counts, self.pacer)

    async def aclose(self) -> None:
        if self.current is not None:
            await self.current.aclose()


@dataclasses.dataclass
class SoakResult:
    summary: AcquisitionSummary
    counts: Counts
    probes: list[MemoryProbe]
    windows: list[TraceWindow]
    old_name: str | None
    wall_s: float
    cpu_s: float
    day_wall_s: list[float]


async def run_soak(plan: Plan, db: Path) -> SoakResult:
    sim = Simulator(
        mode=ProtocolKind.MODBUS_RTU, line_clock=anyio.current_time, realtime=False, seed=13
    )
    old_name = next(c.name for c in sim.channels if c.channel is ChannelId.I2)
    sim.lose_replies(LOSS)
    for ch in ("I2", "I3", "E1", "E2"):
        sim.set_value(ch, stepped(ch, 0))
    reopener = Reopener(sim)
    source = await reopener.open()
    probes: list[MemoryProbe] = []
    windows: list[TraceWindow] = []
    day_wall: list[float] = []
    t0 = anyio.current_time()
    sim.set_value("I1", 0.0)
    sim.drift("I1", rate_per_s=1.0)  # I1 = seconds since t0: the clock of every row

    events: list[tuple[float, Callable[[], None]]] = []
    for j in range(1, math.ceil(plan.slots / STEP_S)):

        def step(j: int = j) -> None:
            for ch in ("I2", "I3", "E1", "E2"):
                sim.set_value(ch, stepped(ch, j))

        events.append((j * STEP_S - STEP_LEAD_S, step))
    for gone, back in plan.outages:
        events += [(gone, sim.vanish), (back, sim.reappear)]
    events.append((plan.rename_at, lambda: sim.set_name("I2", NEW_NAME)))
    for at in plan.probes:

        def probe(at: float = at) -> None:
            probes.append(probe_memory(at))

        events.append((at, probe))
    for d in range(1, plan.days + 1):
        events.append((d * plan.day_s - 0.5, lambda: day_wall.append(time.perf_counter())))
    if not TRACE:  # with SERVOMEXLIB_SOAK_TRACEMALLOC tracemalloc runs all along instead
        for start, end in plan.windows:
            window = TraceWindow(start, end)

            def open_window() -> None:
                gc.collect()
                tracemalloc.start(TRACE_FRAMES)

            def close_window(window: TraceWindow = window) -> None:
                gc.collect()
                _, window.peak = tracemalloc.get_traced_memory()
                snapshot = tracemalloc.take_snapshot()
                tracemalloc.stop()
                rest = snapshot.filter_traces(NOT_GROWTH)
                window.growth = sum(t.size for t in rest.traces)
                window.top = [str(s) for s in rest.statistics("lineno")[:3]]
                durations = snapshot.filter_traces([DURATIONS]).traces
                window.durations_bytes = sum(t.size for t in durations)
                window.array_bytes = recorder_durations_bytes()
                window.in_flight = pacer.behind + 2 * SINK_BATCH // len(CHANNELS)
                windows.append(window)

            events += [(start, open_window), (end, close_window)]
    events.sort(key=lambda e: e[0])

    pacer = reopener.pacer

    def recorder_durations_bytes() -> int:
        # The recorder's tick-duration array (8 bytes a tick): the one store meant to grow.
        return 8 * pacer.rec.summary.samples_emitted if pacer.rec is not None else 0

    async def scenario() -> None:
        for at, action in events:
            await anyio.sleep_until(t0 + at)
            action()

    wall0, cpu0 = time.perf_counter(), time.process_time()
    # No virtual deadline here: while the sink's thread writes, virtual time jumps to the next
    # timer, so a deadline would come while the last batches are still being written. The
    # test's bound is pytest-timeout's, in wall time.
    try:
        async with SqliteSink(db) as sink, anyio.create_task_group() as tg:
            tg.start_soon(scenario)
            async with record(
                source,
                rate_hz=1,
                duration=plan.slots,
                auto_reconnect=True,
                reconnect_factory=reopener.open,
                buffer_size=RECORDER_BUFFER,  # the sink's thread never holds the schedule up
            ) as rec:
                pacer.rec = rec
                batches = pacer.counted(rec.stream)
                await pipe(batches, sink, batch_size=SINK_BATCH, flush_interval=DAY_S)
            tg.cancel_scope.cancel()  # the scenario may have events left
    finally:
        await reopener.aclose()
    reopener.counts.paced = pacer.paced
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    edges = [wall0, *day_wall]
    return SoakResult(
        rec.summary,
        reopener.counts,
        probes,
        windows,
        old_name,
        wall,
        cpu,
        [b - a for a, b in itertools.pairwise(edges)],
    )


# ------------------------------------------------------------------------------ the checks


def ticks_table(conn: sqlite3.Connection) -> None:
    """One row per emitted tick: its monotonic_ns, slot (floor of I1) and I1's fraction."""
    conn.execute(
        "CREATE TEMP TABLE ticks AS SELECT monotonic_ns, CAST(value AS INTEGER) AS slot, "
        "value - CAST(value AS INTEGER) AS frac FROM samples WHERE channel = 'I1'"
    )
    conn.execute("CREATE INDEX ticks_ns ON ticks(monotonic_ns)")


def one(conn: sqlite3.Connection, sql: str) -> Any:
    return conn.execute(sql).fetchone()[0]


def gaps(conn: sqlite3.Connection, slots: int) -> list[tuple[int, int]]:
    """Runs of slots without a tick: (first missing slot, count)."""
    rows = conn.execute(
        "SELECT prev, slot FROM (SELECT slot, LAG(slot, 1, -1) OVER (ORDER BY slot) AS prev "
        "FROM ticks) WHERE slot - prev > 1"
    ).fetchall()
    out = [(prev + 1, slot - prev - 1) for prev, slot in rows]
    last = one(conn, "SELECT MAX(slot) FROM ticks")
    if last < slots - 1:
        out.append((last + 1, slots - 1 - last))
    return out


def check_rows(db: Path, plan: Plan, result: SoakResult) -> dict[str, Any]:
    summary = result.summary
    conn = sqlite3.connect(db)
    try:
        ticks_table(conn)
        emitted = summary.samples_emitted
        # Every slot accounted for, from the summary and from the rows.
        assert emitted + summary.samples_late == plan.slots
        assert one(conn, "SELECT COUNT(*) FROM ticks") == emitted
        assert one(conn, "SELECT COUNT(DISTINCT slot) FROM ticks") == emitted  # no slot twice
        assert one(conn, "SELECT MIN(slot) FROM ticks") == 0
        assert one(conn, "SELECT MAX(slot) FROM ticks") < plan.slots
        # Every read of a tick within 0.9 s of its slot (I1 is float32: at a week the read came
        # < 0.93 s after it), before the step STEP_LEAD_S ahead of the next slot.
        assert one(conn, "SELECT MIN(frac) FROM ticks") >= 0.0
        assert one(conn, "SELECT MAX(frac) FROM ticks") < 0.9
        # One row per populated channel per tick, no duplicate, no error row.
        assert one(conn, "SELECT COUNT(*) FROM samples") == len(CHANNELS) * emitted
        assert one(conn, "SELECT COUNT(*) FROM samples WHERE error IS NOT NULL") == 0
        assert (
            one(
                conn,
                "SELECT COUNT(*) FROM (SELECT monotonic_ns FROM samples GROUP BY monotonic_ns "
                f"HAVING COUNT(*) != {len(CHANNELS)} OR COUNT(DISTINCT channel) != "
                f"{len(CHANNELS)})",
            )
            == 0
        )
        assert one(conn, "SELECT COUNT(DISTINCT monotonic_ns) FROM samples") == emitted
        assert sorted(r[0] for r in conn.execute("SELECT DISTINCT channel FROM samples")) == sorted(
            CHANNELS
        )
        # Every value is what the simulator held at that slot.
        for ch, expr in STEPPED_SQL.items():
            wrong = one(
                conn,
                "SELECT COUNT(*) FROM samples JOIN ticks USING (monotonic_ns) "
                f"WHERE channel = '{ch}' AND value != {expr.format(s=STEP_S)}",
            )
            assert wrong == 0, f"{wrong} {ch} rows differ from the simulator's value"
        # The slots without rows are exactly the outages': one run each, from the tick after
        # the device vanished, lasting the outage up to one backoff step (and a slot) more.
        runs = gaps(conn, plan.slots)
        assert [start for start, _ in runs] == [math.floor(g) + 1 for g, _ in plan.outages]
        for _, length in runs:
            assert OUTAGE_S - 1 <= length <= OUTAGE_S + max(BACKOFF_STEPS_S) + 2
        assert sum(length for _, length in runs) == summary.samples_late
        # One disconnect per outage; outage_s is their length.
        n = len(plan.outages)
        assert summary.disconnects == n
        assert n * (OUTAGE_S - 1) <= summary.outage_s <= n * (OUTAGE_S + max(BACKOFF_STEPS_S) + 2)
        assert result.counts.opened == n + 1
        assert result.counts.failed_opens >= n  # the first backoff steps fall in the outage
        # The name change: the old name until the reconnect after it, the new one from then.
        rename_slot = math.floor(plan.rename_at)
        reconnect = next(start + length for start, length in runs if start > rename_slot)
        names = conn.execute(
            "SELECT name, MIN(slot), MAX(slot), COUNT(*) FROM samples JOIN ticks "
            "USING (monotonic_ns) WHERE channel = 'I2' GROUP BY name ORDER BY MIN(slot)"
        ).fetchall()
        assert [n[0] for n in names] == [result.old_name, NEW_NAME]
        assert names[0][2] < reconnect <= names[1][1]
        assert names[1][2] == one(conn, "SELECT MAX(slot) FROM ticks")
        stale = one(
            conn,
            f"SELECT COUNT(*) FROM ticks WHERE slot > {rename_slot} AND slot < {reconnect}",
        )
        db_bytes = db.stat().st_size
    finally:
        conn.close()
    return {"stale_name_ticks": stale, "db_mb": db_bytes / 1e6}


def check_windows(windows: list[TraceWindow]) -> str:
    """Each tracemalloc window: net growth and peak bounded (module docstring)."""
    assert len(windows) == (0 if TRACE else 2), windows
    for w in windows:
        if w.start < PROBE_S:
            continue  # the bounded buffers are still filling (runs under a day): report only
        assert w.growth <= TRACE_GROWTH_BYTES + w.in_flight * TRACE_PER_TICK_BYTES, w
        # The array: its appends, or all of it (with over-allocation) when reallocated.
        assert w.durations_bytes <= max(8 * (w.end - w.start), w.array_bytes * 9 // 8), w
        full_queue = RECORDER_BUFFER * TRACE_PER_TICK_BYTES
        assert w.peak <= TRACE_PEAK_BYTES + full_queue + w.durations_bytes, w
    return "tracemalloc windows: " + ", ".join(
        f"{w.start / 3600:.1f}-{w.end / 3600:.1f} h growth {w.growth / 1024:.0f} KiB "
        f"(+ durations {w.durations_bytes / 1024:.0f} KiB) peak {w.peak / 1024:.0f} KiB"
        for w in windows
    )


def check_memory(probes: list[MemoryProbe]) -> str:
    """Flat from the first probe (12 h) on, beyond the recorder's 8-byte-per-tick array."""
    if len(probes) < 2:
        return "memory: fewer than two probes (run >= 1 day to judge it)"
    first, last = probes[0], probes[-1]
    durations = 8 * (last.at_slot - first.at_slot)
    assert last.rss - first.rss <= durations + RSS_SLACK_BYTES, probes
    assert last.blocks - first.blocks <= BLOCKS_SLACK, probes
    if first.traced is not None and last.traced is not None:
        assert last.traced - first.traced <= durations + RSS_SLACK_BYTES, probes
    return "memory: " + ", ".join(
        f"{p.at_slot / 3600:.0f} h rss {p.rss / 2**20:.1f} MiB blocks {p.blocks}"
        + ("" if p.traced is None else f" traced {p.traced / 2**20:.1f} MiB")
        for p in probes
    )


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(120 + 150 * max(DAYS, TRIO_DAYS))
async def test_a_simulated_week_of_recording_into_sqlite(
    anyio_backend: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    backend = anyio_backend[0]
    days = DAYS if backend == "asyncio" else TRIO_DAYS
    plan = Plan(slots=max(1, round(days * DAY_S)))
    if TRACE:
        tracemalloc.start(1)
    try:
        result = await run_soak(plan, tmp_path / "soak.db")
    finally:
        if TRACE:
            tracemalloc.stop()
    facts = check_rows(tmp_path / "soak.db", plan, result)
    memory = check_memory(result.probes)
    traced = check_windows(result.windows)
    s = result.summary
    print(
        f"\nsoak {backend}: {days:g} simulated days, {plan.slots} slots, {s.samples_emitted} "
        f"emitted, {s.samples_late} late, {s.disconnects} disconnects ({s.outage_s:.1f} s), "
        f"{result.counts.asked_again} polls asked again after a timeout, "
        f"{result.counts.paced} ticks paced for the sink, "
        f"{facts['stale_name_ticks']} ticks with the old name after the rename, "
        f"sqlite {facts['db_mb']:.0f} MB\n"
        f"  wall {result.wall_s:.1f} s, cpu {result.cpu_s:.1f} s = "
        f"{result.cpu_s / plan.slots * 1000:.3f} ms per tick; wall per day "
        + ", ".join(f"{w:.1f} s" for w in result.day_wall_s)
        + f"\n  {memory}\n  {traced}"
    )
