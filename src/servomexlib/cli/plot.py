"""``servomex plot``: a PNG of a recording (api.md §16.4; needs the ``plot`` extra).

Reads a CSV, JSONL, SQLite (``samples`` table) or Parquet recording written by
``servomex capture`` (or any sink), skips error rows and rows without a value, and draws value
against ``received_at``: one panel per unit, one line per (device, channel). The figure is
10 inches wide and 3 inches per panel at 100 dpi (1000 × 300·panels pixels). Prints
``plotted {n} samples ({k} channels) to {out}``. matplotlib is imported lazily, with the
non-interactive Agg backend; when it is missing the command prints ``error: …`` naming the
extra and exits 1.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ServomexSinkDependencyError, ServomexValidationError
from .capture import FORMATS
from .common import EXIT_ERROR, run_async

__all__ = ["FIGURE_DPI", "PANEL_HEIGHT_IN", "WIDTH_IN", "Series", "load_series", "register", "run"]

WIDTH_IN = 10.0
PANEL_HEIGHT_IN = 3.0
FIGURE_DPI = 100
_PLOT_HINT = "pip install 'servomexlib[plot]'"


def register(subparsers: Any) -> None:
    """Add the ``plot`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plot",
        help="draw a recording as a PNG (needs the 'plot' extra)",
        description="Plot value against time from a CSV/JSONL/SQLite/Parquet recording.",
    )
    p.add_argument("recording", help="a .csv, .jsonl, .db/.sqlite or .parquet recording")
    p.add_argument("--out", help="PNG to write (default: the recording path with .png)")
    p.add_argument("--channels", help="comma list of channel ids to plot (default: all)")
    p.add_argument("--device", help="plot only this device's rows")
    p.add_argument("--title", help="figure title (default: the recording's file name)")
    p.set_defaults(handler=run)


@dataclass(slots=True)
class Series:
    """The points of one (device, channel) line."""

    device: str
    channel: str
    name: str | None
    unit: str
    times: list[datetime] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.channel} {self.name}" if self.name else self.channel


def _rows_csv(path: Path) -> Iterator[Mapping[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _rows_jsonl(path: Path) -> Iterator[Mapping[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


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


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_series(
    path: Path, *, channels: set[str] | None = None, device: str | None = None
) -> list[Series]:
    """The plottable series of a recording, in first-seen order.

    Raises:
        ServomexValidationError: unknown extension, missing file, or an unreadable recording.
    """
    if not path.exists():
        raise ServomexValidationError(f"no such recording: {str(path)!r}")
    reader = _READERS[_format_of(path)]
    series: dict[tuple[str, str], Series] = {}
    try:
        for row in reader(path):
            if row.get("error") or not row.get("channel"):
                continue
            value = _float(row.get("value"))
            stamp = row.get("received_at")
            if value is None or not stamp:
                continue
            dev = str(row.get("device") or "")
            if device is not None and dev != device:
                continue
            channel = str(row["channel"])
            if channels is not None and channel not in channels:
                continue
            key = (dev, channel)
            line = series.get(key)
            if line is None:
                line = series[key] = Series(
                    dev, channel, row.get("name") or None, str(row.get("unit") or "?")
                )
            line.times.append(
                stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
            )
            line.values.append(value)
    except (ValueError, KeyError, sqlite3.Error, UnicodeDecodeError) as exc:
        raise ServomexValidationError(f"cannot read recording {str(path)!r}: {exc}") from exc
    return list(series.values())


def _import_pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise ServomexSinkDependencyError(
            f"servomex plot needs matplotlib, from the 'plot' extra: {_PLOT_HINT}"
        ) from exc
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _draw(series: list[Series], out: Path, title: str) -> None:
    plt = _import_pyplot()
    units: dict[str, list[Series]] = {}
    for line in series:
        units.setdefault(line.unit, []).append(line)
    devices = {line.device for line in series}
    fig, axes = plt.subplots(
        len(units),
        1,
        sharex=True,
        squeeze=False,
        figsize=(WIDTH_IN, PANEL_HEIGHT_IN * len(units)),
        dpi=FIGURE_DPI,
    )
    try:
        for ax, (unit, lines) in zip(axes[:, 0], units.items(), strict=True):
            for line in lines:
                label = line.label if len(devices) == 1 else f"{line.device} {line.label}"
                ax.plot(line.times, line.values, marker=".", markersize=3, linewidth=1, label=label)
            ax.set_ylabel(unit)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize="small")
        axes[-1, 0].set_xlabel("received_at (UTC)")
        fig.suptitle(title)
        fig.autofmt_xdate()
        fig.savefig(out, format="png", dpi=FIGURE_DPI)
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
    _import_pyplot()  # fail on the missing extra before reading anything
    series = load_series(path, channels=wanted, device=args.device)
    if not series:
        print(f"error: no plottable samples in {str(path)!r}", file=sys.stderr)
        return EXIT_ERROR
    out = Path(args.out) if args.out else path.with_suffix(".png")
    _draw(series, out, args.title or path.name)
    n = sum(len(line.values) for line in series)
    print(f"plotted {n} samples ({len(series)} channels) to {out}", flush=True)
    return 0
