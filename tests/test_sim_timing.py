"""Line timing, measured with generous bounds: pacing, turnaround, the silence rule, seeding."""

from __future__ import annotations

import time

import anyio
import anyio.abc
import pytest

from servomexlib.sim import RequestOutcome, Simulator, silence_drop_probability
from servomexlib.sim.model import rtu_adu

FC04_70 = bytes.fromhex("010400000046 71F8".replace(" ", ""))
LOOPBACK = bytes.fromhex("01080000ABCD5EAE")


async def read_n(stream: anyio.abc.ByteStream, n: int) -> tuple[bytes, list[float]]:
    buf, stamps = b"", []
    while len(buf) < n:
        buf += await stream.receive()
        stamps.append(time.monotonic())
    return buf, stamps


@pytest.mark.anyio
async def test_fc04_70_register_reply_takes_its_wire_time() -> None:
    """At 19200 8-N-1 the 145-byte reply alone is 75.5 ms; with the 8-byte request and the
    turnaround the whole exchange takes at least ~78 ms."""
    sim = Simulator(seed=1)
    assert sim.char_time == pytest.approx(10 / 19200)
    stream = sim.open_stream()
    with anyio.fail_after(5):
        started = time.monotonic()
        await stream.send(FC04_70)
        reply, stamps = await read_n(stream, 145)
        elapsed = time.monotonic() - started
    assert reply[:3] == bytes.fromhex("01048C")
    assert elapsed >= 0.078
    assert elapsed < 1.0
    # paced: the first bytes arrive well before the last ones
    assert stamps[-1] - stamps[0] >= 0.05
    await stream.aclose()


@pytest.mark.anyio
async def test_realtime_off_is_immediate_and_baudrate_override_paces_faster() -> None:
    fast = Simulator(realtime=False).open_stream()
    with anyio.fail_after(5):
        started = time.monotonic()
        await fast.send(FC04_70)
        await read_n(fast, 145)
        assert time.monotonic() - started < 0.05
        quick = Simulator(baudrate=115200, latency_s=0.0).open_stream()
        started = time.monotonic()
        await quick.send(FC04_70)
        await read_n(quick, 145)
        elapsed = time.monotonic() - started
    assert 153 * 10 / 115200 <= elapsed < 0.06  # ≈ 13.3 ms of wire time, far below 19200's
    await fast.aclose()
    await quick.aclose()


def test_silence_rule_probabilities() -> None:
    assert silence_drop_probability(0.0) == 0.26
    assert silence_drop_probability(0.009) == 0.26
    assert silence_drop_probability(0.010) == 0.08
    assert silence_drop_probability(0.049) == 0.08
    assert silence_drop_probability(0.050) == 0.0
    assert silence_drop_probability(5.0) == 0.0


async def master(stream: anyio.abc.ByteStream, *, count: int, pause: float, timeout: float) -> int:
    """Send ``count`` loopbacks, waiting ``pause`` after each reply (or timeout); return losses."""
    lost = 0
    for _ in range(count):
        await stream.send(LOOPBACK)
        buf = b""
        with anyio.move_on_after(timeout):
            while len(buf) < len(LOOPBACK):
                buf += await stream.receive()
        if buf != LOOPBACK:
            assert buf == b""
            lost += 1
        if pause:
            await anyio.sleep(pause)
    return lost


@pytest.mark.anyio
async def test_silence_rule_spares_a_patient_master_and_hurts_a_hasty_one() -> None:
    """200 requests each: ≥ 50 ms of silence → nothing lost; back-to-back → 15-40 % lost.

    Both masters run at once on separate lines, paced at 115200 baud with a 1-2 ms turnaround
    to keep the test short (the rule depends on the gap, not the rate)."""
    patient_sim = Simulator(seed=11, baudrate=115200, latency_s=(0.001, 0.002))
    hasty_sim = Simulator(seed=12, baudrate=115200, latency_s=(0.001, 0.002))
    patient, hasty = patient_sim.open_stream(), hasty_sim.open_stream()
    results: dict[str, int] = {}

    async def run(name: str, stream: anyio.abc.ByteStream, pause: float) -> None:
        results[name] = await master(stream, count=200, pause=pause, timeout=0.1)

    with anyio.fail_after(45):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "patient", patient, 0.051)
            tg.start_soon(run, "hasty", hasty, 0.0)
    assert results["patient"] == 0
    assert all(r.outcome is RequestOutcome.ANSWERED for r in patient_sim.requests)
    assert 0.15 * 200 <= results["hasty"] <= 0.40 * 200
    silenced = [r for r in hasty_sim.requests if r.outcome is RequestOutcome.SILENCE_DROPPED]
    assert len(silenced) == results["hasty"]
    await patient.aclose()
    await hasty.aclose()


def transcript_offline(seed: int) -> list[tuple[str, bytes | None]]:
    """Drive the line with synthetic times: requests after gaps of 0, 5, 20 and 80 ms."""
    sim = Simulator(seed=seed)
    sim.drift("I1", noise=0.01)
    line = sim.line
    consumer = line.attach(0.0)
    request = rtu_adu(1, bytes.fromhex("0400000007"))
    last_activity = 1000.0
    out: list[tuple[str, bytes | None]] = []
    for i in range(120):
        line.feed(request, last_activity + (0.0, 0.005, 0.020, 0.080)[i % 4])
        last_activity = max(line._tx_free, line._host_free)
        reply = consumer.take(last_activity, 1 << 16)
        out.append((sim.requests[-1].outcome.value, reply or None))
    return out


def test_same_seed_same_transcript_offline() -> None:
    first, second, other = transcript_offline(5), transcript_offline(5), transcript_offline(6)
    assert first == second
    assert first != other
    outcomes = [o for o, _ in first]
    assert "silence_dropped" in outcomes
    assert "answered" in outcomes
    # gaps of 80 ms are never dropped
    assert all(o == "answered" for o, _ in first[3::4])


async def transcript_live(seed: int) -> list[bytes]:
    sim = Simulator(seed=seed, baudrate=115200)
    sim.drift("I1", noise=0.01)
    stream = sim.open_stream()
    out = []
    for _ in range(8):
        await stream.send(rtu_adu(1, bytes.fromhex("0400000007")))
        reply, _ = await read_n(stream, 19)
        out.append(reply)
        await anyio.sleep(0.052)
    await stream.aclose()
    return out + [r.adu for r in sim.requests]


@pytest.mark.anyio
async def test_same_seed_same_transcript_live() -> None:
    with anyio.fail_after(20):
        first = await transcript_live(3)
        second = await transcript_live(3)
        other = await transcript_live(4)
    assert first == second
    assert first != other
