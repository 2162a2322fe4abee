"""The ``servomex`` command (api.md §13, §16.4).

Each subcommand lives in its own module ``servomexlib.cli.<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``handler`` — a function taking the
parsed arguments and returning the exit code. :func:`main` only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .._version import __version__

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: Modules under ``servomexlib.cli`` that provide a subcommand, in help order.
SUBCOMMANDS: tuple[str, ...] = ("simulate",)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full ``servomex`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="servomex", description="Servomex SERVOPRO 4000-series analyser tools."
    )
    parser.add_argument("--version", action="version", version=f"servomex {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``servomex`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)
