"""``servomex diag`` / ``servomex-diag``: line diagnostics (docs/cli.md).

* ``diag loopback [--payload ABCD]`` — FC08 echo; forces ``modbus_rtu`` unless a Modbus
  ``--protocol`` is given; prints ``loopback sent={HEX} echo={HEX} ok={b}``; exit 0 on a match,
  else 1. Not possible with ``--fixture`` (exit 1).
* ``diag tap [--count 10]`` — ``{id:<3} {str(value):>10} {unit}`` per reading sample (a
  reading without a value shows ``over_range``/``invalid``); error samples count towards
  ``--count`` but are not printed.
* ``diag jitter [--rate 1.0] [--count 10]`` — gaps between ``count`` consecutive frames/polls
  (distinct ``monotonic_ns``): ``samples={n} gap_ms min=… mean=… max=…``, or
  ``not enough samples to measure jitter``.
* ``diag plan [--channels I1,…] [--baud] [--protocol] [--value-only]`` — the offline read
  plan (no port): ``FC{fc:02d} start={a} count={n} channels={ids} est={ms:.1f}ms`` per read
  (the analyser-status read shows ``channels=(analyser)``), then ``total est={ms:.1f}ms``.
  ``--value-only``: the plan of a sweep after ``identify()`` (names and units cached: the 2
  value registers per slot), as every sweep after the first one reads.
* ``diag link PORT [--count 20]`` — Modbus (RTU unless ``--protocol modbus_ascii``): identify,
  then ``count`` polls back to back, then what the line learned and counted (fast recovery:
  docs/protocol.md, §9.4)::

      link polls=20 ok=20 errors=0 poll_ms p50=… p90=… max=…
      wait learned_ms=50.0 silence_ms=50.0 turnaround_ms p50=… p99=… samples=62
      counters transactions=61 attempts=61 retries=0 short_timeouts=0 timeouts=0 fences=0 …

  ``learned_ms`` is the wait beyond the wire time of request and reply (``none`` while the
  open-time timeout is used). With ``--format json`` one document with the same fields. Exit
  0 when every poll succeeded, else 1. Not possible with ``--fixture``.

``--i-understand-this-is-destructive`` is the gate for destructive diagnostics: none of the
current subcommands is destructive, so none needs it; :func:`require_destructive_ack` is the
check future ones call (exit 2 without the flag).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Any

from ..clients.modbus import ModbusStatistics
from ..devices.models import ProtocolKind, coerce_channel
from ..errors import ServomexError, ServomexValidationError
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
    """Add the ``diag`` subcommand and its five diagnostics."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "diag",
        help="diagnostics: loopback, tap, jitter, plan, link",
        description=(
            "Line diagnostics: FC08 loopback, sample tap, timing jitter, read plan, and the "
            "learned reply wait and silence of a Modbus line."
        ),
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
    plan.add_argument(
        "--value-only",
        action="store_true",
        help="plan a sweep after identify (names and units cached: value registers only)",
    )
    add_format_option(plan)
    add_verbose_option(plan, nested=True)
    plan.set_defaults(handler=_plan)

    link = sub.add_parser(
        "link", help="poll, then show the learned reply wait, silence, retries, fences (Modbus)"
    )
    add_device_options(link)
    link.add_argument("--count", type=_polls, default=20, help="polls to make (default: 20)")
    add_format_option(link)
    add_verbose_option(link, nested=True)
    link.set_defaults(handler=_handler(_link))

    p.set_defaults(handler=_missing, diag_parser=p)


def _polls(text: str) -> int:
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


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
        reads = planner.plan(channels, value_only=args.value_only)
    except ServomexValidationError as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    total_ms = planner.cost(reads) * 1000.0
    if args.format == "json":
        emit_json(
            {
                "protocol": framing.value,
                "baud": args.baud,
                "value_only": args.value_only,
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


async def _link(args: argparse.Namespace) -> int:
    if args.fixture:
        raise ServomexValidationError("diag link needs a Modbus port, not a --fixture")
    modbus = (ProtocolKind.MODBUS_RTU.value, ProtocolKind.MODBUS_ASCII.value)
    protocol = args.protocol if args.protocol in modbus else ProtocolKind.MODBUS_RTU.value
    times: list[float] = []
    errors: dict[str, int] = {}
    async with open_analyzer(args, identify=True, protocol=protocol) as anz:
        for _ in range(args.count):
            started = time.monotonic()
            try:
                await anz.poll()
            except ServomexError as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                continue
            times.append(time.monotonic() - started)
        stats = anz.statistics()
    if not isinstance(stats, ModbusStatistics):  # pragma: no cover - a Modbus port always is
        raise ServomexValidationError("diag link needs a Modbus analyser")
    report = _link_report(args.count, times, errors, stats)
    if args.format == "json":
        emit_json(report)
    else:
        for line in _link_lines(report):
            print(line)
        sys.stdout.flush()
    return 0 if not errors else 1


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _link_report(
    polls: int, times: list[float], errors: dict[str, int], stats: ModbusStatistics
) -> dict[str, Any]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else None
    return {
        "polls": polls,
        "ok": len(times),
        "errors": sum(errors.values()),
        "error_kinds": dict(sorted(errors.items())),
        "poll_ms": {
            "p50": _ms(statistics.median(times)) if times else None,
            "p90": _ms(p90),
            "max": _ms(max(times)) if times else None,
        },
        "learned_wait_ms": _ms(stats.learned_wait_s),
        "silence_ms": _ms(stats.silence_s),
        "turnaround_ms": {"p50": _ms(stats.turnaround_p50_s), "p99": _ms(stats.turnaround_p99_s)},
        "reply_samples": stats.reply_samples,
        "transactions": stats.transactions,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "short_timeouts": stats.short_timeouts,
        "timeouts": stats.timeouts,
        "fences": stats.fences,
        "fence_failures": stats.fence_failures,
        "early_replies": stats.early_replies,
        "stale_bytes": stats.stale_bytes,
        "silence_raises": stats.silence_raises,
        "wait_boosts": stats.wait_boosts,
    }


def _fmt(ms: float | None) -> str:
    return "none" if ms is None else f"{ms:.1f}"


def _link_lines(r: dict[str, Any]) -> list[str]:
    poll, turn = r["poll_ms"], r["turnaround_ms"]
    kinds = " ".join(f"{k}={v}" for k, v in r["error_kinds"].items())
    counters = " ".join(
        f"{k}={r[k]}"
        for k in (
            "transactions",
            "attempts",
            "retries",
            "short_timeouts",
            "timeouts",
            "fences",
            "fence_failures",
            "early_replies",
            "stale_bytes",
            "silence_raises",
            "wait_boosts",
        )
    )
    return [
        f"link polls={r['polls']} ok={r['ok']} errors={r['errors']}"
        + (f" ({kinds})" if kinds else "")
        + f" poll_ms p50={_fmt(poll['p50'])} p90={_fmt(poll['p90'])} max={_fmt(poll['max'])}",
        f"wait learned_ms={_fmt(r['learned_wait_ms'])} silence_ms={_fmt(r['silence_ms'])} "
        f"turnaround_ms p50={_fmt(turn['p50'])} p99={_fmt(turn['p99'])} "
        f"samples={r['reply_samples']}",
        f"counters {counters}",
    ]
