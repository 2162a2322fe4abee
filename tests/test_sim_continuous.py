"""Continuous mode: frames that decode, match the real captures' layout, arrive on the line."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
import pytest

from servomexlib import decode_frame
from servomexlib.devices.models import ChannelId, ChannelKind, ProtocolKind
from servomexlib.sim import SimChannel, Simulator
from servomexlib.sim.model import rtu_adu
from servomexlib.wire.continuous import split_frames

DATA = Path(__file__).parent / "data"
CAPTURE_CLOCK = datetime(2020, 10, 6, 2, 54, 12)


def captured_idle_channels() -> list[SimChannel]:
    return [
        SimChannel("I1", name="Oxygen", unit="%", value=20.376),
        SimChannel("I2", name="CO", unit="%", value=0.084),
        SimChannel("I3", name="CO₂", unit="%", value=0.250, continuous_name="CO2"),
        SimChannel("E1", unit="mA", value=0.0),
        SimChannel("E2", unit="mA", value=0.0),
    ]


def test_idle_frame_matches_the_capture_field_by_field() -> None:
    captured = split_frames((DATA / "continuous_4100_idle_5ch.bin").read_bytes())[0]
    sim = Simulator(
        mode="continuous",
        channels=captured_idle_channels(),
        clock=CAPTURE_CLOCK,
        terminator=b"\n",
        realtime=False,
    )
    sim.set_clock(CAPTURE_CLOCK)
    ours = sim.frame()
    assert ours.endswith(b"\n")
    assert not ours.endswith(b"\r\n")
    ours = ours[:-1]
    ours_fields, their_fields = ours[1:].split(b";"), captured[1:].split(b";")
    assert len(ours_fields) == len(their_fields) == 5 + 8 * 5 + 2
    for i, (a, b) in enumerate(zip(ours_fields, their_fields, strict=True)):
        assert len(a) == len(b), f"field {i}: width {len(a)} != {len(b)} ({a!r} vs {b!r})"
        assert a == b, f"field {i}: {a!r} != {b!r}"
    assert ours == captured  # with the captured values and clock, byte for byte
    assert len(ours) == 39 + 33 * 5


def test_default_idle_frame_decodes_to_the_measured_unit() -> None:
    frame = decode_frame(Simulator(mode="continuous", realtime=False).frame())
    assert [r.channel.value for r in frame.readings] == ["I1", "I2", "I3", "E1", "E2"]
    assert [r.name for r in frame.readings] == ["Oxygen", "CO", "CO2", None, None]
    assert [r.value for r in frame.readings] == [20.378, 0.084, 0.25, 0.0, 0.0]
    assert [r.unit.value for r in frame.readings] == ["%", "%", "%", "mA", "mA"]
    assert all(r.status.ok for r in frame.readings)
    assert not frame.analyser.fault
    assert all(g.phase.value == "idle" for g in frame.analyser.cal_groups)


LAYOUTS = {
    3: ["I1", "E1", "E2"],
    5: ["I1", "I2", "D1", "E1", "E2"],
    7: ["I1", "I2", "I3", "D1", "D2", "E1", "E2"],
}


@pytest.mark.parametrize("n", [3, 5, 7])
def test_frames_with_every_flag_decode(n: int) -> None:
    ids = LAYOUTS[n]
    chans = [
        SimChannel(cid, name=f"Gas{cid}" if cid[0] != "E" else None, value=1.0 + i)
        for i, cid in enumerate(ids)
    ]
    sim = Simulator(mode="continuous", channels=chans, clock=CAPTURE_CLOCK, realtime=False)
    # every flag somewhere: fault, maintenance, warm-up, calibration, alarms 1-4, invalid,
    # over-range, analyser F and M, a group on gas 1
    sim.set_fault("I1")
    sim.set_alarm("I1", 1)
    sim.set_alarm("I1", 3)
    sim.set_invalid("E1")
    sim.set_alarm("E2", 2)
    sim.set_alarm("E2", 4)
    sim.set_analyser(maintenance=True)
    if "I2" in ids:
        sim.set_maintenance("I2")
        sim.warm_up(60.0, ["I2"])
        sim.over_range("I2")
    sim.configure_calibration(1, channels=["I1"], gas1_s=60.0, gas2_s=60.0)
    assert sim.start_calibration(1)
    raw = sim.frame()
    assert len(raw) == 39 + 33 * n + 2
    frame = decode_frame(raw)  # checksum verified by the decoder
    assert frame.channels == tuple(ChannelId(c) for c in ids)
    i1 = frame.channel("I1")
    assert i1.status.fault
    assert i1.status.calibrating
    assert i1.status.alarms == (True, False, True, False)
    assert b"1 3 " in i1.raw
    e1, e2 = frame.channel("E1"), frame.channel("E2")
    assert e1.status.fault
    assert not e1.status.calibrating
    assert not e1.status.warming_up
    assert e2.status.alarms == (False, True, False, True)
    assert e1.name is None
    assert e1.kind is ChannelKind.EXTERNAL_INPUT
    assert frame.analyser.fault
    assert frame.analyser.maintenance
    assert frame.analyser.cal_groups[0].phase.value == "cal_gas_1"
    assert frame.analyser.clock == CAPTURE_CLOCK
    if "I2" in ids:
        i2 = frame.channel("I2")
        assert i2.value is None
        assert b"++++++" in i2.raw
        assert i2.status.maintenance
        assert i2.status.warming_up
    if "D1" in ids:
        d1 = frame.channel("D1")
        assert d1.kind is ChannelKind.DERIVED
        assert d1.status.fault
        assert d1.status.calibrating
        assert d1.name == "GasD1"
    if "D2" in ids:
        d2 = frame.channel("D2")
        assert d2.status.maintenance
        assert d2.status.warming_up
    values = [r.value for r in frame.readings if r.channel.value != "I2"]
    assert values == [1.0 + i for i, c in enumerate(ids) if c != "I2"]


@pytest.mark.anyio
@pytest.mark.parametrize("terminator", [b"\r\n", b"\n", b"\r"])
async def test_frames_arrive_on_the_line_with_the_terminator(terminator: bytes) -> None:
    sim = Simulator(
        mode=ProtocolKind.CONTINUOUS_ASCII, frame_period=0.1, terminator=terminator, seed=1
    )
    sim.drift("I1", noise=0.01)
    stream = sim.open_stream()
    buf = b""
    with anyio.fail_after(5):
        while buf.count(terminator) < 3:
            buf += await stream.receive()
    await stream.aclose()
    frames = split_frames(buf)
    assert len(frames) >= 3
    for raw in frames[:3]:
        assert decode_frame(raw).protocol is ProtocolKind.CONTINUOUS_ASCII
    assert buf.startswith(b" ")  # the stream attached before the first frame: no fragment
    other = {b"\r\n": b"", b"\n": b"\r", b"\r": b"\n"}[terminator]
    assert not other or other not in buf


@pytest.mark.anyio
async def test_continuous_mode_ignores_input_and_mute_and_inject() -> None:
    sim = Simulator(mode="continuous", frame_period=0.05, realtime=False)
    stream = sim.open_stream()
    with anyio.fail_after(5):
        await stream.send(rtu_adu(1, bytes.fromhex("0400000007")))
        buf = b""
        while b"\r\n" not in buf:
            buf += await stream.receive()
        assert buf.startswith(b" ")  # a frame, not a Modbus reply
        assert sim.requests == ()
        sim.mute()
        await anyio.sleep(0.2)
        while True:  # drain what was sent before the mute
            with anyio.move_on_after(0.1):
                await stream.receive()
                continue
            break
        sim.inject(b"hello\r\n")
        assert await stream.receive() == b"hello\r\n"
        sim.mute(False)
        buf = b""
        while b"\r\n" not in buf:
            buf += await stream.receive()
        decode_frame(buf.split(b"\r\n")[0])
    await stream.aclose()


@pytest.mark.anyio
async def test_mode_switch_to_continuous_starts_frames() -> None:
    sim = Simulator(mode="modbus_rtu", frame_period=0.05, realtime=False)
    stream = sim.open_stream()
    with anyio.fail_after(5):
        with anyio.move_on_after(0.15):
            await stream.receive()
            pytest.fail("a Modbus-mode analyser never transmits unasked")
        sim.set_mode("continuous")
        buf = b""
        while b"\r\n" not in buf:
            buf += await stream.receive()
    assert decode_frame(buf.split(b"\r\n")[0]).readings
    await stream.aclose()
