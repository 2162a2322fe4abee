"""Group 1: Modbus poll time of one 5-channel analyser against the wire model bound.

One simulated 4100D (I1 I2 I3 E1 E2) with realistic line timing is served on a pseudo-terminal;
the client opens it with ``open_device`` (identify on entry, so sweeps cover the five populated
slots, and their names and units are cached: every sweep reads value registers only) and polls
back to back. The **model bound** of one poll is, over the cheapest *value-only* read plan the
planner finds for those channels at that baud rate and framing::

    Σ_reads  50 ms silence + mean simulator turnaround + (request + response chars) × char time

i.e. ``ReadPlanner(WireModel(baud, framing, turnaround_s=mean(latency_s))).plan(channels,
value_only=True)``. Nothing faster is possible on that line: the silence is mandatory and the
simulator paces every character and draws every turnaround. The bound column names the plan.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import anyio

import servomexlib
from servomexlib import ProtocolKind, SerialSettings
from servomexlib.devices.models import ChannelId
from servomexlib.planner import PlannedRead, ReadFunction, ReadPlanner, WireModel
from servomexlib.sim import Simulator

from .common import Figure, Settings, percentile

__all__ = ["FixedPlanner", "describe_plan", "model_bound", "run"]

CHANNELS = (ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.E1, ChannelId.E2)
POLL_TARGET = 1.03
BAUDS = (19200, 9600, 2400)
FRAMINGS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)
SHORT = {ProtocolKind.MODBUS_RTU: "RTU", ProtocolKind.MODBUS_ASCII: "ASCII"}


def wire_model(baud: int, framing: ProtocolKind, latency_s: tuple[float, float]) -> WireModel:
    """The planner's model with the simulator's mean turnaround."""
    return WireModel(
        baudrate=baud,
        framing=framing,
        bits_per_char=10,
        silence_s=0.05,
        turnaround_s=(latency_s[0] + latency_s[1]) / 2,
    )


def model_bound(
    baud: int,
    framing: ProtocolKind,
    latency_s: tuple[float, float],
    channels: tuple[ChannelId, ...] = CHANNELS,
) -> tuple[float, tuple[PlannedRead, ...]]:
    """(seconds, reads) of the cheapest value-only read plan for ``channels`` on that line."""
    planner = ReadPlanner(wire_model(baud, framing, latency_s))
    plan = planner.plan(channels, value_only=True)
    return planner.cost(plan), plan


def plan_chars(model: WireModel, plan: tuple[PlannedRead, ...]) -> int:
    return sum(model.request_chars() + model.response_chars(r.function_code, r.count) for r in plan)


class FixedPlanner(ReadPlanner):
    """A planner that always issues the naive three reads FC04 (0,70), FC02 (0,80), (1000,16)."""

    def plan(
        self, channels: object = None, *, include_analyser: bool = True, value_only: object = False
    ) -> tuple[PlannedRead, ...]:
        m = self.model
        ids = tuple(CHANNELS_ALL)
        reads = [
            PlannedRead(4, 0, 70, ids, m.transaction_cost(4, 70)),
            PlannedRead(2, 0, 80, ids, m.transaction_cost(2, 80)),
        ]
        if include_analyser:
            reads.append(self.analyser_read())
        return tuple(reads)


CHANNELS_ALL = tuple(ChannelId)  # the ten slots in table order


@dataclasses.dataclass(slots=True)
class PollResult:
    times: list[float]
    transactions: float
    wire_bytes: float
    retries: int
    plan: tuple[PlannedRead, ...]


async def measure_polls(
    baud: int,
    framing: ProtocolKind,
    polls: int,
    *,
    fixed: bool = False,
    seed: int = 1,
) -> PollResult:
    """Poll a pty-served simulator ``polls`` times; wall time per poll and wire traffic."""
    sim = Simulator(mode=framing, serial=SerialSettings(port="sim://", baudrate=baud), seed=seed)
    async with sim:
        path = await sim.serve_pty()
        anz = await servomexlib.open_device(
            path,
            protocol=framing,
            address=1,
            serial_settings=SerialSettings(port=path, baudrate=baud),
            timeout=3.0,  # FC04 (0, 70) in ASCII at 2400 baud takes 1.3 s of wire time
        )
        async with anz:
            client = anz.client
            if fixed:
                client.read_planner = FixedPlanner(client.read_planner.model)  # type: ignore[attr-defined]
            await anz.poll()  # warm-up: first sweep, caches filled
            before = anz.statistics()
            seen = len(sim.requests)
            times: list[float] = []
            for _ in range(polls):
                t0 = time.perf_counter()
                await anz.poll()
                times.append(time.perf_counter() - t0)
            after = anz.statistics()
            requests = sim.requests[seen:]
            wire = sum(len(r.adu) + len(r.reply or b"") for r in requests)
            plan = client.sweep_plan()  # type: ignore[attr-defined]
    return PollResult(
        times=times,
        transactions=(after.transactions - before.transactions) / polls,
        wire_bytes=wire / polls,
        retries=after.retries - before.retries,
        plan=plan,
    )


def describe_plan(plan: tuple[PlannedRead, ...]) -> str:
    """``FC04 (0,65) + FC02 (0,80) + FC02 (1000,16)``."""
    return " + ".join(
        f"{'FC04' if r.function_code == ReadFunction.READ_INPUT_REGISTERS else 'FC02'} "
        f"({r.address},{r.count})"
        for r in plan
    )


async def run_async(settings: Settings) -> list[Figure]:
    polls = 3 if settings.quick else 50
    fixed_polls = 1 if settings.quick else 10
    latency = Simulator().latency_s
    figures: list[Figure] = []
    for baud in BAUDS:
        for framing in FRAMINGS:
            bound, cheapest = model_bound(baud, framing, latency)
            model = wire_model(baud, framing, latency)
            res = await measure_polls(baud, framing, polls)
            med = statistics.median(res.times)
            p90 = percentile(res.times, 0.90)
            overhead_ms = (med - bound) / max(res.transactions, 1) * 1000
            same = [(r.function_code, r.address, r.count) for r in res.plan] == [
                (r.function_code, r.address, r.count) for r in cheapest
            ]
            figures.append(
                Figure(
                    "1",
                    f"poll {SHORT[framing]} {baud} (median of {polls})",
                    f"{med * 1000:.1f} ms (p90 {p90 * 1000:.1f} = {p90 / bound:.3f}x)",
                    f"model {bound * 1000:.1f} ms: {describe_plan(cheapest)}",
                    med / bound,
                    ("<=", POLL_TARGET),
                    note=(
                        f"{res.transactions:g} transactions, {res.wire_bytes:g} bytes/poll on the "
                        f"wire (model {plan_chars(model, cheapest)}), "
                        f"plan {describe_plan(res.plan)}"
                        f"{'' if same else ' != cheapest ' + describe_plan(cheapest)}; "
                        f"{overhead_ms:+.1f} ms/transaction over the model; retries {res.retries}"
                    ),
                )
            )
    # Context: the cheapest whole-block plan (every sweep before issue 12), computed only.
    for framing in FRAMINGS:
        bound, cheapest = model_bound(2400, framing, latency)
        model = wire_model(2400, framing, latency)
        planner = ReadPlanner(model)
        whole = planner.plan(CHANNELS)
        cost = planner.cost(whole)
        figures.append(
            Figure(
                "1",
                f"context: whole-block plan {SHORT[framing]} 2400 (model only)",
                f"model {cost * 1000:.1f} ms = {cost / bound:.3f}x, "
                f"{plan_chars(model, whole)} bytes/poll",
                f"model {bound * 1000:.1f} ms, {plan_chars(model, cheapest)} bytes/poll",
                cost / bound,
                None,
                note=f"plan {describe_plan(whole)}",
            )
        )
    # Context: what a fixed three-read plan costs at 2400 baud (the planner must beat it).
    for framing in FRAMINGS:
        bound, _ = model_bound(2400, framing, latency)
        model = wire_model(2400, framing, latency)
        fixed_plan = FixedPlanner(model).plan()
        fixed_model = sum(r.cost_s for r in fixed_plan)
        res = await measure_polls(2400, framing, fixed_polls, fixed=True)
        med = statistics.median(res.times)
        figures.append(
            Figure(
                "1",
                f"context: fixed 3-read plan {SHORT[framing]} 2400 (median of {fixed_polls})",
                f"{med * 1000:.1f} ms (model {fixed_model * 1000:.1f} = "
                f"{fixed_model / bound:.3f}x)",
                f"model {bound * 1000:.1f} ms",
                med / bound,
                None,
                note=f"{res.wire_bytes:g} bytes/poll, plan {describe_plan(fixed_plan)}",
            )
        )
    return figures


def run(settings: Settings) -> list[Figure]:
    return anyio.run(run_async, settings)
