"""``servomex config check CONFIG``: validate a service file without opening any port.

Prints, per bus, its port, protocol, baud rate, analysers, the read plan of one sweep and the
bus utilisation; exit 0 when the file is valid, 2 with every problem listed (file, line, table
path, key) otherwise. The work is :func:`servomexlib.service.check.main_check`'s; this module
only adds the parser.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import add_verbose_option

__all__ = ["register", "run_check"]


def register(subparsers: Any) -> None:
    """Add the ``config`` subcommand and its ``check`` action."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="check a service configuration file (servomex run)",
        description="Work with the TOML file of `servomex run`.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate the file and print each bus's plan and utilisation",
        description=(
            "Parse and validate a service file without opening any port: every problem is "
            "listed with its file, line, table path and key (exit 2); a valid file prints per "
            "bus its port, protocol, baud rate, analysers, one sweep's read plan and the bus "
            "utilisation (exit 0)."
        ),
    )
    check.add_argument("config", metavar="CONFIG", help="the service's TOML file")
    add_verbose_option(check, nested=True)
    p.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """The ``config check`` handler."""
    from ..service.check import main_check

    return main_check(args.config, sys.stdout, sys.stderr)
