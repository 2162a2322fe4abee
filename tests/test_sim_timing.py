"""Line timing, measured with generous bounds: pacing, turnaround, the silence rule, seeding.

Pacing and turnaround are measured on the host clock (``time.monotonic``, real sleeping). The
silence-rule and seeding tests that only judge the line's own timeline are marked
``virtual_time`` (tests/conftest.py): their simulators run on the event loop's clock and the
loop on virtual time, so hundreds of requests cost no wall time and every gap is exact.
"""

from __future__ import annotations

import math
import time

import anyio
import anyio.abc
import pytest

from servomexlib.errors import ServomexConfigurationError, ServomexValidationError
from servomexlib.sim import RequestOutcome, SimLine, Simulator, silence_drop_probability
from servomexlib.sim.model import rtu_adu

FC04_70 = bytes.fromhex("010400000046 71F8".replace(" ", ""))
LOOPBACK = bytes.fromhex("01080000ABCD5EAE")


async def read_n(stream: anyio.abc.ByteStream, n: int) -> tuple[bytes, list[float]]:
    buf, stamps, _ = await read_chunks(stream, n)
    return buf, stamps


async def read_chunks(stream: anyio.abc.ByteStream, n: int) -> tuple[bytes, list[float], list[int]]:
    """Read ``n`` bytes; also return when each chunk arrived and how long it was."""
    buf, stamps, sizes = b"", [], []
    while len(buf) < n:
        chunk = await stream.receive()
        stamps.append(time.monotonic())
        sizes.append(len(chunk))
        buf += chunk
    return buf, stamps, sizes


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
        reply, stamps, sizes = await read_chunks(stream, 145)
        elapsed = time.monotonic() - started
    assert reply[:3] == bytes.fromhex("01048C")
    assert elapsed >= 0.078
    assert elapsed < 1.0
    # Paced: no read ever returns a byte before the line could have carried it (the 8-byte
    # request, then one character time per reply byte). A reader woken late (busy machine)
    # gets more bytes at once, never bytes from the future.
    received = 0
    for stamp, size in zip(stamps, sizes, strict=True):
        received += size
        assert received <= (stamp - started) / sim.char_time - 8 + 1e-6
    # On the line's own timeline the reply occupies 145 character times.
    spans = sorted(end - start for start, end in sim.line._activity)
    assert spans == [pytest.approx(8 * sim.char_time), pytest.approx(145 * sim.char_time)]
    await stream.aclose()


@pytest.mark.anyio
async def test_realtime_off_is_immediate_and_baudrate_override_paces_faster() -> None:
    # Wall-clock upper bounds of a few tens of ms fail on a loaded machine, so the pacing is
    # checked on the line's own timeline (what each byte's arrival time was computed as) and
    # on what the reader saw; the wall clock only gives lower bounds and a generous ceiling.
    fast_sim = Simulator(realtime=False)
    fast = fast_sim.open_stream()
    with anyio.fail_after(5):
        started = time.monotonic()
        await fast.send(FC04_70)
        reply, stamps = await read_n(fast, 145)
        assert time.monotonic() - started < 1.0
    assert reply[:3] == bytes.fromhex("01048C")
    assert len(stamps) == 1  # the whole reply was there at the first read: nothing paced
    assert [end - start for start, end in fast_sim.line._activity] == [0.0, 0.0]
    quick_sim = Simulator(baudrate=115200, latency_s=0.0)
    assert quick_sim.char_time == pytest.approx(10 / 115200)
    quick = quick_sim.open_stream()
    with anyio.fail_after(5):
        started = time.monotonic()
        await quick.send(FC04_70)
        reply, stamps = await read_n(quick, 145)
        elapsed = time.monotonic() - started
    assert reply[:3] == bytes.fromhex("01048C")
    assert 153 * 10 / 115200 <= elapsed < 1.0  # ≈ 13.3 ms of wire time at least
    # Reply and request each occupy the line for their length at 115200 baud, not 19200's.
    spans = sorted(end - start for start, end in quick_sim.line._activity)
    assert spans == [pytest.approx(8 * 10 / 115200), pytest.approx(145 * 10 / 115200)]
    await fast.aclose()
    await quick.aclose()


def test_silence_rule_probabilities() -> None:
    assert silence_drop_probability(0.0) == 0.26
    assert silence_drop_probability(0.009) == 0.26
    assert silence_drop_probability(0.010) == 0.08
    assert silence_drop_probability(0.049) == 0.08
    assert silence_drop_probability(0.050) == 0.0
    assert silence_drop_probability(5.0) == 0.0
    # The harsh rule: certain loss below the threshold, none at or above it.
    assert silence_drop_probability(0.0799, 0.08) == 1.0
    assert silence_drop_probability(0.05, 0.08) == 1.0
    assert silence_drop_probability(0.08, 0.08) == 0.0
    assert silence_drop_probability(0.0, 0.0) == 0.0


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), True, "80"])
def test_harsh_silence_rule_validates(bad: object) -> None:
    with pytest.raises(ServomexValidationError, match="silence_drop_until_s"):
        Simulator(silence_drop_until_s=bad)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_harsh_silence_rule_drops_every_request_after_a_short_silence() -> None:
    """Each request's fate follows from the silence the line itself measured before it (the
    simulator decides while ``send`` runs), so a late wake-up on a busy machine cannot make
    the test wrong, only change which requests are lost."""
    sim = Simulator(silence_drop_until_s=0.08, latency_s=0.0, seed=2, line_clock=anyio.current_time)
    stream = sim.open_stream()
    seen = []
    with anyio.fail_after(10):
        for pause in (0.1, 0.03, 0.09, 0.06, 0.12):
            # The silence the rule judges is the line's time (the loop's, virtual here).
            await anyio.sleep(pause)
            await stream.send(LOOPBACK)
            request = sim.requests[-1]
            seen.append((sim.line._gap_before(request.time), request.outcome))
            if request.outcome is RequestOutcome.ANSWERED:
                buf = b""
                while len(buf) < len(LOOPBACK):
                    buf += await stream.receive()
    for gap, outcome in seen:
        expected = RequestOutcome.SILENCE_DROPPED if gap < 0.08 else RequestOutcome.ANSWERED
        assert outcome is expected, (gap, outcome)
    assert {o for _, o in seen} == {RequestOutcome.ANSWERED, RequestOutcome.SILENCE_DROPPED}
    await stream.aclose()


async def master(
    sim: Simulator, stream: anyio.abc.ByteStream, *, count: int, pause: float
) -> list[tuple[float, bool]]:
    """Send ``count`` loopbacks, pausing ``pause`` after each answer.

    Returns, per request, the silence before it as the line measured it and whether the line
    swallowed it. The simulator decides while ``send`` runs, so its log says at once which
    request was dropped: that one must then stay unanswered for 0.1 s, every other one must be
    answered. (A fixed reply timeout would count a reply delayed by a busy machine as a loss.)
    """
    seen: list[tuple[float, bool]] = []
    for _ in range(count):
        await stream.send(LOOPBACK)
        request = sim.requests[-1]
        gap = sim.line._gap_before(request.time)
        dropped = request.outcome is RequestOutcome.SILENCE_DROPPED
        seen.append((gap, dropped))
        if dropped:
            with anyio.move_on_after(0.1):
                data = await stream.receive()
                pytest.fail(f"a dropped request was answered: {data!r}")
        else:
            assert request.outcome is RequestOutcome.ANSWERED
            buf = b""
            with anyio.fail_after(5):
                while len(buf) < len(LOOPBACK):
                    buf += await stream.receive()
            assert buf == LOOPBACK
        if pause:
            await anyio.sleep(pause)
    return seen


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_silence_rule_spares_a_patient_master_and_hurts_a_hasty_one() -> None:
    """200 requests each: ≥ 50 ms of silence → nothing lost; back-to-back → about 26 % lost.

    Both masters run at once on separate lines, paced at 115200 baud with a 1-2 ms turnaround
    to keep the test short (the rule depends on the gap, not the rate). How long the hasty
    master's gaps really are depends on how promptly it is scheduled, so its losses are
    checked against the probabilities of the gaps the line actually measured."""
    patient_sim = Simulator(
        seed=11, baudrate=115200, latency_s=(0.001, 0.002), line_clock=anyio.current_time
    )
    hasty_sim = Simulator(
        seed=12, baudrate=115200, latency_s=(0.001, 0.002), line_clock=anyio.current_time
    )
    patient, hasty = patient_sim.open_stream(), hasty_sim.open_stream()
    results: dict[str, list[tuple[float, bool]]] = {}

    async def run(name: str, sim: Simulator, stream: anyio.abc.ByteStream, pause: float) -> None:
        results[name] = await master(sim, stream, count=200, pause=pause)

    with anyio.fail_after(45):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "patient", patient_sim, patient, 0.051)
            tg.start_soon(run, "hasty", hasty_sim, hasty, 0.0)
    # The patient master waits 51 ms after each answer: every gap is long, nothing is lost.
    assert all(gap >= 0.050 for gap, _ in results["patient"][1:])
    assert not any(dropped for _, dropped in results["patient"])
    assert all(r.outcome is RequestOutcome.ANSWERED for r in patient_sim.requests)
    # The hasty one: never a loss after ≥ 50 ms of silence, and the losses after short gaps
    # match the rule's probabilities (within 4 standard deviations of the binomial).
    hasty_seen = results["hasty"]
    assert not any(dropped for gap, dropped in hasty_seen if gap >= 0.050)
    probabilities = [silence_drop_probability(gap) for gap, _ in hasty_seen]
    expected = sum(probabilities)
    spread = 4 * math.sqrt(sum(p * (1 - p) for p in probabilities)) + 1
    lost = sum(dropped for _, dropped in hasty_seen)
    assert expected >= 10, hasty_seen  # the hasty master did hurry (most gaps < 10 ms)
    assert abs(lost - expected) <= spread, (lost, expected)
    silenced = [r for r in hasty_sim.requests if r.outcome is RequestOutcome.SILENCE_DROPPED]
    assert len(silenced) == lost
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
    sim = Simulator(seed=seed, baudrate=115200, line_clock=anyio.current_time)
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
@pytest.mark.virtual_time
async def test_same_seed_same_transcript_live() -> None:
    with anyio.fail_after(20):
        first = await transcript_live(3)
        second = await transcript_live(3)
        other = await transcript_live(4)
    assert first == second
    assert first != other


# -- fault injection on the line's timeline (pure: synthetic times, no sleeping) -------------

FC04_I1 = rtu_adu(1, bytes.fromhex("0400000007"))
FC04_I2 = rtu_adu(1, bytes.fromhex("0400070007"))


@pytest.mark.parametrize("realtime", [False, True])
def test_delayed_reply_keeps_later_replies_behind_it(realtime: bool) -> None:
    """One UART: a reply held back 0.5 s delays the reply to the next request too, in both
    modes, and the second request is still received (and answered) at once."""
    sim = Simulator(realtime=realtime, silence_drop=False, latency_s=0.02)
    sim.set_value("I1", 1.0)
    sim.set_value("I2", 2.0)
    line = sim.line
    consumer = line.attach(0.0)
    sim.delay_next(0.5)
    line.feed(FC04_I1, 10.0)
    line.feed(FC04_I2, 10.1)  # asked while the first reply is still held back
    assert sim.request_count == 2
    first, second = (r.reply for r in sim.requests)
    assert first is not None
    assert second is not None
    assert [(r.outcome, r.delay_s) for r in sim.requests] == [
        (RequestOutcome.DELAYED, 0.5),
        (RequestOutcome.ANSWERED, 0.0),
    ]
    assert consumer.take(10.45, 1 << 16) == b""  # nothing overtakes the late reply
    assert consumer.take(11.0, 1 << 16) == first + second  # in order, back to back
    starts = sorted(start for start, _ in line._activity if start > 10.2)
    first_start = 10.0 + (8 * sim.char_time + 0.02 if realtime else 0.0) + 0.5
    assert starts[0] == pytest.approx(first_start)
    if realtime:  # the second reply starts when the first has ended
        assert starts[1] == pytest.approx(first_start + len(first) * sim.char_time)


def test_lost_replies_are_seeded_and_counted() -> None:
    def outcomes(seed: int) -> list[RequestOutcome]:
        sim = Simulator(realtime=False, seed=seed)
        sim.lose_replies(0.3)
        consumer = sim.line.attach(0.0)
        for i in range(200):
            sim.line.feed(FC04_I1, float(i))
        sent = consumer.take(1000.0, 1 << 20)
        answered = [r for r in sim.requests if r.outcome is RequestOutcome.ANSWERED]
        assert len(sent) == 19 * len(answered)
        assert sim.request_count == 200  # lost replies: the requests were still received
        return [r.outcome for r in sim.requests]

    first, again, other = outcomes(1), outcomes(1), outcomes(2)
    assert first == again
    assert first != other
    assert 0.2 < first.count(RequestOutcome.DROPPED) / 200 < 0.4


def test_request_counter_channel() -> None:
    sim = Simulator(realtime=False)
    sim.count_requests("I1")
    consumer = sim.line.attach(0.0)
    sim.line.feed(LOOPBACK, 1.0)  # any addressed request counts
    sim.line.feed(rtu_adu(2, bytes.fromhex("0400000007")), 2.0)  # another slave's: not ours
    sim.line.feed(FC04_I1, 3.0)
    consumer.take(3.0, 1 << 16)
    reply = sim.requests[-1].reply
    assert reply is not None
    assert reply[3:7] == bytes.fromhex("40000000")  # 2.0: the second request it received
    assert sim.request_count == 2
    sim.count_requests(None)
    sim.line.feed(FC04_I1, 4.0)
    assert sim.requests[-1].reply == reply  # stopped: the value stays at 2.0


def test_fault_injection_arguments_are_validated() -> None:
    sim = Simulator(realtime=False)
    for bad in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ServomexValidationError):
            sim.delay_next(bad)  # type: ignore[arg-type]
    with pytest.raises(ServomexValidationError):
        sim.delay_next(0.1, n=-1)
    for fraction in (-0.1, 1.5, True):
        with pytest.raises(ServomexValidationError):
            sim.lose_replies(fraction)
    with pytest.raises(ServomexValidationError):
        sim.count_requests("I4")  # not simulated
    with pytest.raises(ServomexValidationError):
        Simulator(line_clock=1.0)  # type: ignore[arg-type]


def test_line_clock_is_injectable_and_shared_by_a_multidrop_line() -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    a = Simulator(realtime=False, line_clock=clock)
    b = Simulator(realtime=False, address=2, line_clock=clock)
    line = SimLine(a, b)
    assert line.now() == 100.0
    now[0] = 101.5
    assert a.now() == b.now() == 101.5
    with pytest.raises(ServomexValidationError):
        SimLine(a, Simulator(realtime=False, address=3))  # the host clock: another timeline
    with pytest.raises(ServomexConfigurationError):
        Simulator(line_clock=anyio.current_time)  # needs a running event loop


@pytest.mark.anyio
async def test_simulator_on_the_event_loops_clock() -> None:
    """line_clock=anyio.current_time: the line runs on the event loop's clock."""
    sim = Simulator(latency_s=0.02, line_clock=anyio.current_time)
    stream = sim.open_stream()
    with anyio.fail_after(5):
        started = anyio.current_time()
        await stream.send(LOOPBACK)
        reply, _ = await read_n(stream, 8)
    assert reply == LOOPBACK
    assert sim.now() - started >= 16 * sim.char_time + 0.02
    assert sim.requests[0].time == pytest.approx(started, abs=0.01)
    await stream.aclose()
