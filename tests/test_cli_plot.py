"""`servomex plot`: panels by range, gaps for outages, readable time ticks, real SVG/PDF/PNG.

Recordings are written row by row from the api.md §10 column list (21 columns, or 22 with
``value_state``), with values taken from the simulator's own ``drift`` scenario evaluated on a
virtual timeline: ten minutes of drift in milliseconds, no sleeping. The figure is checked
through :func:`plan_layout` (what the drawing uses) and the matplotlib axes it produced.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sqlite3
import struct
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run
from servomexlib.cli.plot import (
    CONSTANT_BASE_IN,
    CONSTANT_ROW_IN,
    FIGURE_DPI,
    GROUP_SPAN_FACTOR,
    PlotLayout,
    Series,
    broken_line,
    build_figure,
    describe_time_axis,
    load_series,
    plan_layout,
    tick_labels,
)
from servomexlib.sim import Simulator
from servomexlib.sim.presets import apply_preset
from sink_samples import COLUMNS, LEGACY_COLUMNS

pytest.importorskip("matplotlib")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

COLUMNS_21 = list(LEGACY_COLUMNS)
COLUMNS_22 = list(COLUMNS)
T0 = datetime(2026, 3, 14, 9, 5, 30, tzinfo=UTC)
DEVICE = "sim://drift"
#: The simulator's default 4100D slots: (channel, kind, name, unit).
SLOTS = (
    ("I1", "transducer", "Oxygen", "%"),
    ("I2", "transducer", "CO", "%"),
    ("I3", "transducer", "CO₂", "%"),
    ("E1", "external_input", None, "mA"),
    ("E2", "external_input", None, "mA"),
)
HH_MM_SS = re.compile(r"\d\d:\d\d:\d\d")


def reading_row(
    when: datetime,
    channel: str,
    value: float | None,
    *,
    device: str = DEVICE,
) -> dict[str, Any]:
    slot = next(s for s in SLOTS if s[0] == channel)
    stamp = when.isoformat()
    return {
        "device": device,
        "channel": channel,
        "kind": slot[1],
        "name": slot[2],
        "value": value,
        "unit": slot[3],
        "ok": value is not None,
        **dict.fromkeys(COLUMNS_21[7:15], False),
        "protocol": "modbus_rtu",
        "monotonic_ns": int((when - T0).total_seconds() * 1e9),
        "received_at": stamp,
        "requested_at": stamp,
        "latency_s": 0.05,
        "error": None,
        "value_state": "ok" if value is not None else "over_range",
    }


def error_row(when: datetime, *, device: str = DEVICE) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS_22)
    stamp = when.isoformat()
    row.update(
        device=device,
        protocol="modbus_rtu",
        monotonic_ns=int((when - T0).total_seconds() * 1e9),
        received_at=stamp,
        requested_at=stamp,
        error=f"timeout waiting for address 1 on {device}",
    )
    return row


def drift_rows(
    seconds: int, *, skip: range = range(0), step_s: float = 1.0, start: datetime = T0
) -> list[dict[str, Any]]:
    """``servomex capture "sim://?mode=modbus_rtu&scenario=drift"`` as it would record, one
    sweep every ``step_s`` on a virtual timeline; sweeps whose index is in ``skip`` are lost
    (an outage: nothing at all was recorded)."""
    sim = Simulator(mode="modbus_rtu", realtime=False, seed=7)
    apply_preset(sim, "drift")
    t0 = sim.now()
    rows = []
    for k in range(round(seconds / step_s)):
        if k in skip:
            continue
        when = start + timedelta(seconds=k * step_s)
        for channel, *_ in SLOTS:
            rows.append(reading_row(when, channel, sim.model.value(channel, t0 + k * step_s)))
    return rows


def write_recording(path: Path, rows: Sequence[dict[str, Any]], *, columns: int = 22) -> Path:
    """Write ``rows`` as the sinks would (CSV: 1/0 and empty fields; JSONL; SQLite)."""
    names = COLUMNS_22 if columns == 22 else COLUMNS_21
    cut = [{k: row.get(k) for k in names} for row in rows]
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            for row in cut:
                writer.writerow(
                    [
                        ""
                        if v is None
                        else int(v)
                        if isinstance(v, bool)
                        else repr(v)
                        if isinstance(v, float)
                        else v
                        for v in row.values()
                    ]
                )
    elif path.suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in cut), encoding="utf-8"
        )
    else:
        con = sqlite3.connect(path)
        try:
            con.execute(f"CREATE TABLE samples ({', '.join(names)})")
            con.executemany(
                f"INSERT INTO samples VALUES ({', '.join('?' * len(names))})",
                [tuple(row.values()) for row in cut],
            )
            con.commit()
        finally:
            con.close()
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def labels(ax: Any) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def drawn_x(line: Any) -> list[datetime]:
    return list(line.get_xdata())  # the datetimes as given to plot()


def num2date(x: float) -> datetime:
    when: datetime = mdates.num2date(x)  # type: ignore[no-untyped-call]
    return when


@pytest.fixture
def figure() -> Iterator[list[Any]]:
    """Collects figures a test builds and closes them however the test ends."""
    figs: list[Any] = []
    yield figs
    for fig in figs:
        plt.close(fig)


def built(figs: list[Any], layout: PlotLayout, **kwargs: Any) -> Any:
    fig = build_figure(layout, title="t", **kwargs)
    figs.append(fig)
    fig.canvas.draw()  # tick labels exist only after a draw
    return fig


# ------------------------------------------------------------------------------- layout


def test_drift_o2_and_trace_gases_get_their_own_axes(
    tmp_path: Path, figure: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # One minute of drift: O2 (20 %, noise 0.002) and CO (0.08 %) and CO2 (0.25 %) each move
    # by hundredths at most, so any shared axis would flatten the smaller ones.
    rec = write_recording(tmp_path / "drift.csv", drift_rows(60))
    series = load_series(rec)
    layout = plan_layout(series)
    assert [[s.label for s in p.series] for p in layout.panels] == [
        ["I1 Oxygen"],
        ["I2 CO"],
        ["I3 CO₂"],
    ]
    assert [s.channel for s in layout.constant] == ["E1", "E2"]  # the 0.0 mA inputs
    fig = built(figure, layout)
    assert len(fig.axes) == 4
    for ax, panel in zip(fig.axes, layout.panels, strict=False):
        assert labels(ax) == [s.label for s in panel.series]
        low, high = ax.get_ylim()
        assert (low, high) == pytest.approx(panel.y_limits)
        for line in ax.get_lines():
            ys = [y for y in line.get_ydata() if not math.isnan(y)]
            assert low <= min(ys)
            assert max(ys) <= high
            # The line's own variation fills most of the axis: a drift cannot look flat.
            assert max(ys) - min(ys) >= 0.9 * (high - low)
    strip = fig.axes[3]
    assert [t.get_text() for t in strip.get_yticklabels()] == ["E1 = 0 mA", "E2 = 0 mA"]
    assert labels(strip) == ["E1", "E2"]

    code, lines, err = run(capsys, "plot", str(rec))
    assert code == 0, err
    png = rec.with_suffix(".png")
    assert lines == [f"plotted {60 * 5} samples (5 channels) to {png}"]
    # 3 panels of 3 in plus a strip of 1 in + 0.25 in per constant channel, at 100 dpi.
    assert png_size(png) == layout.size_px == (1000, 300 * 3 + 150)


def test_long_drift_groups_gases_whose_ranges_are_comparable(tmp_path: Path) -> None:
    # Over ten minutes CO climbs 0.08 -> 0.38 % and CO2 0.25 -> 0.85 %: each line spans more
    # than a third of their union, so they share a panel; O2 (19.9-20.4 %) still does not.
    layout = plan_layout(load_series(write_recording(tmp_path / "long.jsonl", drift_rows(600))))
    assert [[s.channel for s in p.series] for p in layout.panels] == [["I1"], ["I2", "I3"]]
    co_panel = layout.panels[1]
    low, high = co_panel.data_range
    for line in co_panel.series:
        assert line.high - line.low >= (high - low) / GROUP_SPAN_FACTOR
    assert co_panel.data_range == (
        min(s.low for s in co_panel.series),
        max(s.high for s in co_panel.series),
    )
    pad = 0.05 * (high - low)
    assert co_panel.y_limits == pytest.approx((low - pad, high + pad))


def test_units_never_share_and_same_gas_on_two_devices_does(
    tmp_path: Path, figure: list[Any]
) -> None:
    rows = []
    for k in range(20):
        when = T0 + timedelta(seconds=k)
        rows.append(reading_row(when, "I1", 20.9 + 0.01 * k, device="a"))
        rows.append(reading_row(when, "I1", 20.91 + 0.01 * k, device="b"))
        rows.append(reading_row(when, "E1", 4.0 + 0.01 * k, device="a"))  # mA, same numbers
        rows.append(reading_row(when, "I2", 0.08 + 0.001 * k, device="a"))
    layout = plan_layout(load_series(write_recording(tmp_path / "two.csv", rows)))
    assert [[(s.device, s.channel) for s in p.series] for p in layout.panels] == [
        [("a", "I1"), ("b", "I1")],
        [("a", "E1")],
        [("a", "I2")],
    ]
    assert [p.unit for p in layout.panels] == ["%", "mA", "%"]
    fig = built(figure, layout)
    assert labels(fig.axes[0]) == ["a I1 Oxygen", "b I1 Oxygen"]  # device named when several


def test_all_constant_recording_is_one_compact_strip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], figure: list[Any]
) -> None:
    rows = [
        reading_row(T0 + timedelta(seconds=k), ch, value)
        for k in range(10)
        for ch, value in (("I1", 20.378), ("E1", 0.0), ("E2", 0.0))
    ]
    rec = write_recording(tmp_path / "idle.csv", rows)
    layout = plan_layout(load_series(rec))
    assert layout.panels == ()
    assert [s.channel for s in layout.constant] == ["I1", "E1", "E2"]
    height = CONSTANT_BASE_IN + 3 * CONSTANT_ROW_IN
    assert layout.size_px == (1000, round(height * FIGURE_DPI))
    fig = built(figure, layout)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "I1 Oxygen = 20.378 %",
        "E1 = 0 mA",
        "E2 = 0 mA",
    ]
    code, lines, err = run(capsys, "plot", str(rec))
    assert code == 0, err
    assert lines == [f"plotted 30 samples (3 channels) to {rec.with_suffix('.png')}"]
    assert png_size(rec.with_suffix(".png")) == layout.size_px


def test_plan_layout_refuses_nothing_to_draw() -> None:
    with pytest.raises(ValueError, match="at least one point"):
        plan_layout([])
    with pytest.raises(ValueError, match="at least one point"):
        plan_layout([Series("d", "I1", None, "%")])


# ------------------------------------------------------------------------------- gaps


def test_outage_leaves_a_gap_in_every_line(tmp_path: Path, figure: list[Any]) -> None:
    # Sweeps 200-259 never reached the file (a 60 s outage at a 1 s cadence).
    rec = write_recording(tmp_path / "outage.csv", drift_rows(600, skip=range(200, 260)))
    series = load_series(rec)
    for line in series:
        drawn = broken_line(line)
        assert drawn.gap_threshold_s == pytest.approx(3.0)  # 3 x the median 1 s step
        assert drawn.gaps == 1
        hole = next(i for i, v in enumerate(drawn.values) if math.isnan(v))
        assert drawn.times[hole - 1] == T0 + timedelta(seconds=199)
        assert drawn.times[hole + 1] == T0 + timedelta(seconds=260)
        assert sum(not math.isnan(v) for v in drawn.values) == 540
    fig = built(figure, plan_layout(series))
    for ax in fig.axes:
        for line in ax.get_lines():
            ys = list(line.get_ydata())
            assert sum(math.isnan(y) for y in ys) == 1
            hole = next(i for i, y in enumerate(ys) if math.isnan(y))
            xs = drawn_x(line)
            assert xs[hole - 1] == T0 + timedelta(seconds=199)
            assert xs[hole + 1] == T0 + timedelta(seconds=260)


@pytest.mark.parametrize(("step_s", "gap"), [(2.9, False), (3.0, False), (3.1, True), (30.0, True)])
@pytest.mark.parametrize("cadence_s", [0.1, 1.0, 60.0])
def test_gap_threshold_follows_the_recordings_own_cadence(
    cadence_s: float, step_s: float, gap: bool
) -> None:
    # Ten steps at the cadence, then one of step_s cadences: a hole only beyond 3 x the median.
    steps = [1.0] * 10 + [step_s]
    times = [T0]
    for k in steps:
        times.append(times[-1] + timedelta(seconds=k * cadence_s))
    line = Series("d", "I1", None, "%", times, [float(k) for k in range(len(times))])
    drawn = broken_line(line)
    assert drawn.gap_threshold_s == pytest.approx(3 * cadence_s)
    assert drawn.gaps == int(gap)
    assert [v for v in drawn.values if not math.isnan(v)] == line.values


def test_error_rows_and_values_without_state_ok_break_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = drift_rows(30)
    at = {ch: T0 + timedelta(seconds=s) for ch, s in (("err", 10), ("over", 20), ("inv", 25))}
    # A failed poll at t=10 (replacing that sweep): breaks every line of the device.
    rows = [r for r in rows if r["received_at"] != at["err"].isoformat()]
    rows.append(error_row(at["err"]))
    # I2 over range at t=20 (no value), I3 flagged invalid at t=25 although a number came.
    for row in rows:
        if row["received_at"] == at["over"].isoformat() and row["channel"] == "I2":
            row.update(value=None, ok=False, value_state="over_range")
        if row["received_at"] == at["inv"].isoformat() and row["channel"] == "I3":
            row.update(ok=False, value_state="invalid")
    rows.sort(key=lambda r: r["received_at"])
    rec = write_recording(tmp_path / "breaks.jsonl", rows)
    by_channel = {s.channel: s for s in load_series(rec)}
    expected_breaks = {
        "I1": [at["err"]],
        "I2": [at["err"], at["over"]],
        "I3": [at["err"], at["inv"]],
        "E1": [at["err"]],
        "E2": [at["err"]],
    }
    for channel, breaks in expected_breaks.items():
        line = by_channel[channel]
        assert line.breaks == breaks
        assert len(line.values) == 30 - len(breaks)
        drawn = broken_line(line)
        assert drawn.gaps == len(breaks)
        holes = [t for t, v in zip(drawn.times, drawn.values, strict=True) if math.isnan(v)]
        assert holes == breaks
    code, lines, err = run(capsys, "plot", str(rec))
    assert code == 0, err
    points = 5 * 29 - 2  # 29 good sweeps, minus the over-range and the invalid reading
    assert lines == [f"plotted {points} samples (5 channels) to {rec.with_suffix('.png')}"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".db"])
@pytest.mark.parametrize("columns", [21, 22])
def test_old_and_new_recordings_plot_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, columns: int
) -> None:
    rows = drift_rows(20)
    rows.insert(12, error_row(T0 + timedelta(seconds=2.5)))
    # A reading without a value (over range): in 21 columns only the blank value says so.
    rows[20].update(value=None, ok=False, value_state="over_range")
    rec = write_recording(tmp_path / f"rec{suffix}", rows, columns=columns)
    series = load_series(rec)
    assert [s.channel for s in series] == ["I1", "I2", "I3", "E1", "E2"]
    assert sum(len(s.values) for s in series) == 99
    assert all(s.breaks[0] == T0 + timedelta(seconds=2.5) for s in series)
    assert all(s.times[0].utcoffset() == timedelta(0) for s in series)
    code, lines, err = run(capsys, "plot", str(rec), "--out", str(tmp_path / "o.png"))
    assert code == 0, err
    assert lines == [f"plotted 99 samples (5 channels) to {tmp_path / 'o.png'}"]


def test_rows_out_of_order_are_drawn_in_time_order(tmp_path: Path) -> None:
    rows = [reading_row(T0 + timedelta(seconds=k), "I1", float(k)) for k in (3, 0, 2, 1)]
    (line,) = load_series(write_recording(tmp_path / "shuffled.csv", rows))
    assert line.times == [T0 + timedelta(seconds=k) for k in range(4)]
    assert line.values == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"received_at": "2026-03-14T09:05:31"}, "row 6 is not a recording row: received_at"),
        ({"received_at": "yesterday"}, "received_at 'yesterday' is not an ISO-8601 time"),
        ({"received_at": None}, "row 6 is not a recording row: no received_at"),
        ({"value": "n/a"}, "row 6 is not a recording row: value 'n/a' is not a number"),
    ],
)
def test_rows_that_cannot_be_placed_refuse_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, Any], message: str
) -> None:
    rows = drift_rows(3)
    rows[5].update(bad)
    rec = write_recording(tmp_path / "bad.jsonl", rows)
    code, lines, err = run(capsys, "plot", str(rec))
    assert code == 1
    assert lines == []
    assert len(err.splitlines()) == 1
    assert err.splitlines()[0].startswith(f"error: cannot plot {str(rec)!r}: ")
    assert message in err.splitlines()[0]
    assert not rec.with_suffix(".png").exists()


# ------------------------------------------------------------------------------- output


def _check_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def _check_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")


def _check_png(path: Path) -> None:
    assert png_size(path) == (1000, 3 * 300 + 150)


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("fig.svg", _check_svg),
        ("fig.SVG", _check_svg),
        ("fig.pdf", _check_pdf),
        ("fig.png", _check_png),
    ],
)
def test_the_extension_names_the_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, check: Any
) -> None:
    rec = write_recording(tmp_path / "r.csv", drift_rows(30))
    out = tmp_path / name
    code, lines, err = run(capsys, "plot", str(rec), "--out", str(out))
    assert code == 0, err
    assert lines == [f"plotted 150 samples (5 channels) to {out}"]
    check(out)


@pytest.mark.parametrize("name", ["fig.jpg", "fig", "r.csv"])
def test_unknown_extension_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    rec = write_recording(tmp_path / "r.csv", drift_rows(3))
    before = rec.read_bytes()
    out = tmp_path / name
    code, lines, err = run(capsys, "plot", str(rec), "--out", str(out))
    assert code == 1
    assert lines == []
    assert err.splitlines() == [
        f"error: cannot write a plot to {str(out)!r}: supported extensions are .png, .svg, .pdf"
    ]
    assert rec.read_bytes() == before  # --out naming the recording never touches it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_unwritable_out_is_an_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = write_recording(tmp_path / "r.csv", drift_rows(3))
    out = tmp_path / "no-such-dir" / "fig.png"
    code, _, err = run(capsys, "plot", str(rec), "--out", str(out))
    assert code == 1
    assert len(err.splitlines()) == 1
    assert err.splitlines()[0].startswith(f"error: cannot write the plot to {str(out)!r}")


# ------------------------------------------------------------------------------- time axis


def test_tick_labels() -> None:
    whole = [T0 + timedelta(seconds=10 * k) for k in range(3)]
    assert tick_labels(whole) == ["09:05:30", "09:05:40", "09:05:50"]
    tenths = [T0 + timedelta(milliseconds=200 * k) for k in range(3)]
    assert tick_labels(tenths) == ["09:05:30.0", "09:05:30.2", "09:05:30.4"]
    fine = [T0 + timedelta(milliseconds=5 * k) for k in range(3)]
    assert tick_labels(fine) == ["09:05:30.000", "09:05:30.005", "09:05:30.010"]
    days = [T0, T0 + timedelta(days=1)]
    assert tick_labels(days, with_date=True) == [
        "2026-03-14\n09:05:30",
        "2026-03-15\n09:05:30",
    ]
    assert tick_labels([T0 + timedelta(microseconds=1500)]) == ["09:05:30.001"]
    assert tick_labels([]) == []


def test_time_axis_label_names_zone_and_date() -> None:
    axis = describe_time_axis(T0, T0 + timedelta(hours=2))
    assert axis.label == "received_at (UTC) on 2026-03-14"
    assert not axis.with_date
    axis = describe_time_axis(T0, T0 + timedelta(hours=20))  # crosses midnight UTC
    assert axis.label == "received_at (UTC)"
    assert axis.with_date


def _tick_texts(ax: Any) -> list[tuple[datetime, str]]:
    return [
        (num2date(pos), label.get_text())
        for pos, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
        if ax.get_xlim()[0] <= pos <= ax.get_xlim()[1]
    ]


def test_figure_ticks_are_hh_mm_ss_in_utc(tmp_path: Path, figure: list[Any]) -> None:
    layout = plan_layout(load_series(write_recording(tmp_path / "r.csv", drift_rows(600))))
    fig = built(figure, layout)
    bottom = fig.axes[-1]
    ticks = _tick_texts(bottom)
    assert len(ticks) >= 3
    for when, text in ticks:
        assert HH_MM_SS.fullmatch(text), text
        assert text == when.astimezone(UTC).strftime("%H:%M:%S")
    assert bottom.get_xlabel() == "received_at (UTC) on 2026-03-14"


def test_figure_ticks_carry_the_date_across_days(tmp_path: Path, figure: list[Any]) -> None:
    rows = drift_rows(3 * 86400, step_s=3600.0)  # three days, one sweep an hour
    fig = built(figure, plan_layout(load_series(write_recording(tmp_path / "r.csv", rows))))
    ticks = _tick_texts(fig.axes[-1])
    assert len(ticks) >= 3
    for when, text in ticks:
        assert text == when.astimezone(UTC).strftime("%Y-%m-%d\n%H:%M:%S")
    assert fig.axes[-1].get_xlabel() == "received_at (UTC)"


def test_padding_past_midnight_does_not_make_a_day_recording_multi_day(
    tmp_path: Path, figure: list[Any]
) -> None:
    # Ten minutes ending at 23:59:49: the 2 % x padding reaches past midnight, the data not.
    start = datetime(2026, 3, 14, 23, 49, 50, tzinfo=UTC)
    rows = drift_rows(600, start=start)
    layout = plan_layout(load_series(write_recording(tmp_path / "r.csv", rows)))
    assert layout.time_range == (start, start + timedelta(seconds=599))
    assert layout.x_limits[1].date() > start.date()
    fig = built(figure, layout)
    assert fig.axes[-1].get_xlabel() == "received_at (UTC) on 2026-03-14"
    assert all(HH_MM_SS.fullmatch(text) for _, text in _tick_texts(fig.axes[-1]))


@pytest.fixture
def kolkata_like_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local zone set to a POSIX zone 5 h 30 min east of UTC, named ABC."""
    if sys.platform == "win32":
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", "ABC-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("kolkata_like_zone")
def test_local_time_converts_the_labels(
    tmp_path: Path, figure: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rec = write_recording(tmp_path / "r.csv", drift_rows(600))
    layout = plan_layout(load_series(rec))
    fig = built(figure, layout, local_time=True)
    bottom = fig.axes[-1]
    ticks = _tick_texts(bottom)
    assert len(ticks) >= 3
    for when, text in ticks:
        assert text == (when.astimezone(UTC) + timedelta(hours=5, minutes=30)).strftime("%H:%M:%S")
    assert bottom.get_xlabel() == "received_at (local time, ABC) on 2026-03-14"
    code, _, err = run(capsys, "plot", str(rec), "--local-time", "--out", str(tmp_path / "l.svg"))
    assert code == 0, err
    assert "local time, ABC" in (tmp_path / "l.svg").read_text(encoding="utf-8")


def test_subsecond_recording_ticks_have_decimals(tmp_path: Path, figure: list[Any]) -> None:
    rows = drift_rows(1, step_s=0.1)
    fig = built(figure, plan_layout(load_series(write_recording(tmp_path / "r.csv", rows))))
    ticks = _tick_texts(fig.axes[-1])
    assert len(ticks) >= 3
    texts = [text for _, text in ticks]
    assert len(set(texts)) == len(texts)  # no two ticks read the same
    for when, text in ticks:
        assert re.fullmatch(r"09:05:3\d\.\d{1,3}", text), text
        assert when.astimezone(UTC).strftime("%H:%M:%S.%f").startswith(text)
