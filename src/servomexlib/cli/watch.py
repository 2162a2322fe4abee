"""``servomex watch``: a live terminal table of one analyser (api.md §16.4).

On a terminal the table (rich) is redrawn on every continuous frame or Modbus poll (at
``--rate`` Hz): a header with port, protocol, address, analyser fault/maintenance, the four
calibration-group phases, the time of the last update and the dropped-frame count, then one
row per channel — id, name, value, unit, the flags ``F M C W 1 2 3 4`` (``-`` when clear) and a
sparkline (``▁▂▃▄▅▆▇█``) of the last ``--history`` values. ``q`` or Ctrl-C exits 0.

When stdout is not a terminal, each update prints the ``read`` block instead (the frame line
and one line per reading). ``--count N`` stops after N updates (default 0: until stopped).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..devices.analyzer import Analyzer
from ..devices.models import ChannelId, Frame, ProtocolKind, Reading
from .common import (
    add_device_options,
    analyzer_address,
    count,
    open_analyzer,
    positive_float,
    read_block,
    run_async,
    transport_label,
    value_text,
)

__all__ = ["SPARK_CHARS", "WatchState", "flags_text", "register", "render", "run", "sparkline"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"


def register(subparsers: Any) -> None:
    """Add the ``watch`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "watch",
        help="live table of every channel with sparklines (q or Ctrl-C to quit)",
        description="Live table of one analyser, redrawn on every frame/poll; q or Ctrl-C quits.",
    )
    add_device_options(p)
    p.add_argument(
        "--rate",
        type=positive_float,
        default=1.0,
        help="Modbus polls per second (default: 1.0; continuous: every frame)",
    )
    p.add_argument(
        "--history", type=count, default=60, help="values kept per sparkline (default: 60)"
    )
    p.add_argument(
        "--count",
        type=count,
        default=0,
        help="stop after this many updates (default: 0 = until q/Ctrl-C)",
    )
    p.set_defaults(handler=run)


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per value, scaled between the min and max of the finite values;
    a None value is a space; a flat series is all ``▁``."""
    finite = [v for v in values if v is not None]
    if not finite:
        return " " * len(values)
    lo, hi = min(finite), max(finite)
    span = hi - lo
    top = len(SPARK_CHARS) - 1
    chars = []
    for v in values:
        if v is None:
            chars.append(" ")
        elif span <= 0:
            chars.append(SPARK_CHARS[0])
        else:
            chars.append(SPARK_CHARS[round((v - lo) / span * top)])
    return "".join(chars)


def flags_text(reading: Reading) -> str:
    """``F M C W 1 2 3 4`` with ``-`` for every flag that is clear."""
    s = reading.status
    marks = [
        "F" if s.fault else "-",
        "M" if s.maintenance else "-",
        "C" if s.calibrating else "-",
        "W" if s.warming_up else "-",
        *(str(i) if on else "-" for i, on in enumerate(s.alarms, start=1)),
    ]
    return " ".join(marks)


@dataclass(slots=True)
class WatchState:
    """What the table shows: the analyser's identity, the latest frame and value histories."""

    port: str
    protocol: ProtocolKind
    address: int | None
    history: int = 60
    frame: Frame | None = None
    dropped: int = 0
    updates: int = 0
    values: dict[ChannelId, collections.deque[float | None]] = field(default_factory=dict)

    def update(self, frame: Frame, dropped: int = 0) -> None:
        self.frame = frame
        self.dropped = dropped
        self.updates += 1
        for reading in frame.readings:
            values = self.values.get(reading.channel)
            if values is None:
                values = self.values[reading.channel] = collections.deque(
                    maxlen=max(1, self.history)
                )
            values.append(reading.value)


def render(state: WatchState) -> Any:
    """The rich renderable of ``state`` (a Table with the header as its title)."""
    from rich.table import Table

    frame = state.frame
    address = "-" if state.address is None else str(state.address)
    if frame is None:
        status = "analyser --  cal -  last update (waiting)"
    else:
        a = frame.analyser
        fm = ("F" if a.fault else "-") + ("M" if a.maintenance else "-")
        cal = " ".join(f"{g.group}:{g.phase.value}" for g in a.cal_groups)
        stamp = frame.received_at.astimezone().strftime("%H:%M:%S")
        status = f"analyser {fm}  cal {cal}  last update {stamp}"
    title = (
        f"{state.port}  protocol {state.protocol.value}  address {address}\n"
        f"{status}  dropped {state.dropped}"
    )
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ch")
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("F M C W 1 2 3 4")
    table.add_column("trend", no_wrap=True)
    if frame is not None:
        for r in frame.readings:
            style = None if r.status.ok else "bold red"
            table.add_row(
                r.channel.value,
                r.name or "(unlabelled)",
                value_text(r.value),
                r.unit.value,
                flags_text(r),
                sparkline(list(state.values.get(r.channel, ()))),
                style=style,
            )
    return table


async def _frames(anz: Analyzer, rate_hz: float) -> AsyncIterator[Frame]:
    """Every continuous frame, or one Modbus poll per ``1/rate_hz`` s (absolute schedule)."""
    if anz.protocol is ProtocolKind.CONTINUOUS_ASCII:
        yield await anz.poll()
        while True:
            yield await anz.poll(wait_fresh=True)
    period = 1.0 / rate_hz
    target = anyio.current_time()
    while True:
        yield await anz.poll()
        target += period
        now = anyio.current_time()
        if target < now:  # a slow poll: start again from now rather than firing a burst
            target = now
        await anyio.sleep_until(target)


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[bool]:
    """Put the terminal on ``fd`` in cbreak mode (keys arrive unbuffered); True if it worked."""
    try:
        import termios
        import tty
    except ImportError:  # Windows
        yield False
        return
    try:
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    except (termios.error, OSError):
        yield False
        return
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _quit_on_key(scope: anyio.CancelScope, fd: int) -> None:
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            scope.cancel()
            return


async def _quit_on_signal(scope: anyio.CancelScope) -> None:
    signums = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    try:
        receiver = anyio.open_signal_receiver(*signums)
    except NotImplementedError:
        return
    with receiver as signals:
        async for _ in signals:
            scope.cancel()
            return


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex watch`` (q, Ctrl-C and SIGTERM exit 0)."""
    return run_async(_watch, args, interrupted=0)


async def _watch(args: argparse.Namespace) -> int:
    tty_out = sys.stdout is not None and sys.stdout.isatty()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_quit_on_signal, tg.cancel_scope)
        async with open_analyzer(args, identify=True) as anz:
            state = WatchState(
                port=transport_label(anz),
                protocol=anz.protocol,
                address=analyzer_address(anz),
                history=args.history,
            )
            if tty_out:
                await _watch_tty(anz, state, args)
            else:
                async for frame in _frames(anz, args.rate):
                    state.update(frame, anz.dropped_frames)
                    print("\n".join(read_block(frame)), flush=True)
                    if args.count and state.updates >= args.count:
                        break
        tg.cancel_scope.cancel()
    return 0


async def _watch_tty(anz: Analyzer, state: WatchState, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    stdin_fd: int | None = None
    if sys.stdin is not None and sys.stdin.isatty():
        stdin_fd = sys.stdin.fileno()
    with (
        _cbreak(stdin_fd) if stdin_fd is not None else contextlib.nullcontext(False) as keys,
        Live(render(state), console=console, auto_refresh=False) as live,
        anyio.CancelScope() as inner,
    ):
        async with anyio.create_task_group() as keys_tg:
            if keys and stdin_fd is not None:
                keys_tg.start_soon(_quit_on_key, inner, stdin_fd)
            async for frame in _frames(anz, args.rate):
                state.update(frame, anz.dropped_frames)
                live.update(render(state), refresh=True)
                if args.count and state.updates >= args.count:
                    break
            keys_tg.cancel_scope.cancel()
