"""Unattended captures never hide losses (api.md §13; issue 11 item 9).

* A Modbus `--rate` the bus cannot carry is refused with the highest rate that fits: before any
  I/O when the protocol is given (the simulator's request log stays empty), right after AUTO
  otherwise — and no output file is created.
* The final line reports achieved rate, late ticks, disconnects and their total length whenever
  one of them is not what was asked for.
* A continuous capture writes every broadcast frame exactly once.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from cli_helpers import run
from helpers import ASYNCIO_ONLY
from servomexlib.cli import build_parser
from servomexlib.cli.capture import final_line, max_rate_text, run_capture
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.sim import Simulator
from servomexlib.streaming import recorder
from servomexlib.streaming.recorder import AcquisitionSummary

LOSSES_RE = re.compile(
    r"captured (\d+) samples to (.+?) in (\d+\.\d\d)s "
    r"\((\d+\.\d\d) Hz, (\d+) late, (\d+) disconnects totalling (\d+\.\d)s\)"
)
CAPTURE_BEFORE_IO = ["capture", "sim://cli-rate-before-io"]


def summary(**kw: object) -> AcquisitionSummary:
    return AcquisitionSummary(started_at=datetime.now(UTC), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the bus rate


def test_max_rate_text_rounds_down_to_two_digits() -> None:
    assert max_rate_text(0.3095) == "3.2"  # 3.23 Hz
    assert max_rate_text(0.30) == "3.3"
    assert max_rate_text(0.0787) == "12"
    assert max_rate_text(2.97) == "0.33"
    assert max_rate_text(0.5) == "2.0"


def test_a_rate_the_bus_cannot_carry_is_refused_before_any_io(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sim = Simulator(name="cli-rate-before-io", realtime=False)
    out = tmp_path / "never.csv"
    code, _, err = run(
        capsys, *CAPTURE_BEFORE_IO, "--protocol", "modbus_rtu", "--rate", "50", "--out", str(out)
    )
    assert code == 1
    assert err == (
        "error: --rate 50 is more than modbus_rtu at 19200 baud can carry for this sweep "
        "(3 transactions, ≈ 0.31 s): use --rate 3.2 or less\n"
    )
    assert sim.requests == ()  # not one byte was sent
    assert not out.exists()
    # The same sweep in Modbus ASCII at 9600 baud costs more wire time.
    code, _, err = run(
        capsys,
        *CAPTURE_BEFORE_IO,
        *("--protocol", "modbus_ascii", "--baud", "9600", "--rate", "2"),
        *("--out", str(out)),
    )
    assert code == 1
    assert err.startswith("error: --rate 2 is more than modbus_ascii at 9600 baud can carry")
    assert err.endswith("(3 transactions, ≈ 0.61 s): use --rate 1.6 or less\n")
    assert sim.requests == ()


def test_a_rate_the_bus_cannot_carry_is_refused_right_after_auto(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "never.jsonl"
    code, _, err = run(capsys, "capture", "sim://?realtime=0", "--rate", "50", "--out", str(out))
    assert code == 1
    # After identify the sweep reads value registers only: FC04 (0, 65), cheaper than the
    # all-slot whole-block plan checked before any I/O (0.31 s).
    assert err == (
        "error: --rate 50 is more than modbus_rtu at 19200 baud can carry for this sweep "
        "(3 transactions, ≈ 0.30 s): use --rate 3.2 or less\n"
    )
    assert not out.exists()
    # The highest rate it named is accepted.
    code, lines, _ = run(
        capsys,
        "capture",
        "sim://?realtime=0",
        "--rate",
        "3.2",
        "--duration",
        "0.1",
        "--out",
        str(out),
    )
    assert code == 0
    assert lines[0].startswith("captured 5 samples to ")


# ---------------------------------------------------------------------------- the final line


def test_the_final_line_is_plain_when_nothing_was_lost() -> None:
    done = summary(samples_emitted=10)
    assert final_line(50, "x.csv", 9.0, done, expected_rate_hz=1.0) == (
        "captured 50 samples to x.csv in 9.00s"
    )
    assert final_line(50, "x.csv", 9.0, done, expected_rate_hz=1.0, appended=True) == (
        "captured 50 samples to x.csv in 9.00s, appended"
    )
    assert final_line(0, "x.csv", 0.5, None, expected_rate_hz=None) == (
        "captured 0 samples to x.csv in 0.50s"
    )


def test_the_final_line_reports_what_fell_short() -> None:
    slow = summary(samples_emitted=31)  # --rate 50 for 10 s, but ~3 sweeps per second
    assert final_line(155, "x.csv", 10.0, slow, expected_rate_hz=50.0) == (
        "captured 155 samples to x.csv in 10.00s (3.10 Hz, 0 late, 0 disconnects totalling 0.0s)"
    )
    late = summary(samples_emitted=9, samples_late=1)
    assert final_line(45, "x.csv", 9.0, late, expected_rate_hz=1.0).endswith(
        " (1.00 Hz, 1 late, 0 disconnects totalling 0.0s)"
    )
    lost = summary(samples_emitted=8, samples_late=2, disconnects=1, outage_s=3.25)
    assert final_line(40, "x.csv", 10.0, lost, expected_rate_hz=None, appended=True) == (
        "captured 40 samples to x.csv in 10.00s (0.80 Hz, 2 late, 1 disconnects totalling 3.2s)"
        ", appended"
    )


@pytest.mark.anyio
@ASYNCIO_ONLY  # real time: the file's wall-clock stamps must show the 5 s hole; one backend
async def test_an_outage_is_in_the_final_line(
    anyio_backend: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator vanishes for 5 s of real time (the recorder's backoff sleeps are real;
    a quarter-second step keeps the reopen close behind the device's return)."""
    monkeypatch.setattr(recorder, "BACKOFF_STEPS_S", (0.25,))
    name = f"cli-capture-outage-{anyio_backend}"
    sim = Simulator(name=name, realtime=False)
    out = tmp_path / "outage.jsonl"
    args = build_parser().parse_args(
        [
            *("capture", f"sim://{name}", "--protocol", "modbus_rtu", "--rate", "2"),
            *("--duration", "8", "--out", str(out), "--quiet"),
        ]
    )
    outage: dict[str, float] = {}

    async def pull_the_cable() -> None:
        with anyio.fail_after(10):
            # The simulator's request log has no event to wait on: poll it.
            while len(sim.requests) < 12:  # noqa: ASYNC110 (identify and a few sweeps)
                await anyio.sleep(0.05)
        outage["from"] = anyio.current_time()
        sim.vanish()
        await anyio.sleep(5.0)
        sim.reappear()
        outage["to"] = anyio.current_time()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pull_the_cable)
            code = await run_capture(args)
    assert code == 0
    line = capsys.readouterr().out.strip()
    match = LOSSES_RE.fullmatch(line)
    assert match, line
    n, _, elapsed, rate, late, disconnects, total = match.groups()
    assert int(disconnects) == 1  # one outage, however many reopen attempts it took
    assert 5.0 <= float(total) <= float(elapsed)
    assert int(late) >= 1
    assert float(rate) < 2.0
    rows = [json.loads(row) for row in out.read_text().splitlines()]
    assert len(rows) == int(n)
    stamps = sorted({r["received_at"] for r in rows})
    gaps = [
        (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
        for a, b in itertools.pairwise(stamps)
    ]
    assert max(gaps) >= 5.0  # the hole is in the file too: nothing was made up to fill it


# ---------------------------------------------------------------------------- continuous


def test_continuous_capture_writes_every_frame_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A 0.5 s broadcast for 10 s of real time (the broadcast sets the pace; api.md §13)."""
    sim = Simulator(
        name="cli-capture-each-frame",
        mode=ProtocolKind.CONTINUOUS_ASCII,
        frame_period=0.5,
        realtime=False,
    )
    sim.drift(ChannelId.I1, rate_per_s=1.0)  # +0.5 per frame on the simulator's timeline
    out = tmp_path / "frames.jsonl"
    code, lines, stderr = run(
        capsys,
        *("capture", "sim://cli-capture-each-frame", "--protocol", "continuous"),
        *("--rate", "7", "--duration", "10", "--frame-period", "0.5", "--out", str(out)),
    )
    assert code == 0, stderr
    assert stderr == (
        "note: --rate is ignored for a continuous analyser: the broadcast sets the cadence and "
        "every frame is written once\n"
    )
    rows = [json.loads(row) for row in out.read_text().splitlines()]
    assert lines[0].startswith(f"captured {len(rows)} samples to {out} in ")
    keys = [(r["device"], r["received_at"], r["channel"]) for r in rows]
    assert len(keys) == len(set(keys))  # no sample written twice
    o2 = [r["value"] for r in rows if r["channel"] == "I1"]
    assert len(rows) == 5 * len(o2)  # whole frames
    assert 17 <= len(o2) <= 21  # ~10 s of a 0.5 s broadcast
    steps = [round(b - a, 3) for a, b in itertools.pairwise(o2)]
    assert steps == [0.5] * len(steps)  # consecutive frames: none skipped, none repeated
