"""``servomex plot``: a figure of a recording that does not mislead (docs/cli.md "plot";
``plot`` extra).

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

The parts: :mod:`.plot_data` (reading), :mod:`.plot_layout` (lines, panels, time labels: pure)
and this module (drawing with matplotlib, the subcommand). The public names of all three are
importable from here.
"""

import argparse
import importlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ServomexSinkDependencyError, ServomexSinkWriteError
from .common import EXIT_ERROR, run_async
from .plot_data import Series, load_series
from .plot_layout import (
    CONSTANT_BASE_IN,
    CONSTANT_ROW_IN,
    FIGURE_DPI,
    GAP_FACTOR,
    GROUP_SPAN_FACTOR,
    OUTPUT_FORMATS,
    PANEL_HEIGHT_IN,
    WIDTH_IN,
    BrokenLine,
    Panel,
    PlotLayout,
    TimeAxis,
    broken_line,
    describe_time_axis,
    display_time,
    output_format,
    plan_layout,
    tick_labels,
)

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
            stamps = [display_time(mdates.num2date(v), axis.zone) for v in values]
            return tick_labels(stamps, with_date=axis.with_date)

        def __call__(self, x: float, pos: int | None = None) -> str:
            return tick_labels([display_time(mdates.num2date(x), axis.zone)], with_date=True)[0]

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
