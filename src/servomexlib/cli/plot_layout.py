"""Lines, panels and time labels for ``servomex plot``. Pure: no matplotlib, no I/O.

**Lines with gaps.** :func:`broken_line` merges a series' points and breaks in time order and
inserts NaN (where matplotlib lifts the pen) at every break and wherever the step to the next
sample exceeds :data:`GAP_FACTOR` × the series' own median step, so an outage, a failed poll or
an over-range reading is a visible hole, never a straight line drawn across missing data.

**Layout.** :func:`plan_layout` decides the panels; both the drawing and the tests use it.

* A *constant* series (every point the same value, e.g. an unconnected 0.0 mA input) gets no
  y-axis of its own: all constant series share one compact strip at the bottom, one row each.
* The other series are grouped greedily in first-seen order: a series joins a panel of the same
  unit only if the panel's combined data range stays within :data:`GROUP_SPAN_FACTOR` × the own
  range of every member, i.e. every line keeps at least a third of its panel's height. Each
  panel's y-limits are its data range padded by 5 %.

**Time axis.** :func:`describe_time_axis` and :func:`tick_labels`: ``HH:MM:SS`` with as many
decimals as sub-second ticks need, the date on every tick when the recording spans more than
one calendar day, in UTC or the machine's local zone; the axis label names the zone.

**Output.** :func:`output_format`: the format ``--out``'s extension names
(:data:`OUTPUT_FORMATS`). The figure's size: :data:`WIDTH_IN` wide, :data:`PANEL_HEIGHT_IN` per
panel plus :data:`CONSTANT_BASE_IN` + :data:`CONSTANT_ROW_IN` per constant series, at
:data:`FIGURE_DPI`.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

from ..errors import ServomexValidationError
from .plot_data import Series

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
    "TimeAxis",
    "broken_line",
    "describe_time_axis",
    "display_time",
    "output_format",
    "plan_layout",
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


def display_time(stamp: datetime, zone: tzinfo | None) -> datetime:
    return stamp.astimezone(zone) if zone is not None else stamp.astimezone()


def describe_time_axis(start: datetime, end: datetime, *, local_time: bool = False) -> TimeAxis:
    """The time axis of a recording from ``start`` to ``end`` (aware datetimes)."""
    zone: tzinfo | None = None if local_time else UTC
    first, last = display_time(start, zone), display_time(end, zone)
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
