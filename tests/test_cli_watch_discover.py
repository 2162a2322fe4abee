"""`servomex watch` (non-TTY, rendered with a forced terminal, and in a real pty) and
`servomex discover`."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from servomexlib.cli import build_parser, main
from servomexlib.cli import discover as discover_cmd
from servomexlib.cli import watch as watch_cmd
from servomexlib.cli.watch import WatchState, flags_text, render, sparkline
from servomexlib.decode import decode_frame, split_frames
from servomexlib.devices.models import ProtocolKind
from servomexlib.sim import Simulator
from servomexlib.streaming import recorder
from servomexlib.transport.listing import SerialPortInfo

DATA = Path(__file__).parent / "data"
LIVE = DATA / "continuous_4100_live_5ch.bin"
CONT = "sim://?mode=continuous&period=0.05"
SERVOMEX = Path(sys.executable).with_name("servomex")


def test_sparkline() -> None:
    assert sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5.0, 5.0, 5.0]) == "▁▁▁"
    assert sparkline([1.0, None, 3.0]) == "▁ █"
    assert sparkline([]) == ""


def test_watch_not_a_tty_prints_read_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["watch", CONT, "--protocol", "continuous", "--count", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == 12
    for block in (out[:6], out[6:]):
        assert re.fullmatch(
            r"frame @ \S+ protocol=continuous fault=False maintenance=False", block[0]
        )
        assert block[1] == "  I1  Oxygen           20.378 %    ok=True"
        assert block[5] == "  E2  (unlabelled)          0 mA   ok=True"


def test_watch_modbus_fixture_alarm(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["watch", "sim://?realtime=0&scenario=alarm", "--rate", "20", "--count", "1"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[1] == "  I1  Oxygen           20.378 %    ok=False"  # alarm 1
    assert "protocol=modbus_rtu" in out[0]


def test_watch_render_forced_terminal() -> None:
    from rich.console import Console

    frames = [decode_frame(raw) for raw in split_frames(LIVE.read_bytes())]
    state = WatchState(
        port="/dev/ttyUSB0", protocol=ProtocolKind.CONTINUOUS_ASCII, address=None, history=4
    )
    for frame in frames:
        state.update(frame, dropped=2)
    console = Console(force_terminal=True, width=110, record=True, color_system=None)
    console.print(render(state))
    text = console.export_text()
    assert "/dev/ttyUSB0  protocol continuous  address -" in text
    assert "analyser --  cal 1:idle 2:idle 3:idle 4:idle" in text
    assert "dropped 2" in text
    assert re.search(r"│ I1 +│ Oxygen +│ +20\.378 │ % +│ - - - - - - - - │ ▁▁▁▁ +│", text)
    assert re.search(r"│ E2 +│ \(unlabelled\) +│ +0 │ mA +│", text)
    assert "F M C W 1 2 3 4" in text
    assert flags_text(frames[0].readings[0]) == "- - - - - - - -"


def outage_start(state: WatchState) -> float | None:
    return state.lost_at  # read through a function: the type checker narrows attributes


def test_watch_render_shows_an_outage() -> None:
    from rich.console import Console

    frame = decode_frame(split_frames(LIVE.read_bytes())[0])
    state = WatchState(port="COM3", protocol=ProtocolKind.CONTINUOUS_ASCII, address=None)
    state.update(frame)
    state.lost_at, state.outage_s = 100.0, 3.24
    console = Console(force_terminal=True, width=110, record=True, color_system=None)
    console.print(render(state))
    assert "link lost 3.2 s, reconnecting…" in console.export_text()
    state.link_back()
    assert outage_start(state) is None
    assert state.last_outage_s == 3.24
    console.print(render(state))
    assert console.export_text().count("link lost") == 0  # export_text() clears the record


@pytest.mark.anyio
async def test_watch_reconnects_after_a_lost_link(
    anyio_backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulated device vanishes after two sweeps and returns 0.4 s later (real time: the
    backoff sleeps are real; a 0.1 s step keeps the test short)."""
    monkeypatch.setattr(recorder, "BACKOFF_STEPS_S", (0.1,))
    name = f"cli-watch-reconnect-{anyio_backend}"
    sim = Simulator(name=name, realtime=False)
    args = build_parser().parse_args(
        ["watch", f"sim://{name}", "--protocol", "modbus_rtu", "--rate", "10", "--count", "5"]
    )
    sweeps_before = 0

    async def pull_the_cable() -> None:
        nonlocal sweeps_before
        with anyio.fail_after(10):
            # The simulator's request log has no event to wait on: poll it.
            while sum(r.adu[1] == 0x04 for r in sim.requests) < 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # (identify and two sweeps answered)
        sweeps_before = sum(r.adu[1] == 0x04 for r in sim.requests)
        sim.vanish()
        await anyio.sleep(0.4)
        sim.reappear()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pull_the_cable)
            code = await watch_cmd._watch(args)
    out, err = capsys.readouterr()
    assert code == 0
    frames = [line for line in out.splitlines() if line.startswith("frame @ ")]
    assert len(frames) == 5  # the watch went on after the outage until --count
    assert sweeps_before >= 3
    lost, back = err.splitlines()
    assert lost.startswith("watch: link lost (")
    assert lost.endswith("); reconnecting…")
    match = re.fullmatch(r"watch: link back after (\d+\.\d) s", back)
    assert match, back
    assert float(match.group(1)) >= 0.3


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_watch_in_a_pty_quits_on_q() -> None:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(
        [str(SERVOMEX), "watch", CONT + "&scenario=drift", "--protocol", "continuous"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and screen.count(b"E2 ") < 3:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                screen += os.read(master, 65536)
        os.write(master, b"q")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            while select.select([master], [], [], 0.1)[0]:
                screen += os.read(master, 65536)
        except OSError:
            pass
        os.close(master)
    text = screen.decode("utf-8", "replace")
    for row in ("I1", "I2", "I3", "E1", "E2"):
        assert re.search(rf"│ {row} +│", text), text[-2000:]
    assert "Oxygen" in text
    assert "protocol continuous" in text
    assert re.search(r"│ [▁▂▃▄▅▆▇█]{3,} +│", text)  # a sparkline has grown


# ---------------------------------------------------------------------------- discover


def test_discover_ports_and_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "discover",
            "sim://?mode=continuous&period=0.1",
            "sim://?realtime=0",
            "/dev/servomex-none",
            "--fixture",
            str(LIVE),
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "sim://?mode=continuous&period=0.1: continuous [broadcaster]"
    assert out[1:6] == [
        "    I1  Oxygen (%)",
        "    I2  CO (%)",
        "    I3  CO2 (%)",
        "    E1  None (mA)",
        "    E2  None (mA)",
    ]
    assert out[6] == "sim://?realtime=0: modbus_rtu address 1"
    assert out[9] == "    I3  CO₂ (%)"
    assert out[12].startswith("/dev/servomex-none: no device (could not open /dev/servomex-none")
    assert out[13] == f"{LIVE}: continuous [broadcaster]"
    assert out[-2:] == ["", "3/4 port(s) recognised"]


def test_discover_nothing_found_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", "/dev/servomex-none"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["", "0/1 port(s) recognised"]
    assert main(["discover", "--fixture", str(LIVE), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["broadcaster"] is True
    assert doc["protocol"] == "continuous"
    assert doc["address"] is None
    assert doc["hint"] is None
    assert [c["channel"] for c in doc["device"]["channels"]] == ["I1", "I2", "I3", "E1", "E2"]


FAKE_PORTS = [
    SerialPortInfo(
        "/dev/ttyUSB0",
        "FT232R USB UART",
        vid=0x0403,
        pid=0x6001,
        serial_number="A12345",
        by_id="/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A12345-if00-port0",
    ),
    SerialPortInfo("/dev/ttyS0"),
]


def test_discover_without_a_port_lists_the_serial_ports(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fake_listing() -> list[SerialPortInfo]:
        return FAKE_PORTS

    monkeypatch.setattr(discover_cmd, "list_ports", fake_listing)
    assert main(["discover"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "/dev/ttyUSB0  FT232R USB UART  [0403:6001]  "
        "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A12345-if00-port0",
        "/dev/ttyS0  (no description)",
    ]
    assert err.startswith("give a port to probe (servomex discover PORT")
    assert main(["discover", "--format", "json"]) == 2
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["path"] for d in docs] == ["/dev/ttyUSB0", "/dev/ttyS0"]
    assert (docs[0]["vid"], docs[0]["pid"], docs[0]["usb_id"]) == (0x0403, 0x6001, "0403:6001")
    assert docs[1]["usb_id"] is None

    async def no_ports() -> list[SerialPortInfo]:
        return []

    monkeypatch.setattr(discover_cmd, "list_ports", no_ports)
    assert main(["discover"]) == 2
    assert capsys.readouterr().out == "no serial ports found on this machine\n"


BUS = "sim://?address=1,2,30&realtime=0"
BLOCK = [
    "    I1  Oxygen (%)",
    "    I2  CO (%)",
    "    I3  CO₂ (%)",
    "    E1  None (mA)",
    "    E2  None (mA)",
]


def test_discover_scans_a_simulated_bus(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["discover", BUS, "--address", "1-4,30"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        f"{BUS}: modbus_rtu address 1",
        *BLOCK,
        f"{BUS}: modbus_rtu address 2",
        *BLOCK,
        f"{BUS}: modbus_rtu address 30",
        *BLOCK,
        "",
        "1/1 port(s) recognised",
    ]
    assert main(["discover", BUS, "--address", "2,30", "--format", "json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["address"], d["ok"], d["protocol"]) for d in docs] == [
        (2, True, "modbus_rtu"),
        (30, True, "modbus_rtu"),
    ]
    assert [d["device"]["address"] for d in docs] == [2, 30]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            [BUS, "--address", "5", "--protocol", "modbus_rtu"],
            f"{BUS}: no device at address 5 (addresses 1, 2, 30 answer: try --address 1,2,30)",
        ),
        (
            [
                "sim://?address=30&realtime=0",
                "--address",
                "5-9",
                "--timeout",
                "0.2",
                "--frame-period",
                "0.1",
            ],
            "sim://?address=30&realtime=0: no device at addresses 5-9 "
            "(address 30 answers: try --address 30)",
        ),
        (
            [CONT, "--address", "5", "--protocol", "modbus_rtu"],
            f"{CONT}: no device at address 5 "
            "(the line carries a continuous broadcast: try --protocol continuous)",
        ),
    ],
)
def test_discover_says_what_the_line_carries_at_a_wrong_address(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["discover", *argv]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [line, "", "0/1 port(s) recognised"]


def test_discover_json_carries_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["discover", CONT, "--address", "5", "--protocol", "modbus_rtu", "--format", "json"]
    assert main(argv) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["hint"] == {
        "continuous_broadcast": True,
        "answering": [],
        "answering_protocol": None,
        "text": "the line carries a continuous broadcast: try --protocol continuous",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "outside 1-247"),
        ("248", "outside 1-247"),
        ("10-1", "runs backwards: write 1-10"),
        ("1,1", "given twice"),
        ("x", "not a Modbus address"),
        ("", "expected Modbus addresses"),
    ],
)
def test_discover_refuses_a_bad_address_list_before_any_io(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["discover", "/dev/servomex-none", "--address", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --address" in err
    assert message in err


def test_discover_refuses_a_modbus_protocol_with_a_fixture(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["discover", "--fixture", str(LIVE), "--protocol", "modbus_rtu"]) == 1
    assert "--fixture replays a continuous capture" in capsys.readouterr().err


def test_discover_alias_has_the_same_options(capsys: pytest.CaptureFixture[str]) -> None:
    from servomexlib.cli import discover_main

    assert discover_main([BUS, "--address", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{BUS}: modbus_rtu address 2"
