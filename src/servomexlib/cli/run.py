"""``servomex run CONFIG [--duration S] [--once] [--http HOST:PORT] [--quiet]``: the
acquisition service (docs/service.md §4).

Loads and validates the file (its problems are printed exactly as ``servomex config check``
prints them, exit 2), then runs :func:`servomexlib.service.runner.run_service` until
SIGINT/SIGTERM (exit 0 after a clean stop), ``--duration`` seconds, or with ``--once`` one tick
per analyser (exit 0 when every analyser answered, else 1). Logs go to stderr, one
``key=value`` line per event.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

__all__ = ["register", "run"]


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the acquisition service of a TOML file",
        description=(
            "Poll every analyser of the file on its schedule, commit each tick to the spool, "
            "deliver to every sink. Stops cleanly on SIGINT/SIGTERM (exit 0)."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="the service's TOML file")
    p.add_argument(
        "--duration", type=_duration, metavar="S", help="stop after S seconds (a clean stop)"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="poll every analyser once, deliver, print one line each; exit 1 if any failed",
    )
    p.add_argument("--http", metavar="HOST:PORT", help="serve /metrics /healthz /api/latest here")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The ``run`` handler."""
    import anyio

    from ..service.check import EXIT_INVALID
    from ..service.config import load_config
    from ..service.config_rules import parse_listen
    from ..service.problems import ServiceConfigError
    from ..service.runner import run_service

    err = sys.stderr
    try:
        config = load_config(args.config)
    except ServiceConfigError as exc:
        for problem in exc.problems:
            err.write(f"error: {problem}\n")
        count = len(exc.problems)
        err.write(f"{exc.source}: {count} problem{'s' if count != 1 else ''}, not valid\n")
        return EXIT_INVALID
    listen = None
    if args.http is not None:
        from ..errors import ServomexValidationError

        try:
            listen = parse_listen(args.http)
        except ServomexValidationError as exc:
            err.write(f"error: --http: {exc.message}\n")
            return EXIT_INVALID
    for warning in config.warnings:
        err.write(f"warning: {warning}\n")

    async def main() -> int:
        return await run_service(
            config, duration=args.duration, once=args.once, http=listen, quiet=args.quiet
        )

    return anyio.run(main)
