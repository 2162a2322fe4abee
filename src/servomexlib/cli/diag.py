"""``servomex diag`` / ``servomex-diag``: line diagnostics (api.md §13).

* ``diag loopback [--payload ABCD]`` — FC08 echo; forces ``modbus_rtu`` unless a Modbus
  ``--protocol`` is given; prints ``loopback sent={HEX} echo={HEX} ok={b}``; exit 0 on a match,
  else 1. Not possible with ``--fixture`` (exit 1).
* ``diag tap [--count 10]`` — ``{id:<3} {str(value):>10} {unit}`` per reading sample (a
  reading without a value shows ``over_range``/``invalid``); error samples count towards
  ``--count`` but are not printed.
* ``diag jitter [--rate 1.0] [--count 10]`` — gaps between ``count`` consecutive frames/polls
  (distinct ``monotonic_ns``): ``samples={n} gap_ms min=… mean=… max=…``, or
  ``not enough samples to measure jitter``.
* ``diag plan [--channels I1,…] [--baud] [--protocol]`` — the offline read plan (no port):
  ``FC{fc:02d} start={a} count={n} channels={ids} est={ms:.1f}ms`` per read (the analyser-status
  read shows ``channels=(analyser)``), then ``total est={ms:.1f}ms``.

``--i-understand-this-is-destructive`` is the gate for destructive diagnostics: none of the
current subcommands is destructive, so none needs it; :func:`require_destructive_ack` is the
check future ones call (exit 2 without the flag).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

from ..devices.models import ProtocolKind, coerce_channel
from ..errors import ServomexValidationError
from ..planner import ReadPlanner, WireModel
from .common import (
    add_device_options,
    add_format_option,
    add_verbose_option,
    count,
    describe_error,
    emit_json,
    format_sample_line,
    open_analyzer,
    positive_float,
    run_async,
    sample_json,
)

__all__ = ["DESTRUCTIVE_FLAG", "register", "require_destructive_ack", "run"]

DESTRUCTIVE_FLAG = "--i-understand-this-is-destructive"
_DEFAULT_CHANNELS = "I1,I2,I3,E1,E2"


def register(subparsers: Any) -> None:
    """Add the ``diag`` subcommand and its four diagnostics."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "diag",
        help="diagnostics: loopback, tap, jitter, plan",
        description="Line diagnostics: FC08 loopback, sample tap, timing jitter, read plan.",
    )
    p.add_argument(
        DESTRUCTIVE_FLAG,
        dest="destructive_ok",
        action="store_true",
        help="required by destructive diagnostics (none of the current ones is)",
    )
    sub = p.add_subparsers(dest="diag_command", metavar="DIAG")

    loop = sub.add_parser("loopback", help="FC08 echo test (Modbus)")
    add_device_options(loop)
    loop.add_argument("--payload", default="0000", help="2 bytes in hex (default: 0000)")
    add_verbose_option(loop, nested=True)
    loop.set_defaults(handler=_handler(_loopback))

    tap = sub.add_parser("tap", help="print reading samples as they arrive")
    add_device_options(tap)
    tap.add_argument("--rate", type=positive_float, default=1.0, help="Modbus polls per second")
    tap.add_argument("--count", type=count, default=10, help="samples to take (default: 10)")
    add_format_option(tap)
    add_verbose_option(tap, nested=True)
    tap.set_defaults(handler=_handler(_tap))

    jit = sub.add_parser("jitter", help="measure the gaps between frames/polls")
    add_device_options(jit)
    jit.add_argument("--rate", type=positive_float, default=1.0, help="Modbus polls per second")
    jit.add_argument("--count", type=count, default=10, help="frames/polls to time (10)")
    add_verbose_option(jit, nested=True)
    jit.set_defaults(handler=_handler(_jitter))

    plan = sub.add_parser("plan", help="offline Modbus read plan and its wire-time estimate")
    plan.add_argument("--channels", default=_DEFAULT_CHANNELS, help=f"({_DEFAULT_CHANNELS})")
    plan.add_argument("--baud", type=int, default=19200, help="line rate (19200)")
    plan.add_argument(
        "--protocol",
        choices=("auto", "modbus_rtu", "modbus_ascii"),
        default="auto",
        help="Modbus framing (auto = modbus_rtu)",
    )
    add_format_option(plan)
    add_verbose_option(plan, nested=True)
    plan.set_defaults(handler=_plan)

    p.set_defaults(handler=_missing, diag_parser=p)


def _missing(args: argparse.Namespace) -> int:
    args.diag_parser.print_help(sys.stderr)
    return 2


def require_destructive_ack(args: argparse.Namespace) -> int | None:
    """None when ``--i-understand-this-is-destructive`` was given, else prints why and
    returns 2 (the exit code)."""
    if getattr(args, "destructive_ok", False):
        return None
    print(f"error: this diagnostic is destructive; pass {DESTRUCTIVE_FLAG}", file=sys.stderr)
    return 2


def _handler(fn: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        return run_async(fn, args)

    return handler


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen diagnostic (``args.handler``)."""
    code: int = args.handler(args)
    return code


async def _loopback(args: argparse.Namespace) -> int:
    if args.fixture:
        raise ServomexValidationError("diag loopback needs a Modbus port, not a --fixture")
    try:
        payload = bytes.fromhex(args.payload.replace(" ", ""))
    except ValueError:
        raise ServomexValidationError(f"--payload: not hex: {args.payload!r}") from None
    if len(payload) != 2:
        raise ServomexValidationError(
            f"--payload must be 2 bytes (4 hex digits), got {len(payload)}"
        )
    modbus = (ProtocolKind.MODBUS_RTU.value, ProtocolKind.MODBUS_ASCII.value)
    protocol = args.protocol if args.protocol in modbus else ProtocolKind.MODBUS_RTU.value
    async with open_analyzer(args, protocol=protocol) as anz:
        echo = await anz.loopback(payload)
    ok = echo == payload
    print(f"loopback sent={payload.hex().upper()} echo={echo.hex().upper()} ok={ok}", flush=True)
    return 0 if ok else 1


async def _tap(args: argparse.Namespace) -> int:
    seen = errors = 0
    async with (
        open_analyzer(args, identify=True) as anz,
        anz.stream(rate_hz=args.rate) as samples,
    ):
        async for sample in samples:
            seen += 1
            if sample.reading is None:
                errors += 1
            elif args.format == "json":
                emit_json(sample_json(sample))
            else:
                print(format_sample_line(sample), flush=True)
            if args.count and seen >= args.count:
                break
    if errors:
        print(f"tap: {errors} error sample(s) not shown", file=sys.stderr)
    return 0


async def _jitter(args: argparse.Namespace) -> int:
    stamps: list[int] = []
    async with (
        open_analyzer(args, identify=True) as anz,
        anz.stream(rate_hz=args.rate) as samples,
    ):
        async for sample in samples:
            if sample.reading is None:
                continue
            if not stamps or sample.monotonic_ns != stamps[-1]:
                if len(stamps) >= max(args.count, 1):
                    break
                stamps.append(sample.monotonic_ns)
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    if not gaps:
        print("not enough samples to measure jitter", flush=True)
        return 0
    print(
        f"samples={len(stamps)} gap_ms min={min(gaps):.3f} mean={sum(gaps) / len(gaps):.3f} "
        f"max={max(gaps):.3f}",
        flush=True,
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    framing = (
        ProtocolKind.MODBUS_ASCII if args.protocol == "modbus_ascii" else ProtocolKind.MODBUS_RTU
    )
    try:
        channels = [
            coerce_channel(c.strip().upper()) for c in args.channels.split(",") if c.strip()
        ]
        planner = ReadPlanner(WireModel(baudrate=args.baud, framing=framing))
        reads = planner.plan(channels)
    except ServomexValidationError as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    total_ms = planner.cost(reads) * 1000.0
    if args.format == "json":
        emit_json(
            {
                "protocol": framing.value,
                "baud": args.baud,
                "reads": [
                    {
                        "function_code": int(r.function_code),
                        "start": r.address,
                        "count": r.count,
                        "channels": [c.value for c in r.channels],
                        "est_ms": round(r.cost_s * 1000.0, 3),
                    }
                    for r in reads
                ],
                "total_est_ms": round(total_ms, 3),
            }
        )
        return 0
    for r in reads:
        ids = ",".join(c.value for c in r.channels) or "(analyser)"
        print(
            f"FC{int(r.function_code):02d} start={r.address} count={r.count} channels={ids} "
            f"est={r.cost_s * 1000.0:.1f}ms"
        )
    print(f"total est={total_ms:.1f}ms", flush=True)
    return 0
