"""``servomex capture`` / ``servomex-capture``: record an analyser to a file (docs/cli.md).

Theory of operation
-------------------
``record(analyser, …)`` feeds ``pipe()`` into the sink chosen by ``--format`` or the extension
of ``--out`` (``.csv``, ``.jsonl``, ``.db``/``.sqlite``, ``.parquet``). ``pipe`` writes every
received sample before it stops, even when cancelled, and each batch write is shielded, so
SIGINT (Ctrl-C) or SIGTERM simply cancel the recording: the buffer is flushed, the sink
closed, the final line printed and the command exits 0 — stopping a capture early is normal
use, not a failure. ``--duration 0`` records until Ctrl-C.

**The output file is never corrupted.** Before any I/O :func:`~.recording_files.plan_output`
looks at what ``--out`` already holds: a recording of the same format and schema is appended
to (CSV, JSONL, SQLite; the final line then ends with ``, appended``); a missing or empty file
is created; anything else — another format, an older schema, a Parquet file (Parquet cannot be
appended to), something that is not a recording — is refused with one ``error:`` line naming
``--overwrite``, and the file is left byte for byte as it was. With ``--overwrite`` the old file
is removed only once the analyser is open and the rate accepted, so a failed start keeps it.

**Modbus: a rate the bus can carry.** One poll is one sweep whose wire time the read planner
knows (docs/protocol.md, §9.5, §10). A ``--rate`` above ``1 / cost(sweep)`` can only produce late
ticks, so it is refused with the highest rate that fits: before any I/O when ``--protocol`` names
a Modbus framing (the sweep then covers all ten slots, and the line runs at ``--baud``), and
otherwise as soon as the analyser is open (its own plan over the slots it identified, at the
line's real rate).

**Continuous: every frame once.** The broadcast sets the cadence, so ``--rate`` does not
apply: ``record(…, each_frame=True)`` writes each broadcast frame exactly once (a note says
so when ``--rate`` was given), and ``--duration`` is wall time.

A lost connection does not end the capture: the recorder backs off (0.5 s … 30 s) and the
analyser is reopened. The analyser is held by a dedicated task so that it is entered and
exited in the same task whichever task asks for a reopen (structured concurrency; a
continuous Analyzer owns a receiver task group).

While running, a one-line progress display goes to stderr when stderr is a terminal (elapsed /
duration, samples written, late ticks, disconnects); ``--quiet`` hides it. The final line,
``captured {n} samples to {out} in {s:.2f}s``, goes to stdout; when something was lost it is
followed by `` ({rate:.2f} Hz, {late} late, {k} disconnects totalling {t:.1f}s)``: the batches
per second achieved, the recorder's late ticks, and the outages with their total length, so
an unattended run that fell short says so after the fact. ``--name`` sets the ``device``
column (default: the port).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc

from ..devices.analyzer import Analyzer
from ..devices.models import ChannelId, ProtocolKind, Sample
from ..errors import ServomexValidationError
from ..planner import PlannedRead, ReadPlanner, WireModel
from ..settings import SerialSettings
from ..sinks import CsvSink, JsonlSink, ParquetSink, SqliteSink, pipe
from ..sinks.base import ReportsOpen, Sink
from ..streaming.recorder import AcquisitionSummary, record
from .common import (
    add_device_options,
    non_negative_float,
    open_analyzer,
    positive_float,
    run_async,
)
from .recording_files import OutputAction, OutputPlan, plan_output, remove_recording

__all__ = [
    "DEFAULT_RATE_HZ",
    "FORMATS",
    "CountingSink",
    "check_sweep_rate",
    "final_line",
    "make_sink",
    "max_rate_text",
    "register",
    "run",
    "run_capture",
    "sink_format",
]

#: ``--format`` value → file extensions that imply it.
FORMATS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "jsonl": (".jsonl",),
    "sqlite": (".db", ".sqlite"),
    "parquet": (".parquet",),
}
#: ``--rate`` when none is given.
DEFAULT_RATE_HZ: Final = 1.0
#: The achieved rate counts as "as asked" down to this fraction of ``--rate``. The ticks of a
#: fixed-duration run span one period less than the run, so a healthy run is at or above it.
RATE_TOLERANCE: Final = 0.95
_PROGRESS_PERIOD_S = 0.25
_MODBUS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)


def register(subparsers: Any) -> None:
    """Add the ``capture`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "capture",
        help="record samples to CSV, JSONL, SQLite or Parquet",
        description=(
            "Record the analyser into --out for --duration seconds (0 = until Ctrl-C): Modbus "
            "analysers are polled at --rate Hz, continuous broadcasts are written frame by "
            "frame. An existing --out is appended to only when it holds a recording of the "
            "same format; anything else needs --overwrite. Ctrl-C or SIGTERM stops early, "
            "keeping everything received."
        ),
    )
    add_device_options(p)
    p.add_argument("--out", required=True, help="output file (.csv, .jsonl, .db/.sqlite, .parquet)")
    p.add_argument(
        "--format", choices=tuple(FORMATS), default=None, help="file format (default: from --out)"
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="Modbus sweeps per second (1.0); a continuous broadcast sets its own cadence",
    )
    p.add_argument(
        "--duration",
        type=non_negative_float,
        default=5.0,
        help="seconds to record, 0 = until Ctrl-C (5.0)",
    )
    p.add_argument("--name", default=None, help="the device column (default: the port)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out instead of appending to it or refusing it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(handler=run)


def sink_format(out: str, explicit: str | None) -> str:
    """The sink format: ``explicit``, else from the extension of ``out``.

    Raises:
        ServomexValidationError: the extension names no known format.
    """
    if explicit is not None:
        return explicit
    suffix = Path(out).suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
    raise ServomexValidationError(
        f"cannot tell the format of {out!r} from its extension (known: {known}); "
        "pass --format csv|jsonl|sqlite|parquet"
    )


def make_sink(fmt: str, out: str, *, overwrite: bool) -> Sink:
    """A new (unopened) sink writing ``out`` in format ``fmt``; with ``overwrite`` an existing
    file is replaced (removed first for JSONL and SQLite, with SQLite's side files; CSV and
    Parquet replace it themselves). Without it CSV, JSONL and SQLite append — call
    :func:`~.recording_files.plan_output` first: it is what makes appending safe."""
    path = Path(out)
    if fmt == "csv":
        return CsvSink(path, overwrite=overwrite)
    if fmt == "parquet":
        return ParquetSink(path, overwrite=overwrite, journal=True)
    if overwrite:
        remove_recording(path)
    if fmt == "jsonl":
        return JsonlSink(path)
    if fmt == "sqlite":
        return SqliteSink(path)
    raise ServomexValidationError(f"unknown capture format {fmt!r}")


class CountingSink:
    """Wraps a sink and counts the samples whose ``write_many`` returned; ``device``, when
    given, replaces the device label of every sample written (``--name``)."""

    def __init__(self, sink: Sink, *, device: str | None = None) -> None:
        self.sink = sink
        self.device = device
        self.written = 0

    @property
    def is_open(self) -> bool:
        return self.sink.is_open if isinstance(self.sink, ReportsOpen) else True

    async def open(self) -> None:
        await self.sink.open()

    async def write_many(self, samples: Sequence[Sample]) -> None:
        if self.device is not None:
            samples = [dataclasses.replace(s, device=self.device) for s in samples]
        await self.sink.write_many(samples)
        self.written += len(samples)

    async def close(self) -> None:
        await self.sink.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Holder:
    """Keeps the analyser open in a task of its own; :meth:`open` (re)opens it from any task."""

    def __init__(self, tg: anyio.abc.TaskGroup, args: argparse.Namespace) -> None:
        self._tg = tg
        self._args = args
        self._scope: anyio.CancelScope | None = None
        self._closed: anyio.Event | None = None

    async def _hold(self, *, task_status: anyio.abc.TaskStatus[Analyzer]) -> None:
        closed = anyio.Event()
        self._closed = closed
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with open_analyzer(self._args, identify=True) as anz:
                    task_status.started(anz)
                    await anyio.sleep_forever()
        finally:
            closed.set()

    async def open(self) -> Analyzer:
        await self.close()
        anz: Analyzer = await self._tg.start(self._hold)
        return anz

    async def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self._closed is not None:
            with anyio.CancelScope(shield=True):
                await self._closed.wait()
        self._scope = None
        self._closed = None


# ------------------------------------------------------------------------------ bus rate


def max_rate_text(cost_s: float) -> str:
    """The highest rate a sweep of ``cost_s`` seconds allows, rounded *down* to two
    significant digits (3.23 → ``3.2``, 0.337 → ``0.33``, 12.7 → ``12``)."""
    rate = 1.0 / cost_s
    digits = max(0, 1 - math.floor(math.log10(rate)))
    scale = 10**digits
    return f"{math.floor(rate * scale + 1e-9) / scale:.{digits}f}"


def check_sweep_rate(rate_hz: float, planner: ReadPlanner, reads: Sequence[PlannedRead]) -> None:
    """Refuse a rate whose sweep (``reads``, as ``planner`` costs them, the analyser status
    included) costs more wire time than one period.

    Raises:
        ServomexValidationError: ``cost > 1/rate_hz``; the message gives the framing, baud
            rate, transactions, cost and the highest ``--rate`` that fits.
    """
    cost = planner.cost(reads)
    if cost * rate_hz <= 1.0:
        return
    model = planner.model
    raise ServomexValidationError(
        f"--rate {rate_hz:g} is more than {model.framing.value} at {model.baudrate} baud can "
        f"carry for this sweep ({len(reads)} transactions, ≈ {cost:.2f} s): use --rate "
        f"{max_rate_text(cost)} or less"
    )


def _check_rate_before_io(args: argparse.Namespace, rate_hz: float) -> None:
    """With a Modbus ``--protocol`` the sweep is known before the port is touched: all ten
    slots, whole blocks (the populated ones are not known yet, nor their names) at ``--baud``."""
    if args.fixture or args.protocol not in {p.value for p in _MODBUS}:
        return
    settings = SerialSettings(port=args.port or "", baudrate=args.baud or 19200)
    planner = ReadPlanner(WireModel.from_settings(settings, args.protocol))
    check_sweep_rate(rate_hz, planner, planner.plan(tuple(ChannelId)))


def _check_rate_of(anz: Analyzer, rate_hz: float) -> None:
    """The same check on an open Modbus analyser: the reads its next sweep makes (value-only
    spans of the slots identify found populated), costed by its own planner with the line's
    current silence."""
    from ..clients.modbus import ModbusClient  # lazily: only Modbus captures need anymodbus

    client = anz.client
    if isinstance(client, ModbusClient):
        check_sweep_rate(rate_hz, client.read_planner, client.sweep_plan())


# ------------------------------------------------------------------------------ running


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex capture`` (Ctrl-C before the recording starts exits 0 too)."""
    return run_async(run_capture, args, interrupted=0)


def final_line(
    written: int,
    out: str,
    elapsed_s: float,
    summary: AcquisitionSummary | None,
    *,
    expected_rate_hz: float | None,
    appended: bool = False,
) -> str:
    """``captured {n} samples to {out} in {s:.2f}s``, then `` ({rate:.2f} Hz, {late} late,
    {k} disconnects totalling {t:.1f}s)`` when the achieved rate (batches / elapsed) fell
    below ``expected_rate_hz`` (None: no expectation, a broadcast), or any tick was late, or
    the link was lost; then ``, appended`` when the rows went into an existing recording."""
    text = f"captured {written} samples to {out} in {elapsed_s:.2f}s"
    if summary is not None:
        achieved = summary.samples_emitted / elapsed_s if elapsed_s > 0 else 0.0
        late = summary.samples_late
        disconnects = summary.disconnects
        outage = summary.outage_s
        slow = expected_rate_hz is not None and achieved < expected_rate_hz * RATE_TOLERANCE
        if slow or late or disconnects or outage > 0:
            text += (
                f" ({achieved:.2f} Hz, {late} late, {disconnects} disconnects "
                f"totalling {outage:.1f}s)"
            )
    if appended:
        text += ", appended"
    return text


def _progress_text(
    elapsed: float, duration: float | None, written: int, summary: AcquisitionSummary
) -> str:
    total = f"/{duration:.1f}" if duration is not None else ""
    return (
        f"elapsed {elapsed:.1f}{total}s  samples {written}  late {summary.samples_late}  "
        f"disconnects {summary.disconnects}"
    )


async def _progress(
    started: float, duration: float | None, sink: CountingSink, summary: AcquisitionSummary
) -> None:
    try:
        while True:
            text = _progress_text(anyio.current_time() - started, duration, sink.written, summary)
            sys.stderr.write(f"\r{text}\x1b[K")
            sys.stderr.flush()
            await anyio.sleep(_PROGRESS_PERIOD_S)
    finally:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


@dataclasses.dataclass(slots=True)
class _Outcome:
    """What the final line reports."""

    sink: CountingSink | None = None
    summary: AcquisitionSummary | None = None
    expected_rate_hz: float | None = None
    started: float = 0.0
    ended: float | None = None


async def run_capture(args: argparse.Namespace) -> int:
    """``servomex capture`` as a coroutine: checks, records, prints the final line; 0.

    Raises:
        ServomexError: a refused ``--out`` or ``--rate``, or what opening or recording raised.
    """
    fmt = sink_format(args.out, args.format)
    duration = None if args.duration == 0 else args.duration
    if duration is not None and not math.isfinite(duration):
        raise ServomexValidationError(f"--duration must be finite, got {duration}")
    plan = plan_output(args.out, fmt, overwrite=args.overwrite)
    rate = DEFAULT_RATE_HZ if args.rate is None else args.rate
    _check_rate_before_io(args, rate)
    outcome = _Outcome(started=anyio.current_time())
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        holder = _Holder(tg, args)
        try:
            await _record(args, fmt, plan, rate, duration, holder, tg, outcome)
        finally:
            with anyio.CancelScope(shield=True):
                if outcome.sink is not None:
                    await outcome.sink.close()
                await holder.close()
            tg.cancel_scope.cancel()
    ended = outcome.ended if outcome.ended is not None else anyio.current_time()
    written = outcome.sink.written if outcome.sink is not None else 0
    line = final_line(
        written,
        args.out,
        ended - outcome.started,
        outcome.summary,
        expected_rate_hz=outcome.expected_rate_hz,
        appended=plan.action is OutputAction.APPEND and outcome.sink is not None,
    )
    print(line, flush=True)
    return 0


async def _record(
    args: argparse.Namespace,
    fmt: str,
    plan: OutputPlan,
    rate: float,
    duration: float | None,
    holder: _Holder,
    tg: anyio.abc.TaskGroup,
    outcome: _Outcome,
) -> None:
    anz = await holder.open()
    continuous = anz.protocol is ProtocolKind.CONTINUOUS_ASCII
    if not continuous:
        _check_rate_of(anz, rate)  # right after AUTO (and identify) found the mode
        outcome.expected_rate_hz = rate
    elif args.rate is not None:
        print(
            "note: --rate is ignored for a continuous analyser: the broadcast sets the "
            "cadence and every frame is written once",
            file=sys.stderr,
            flush=True,
        )
    if plan.action is OutputAction.REPLACE:
        # Only now, with the analyser open and the rate accepted: a failed start keeps the file.
        remove_recording(args.out)
    sink = CountingSink(
        make_sink(fmt, args.out, overwrite=plan.action is not OutputAction.APPEND),
        device=args.name,
    )
    await sink.open()
    outcome.sink = sink
    outcome.started = anyio.current_time()
    show_progress = not args.quiet and sys.stderr is not None and sys.stderr.isatty()
    async with record(
        anz,
        rate_hz=rate,
        duration=duration,
        auto_reconnect=True,
        reconnect_factory=holder.open,
        # A broadcaster: one batch per frame, every frame once (duration is wall time).
        each_frame=continuous,
    ) as recording:
        outcome.summary = recording.summary
        if show_progress:
            tg.start_soon(_progress, outcome.started, duration, sink, recording.summary)
        try:
            await pipe(recording.stream, sink)
        finally:
            outcome.ended = anyio.current_time()


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    signums = [signal.SIGINT]
    if hasattr(signal, "SIGTERM"):
        signums.append(signal.SIGTERM)
    try:
        receiver = anyio.open_signal_receiver(*signums)
    except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
        return
    with receiver as signals:
        async for _ in signals:
            scope.cancel()
            return
