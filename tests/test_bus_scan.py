"""scan_bus (api.md §13 discover, §14): every analyser on a multidrop line, read-only.

The async tests run the realistic simulator (19200 baud pacing, 15-30 ms turnaround, the
silence rule) on the event loop's clock, on virtual time (tests/_virtual_time.py): a 247-address
scan is ~30 s of the simulated timeline and costs a fraction of a second of wall time, and its
duration is measured exactly on that timeline. The end-to-end tests drive the ``servomex``
command against the simulator on a real pseudo-terminal, in real time.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from anymodbus.crc import crc16_modbus_bytes

from _virtual_time import virtual_anyio_backend as anyio_backend
from helpers import WORKED_FRAME
from servomexlib.cli import main
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.discovery import (
    DiscoveryResult,
    ScanProgress,
    discover_port,
    format_addresses,
    parse_addresses,
    scan_bus,
)
from servomexlib.discovery.line_watcher import ReplySpotter
from servomexlib.errors import (
    ServomexConnectionError,
    ServomexModbusError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.sim import RequestOutcome, SimLine, Simulator

__all__ = ["anyio_backend"]

RTU, ASCII, CONT = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII, ProtocolKind.CONTINUOUS_ASCII
CHANNELS = [ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.E1, ChannelId.E2]
SERVOMEX = Path(sys.executable).with_name("servomex")


def virtual_bus(*addresses: int, **kw: Any) -> list[Simulator]:
    """Analysers at ``addresses`` on one simulated line, on the event loop's (virtual) clock."""
    sims = [Simulator(address=a, line_clock=anyio.current_time, **kw) for a in addresses]
    SimLine(*sims)
    return sims


def requests_by_fc(sim: Simulator) -> Counter[tuple[int, int]]:
    """``(address, function code)`` → how many such requests the line carried (any address).

    Requests with a bad checksum are left out: the analyser's splitter for its own framing
    also cuts "requests" out of the other framing's bytes (RTU bytes holding ``:`` … CR LF
    look like the start and end of an ASCII frame), and it drops them as corrupt.
    """
    valid = [r for r in sim.requests if r.outcome is not RequestOutcome.BAD_CHECKSUM]
    if sim.mode is ASCII:
        return Counter((int(r.adu[1:3], 16), int(r.adu[3:5], 16)) for r in valid)
    return Counter((r.adu[0], r.adu[1]) for r in valid)


def rtu(hex_text: str) -> bytes:
    body = bytes.fromhex(hex_text)
    return body + crc16_modbus_bytes(body)


# ------------------------------------------------------------------------ a whole bus


@pytest.mark.anyio
async def test_a_scan_of_1_to_247_finds_the_three_analysers_once_each() -> None:
    sims = virtual_bus(1, 2, 30)
    transport = sims[0].transport()
    events: list[ScanProgress] = []
    with anyio.fail_after(600):  # virtual seconds
        started = anyio.current_time()
        results = await scan_bus(transport, addresses="1-247", on_progress=events.append)
        elapsed = anyio.current_time() - started
    assert transport.is_open  # borrowed, left open
    await transport.aclose()

    assert [r.address for r in results] == [1, 2, 30]
    for r in results:
        assert r.ok, r.error
        assert r.protocol is RTU
        assert r.info is not None
        assert r.info.address == r.address
        assert [c.channel for c in r.info.channels] == CHANNELS
        assert [c.name for c in r.info.channels] == ["Oxygen", "CO", "CO₂", None, None]

    # On the wire: each address probed exactly once (FC08), then one FC04 (0, 70) identify of
    # each analyser found; nothing else (read-only), nothing lost to the silence rule.
    seen = requests_by_fc(sims[0])
    assert {a for a, fc in seen if fc == 0x08} == set(range(1, 248))
    assert all(n == 1 for n in seen.values())
    assert sorted(a for a, fc in seen if fc != 0x08) == [1, 2, 30]
    assert {fc for _, fc in seen} == {0x08, 0x04}
    identify = [r.adu for r in sims[0].requests if r.adu[1] == 0x04]
    assert identify == [rtu(f"{a:02X} 04 0000 0046") for a in (1, 2, 30)]
    outcomes = Counter(r.outcome for r in sims[0].requests)
    assert RequestOutcome.SILENCE_DROPPED not in outcomes
    # 247 short probes, not 247 timeouts: ~30 s of line time at 19200 baud.
    assert 20 < elapsed < 45

    probing = [e for e in events if e.phase == "probing"]
    assert [e.done for e in probing] == list(range(1, 248))
    assert {e.total for e in probing} == {247}
    assert [e.found for e in probing if e.done in (1, 2, 29, 30, 247)] == [1, 2, 2, 3, 3]
    identifying = [e for e in events if e.phase == "identifying"]
    assert [(e.done, e.total, e.found) for e in identifying] == [(1, 3, 1), (2, 3, 2), (3, 3, 3)]
    assert all(e.protocol is RTU and e.port == "sim://" for e in events)


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", [None, "modbus_ascii"])
async def test_an_ascii_bus_is_found_with_or_without_the_protocol(protocol: str | None) -> None:
    sims = virtual_bus(3, 7, mode="modbus_ascii")
    transport = sims[0].transport()
    with anyio.fail_after(600):
        started = anyio.current_time()
        results = await scan_bus(transport, addresses="1-10", protocol=protocol)
        elapsed = anyio.current_time() - started
    await transport.aclose()
    assert [(r.address, r.protocol, r.ok) for r in results] == [(3, ASCII, True), (7, ASCII, True)]
    seen = requests_by_fc(sims[0])  # an ASCII analyser sees only ASCII requests
    assert {a for a, fc in seen if fc == 0x08} == set(range(1, 11))
    assert all(n == 1 for n in seen.values())
    assert sorted(a for a, fc in seen if fc == 0x04) == [3, 7]
    # AUTO paid one unanswered RTU pass first (10 probes, each ≈ 0.12 s); an explicit
    # framing did not.
    if protocol is None:
        assert elapsed > 10 * 0.1 + 2 * 0.15
    else:
        assert elapsed < 10 * 0.15 + 2 * 0.25


@pytest.mark.anyio
async def test_auto_on_a_broadcasting_line_stops_at_the_first_frame() -> None:
    (sim,) = virtual_bus(1, mode="continuous", frame_period=0.5)
    transport = sim.transport()
    with anyio.fail_after(600):
        started = anyio.current_time()
        (result,) = await scan_bus(transport, addresses="1-247")
        elapsed = anyio.current_time() - started
    await transport.aclose()
    assert result.ok
    assert result.is_broadcaster
    assert result.address is None
    assert result.info is not None
    assert [c.channel for c in result.info.channels] == CHANNELS
    # The first frame (after 50 ms, 200 bytes at 19200) ended the RTU pass.
    assert elapsed < 1.0


@pytest.mark.anyio
async def test_a_modbus_scan_of_a_broadcasting_line_says_so() -> None:
    (sim,) = virtual_bus(1, mode="continuous", frame_period=0.5)
    transport = sim.transport()
    with anyio.fail_after(600):
        (result,) = await scan_bus(transport, addresses=[5], protocol="modbus_rtu")
    await transport.aclose()
    assert not result.ok
    assert result.protocol is None
    assert result.hint is not None
    assert result.hint.continuous_broadcast
    assert isinstance(result.error, ServomexConnectionError)
    assert result.error.message == (
        "no device at address 5 on sim:// (the line carries a continuous broadcast: "
        "try protocol='continuous')"
    )
    assert result.error.context.address == 5
    assert result.error.context.extra["continuous_broadcast"] is True


@pytest.mark.anyio
async def test_an_explicit_continuous_scan_listens_and_identifies() -> None:
    (sim,) = virtual_bus(1, mode="continuous", frame_period=0.5)
    transport = sim.transport()
    with anyio.fail_after(600):
        (result,) = await scan_bus(transport, addresses=1, protocol="continuous")
    await transport.aclose()
    assert (result.ok, result.protocol) == (True, CONT)
    assert sim.requests == ()  # nothing was sent at all


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("addresses", "protocol", "error", "message"),
    [
        (
            [5],
            "modbus_rtu",
            ServomexConnectionError,
            "no device at address 5 on sim:// (addresses 1, 2, 30 answer in modbus_rtu: "
            "try scan_bus(addresses=[1, 2, 30]))",
        ),
        (
            "3-29",
            None,
            ServomexConnectionError,
            "no device at addresses 3-29 on sim:// (addresses 1, 2, 30 answer in modbus_rtu: "
            "try scan_bus(addresses=[1, 2, 30]))",
        ),
    ],
)
async def test_a_wrong_address_names_the_addresses_that_answer(
    addresses: Any, protocol: str | None, error: type[Exception], message: str
) -> None:
    sims = virtual_bus(1, 2, 30)
    transport = sims[0].transport()
    with anyio.fail_after(600):
        (result,) = await scan_bus(transport, addresses=addresses, protocol=protocol)
    await transport.aclose()
    assert not result.ok
    assert isinstance(result.error, error)
    assert result.error.message == message
    assert result.hint is not None
    assert (result.hint.answering, result.hint.answering_protocol) == ((1, 2, 30), RTU)
    assert result.error.context.extra["answering_addresses"] == "1-2,30"


@pytest.mark.anyio
async def test_nothing_anywhere_is_a_plain_no_device() -> None:
    sims = virtual_bus(100)  # not asked, not a common address, never seen
    transport = sims[0].transport()
    with anyio.fail_after(600):
        (rtu_only,) = await scan_bus(transport, addresses=[5], protocol="modbus_rtu")
        (auto,) = await scan_bus(transport, addresses=[5, 6], timeout=0.2, frame_period=0.1)
    await transport.aclose()
    assert rtu_only.hint is None
    assert isinstance(rtu_only.error, ServomexTimeoutError)
    assert rtu_only.error.message == "no device at address 5 on sim:// (no FC08 echo in modbus_rtu)"
    assert auto.hint is None
    assert isinstance(auto.error, ServomexConnectionError)
    assert auto.error.message.startswith("no recognised protocol on sim:// (no FC08 echo from")
    # Hint probes went to 1, 2 and 30 (in both framings under AUTO), never to 100.
    asked = {a for a, _ in requests_by_fc(sims[0])}
    assert asked == {1, 2, 5, 6, 30}


@pytest.mark.anyio
async def test_an_address_seen_answering_on_the_line_becomes_the_hint() -> None:
    sims = virtual_bus(77)
    transport = sims[0].transport()
    # Another master's exchange with address 77 is on the line when the scan starts.
    sims[0].inject(rtu("4D 04 02 12 34"))
    with anyio.fail_after(600):
        (result,) = await scan_bus(transport, addresses=[5], protocol="modbus_rtu")
    await transport.aclose()
    assert result.hint is not None
    assert result.hint.answering == (77,)
    assert (0x4D, 0x08) in requests_by_fc(sims[0])  # 77 was probed to confirm it answers


@pytest.mark.anyio
@pytest.mark.parametrize("addresses", ["1-10", "1-7"])
async def test_a_late_echo_still_finds_a_slow_analyser(addresses: str) -> None:
    """Address 7 answers after 150 ms, past the probe's 68 ms: its echo is seen during the next
    probe (1-10) or in the listening after the pass (1-7), and it is identified."""
    sims = virtual_bus(7, latency_s=0.15)
    transport = sims[0].transport()
    with anyio.fail_after(600):
        results = await scan_bus(transport, addresses=addresses)
    await transport.aclose()
    assert [(r.address, r.ok) for r in results] == [(7, True)]
    seen = requests_by_fc(sims[0])
    assert seen[(7, 0x08)] == 1  # probed once, not retried
    assert seen[(7, 0x04)] == 1  # identified


@pytest.mark.anyio
async def test_an_analyser_whose_identify_fails_is_reported_with_its_error() -> None:
    good = Simulator(address=1, line_clock=anyio.current_time)
    broken = Simulator(address=2, line_clock=anyio.current_time)
    broken.refuse(0x04, exception=0x04)  # answers the probe, fails the identify read
    SimLine(good, broken)
    transport = good.transport()
    with anyio.fail_after(600):
        results = await scan_bus(transport, addresses="1-3")
    await transport.aclose()
    assert [(r.address, r.protocol, r.ok) for r in results] == [(1, RTU, True), (2, RTU, False)]
    error = results[1].error
    assert isinstance(error, ServomexModbusError)
    assert error.context.address == 2
    assert error.context.extra["exception_code"] == 4
    assert results[1].info is None


@pytest.mark.anyio
async def test_the_port_vanishing_mid_scan_is_an_error_result() -> None:
    sims = virtual_bus(1, 2, 30)
    transport = sims[0].transport()

    def pull_the_cable(progress: ScanProgress) -> None:
        if progress.done == 5:
            sims[0].line.vanish()

    with anyio.fail_after(600):
        (result,) = await scan_bus(transport, addresses="1-247", on_progress=pull_the_cable)
    await transport.aclose()
    assert not result.ok
    assert isinstance(result.error, ServomexConnectionError)
    assert result.error.context.port == "sim://"
    assert len(sims[0].requests) == 5  # stopped at once


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("addresses", "match"),
    [
        ("0", "outside 1-247"),
        ("1-248", "outside 1-247"),
        ("10-1", "runs backwards"),
        ("1,2,2", "given twice"),
        ("1-5,3", "given twice"),
        ("", "expected Modbus addresses"),
        ("1,,2", "empty item"),
        ("a-b", "not a Modbus address"),
        ([], "no Modbus address"),
        ([1, True], "1-247"),
        (3.0, "addresses must be"),
    ],
)
async def test_bad_addresses_are_refused_before_any_io(addresses: Any, match: str) -> None:
    sims = virtual_bus(1)
    transport = sims[0].transport()
    (result,) = await scan_bus(transport, addresses=addresses)
    await transport.aclose()
    assert isinstance(result.error, ServomexValidationError)
    assert match in result.error.message
    assert result.error.context.port == "sim://"
    assert sims[0].requests == ()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"protocol": "modbus_tcp"}, "unknown protocol"),
        ({"timeout": 0}, "timeout"),
        ({"probe_wait": -1.0}, "probe_wait"),
        ({"frame_period": float("nan")}, "frame_period"),
    ],
)
async def test_bad_arguments_are_refused_before_any_io(kwargs: dict[str, Any], match: str) -> None:
    sims = virtual_bus(1)
    transport = sims[0].transport()
    (result,) = await scan_bus(transport, addresses=[1], **kwargs)
    await transport.aclose()
    assert isinstance(result.error, ServomexValidationError)
    assert match in result.error.message
    assert sims[0].requests == ()


@pytest.mark.anyio
async def test_discover_port_at_a_wrong_address_names_the_right_one() -> None:
    sims = virtual_bus(30)
    transport = sims[0].transport()
    with anyio.fail_after(600):
        result = await discover_port(transport, address=5, timeout=0.3, frame_period=0.2)
    await transport.aclose()
    assert not result.ok
    assert isinstance(result.error, ServomexConnectionError)
    assert result.error.message == (
        "no device at address 5 on sim:// (address 30 answers in modbus_rtu: try address=30)"
    )
    assert result.hint is not None
    assert result.hint.answering == (30,)
    assert result.error.__cause__ is not None  # the ladder's "no recognised protocol"
    assert str(result.error.__cause__).startswith("no recognised protocol on sim://")


@pytest.mark.anyio
async def test_discover_port_reports_the_address_of_a_modbus_analyser() -> None:
    sims = virtual_bus(30)
    transport = sims[0].transport()
    with anyio.fail_after(600):
        result = await discover_port(transport, address=30)
    await transport.aclose()
    assert (result.ok, result.address, result.protocol) == (True, 30, RTU)


# ------------------------------------------------------------------------ pure parts


def test_parse_and_format_addresses() -> None:
    assert parse_addresses("1,2,30") == (1, 2, 30)
    assert parse_addresses(" 30 , 1-3 ") == (1, 2, 3, 30)
    assert parse_addresses("1-247") == tuple(range(1, 248))
    assert parse_addresses("7-7") == (7,)
    assert format_addresses(range(1, 248)) == "1-247"
    assert format_addresses([30, 1, 2, 3, 10]) == "1-3,10,30"
    for text in ("5", "1-3,10,30-32", "1,3,5"):
        assert format_addresses(parse_addresses(text)) == text


ECHO_30 = rtu("1E 08 0000 1234")
EXCEPTION_2 = rtu("02 84 02")
READ_REPLY_9 = rtu("09 04 04 41A3 0A3D")
ASCII_ECHO_30 = b":1E080000123494\r\n"
CONTINUOUS_FRAME = WORKED_FRAME  # printable text: never a Modbus reply


def spot(chunks: list[bytes]) -> dict[ProtocolKind, set[int]]:
    spotter = ReplySpotter()
    for chunk in chunks:
        spotter.feed(chunk)
    return spotter.seen


@pytest.mark.parametrize(
    "way", ["whole", "byte by byte", "wrapped in garbage"], ids=lambda w: w.replace(" ", "-")
)
def test_the_reply_spotter_finds_replies_however_they_arrive(way: str) -> None:
    stream = ECHO_30 + EXCEPTION_2 + READ_REPLY_9 + ASCII_ECHO_30 + CONTINUOUS_FRAME
    if way == "whole":
        chunks = [stream]
    elif way == "byte by byte":
        chunks = [bytes((b,)) for b in stream]
    else:
        noise = bytes(range(0x20, 0x7F)) + b"\xff\x00\x13"
        chunks = [noise, ECHO_30, noise, EXCEPTION_2 + noise + READ_REPLY_9, noise]
        chunks += [ASCII_ECHO_30[:5], ASCII_ECHO_30[5:] + noise + CONTINUOUS_FRAME]
    seen = spot(chunks)
    assert seen[RTU] == {30, 2, 9}
    assert seen[ASCII] == {30}


def test_the_reply_spotter_ignores_what_is_not_a_reply() -> None:
    bad_crc = bytearray(ECHO_30)
    bad_crc[-1] ^= 0xFF
    request = rtu("05 04 0000 0046")  # a read request is not a read reply
    broadcast = rtu("00 08 0000 1234")  # address 0 never answers
    bad_lrc = b":1E080000123495\r\n"
    seen = spot([bytes(bad_crc), request, broadcast, bad_lrc, CONTINUOUS_FRAME * 3])
    assert seen[RTU] == set()
    assert seen[ASCII] == set()


def test_the_reply_spotter_keeps_a_bounded_buffer() -> None:
    spotter = ReplySpotter()
    junk = bytes((1, 4, 200)) * 20_000  # every offset starts a long candidate read reply
    for i in range(0, len(junk), 997):
        spotter.feed(junk[i : i + 997])
        assert len(spotter._rtu) <= 260 + 997
    spotter.feed(ECHO_30)
    assert spotter.seen[RTU] == {30}


# ------------------------------------------------------------------------ the CLI, end to end


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
@pytest.mark.timeout(150)
def test_the_cli_scans_1_to_247_on_a_pty_in_well_under_a_minute(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real time on purpose: the acceptance bound is the wall time of a real scan over a
    pseudo-terminal (≈ 30 s: 247 short probes at 19200 baud)."""
    sims = [Simulator(address=a) for a in (1, 2, 30)]
    line = SimLine(*sims)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(line),
    ):
        path = portal.call(line.serve_pty)
        started = time.monotonic()
        code = main(["discover", path, "--address", "1-247"])
        elapsed = time.monotonic() - started
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    block = [
        "    I1  Oxygen (%)",
        "    I2  CO (%)",
        "    I3  CO₂ (%)",
        "    E1  None (mA)",
        "    E2  None (mA)",
    ]
    assert out == [
        f"{path}: modbus_rtu address 1",
        *block,
        f"{path}: modbus_rtu address 2",
        *block,
        f"{path}: modbus_rtu address 30",
        *block,
        "",
        "1/1 port(s) recognised",
    ]
    seen = requests_by_fc(sims[0])
    assert {a for a, fc in seen if fc == 0x08} == set(range(1, 248))
    assert all(n == 1 for n in seen.values())
    assert sorted(a for a, fc in seen if fc == 0x04) == [1, 2, 30]
    print(f"1-247 scan over a pty: {elapsed:.1f} s", file=sys.stderr)
    assert elapsed < 60


def _run_discover(stderr_tty: bool) -> tuple[str, bytes]:
    """``servomex discover`` on a sim:// bus with stderr on a pty (or a pipe)."""
    argv = [str(SERVOMEX), "discover", "sim://?address=1,2,30&realtime=0", "--address", "1-4"]
    if not stderr_tty:
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0
        return done.stdout.decode(), done.stderr
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, close_fds=True)
    os.close(slave)
    err = b""
    try:
        stdout, _ = proc.communicate(timeout=60)
        while select.select([master], [], [], 0.2)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            err += chunk
    except OSError:
        pass  # the pty closes (EIO) once the child is gone and everything was read
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0
    return stdout.decode(), err


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_progress_is_drawn_on_a_terminal_stderr_only() -> None:
    out_tty, err_tty = _run_discover(stderr_tty=True)
    out_pipe, err_pipe = _run_discover(stderr_tty=False)
    assert out_tty == out_pipe
    assert "sim://?address=1,2,30&realtime=0: modbus_rtu address 2" in out_tty.splitlines()
    text = err_tty.decode()
    assert "\rsim://?address=1,2,30&realtime=0: scanning 1/4, found 1 (modbus_rtu)\x1b[K" in text
    assert "scanning 4/4, found 2 (modbus_rtu)" in text
    assert "identifying 2/2 (modbus_rtu)" in text
    assert text.endswith("\r\x1b[K")  # the line is cleared before the results are printed
    assert err_pipe == b""


def test_results_are_frozen_values() -> None:
    result = DiscoveryResult("p", None, None)
    with pytest.raises(AttributeError):
        result.address = 3  # type: ignore[misc]
    assert (result.address, result.hint, result.ok) == (None, None, False)
