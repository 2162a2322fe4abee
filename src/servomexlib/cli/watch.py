"""``servomex watch``: a live terminal table of one analyser (docs/cli.md).

On a terminal the table (rich) is redrawn on every continuous frame or Modbus poll (at
``--rate`` Hz): a header with port, protocol, address, analyser fault/maintenance, the four
calibration-group phases, the time of the last update and the dropped-frame count, then one
row per channel — id, name, value, unit, the flags ``F M C W 1 2 3 4`` (``-`` when clear) and a
sparkline (``▁▂▃▄▅▆▇█``) of the last ``--history`` values. ``q`` or Ctrl-C exits 0.

A value the analyser did not give shows its state (``over_range``, ``invalid``) and the row
is red, as for any reading that is not ok; the sparkline has a gap there.

A lost link does not end the watch (as it does not end a capture): a connection error (port
gone, end of stream) or a timeout (no reply, no broadcast) after the first successful open
adds ``link lost 3.2 s, reconnecting…`` to the header, counting up, and the port is reopened
after the backoff capture uses (0.5, 1, 2, 5, 10, 30 s, …; reset by a successful open). The
table keeps its histories across the outage. A failure of the first open is an error (one
``error:`` line, exit 1): there is nothing to watch yet.

When stdout is not a terminal, each update prints the ``read`` block instead (the frame line
and one line per reading), and an outage prints ``watch: link lost (…); reconnecting…`` and
``watch: link back after 5.2 s`` on stderr. ``--count N`` stops after N updates (default 0:
until stopped).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import sys
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..devices.analyzer import Analyzer
from ..devices.models import ChannelId, Frame, ProtocolKind, Reading
from ..errors import ServomexTimeoutError, ServomexTransportError, unwrap_group
from ..streaming import recorder
from .common import (
    add_device_options,
    analyzer_address,
    connection_lost,
    count,
    describe_error,
    open_analyzer,
    positive_float,
    read_block,
    reading_ok,
    reading_value_text,
    run_async,
    transport_label,
)

__all__ = ["SPARK_CHARS", "WatchState", "flags_text", "register", "render", "run", "sparkline"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"
#: How often the header is redrawn while waiting to reconnect (the outage time counts up).
_REDRAW_S = 0.25


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
    #: Frames dropped by analysers of earlier connections (each reconnect counts from 0).
    dropped_base: int = 0
    #: anyio time the link was lost (None while connected), why, and for how long so far.
    lost_at: float | None = None
    lost_reason: str | None = None
    outage_s: float | None = None
    #: Length of the last outage once the link is back.
    last_outage_s: float | None = None

    def update(self, frame: Frame, dropped: int = 0) -> None:
        self.frame = frame
        self.dropped = self.dropped_base + dropped
        self.updates += 1
        for reading in frame.readings:
            values = self.values.get(reading.channel)
            if values is None:
                values = self.values[reading.channel] = collections.deque(
                    maxlen=max(1, self.history)
                )
            values.append(reading.value)

    def link_back(self, now: float | None = None) -> None:
        """The analyser is open again (at anyio time ``now``): the outage is over."""
        if now is not None and self.lost_at is not None:
            self.outage_s = now - self.lost_at
        self.last_outage_s = self.outage_s
        self.lost_at = None
        self.lost_reason = None
        self.outage_s = None


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
    if state.lost_at is not None:
        title += f"\nlink lost {state.outage_s or 0.0:.1f} s, reconnecting…"
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ch")
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("F M C W 1 2 3 4")
    table.add_column("trend", no_wrap=True)
    if frame is not None:
        for r in frame.readings:
            style = None if reading_ok(r) else "bold red"
            table.add_row(
                r.channel.value,
                r.name or "(unlabelled)",
                reading_value_text(r),
                r.unit.value,
                flags_text(r),
                sparkline(list(state.values.get(r.channel, ()))),
                style=style,
            )
    return table


async def _frames(anz: Analyzer, rate_hz: float) -> AsyncGenerator[Frame]:
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


def _link_lost(exc: BaseException) -> ServomexTransportError | None:
    """The lost-link error in ``exc``: a connection error (port gone, EOF) or a timeout (the
    analyser stopped answering or broadcasting); bare or the only leaf of exception groups."""
    lost = connection_lost(exc)
    if lost is not None:
        return lost
    leaf = unwrap_group(exc)
    return leaf if isinstance(leaf, ServomexTimeoutError) else None


def _backoff_s(step: int) -> float:
    # Read from the recorder module at call time: capture and watch share one schedule.
    steps = recorder.BACKOFF_STEPS_S
    return steps[min(step, len(steps) - 1)]


Show = Callable[[Frame | None], None]


async def _follow(
    args: argparse.Namespace,
    show: Show,
    *,
    on_open: Callable[[Analyzer], WatchState],
) -> None:
    """Open the analyser and feed every frame to ``show`` until ``--count`` updates; when the
    link is lost, mark the outage in the state, back off (0.5, 1, 2, 5, 10, 30 s …, as
    capture does) and reopen. A failure of the very first open is an error."""
    state: WatchState | None = None
    step = 0
    while True:
        try:
            async with (
                open_analyzer(args, identify=True) as anz,
                # Closed here, in this task, however the loop ends (trio requires it).
                contextlib.aclosing(_frames(anz, args.rate)) as frames,
            ):
                state = on_open(anz)
                step = 0
                show(None)
                async for frame in frames:
                    state.update(frame, anz.dropped_frames)
                    show(frame)
                    if args.count and state.updates >= args.count:
                        return
        except Exception as exc:
            lost = _link_lost(exc)
            if lost is None or state is None:
                raise
            if state.lost_at is None:
                state.lost_at = anyio.current_time()
                state.lost_reason = describe_error(lost)
        assert state is not None
        assert state.lost_at is not None
        # Sleep the backoff step, redrawing the header so the outage time keeps counting.
        wake = anyio.current_time() + _backoff_s(step)
        step += 1
        while True:
            state.outage_s = anyio.current_time() - state.lost_at
            show(None)
            now = anyio.current_time()
            if now >= wake:
                break
            await anyio.sleep(min(_REDRAW_S, wake - now))


async def _watch(args: argparse.Namespace) -> int:
    tty_out = sys.stdout is not None and sys.stdout.isatty()
    states: list[WatchState] = []

    def on_open(anz: Analyzer) -> WatchState:
        if states:
            state = states[0]
            state.link_back(anyio.current_time())
        else:
            state = WatchState(
                port=transport_label(anz),
                protocol=anz.protocol,
                address=analyzer_address(anz),
                history=args.history,
            )
            states.append(state)
        state.dropped_base = state.dropped
        return state

    async with anyio.create_task_group() as tg:
        tg.start_soon(_quit_on_signal, tg.cancel_scope)
        if tty_out:
            await _watch_tty(args, states, on_open)
        else:
            await _follow(args, _text_view(states), on_open=on_open)
        tg.cancel_scope.cancel()
    return 0


def _text_view(states: list[WatchState]) -> Show:
    """Not a terminal: the read block per update on stdout; outages as one line each on
    stderr (when the link is lost and when it is back)."""
    reported: list[bool] = [False]

    def show(frame: Frame | None) -> None:
        state = states[0] if states else None
        if state is None:
            return
        if state.lost_at is not None and not reported[0]:
            reported[0] = True
            print(
                f"watch: link lost ({state.lost_reason}); reconnecting…",
                file=sys.stderr,
                flush=True,
            )
        if state.lost_at is None and reported[0] and state.last_outage_s is not None:
            reported[0] = False
            print(
                f"watch: link back after {state.last_outage_s:.1f} s", file=sys.stderr, flush=True
            )
        if frame is not None:
            print("\n".join(read_block(frame)), flush=True)

    return show


async def _watch_tty(
    args: argparse.Namespace,
    states: list[WatchState],
    on_open: Callable[[Analyzer], WatchState],
) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    stdin_fd: int | None = None
    if sys.stdin is not None and sys.stdin.isatty():
        stdin_fd = sys.stdin.fileno()
    with (
        _cbreak(stdin_fd) if stdin_fd is not None else contextlib.nullcontext(False) as keys,
        Live(Text("connecting…"), console=console, auto_refresh=False) as live,
        anyio.CancelScope() as inner,
    ):

        def show(frame: Frame | None) -> None:
            if states:
                live.update(render(states[0]), refresh=True)

        async with anyio.create_task_group() as keys_tg:
            if keys and stdin_fd is not None:
                keys_tg.start_soon(_quit_on_key, inner, stdin_fd)
            await _follow(args, show, on_open=on_open)
            keys_tg.cancel_scope.cancel()
