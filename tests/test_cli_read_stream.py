"""`servomex read`, `stream`, `decode`, `diag`, errors, aliases (in-process, against sim:// and
the real captures)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest

from cli_helpers import run
from servomexlib import __version__
from servomexlib.cli import (
    capture_main,
    decode_main,
    diag_main,
    discover_main,
    main,
    read_main,
    stream_main,
)

DATA = Path(__file__).parent / "data"
LIVE = DATA / "continuous_4100_live_5ch.bin"
IDLE = DATA / "continuous_4100_idle_5ch.bin"
RTU = "sim://?mode=modbus_rtu&realtime=0"
CONT = "sim://?mode=continuous&period=0.05&realtime=0"
#: The O2 values in the live capture (the replay may start at any of its frames).
LIVE_O2 = {20.378, 20.379}
READING_RE = re.compile(r"^  (I1|I2|I3|E1|E2) +\S.{11} [ \S]{10} \S+ +ok=(True|False)$")


def exit_code(fn: object, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        fn(argv)  # type: ignore[operator]
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(main, ["--version"]) == 0
    assert capsys.readouterr().out == f"servomex {__version__}\n"


def test_read_modbus_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "read", RTU, "--protocol", "modbus_rtu")
    assert code == 0, err
    assert out[0] == "device: 4000-series protocol=modbus_rtu"
    assert re.fullmatch(
        r"frame @ \d{4}-\d\d-\d\dT\S+\+00:00 protocol=modbus_rtu fault=False maintenance=False",
        out[1],
    )
    assert out[2] == "  I1  Oxygen           20.378 %    ok=True"
    assert out[3] == "  I2  CO                0.084 %    ok=True"
    assert out[4] == "  I3  CO₂                0.25 %    ok=True"
    assert out[5] == "  E1  (unlabelled)          0 mA   ok=True"
    assert out[6] == "  E2  (unlabelled)          0 mA   ok=True"
    assert len(out) == 7


def test_read_auto_address_and_no_identify(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "read", RTU + "&address=30", "--address", "30", "--no-identify")
    assert code == 0, err
    assert out[0].startswith("frame @ ")
    assert out[0].endswith("fault=False maintenance=False")
    assert "protocol=modbus_rtu" in out[0]
    # Without identify a Modbus sweep covers all ten slots (api.md §5).
    assert len(out) == 11
    assert "  I4  (unlabelled)          0 ?    ok=True" in out


def test_read_fixture_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "read", "--fixture", str(LIVE), "--format", "json")
    assert code == 0
    assert len(out) == 1
    doc = json.loads(out[0])
    assert doc["device"]["protocol"] == "continuous"
    assert [c["name"] for c in doc["device"]["channels"]] == ["Oxygen", "CO", "CO2", None, None]
    frame = doc["frame"]
    assert frame["protocol"] == "continuous"
    assert [r["channel"] for r in frame["readings"]] == ["I1", "I2", "I3", "E1", "E2"]
    assert frame["readings"][1]["value"] == 0.084
    assert frame["readings"][0]["value"] in LIVE_O2
    assert frame["readings"][0]["ok"] is True
    assert frame["analyser"]["clock"].startswith("2020-10-06T09:")


def test_read_fixture_with_identify(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "read", "--fixture", str(IDLE))
    assert code == 0
    assert out[0] == "device: 4000-series protocol=continuous"
    assert all(READING_RE.match(line) for line in out[2:]), out
    assert "  I3  CO2                0.25 %    ok=True" in out


def test_read_without_port_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "read")
    assert code == 1
    assert out == []
    assert err.startswith("error: no port given")
    assert "Traceback" not in err


def test_read_bad_port_and_timeout_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "read", "/dev/servomex-does-not-exist", "--protocol", "modbus_rtu")
    assert code == 1
    assert err.startswith("error: could not open /dev/servomex-does-not-exist")
    assert err.count("\n") == 1
    code, _, err = run(capsys, "read", "bogus://x")
    assert (code, err.split(":")[0]) == (1, "error")
    # Wrong address on a Modbus line: a timeout, reported as one line (no traceback).
    code, _, err = run(
        capsys, "read", RTU, "--protocol", "modbus_rtu", "--address", "7", "--timeout", "0.05"
    )
    assert code == 1
    # In words, with the flags' vocabulary; raw bytes and extras only with --verbose.
    assert err == (
        "error: no response from slave (port sim://?mode=modbus_rtu&realtime=0, address 7, "
        "FC04 register 0, after 3 attempts)\n"
    )
    code, _, err = run(
        capsys,
        "read",
        RTU,
        "--protocol",
        "modbus_rtu",
        "--address",
        "7",
        "--timeout",
        "0.05",
        "--verbose",
    )
    assert code == 1
    first, *causes = err.splitlines()
    assert first.startswith("error: no response from slave (protocol modbus_rtu, port sim://")
    assert ", address 7, FC04 register 0, after 3 attempts, " in first
    assert ", request 07 04 00 00 00 " in first  # the raw request, as hex
    assert all(line.startswith("  caused by ") for line in causes)
    assert "Traceback" not in err


def test_read_fixture_with_modbus_protocol_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "read", "--fixture", str(LIVE), "--protocol", "modbus_rtu")
    assert code == 1
    assert err.startswith("error: --fixture replays a continuous capture")


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(main, ["read", "--address", "0"]) == 2
    assert exit_code(main, ["nope"]) == 2
    assert main([]) == 2
    capsys.readouterr()


def test_stream_fixture_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stream", "--fixture", str(LIVE), "--count", "7")
    assert code == 0
    assert len(out) == 7
    assert out[0] in ("I1      20.379 %", "I1      20.378 %")
    assert out[1:5] == [
        "I2       0.084 %",
        "I3       0.247 %",
        "E1         0.0 mA",
        "E2         0.0 mA",
    ]
    assert out[5].startswith("I1      20.37")


def test_stream_modbus_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "stream",
        RTU,
        "--protocol",
        "modbus_rtu",
        "--rate",
        "20",
        "--count",
        "6",
        "--format",
        "json",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out]
    assert len(rows) == 6
    assert [r["channel"] for r in rows] == ["I1", "I2", "I3", "E1", "E2", "I1"]
    assert rows[0]["protocol"] == "modbus_rtu"
    assert rows[0]["latency_s"] > 0
    assert rows[0]["ok"] is True
    assert rows[0]["error"] is None


def test_stream_error_samples_are_printed_and_counted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    frames = LIVE.read_bytes().split(b"\n")
    bad = frames[0][:-2] + b"0;"  # break the checksum of the first frame
    capture = tmp_path / "bad.bin"
    capture.write_bytes(bad + b"\n" + b"\n".join(frames[1:]))
    code, out, _ = run(capsys, "stream", "--fixture", str(capture), "--count", "40")
    assert code == 0
    assert len(out) == 40  # error samples count towards --count
    errors = [line for line in out if line.startswith("error: ")]
    assert errors
    assert all(e.startswith("error: checksum mismatch") for e in errors)
    assert all(
        line[:3] in ("I1 ", "I2 ", "I3 ", "E1 ", "E2 ") for line in out if line not in errors
    )


def test_stream_continuous_sim(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "stream", CONT, "--protocol", "continuous", "--count", "5")
    assert code == 0, err
    assert out[0] == "I1      20.378 %"
    assert out[4] == "E2         0.0 mA"


# ---------------------------------------------------------------------------- decode


def test_decode_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "--fixture", str(IDLE))
    assert code == 0
    text = "\n".join(out)
    reports = text.split("\n\n")
    assert len(reports) == 6
    first = reports[0].splitlines()
    assert first[0].startswith("frame 1: b' 06-10-20;02:54:12;")
    assert first[1] == "  checksum: valid (0x2A1D)"
    assert first[2] == "  protocol: continuous"
    assert first[3] == "  analyser: clock=2020-10-06T02:54:12 fault=False maintenance=False"
    assert first[4] == "  channels (5):"
    assert first[5] == "    I1  Oxygen           20.376 %    ok=True"
    assert first[9] == "    E2  (unlabelled)          0 mA   ok=True"


def test_decode_hex_single_frame_and_bad_checksum(capsys: pytest.CaptureFixture[str]) -> None:
    raw = IDLE.read_bytes().split(b"\n")[0]
    code, out, _ = run(capsys, "decode", "--hex", raw.hex(":"))
    assert code == 0
    assert out[0] == f"frame: {raw!r}"
    assert out[1] == "  checksum: valid (0x2A1D)"
    bad = raw[:-5] + b"2A1E;"
    spaced = " ".join(f"{b:02x}" for b in bad)
    code, out, _ = run(capsys, "decode", "--hex", *spaced.split(" ", 3))
    assert code == 0
    assert out[1] == "  checksum: INVALID (frame says 0x2A1E, computed 0x2A1D)"
    assert out[2].startswith("  parse error: checksum mismatch")
    assert len(out) == 3


def test_decode_bad_hex_and_no_frames(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "decode", "--hex", "20,4")
    assert code == 2
    assert err.startswith("error: --hex: odd number of hex digits")
    code, out, err = run(capsys, "decode", "--hex", "zz")
    assert (code, err.startswith("error: --hex: not hex")) == (2, True)
    code, out, err = run(capsys, "decode", "--hex", "0a0d")
    assert (code, out) == (0, ["no frames found"])


def test_decode_stdin_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(LIVE.read_bytes()))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, _ = run(capsys, "decode", "--format", "json")
    assert code == 0
    docs = [json.loads(line) for line in out]
    assert len(docs) == 6
    assert docs[0]["checksum"] == {"valid": True, "value": "0x2A36", "error": None}
    assert docs[0]["readings"][0]["value"] == 20.379


# ---------------------------------------------------------------------------- diag


def test_diag_plan_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diag", "plan")
    assert code == 0
    assert out == [
        "FC04 start=0 count=70 channels=I1,I2,I3,E1,E2 est=149.7ms",
        "FC02 start=0 count=80 channels=I1,I2,I3,E1,E2 est=82.0ms",
        "FC02 start=1000 count=16 channels=(analyser) est=77.8ms",
        "total est=309.5ms",
    ]


def test_diag_plan_split_ascii_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "diag",
        "plan",
        "--channels",
        "I1,E1,E2",
        "--baud",
        "4800",
        "--protocol",
        "modbus_ascii",
    )
    assert code == 0
    assert out[:2] == [
        "FC04 start=0 count=7 channels=I1 est=186.7ms",
        "FC04 start=56 count=14 channels=E1,E2 est=245.0ms",
    ]  # 431.7 ms together, protocol.md §9.3
    code, out, _ = run(capsys, "diag", "plan", "--format", "json")
    doc = json.loads(out[0])
    assert doc["reads"][0] == {
        "function_code": 4,
        "start": 0,
        "count": 70,
        "channels": ["I1", "I2", "I3", "E1", "E2"],
        "est_ms": 149.652,
    } or doc["reads"][0]["est_ms"] == pytest.approx(149.7, abs=0.05)
    assert doc["total_est_ms"] == pytest.approx(309.5, abs=0.05)
    code, _, err = run(capsys, "diag", "plan", "--channels", "X9")
    assert code == 1
    assert err.startswith("error: ")


def test_diag_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "diag", "loopback", RTU, "--payload", "ABCD")
    assert code == 0, err
    assert out == ["loopback sent=ABCD echo=ABCD ok=True"]
    code, out, err = run(capsys, "diag", "loopback", "--fixture", str(LIVE))
    assert code == 1
    assert err.startswith("error: diag loopback needs a Modbus port")
    code, out, err = run(capsys, "diag", "loopback", RTU, "--payload", "ABCDEF")
    assert code == 1
    assert "2 bytes" in err


def test_diag_tap_and_jitter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diag", "tap", "--fixture", str(LIVE), "--count", "3")
    assert code == 0
    assert out[0] in ("I1      20.379 %", "I1      20.378 %")
    assert out[1:] == ["I2       0.084 %", "I3       0.247 %"]
    code, out, _ = run(capsys, "diag", "jitter", "--fixture", str(LIVE), "--count", "4")
    assert code == 0
    match = re.fullmatch(
        r"samples=4 gap_ms min=(\d+\.\d{3}) mean=(\d+\.\d{3}) max=(\d+\.\d{3})", out[0]
    )
    assert match, out
    low, mean, high = map(float, match.groups())
    assert 0 < low <= mean <= high
    code, out, _ = run(capsys, "diag", "jitter", "--fixture", str(LIVE), "--count", "1")
    assert (code, out) == (0, ["not enough samples to measure jitter"])


def test_diag_without_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diag"]) == 2  # no diagnostic chosen: help on stderr
    assert "--i-understand-this-is-destructive" in capsys.readouterr().err


# ---------------------------------------------------------------------------- aliases


def test_aliases_have_identical_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert read_main(["--fixture", str(IDLE), "--no-identify", "--format", "json"]) == 0
    alias = json.loads(capsys.readouterr().out)
    assert main(["read", "--fixture", str(IDLE), "--no-identify", "--format", "json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert [r["value"] for r in alias["frame"]["readings"]] == [
        r["value"] for r in full["frame"]["readings"]
    ]
    assert stream_main(["--fixture", str(IDLE), "--count", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["I1      20.376 %", "I2       0.084 %"]
    assert diag_main(["plan"]) == 0
    assert capsys.readouterr().out.endswith("total est=309.5ms\n")
    assert decode_main(["--hex", "0a"]) == 0
    assert capsys.readouterr().out == "no frames found\n"
    assert discover_main([]) == 2
    assert exit_code(capture_main, []) == 2  # --out is required
    err = capsys.readouterr().err
    assert "servomex-capture" in err
    assert "--out" in err
    assert exit_code(read_main, ["--version"]) == 0
    assert capsys.readouterr().out == f"servomex-read {__version__}\n"


# ---------------------------------------------------------------------------- value_state


def test_readings_without_a_value_show_their_state(capsys: pytest.CaptureFixture[str]) -> None:
    over = CONT + "&scenario=overrange"
    code, out, err = run(capsys, "read", over, "--protocol", "continuous")
    assert code == 0, err
    assert "  I2  CO           over_range %    ok=False" in out  # not a bare None, never ok
    assert "  I1  Oxygen           20.378 %    ok=True" in out
    code, out, _ = run(capsys, "read", over, "--protocol", "continuous", "--format", "json")
    co = json.loads(out[0])["frame"]["readings"][1]
    assert (co["channel"], co["value"], co["value_state"], co["ok"]) == (
        "I2",
        None,
        "over_range",
        False,
    )
    keys = list(co)
    assert keys[keys.index("value") + 1] == "value_state"  # next to the value
    code, out, _ = run(capsys, "stream", over, "--protocol", "continuous", "--count", "3")
    assert out == ["I1      20.378 %", "I2  over_range %", "I3        0.25 %"]
    code, out, _ = run(
        capsys, "stream", over, "--protocol", "continuous", "--count", "2", "--format", "json"
    )
    rows = [json.loads(line) for line in out]
    assert [(r["value"], r["value_state"]) for r in rows] == [(20.378, "ok"), (None, "over_range")]
    code, out, _ = run(capsys, "diag", "tap", over, "--protocol", "continuous", "--count", "2")
    assert out == ["I1      20.378 %", "I2  over_range %"]
    # The simulator sends Modbus NaN for over-range (api.md §16.1): a non-finite value is
    # invalid, not over-range (api.md §2).
    code, out, _ = run(capsys, "read", RTU + "&scenario=overrange", "--protocol", "modbus_rtu")
    assert "  I2  CO              invalid %    ok=False" in out
