"""What every ``servomex`` subcommand shares (api.md §13).

* :func:`add_device_options` — the shared options: positional ``port`` (optional with
  ``--fixture``), ``--protocol``, ``--address``, ``--baud``, ``--timeout``, ``--frame-period``,
  ``--fixture``.
* :func:`open_analyzer` — opens what those options name: a real port / ``sim://`` / ``tcp://``
  through :func:`~servomexlib.open_device`, or a capture replayed endlessly (5 ms between
  frames) through a :class:`~servomexlib.FakeTransport` behind
  :func:`~servomexlib.open_continuous`.
* :func:`run_async` — runs a subcommand's coroutine and turns failures into exit codes: a
  ``ServomexError`` (or an exception group holding one) prints ``error: <first leaf>`` on stderr
  and exits 1, never a traceback; Ctrl-C exits with the code the subcommand chose.
* Output helpers: the read-format lines shared by read, decode and watch, and JSON documents.

JSON output (``--format json``) is JSON Lines everywhere: every stdout line is one complete
JSON document. Commands that report a stream of things (stream, decode, discover, diag tap)
write one document per thing; read and diag plan write one document.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.abc

from ..devices.analyzer import Analyzer
from ..devices.factory import open_continuous, open_device
from ..devices.models import DeviceInfo, Frame, ProtocolKind, Reading, Sample
from ..errors import ServomexError, ServomexValidationError
from ..settings import SerialSettings
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
    "analyzer_address",
    "count",
    "emit_json",
    "first_leaf",
    "format_device_line",
    "format_frame_line",
    "format_reading_line",
    "format_sample_line",
    "frame_json",
    "info_json",
    "load_fixture",
    "non_negative_float",
    "open_analyzer",
    "positive_float",
    "read_block",
    "replay",
    "require_port",
    "run_async",
    "serial_settings_for",
    "transport_label",
    "value_text",
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


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def first_leaf(exc: BaseException) -> BaseException | None:
    """The first ServomexError leaf of ``exc`` (depth first), else the first OSError leaf, else
    None (a programming error, which keeps its traceback)."""
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


def run_async(
    fn: Callable[[argparse.Namespace], Awaitable[int]],
    args: argparse.Namespace,
    *,
    interrupted: int = EXIT_INTERRUPTED,
) -> int:
    """Run ``fn(args)`` on a fresh event loop and map its outcome to an exit code.

    Returns ``fn``'s code; 1 after printing ``error: <first leaf>`` for a ServomexError or an
    OSError (alone or inside exception groups); ``interrupted`` on Ctrl-C.
    """
    try:
        return anyio.run(fn, args)
    except KeyboardInterrupt:
        return interrupted
    except BaseException as exc:
        if isinstance(exc, BaseExceptionGroup) and _interrupted(exc):
            return interrupted
        leaf = first_leaf(exc)
        if leaf is None:
            raise
        print(f"error: {leaf}", file=sys.stderr)
        return EXIT_ERROR


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


def value_text(value: float | None) -> str:
    """``{value:g}``, or ``None``."""
    return "None" if value is None else f"{value:g}"


def format_reading_line(reading: Reading, *, indent: int = 2) -> str:
    """``  {id:<3} {name or "(unlabelled)":<12} {value:g or "None":>10} {unit:<4} ok={b}``."""
    name = reading.name or "(unlabelled)"
    return (
        f"{' ' * indent}{reading.channel.value:<3} {name:<12} {value_text(reading.value):>10} "
        f"{reading.unit.value:<4} ok={reading.status.ok}"
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
    """``{id:<3} {str(value):>10} {unit}``, or ``error: {err}`` for an error sample."""
    if sample.reading is None:
        return f"error: {sample.error}"
    reading = sample.reading
    return f"{reading.channel.value:<3} {reading.value!s:>10} {reading.unit.value}"


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
    (``Reading.as_dict()`` with booleans as JSON booleans)."""
    readings = []
    for reading in frame.readings:
        row = reading.as_dict()
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
