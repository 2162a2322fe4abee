"""`sim://` port strings: every query key, validation, named sharing, presets."""

from __future__ import annotations

from datetime import datetime

import anyio
import anyio.abc
import pytest

from servomexlib import decode_frame
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.errors import ServomexConnectionError, ServomexValidationError
from servomexlib.sim import PRESETS, RequestOutcome, Simulator, connect_url
from servomexlib.sim.model import rtu_adu
from servomexlib.sim.url import parse_sim_url
from servomexlib.transport.timed import TimedReader

LOOPBACK = bytes.fromhex("01080000ABCD5EAE")


async def ask(stream: anyio.abc.ByteStream, request: bytes, n: int) -> bytes:
    await stream.send(request)
    buf = b""
    while len(buf) < n:
        buf += await stream.receive()
    return buf


@pytest.mark.anyio
async def test_default_url_is_the_measured_unit_in_rtu() -> None:
    conn = connect_url("sim://")
    (sim,) = conn.line.simulators
    assert sim.mode is ProtocolKind.MODBUS_RTU
    assert sim.address == 1
    assert [c.channel.value for c in sim.channels] == ["I1", "I2", "I3", "E1", "E2"]
    assert sim.realtime
    assert sim.silence_drop
    assert sim.frame_period == 2.0
    assert conn.serial_settings.baudrate == 19200
    assert sim.latency_s == (0.015, 0.030)
    with anyio.fail_after(5):
        assert await ask(conn.stream, LOOPBACK, 8) == LOOPBACK
    await conn.stream.aclose()


def test_every_query_key() -> None:
    _, spec = parse_sim_url(
        "sim://?mode=continuous&address=7&channels=I1,I4,D2,E1,E2&names=O2,,Dry%E2%82%82,,Flow"
        "&units=%25,vpm,ppm,,mA&values=20.5,,over,4,7.25&baud=9600&period=0.5&terminator=lf"
        "&latency_ms=5-10&drop=0&reject_gaps=1&realtime=0&seed=42&scenario=alarm"
        "&clock=2024-03-14T09:05:30"
    )
    assert spec.mode is ProtocolKind.CONTINUOUS_ASCII
    assert spec.addresses == (7,)
    assert [c.channel.value for c in spec.channels] == ["I1", "I4", "D2", "E1", "E2"]
    assert [c.name for c in spec.channels] == ["O2", None, "Dry₂", None, "Flow"]
    assert [c.unit for c in spec.channels] == ["%", "vpm", "ppm", "mA", "mA"]
    assert [c.value for c in spec.channels] == [20.5, 0.0, None, 4.0, 7.25]
    assert (spec.baudrate, spec.frame_period, spec.terminator) == (9600, 0.5, b"\n")
    assert spec.latency_s == (0.005, 0.010)
    assert (spec.silence_drop, spec.reject_gaps, spec.realtime) == (False, True, False)
    assert spec.seed == 42
    assert spec.scenario == "alarm"
    assert spec.clock == datetime(2024, 3, 14, 9, 5, 30)
    line = spec.build()
    (sim,) = line.simulators
    assert line.serial_settings.baudrate == 9600
    assert sim.char_time == pytest.approx(10 / 9600)
    frame = decode_frame(sim.frame())
    assert frame.channel("D2").name == "Dry2"  # ASCII in continuous mode
    assert frame.channel("I1").status.alarms[0]  # the alarm preset
    assert frame.analyser.clock is not None
    assert frame.analyser.clock.year == 2024
    assert parse_sim_url("sim://?latency_ms=7")[1].latency_s == (0.007, 0.007)
    # a rate SerialSettings cannot hold paces the line; the settings keep 19200
    fast = connect_url("sim://?baud=115200&mode=continuous").line
    assert fast.char_time == pytest.approx(10 / 115200)
    assert fast.serial_settings.baudrate == 19200


@pytest.mark.anyio
async def test_multidrop_addresses_share_one_line() -> None:
    conn = connect_url("sim://?address=1,2,30&realtime=0")
    assert [s.address for s in conn.line.simulators] == [1, 2, 30]
    with anyio.fail_after(5):
        reply = await ask(conn.stream, rtu_adu(30, bytes.fromhex("080000ABCD")), 8)
    assert reply[0] == 30
    assert conn.line.simulator(30).requests[-1].outcome is RequestOutcome.ANSWERED
    assert conn.line.simulator(1).requests[-1].outcome is RequestOutcome.OTHER_ADDRESS
    await conn.stream.aclose()


@pytest.mark.anyio
async def test_reject_gaps_from_the_url() -> None:
    conn = connect_url("sim://?reject_gaps=1&realtime=0")
    with anyio.fail_after(5):
        reply = await ask(conn.stream, bytes.fromhex("01040000004671F8"), 5)
    assert reply == bytes.fromhex("01 84 02 C2 C1")
    await conn.stream.aclose()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_applies(preset: str) -> None:
    for mode in ("continuous", "modbus_rtu"):
        line = connect_url(f"sim://?scenario={preset}&mode={mode}&realtime=0").line
        (sim,) = line.simulators
        frame = decode_frame(sim.frame())
        readings = {r.channel: r for r in frame.readings}
        if preset == "fault":
            assert frame.analyser.fault
            assert readings[ChannelId.I2].status.fault
        elif preset == "alarm":
            assert readings[ChannelId.I1].status.alarms[0]
        elif preset == "warmup":
            assert readings[ChannelId.I1].status.warming_up
        elif preset == "overrange":
            assert readings[ChannelId.I2].value is None
        elif preset == "unlabelled":
            assert all(r.name is None for r in frame.readings)
        elif preset == "calibration" and mode == "continuous":
            assert frame.analyser.cal_groups[0].calibrating
        elif preset == "drift":
            assert sim.model.value("I1", sim.now() + 100.0) != pytest.approx(20.378, abs=1e-3)
        else:
            assert all(r.status.ok for r in frame.readings)


@pytest.mark.parametrize(
    "url",
    [
        "sim://?colour=blue",
        "sim://?mode=auto",
        "sim://?mode=rtu",
        "sim://?address=0",
        "sim://?address=248",
        "sim://?address=1,1",
        "sim://?address=x",
        "sim://?channels=I1,E1",
        "sim://?channels=I1,I2,Q7",
        "sim://?channels=I1,I2,I3,I4,D1,D2,D3,E1",
        "sim://?names=a,b",
        "sim://?values=1,2,three,4,5",
        "sim://?units=%,%,%,mA,milliamps",
        "sim://?baud=fast",
        "sim://?baud=0",
        "sim://?period=-1",
        "sim://?terminator=crcr",
        "sim://?latency_ms=30-15",
        "sim://?latency_ms=1-2-3",
        "sim://?drop=maybe",
        "sim://?drop_until_ms=-1",
        "sim://?drop_until_ms=soon",
        "sim://?drop_until_ms=inf",
        "sim://?realtime=2",
        "sim://?seed=1.5",
        "sim://?scenario=nope",
        "sim://?clock=yesterday",
        "sim://?seed=1&seed=2",
        "sim:///path",
        "tcp://127.0.0.1:4001",
        "/dev/ttyUSB0",
    ],
)
def test_bad_urls_raise_validation_errors(url: str) -> None:
    with pytest.raises(ServomexValidationError):
        connect_url(url)


@pytest.mark.anyio
async def test_named_urls_share_a_line_and_unnamed_do_not() -> None:
    a = connect_url("sim://url-shared?realtime=0&address=5")
    b = connect_url("sim://url-shared?realtime=0&address=9")  # already built: query not reapplied
    assert a.line is b.line
    assert [s.address for s in b.line.simulators] == [5]
    assert connect_url("sim://").line is not connect_url("sim://").line
    sim = Simulator(name="url-registered", realtime=False)
    c = connect_url("sim://url-registered")
    assert c.line is sim.line
    with anyio.fail_after(5):
        assert await ask(c.stream, LOOPBACK, 8) == LOOPBACK
    sim.vanish()
    with pytest.raises(ServomexConnectionError):
        connect_url("sim://url-registered")
    sim.reappear()
    connect_url("sim://url-registered")
    for conn in (a, b, c):
        await conn.stream.aclose()


@pytest.mark.anyio
async def test_resolve_transport_opens_sim_urls() -> None:
    from servomexlib.transport.ports import resolve_transport

    transport = await resolve_transport("sim://?realtime=0&mode=modbus_ascii&address=30")
    with anyio.fail_after(5):
        await TimedReader(transport).write(b":1E080000ABCD62\r\n", timeout=1.0)
        echo = await TimedReader(transport).read_until(b"\r\n", timeout=1.0)
        assert echo == b":1E080000ABCD62\r\n"
    await transport.aclose()


@pytest.mark.anyio
async def test_drop_until_ms_is_the_harsh_silence_rule() -> None:
    _, spec = parse_sim_url("sim://?drop_until_ms=80")
    assert spec.silence_drop_until_s == 0.08
    assert parse_sim_url("sim://")[1].silence_drop_until_s is None
    conn = connect_url("sim://?drop_until_ms=80&latency_ms=5")
    (sim,) = conn.line.simulators
    assert sim.silence_drop_until_s == 0.08
    with anyio.fail_after(5):
        await anyio.sleep(0.1)  # real time: the line must have been quiet for 80 ms
        assert await ask(conn.stream, LOOPBACK, 8) == LOOPBACK
        await conn.stream.send(LOOPBACK)  # right after the echo: lost
    assert [r.outcome for r in sim.requests] == [
        RequestOutcome.ANSWERED,
        RequestOutcome.SILENCE_DROPPED,
    ]
    await conn.stream.aclose()
