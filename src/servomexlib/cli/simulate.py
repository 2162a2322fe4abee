"""``servomex simulate``: serve a simulated analyser on a pseudo-terminal or TCP (docs/cli.md).

The first stdout line is the address alone — the pty path (a stable symlink) or
``tcp://HOST:PORT`` — flushed at once, so a script can read it and connect. The command serves
until SIGINT (Ctrl-C) or SIGTERM and exits 0, removing the link and directory it created.
Bad options exit 2; a failure to serve (a ``--tcp`` port already in use) prints one
``error: …`` line and exits 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import anyio

from ..errors import ServomexError
from ..sim.presets import PRESETS
from ..sim.serve import SimLine
from ..sim.url import SimSpec, spec_from_options
from .common import describe_error, report_failure, verbose_of

__all__ = ["register", "run"]

#: CLI option (argparse dest) → sim:// query key; the values are parsed by the same code.
_OPTION_KEYS = {
    "mode": "mode",
    "address": "address",
    "channels": "channels",
    "names": "names",
    "units": "units",
    "values": "values",
    "baud": "baud",
    "frame_period": "period",
    "terminator": "terminator",
    "scenario": "scenario",
    "seed": "seed",
}


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand to a ``servomex`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="serve a simulated SERVOPRO 4100 on a pseudo-terminal or TCP",
        description=(
            "Serve a simulated SERVOPRO 4100 (continuous, Modbus RTU or Modbus ASCII). Prints "
            "the pty path (or tcp://HOST:PORT) as the first line, then serves until Ctrl-C."
        ),
    )
    p.add_argument(
        "--mode", choices=("continuous", "modbus_rtu", "modbus_ascii"), default="modbus_rtu"
    )
    p.add_argument("--address", help="slave address, or a comma list for multidrop (1)")
    p.add_argument("--channels", help="comma list of slots (I1,I2,I3,E1,E2)")
    p.add_argument("--names", help="comma list aligned with --channels; empty = unlabelled")
    p.add_argument("--units", help="comma list aligned with --channels; empty = default")
    p.add_argument("--values", help="comma list aligned with --channels; 'over' = over-range")
    p.add_argument(
        "--baud", help="line rate the bytes are paced at (19200); any positive rate is accepted"
    )
    p.add_argument("--frame-period", dest="frame_period", help="seconds between frames (2.0)")
    p.add_argument("--terminator", choices=("crlf", "lf", "cr"), help="frame terminator (crlf)")
    p.add_argument("--scenario", choices=tuple(PRESETS), help="preset scenario")
    p.add_argument("--seed", help="seed for noise, turnaround and drops (0)")
    p.add_argument(
        "--no-drop", dest="no_drop", action="store_true", help="disable the silence-rule drops"
    )
    p.add_argument(
        "--tcp", metavar="[HOST:]PORT", help="serve on TCP instead of a pty (host 127.0.0.1)"
    )
    p.set_defaults(handler=run)


def _parse_tcp(text: str) -> tuple[str, int]:
    host, _, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--tcp: bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--tcp: port {port} out of range")
    return host.strip("[]") or "127.0.0.1", port


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex simulate``; returns the exit code."""
    options = {
        key: str(value)
        for dest, key in _OPTION_KEYS.items()
        if (value := getattr(args, dest, None)) is not None
    }
    if args.no_drop:
        options["drop"] = "0"
    try:
        spec = spec_from_options(options)
        tcp = _parse_tcp(args.tcp) if args.tcp is not None else None
    except (ServomexError, ValueError) as exc:
        text = describe_error(exc) if isinstance(exc, ServomexError) else str(exc)
        print(f"error: {text}", file=sys.stderr)
        return 2
    if tcp is None and (sys.platform == "win32" or not hasattr(os, "openpty")):
        print(
            "error: pseudo-terminals are not available on this platform; use --tcp [HOST:]PORT",
            file=sys.stderr,
        )
        return 2
    try:
        return anyio.run(_serve, spec, tcp)
    except KeyboardInterrupt:  # platforms without signal receivers
        return 0
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        # A busy --tcp port, a failed pty: one error line (an exception group from the
        # server's task group included), exit 1.
        return report_failure(exc, verbose=verbose_of(args))


async def _serve(spec: SimSpec, tcp: tuple[str, int] | None) -> int:
    line: SimLine = spec.build()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with line:
            if tcp is not None:
                address = await line.serve_tcp(*tcp)
                where = address.url
            else:
                where = await line.serve_pty()
            print(where, flush=True)
            addresses = ",".join(str(s.address) for s in line.simulators)
            print(
                f"simulating a SERVOPRO 4100 ({spec.mode.value}, address {addresses}) on "
                f"{where}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            async for _ in signals:
                break
    return 0
