"""The ``servomex`` command (docs/cli.md).

Each subcommand lives in its own module ``servomexlib.cli.<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``handler`` — a function taking the
parsed arguments and returning the exit code. :func:`main` only dispatches.

The six family-compatible scripts (``servomex-read``, ``servomex-stream``,
``servomex-discover``, ``servomex-decode``, ``servomex-capture``, ``servomex-diag``) are the
``*_main`` functions below: each builds the very same subcommand parser under its own program
name, so options and output are identical to ``servomex <sub>``.

Every subcommand (and every ``diag`` diagnostic) takes ``-v/--verbose``: it is added here, as
each parser is made, so no subcommand can lack it.

Exit codes: 0 success, and also when stdout was closed early (``servomex stream … | head``:
the command stops quietly); 1 an error (exactly one ``error: …`` line on stderr, no traceback
unless ``--verbose``; see :func:`servomexlib.cli.common.report_failure`, which also catches
what a subcommand did not expect); 2 bad usage (argparse) or, for ``discover``, nothing found;
130 Ctrl-C in read, stream, decode, discover and diag (watch, capture and simulate treat
Ctrl-C as the normal way to stop and exit 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__

__all__ = [
    "SUBCOMMANDS",
    "build_parser",
    "capture_main",
    "decode_main",
    "diag_main",
    "discover_main",
    "main",
    "read_main",
    "stream_main",
]

#: Modules under ``servomexlib.cli`` that provide a subcommand, in help order.
SUBCOMMANDS: tuple[str, ...] = (
    "read",
    "stream",
    "watch",
    "capture",
    "decode",
    "discover",
    "diag",
    "simulate",
    "plot",
    "config",
    "run",
)

Handler = Callable[[argparse.Namespace], int]


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    from .common import add_verbose_option

    add_verbose_option(parser)


class _Subparsers:
    """argparse's subparsers object, adding ``--verbose`` to every subcommand parser."""

    def __init__(self, action: Any) -> None:
        self._action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, **kwargs)
        _add_verbose(parser)
        return parser


def build_parser() -> argparse.ArgumentParser:
    """The full ``servomex`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="servomex", description="Servomex SERVOPRO 4000-series analyser tools."
    )
    parser.add_argument("--version", action="version", version=f"servomex {__version__}")
    subparsers = _Subparsers(parser.add_subparsers(dest="command", metavar="COMMAND"))
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(subparsers)
    return parser


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    from .common import EXIT_INTERRUPTED, report_failure, silence_stdout, verbose_of

    try:
        # --help, --version and usage errors raise SystemExit (0 or 2) as argparse does.
        args = parser.parse_args(argv)
    except BrokenPipeError:  # `servomex --help | head -1`
        silence_stdout()
        return 0
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = handler(args)
        # Flush here, not at interpreter exit, so a closed pipe is reported (quietly) below.
        if sys.stdout is not None:
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:  # the last safety net: one error line, never a traceback
        return report_failure(exc, verbose=verbose_of(args))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``servomex`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return _dispatch(build_parser(), argv)


class _SingleCommand:
    """Stands in for argparse's subparsers object so a subcommand's ``register`` builds a
    top-level parser named ``servomex-<name>`` (same options, same handler)."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.pop("help", None)
        kwargs.pop("aliases", None)
        self.parser = argparse.ArgumentParser(prog=self.prog, **kwargs)
        self.parser.add_argument(
            "--version", action="version", version=f"{self.prog} {__version__}"
        )
        _add_verbose(self.parser)
        return self.parser


def alias_parser(name: str) -> argparse.ArgumentParser:
    """The standalone parser of ``servomex-<name>``."""
    single = _SingleCommand(f"servomex-{name}")
    importlib.import_module(f"{__name__}.{name}").register(single)
    assert single.parser is not None
    return single.parser


def _alias(name: str) -> Callable[[Sequence[str] | None], int]:
    def alias_main(argv: Sequence[str] | None = None) -> int:
        return _dispatch(alias_parser(name), argv)

    alias_main.__name__ = f"{name}_main"
    alias_main.__doc__ = f"Entry point of ``servomex-{name}`` (= ``servomex {name}``)."
    return alias_main


read_main = _alias("read")
stream_main = _alias("stream")
discover_main = _alias("discover")
decode_main = _alias("decode")
capture_main = _alias("capture")
diag_main = _alias("diag")
