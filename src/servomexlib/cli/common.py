"""What every ``servomex`` subcommand shares (api.md §13).

* :func:`add_device_options` — the shared options: positional ``port`` (optional with
  ``--fixture``), ``--protocol``, ``--address``, ``--baud``, ``--timeout``, ``--frame-period``,
  ``--fixture``.
* :func:`open_analyzer` — opens what those options name: a real port / ``sim://`` / ``tcp://``
  through :func:`~servomexlib.open_device`, or a capture replayed endlessly (5 ms between
  frames) through a :class:`~servomexlib.FakeTransport` behind
  :func:`~servomexlib.open_continuous`.
* :func:`run_async` / :func:`report_failure` — how every command ends (api.md §13): a
  ``ServomexError`` or ``OSError`` (alone or inside exception groups) prints exactly one
  ``error: …`` line on stderr and exits 1, never a traceback. The line speaks CLI: the
  library's keyword arguments become flags (``pass --overwrite``) and the error's context is
  given in words (``(port /dev/ttyUSB0, address 30, FC04 register 0, after 3 attempts)``);
  raw request/response bytes, context extras and the chain of causes only with ``--verbose``.
  Anything unexpected is the last safety net: one ``error: unexpected …`` line with a hint to
  run with ``--verbose``, which adds the traceback. A closed stdout (``| head``: EPIPE) ends
  the command quietly with exit 0 after pointing stdout at the null device, so Python's final
  flush cannot complain. Ctrl-C exits with the code the subcommand chose.
* Output helpers: the read-format lines shared by read, decode and watch, and JSON documents.
  A reading without a value shows its ``value_state`` (``over_range``/``invalid``) instead of
  a bare None, and JSON documents carry a ``value_state`` key next to ``value``.

JSON output (``--format json``) is JSON Lines everywhere: every stdout line is one complete
JSON document. Commands that report a stream of things (stream, decode, discover, diag tap)
write one document per thing; read and diag plan write one document.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.abc

from ..devices.analyzer import Analyzer
from ..devices.factory import open_continuous, open_device
from ..devices.models import DeviceInfo, Frame, ProtocolKind, Reading, Sample
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexValidationError,
    unwrap_group,
)
from ..settings import SerialSettings
from ..sinks.schema import sample_to_row
from ..transport.fake import FakeTransport
from ..wire.continuous import split_frames

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "FIXTURE_INTERVAL_S",
    "PROTOCOL_CHOICES",
    "add_device_options",
    "add_format_option",
    "add_verbose_option",
    "analyzer_address",
    "cli_wording",
    "connection_lost",
    "context_words",
    "count",
    "describe_error",
    "emit_json",
    "first_leaf",
    "format_device_line",
    "format_frame_line",
    "format_reading_line",
    "format_sample_line",
    "frame_json",
    "info_json",
    "is_broken_pipe",
    "load_fixture",
    "non_negative_float",
    "open_analyzer",
    "positive_float",
    "read_block",
    "reading_ok",
    "reading_value_text",
    "replay",
    "report_failure",
    "require_port",
    "run_async",
    "sample_json",
    "serial_settings_for",
    "silence_stdout",
    "transport_label",
    "value_state",
    "value_text",
    "verbose_of",
]

EXIT_OK = 0
EXIT_ERROR = 1
#: Exit code of a command stopped by Ctrl-C before it finished (128 + SIGINT).
EXIT_INTERRUPTED = 130

#: Pause before each replayed fixture frame (api.md §13).
FIXTURE_INTERVAL_S = 0.005

PROTOCOL_CHOICES = tuple(p.value for p in ProtocolKind)


# ------------------------------------------------------------------------------ argument types


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _address(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 247:
        raise argparse.ArgumentTypeError(f"must be a slave address 1-247, got {text!r}")
    return value


def _baud(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
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
    """Add the shared options of api.md §13 to ``parser``."""
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
        "--address", type=_address, default=1, help="Modbus slave address 1-247 (default: 1)"
    )
    parser.add_argument("--baud", type=_baud, default=None, help="line rate (default: 19200)")
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


# ------------------------------------------------------------------------------ errors / running


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


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def first_leaf(exc: BaseException) -> BaseException | None:
    """The first ServomexError leaf of ``exc`` (depth first), else the first OSError leaf, else
    None (an unexpected error)."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, ServomexError):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, OSError):
            return leaf
    return None


def _interrupted(exc: BaseException) -> bool:
    leaves = list(_leaves(exc))
    # Outside the event loop the backend's cancellation class is unknown: match by name.
    return bool(leaves) and all(
        isinstance(leaf, KeyboardInterrupt)
        or type(leaf).__name__ == "CancelledError"
        or type(leaf).__name__ == "Cancelled"
        for leaf in leaves
    )


def is_broken_pipe(exc: BaseException) -> bool:
    """True when ``exc`` is (or a group holds only) a write to a closed pipe (EPIPE)."""
    leaves = list(_leaves(exc))
    return bool(leaves) and all(
        isinstance(leaf, BrokenPipeError)
        or (isinstance(leaf, OSError) and leaf.errno == errno.EPIPE)
        for leaf in leaves
    )


def silence_stdout() -> None:
    """Point stdout at the null device after the reader went away (``| head``).

    Python flushes ``sys.stdout`` once more at exit; with the pipe closed that flush fails
    again and prints "Exception ignored … BrokenPipeError". Redirecting the file descriptor
    (as the ``signal`` module documentation recommends for SIGPIPE) makes that flush, and any
    later print, go nowhere.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a real file (captured by a test harness): nothing will flush to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


#: Library wording (Python keyword arguments) → the CLI flag that does the same.
_FLAG_WORDING: tuple[tuple[str, str], ...] = (("overwrite=True", "--overwrite"),)
_NOUNS = {1: "coil", 2: "input", 3: "register", 4: "register", 5: "coil"}


def cli_wording(message: str) -> str:
    """``message`` with the library's keyword arguments replaced by the matching CLI flags."""
    for library, flag in _FLAG_WORDING:
        message = message.replace(library, flag)
    return message


def _hex(data: bytes) -> str:
    return data.hex(" ") if data else "(nothing)"


def context_words(context: ErrorContext, message: str = "", *, verbose: bool = False) -> str:
    """The parts of ``context`` in words, for a CLI user: ``port /dev/ttyUSB0, address 30,
    channel I1, FC04 register 0, after 3 attempts``. A port or file the message already names
    is not repeated. ``verbose`` adds the protocol, the time spent, the raw request and
    response bytes and every other extra."""
    parts: list[str] = []
    extra = dict(context.extra)
    if verbose and context.protocol is not None:
        protocol = context.protocol
        parts.append(f"protocol {getattr(protocol, 'value', protocol)}")
    if context.port is not None and str(context.port) not in message:
        parts.append(f"port {context.port}")
    path = extra.pop("path", None)
    if path is not None and str(path) not in message:
        parts.append(f"file {path}")
    if context.address is not None:
        parts.append(f"address {context.address}")
    if context.channel is not None:
        channel = context.channel
        parts.append(f"channel {getattr(channel, 'value', channel)}")
    fc = context.function_code
    if fc is not None:
        where = f"FC{fc:02d}"
        noun = _NOUNS.get(fc)
        if noun is not None and context.register is not None:
            where += f" {noun} {context.register}"
        parts.append(where)
    elif context.register is not None:
        parts.append(f"register {context.register}")
    attempts = extra.pop("attempts", None)
    if isinstance(attempts, int) and attempts > 1:
        parts.append(f"after {attempts} attempts")
    if verbose:
        if context.elapsed_s is not None:
            parts.append(f"{context.elapsed_s:.3f} s")
        if context.request is not None:
            parts.append(f"request {_hex(context.request)}")
        if context.response is not None:
            parts.append(f"response {_hex(context.response)}")
        parts.extend(f"{key} {value}" for key, value in extra.items())
    return ", ".join(parts)


def describe_error(exc: BaseException, *, verbose: bool = False) -> str:
    """The text of the ``error:`` line for ``exc`` (a ServomexError, an OSError, or anything).

    A ServomexError gives its message in CLI wording and its context in words
    (:func:`context_words`); raw bytes and extras only with ``verbose``.
    """
    if isinstance(exc, ServomexError):
        words = context_words(exc.context, exc.message, verbose=verbose)
        text = cli_wording(exc.message)
        return f"{text} ({words})" if words else text
    if isinstance(exc, OSError):
        return str(exc)
    leaves = list(_leaves(exc))
    if leaves and leaves[0] is not exc:
        return describe_error(leaves[0], verbose=verbose)
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"unexpected {name}: {exc}" if str(exc) else f"unexpected {name}"


def _causes(exc: BaseException) -> list[str]:
    lines: list[str] = []
    seen = {id(exc)}
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause)
        lines.append(f"  caused by {type(cause).__name__}" + (f": {text}" if text else ""))
        cause = cause.__cause__
    return lines


def report_failure(exc: BaseException, *, verbose: bool = False) -> int:
    """Print the one ``error:`` line for ``exc`` on stderr and return the exit code.

    * a closed stdout (EPIPE) → nothing printed, stdout silenced, 0;
    * a ServomexError or OSError (alone or inside exception groups) → ``error: …``, 1; with
      ``verbose`` the causes follow, one per line;
    * anything else → ``error: unexpected …`` and a hint to run with ``--verbose``, 1; with
      ``verbose`` the traceback comes first.
    """
    if is_broken_pipe(exc):
        silence_stdout()
        return EXIT_OK
    leaf = first_leaf(exc)
    lines: list[str] = []
    if leaf is None:
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
            lines.append(f"error: {describe_error(exc)}")
        else:
            lines.append(f"error: {describe_error(exc)} (run with --verbose for details)")
    else:
        lines.append(f"error: {describe_error(leaf, verbose=verbose)}")
        if verbose:
            lines += _causes(leaf)
    with contextlib.suppress(OSError, ValueError):
        print("\n".join(lines), file=sys.stderr, flush=True)
    return EXIT_ERROR


def verbose_of(args: argparse.Namespace) -> bool:
    """The ``--verbose`` flag of ``args`` (False when the parser has none)."""
    return bool(getattr(args, "verbose", False))


def run_async(
    fn: Callable[[argparse.Namespace], Awaitable[int]],
    args: argparse.Namespace,
    *,
    interrupted: int = EXIT_INTERRUPTED,
) -> int:
    """Run ``fn(args)`` on a fresh event loop and map its outcome to an exit code.

    Returns ``fn``'s code; ``interrupted`` on Ctrl-C; otherwise what :func:`report_failure`
    returns (one ``error:`` line and 1; 0 for a closed stdout).
    """
    try:
        return anyio.run(fn, args)
    except KeyboardInterrupt:
        return interrupted
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, BaseExceptionGroup) and _interrupted(exc):
            return interrupted
        return report_failure(exc, verbose=verbose_of(args))


def connection_lost(exc: BaseException) -> ServomexConnectionError | None:
    """The ServomexConnectionError in ``exc`` (bare, or the only leaf of nested exception
    groups), or None."""
    leaf = unwrap_group(exc)
    return leaf if isinstance(leaf, ServomexConnectionError) else None


# ------------------------------------------------------------------------------ opening


def serial_settings_for(args: argparse.Namespace) -> SerialSettings | None:
    """``SerialSettings`` carrying ``--baud`` (the port is filled in when opened), or None."""
    baud = getattr(args, "baud", None)
    if baud is None:
        return None
    return SerialSettings(port=args.port or "", baudrate=baud)


def load_fixture(path: str | Path) -> list[bytes]:
    """The frames of a capture file (protocol.md §3.7 split), each with CR LF re-appended.

    Raises:
        ServomexValidationError: unreadable file, or no frame in it.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ServomexValidationError(f"cannot read fixture {str(path)!r}: {exc}") from exc
    frames = [frame + b"\r\n" for frame in split_frames(data)]
    if not frames:
        raise ServomexValidationError(f"fixture {str(path)!r} holds no frames")
    return frames


async def replay(
    transport: FakeTransport, frames: list[bytes], *, interval: float = FIXTURE_INTERVAL_S
) -> None:
    """Feed ``frames`` to ``transport`` in an endless loop, ``interval`` s before each frame,
    until cancelled or the transport is closed."""
    while transport.is_open:
        await transport.emit(frames, interval=interval)


def _fixture_protocol_check(args: argparse.Namespace) -> None:
    protocol = getattr(args, "protocol", "auto")
    if protocol not in ("auto", ProtocolKind.CONTINUOUS_ASCII.value):
        raise ServomexValidationError(
            f"--fixture replays a continuous capture; --protocol {protocol} cannot be used with it"
        )


def require_port(args: argparse.Namespace) -> str:
    """``args.port``, or ServomexValidationError when neither a port nor --fixture was given."""
    if not args.port:
        raise ServomexValidationError("no port given: pass a port (or --fixture CAPTURE)")
    return str(args.port)


@asynccontextmanager
async def open_analyzer(
    args: argparse.Namespace,
    *,
    identify: bool = False,
    protocol: ProtocolKind | str | None = None,
) -> AsyncIterator[Analyzer]:
    """Open and enter the analyser the shared options name; close it on exit.

    With ``--fixture`` the capture is replayed endlessly by a background task (owned here)
    into a FakeTransport behind ``open_continuous``; ``identify`` then runs after entering.

    Raises:
        ServomexValidationError: neither a port nor ``--fixture``; a Modbus ``--protocol``
            with ``--fixture``; an unreadable or empty fixture.
        ServomexError: whatever opening the device raised.
    """
    fixture = getattr(args, "fixture", None)
    if fixture:
        _fixture_protocol_check(args)
        frames = load_fixture(fixture)
        fake = FakeTransport(label=str(fixture))
        async with anyio.create_task_group() as tg:
            tg.start_soon(replay, fake, frames)
            anz = await open_continuous(fake, timeout=args.timeout, frame_period=args.frame_period)
            async with anz:
                if identify:
                    await anz.identify()
                yield anz
            tg.cancel_scope.cancel()
        return
    port = require_port(args)
    anz = await open_device(
        port,
        protocol=protocol if protocol is not None else args.protocol,
        address=args.address,
        serial_settings=serial_settings_for(args),
        timeout=args.timeout,
        identify=identify,
        frame_period=args.frame_period,
    )
    async with anz:
        yield anz


# ------------------------------------------------------------------------------ output


def value_state(reading: Reading) -> str:
    """``reading.value_state`` as text: ``ok``, ``over_range`` or ``invalid``."""
    return reading.value_state.value


def reading_ok(reading: Reading) -> bool:
    """``reading.ok``: the status is ok and there is a value (api.md §2)."""
    return reading.ok


def value_text(value: float | None, state: str | None = None) -> str:
    """``{value:g}``; for a missing value the state (``over_range``, ``invalid``) or ``None``."""
    if value is not None:
        return f"{value:g}"
    return state if state is not None and state != "ok" else "None"


def reading_value_text(reading: Reading) -> str:
    """The value of ``reading`` as the read format shows it (see :func:`value_text`)."""
    return value_text(reading.value, value_state(reading))


def format_reading_line(reading: Reading, *, indent: int = 2) -> str:
    """``  {id:<3} {name or "(unlabelled)":<12} {value:>10} {unit:<4} ok={b}``; the value is
    ``{value:g}``, or ``over_range``/``invalid`` when the analyser gave none."""
    name = reading.name or "(unlabelled)"
    return (
        f"{' ' * indent}{reading.channel.value:<3} {name:<12} {reading_value_text(reading):>10} "
        f"{reading.unit.value:<4} ok={reading_ok(reading)}"
    )


def format_frame_line(frame: Frame) -> str:
    """``frame @ {received_at.isoformat()} protocol={p} fault={b} maintenance={b}``."""
    return (
        f"frame @ {frame.received_at.isoformat()} protocol={frame.protocol.value} "
        f"fault={frame.analyser.fault} maintenance={frame.analyser.maintenance}"
    )


def format_device_line(info: DeviceInfo) -> str:
    """``device: {model} protocol={p}``."""
    return f"device: {info.model} protocol={info.protocol.value}"


def read_block(frame: Frame) -> list[str]:
    """The frame line and one reading line per reading (the ``read`` format)."""
    return [format_frame_line(frame), *(format_reading_line(r) for r in frame.readings)]


def format_sample_line(sample: Sample) -> str:
    """``{id:<3} {str(value):>10} {unit}`` (``over_range``/``invalid`` for a missing value),
    or ``error: {err}`` for an error sample."""
    if sample.reading is None:
        error = sample.error
        text = describe_error(error) if error is not None else "no reading"
        return f"error: {text}"
    reading = sample.reading
    if reading.value is not None:
        value = str(reading.value)
    else:
        value = value_text(None, value_state(reading))
    return f"{reading.channel.value:<3} {value:>10} {reading.unit.value}"


def _with_value_state(row: dict[str, Any], state: str | None) -> dict[str, Any]:
    """``row`` with a ``value_state`` key right after ``value``."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "value_state":
            continue
        out[key] = value
        if key == "value":
            out["value_state"] = state
    return out


def sample_json(sample: Sample) -> dict[str, Any]:
    """The row of ``sample`` (api.md §10) with ``value_state`` next to ``value``."""
    row = sample_to_row(sample)
    return _with_value_state(row, row.get("value_state"))


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def info_json(info: DeviceInfo) -> dict[str, Any]:
    """A JSON-ready description of a DeviceInfo."""
    return {
        "model": info.model,
        "protocol": info.protocol.value,
        "address": info.address,
        "port": info.serial_settings.port,
        "baudrate": info.serial_settings.baudrate,
        "channels": [
            {
                "channel": c.channel.value,
                "kind": c.kind.value,
                "name": c.name,
                "unit": c.unit.value,
            }
            for c in info.channels
        ],
    }


def frame_json(frame: Frame) -> dict[str, Any]:
    """A JSON-ready description of a Frame: timestamps, analyser status and readings
    (``Reading.as_dict()`` with booleans as JSON booleans, ``value_state`` after ``value`` and
    ``ok`` = ``reading.ok``)."""
    readings = []
    for reading in frame.readings:
        row = _with_value_state(reading.as_dict(), value_state(reading))
        row["ok"] = reading_ok(reading)
        for key in (
            "fault",
            "maintenance",
            "calibrating",
            "warming_up",
            "alarm1",
            "alarm2",
            "alarm3",
            "alarm4",
            "ok",
        ):
            row[key] = bool(row[key])
        readings.append(row)
    analyser = frame.analyser
    return {
        "received_at": frame.received_at.isoformat(),
        "requested_at": _iso(frame.requested_at),
        "latency_s": frame.latency_s,
        "protocol": frame.protocol.value,
        "analyser": {
            "fault": analyser.fault,
            "maintenance": analyser.maintenance,
            "clock": _iso(analyser.clock),
            "cal_groups": [g.phase.value for g in analyser.cal_groups],
        },
        "readings": readings,
    }


def emit_json(document: object, out: TextIO | None = None) -> None:
    """Print ``document`` as one compact JSON line."""
    print(json.dumps(document, ensure_ascii=False), file=out or sys.stdout, flush=True)


def transport_label(anz: Analyzer) -> str:
    """The port label of an Analyzer (for headers)."""
    return str(getattr(anz.transport, "label", anz.device))


def analyzer_address(anz: Analyzer) -> int | None:
    """The Modbus address, or None in continuous mode."""
    if anz.protocol is ProtocolKind.CONTINUOUS_ASCII:
        return None
    return int(anz.client.address)
