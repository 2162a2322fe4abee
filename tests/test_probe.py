"""ModbusClient.probe(): one short FC08 echo attempt per address (the bus scan's primitive).

The realistic simulator (19200 baud pacing, fixed 20 ms turnaround, the silence rule) runs on
the event loop's clock, on virtual time (tests/_virtual_time.py), so waits are exact and cost
no wall time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from _virtual_time import virtual_anyio_backend as anyio_backend
from servomexlib.clients.modbus import ModbusClient, ModbusLine
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.errors import ServomexConnectionError, ServomexValidationError
from servomexlib.sim import RequestOutcome, SimLine, Simulator

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]

RTU, ASCII = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII
TURNAROUND = 0.020
CHAR = 10 / 19200


def make_sim(**kw: Any) -> Simulator:
    kw.setdefault("latency_s", TURNAROUND)
    return Simulator(line_clock=anyio.current_time, **kw)


def fc08(sim: Simulator) -> list[bytes]:
    """The FC08 requests the simulator saw (any address)."""
    if sim.mode is ASCII:
        return [r.adu for r in sim.requests if r.adu[3:5] == b"08"]
    return [r.adu for r in sim.requests if r.adu[1:2] == b"\x08"]


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_probe_times_a_live_slave(framing: ProtocolKind) -> None:
    sim = make_sim(mode=framing)
    client = ModbusClient(sim.transport(), framing=framing)
    with anyio.fail_after(10):
        reply_time = await client.probe()
    assert reply_time is not None
    (request,) = sim.requests
    assert request.outcome is RequestOutcome.ANSWERED
    assert request.reply == request.adu  # an echo
    # ASCII: ":" address(2) function(2) sub-function(4) data(4) LRC CR LF.
    payload = bytes.fromhex(request.adu[9:13].decode()) if framing is ASCII else request.adu[4:6]
    assert payload not in (b"\xab\xcd", b"\x00\x00")  # a fresh payload
    wire = 2 * len(request.adu) * CHAR  # request and echo, paced
    assert wire + TURNAROUND - 0.002 <= reply_time <= wire + TURNAROUND + 0.005
    stats = client.statistics()
    assert (stats.transactions, stats.attempts, stats.retries, stats.fences) == (1, 1, 0, 0)
    await client.aclose()


async def test_probe_of_an_empty_address_returns_none_after_the_default_wait() -> None:
    a = make_sim(address=1)
    line = ModbusLine(a.transport(), framing=RTU)
    empty = ModbusClient(line, framing=RTU, address=9)
    with anyio.fail_after(10):
        t0 = anyio.current_time()
        assert await empty.probe() is None
        spent = anyio.current_time() - t0
    # 50 ms silence on a new line, then 16 characters of request and echo + 60 ms.
    assert spent == pytest.approx(0.05 + 16 * CHAR + 0.06, abs=0.003)
    assert line.uncertain_addresses == ()  # a probe never makes the line uncertain
    assert len(fc08(a)) == 1
    await line.aclose()


async def test_probe_is_one_attempt_and_the_next_read_needs_no_fence() -> None:
    sim = make_sim()
    client = ModbusClient(sim.transport(), framing=RTU)
    sim.drop_next(1)
    with anyio.fail_after(10):
        assert await client.probe() is None
        reading = await client.read_channel(ChannelId.I1)
    assert reading.value is not None
    assert [r.adu[1] for r in sim.requests] == [0x08, 0x04, 0x02]  # no retry, no fence
    stats = client.statistics()
    assert (stats.retries, stats.fences, stats.timeouts) == (0, 0, 0)


async def test_a_late_echo_is_discarded_and_the_next_read_is_correct() -> None:
    sim = make_sim()
    sim.set_value(ChannelId.I2, -7.25)
    client = ModbusClient(sim.transport(), framing=RTU)
    sim.delay_next(0.07)  # the echo comes after the probe gave up
    with anyio.fail_after(10):
        assert await client.probe(wait=0.05) is None
        assert client.line.uncertain_addresses == ()
        reading = await client.read_channel(ChannelId.I2)
    assert reading.value == -7.25
    assert client.statistics().stale_bytes == 8  # the late echo, dropped by the silence
    assert [r.adu[1] for r in sim.requests] == [0x08, 0x04, 0x02]


async def test_an_exception_reply_counts_as_an_answer() -> None:
    sim = Simulator(latency_s=TURNAROUND, line_clock=anyio.current_time)
    sim.refuse(0x08)  # firmware without FC08: exception 01
    client = ModbusClient(sim.transport(), framing=RTU)
    with anyio.fail_after(10):
        reply_time = await client.probe()
    assert reply_time is not None
    assert sim.requests[0].outcome is RequestOutcome.EXCEPTION
    assert client.statistics().exceptions == 0  # not an error: the probe found a slave


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_a_corrupted_echo_is_not_an_answer(framing: ProtocolKind) -> None:
    sim = make_sim(mode=framing)
    client = ModbusClient(sim.transport(), framing=framing)
    sim.corrupt_next(1)
    with anyio.fail_after(10):
        assert await client.probe() is None
        assert await client.probe() is not None  # the next one is answered
    assert client.statistics().stale_bytes == len(sim.requests[0].reply or b"")


async def test_a_scan_of_a_multidrop_line_finds_exactly_the_slaves() -> None:
    sims = [make_sim(address=a) for a in (2, 4)]
    bus = SimLine(*sims)
    line = ModbusLine(bus.simulators[0].transport(), framing=RTU)
    with anyio.fail_after(20):
        found = {a: await ModbusClient(line, framing=RTU, address=a).probe() for a in range(1, 7)}
    assert {a for a, t in found.items() if t is not None} == {2, 4}
    assert line.uncertain_addresses == ()
    # One request per address, each with its own payload; none was lost to the silence rule.
    sent = fc08(sims[0])
    assert [adu[0] for adu in sent] == [1, 2, 3, 4, 5, 6]
    assert len({adu[4:6] for adu in sent}) == 6
    assert not any(r.outcome is RequestOutcome.SILENCE_DROPPED for r in sims[0].requests)
    await line.aclose()


async def test_probe_with_an_explicit_wait_catches_a_slow_slave() -> None:
    sim = make_sim(latency_s=0.15)  # slower than the default allowance
    client = ModbusClient(sim.transport(), framing=RTU)
    with anyio.fail_after(10):
        assert await client.probe() is None
        reply_time = await client.probe(wait=0.3)
    assert reply_time is not None
    assert reply_time == pytest.approx(0.15 + 16 * CHAR, abs=0.003)


@pytest.mark.parametrize("wait", [0, -1, float("nan"), float("inf"), True, "0.1"])
async def test_bad_wait_is_refused_before_any_io(wait: Any) -> None:
    sim = make_sim()
    client = ModbusClient(sim.transport(), framing=RTU)
    with pytest.raises(ServomexValidationError, match="wait"):
        await client.probe(wait=wait)
    assert sim.requests == ()


async def test_probe_on_a_closed_line_raises_a_connection_error() -> None:
    sim = make_sim()
    client = ModbusClient(sim.transport(), framing=RTU, address=5)
    await client.aclose()
    with pytest.raises(ServomexConnectionError) as info:
        await client.probe()
    assert info.value.context.address == 5
    assert info.value.context.port == "sim://"
