"""`servomex capture` and `servomex plot`: formats, exact lines, errors, and a real SIGINT."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import run

DATA = Path(__file__).parent / "data"
LIVE = DATA / "continuous_4100_live_5ch.bin"
RTU = "sim://?mode=modbus_rtu&realtime=0"
SERVOMEX = Path(sys.executable).with_name("servomex")
#: The final line; the loss report in parentheses appears only when something fell short.
CAPTURED_RE = (
    r"captured (\d+) samples to (.+?) in (\d+\.\d\d)s"
    r"(?: \(\d+\.\d\d Hz, \d+ late, \d+ disconnects totalling \d+\.\ds\))?"
)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def fixture_capture(out: Path, *, rate: str, duration: str) -> list[str]:
    """``servomex capture`` arguments replaying the live fixture into ``out``."""
    return [
        "capture",
        "--fixture",
        str(LIVE),
        "--rate",
        rate,
        "--duration",
        duration,
        "--out",
        str(out),
    ]


def test_capture_csv_from_sim_then_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "demo.csv"
    code, lines, err = run(
        capsys,
        "capture",
        RTU + "&scenario=drift",
        "--protocol",
        "modbus_rtu",
        # A sweep costs ~0.31 s of wire time at 19200 baud: 3 Hz is what the bus carries.
        "--rate",
        "3",
        "--duration",
        "1.7",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert err == ""  # stderr is not a TTY: no progress line
    assert len(lines) == 1
    import re

    match = re.fullmatch(CAPTURED_RE, lines[0])
    assert match
    assert match.group(2) == str(out)
    n = int(match.group(1))
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    # Ticks a slow sweep overran are skipped (counted late), so n is a multiple of the
    # five identified channels rather than exactly 5 x 5.
    assert len(rows) == n
    assert n % 5 == 0
    assert n >= 5
    assert {r["channel"] for r in rows} == {"I1", "I2", "I3", "E1", "E2"}
    assert all(r["protocol"] == "modbus_rtu" and r["error"] == "" for r in rows)

    code, lines, err = run(capsys, "plot", str(out))
    assert code == 0, err
    png = out.with_suffix(".png")
    assert lines == [f"plotted {n} samples (5 channels) to {png}"]
    # O2 never shares an axis with the trace gases; the 0.0 mA inputs go to the constant
    # strip; the PNG has the size the layout planned (10 in x 3 in per panel + the strip).
    from servomexlib.cli.plot import load_series, plan_layout

    layout = plan_layout(load_series(out))
    assert png_size(png) == layout.size_px
    assert {"E1", "E2"} <= {s.channel for s in layout.constant}
    for panel in layout.panels:
        channels = {s.channel for s in panel.series}
        assert channels == {"I1"} or "I1" not in channels

    # Appending to a matching CSV, then --channels and --title on plot.
    code, lines, _ = run(
        capsys,
        "capture",
        RTU + "&scenario=drift",
        "--protocol",
        "modbus_rtu",
        "--rate",
        "3",
        "--duration",
        "0.1",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0
    assert lines[0].startswith("captured ")
    assert lines[0].endswith(", appended")  # same format and schema: rows were added
    more = int(lines[0].split()[1])
    other = tmp_path / "o2.png"
    code, lines, _ = run(
        capsys, "plot", str(out), "--channels", "i1", "--out", str(other), "--title", "O2"
    )
    assert lines == [f"plotted {(n + more) // 5} samples (1 channels) to {other}"]
    o2 = plan_layout(load_series(out, channels={"I1"}))
    # One panel (3 in) for a drifting O2, or the 1.25 in strip if every reading was equal.
    assert png_size(other) == o2.size_px
    assert o2.size_px in ((1000, 300), (1000, 125))


def test_capture_jsonl_fixture_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "cap.jsonl"
    code, lines, err = run(
        capsys,
        *fixture_capture(out, rate="20", duration="0.2"),
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0].startswith(f"captured {len(rows)} samples to {out} in ")
    # Whole frames (a continuous capture writes every replayed frame once), in frame order.
    assert len(rows) >= 5
    assert len(rows) % 5 == 0
    assert [r["channel"] for r in rows[:5]] == ["I1", "I2", "I3", "E1", "E2"]
    keys = [(r["device"], r["received_at"], r["channel"]) for r in rows]
    assert len(set(keys)) == len(keys)  # every replayed frame written exactly once
    assert rows[0]["channel"] == "I1"
    assert rows[0]["ok"] is True
    assert rows[0]["value"] in (
        20.378,
        20.379,
    )
    code, lines, _ = run(capsys, "plot", str(out), "--device", "nobody")
    assert code == 1


@pytest.mark.parametrize("suffix", [".db", ".parquet"])
def test_capture_sqlite_and_parquet(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"cap{suffix}"
    argv = fixture_capture(out, rate="20", duration="0.1")
    code, lines, err = run(capsys, *argv)
    assert code == 0, err
    import re

    match = re.fullmatch(CAPTURED_RE, lines[0])
    assert match, lines
    n = int(match.group(1))
    assert n >= 5
    assert n % 5 == 0
    if suffix == ".db":
        con = sqlite3.connect(out)
        try:
            assert con.execute("SELECT COUNT(*) FROM samples").fetchone() == (n,)
        finally:
            con.close()
    else:
        code, lines, err = run(capsys, *argv)  # Parquet refuses an existing file
        assert code == 1
        assert err.startswith(f"error: {out} already holds a Parquet recording; ")
        assert "--overwrite" in err
        code, lines, err = run(capsys, *argv, "--overwrite")
        assert code == 0, err
        match = re.fullmatch(CAPTURED_RE, lines[0])
        assert match, lines
        n = int(match.group(1))
    code, lines, _ = run(capsys, "plot", str(out))
    assert code == 0
    assert lines == [f"plotted {n} samples (5 channels) to {out.with_suffix('.png')}"]


def test_capture_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "capture", RTU, "--out", str(tmp_path / "x.txt"))
    assert code == 1
    assert err.startswith("error: cannot tell the format of")
    code, _, err = run(capsys, "capture", "--out", str(tmp_path / "x.csv"))
    assert code == 1
    assert err.startswith("error: no port given")
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    argv = fixture_capture(bad, rate="10", duration="0.1")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("error: ")
    assert "overwrite" in err
    assert bad.read_text() == "a,b\n1,2\n"  # never truncated silently
    code, lines, _ = run(capsys, *argv, "--overwrite", "--format", "csv")
    assert code == 0
    assert lines[0].startswith("captured ")
    assert lines[0].split()[2:4] == ["samples", "to"]
    assert int(lines[0].split()[1]) % 5 == 0


def test_plot_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "plot", str(tmp_path / "missing.csv"))
    assert code == 1
    assert err.startswith("error: no such recording")
    rec = tmp_path / "errors.jsonl"
    error_row = {
        "device": "d",
        "channel": None,
        "value": None,
        "received_at": "2026-03-14T09:05:30+00:00",
        "error": "boom",
    }
    rec.write_text(json.dumps(error_row) + "\n")
    code, _, err = run(capsys, "plot", str(rec))
    assert code == 1
    assert err == f"error: no plottable samples in {str(rec)!r}\n"
    assert not rec.with_suffix(".png").exists()
    code, _, err = run(capsys, "plot", str(rec), "--out", str(tmp_path / "x.gif"))
    assert code == 1
    assert err.startswith("error: cannot write a plot to ")
    assert err.endswith(": supported extensions are .png, .svg, .pdf\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("device,channel,value,received_at\nd,I1,20.9,\n")
    code, _, err = run(capsys, "plot", str(bad))
    assert code == 1
    assert err == (
        f"error: cannot plot {str(bad)!r}: row 1 is not a recording row: no received_at\n"
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(capsys, "plot", str(rec))
    assert code == 1
    assert err.startswith("error: servomex plot needs matplotlib")
    assert "servomexlib[plot]" in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_capture_subprocess_signal_flushes(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "long.csv"
    proc = subprocess.Popen(
        [
            str(SERVOMEX),
            *fixture_capture(out, rate="20", duration="0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        # Wait until at least one batch reached the file, then interrupt.
        while time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > 300:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    import re

    match = re.fullmatch(CAPTURED_RE + "\n", stdout)
    assert match, stdout
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == int(match.group(1)) > 5  # every received sample is on disk


@pytest.mark.skipif(sys.platform == "win32", reason="ptys")
def test_capture_progress_on_a_tty(tmp_path: Path) -> None:
    import pty

    out = tmp_path / "p.jsonl"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            str(SERVOMEX),
            *fixture_capture(out, rate="10", duration="0.8"),
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    stdout, _ = proc.communicate(timeout=20)
    chunks = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks += data
    os.close(master)
    text = chunks.decode()
    assert proc.returncode == 0
    assert "elapsed " in text
    assert "/0.8s  samples " in text
    assert "  late 0  disconnects 0" in text
    assert stdout.startswith("captured ")
    assert int(stdout.split()[1]) >= 5
