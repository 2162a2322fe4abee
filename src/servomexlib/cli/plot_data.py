"""Reading a recording for ``servomex plot``: rows → one :class:`Series` per line (docs/cli.md
"plot").

A CSV, JSONL, SQLite (``samples`` table) or Parquet recording written by ``servomex capture``
(or any sink) is read row by row into one :class:`Series` per (device, channel, unit). A row is
a *point* when it names a channel, has no ``error``, holds a finite ``value`` and — when the
recording has the 22nd ``value_state`` column — its state is ``ok``. Every other row is a
*break*: an over-range / invalid / blank reading breaks its own channel's line, and an error row
(``channel`` empty) breaks every line of its device. An older 21-column recording simply has no
``value_state``; its value decides. Every row must carry a ``received_at`` with a UTC offset
(the sinks always write one); a missing, unparsable or naive timestamp, or a ``value`` that is
not a number, refuses the whole file with :class:`~servomexlib.ServomexValidationError` naming
the file and row — the plot never guesses. The recording's format is the one its extension
names, as ``servomex capture`` chose it.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ServomexSinkDependencyError, ServomexValidationError
from .capture import FORMATS

__all__ = ["Series", "load_series"]


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
