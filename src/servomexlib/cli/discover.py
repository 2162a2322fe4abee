"""``servomex discover`` / ``servomex-discover``: find analysers on ports (api.md §13, §14).

Every port is probed read-only, one after another (AUTO ladder, then one identify)::

    /dev/ttyUSB0: modbus_rtu
        I1  Oxygen (%)
    sim://?mode=continuous: continuous [broadcaster]
        …
    /dev/ttyUSB1: no device (no recognised protocol on /dev/ttyUSB1 …)

    2/3 port(s) recognised

``--fixture CAPTURE`` probes a replayed capture (re-fed every 50 ms) as one more "port".
Exit 0 if any analyser was found, 2 if none, 2 with a message when no port was given; Ctrl-C
exits 130. ``--format json`` prints one JSON document per port.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from ..settings import SerialSettings
from ..transport.fake import FakeTransport
from .common import (
    add_device_options,
    add_format_option,
    describe_error,
    emit_json,
    info_json,
    load_fixture,
    run_async,
    verbose_of,
)

__all__ = ["FIXTURE_REFEED_S", "register", "run"]

#: Pause between re-feeds of the whole fixture capture.
FIXTURE_REFEED_S = 0.05


def register(subparsers: Any) -> None:
    """Add the ``discover`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "discover",
        help="probe ports for analysers (read-only)",
        description="Probe each port with the AUTO ladder and identify what answers.",
    )
    p.add_argument("ports", nargs="*", help="ports to probe (device paths, COM names, URLs)")
    add_device_options(p, port=False, protocol=False)
    add_format_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex discover``."""
    if not args.ports and not args.fixture:
        print("error: give at least one port (or --fixture CAPTURE) to probe", file=sys.stderr)
        return 2
    return run_async(_discover, args)


async def _fixture_result(args: argparse.Namespace) -> Any:
    from ..discovery import discover_port

    frames = load_fixture(args.fixture)
    fake = FakeTransport(label=str(args.fixture))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_refeed, fake, b"".join(frames))
        try:
            result = await discover_port(
                fake, address=args.address, timeout=args.timeout, frame_period=args.frame_period
            )
        finally:
            tg.cancel_scope.cancel()
    await fake.aclose()
    return result


async def _refeed(fake: FakeTransport, capture: bytes) -> None:
    """Feed the whole capture, then again every 50 ms, while the fake is open."""
    while fake.is_open:
        fake.feed(capture)
        await anyio.sleep(FIXTURE_REFEED_S)


async def _discover(args: argparse.Namespace) -> int:
    from ..discovery import discover_port, summarize

    settings = SerialSettings(port="", baudrate=args.baud) if args.baud is not None else None
    results = []
    for port in args.ports:
        result = await discover_port(
            port,
            address=args.address,
            timeout=args.timeout,
            serial_settings=settings,
            frame_period=args.frame_period,
        )
        results.append(result)
        _print_result(result, args)
    if args.fixture:
        result = await _fixture_result(args)
        results.append(result)
        _print_result(result, args)
    summary = summarize(results)
    if args.format == "text":
        print(f"\n{len(summary.found)}/{summary.total} port(s) recognised", flush=True)
    return 0 if summary.found else 2


def _print_result(result: Any, args: argparse.Namespace) -> None:
    if args.format == "json":
        emit_json(
            {
                "port": result.port,
                "ok": result.ok,
                "protocol": result.protocol.value if result.protocol is not None else None,
                "broadcaster": result.is_broadcaster,
                "device": info_json(result.info) if result.info is not None else None,
                "error": (
                    describe_error(result.error, verbose=verbose_of(args))
                    if result.error is not None
                    else None
                ),
            }
        )
        return
    if not result.ok:
        error = result.error
        why = (
            describe_error(error, verbose=verbose_of(args))
            if error is not None
            else "nothing recognised"
        )
        print(f"{result.port}: no device ({why})", flush=True)
        return
    tag = " [broadcaster]" if result.is_broadcaster else ""
    lines = [f"{result.port}: {result.protocol.value}{tag}"]
    if result.info is not None:
        for ch in result.info.channels:
            lines.append(f"    {ch.channel.value:<3} {ch.name} ({ch.unit.value})")
    print("\n".join(lines), flush=True)
