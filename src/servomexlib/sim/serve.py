"""The simulated line and its servers, under their historical import path.

The line moved to :mod:`servomexlib.sim.line` (timing, the in-process stream), its pty and TCP
servers to :mod:`servomexlib.sim.servers` and the facade to :mod:`servomexlib.sim.simulator`;
``from servomexlib.sim.serve import SimLine`` keeps working.
"""

from __future__ import annotations

from .line import SimLine, SimStream, lookup_line, silence_drop_probability
from .servers import TcpAddress
from .simulator import FIRST_FRAME_DELAY_S, Simulator

__all__ = [
    "FIRST_FRAME_DELAY_S",
    "SimLine",
    "SimStream",
    "Simulator",
    "TcpAddress",
    "lookup_line",
    "silence_drop_probability",
]
