"""The built-in SERVOPRO 4100 simulator (docs/simulator.md).

``Simulator`` speaks continuous ASCII, Modbus RTU and Modbus ASCII byte-exactly with seeded,
realistic line timing, and is reachable in-process (``sim.transport()``, ``sim://`` port
strings), over a pseudo-terminal (``await sim.serve_pty()``) and over TCP
(``await sim.serve_tcp()``)::

    async with Simulator(mode="modbus_ascii", address=30) as sim:
        path = await sim.serve_pty()   # point any Modbus master at `path`

Module layout, from the pure core outwards:

* :mod:`~servomexlib.sim.channels` — channel slot configs (:class:`SimChannel`);
* :mod:`~servomexlib.sim.framing` — ADUs, request splitting, the request log (pure);
* :mod:`~servomexlib.sim.pdu` and :mod:`~servomexlib.sim.model` — the analyser as a pure
  state machine: PDU in, PDU out; continuous frames;
* :mod:`~servomexlib.sim.config` — :class:`SimConfig`, shared by ``Simulator(...)``, ``sim://``
  queries and ``servomex simulate``;
* :mod:`~servomexlib.sim.clock` — line time: the event loop's clock by default (virtual time
  in tests), the host clock when served;
* :mod:`~servomexlib.sim.line` — the line: pacing, silence rule, in-process streams;
* :mod:`~servomexlib.sim.servers` — pty and TCP servers of a line;
* :mod:`~servomexlib.sim.simulator` — the :class:`Simulator` facade and its test seams;
* :mod:`~servomexlib.sim.url` — ``sim://`` URLs and the transport scheme's opener;
* :mod:`~servomexlib.sim.presets`, :mod:`~servomexlib.sim.mock` — scenarios, Modbus fakes.

(:mod:`servomexlib.sim.serve` re-exports the line, its servers and the facade under their
former import path.)
"""

from __future__ import annotations

from .channels import DEFAULT_4100D_CHANNELS, SimChannel
from .clock import LineClock
from .config import SimConfig
from .framing import ModbusRequest, RequestOutcome, SimRequest
from .line import SimLine, SimStream, lookup_line, silence_drop_probability
from .model import AnalyserModel, CoilAction, CoilWrite
from .presets import PRESETS, apply_preset, default_channel
from .servers import TcpAddress
from .simulator import ReplyOverride, RequestHook, Simulator
from .url import SimConnection, SimSpec, connect_url, open_url_transport, parse_sim_url

__all__ = [
    "DEFAULT_4100D_CHANNELS",
    "PRESETS",
    "AnalyserModel",
    "CoilAction",
    "CoilWrite",
    "LineClock",
    "ModbusRequest",
    "ReplyOverride",
    "RequestHook",
    "RequestOutcome",
    "SimChannel",
    "SimConfig",
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
    "open_url_transport",
    "parse_sim_url",
    "silence_drop_probability",
]
