"""``servomex read`` / ``servomex-read``: one frame from an analyser (docs/cli.md).

Text output::

    device: 4000-series protocol=modbus_rtu          (unless --no-identify)
    frame @ 2026-11-22T03:40:00.123456+00:00 protocol=modbus_rtu fault=False maintenance=False
      I1  Oxygen           20.378 %    ok=True
      I2  CO           over_range %    ok=False

A reading without a value shows its ``value_state`` (``over_range`` or ``invalid``) and
``ok=`` is ``Reading.ok`` (status ok *and* a value). ``--format json`` prints one JSON
document: ``{"device": {...} | null, "frame": {...}}``, each reading with ``value_state``
next to ``value``.
Exit 0; a device error prints ``error: …`` and exits 1; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    add_device_options,
    add_format_option,
    emit_json,
    format_device_line,
    frame_json,
    info_json,
    open_analyzer,
    read_block,
    run_async,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``read`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "read",
        help="read one frame (every channel) from an analyser",
        description="Identify the analyser (unless --no-identify) and print one frame.",
    )
    add_device_options(p)
    p.add_argument(
        "--no-identify",
        dest="no_identify",
        action="store_true",
        help="skip identify (no 'device:' line)",
    )
    add_format_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex read``."""
    return run_async(_read, args)


async def _read(args: argparse.Namespace) -> int:
    async with open_analyzer(args, identify=not args.no_identify) as anz:
        frame = await anz.poll()
        info = anz.info
    if args.format == "json":
        emit_json(
            {
                "device": info_json(info) if info is not None else None,
                "frame": frame_json(frame),
            }
        )
        return 0
    lines = []
    if info is not None:
        lines.append(format_device_line(info))
    lines += read_block(frame)
    print("\n".join(lines), flush=True)
    return 0
