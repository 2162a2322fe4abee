"""``servomex plot``: a figure of a recording that does not mislead (api.md §16.4; ``plot`` extra).

Theory of operation
-------------------
**Reading.** A CSV, JSONL, SQLite (``samples`` table) or Parquet recording written by
``servomex capture`` (or any sink) is read row by row into one :class:`Series` per
(device, channel, unit). A row is a *point* when it names a channel, has no ``error``, holds a
finite ``value`` and — when the recording has the 22nd ``value_state`` column — its state is
``ok``. Every other row is a *break*: an over-range / invalid / blank reading breaks its own
channel's line, and an error row (``channel`` empty) breaks every line of its device. An older
21-column recording simply has no ``value_state``; its value decides. Every row must carry a
``received_at`` with a UTC offset (the sinks always write one); a missing, unparsable or naive
timestamp, or a ``value`` that is not a number, refuses the whole file with
:class:`~servomexlib.ServomexValidationError` naming the file and row — the plot never guesses.

**Lines with gaps.** :func:`broken_line` merges a series' points and breaks in time order and
inserts NaN (where matplotlib lifts the pen) at every break and wherever the step to the next
sample exceeds :data:`GAP_FACTOR` × the series' own median step, so an outage, a failed poll or
an over-range reading is a visible hole, never a straight line drawn across missing data.

**Layout.** :func:`plan_layout` decides the panels; both the drawing and the tests use it.

* A *constant* series (every point the same value, e.g. an unconnected 0.0 mA input) gets no
  y-axis of its own: all constant series share one compact strip at the bottom, one row each,
  labelled ``E1 = 0 mA``, drawn with the same gaps so outages stay visible.
* The other series are grouped greedily in first-seen order: a series joins a panel of the same
  unit only if the panel's combined data range stays within :data:`GROUP_SPAN_FACTOR` × the own
  range of every member, i.e. every line keeps at least a third of its panel's height. O₂ at
  20 % and CO at 0.08 % never share an axis; two analysers reading the same gas do. Each
  panel's y-limits are its data range padded by 5 %, without matplotlib's offset notation.

**Time axis.** x positions are the true instants; tick labels are ``HH:MM:SS`` (with as many
decimals as sub-second ticks need, and the date on every tick when the recording spans more
than one calendar day) in UTC, or in the machine's local zone with ``--local-time``; the axis
label names the zone (and the date of a one-day recording).

**Output.** The format is the one ``--out``'s extension names (:data:`OUTPUT_FORMATS`: PNG, SVG,
PDF; default: the recording's path with ``.png``); another extension is refused before anything
is read. The figure is :data:`WIDTH_IN` wide, :data:`PANEL_HEIGHT_IN` per panel plus
:data:`CONSTANT_BASE_IN` + :data:`CONSTANT_ROW_IN` per constant series for the strip, at
:data:`FIGURE_DPI`. matplotlib is imported lazily with the non-interactive Agg backend; when it
is missing the command prints ``error: …`` naming the extra and exits 1. The command prints
``plotted {n} samples ({k} channels) to {out}``: n points, k series.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import itertools
import json
import math
import sqlite3
import statistics
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from ..errors import ServomexSinkDependencyError, ServomexSinkWriteError, ServomexValidationError
from .capture import FORMATS
from .common import EXIT_ERROR, run_async

__all__ = [
    "CONSTANT_BASE_IN",
    "CONSTANT_ROW_IN",
    "FIGURE_DPI",
    "GAP_FACTOR",
    "GROUP_SPAN_FACTOR",
    "OUTPUT_FORMATS",
    "PANEL_HEIGHT_IN",
    "WIDTH_IN",
    "BrokenLine",
    "Panel",
    "PlotLayout",
    "Series",
    "TimeAxis",
    "broken_line",
    "build_figure",
    "describe_time_axis",
    "load_series",
    "output_format",
    "plan_layout",
    "register",
    "run",
    "tick_labels",
]

WIDTH_IN = 10.0
PANEL_HEIGHT_IN = 3.0
FIGURE_DPI = 100
#: Height of the constant-channel strip: this much plus :data:`CONSTANT_ROW_IN` per series.
CONSTANT_BASE_IN = 1.0
CONSTANT_ROW_IN = 0.25
#: A step longer than this many median steps of a series is an outage: the line breaks.
GAP_FACTOR = 3.0
#: A panel's data range may be at most this many times the own range of each of its lines.
GROUP_SPAN_FACTOR = 3.0
#: ``--out`` extension → matplotlib format name.
OUTPUT_FORMATS: Mapping[str, str] = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

_Y_PAD = 0.05
_X_PAD = 0.02
_PLOT_HINT = "pip install 'servomexlib[plot]'"


def register(subparsers: Any) -> None:
    """Add the ``plot`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plot",
        help="draw a recording as PNG, SVG or PDF (needs the 'plot' extra)",
        description=(
            "Plot value against time from a CSV/JSONL/SQLite/Parquet recording: one panel per "
            "group of lines of similar range, constant channels in a compact strip, outages "
            "and error rows left as gaps."
        ),
    )
    p.add_argument("recording", help="a .csv, .jsonl, .db/.sqlite or .parquet recording")
    p.add_argument(
        "--out",
        help="figure to write: .png, .svg or .pdf (default: the recording path with .png)",
    )
    p.add_argument("--channels", help="comma list of channel ids to plot (default: all)")
    p.add_argument("--device", help="plot only this device's rows")
    p.add_argument("--title", help="figure title (default: the recording's file name)")
    p.add_argument(
        "--local-time",
        dest="local_time",
        action="store_true",
        help="label the time axis in this machine's time zone (default: UTC)",
    )
    p.set_defaults(handler=run)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(slots=True)
class Series:
    """One (device, channel, unit) line: its points and its breaks, each in time order."""

    device: str
    channel: str
    name: str | None
    unit: str
    times: list[datetime] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    #: Instants of samples that are not points (error rows, no value, value_state not ok).
    breaks: list[datetime] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.channel} {self.name}" if self.name else self.channel

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def is_constant(self) -> bool:
        """Every point holds the same value (a single point is constant too)."""
        return self.low == self.high


def _rows_csv(path: Path) -> Iterator[Mapping[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            yield from reader
        except csv.Error as exc:
            raise ValueError(f"line {reader.line_num}: {exc}") from exc


def _rows_jsonl(path: Path) -> Iterator[Mapping[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"line {number}: not a JSON object")
            yield row


def _rows_sqlite(path: Path) -> Iterator[Mapping[str, Any]]:
    # Read-only URI: plotting must never create or modify a database.
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        for row in con.execute("SELECT * FROM samples"):
            yield dict(row)
    finally:
        con.close()


def _rows_parquet(path: Path) -> Iterator[Mapping[str, Any]]:
    try:
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ServomexSinkDependencyError(
            f"reading Parquet needs pyarrow: pip install 'servomexlib[parquet]' ({exc})"
        ) from exc
    yield from pq.read_table(path).to_pylist()


_READERS = {
    "csv": _rows_csv,
    "jsonl": _rows_jsonl,
    "sqlite": _rows_sqlite,
    "parquet": _rows_parquet,
}


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    raise ServomexValidationError(
        f"cannot tell the format of {str(path)!r}: expected .csv, .jsonl, .db, .sqlite or .parquet"
    )


class _BadRow(Exception):
    """A row that is not part of a recording; becomes a ServomexValidationError with context."""


def _stamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        stamp = value
    elif value is None or value == "":
        raise _BadRow("no received_at")
    else:
        try:
            stamp = datetime.fromisoformat(str(value))
        except ValueError:
            raise _BadRow(f"received_at {value!r} is not an ISO-8601 time") from None
    if stamp.utcoffset() is None:
        # A naive time could be any zone: placing it would be a guess.
        raise _BadRow(f"received_at {value!r} has no UTC offset")
    return stamp


def _value(value: Any) -> float | None:
    """The row's value; None when it has none (blank, null, NaN or infinite)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _BadRow(f"value {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise _BadRow(f"value {value!r} is not a number") from None
    return number if math.isfinite(number) else None


class _Collector:
    """Turns rows into series; one instance per :func:`load_series` call."""

    def __init__(self, channels: set[str] | None, device: str | None) -> None:
        self.channels = channels
        self.device = device
        self.series: dict[tuple[str, str, str], Series] = {}
        self.device_breaks: dict[str, list[datetime]] = {}

    def take(self, row: Mapping[str, Any]) -> None:
        dev = str(row.get("device") or "")
        if self.device is not None and dev != self.device:
            return
        stamp = _stamp(row.get("received_at"))
        channel = row.get("channel")
        if not channel:
            # An error sample (or a row naming no channel): a failed poll of the whole device.
            self.device_breaks.setdefault(dev, []).append(stamp)
            return
        channel = str(channel)
        if self.channels is not None and channel not in self.channels:
            return
        unit = str(row.get("unit") or "?")
        key = (dev, channel, unit)
        line = self.series.get(key)
        if line is None:
            line = self.series[key] = Series(dev, channel, None, unit)
        if line.name is None and row.get("name"):
            line.name = str(row["name"])
        state = row.get("value_state")  # absent from 21-column recordings
        value = _value(row.get("value"))
        if row.get("error") or state not in (None, "", "ok") or value is None:
            line.breaks.append(stamp)
            return
        line.times.append(stamp)
        line.values.append(value)

    def result(self) -> list[Series]:
        out: list[Series] = []
        for line in self.series.values():
            if not line.values:
                continue
            line.breaks.extend(self.device_breaks.get(line.device, ()))
            line.breaks.sort()
            if any(b < a for a, b in zip(line.times, line.times[1:], strict=False)):
                order = sorted(range(len(line.times)), key=line.times.__getitem__)
                line.times = [line.times[i] for i in order]
                line.values = [line.values[i] for i in order]
            out.append(line)
        return out


def load_series(
    path: Path, *, channels: set[str] | None = None, device: str | None = None
) -> list[Series]:
    """The plottable series of a recording, in first-seen order.

    Args:
        path: a recording (format from the extension, as for ``capture``).
        channels: keep only these channel ids (upper case, e.g. ``{"I1"}``); None = all.
        device: keep only rows of this ``device``; None = all.

    Returns:
        One :class:`Series` per (device, channel, unit) with at least one point; points and
        breaks sorted by time. A series whose unit changes mid-recording becomes two series.

    Raises:
        ServomexValidationError: unknown extension, missing file, an unreadable recording, or a
            row with no/naive/unparsable ``received_at`` or a non-numeric ``value`` (the message
            names the file and the row).
        ServomexSinkDependencyError: a Parquet recording without pyarrow installed.
    """
    if not path.exists():
        raise ServomexValidationError(f"no such recording: {str(path)!r}")
    reader = _READERS[_format_of(path)]
    collector = _Collector(channels, device)
    index = 0
    try:
        for index, row in enumerate(reader(path), start=1):  # noqa: B007 (used after the loop)
            collector.take(row)
    except _BadRow as exc:
        raise ServomexValidationError(
            f"cannot plot {str(path)!r}: row {index} is not a recording row: {exc}"
        ) from None
    except (ValueError, KeyError, sqlite3.Error, UnicodeDecodeError, OSError) as exc:
        raise ServomexValidationError(f"cannot read recording {str(path)!r}: {exc}") from exc
    return collector.result()


# --------------------------------------------------------------------------------------------
# Lines, layout and time labels (pure: no matplotlib)


@dataclass(frozen=True, slots=True)
class BrokenLine:
    """What matplotlib draws for one series: NaN values lift the pen."""

    times: tuple[datetime, ...]
    values: tuple[float, ...]
    #: Holes between points (a run of NaN with points on both sides counts once).
    gaps: int
    #: The step beyond which a silence is an outage (None: too few samples to tell).
    gap_threshold_s: float | None


def broken_line(series: Series, *, gap_factor: float = GAP_FACTOR) -> BrokenLine:
    """The series as a line with NaN at every break and every outage.

    The cadence is the median of the positive steps between consecutive samples (points and
    breaks alike: a failed poll still happened on time); a step longer than ``gap_factor`` ×
    that median gets a NaN at its middle. Each break gets a NaN at its own instant.
    """
    events: list[tuple[datetime, float | None]] = [
        *zip(series.times, series.values, strict=True),
        *((t, None) for t in series.breaks),
    ]
    events.sort(key=lambda e: (e[0], e[1] is None))  # stable: points first at equal times
    steps = [
        s for s in ((b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(events)) if s > 0
    ]
    threshold = gap_factor * statistics.median(steps) if steps else None
    times: list[datetime] = []
    values: list[float] = []
    nan = math.nan
    for when, value in events:
        lifted = bool(values) and math.isnan(values[-1])
        if (
            threshold is not None
            and times
            and not lifted
            and (when - times[-1]).total_seconds() > threshold
        ):
            times.append(times[-1] + (when - times[-1]) / 2)
            values.append(nan)
            lifted = True
        if value is None:
            if values and not lifted:
                times.append(when)
                values.append(nan)
            continue
        times.append(when)
        values.append(value)
    while values and math.isnan(values[-1]):
        times.pop()
        values.pop()
    gaps = sum(1 for v in values if math.isnan(v))
    return BrokenLine(tuple(times), tuple(values), gaps, threshold)


@dataclass(frozen=True, slots=True)
class Panel:
    """One y-axis: lines of one unit whose ranges are comparable."""

    unit: str
    series: tuple[Series, ...]
    #: The lowest and highest point on the panel.
    data_range: tuple[float, float]
    #: The y-limits drawn: ``data_range`` padded by 5 % each side.
    y_limits: tuple[float, float]


@dataclass(frozen=True, slots=True)
class PlotLayout:
    """Everything :func:`build_figure` draws, decided before drawing (see the module doc)."""

    panels: tuple[Panel, ...]
    #: Constant series, one row each in the compact strip under the panels.
    constant: tuple[Series, ...]
    #: The first and last sample (points and breaks) of the recording.
    time_range: tuple[datetime, datetime]
    #: ``time_range`` padded by 2 % each side (1 s for a single instant).
    x_limits: tuple[datetime, datetime]
    width_in: float
    height_in: float

    @property
    def strip_height_in(self) -> float:
        return CONSTANT_BASE_IN + CONSTANT_ROW_IN * len(self.constant) if self.constant else 0.0

    @property
    def size_px(self) -> tuple[int, int]:
        """The raster size at :data:`FIGURE_DPI` (what a PNG's header says)."""
        return round(self.width_in * FIGURE_DPI), round(self.height_in * FIGURE_DPI)


def _fits(members: Sequence[Series], candidate: Series, factor: float) -> bool:
    low = min(candidate.low, *(s.low for s in members))
    high = max(candidate.high, *(s.high for s in members))
    narrowest = min(candidate.high - candidate.low, *(s.high - s.low for s in members))
    return high - low <= factor * narrowest


def plan_layout(series: Sequence[Series], *, span_factor: float = GROUP_SPAN_FACTOR) -> PlotLayout:
    """Which series go on which panel, the y-limits of each, and the figure size.

    Raises:
        ValueError: ``series`` is empty or holds a series without points.
    """
    if not series or any(not s.values for s in series):
        raise ValueError("plan_layout needs series with at least one point each")
    groups: list[list[Series]] = []
    constant: list[Series] = []
    for line in series:
        if line.is_constant:
            constant.append(line)
            continue
        for group in groups:
            if group[0].unit == line.unit and _fits(group, line, span_factor):
                group.append(line)
                break
        else:
            groups.append([line])
    panels = []
    for group in groups:
        low = min(s.low for s in group)
        high = max(s.high for s in group)
        pad = _Y_PAD * (high - low)
        panels.append(Panel(group[0].unit, tuple(group), (low, high), (low - pad, high + pad)))
    instants = [t for s in series for t in (s.times[0], s.times[-1], *s.breaks[:1], *s.breaks[-1:])]
    start, end = min(instants), max(instants)
    pad_x = (end - start) * _X_PAD if end > start else timedelta(seconds=1)
    height = PANEL_HEIGHT_IN * len(panels)
    if constant:
        height += CONSTANT_BASE_IN + CONSTANT_ROW_IN * len(constant)
    return PlotLayout(
        tuple(panels), tuple(constant), (start, end), (start - pad_x, end + pad_x), WIDTH_IN, height
    )


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """How the time axis is labelled."""

    #: The x-axis label, naming the zone (and the date of a one-day recording).
    label: str
    #: Whether every tick carries the date (the recording spans calendar days).
    with_date: bool
    #: The display zone; None = this machine's local zone (``datetime.astimezone()``).
    zone: tzinfo | None


def _display(stamp: datetime, zone: tzinfo | None) -> datetime:
    return stamp.astimezone(zone) if zone is not None else stamp.astimezone()


def describe_time_axis(start: datetime, end: datetime, *, local_time: bool = False) -> TimeAxis:
    """The time axis of a recording from ``start`` to ``end`` (aware datetimes)."""
    zone: tzinfo | None = None if local_time else UTC
    first, last = _display(start, zone), _display(end, zone)
    if local_time:
        names = dict.fromkeys(n for n in (first.tzname(), last.tzname()) if n)
        where = f"local time, {'/'.join(names) or 'unnamed zone'}"
    else:
        where = "UTC"
    with_date = first.date() != last.date()
    label = f"received_at ({where})"
    if not with_date:
        label += f" on {first.date().isoformat()}"
    return TimeAxis(label, with_date, zone)


def tick_labels(stamps: Sequence[datetime], *, with_date: bool = False) -> list[str]:
    """``HH:MM:SS`` labels for tick instants already in the display zone.

    Sub-second tick spacing adds just enough decimals to tell the ticks apart (0.2 s → one,
    0.05 s → two, …, at most six); ``with_date`` puts ``YYYY-MM-DD`` on a line above.
    """
    steps = [s for s in ((b - a).total_seconds() for a, b in itertools.pairwise(stamps)) if s > 0]
    if steps:
        step = min(steps)
        decimals = 0 if step >= 1 else min(6, math.ceil(-math.log10(step) - 1e-9))
    else:
        decimals = 0 if all(s.microsecond == 0 for s in stamps) else 3
    labels = []
    for stamp in stamps:
        text = stamp.strftime("%H:%M:%S")
        if decimals:
            text += f".{stamp.microsecond:06d}"[: decimals + 1]
        labels.append(f"{stamp.date().isoformat()}\n{text}" if with_date else text)
    return labels


def output_format(path: Path) -> str:
    """The matplotlib format named by ``path``'s extension.

    Raises:
        ServomexValidationError: any extension but ``.png``, ``.svg`` or ``.pdf``.
    """
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ServomexValidationError(
            f"cannot write a plot to {str(path)!r}: supported extensions are "
            + ", ".join(OUTPUT_FORMATS)
        )
    return fmt


# --------------------------------------------------------------------------------------------
# Drawing


def _import_pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise ServomexSinkDependencyError(
            f"servomex plot needs matplotlib, from the 'plot' extra: {_PLOT_HINT}"
        ) from exc
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _time_formatter(axis: TimeAxis) -> Any:
    ticker = importlib.import_module("matplotlib.ticker")
    mdates = importlib.import_module("matplotlib.dates")
    base: Any = ticker.Formatter

    class _TimeFormatter(base):  # type: ignore[misc]  # matplotlib is imported lazily (Any)
        def format_ticks(self, values: Sequence[float]) -> list[str]:
            stamps = [_display(mdates.num2date(v), axis.zone) for v in values]
            return tick_labels(stamps, with_date=axis.with_date)

        def __call__(self, x: float, pos: int | None = None) -> str:
            return tick_labels([_display(mdates.num2date(x), axis.zone)], with_date=True)[0]

    return _TimeFormatter()


def _marker_size(points: int) -> float:
    # Markers keep a lone point between two gaps visible; smaller when there are many.
    return 3.0 if points <= 500 else 1.5


def build_figure(layout: PlotLayout, *, title: str, local_time: bool = False) -> Any:
    """A matplotlib Figure of ``layout``; the caller saves and closes it.

    ``fig.axes`` holds the panels in ``layout.panels`` order, then the constant strip (when
    there is one); each line's label is its series' label (prefixed by the device when the
    layout shows more than one device).
    """
    plt = _import_pyplot()
    mdates = importlib.import_module("matplotlib.dates")
    every = [*(s for p in layout.panels for s in p.series), *layout.constant]
    several = len({s.device for s in every}) > 1

    def label(line: Series) -> str:
        return f"{line.device} {line.label}" if several else line.label

    heights = [PANEL_HEIGHT_IN] * len(layout.panels)
    if layout.constant:
        heights.append(layout.strip_height_in)
    fig = plt.figure(figsize=(layout.width_in, layout.height_in), dpi=FIGURE_DPI)
    try:
        fig.set_layout_engine("constrained")
        axes = fig.subplots(
            len(heights), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights}
        )[:, 0]
        for ax, panel in zip(axes, layout.panels, strict=False):
            for line in panel.series:
                drawn = broken_line(line)
                ax.plot(
                    drawn.times,
                    drawn.values,
                    marker=".",
                    markersize=_marker_size(len(line.values)),
                    linewidth=1,
                    label=label(line),
                )
            ax.set_ylim(*panel.y_limits)
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
            ax.set_ylabel(panel.unit)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize="small")
        if layout.constant:
            strip = axes[-1]
            for row, line in enumerate(layout.constant):
                drawn = broken_line(line)
                ys = [math.nan if math.isnan(v) else float(row) for v in drawn.values]
                strip.plot(
                    drawn.times,
                    ys,
                    marker=".",
                    markersize=_marker_size(len(line.values)),
                    linewidth=2,
                    color="0.4",
                    label=label(line),
                )
            strip.set_yticks(
                range(len(layout.constant)),
                [f"{label(s)} = {s.values[0]:.6g} {s.unit}" for s in layout.constant],
                fontsize="small",
            )
            strip.set_ylim(len(layout.constant) - 0.5, -0.5)  # first row on top
            strip.set_title("constant channels", fontsize="small", loc="left")
            strip.grid(True, axis="x", alpha=0.3)
        start, end = layout.time_range
        axis = describe_time_axis(start, end, local_time=local_time)
        bottom = axes[-1]
        locator_zone = axis.zone if axis.zone is not None else start.astimezone().tzinfo
        bottom.xaxis.set_major_locator(mdates.AutoDateLocator(tz=locator_zone, minticks=3))
        bottom.xaxis.set_major_formatter(_time_formatter(axis))
        bottom.set_xlim(*layout.x_limits)
        bottom.set_xlabel(axis.label)
        fig.suptitle(title)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _draw(layout: PlotLayout, out: Path, fmt: str, *, title: str, local_time: bool) -> None:
    plt = _import_pyplot()
    fig = build_figure(layout, title=title, local_time=local_time)
    try:
        fig.savefig(out, format=fmt, dpi=FIGURE_DPI)
    except OSError as exc:
        raise ServomexSinkWriteError(f"cannot write the plot to {str(out)!r}: {exc}") from exc
    finally:
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex plot``."""
    return run_async(_plot, args)


async def _plot(args: argparse.Namespace) -> int:
    path = Path(args.recording)
    wanted = (
        {c.strip().upper() for c in args.channels.split(",") if c.strip()}
        if args.channels
        else None
    )
    out = Path(args.out) if args.out else path.with_suffix(".png")
    fmt = output_format(out)  # refuse a bad --out before reading anything
    _import_pyplot()  # and fail on the missing extra
    series = load_series(path, channels=wanted, device=args.device)
    if not series:
        print(f"error: no plottable samples in {str(path)!r}", file=sys.stderr)
        return EXIT_ERROR
    layout = plan_layout(series)
    _draw(layout, out, fmt, title=args.title or path.name, local_time=args.local_time)
    n = sum(len(line.values) for line in series)
    print(f"plotted {n} samples ({len(series)} channels) to {out}", flush=True)
    return 0
