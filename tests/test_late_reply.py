"""No wrong value from a late Modbus reply (api.md §5): the line fence, on virtual time.

Every test here runs the realistic simulator (byte pacing at 19200 baud, 15-30 ms turnaround,
the silence rule) on the event loop's clock, and the event loop on virtual time: trio under
``MockClock(autojump_threshold=0)`` and asyncio under ``VirtualTimeLoop`` (tests/_virtual_time.py),
which does the same for asyncio (when nothing is ready, time jumps to the next timer). A sweep of
~100 delays that would take minutes of wall time runs in about a second, and both backends
see exactly the same timeline, so the control experiment (fencing off → a wrong value) is
deterministic. Real-time runs of the same scenario are in tests/test_modbus_client.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from anymodbus.pdu import encode_exception_response, encode_read_input_registers_response

from _virtual_time import virtual_anyio_backend
from servomexlib.clients.modbus import ModbusClient, ModbusLine, ModbusStatistics
from servomexlib.clients.modbus_fence import FenceMatcher
from servomexlib.devices.models import ChannelId, ProtocolKind, Reading
from servomexlib.errors import ServomexError, ServomexTimeoutError
from servomexlib.sim import ModbusRequest, RequestOutcome, SimLine, Simulator
from servomexlib.sim.model import ascii_adu, rtu_adu

pytestmark = pytest.mark.anyio

RTU, ASCII = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII
I1, I2, I3 = ChannelId.I1, ChannelId.I2, ChannelId.I3
I2_VALUE = -7.25  # exact in float32, and never a request count
I3_VALUE = 0.25  # the default CO2 value, exact in float32
TIMEOUT = 0.25


anyio_backend = virtual_anyio_backend  # trio MockClock / VirtualTimeLoop (tests/_virtual_time.py)


def make_sim(**kw: Any) -> Simulator:
    """The realistic simulator on the event loop's clock; I1 counts requests.

    Tests that count fences exactly fix the turnaround (``latency_s``): with a random one, a
    reply faster than any timed before is checked by a fence of its own (the early rule).
    """
    sim = Simulator(line_clock=anyio.current_time, **kw)
    sim.count_requests(I1)
    sim.set_value(I2, I2_VALUE)
    sim.set_alarm(I1, 1)
    sim.set_alarm(I2, 2)
    return sim


def check_i1(reading: Reading, started_at: int) -> str | None:
    """I1 carries the request count when its reply was built: a reply to a request sent after
    the operation started carries more than the count read just before it."""
    value = reading.value
    if value is None or value != int(value) or value <= started_at:
        return f"I1={value} but the simulator had seen {started_at} requests before the read"
    if reading.status.alarms != (True, False, False, False):
        return f"I1 alarms {reading.status.alarms}"
    return None


def check_i2(reading: Reading) -> str | None:
    if reading.value != I2_VALUE or reading.status.alarms != (False, True, False, False):
        return f"I2={reading.value} alarms {reading.status.alarms}"
    return None


@dataclasses.dataclass
class Sweep:
    ok: int
    errors: int  # ServomexTimeoutError: allowed
    mismatched: int  # other Servomex errors (a reply to another request noticed by its shape)
    wrong: list[str]
    stats: ModbusStatistics
    delayed: int


async def sweep(
    *, loss: float = 0.0, fence: bool = True, seed: int = 3, learned: bool = True
) -> Sweep:
    """One delayed reply per step, delays 1.0x-3x the timeout in 5 ms steps (101 steps);
    each step runs read I1, read I2 and a poll, starting with a different one each step so
    the delayed reply lands on every kind of request.

    ``learned``: no per-call timeout, so attempts (and fence attempts) but the last wait the
    line's learned time — the short waits give up on far more replies that then arrive late.
    Without it every call passes ``timeout=TIMEOUT``: every attempt waits the whole timeout.
    """
    sim = make_sim(seed=seed)
    if loss:
        sim.lose_replies(loss)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    client.line._fence_enabled = fence  # the private knob: the control experiment
    per_call = None if learned else TIMEOUT
    wrong: list[str] = []
    ok = errors = mismatched = 0

    async def read_i1(started: int) -> list[str | None]:
        return [check_i1(await client.read_channel(I1, timeout=per_call), started)]

    async def read_i2(started: int) -> list[str | None]:
        return [check_i2(await client.read_channel(I2, timeout=per_call))]

    async def poll(started: int) -> list[str | None]:
        frame = await client.poll(timeout=per_call)
        i3 = frame.channel(I3).value
        return [
            check_i1(frame.channel(I1), started),
            check_i2(frame.channel(I2)),
            None if i3 == I3_VALUE else f"I3={i3}",
        ]

    ops: list[Callable[[int], Awaitable[list[str | None]]]] = [read_i1, read_i2, poll]
    steps = 101
    try:
        for step in range(steps):
            sim.delay_next(TIMEOUT * (1.0 + 0.02 * step))  # 0.25 s … 0.75 s, 5 ms apart
            for j in range(len(ops)):
                op = ops[(step + j) % len(ops)]
                started = sim.request_count
                try:
                    problems = await op(started)
                except ServomexTimeoutError:
                    errors += 1  # allowed: refusing is fine, guessing is not
                    continue
                except ServomexError:
                    mismatched += 1
                    continue
                ok += 1
                wrong += [f"step {step} {op.__name__}: {p}" for p in problems if p is not None]
    finally:
        await client.aclose()
    delayed = sum(1 for r in sim.requests if r.delay_s > 0)
    return Sweep(ok, errors, mismatched, wrong, client.statistics(), delayed)


@pytest.mark.parametrize("learned", [True, False], ids=["learned-waits", "fixed-waits"])
async def test_delayed_reply_sweep_gives_no_wrong_or_stale_value(learned: bool) -> None:
    with anyio.fail_after(600):  # virtual seconds (about 130 of them)
        result = await sweep(learned=learned)
    assert result.wrong == []
    assert result.mismatched == 0  # fenced, no reply ever meets the wrong request
    assert result.delayed == 101  # every step's delay reached the wire
    assert result.ok >= 290  # of 303 operations; a few may time out (allowed)
    assert result.stats.fences > 50  # the late replies were fenced off
    assert result.stats.stale_bytes > 0
    if learned:  # the short waits were really used, and gave up on late replies
        assert result.stats.short_timeouts > 20
        assert result.stats.wait_boosts > 0
    else:
        assert result.stats.short_timeouts == 0


@pytest.mark.parametrize("learned", [True, False], ids=["learned-waits", "fixed-waits"])
async def test_delayed_reply_sweep_with_thirty_percent_loss(learned: bool) -> None:
    with anyio.fail_after(900):
        result = await sweep(loss=0.3, learned=learned)
    assert result.wrong == []
    assert result.mismatched == 0
    assert result.stats.fences > 100
    assert result.errors > 0  # with 30 % loss some operations fail: that is allowed
    assert result.ok > 200
    assert (result.stats.short_timeouts > 0) is learned


async def test_without_the_fence_the_same_sweep_gives_wrong_values() -> None:
    """The control: the fenced sweep above is only worth something if it can fail."""
    with anyio.fail_after(900):
        result = await sweep(loss=0.3, fence=False)
    assert result.stats.fences == 0
    assert result.wrong, "fencing off should have let a late reply through"
    assert any("I2=" in w for w in result.wrong)  # I1's block taken as I2's


# -- the fence, step by step -------------------------------------------------------------


def fence_requests(sim: Simulator) -> list[bytes]:
    """FC08 requests addressed to ``sim`` (its log also lists other slaves' requests)."""
    if sim.mode is ASCII:
        ours = (f":{sim.address:02X}08").encode()
        return [r.adu for r in sim.requests if r.adu.upper().startswith(ours)]
    return [r.adu for r in sim.requests if r.adu[:2] == bytes((sim.address, 0x08))]


async def lose_i1_then_read_i2(sim: Simulator, client: ModbusClient) -> Reading:
    """I1's first reply lost and its second held back past the third attempt's timeout (all
    three attempts fail), so the late I1 block arrives while I2's read is under way."""
    sim.set_value(I1, 11.0)
    sim.count_requests(None)
    sim.drop_next(1)
    sim.delay_next(2.75 * TIMEOUT)
    with pytest.raises(ServomexTimeoutError):
        await client.read_channel(I1)
    return await client.read_channel(I2)


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_fence_discards_the_late_reply_and_proves_the_order(framing: ProtocolKind) -> None:
    sim = make_sim(mode=framing, latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=framing, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await client.read_channel(I2)  # a clean start: the line learns its turnaround
        reading = await lose_i1_then_read_i2(sim, client)
    assert reading.value == I2_VALUE
    stats = client.statistics()
    assert stats.fences == 1
    assert stats.stale_bytes >= 2 * len(sim.requests[2].reply or b"")  # two late I1 blocks
    (fence,) = fence_requests(sim)
    outcomes = [r.outcome for r in sim.requests]
    # I2, I2 status, then I1 x3 (lost, delayed, answered), the fence, I2's two reads.
    assert outcomes[2:6] == [
        RequestOutcome.DROPPED,
        RequestOutcome.DELAYED,
        RequestOutcome.ANSWERED,
        RequestOutcome.ANSWERED,
    ]
    assert sim.requests[5].adu == fence
    payload = bytes.fromhex(fence[9:13].decode()) if framing is ASCII else fence[4:6]
    assert payload not in (b"\xab\xcd", b"\x00\x00")
    assert client.line.uncertain_addresses == ()


async def test_without_the_fence_i2_returns_i1s_value() -> None:
    sim = make_sim(latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    client.line._fence_enabled = False
    with anyio.fail_after(60):
        await client.read_channel(I2)
        reading = await lose_i1_then_read_i2(sim, client)
    assert reading.value == 11.0  # the bug the fence fixes: I1's block read as I2's
    assert fence_requests(sim) == []


async def test_new_poll_with_the_same_adu_is_fenced() -> None:
    """The next poll's FC04 (0, 70) is a new transaction, not a retry: it is fenced, so it
    cannot take the previous poll's late reply (values from before it started)."""
    sim = make_sim(latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await client.poll()
        sim.drop_next(1)
        sim.delay_next(2.75 * TIMEOUT)  # the poll's second FC04 reply, past its 3rd attempt
        with pytest.raises(ServomexTimeoutError):
            await client.poll()
        started = sim.request_count
        frame = await client.poll()
    assert check_i1(frame.channel(I1), started) is None
    assert client.statistics().fences == 1


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_exception_reply_to_the_fence_completes_it(framing: ProtocolKind) -> None:
    sim = Simulator(mode=framing, latency_s=0.02, line_clock=anyio.current_time)
    sim.refuse(0x08)  # firmware without FC08: exception 01 to every diagnostics request
    sim.set_value(I2, I2_VALUE)
    client = ModbusClient(sim.transport(), framing=framing, timeout=TIMEOUT)
    with anyio.fail_after(60):
        reading = await lose_i1_then_read_i2(sim, client)
    assert reading.value == I2_VALUE
    stats = client.statistics()
    assert (stats.fences, stats.fence_failures) == (1, 0)
    (fence,) = [r for r in sim.requests if r.outcome is RequestOutcome.EXCEPTION]
    assert fence.reply is not None
    assert fence.reply[1:3] == b"\x88\x01" or fence.reply[3:7] == b"8801"


async def test_unanswered_fence_fails_the_operation_without_sending_it() -> None:
    sim = make_sim(latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(60):
        sim.drop_next(1)
        await client.analyser_status()  # retried: the line is now uncertain
        assert client.line.uncertain_addresses == (1,)
        sim.mute()
        before = len(sim.requests)
        with pytest.raises(ServomexTimeoutError) as info:
            await client.read_channel(I1)
        sent = [r.adu for r in sim.requests[before:]]
        assert len(sent) == 3  # three fence attempts, each with a fresh payload
        assert len(set(sent)) == 3
        assert all(a[1] == 0x08 for a in sent)  # the FC04 itself never went out
        err = info.value
        assert "fence" in str(err)
        assert err.context.function_code == 4
        assert err.context.channel is I1
        assert err.context.extra["fence_attempts"] == 3
        stats = client.statistics()
        assert (stats.fence_failures, stats.timeouts) == (1, 1)
        sim.mute(False)
        started = sim.request_count
        assert check_i1(await client.read_channel(I1), started) is None  # fenced, then read
    assert client.statistics().fences == 1


async def test_early_stale_reply_is_rejected_and_the_read_retried() -> None:
    """A stale reply that starts right after the request (sooner than the slave can answer)
    is rejected: listening after it, the client hears the real reply arrive behind it."""
    sim = make_sim(latency_s=(0.020, 0.020))
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    stale = rtu_adu(1, encode_read_input_registers_response([0x42C6, 0, 0, 0, 0, 0, 0]))  # 99.0
    with anyio.fail_after(60):
        for _ in range(3):
            await client.read_channel(I2)
        floor = client.line.min_turnaround_s
        assert floor is not None
        assert floor > 0.020  # 8 request characters + 20 ms, measured on the line

        def inject_first(request: ModbusRequest) -> None:
            remove()  # once
            sim.inject(stale)  # on the wire at once, ahead of the real reply

        remove = sim.on_request(inject_first)
        reading = await client.read_channel(I2)
    assert reading.value == I2_VALUE
    stats = client.statistics()
    assert stats.early_replies == 1
    assert stats.retries == 1
    assert stats.fences == 0  # the real reply was read behind it: the line is clean
    assert stats.stale_bytes == 19  # that real reply, discarded
    assert client.line.uncertain_addresses == ()
    after = client.line.min_turnaround_s
    assert after is not None
    assert after > 0.020  # nothing learned from the stale reply (it began within 1 ms)


async def test_early_reply_proved_alone_is_accepted() -> None:
    """A genuine reply faster than any timed so far: nothing follows it, so it is accepted
    (no retry, nothing sent) and becomes the line's new fastest turnaround."""
    sim = make_sim(latency_s=(0.030, 0.030))
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await client.read_channel(I2)
        slow = client.line.min_turnaround_s
        assert slow is not None
        sim.latency_s = (0.005, 0.005)
        reading = await client.read_channel(I2)
    assert reading.value == I2_VALUE
    stats = client.statistics()
    assert (stats.early_replies, stats.retries, stats.fences) == (0, 0, 0)
    assert len(sim.requests) == 4  # two reads of two transactions each, nothing more
    fast = client.line.min_turnaround_s
    assert fast is not None
    assert fast < slow - 0.020


async def test_a_retry_takes_the_late_reply_to_its_earlier_attempt() -> None:
    """Same question, same answer: a retry may take the first attempt's late reply (no fence
    between attempts), but the next transaction — the status read — is fenced."""
    sim = make_sim(latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(60):
        await client.read_channel(I2)
        before = len(sim.requests)
        started = sim.request_count
        sim.delay_next(1.5 * TIMEOUT)  # arrives during the retry
        reading = await client.read_channel(I1)
    assert check_i1(reading, started) is None
    assert reading.value == started + 1  # the first attempt's reply, built for that request
    log = sim.requests[before:]
    assert [r.outcome for r in log] == [RequestOutcome.DELAYED] + [RequestOutcome.ANSWERED] * 3
    assert log[0].adu == log[1].adu  # the FC04 twice, then the fence, then the FC02
    assert log[2].adu[1] == 0x08
    assert log[3].adu[1] == 0x02
    stats = client.statistics()
    assert (stats.retries, stats.fences) == (1, 1)
    assert stats.stale_bytes >= len(log[1].reply or b"")  # the retry's own reply, discarded


# -- several slaves on one line --------------------------------------------------------------


async def test_fence_holds_across_addresses_and_a_dead_slave_does_not_stall_the_line() -> None:
    a = make_sim(address=1, latency_s=0.02)
    b = make_sim(address=2, latency_s=0.02)
    line_sims = SimLine(a, b)
    line = ModbusLine(line_sims.simulators[0].transport(), framing=RTU)
    first = ModbusClient(line, framing=RTU, address=1, timeout=TIMEOUT)
    second = ModbusClient(line, framing=RTU, address=2, timeout=TIMEOUT)
    with anyio.fail_after(120):
        a.drop_next(1)
        a.delay_next(2.75 * TIMEOUT)
        with pytest.raises(ServomexTimeoutError):
            await first.read_channel(I2)
        assert line.is_uncertain(1)
        assert check_i2(await second.read_channel(I2)) is None
        # Slave 2's read was preceded by a courtesy fence at slave 1, the one that may still
        # answer; it completed, so slave 1 is certain again.
        assert second.statistics().fences == 1
        assert len(fence_requests(a)) == 1
        assert not line.is_uncertain(1)

        a.mute()  # slave 1 dies with a request outstanding
        with pytest.raises(ServomexTimeoutError):
            await first.read_channel(I2)
        for _ in range(3):
            assert check_i2(await second.read_channel(I2)) is None
        # One courtesy attempt for slave 1, then no more while it does not answer.
        assert len(fence_requests(a)) == 2
        assert second.statistics().fence_failures == 1
        assert line.is_uncertain(1)
        # Slave 1's own next read must wait for its fence; back again, it gets one.
        a.mute(False)
        started = a.request_count
        assert check_i1(await first.read_channel(I1), started) is None
    assert first.statistics().fences == 1
    await line.aclose()


# -- the fence matcher (pure) -------------------------------------------------------------


def feed_all(matcher: FenceMatcher, data: bytes, *, bytewise: bool) -> bool:
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    done = False
    for n, chunk in enumerate(chunks):
        done = matcher.feed(chunk, float(n))
        if done:
            break
    return done


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("framing", [RTU, ASCII])
def test_matcher_finds_the_reply_behind_stale_bytes(framing: ProtocolKind, bytewise: bool) -> None:
    build = rtu_adu if framing is RTU else ascii_adu
    request = build(1, b"\x08\x00\x00\x12\x34")
    old_echo = build(1, b"\x08\x00\x00\x12\x33")  # an earlier fence attempt's echo: stale
    stale = build(1, encode_read_input_registers_response([1, 2, 3, 4, 5, 6, 7]))
    garbage = b"\x00\xff" * 300  # more than the matcher keeps
    data = garbage + stale + old_echo + request + b"\x01"
    matcher = FenceMatcher(framing, 1, request)
    assert feed_all(matcher, data, bytewise=bytewise)
    assert matcher.echo
    assert matcher.received - matcher.stale == len(request)
    assert matcher.stale == len(data) - len(request) - (1 if bytewise else 0)


@pytest.mark.parametrize("framing", [RTU, ASCII])
def test_matcher_accepts_an_exception_reply_with_a_valid_checksum_only(
    framing: ProtocolKind,
) -> None:
    build = rtu_adu if framing is RTU else ascii_adu
    request = build(7, b"\x08\x00\x00\x55\x66")
    exception = build(7, encode_exception_response(0x08, 0x01))
    broken = bytearray(exception)
    broken[-3 if framing is ASCII else -1] ^= 0x01
    other_slave = build(8, encode_exception_response(0x08, 0x01))
    matcher = FenceMatcher(framing, 7, request)
    assert not matcher.feed(bytes(broken) + other_slave, 0.0)
    assert matcher.feed(exception, 1.0)
    assert not matcher.echo
    assert matcher.began == 1.0
    assert matcher.stale == len(broken) + len(other_slave)


def test_matcher_ignores_a_partial_echo() -> None:
    request = rtu_adu(1, b"\x08\x00\x00\xbe\xef")
    matcher = FenceMatcher(RTU, 1, request)
    assert not matcher.feed(request[:-1], 0.0)
    assert not matcher.feed(b"\x00", 0.1)  # the wrong last byte: still no reply
    assert not matcher.feed(request[:4], 0.2)
    assert matcher.feed(request[4:], 0.3)
    assert matcher.began == 0.2  # the read that brought the reply's first byte


async def test_fences_use_fresh_payloads() -> None:
    sim = make_sim(latency_s=0.02)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=TIMEOUT)
    with anyio.fail_after(120):
        assert await client.loopback(b"\x12\x34") == b"\x12\x34"
        for _ in range(20):
            sim.drop_next(1)  # the FC04's first reply: retried, then the FC02 is fenced
            assert check_i2(await client.read_channel(I2)) is None
    payloads = [r.adu[4:6] for r in sim.requests if r.adu[1] == 0x08]
    fences = payloads[1:]
    assert len(fences) >= 19
    assert len(set(fences)) == len(fences)  # never the same twice in a row or at all here
    assert not {b"\xab\xcd", b"\x00\x00", b"\x12\x34"} & set(fences)
