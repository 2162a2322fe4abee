"""Structured-concurrency edges (issue 11 item 11): every ``async with`` unwinds when cancelled.

Each scenario enters one of the library's context managers, does a little work in it and
leaves it, while a seeded random plan cancels the trial at some point: after ``n`` scheduler
checkpoints, or at a deadline, counted from the trial's start, from just after the ``async
with`` was entered, or from just before it is left. Whatever the point — while the port
opens, while the task group of an Analyzer or a POLL stream is being entered, during a Modbus
silence, while a sink's file opens, while the context manager exits — after the trial:

* the trial's own cancel scope caught the cancellation (or the trial completed), and nothing
  else escaped: cancellation never turns into a ``Servomex*`` error or an exception group;
* the caller's cancel scopes still work: no deadline or cancelled scope is left on its stack
  (``current_effective_deadline()`` is the caller's own), and a fresh ``move_on_after`` or
  ``CancelScope`` behaves as documented;
* no file descriptor leaked (``/proc/self/fd``), no task is left running
  (``anyio.get_running_tasks()``), and the scenario's transports are closed (the simulated
  line has no listener left, a ``FakeTransport`` is closed, a sink is closed).

The scenarios add up to 200 seeded trials per backend (plus one uncancelled warm-up each,
which also measures the ranges the plans are drawn from). The simulator runs in-process with
``realtime=False`` (no line pacing), so a trial costs milliseconds; Modbus trials still wait
the client's 50 ms pre-request silence, which is where a real analyser's trial spends its
time too.

The last test runs the ``reconnect_factory`` pattern of ``record()`` that used to fail with
"Attempted to exit cancel scope in a different task": the factory, running inside the
recorder's task, enters each new Modbus Analyzer in the caller's ``AsyncExitStack``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from helpers import continuous_stats, served_on_pty
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import ChannelId, ProtocolKind, Sample, StreamMode
from servomexlib.manager import ServomexManager
from servomexlib.sim import SimLine, Simulator
from servomexlib.sinks import CsvSink, JsonlSink, SqliteSink
from servomexlib.sinks.base import BaseSink
from servomexlib.streaming.recorder import PollSource, record
from servomexlib.streaming.stream_session import SampleSender, StreamingSession
from servomexlib.transport import FakeTransport

pytestmark = pytest.mark.anyio

SEED = 20_260_511
RTU = ProtocolKind.MODBUS_RTU
Anchor = Literal["start", "entered", "leaving"]
ANCHORS: tuple[Anchor, ...] = ("start", "entered", "leaving")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def running_tasks() -> int:
    await anyio.lowlevel.checkpoint()  # let tasks that were just cancelled finish
    return len(anyio.get_running_tasks())


# ---------------------------------------------------------------------------- the cancel plan


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Where a trial is cancelled: ``checkpoints`` scheduler rounds, or ``delay`` seconds,
    after ``anchor``; ``anchor=None`` runs the trial uncancelled."""

    anchor: Anchor | None
    checkpoints: int | None = None
    delay: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """What is left of an uncancelled trial after an anchor: scheduler rounds and seconds."""

    checkpoints: int
    seconds: float


def random_plan(rng: random.Random, spans: dict[Anchor, Span]) -> Plan:
    """A cancellation somewhere in what follows a random anchor: after a number of scheduler
    rounds (fine-grained: every step of an entry or exit) or at a time (where the time goes:
    port opens, silences, frame waits), each drawn within what an uncancelled trial took."""
    anchor = rng.choices(ANCHORS, weights=(3, 2, 2))[0]
    span = spans[anchor]
    if rng.random() < 0.6:
        return Plan(anchor, checkpoints=rng.randrange(0, min(span.checkpoints, 40) + 1))
    return Plan(anchor, delay=rng.uniform(0.0, span.seconds))


async def _cancel_after(scope: anyio.CancelScope, checkpoints: int) -> None:
    for _ in range(checkpoints):
        await anyio.lowlevel.checkpoint()
    scope.cancel()


class Arm:
    """Fires the plan's cancellation when the scenario reaches the plan's anchor."""

    def __init__(self, tg: anyio.abc.TaskGroup, scope: anyio.CancelScope, plan: Plan) -> None:
        self._tg = tg
        self._scope = scope
        self._plan = plan
        self.fired = False
        self.reached: dict[Anchor, float] = {}

    def at(self, anchor: Anchor) -> None:
        self.reached.setdefault(anchor, anyio.current_time())
        plan = self._plan
        if self.fired or plan.anchor != anchor:
            return
        self.fired = True
        if plan.checkpoints is not None:
            self._tg.start_soon(_cancel_after, self._scope, plan.checkpoints)
        else:
            assert plan.delay is not None
            self._scope.deadline = anyio.current_time() + plan.delay


Body = Callable[[Arm], Awaitable[None]]


async def measure(body: Body) -> dict[Anchor, Span]:
    """Run ``body`` uncancelled, counting scheduler rounds (a task that only checkpoints)."""
    rounds = 0
    marks: dict[Anchor, int] = {}
    done = anyio.Event()

    async def count() -> None:
        nonlocal rounds
        while not done.is_set():
            await anyio.lowlevel.checkpoint()
            rounds += 1

    class Recorder(Arm):
        def at(self, anchor: Anchor) -> None:
            marks.setdefault(anchor, rounds)
            super().at(anchor)

    async with anyio.create_task_group() as tg:
        tg.start_soon(count)
        arm = Recorder(tg, tg.cancel_scope, Plan(None))
        arm.at("start")
        await body(arm)
        done.set()
    end = anyio.current_time()
    return {a: Span(max(rounds - marks[a], 1), max(end - arm.reached[a], 0.001)) for a in ANCHORS}


async def run_trial(body: Body, plan: Plan) -> bool:
    """Run ``body`` under ``plan``; True if the trial was cancelled. Anything that escapes the
    trial's own scope (an error, a cancellation not caught by it) fails the test."""
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            arm = Arm(tg, scope, plan)
            arm.at("start")
            await body(arm)
        tg.cancel_scope.cancel()  # a canceller that has not fired yet
    return scope.cancelled_caught


async def assert_caller_intact(deadline: float, fds: int, tasks: int) -> None:
    """The caller's cancel-scope stack, fds and tasks are as they were before the trial."""
    # A scope left behind on the stack would show as a new (or -inf, if cancelled) deadline.
    assert anyio.current_effective_deadline() == deadline
    with anyio.move_on_after(0) as probe:
        await anyio.sleep(1)
    assert probe.cancelled_caught
    with anyio.CancelScope() as inner:
        inner.cancel()
        await anyio.lowlevel.checkpoint()
    assert inner.cancelled_caught
    assert open_fds() == fds
    assert await running_tasks() == tasks


# ---------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Scenario:
    """One ``async with`` under test: ``body`` is a trial, ``check`` runs after each one."""

    body: Body
    check: Callable[[], None]
    trials: int


type ScenarioFactory = Callable[[Path], AbstractAsyncContextManager[Scenario]]


def _no_listener(line: SimLine) -> Callable[[], None]:
    def check() -> None:
        assert not line.has_listeners, line  # every transport to the line was closed

    return check


async def modbus_script() -> dict[bytes, bytes]:
    """Request → reply of identify and one sweep, as the simulator answers them (RTU, 1)."""
    sim = Simulator(mode=RTU, realtime=False)
    async with await open_device(sim.transport(), protocol=RTU) as anz:
        await anz.poll()
    return {r.adu: r.reply for r in sim.requests if r.reply is not None}


@asynccontextmanager
async def modbus_sim(tmp: Path) -> AsyncIterator[Scenario]:
    sim = Simulator(mode=RTU, realtime=False, name="cx-rtu")

    async def body(arm: Arm) -> None:
        async with await open_device("sim://cx-rtu", protocol=RTU) as anz:
            arm.at("entered")
            frame = await anz.poll()
            assert frame.channel("I1").value == pytest.approx(20.378, abs=1e-5)
            arm.at("leaving")

    yield Scenario(body, _no_listener(sim.line), trials=16)


@asynccontextmanager
async def modbus_fake(tmp: Path) -> AsyncIterator[Scenario]:
    script = await modbus_script()
    fakes: list[FakeTransport] = []

    async def body(arm: Arm) -> None:
        fake = FakeTransport(dict(script))
        fakes.append(fake)
        async with await open_device(fake, protocol=RTU) as anz:
            arm.at("entered")
            assert anz.info is not None
            await anz.poll()
            arm.at("leaving")

    def check() -> None:
        assert not fakes[-1].is_open

    yield Scenario(body, check, trials=16)


@asynccontextmanager
async def modbus_pty(tmp: Path) -> AsyncIterator[Scenario]:
    sim = Simulator(mode=RTU, realtime=False)
    async with served_on_pty(sim) as (_, path):

        async def body(arm: Arm) -> None:
            async with await open_device(path, protocol=RTU) as anz:
                arm.at("entered")
                await anz.poll()
                arm.at("leaving")

        yield Scenario(body, lambda: None, trials=8)  # the fd count is the check


@asynccontextmanager
async def continuous_sim(tmp: Path) -> AsyncIterator[Scenario]:
    sim = Simulator(mode="continuous", realtime=False, frame_period=0.01, name="cx-cont")

    async def body(arm: Arm) -> None:
        anz = await open_device("sim://cx-cont", protocol="continuous", frame_period=0.01)
        async with anz:
            arm.at("entered")
            await anz.poll(wait_fresh=True)
            arm.at("leaving")

    yield Scenario(body, _no_listener(sim.line), trials=16)


async def _broadcast(fake: FakeTransport, frame: bytes) -> None:
    # Real sleeps: a broadcasting analyser paces its frames; 2 ms keeps a trial short.
    while fake.is_open:
        fake.feed(frame)
        await anyio.sleep(0.002)


@asynccontextmanager
async def continuous_fake(tmp: Path) -> AsyncIterator[Scenario]:
    frame = Simulator(mode="continuous", realtime=False).frame()
    fakes: list[FakeTransport] = []

    async def body(arm: Arm) -> None:
        fake = FakeTransport()
        fakes.append(fake)
        async with anyio.create_task_group() as feeder:
            feeder.start_soon(_broadcast, fake, frame)
            async with await open_device(fake, protocol="continuous", frame_period=0.01) as anz:
                arm.at("entered")
                await anz.poll(wait_fresh=True)
                arm.at("leaving")
            feeder.cancel_scope.cancel()

    def check() -> None:
        assert not fakes[-1].is_open

    yield Scenario(body, check, trials=16)


@asynccontextmanager
async def continuous_stream(tmp: Path) -> AsyncIterator[Scenario]:
    sim = Simulator(mode="continuous", realtime=False, frame_period=0.005, name="cx-cstream")

    async def body(arm: Arm) -> None:
        anz = await open_device(
            "sim://cx-cstream", protocol="continuous", frame_period=0.005, identify=False
        )
        async with anz:
            async with anz.stream() as samples:
                assert samples.mode is StreamMode.AUTOPRINT
                arm.at("entered")
                got = 0
                async for _ in samples:
                    got += 1
                    if got == 6:
                        break
                arm.at("leaving")
            assert continuous_stats(anz).subscribers == 0

    yield Scenario(body, _no_listener(sim.line), trials=16)


@asynccontextmanager
async def modbus_stream(tmp: Path) -> AsyncIterator[Scenario]:
    sim = Simulator(mode=RTU, realtime=False, name="cx-mstream")

    async def body(arm: Arm) -> None:
        anz = await open_device("sim://cx-mstream", protocol=RTU, identify=False)
        async with anz, anz.stream(rate_hz=5) as samples:
            assert samples.mode is StreamMode.POLL
            arm.at("entered")
            got = 0
            async for _ in samples:
                got += 1
                if got == 5:
                    break
            arm.at("leaving")

    yield Scenario(body, _no_listener(sim.line), trials=12)


class _Ticker:
    """A cheap PollSource: one sample per poll, one checkpoint per poll."""

    def __init__(self) -> None:
        self.polls = 0

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[Sample]:
        await anyio.lowlevel.checkpoint()
        self.polls += 1
        return [_sample(self.polls)]


def _sample(n: int) -> Sample:
    from servomexlib.devices.models import ChannelKind, ChannelStatus, Reading
    from servomexlib.units import Unit

    now = datetime.now(UTC)
    reading = Reading(
        channel=ChannelId.I1,
        kind=ChannelKind.TRANSDUCER,
        name="Oxygen",
        value=20.0 + n / 1000,
        unit=Unit.PERCENT,
        status=ChannelStatus(),
        protocol=RTU,
        received_at=now,
        monotonic_ns=time.monotonic_ns(),
        raw=b"",
    )
    return Sample(
        device="t",
        channel=ChannelId.I1,
        reading=reading,
        protocol=RTU,
        monotonic_ns=reading.monotonic_ns,
        received_at=now,
    )


@asynccontextmanager
async def recording(tmp: Path) -> AsyncIterator[Scenario]:
    async def body(arm: Arm) -> None:
        async with record(_Ticker(), rate_hz=500, duration=0.02) as rec:
            arm.at("entered")
            batches = 0
            async for _ in rec.stream:
                batches += 1
                if batches == 3:
                    break
            arm.at("leaving")

    yield Scenario(body, lambda: None, trials=24)


@asynccontextmanager
async def manager(tmp: Path) -> AsyncIterator[Scenario]:
    line = SimLine(
        Simulator(mode=RTU, address=1, realtime=False),
        Simulator(mode=RTU, address=2, realtime=False),
        name="cx-bus",
    )

    async def body(arm: Arm) -> None:
        async with ServomexManager() as mgr:
            await mgr.add("a", "sim://cx-bus", address=1)
            await mgr.add("b", "sim://cx-bus", address=2)
            arm.at("entered")
            results = await mgr.poll()
            assert all(r.ok for r in results.values()), results
            arm.at("leaving")

    yield Scenario(body, _no_listener(line), trials=10)


@asynccontextmanager
async def session(tmp: Path) -> AsyncIterator[Scenario]:
    async def produce(send: SampleSender) -> None:
        for n in range(50):
            send.send_nowait(_sample(n))
            await anyio.lowlevel.checkpoint()

    sessions: list[StreamingSession] = []

    async def body(arm: Arm) -> None:
        stream = StreamingSession.with_producer(produce)
        sessions.append(stream)
        async with stream as samples:
            arm.at("entered")
            got = 0
            async for _ in samples:
                got += 1
                if got == 10:
                    break
            arm.at("leaving")

    def check() -> None:
        assert sessions[-1].closed

    yield Scenario(body, check, trials=24)


def _sink_scenario(make: Callable[[Path], BaseSink], trials: int) -> ScenarioFactory:
    @asynccontextmanager
    async def scenario(tmp: Path) -> AsyncIterator[Scenario]:
        sinks: list[BaseSink] = []
        batch = [_sample(n) for n in range(5)]

        async def body(arm: Arm) -> None:
            sink = make(tmp / f"trial{len(sinks)}")
            sinks.append(sink)
            async with sink:
                arm.at("entered")
                await sink.write_many(batch)
                await sink.write_many(batch)
                arm.at("leaving")

        def check() -> None:
            assert not sinks[-1].is_open

        try:
            yield Scenario(body, check, trials=trials)
        finally:
            # A sink the test found open must not leak its file into the next test.
            with anyio.CancelScope(shield=True):
                for sink in sinks:
                    await sink.close()

    return scenario


SCENARIOS: dict[str, ScenarioFactory] = {
    "analyzer-modbus-sim": modbus_sim,
    "analyzer-modbus-fake": modbus_fake,
    "analyzer-modbus-pty": modbus_pty,
    "analyzer-continuous-sim": continuous_sim,
    "analyzer-continuous-fake": continuous_fake,
    "stream-autoprint": continuous_stream,
    "stream-poll": modbus_stream,
    "record": recording,
    "manager": manager,
    "streaming-session": session,
    "sink-csv": _sink_scenario(lambda p: CsvSink(p.with_suffix(".csv"), overwrite=True), 14),
    "sink-jsonl": _sink_scenario(lambda p: JsonlSink(p.with_suffix(".jsonl")), 14),
    "sink-sqlite": _sink_scenario(lambda p: SqliteSink(p.with_suffix(".db")), 14),
}


@pytest.mark.timeout(50)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_cancelled_at_random_points_unwinds_cleanly(name: str, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}:{name}")
    outcomes: list[tuple[Plan, bool]] = []
    with anyio.fail_after(45):
        async with SCENARIOS[name](tmp_path) as scenario:
            # Warm-up: uncancelled, so lazy imports and pools exist before the baseline; it
            # also measures what follows each anchor, the range the plans are drawn from.
            spans = await measure(scenario.body)
            scenario.check()
            fds, tasks = open_fds(), await running_tasks()
            deadline = anyio.current_effective_deadline()  # the fail_after's
            for _ in range(scenario.trials):
                plan = random_plan(rng, spans)
                cancelled = await run_trial(scenario.body, plan)
                outcomes.append((plan, cancelled))
                scenario.check()
                await assert_caller_intact(deadline, fds, tasks)
    # The plans did cancel (a cancellation never fired would make the test vacuous; some land
    # after a fast trial has finished, on purpose), and one armed at the first checkpoint of
    # the trial is always caught.
    assert sum(c for _, c in outcomes) >= max(1, len(outcomes) // 6), outcomes
    for plan, cancelled in outcomes:
        if plan.anchor == "start" and (plan.checkpoints == 0 or plan.delay == 0.0):
            assert cancelled, plan


# ---------------------------------------------------------------------------- reconnect factory


@pytest.mark.timeout(40)
async def test_reconnect_factory_enters_analyzers_in_the_callers_exit_stack() -> None:
    """record()'s documented pattern over a pty that vanishes and comes back (api.md §5, §7).

    The factory runs in the recorder's producer task and enters each new Modbus Analyzer in
    the caller's AsyncExitStack, which the caller closes later, from its own task. A Modbus
    Analyzer owns no task group, so nothing is left on the producer task's cancel-scope stack.
    Real time: the outage and the recorder's backoff (0.5 s, then 1 s) are wall-clock sleeps.
    """
    fds = open_fds()
    batches: list[Sequence[Sample]] = []
    opened: list[Analyzer] = []
    sim = Simulator(mode=RTU, address=30, realtime=False)
    async with served_on_pty(sim) as (_, path):
        base_fds = open_fds()
        with anyio.fail_after(30):
            async with AsyncExitStack() as stack:

                async def factory() -> PollSource:
                    anz = await open_device(path, protocol=RTU, address=30, timeout=0.3)
                    entered = await stack.enter_async_context(anz)
                    opened.append(entered)
                    return entered

                first = await factory()
                async with anyio.create_task_group() as tg:

                    async def pull_the_cable() -> None:
                        await anyio.sleep(1.0)
                        sim.vanish()
                        await anyio.sleep(1.2)
                        sim.reappear()

                    async with record(
                        first,
                        rate_hz=2,
                        duration=5.0,
                        auto_reconnect=True,
                        reconnect_factory=factory,
                    ) as rec:
                        tg.start_soon(pull_the_cable)
                        async for batch in rec.stream:
                            batches.append(batch)
                assert len(opened) >= 2  # the vanished Analyzer and at least one reopened
                assert all(a.transport.is_open for a in opened[1:])
            # The caller's stack closed every Analyzer the factory entered, from this task.
            assert not any(a.transport.is_open for a in opened)
            assert open_fds() == base_fds  # the pty bridge's own fds are the simulator's
            with anyio.move_on_after(0) as probe:
                await anyio.sleep(1)
            assert probe.cancelled_caught
            assert anyio.current_effective_deadline() != -math.inf
    assert open_fds() == fds
    summary = rec.summary
    assert summary.disconnects >= 1
    assert summary.samples_emitted == len(batches)
    assert summary.samples_emitted + summary.samples_late == 10
    populated = [ChannelId(c) for c in ("I1", "I2", "I3", "E1", "E2")]
    for batch in batches:
        assert [s.channel for s in batch] == populated  # identified on entry: populated only
        assert all(s.error is None for s in batch)
        assert batch[0].value == pytest.approx(20.378, abs=1e-5)
    stamps = [b[0].monotonic_ns for b in batches]
    assert stamps == sorted(set(stamps))  # every batch a distinct sweep, in order
