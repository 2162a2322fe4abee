"""Every `examples/*.py` runs against its default sim:// URL in a subprocess and prints what
it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

#: Example → (arguments, stdin, fragments its stdout must contain).
EXPECTED: dict[str, tuple[list[str], str, list[str]]] = {
    "demo.py": ([], "", ["device: 4000-series protocol=continuous", "streaming 3 frames:"]),
    "acquire_to_sqlite.py": (
        ["--rate", "2", "--duration", "1.0"],
        "",
        ["wrote 10 samples to ", "I1  n=2 mean=20.3", "E2  n=2 mean=0.0000 mA"],
    ),
    "multidrop_manager.py": (
        [],
        "",
        ["poll 1 anz1: I1=20.378", "poll 1 anz3: I1=20.378", "poll 2 anz2: I1=20.378"],
    ),
    "calibration.py": (
        [],
        "y\n",
        [
            "refused without confirm:",
            "calibration of group 1 started",
            "group 1: cal_gas_1",
            "group 1: cal_gas_2",
            "group 1: idle",
            "calibration finished",
        ],
    ),
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_against_sim(name: str, tmp_path: Path) -> None:
    args, stdin, fragments = EXPECTED[name]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=45,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stdout, proc.stdout


def test_calibration_example_declined(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "calibration.py")],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "not confirmed; nothing was changed" in proc.stdout
    assert "started" not in proc.stdout


def test_examples_accept_a_port_argument(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "acquire_to_sqlite.py"),
            "sim://?mode=continuous&period=0.05",
            "--rate",
            "10",
            "--duration",
            "0.2",
            "--db",
            str(tmp_path / "c.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 10 samples to {tmp_path / 'c.db'}" in proc.stdout
