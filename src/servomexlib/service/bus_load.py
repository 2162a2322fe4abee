"""How much of a shared Modbus bus a configuration asks for (docs/service.md §2). Pure: no I/O.

Theory of operation
-------------------
Analysers on one bus share it: their transactions are serialised, never interleaved. Each tick
of an analyser is one sweep, and the read planner (:mod:`servomexlib.planner`) already knows
what a sweep costs: the same :class:`~servomexlib.planner.ReadPlanner` the Modbus client polls
with plans it here — value-only spans of the analyser's channels (the client has their names
and units cached after ``identify()``) plus the analyser-status read FC02 (1000, 16) — and
:meth:`~servomexlib.planner.ReadPlanner.cost` totals it. That per-transaction cost *includes*
the 50 ms line silence the 4100 needs before every request and the turnaround
(:class:`~servomexlib.planner.WireModel`), so the silence between requests to different
addresses on a shared bus is counted once per transaction and nothing is added on top.

The bus utilisation is ``Σ rate_hz × sweep cost`` over its analysers: the fraction of each
second the line is busy. Above 1 the schedules cannot all be kept (the loader refuses the
file); above 0.8 there is little room for retries and reconnects (a warning). The figure is an
estimate for a healthy bus: a poll that times out occupies the line for the client's timeout.

When an analyser's ``channels`` are not given, its populated slots are only known after
``identify()``, so the sweep of all ten slots is costed: a plan over fewer slots never costs
more (the planner's optimum over a subset is at most its optimum over the whole), so the
figure is an **upper bound**, and :attr:`BusLoad.upper_bound` says so.

A continuous bus has no utilisation: its one analyser broadcasts at its own period.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from ..devices.models import ChannelId, ProtocolKind
from ..planner import PlannedRead, ReadFunction, ReadPlanner, WireModel
from ..settings import SerialSettings

if TYPE_CHECKING:
    from .config import AnalyserConfig, BusConfig

__all__ = [
    "WARN_UTILISATION",
    "AnalyserLoad",
    "BusLoad",
    "bus_load",
    "format_plan",
    "rate_floor_text",
]

#: Above this utilisation the loader warns (docs/service.md §2); above 1.0 it refuses.
WARN_UTILISATION = 0.8


@dataclasses.dataclass(frozen=True, slots=True)
class AnalyserLoad:
    """One analyser's share of its bus: the reads of one sweep and what they cost.

    ``assumed_all_slots`` is True when ``channels`` were not configured and all ten slots
    were planned (an upper bound).
    """

    name: str
    rate_hz: float
    channels: tuple[ChannelId, ...]
    assumed_all_slots: bool
    reads: tuple[PlannedRead, ...]
    sweep_cost_s: float

    @property
    def share(self) -> float:
        """The fraction of the bus this analyser occupies: ``rate_hz × sweep cost``."""
        return self.rate_hz * self.sweep_cost_s

    @property
    def max_rate_alone_hz(self) -> float:
        """The highest rate this analyser's sweep allows on a bus of its own."""
        return 1.0 / self.sweep_cost_s


@dataclasses.dataclass(frozen=True, slots=True)
class BusLoad:
    """The load of one bus; ``analysers`` is empty for a continuous (broadcast) bus."""

    table_path: str
    port: str
    protocol: ProtocolKind
    baudrate: int
    analysers: tuple[AnalyserLoad, ...]

    @property
    def broadcast(self) -> bool:
        """True for a continuous bus: the analyser sets the cadence, nothing is polled."""
        return self.protocol is ProtocolKind.CONTINUOUS_ASCII

    @property
    def utilisation(self) -> float | None:
        """``Σ rate_hz × sweep cost`` (1.0 = the line busy all the time); None if broadcast."""
        if self.broadcast:
            return None
        return math.fsum(a.share for a in self.analysers)

    @property
    def upper_bound(self) -> bool:
        """True when some analyser's channels were not given (all ten slots costed)."""
        return any(a.assumed_all_slots for a in self.analysers)

    def max_rate_in_mix_hz(self, name: str) -> float:
        """The highest rate analyser ``name`` could have with the others at their rates
        (≤ 0 when the others alone fill the bus).

        Raises:
            KeyError: no analyser of that name on this bus.
        """
        mine = next((a for a in self.analysers if a.name == name), None)
        if mine is None:
            raise KeyError(name)
        others = math.fsum(a.share for a in self.analysers if a is not mine)
        return (1.0 - others) / mine.sweep_cost_s

    def overload_message(self) -> str:
        """Why the bus is refused, with each analyser's highest possible rate."""
        assert self.utilisation is not None
        bound = " (an upper bound: channels not given, all 10 slots costed)" * self.upper_bound
        parts = []
        for a in self.analysers:
            mix = self.max_rate_in_mix_hz(a.name)
            in_mix = (
                f"{rate_floor_text(mix)} Hz with the others at their rates"
                if mix * a.sweep_cost_s >= 0.005
                else "no room left by the others"
            )
            parts.append(
                f"{a.name!r} at most {rate_floor_text(a.max_rate_alone_hz)} Hz alone, {in_mix}"
            )
        return (
            f"bus utilisation {self.utilisation * 100:.1f} % exceeds 100 %{bound}: "
            f"{self.protocol.value} at {self.baudrate} baud cannot carry these rates; "
            f"highest rate_hz: {'; '.join(parts)}"
        )


def _plan(bus: BusConfig, analyser: AnalyserConfig) -> AnalyserLoad:
    settings = SerialSettings(port=bus.port, baudrate=bus.baudrate)
    planner = ReadPlanner(WireModel.from_settings(settings, bus.protocol))
    channels = analyser.channels if analyser.channels is not None else tuple(ChannelId)
    reads = planner.plan(channels, include_analyser=True, value_only=True)
    assert analyser.rate_hz is not None  # a Modbus analyser always has one (the loader's rule)
    return AnalyserLoad(
        name=analyser.name,
        rate_hz=analyser.rate_hz,
        channels=tuple(channels),
        assumed_all_slots=analyser.channels is None,
        reads=reads,
        sweep_cost_s=planner.cost(reads),
    )


def bus_load(bus: BusConfig) -> BusLoad:
    """The planned sweeps and the utilisation of a validated bus."""
    analysers: tuple[AnalyserLoad, ...] = ()
    if bus.protocol is not ProtocolKind.CONTINUOUS_ASCII:
        analysers = tuple(_plan(bus, a) for a in bus.analysers)
    return BusLoad(bus.table_path, bus.port, bus.protocol, bus.baudrate, analysers)


def rate_floor_text(rate_hz: float) -> str:
    """``rate_hz`` rounded *down* to two significant digits (3.23 → ``3.2``, 0.337 → ``0.33``,
    12.7 → ``12``): a rate that is never above what fits."""
    if rate_hz <= 0:
        return "0"
    digits = max(0, 1 - math.floor(math.log10(rate_hz)))
    scale = 10**digits
    return f"{math.floor(rate_hz * scale + 1e-9) / scale:.{digits}f}"


def format_plan(reads: tuple[PlannedRead, ...]) -> str:
    """A compact rendering of a sweep: ``FC04 0-15 (16 regs), FC02 0-23 (24 bits), FC02
    1000-1015 (status)``."""
    out = []
    for read in reads:
        span = f"FC{read.function_code:02d} {read.address}-{read.end - 1}"
        if read.is_analyser:
            out.append(f"{span} (status)")
        elif read.function_code == ReadFunction.READ_INPUT_REGISTERS:
            out.append(f"{span} ({read.count} regs)")
        else:
            out.append(f"{span} ({read.count} bits)")
    return ", ".join(out)
