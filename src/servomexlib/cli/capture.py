"""``servomex capture`` / ``servomex-capture``: record an analyser to a file (api.md §13, §16.4).

Theory of operation
-------------------
``record(analyser, rate_hz=--rate, duration=--duration)`` feeds ``pipe()`` into the sink chosen
by ``--format`` or the extension of ``--out`` (``.csv``, ``.jsonl``, ``.db``/``.sqlite``,
``.parquet``). ``pipe`` writes every received sample before it stops, even when cancelled, and
each batch write is shielded, so SIGINT (Ctrl-C) or SIGTERM simply cancel the recording: the
buffer is flushed, the sink closed, the final line printed and the command exits 0 — stopping a
capture early is normal use, not a failure.

A lost connection does not end the capture: the recorder backs off (0.5 s … 30 s) and the
analyser is reopened; each such event counts in ``disconnects``. The analyser is held by a
dedicated task so that it is entered and exited in the same task whichever task asks for a
reopen (structured concurrency; a continuous Analyzer owns a receiver task group).

While running, a one-line progress display goes to stderr when stderr is a terminal (elapsed /
duration, samples written, late ticks, disconnects); ``--quiet`` hides it. The final line,
``captured {n} samples to {out} in {s:.2f}s``, goes to stdout. ``--duration 0`` records until
Ctrl-C. Existing files: CSV appends when the header matches (else an error suggesting
``--overwrite``), JSONL and SQLite append, Parquet refuses; ``--overwrite`` replaces the file.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from ..devices.analyzer import Analyzer
from ..devices.models import Sample
from ..errors import ServomexValidationError
from ..sinks import CsvSink, JsonlSink, ParquetSink, SqliteSink, pipe
from ..sinks.base import Sink
from ..streaming.recorder import AcquisitionSummary, record
from .common import (
    add_device_options,
    non_negative_float,
    open_analyzer,
    positive_float,
    run_async,
)

__all__ = ["FORMATS", "CountingSink", "make_sink", "register", "run", "sink_format"]

#: ``--format`` value → file extensions that imply it.
FORMATS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "jsonl": (".jsonl",),
    "sqlite": (".db", ".sqlite"),
    "parquet": (".parquet",),
}
_PROGRESS_PERIOD_S = 0.25


def register(subparsers: Any) -> None:
    """Add the ``capture`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "capture",
        help="record samples to CSV, JSONL, SQLite or Parquet",
        description=(
            "Poll the analyser at --rate Hz for --duration seconds (0 = until Ctrl-C) and store "
            "every sample in --out. Ctrl-C or SIGTERM stops early, keeping everything received."
        ),
    )
    add_device_options(p)
    p.add_argument("--out", required=True, help="output file (.csv, .jsonl, .db/.sqlite, .parquet)")
    p.add_argument(
        "--format", choices=tuple(FORMATS), default=None, help="file format (default: from --out)"
    )
    p.add_argument("--rate", type=positive_float, default=1.0, help="ticks per second (1.0)")
    p.add_argument(
        "--duration",
        type=non_negative_float,
        default=5.0,
        help="seconds to record, 0 = until Ctrl-C (5.0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
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
    JSONL or SQLite file is removed first (CSV and Parquet replace it themselves)."""
    path = Path(out)
    if fmt == "csv":
        return CsvSink(path, overwrite=overwrite)
    if fmt == "parquet":
        return ParquetSink(path, overwrite=overwrite, journal=True)
    if overwrite:
        extras = ("-wal", "-shm", "-journal") if fmt == "sqlite" else ()
        for name in (path, *(path.with_name(path.name + e) for e in extras)):
            name.unlink(missing_ok=True)
    if fmt == "jsonl":
        return JsonlSink(path)
    if fmt == "sqlite":
        return SqliteSink(path)
    raise ServomexValidationError(f"unknown capture format {fmt!r}")


class CountingSink:
    """Wraps a sink and counts the samples whose ``write_many`` returned."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.written = 0

    @property
    def is_open(self) -> bool:
        return bool(getattr(self.sink, "is_open", True))

    async def open(self) -> None:
        await self.sink.open()

    async def write_many(self, samples: Sequence[Sample]) -> None:
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


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex capture`` (Ctrl-C before the recording starts exits 0 too)."""
    return run_async(_capture, args, interrupted=0)


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


async def _capture(args: argparse.Namespace) -> int:
    fmt = sink_format(args.out, args.format)
    duration = None if args.duration == 0 else args.duration
    if duration is not None and not math.isfinite(duration):
        raise ServomexValidationError(f"--duration must be finite, got {duration}")
    sink = CountingSink(make_sink(fmt, args.out, overwrite=args.overwrite))
    show_progress = not args.quiet and sys.stderr is not None and sys.stderr.isatty()
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        holder = _Holder(tg, args)
        try:
            anz = await holder.open()
            await sink.open()
            started = anyio.current_time()
            async with record(
                anz,
                rate_hz=args.rate,
                duration=duration,
                auto_reconnect=True,
                reconnect_factory=holder.open,
            ) as recording:
                if show_progress:
                    tg.start_soon(_progress, started, duration, sink, recording.summary)
                await pipe(recording.stream, sink)
        finally:
            with anyio.CancelScope(shield=True):
                await sink.close()
                await holder.close()
            tg.cancel_scope.cancel()
    elapsed = anyio.current_time() - started
    print(f"captured {sink.written} samples to {args.out} in {elapsed:.2f}s", flush=True)
    return 0


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
