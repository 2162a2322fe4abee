"""The built-in SERVOPRO 4100 simulator (api.md §16.1-§16.2).

``Simulator`` speaks continuous ASCII, Modbus RTU and Modbus ASCII byte-exactly with seeded,
realistic line timing, and is reachable in-process (``sim.transport()``, ``sim://`` port
strings), over a pseudo-terminal (``await sim.serve_pty()``) and over TCP
(``await sim.serve_tcp()``)::

    async with Simulator(mode="modbus_ascii", address=30) as sim:
        path = await sim.serve_pty()   # point any Modbus master at `path`

``servomexlib.sim.model`` is the pure device model; ``servomexlib.sim.serve`` the line.
"""

from __future__ import annotations

from .model import (
    DEFAULT_4100D_CHANNELS,
    AnalyserModel,
    CoilAction,
    CoilWrite,
    RequestOutcome,
    SimChannel,
    SimRequest,
)
from .presets import PRESETS, apply_preset, default_channel
from .serve import SimLine, SimStream, Simulator, TcpAddress, lookup_line, silence_drop_probability
from .url import SimConnection, SimSpec, connect_url, parse_sim_url

__all__ = [
    "DEFAULT_4100D_CHANNELS",
    "PRESETS",
    "AnalyserModel",
    "CoilAction",
    "CoilWrite",
    "RequestOutcome",
    "SimChannel",
    "SimConnection",
    "SimLine",
    "SimRequest",
    "SimSpec",
    "SimStream",
    "Simulator",
    "TcpAddress",
    "apply_preset",
    "connect_url",
    "default_channel",
    "lookup_line",
    "parse_sim_url",
    "silence_drop_probability",
]
