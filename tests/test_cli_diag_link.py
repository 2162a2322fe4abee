"""`servomex diag link` (the learned reply wait and silence of a Modbus line) and
`diag plan --value-only`, in-process against sim:// (issue 12)."""

from __future__ import annotations

import json
import re

import pytest

from cli_helpers import run

FAST = "sim://?mode=modbus_rtu&realtime=0"


def test_diag_link_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "diag", "link", FAST, "--count", "5")
    assert code == 0, err
    assert len(out) == 3
    assert re.fullmatch(
        r"link polls=5 ok=5 errors=0 poll_ms p50=\d+\.\d p90=\d+\.\d max=\d+\.\d", out[0]
    )
    # 1 identify + 5 polls × 3 transactions, each reply timed: the wait is learned (the
    # unpaced simulator answers at once, so the allowance is its 50 ms floor).
    assert re.fullmatch(
        r"wait learned_ms=50\.0 silence_ms=50\.0 turnaround_ms p50=\d+\.\d p99=\d+\.\d "
        r"samples=16",
        out[1],
    )
    assert out[2] == (
        "counters transactions=16 attempts=16 retries=0 short_timeouts=0 timeouts=0 fences=0 "
        "fence_failures=0 early_replies=0 stale_bytes=0 silence_raises=0 wait_boosts=0"
    )


def test_diag_link_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "diag", "link", FAST, "--count", "2", "--format", "json")
    assert code == 0, err
    (line,) = out
    doc = json.loads(line)
    assert (doc["polls"], doc["ok"], doc["errors"], doc["error_kinds"]) == (2, 2, 0, {})
    assert doc["transactions"] == 7
    assert doc["learned_wait_ms"] is None  # 7 replies timed: still the open-time timeout
    assert doc["silence_ms"] == 50.0
    assert doc["reply_samples"] == 7
    assert set(doc["poll_ms"]) == {"p50", "p90", "max"}
    assert doc["turnaround_ms"]["p50"] is not None


def test_diag_link_refuses_a_fixture(capsys: pytest.CaptureFixture[str], data_dir: object) -> None:
    code, out, err = run(
        capsys, "diag", "link", "--fixture", f"{data_dir}/continuous_4100_live_5ch.bin"
    )
    assert code == 1
    assert out == []
    assert err == "error: diag link needs a Modbus port, not a --fixture\n"


def test_diag_link_count_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(capsys, "diag", "link", FAST, "--count", "0")
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_diag_plan_value_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diag", "plan", "--baud", "2400", "--value-only")
    assert code == 0
    assert [line.split(" est=")[0] for line in out[:-1]] == [
        "FC04 start=0 count=16 channels=I1,I2,I3",
        "FC04 start=56 count=9 channels=E1,E2",
        "FC02 start=0 count=80 channels=I1,I2,I3,E1,E2",
        "FC02 start=1000 count=16 channels=(analyser)",
    ]
    assert out[-1] == "total est=755.0ms"
    code, out, _ = run(capsys, "diag", "plan", "--baud", "2400")
    assert out[-1] == "total est=838.3ms"  # whole blocks: FC04 (0, 21) + (56, 14)
    code, out, _ = run(capsys, "diag", "plan", "--value-only", "--format", "json")
    doc = json.loads(out[0])
    assert doc["value_only"] is True
    assert [(r["start"], r["count"]) for r in doc["reads"]] == [(0, 65), (0, 80), (1000, 16)]
