"""Fast recovery from a lost reply and the learned silence (api.md §5, issue 12 item 2).

Every test runs the realistic simulator (19200 baud pacing, a drawn turnaround, a silence
rule) on the event loop's clock, and the loop on virtual time (tests/_virtual_time.py): the
times asserted are the simulator's own timeline, exact and free of CPU noise, and a second of
waiting costs no wall time.
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

from _virtual_time import virtual_anyio_backend as anyio_backend
from servomexlib.clients.modbus import ModbusClient, ModbusLine
from servomexlib.devices.models import ChannelId, ProtocolKind, Reading
from servomexlib.errors import ServomexTimeoutError
from servomexlib.sim import RequestOutcome, Simulator
from servomexlib.transport.fake import FakeTransport

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]

RTU, ASCII = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII
I1, I2, I3 = ChannelId.I1, ChannelId.I2, ChannelId.I3
I2_VALUE = -7.25
TIMEOUT = 1.0  # the library default


def make_sim(**kw: Any) -> Simulator:
    """The realistic simulator on the loop's clock; I1 counts the requests it answers."""
    sim = Simulator(line_clock=anyio.current_time, **kw)
    sim.count_requests(I1)
    sim.set_value(I2, I2_VALUE)
    return sim


def fresh(reading: Reading, started: int) -> bool:
    """I1 answers a request sent after the operation began (its count is larger)."""
    return reading.value is not None and reading.value > started


async def warm_up(client: ModbusClient, reads: int = 4) -> None:
    """``reads`` read_channel calls: two transactions each, every reply timed."""
    for _ in range(reads):
        assert (await client.read_channel(I2)).value == I2_VALUE


async def timed(coro: Any) -> tuple[Any, float]:
    t0 = anyio.current_time()
    result = await coro
    return result, anyio.current_time() - t0


async def test_the_first_transactions_wait_the_open_time_timeout() -> None:
    sim = make_sim()
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    sim.drop_next(1)
    with anyio.fail_after(30):
        reading, spent = await timed(client.read_channel(I2))
    assert reading.value == I2_VALUE
    assert spent > TIMEOUT  # nothing learned yet: the first attempt waited the whole second
    stats = client.statistics()
    assert stats.learned_wait_s is None
    assert (stats.retries, stats.short_timeouts) == (1, 0)


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_a_lost_reply_costs_the_learned_wait_not_the_timeout(framing: ProtocolKind) -> None:
    sim = make_sim(mode=framing)
    client = ModbusClient(sim.transport(), framing=framing, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await warm_up(client)
        stats = client.statistics()
        # Replies in 15-30 ms: the p99 (~30 ms) + a 20 ms margin, about the 50 ms floor.
        assert stats.learned_wait_s == pytest.approx(0.05, abs=0.001)
        started = sim.request_count
        sim.drop_next(1)
        reading, spent = await timed(client.read_channel(I1))
        assert fresh(reading, started)
        after = client.statistics()
        assert (after.retries - stats.retries, after.short_timeouts) == (1, 1)
        assert after.timeouts == 0
        # FC04: a learned wait (wire time + 50 ms), the late window, the retry; then the
        # FC02, fenced because the line is uncertain. Well under the 1 s timeout.
        assert spent < 0.5 if framing is RTU else spent < 0.6
        # A per-call timeout switches learned waits off: the old cost.
        sim.drop_next(1)
        reading, spent_fixed = await timed(client.read_channel(I1, timeout=TIMEOUT))
        assert reading.value is not None
        assert spent_fixed > TIMEOUT
        assert client.statistics().short_timeouts == 1  # unchanged
    dropped = [r for r in sim.requests if r.outcome is RequestOutcome.DROPPED]
    assert len(dropped) == 2


async def test_a_dead_device_costs_two_learned_waits_and_one_timeout() -> None:
    sim = make_sim()
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await warm_up(client)
        wait = client.line.learned_wait(1, 8, 19)
        assert wait is not None
        sim.mute()
        mark = len(sim.requests)
        t0 = anyio.current_time()
        with pytest.raises(ServomexTimeoutError) as info:
            await client.read_channel(I1)
        spent = anyio.current_time() - t0
    sent = sim.requests[mark:]
    assert [r.outcome for r in sent] == [RequestOutcome.MUTED] * 3  # the FC04, 3 attempts
    assert info.value.context.extra["attempts"] == 3
    # Attempts 1 and 2 wait the learned time, each followed by a late-reply window; the
    # last waits the whole timeout: a slow but alive device would still be heard.
    gaps = [b.time - a.time for a, b in itertools.pairwise(sent)]
    assert all(wait < g < wait + 0.1 for g in gaps)
    assert TIMEOUT + 2 * wait < spent < TIMEOUT + 2 * (wait + 0.1) + 0.06
    assert client.statistics().short_timeouts == 2


async def test_a_reply_slower_than_the_learned_wait_is_still_taken() -> None:
    """A reply that comes after the learned wait but inside the timeout is not lost: the
    retry takes it (the same question), the value is right, nothing is reported; the late
    bytes it leaves behind boost the wait."""
    sim = make_sim(latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await warm_up(client)
        before = client.statistics()
        started = sim.request_count
        mark = len(sim.requests)
        sim.delay_next(0.2)  # 220 ms: past the ~64 ms learned wait, far inside the timeout
        reading = await client.read_channel(I1)
        # The first attempt gave up after the learned wait, so did the second (its reply is
        # queued behind the late one); both replies arrive late and are discarded as stale;
        # the last attempt waits the whole timeout and gets its own reply. No value is lost.
        assert fresh(reading, started)
        assert reading.value == started + 3
        assert [r.outcome for r in sim.requests[mark : mark + 3]] == [
            RequestOutcome.DELAYED,
            RequestOutcome.ANSWERED,
            RequestOutcome.ANSWERED,
        ]
        mid = client.statistics()
        assert (mid.retries - before.retries, mid.short_timeouts, mid.timeouts) == (2, 2, 0)
        assert mid.wait_boosts == 1  # the late bytes showed the wait was too short
        assert mid.learned_wait_s is not None
        assert before.learned_wait_s is not None
        # Doubled (it fades by 5 % per reply timed since: one FC02, one FC04).
        assert mid.learned_wait_s == pytest.approx(2 * before.learned_wait_s * 0.95**2)
        started = sim.request_count
        frame = await client.poll()  # fenced: the line was left uncertain
        assert fresh(frame.channel(I1), started)
        assert frame.channel(I2).value == I2_VALUE
    assert client.statistics().timeouts == 0


@pytest.mark.parametrize("latency", [(0.015, 0.030), (0.040, 0.120)])
async def test_learned_waits_never_report_a_timeout_for_a_device_in_its_usual_time(
    latency: tuple[float, float],
) -> None:
    """200 polls of a device that answers within its usual (drawn) turnaround: no timeout
    is ever reported and every value answers its own poll. The measured silence rule is on
    (no request after 50 ms of quiet is lost)."""
    sim = make_sim(latency_s=latency, seed=7)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(600):
        await client.identify()
        for _ in range(200):
            started = sim.request_count
            frame = await client.poll()
            assert fresh(frame.channel(I1), started)
            assert frame.channel(I2).value == I2_VALUE
    stats = client.statistics()
    assert stats.timeouts == 0
    assert stats.learned_wait_s is not None
    assert stats.turnaround_p99_s is not None
    assert stats.turnaround_p99_s <= latency[1] + 0.002
    assert stats.turnaround_p50_s is not None
    assert latency[0] <= stats.turnaround_p50_s <= latency[1]
    # The first few replies set the wait; a slower one drawn later costs one retry at most
    # a handful of times, as the window learns the device's spread.
    assert stats.short_timeouts <= 3
    assert stats.retries == stats.short_timeouts
    assert {r.outcome for r in sim.requests} <= {RequestOutcome.ANSWERED}


# -- the learned silence ---------------------------------------------------------------------


async def test_the_silence_a_device_needs_is_learned() -> None:
    """The harsh rule: every request after less than 80 ms of silence is lost. The line
    learns the silence in 10 ms steps and then loses nothing; no value is ever wrong."""
    sim = make_sim(silence_drop_until_s=0.08, seed=3)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=0.5)
    with anyio.fail_after(900):
        await client.identify()
        for _ in range(40):
            started = sim.request_count
            frame = await client.poll()
            assert fresh(frame.channel(I1), started)
            assert frame.channel(I2).value == I2_VALUE
        learned = client.statistics()
        mark = len(sim.requests)
        for _ in range(20):  # fewer than the 200 tight attempts after which it decays 1 ms
            await client.poll()
    assert learned.silence_raises == 3  # 50 → 60 → 70 → 80 ms
    assert learned.silence_s == pytest.approx(0.08)
    assert client.line.silence_s >= 0.08
    assert learned.timeouts == 0
    # Learned: the next 20 polls lose no request, so each is its 3 transactions.
    tail = sim.requests[mark:]
    assert len(tail) == 60
    assert {r.outcome for r in tail} == {RequestOutcome.ANSWERED}
    # The sweep is planned with the learned silence.
    assert client.read_planner.model.silence_s == client.line.silence_s


@pytest.mark.parametrize("loss", [0.05, 0.3])
async def test_random_loss_does_not_raise_the_silence(loss: float) -> None:
    sim = make_sim(seed=5)
    sim.lose_replies(loss)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    timeouts = 0
    with anyio.fail_after(900):
        await client.identify()
        for _ in range(150):
            started = sim.request_count
            try:
                frame = await client.poll()
            except ServomexTimeoutError:
                timeouts += 1  # allowed at 30 % loss: refusing is fine, guessing is not
                continue
            assert fresh(frame.channel(I1), started)
            assert frame.channel(I2).value == I2_VALUE
    stats = client.statistics()
    assert stats.silence_raises == 0
    assert stats.silence_s == 0.05
    assert stats.short_timeouts > 0  # the losses were recovered after learned waits
    assert stats.wait_boosts == 0  # a lost reply never comes late: nothing to boost
    assert timeouts <= (40 if loss > 0.1 else 0)  # 3 attempts lost: 2.7 % of transactions


def feed(line: ModbusLine, answered: bool, *, extra: float = 0.0) -> None:
    """One attempt's outcome, as if it followed the current silence plus ``extra`` seconds."""
    line._attempt_gap = line.silence_s + extra
    line.note_silence_outcome(answered)


def test_silence_rule_raises_on_evidence_caps_and_decays_to_the_floor() -> None:
    line = ModbusLine(FakeTransport(), framing=RTU)
    assert line.silence_s == 0.05
    for _ in range(8):
        feed(line, False)  # tight attempts unanswered …
    assert line.silence_s == 0.05  # … but no loose attempt to compare with yet
    for _ in range(4):
        feed(line, True, extra=0.1)  # loose attempts answered
    feed(line, False)
    assert line.silence_s == pytest.approx(0.06)
    assert line.silence_raises == 1
    feed(line, False)
    assert line.silence_s == pytest.approx(0.06)  # the tight record restarted
    for _ in range(400):
        feed(line, False)
    assert line.silence_s == pytest.approx(0.25)  # capped
    for _ in range(199):
        feed(line, True)
    assert line.silence_s == pytest.approx(0.25)
    feed(line, True)
    assert line.silence_s == pytest.approx(0.249)  # 1 ms per 200 answered tight attempts
    for _ in range(200 * 300):
        feed(line, True)
    assert line.silence_s == 0.05  # never below the open-time silence


def test_silence_rule_ignores_loss_that_hits_longer_silences_too() -> None:
    line = ModbusLine(FakeTransport(), framing=RTU)
    for _ in range(4):
        feed(line, False, extra=0.1)  # loose attempts fail as well: a dead or lossy line
    for _ in range(40):
        feed(line, False)
    assert line.silence_s == 0.05
    assert line.silence_raises == 0
