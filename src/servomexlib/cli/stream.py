"""``servomex stream`` / ``servomex-stream``: print samples as they arrive (docs/cli.md).

Continuous analysers stream their broadcast (``--rate`` is ignored); Modbus analysers are polled at
``--rate`` Hz. One line per sample, ``{id:<3} {str(value):>10} {unit}`` (a reading without a value
shows its state, ``over_range`` or ``invalid``, instead of None), or ``error: {err}`` for an error
sample (a frame that failed to decode); error samples count towards ``--count``. ``--count 0``
streams until Ctrl-C. ``--format json`` prints one JSON document per sample (the row of
docs/recording-and-sinks.md, with ``value_state`` next to ``value``). Exit 0; Ctrl-C exits 130; a
closed stdout (``| head``) ends the stream quietly with exit 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    add_device_options,
    add_format_option,
    count,
    emit_json,
    format_sample_line,
    open_analyzer,
    positive_float,
    run_async,
    sample_json,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``stream`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "stream",
        help="print samples as they arrive",
        description="Stream samples: continuous broadcasts, or Modbus polls at --rate Hz.",
    )
    add_device_options(p)
    p.add_argument(
        "--rate",
        type=positive_float,
        default=1.0,
        help="Modbus polls per second (default: 1.0; ignored in continuous mode)",
    )
    p.add_argument(
        "--count", type=count, default=10, help="samples to print, 0 = until Ctrl-C (default: 10)"
    )
    add_format_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex stream``."""
    return run_async(_stream, args)


async def _stream(args: argparse.Namespace) -> int:
    seen = 0
    async with (
        open_analyzer(args, identify=True) as anz,
        anz.stream(rate_hz=args.rate) as samples,
    ):
        async for sample in samples:
            if args.format == "json":
                emit_json(sample_json(sample))
            else:
                print(format_sample_line(sample), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0
