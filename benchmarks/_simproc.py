"""A simulator in a process of its own: ``python -m benchmarks._simproc MODE BAUD PERIOD``.

Serves one simulated analyser on a pseudo-terminal, prints the pty path on stdout, then runs
until stdin closes. Used where the receiving side's CPU must be measured without the
simulator's (group 3, streaming).
"""

from __future__ import annotations

import sys

import anyio

from servomexlib.sim import Simulator


async def main(mode: str, baud: int, period: float) -> None:
    sim = Simulator(mode=mode, baudrate=baud, frame_period=period, seed=3)
    sim.drift("I1", noise=0.002)  # a live line: I1 changes from frame to frame
    async with sim:
        path = await sim.serve_pty()
        print(path, flush=True)
        # stdin closing (the parent exiting or closing the pipe) ends the simulator.
        await anyio.to_thread.run_sync(sys.stdin.read)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
