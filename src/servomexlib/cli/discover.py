"""``servomex discover`` / ``servomex-discover``: find analysers on ports (docs/cli.md "discover").

Every port is probed read-only, one after another. With one ``--address`` (the default, 1)
and ``--protocol auto`` the AUTO ladder runs at that address, then one identify; with an
address list or range (``--address 1-247``, ``1,2,30``) or an explicit ``--protocol`` the port
is scanned as a bus (:func:`~servomexlib.discovery.scan_bus`): one short probe per address,
then an identify of each that answered, one line per analyser::

    /dev/ttyUSB0: modbus_rtu address 1
        I1  Oxygen (%)
    /dev/ttyUSB0: modbus_rtu address 30
        I1  Oxygen (%)
    sim://?mode=continuous: continuous [broadcaster]
        …
    /dev/ttyUSB1: no device (no recognised protocol on /dev/ttyUSB1 …)
    /dev/ttyUSB2: no device at address 5 (address 30 answers: try --address 30)

    3/4 port(s) recognised

While a scan runs, a one-line counter (``scanning 37/247, found 2``) is redrawn on stderr
when stderr is a terminal. ``--fixture CAPTURE`` probes a replayed capture (re-fed every
50 ms) as one more "port".

With no port at all the machine's serial ports are listed instead, one line each
(``{path}  {description}  [{vid}:{pid}]`` and the ``/dev/serial/by-id`` name when there is
one), and the exit code is 2.

Exit 0 if any analyser was found, 2 if none (or no port was given); Ctrl-C exits 130.
``--format json`` prints one JSON document per result (or per listed port).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

import anyio

from ..devices.models import ProtocolKind
from ..discovery import (
    DiscoveryResult,
    LineHint,
    ScanProgress,
    discover_port,
    format_addresses,
    parse_addresses,
    scan_bus,
)
from ..errors import ServomexValidationError
from ..settings import SerialSettings
from ..transport.fake import FakeTransport
from ..transport.listing import SerialPortInfo, list_serial_ports
from .common import (
    PROTOCOL_CHOICES,
    add_device_options,
    add_format_option,
    describe_error,
    emit_json,
    info_json,
    load_fixture,
    positive_float,
    run_async,
    verbose_of,
)

__all__ = [
    "FIXTURE_REFEED_S",
    "address_list",
    "format_hint",
    "format_port_line",
    "list_ports",
    "progress_text",
    "register",
    "run",
]

#: Pause between re-feeds of the whole fixture capture.
FIXTURE_REFEED_S = 0.05

#: The port listing used with no port (tests put a fake listing here).
list_ports: Callable[[], Awaitable[list[SerialPortInfo]]] = list_serial_ports


def address_list(text: str) -> tuple[int, ...]:
    """argparse type of ``--address``: ``5``, ``1,2,30``, ``1-247``, ``1-10,30``."""
    try:
        return parse_addresses(text)
    except ServomexValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def register(subparsers: Any) -> None:
    """Add the ``discover`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "discover",
        help="probe ports for analysers, scan a bus, or list serial ports (read-only)",
        description=(
            "Probe each port with the AUTO ladder and identify what answers; with an address "
            "list or range, scan the bus for every analyser on it. With no port, list the "
            "machine's serial ports."
        ),
        # --address is redefined below: a list here, one address in the other commands.
        conflict_handler="resolve",
    )
    p.add_argument("ports", nargs="*", help="ports to probe (device paths, COM names, URLs)")
    add_device_options(p, port=False, protocol=False)
    p.add_argument(
        "--address",
        type=address_list,
        default=(1,),
        metavar="ADDRESSES",
        help="Modbus slave address(es): 30, 1,2,30, 1-247 or 1-10,30 (default: 1); "
        "more than one scans the bus",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOL_CHOICES,
        default="auto",
        help="wire mode; auto finds it (default: auto); a Modbus mode scans only that framing",
    )
    p.add_argument(
        "--probe-wait",
        dest="probe_wait",
        type=positive_float,
        default=None,
        metavar="S",
        help="how long a bus scan waits for each address's echo (default: the wire time of "
        "the probe and its echo plus 60 ms)",
    )
    add_format_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex discover``."""
    if not args.ports and not args.fixture:
        return run_async(_list_ports, args)
    return run_async(_discover, args)


# ------------------------------------------------------------------------------ no port


async def _list_ports(args: argparse.Namespace) -> int:
    ports = await list_ports()
    for info in ports:
        if args.format == "json":
            emit_json(
                {
                    "path": info.path,
                    "description": info.description,
                    "vid": info.vid,
                    "pid": info.pid,
                    "usb_id": info.usb_id,
                    "serial_number": info.serial_number,
                    "by_id": info.by_id,
                }
            )
        else:
            print(format_port_line(info), flush=True)
    if not ports and args.format == "text":
        print("no serial ports found on this machine", flush=True)
    print(
        "give a port to probe (servomex discover PORT [--address 1-247]), or --fixture CAPTURE",
        file=sys.stderr,
        flush=True,
    )
    return 2


def format_port_line(info: SerialPortInfo) -> str:
    """``{path}  {description}  [{vid}:{pid}]`` and the by-id name when there is one."""
    parts = [info.path, info.description or "(no description)"]
    if info.usb_id is not None:
        parts.append(f"[{info.usb_id}]")
    if info.by_id is not None:
        parts.append(info.by_id)
    return "  ".join(parts)


# ------------------------------------------------------------------------------ progress


def progress_text(progress: ScanProgress) -> str:
    """``{port}: scanning 37/247, found 2 (modbus_rtu)`` or ``{port}: identifying 1/3 …``."""
    if progress.phase == "probing":
        what = f"scanning {progress.done}/{progress.total}, found {progress.found}"
    else:
        what = f"identifying {progress.done}/{progress.total}"
    return f"{progress.port}: {what} ({progress.protocol.value})"


class _Progress:
    """The redrawn progress line on ``stream`` (nothing when it is not a terminal)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream if stream is not None and stream.isatty() else None
        self._shown = False

    def update(self, progress: ScanProgress) -> None:
        if self._stream is None:
            return
        self._stream.write(f"\r{progress_text(progress)}\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._stream is not None and self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


# ------------------------------------------------------------------------------ probing


async def _fixture_result(args: argparse.Namespace) -> DiscoveryResult:
    frames = load_fixture(args.fixture)
    fake = FakeTransport(label=str(args.fixture))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_refeed, fake, b"".join(frames))
        try:
            result = await discover_port(
                fake, address=args.address[0], timeout=args.timeout, frame_period=args.frame_period
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
    if args.fixture and args.protocol not in ("auto", ProtocolKind.CONTINUOUS_ASCII.value):
        raise ServomexValidationError(
            f"--fixture replays a continuous capture; --protocol {args.protocol} cannot be "
            "used with it"
        )
    settings = SerialSettings(port="", baudrate=args.baud) if args.baud is not None else None
    addresses: tuple[int, ...] = args.address
    scan = len(addresses) > 1 or args.protocol != "auto"
    progress = _Progress(sys.stderr)
    recognised = 0
    total = 0
    for port in args.ports:
        if scan:
            try:
                results = await scan_bus(
                    port,
                    addresses=addresses,
                    protocol=None if args.protocol == "auto" else args.protocol,
                    timeout=args.timeout,
                    serial_settings=settings,
                    frame_period=args.frame_period,
                    probe_wait=args.probe_wait,
                    on_progress=progress.update,
                )
            finally:
                progress.clear()
        else:
            results = [
                await discover_port(
                    port,
                    address=addresses[0],
                    timeout=args.timeout,
                    serial_settings=settings,
                    frame_period=args.frame_period,
                )
            ]
        total += 1
        recognised += any(r.ok for r in results)
        for result in results:
            _print_result(result, addresses, args)
    if args.fixture:
        result = await _fixture_result(args)
        total += 1
        recognised += result.ok
        _print_result(result, addresses, args)
    if args.format == "text":
        print(f"\n{recognised}/{total} port(s) recognised", flush=True)
    return 0 if recognised else 2


# ------------------------------------------------------------------------------ output


def format_hint(hint: LineHint) -> str:
    """The hint in CLI words: ``the line carries a continuous broadcast: try --protocol
    continuous``, ``address 30 answers: try --address 30``."""
    if hint.continuous_broadcast:
        return "the line carries a continuous broadcast: try --protocol continuous"
    if not hint.answering:
        return "nothing else answers either"
    spec = ",".join(str(a) for a in hint.answering)
    if len(hint.answering) == 1:
        return f"address {spec} answers: try --address {spec}"
    listed = ", ".join(str(a) for a in hint.answering)
    return f"addresses {listed} answer: try --address {spec}"


def _header(result: DiscoveryResult) -> str:
    assert result.protocol is not None
    if result.is_broadcaster:
        return f"{result.port}: {result.protocol.value} [broadcaster]"
    address = result.address
    if address is None and result.info is not None:
        address = result.info.address
    return f"{result.port}: {result.protocol.value} address {address}"


def _print_result(
    result: DiscoveryResult, addresses: Sequence[int], args: argparse.Namespace
) -> None:
    if args.format == "json":
        hint = result.hint
        emit_json(
            {
                "port": result.port,
                "ok": result.ok,
                "protocol": result.protocol.value if result.protocol is not None else None,
                "broadcaster": result.is_broadcaster,
                "address": result.address,
                "device": info_json(result.info) if result.info is not None else None,
                "error": (
                    describe_error(result.error, verbose=verbose_of(args))
                    if result.error is not None
                    else None
                ),
                "hint": (
                    {
                        "continuous_broadcast": hint.continuous_broadcast,
                        "answering": list(hint.answering),
                        "answering_protocol": (
                            hint.answering_protocol.value if hint.answering_protocol else None
                        ),
                        "text": format_hint(hint),
                    }
                    if hint is not None
                    else None
                ),
            }
        )
        return
    if not result.ok:
        if result.hint is not None:
            plural = "es" if len(addresses) > 1 else ""
            where = f"no device at address{plural} {format_addresses(addresses)}"
            print(f"{result.port}: {where} ({format_hint(result.hint)})", flush=True)
            return
        error = result.error
        why = (
            describe_error(error, verbose=verbose_of(args))
            if error is not None
            else "nothing recognised"
        )
        print(f"{result.port}: no device ({why})", flush=True)
        return
    lines = [_header(result)]
    if result.info is not None:
        for ch in result.info.channels:
            lines.append(f"    {ch.channel.value:<3} {ch.name} ({ch.unit.value})")
    print("\n".join(lines), flush=True)
