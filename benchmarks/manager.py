"""Group 2: ServomexManager cycle time on shared multidrop lines.

* 4 analysers (addresses 1-4) on one simulated line served on one pty: a cycle is four
  sweeps one after another under the port lock, each preceded by the 50 ms silence (also when
  the slave address changes). Target ≤ 1.10 × 4 × one analyser's model bound.
* 2 analysers on each of 4 lines (4 ptys): the ports run concurrently, so a cycle should cost
  about one port's share. Target ≤ 1.15 × 2 × one analyser's model bound.

Managed Analyzers identify before their first sweep (the warm-up cycle), so their sweeps read
the value registers of the populated slots; at 19200 baud RTU that plan — FC04 (0,65) + FC02
(0,80) + FC02 (1000,16) — is the same for the five populated channels as for all ten slots, so
the bound is the group 1 bound (checked below).
"""

from __future__ import annotations

import statistics
import time

import anyio

from servomexlib import ProtocolKind, SerialSettings, ServomexManager
from servomexlib.devices.models import ChannelId
from servomexlib.sim import Simulator
from servomexlib.sim.serve import SimLine

from .common import Figure, Settings, percentile
from .poll import model_bound

__all__ = ["run"]

BAUD = 19200
FRAMING = ProtocolKind.MODBUS_RTU


async def measure(lines_per: list[int], cycles: int) -> tuple[list[float], int, int]:
    """(cycle times, failed device polls, retries) for analysers spread over pty lines."""
    serial = SerialSettings(port="sim://", baudrate=BAUD)
    lines: list[SimLine] = []
    seed = 10
    for count in lines_per:
        sims = []
        for address in range(1, count + 1):
            sims.append(Simulator(mode=FRAMING, address=address, serial=serial, seed=seed))
            seed += 1
        lines.append(SimLine(*sims))
    times: list[float] = []
    failed = 0
    async with _Lines(lines) as paths, ServomexManager() as mgr:
        for li, (path, count) in enumerate(zip(paths, lines_per, strict=True)):
            for address in range(1, count + 1):
                await mgr.add(
                    f"p{li}a{address}",
                    path,
                    protocol=FRAMING,
                    address=address,
                    serial_settings=SerialSettings(port=path, baudrate=BAUD),
                )
        await mgr.poll()  # warm-up
        for _ in range(cycles):
            t0 = time.perf_counter()
            results = await mgr.poll()
            times.append(time.perf_counter() - t0)
            failed += sum(not r.ok for r in results.values())
        retries = sum(getattr(s, "retries", 0) for s in mgr.statistics().values())
    return times, failed, retries


class _Lines:
    """Enter every line and serve each on its own pty; yields the pty paths."""

    def __init__(self, lines: list[SimLine]) -> None:
        self._lines = lines
        self._entered: list[SimLine] = []

    async def __aenter__(self) -> list[str]:
        paths = []
        try:
            for line in self._lines:
                await line.__aenter__()
                self._entered.append(line)
                paths.append(await line.serve_pty())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return paths

    async def __aexit__(self, *exc: object) -> None:
        while self._entered:
            await self._entered.pop().__aexit__(None, None, None)


async def run_async(settings: Settings) -> list[Figure]:
    cycles = 3 if settings.quick else 20
    latency = Simulator().latency_s
    one, _ = model_bound(BAUD, FRAMING, latency)
    all_slots, _ = model_bound(BAUD, FRAMING, latency, tuple(ChannelId))
    same = abs(one - all_slots) < 1e-9
    figures = []
    for lines_per, per_port, target, label in (
        ([4], 4, 1.10, "4 analysers on 1 port"),
        ([2, 2, 2, 2], 2, 1.15, "2 analysers on each of 4 ports"),
    ):
        times, failed, retries = await measure(lines_per, cycles)
        med = statistics.median(times)
        bound = per_port * one
        figures.append(
            Figure(
                "2",
                f"manager cycle, {label} (median of {cycles})",
                f"{med * 1000:.1f} ms (p90 {percentile(times, 0.9) * 1000:.1f})",
                f"{per_port} x {one * 1000:.1f} = {bound * 1000:.1f} ms",
                med / bound,
                ("<=", target),
                note=(
                    f"failed device polls {failed}, retries {retries}; per-analyser bound = "
                    f"group-1 RTU 19200 bound"
                    f"{'' if same else f' (all-10-slot plan {all_slots * 1000:.1f} ms)'}"
                ),
            )
        )
    return figures


def run(settings: Settings) -> list[Figure]:
    return anyio.run(run_async, settings)
