"""The ``servomex`` options every subcommand shares, and the argparse types they use
(docs/cli.md).

* :func:`add_device_options` — positional ``port`` (optional with ``--fixture``),
  ``--protocol``, ``--address``, ``--baud``, ``--timeout``, ``--frame-period``, ``--fixture``;
* :func:`add_format_option` — ``--format text|json`` (json = JSON Lines, one document a line);
* :func:`add_verbose_option` — ``-v/--verbose``.

The argparse types refuse bad text with argparse's own usage error (exit 2) before anything
runs. Their rules are the library's: a slave address is checked by
:func:`servomexlib.validation.check_address` (1-247), a positive or non-negative number by
:func:`~servomexlib.validation.check_positive` / :func:`~servomexlib.validation.check_non_negative`
(finite; ``nan`` and ``inf`` are refused).
"""

from __future__ import annotations

import argparse
import math

from ..devices.models import ProtocolKind
from ..errors import ServomexValidationError
from ..validation import check_address, check_non_negative, check_positive

__all__ = [
    "PROTOCOL_CHOICES",
    "add_device_options",
    "add_format_option",
    "add_verbose_option",
    "baud_rate",
    "count",
    "non_negative_float",
    "positive_float",
    "slave_address",
]

PROTOCOL_CHOICES = tuple(p.value for p in ProtocolKind)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        return check_positive("value", _number(text))
    except ServomexValidationError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        return check_non_negative("value", _number(text))
    except ServomexValidationError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def slave_address(text: str) -> int:
    """argparse type: a Modbus slave address 1-247."""
    try:
        return check_address(_integer(text))
    except ServomexValidationError:
        raise argparse.ArgumentTypeError(f"must be a slave address 1-247, got {text!r}") from None


def baud_rate(text: str) -> int:
    """argparse type: a positive integer line rate (the range is the port's to refuse)."""
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive baud rate, got {text!r}")
    return value


def add_device_options(
    parser: argparse.ArgumentParser,
    *,
    port: bool = True,
    protocol: bool = True,
    fixture: bool = True,
) -> None:
    """Add the shared device options (module docstring) to ``parser``."""
    if port:
        parser.add_argument(
            "port",
            nargs="?",
            help="device path, COM name, sim://… or tcp://host:port (optional with --fixture)",
        )
    if protocol:
        parser.add_argument(
            "--protocol",
            choices=PROTOCOL_CHOICES,
            default="auto",
            help="wire mode; auto runs the detection ladder (default: auto)",
        )
    parser.add_argument(
        "--address", type=slave_address, default=1, help="Modbus slave address 1-247 (default: 1)"
    )
    parser.add_argument("--baud", type=baud_rate, default=None, help="line rate (default: 19200)")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=1.0,
        help="per-transaction timeout in seconds (default: 1.0)",
    )
    parser.add_argument(
        "--frame-period",
        dest="frame_period",
        type=positive_float,
        default=None,
        help="expected continuous broadcast period in seconds (default: 2.0)",
    )
    if fixture:
        parser.add_argument(
            "--fixture",
            metavar="CAPTURE",
            default=None,
            help="replay a continuous capture file endlessly instead of opening a port",
        )


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format text|json`` (json = one JSON document per line)."""
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json (JSON Lines: one document per line)",
    )


def add_verbose_option(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--verbose``: errors with raw bytes, context extras and tracebacks.

    ``nested`` is for the parser of a sub-subcommand (``diag tap``): its default is
    suppressed so that ``diag --verbose tap`` keeps the value the parent parser set.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="show raw request/response bytes, error details and tracebacks",
    )
