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

from servomexlib.cli import main

DATA = Path(__file__).parent / "data"
LIVE = DATA / "continuous_4100_live_5ch.bin"
RTU = "sim://?mode=modbus_rtu&realtime=0"
SERVOMEX = Path(sys.executable).with_name("servomex")
CAPTURED_RE = r"captured (\d+) samples to (.+) in (\d+\.\d\d)s"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


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
        "--rate",
        "10",
        "--duration",
        "0.5",
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
    assert png_size(png) == (1000, 600)  # 10 in x 3 in per panel (% and mA) at 100 dpi

    # Appending to a matching CSV, then --channels and --title on plot.
    code, lines, _ = run(
        capsys,
        "capture",
        RTU + "&scenario=drift",
        "--protocol",
        "modbus_rtu",
        "--rate",
        "20",
        "--duration",
        "0.1",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0
    assert lines[0].startswith("captured ")
    more = int(lines[0].split()[1])
    other = tmp_path / "o2.png"
    code, lines, _ = run(
        capsys, "plot", str(out), "--channels", "i1", "--out", str(other), "--title", "O2"
    )
    assert lines == [f"plotted {(n + more) // 5} samples (1 channels) to {other}"]
    assert png_size(other) == (1000, 300)


def test_capture_jsonl_fixture_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "cap.jsonl"
    code, lines, err = run(
        capsys,
        *fixture_capture(out, rate="20", duration="0.2"),
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0].startswith(f"captured {len(rows)} samples to {out} in ")
    assert len(rows) == 20
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
    assert lines[0].startswith("captured 10 samples to ")
    if suffix == ".db":
        con = sqlite3.connect(out)
        try:
            assert con.execute("SELECT COUNT(*) FROM samples").fetchone() == (10,)
        finally:
            con.close()
    else:
        code, lines, err = run(capsys, *argv)  # Parquet refuses an existing file
        assert code == 1
        assert err.startswith("error: ")
        code, lines, err = run(capsys, *argv, "--overwrite")
        assert code == 0, err
    code, lines, _ = run(capsys, "plot", str(out))
    assert code == 0
    assert lines == [f"plotted 10 samples (5 channels) to {out.with_suffix('.png')}"]


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
    assert lines[0].startswith("captured 5 samples")


def test_plot_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "plot", str(tmp_path / "missing.csv"))
    assert code == 1
    assert err.startswith("error: no such recording")
    rec = tmp_path / "errors.jsonl"
    rec.write_text(json.dumps({"channel": None, "value": None, "error": "boom"}) + "\n")
    code, _, err = run(capsys, "plot", str(rec))
    assert code == 1
    assert "no plottable samples" in err
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
    assert stdout.startswith("captured 40 samples to ")
