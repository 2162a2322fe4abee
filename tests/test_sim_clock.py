"""The simulator's line clock: the event loop's clock by default, resolved lazily.

The virtual-time tests run on trio's ``MockClock(autojump_threshold=0)`` and on asyncio's
:class:`VirtualTimeLoop` (tests/_virtual_time.py): a realistic simulator built with no
``line_clock`` paces its replies on the virtual clock, so minutes of line time cost no wall time
(a test that slept for real would exceed its 60 s timeout).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from trio.testing import MockClock

from _virtual_time import VirtualTimeLoop
from servomexlib.sim import RequestOutcome, SimLine, Simulator
from servomexlib.sim.model import rtu_adu

LOOPBACK = bytes.fromhex("01080000ABCD5EAE")


async def ask(stream: anyio.abc.ByteStream, request: bytes, n: int) -> bytes:
    await stream.send(request)
    buf = b""
    while len(buf) < n:
        buf += await stream.receive()
    return buf


def run_virtual[T](backend: str, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` in a fresh event loop on virtual time."""
    options: dict[str, Any] = (
        {"clock": MockClock(autojump_threshold=0)}
        if backend == "trio"
        else {"loop_factory": VirtualTimeLoop}
    )
    return anyio.run(main, backend=backend, backend_options=options)


BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@BACKENDS
def test_a_paced_reply_takes_its_wire_time_on_the_virtual_clock(backend: str) -> None:
    async def main() -> tuple[float, float]:
        sim = Simulator(latency_s=0.02)  # realistic timing, no line_clock given
        assert sim.timeline.mode == "loop"
        stream = sim.open_stream()
        started = anyio.current_time()
        reply = await ask(stream, LOOPBACK, 8)
        assert reply == LOOPBACK
        elapsed = anyio.current_time() - started
        request_time = sim.requests[0].time
        await stream.aclose()
        return elapsed, request_time - started

    elapsed, request_offset = run_virtual(backend, main)
    char_time = 10 / 19200
    # 8 request characters + 20 ms turnaround + 8 reply characters, all on the virtual clock.
    assert elapsed == pytest.approx(16 * char_time + 0.02, abs=0.002)
    assert request_offset == 0.0  # line time is the loop's time: the request went out at once


@BACKENDS
def test_minutes_of_line_time_cost_no_wall_time(backend: str) -> None:
    async def main() -> tuple[float, RequestOutcome]:
        sim = Simulator()
        stream = sim.open_stream()
        sim.delay_next(600.0)  # ten minutes: the 60 s test timeout proves nothing slept
        started = anyio.current_time()
        assert await ask(stream, LOOPBACK, 8) == LOOPBACK
        elapsed = anyio.current_time() - started
        await stream.aclose()
        return elapsed, sim.requests[0].outcome

    elapsed, outcome = run_virtual(backend, main)
    assert elapsed >= 600.0
    assert elapsed < 601.0
    assert outcome is RequestOutcome.DELAYED


@BACKENDS
def test_a_simulator_built_outside_any_loop_joins_the_loop_that_uses_it(backend: str) -> None:
    sim = Simulator(mode="continuous", frame_period=10.0)  # module level / sync code
    sim.set_value("I1", 12.5)  # a scenario call before any event loop exists
    assert sim.timeline.mode == "unbound"
    before = sim.now()

    async def main() -> tuple[float, float, int]:
        stream = sim.open_stream()
        start_line, start_loop = sim.now(), anyio.current_time()
        heard = b""
        with anyio.move_on_after(35.0):  # virtual: frames at +0.05 s, then every 10 s
            while True:
                heard += await stream.receive()  # paced: a few characters at a time
        await stream.aclose()
        return sim.now() - start_line, anyio.current_time() - start_loop, heard.count(b"\r\n")

    line_elapsed, loop_elapsed, frames = run_virtual(backend, main)
    assert sim.timeline.mode == "loop"
    assert line_elapsed == pytest.approx(loop_elapsed)
    assert line_elapsed >= 35.0
    assert frames == 4
    assert sim.now() >= before  # the switch of clocks did not move line time backwards
    assert sim.model.value("I1", sim.now()) == 12.5

    # A second event loop (the next test, say) takes the line over without a jump.
    after_first = sim.now()

    async def again() -> float:
        stream = sim.open_stream()
        await anyio.sleep(5.0)
        await stream.receive()  # a frame falls due within 10 s
        await stream.aclose()
        return sim.now()

    assert run_virtual(backend, again) >= after_first + 5.0


@BACKENDS
def test_an_explicit_line_clock_is_used_as_given(backend: str) -> None:
    ticks = [1000.0]
    sim = Simulator(realtime=False, line_clock=lambda: ticks[0])
    assert sim.timeline.mode == "explicit"

    async def main() -> float:
        stream = sim.open_stream()
        await ask(stream, LOOPBACK, 8)
        await stream.aclose()
        return sim.requests[0].time

    assert run_virtual(backend, main) == 1000.0  # the loop's clock was never consulted
    ticks[0] = 1002.5
    assert sim.now() == 1002.5


@pytest.mark.anyio
async def test_serving_pins_the_line_to_the_host_clock() -> None:
    sim = Simulator(realtime=False)
    assert sim.timeline.mode == "loop"
    async with sim:
        before = sim.now()
        host, port = await sim.serve_tcp()
        assert sim.timeline.mode == "host"
        assert sim.now() >= before  # no jump
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(host, port) as conn:
                assert await ask(conn, LOOPBACK, 8) == LOOPBACK
        stream = sim.open_stream()  # an in-process stream on the served line follows it
        with anyio.fail_after(10):
            assert await ask(stream, LOOPBACK, 8) == LOOPBACK
        await stream.aclose()
        sim.line.clock.follow_loop()
        assert sim.timeline.mode == "host"  # serving is sticky
    assert [r.outcome for r in sim.requests] == [RequestOutcome.ANSWERED] * 2


@BACKENDS
def test_analysers_built_on_different_timelines_share_one_after_joining(backend: str) -> None:
    outside = Simulator(realtime=False)  # host time

    async def main() -> tuple[bool, bool, bytes]:
        inside = Simulator(realtime=False, address=2)  # virtual loop time
        inside.warm_up(5.0)
        SimLine(outside, inside)
        assert inside.now() == outside.now()
        warming = inside.model.status("I1", inside.now()).warming_up  # carried over
        await anyio.sleep(6.0)
        done = not inside.model.status("I1", inside.now()).warming_up
        stream = outside.open_stream()
        reply = await ask(stream, rtu_adu(2, bytes.fromhex("080000ABCD")), 8)
        await stream.aclose()
        return warming, done, reply

    warming, done, reply = run_virtual(backend, main)
    assert warming
    assert done
    assert reply[0] == 2


@pytest.mark.anyio
async def test_scenario_calls_from_another_thread_use_the_same_timeline() -> None:
    sim = Simulator(realtime=False)
    stream = sim.open_stream()
    with anyio.fail_after(10):
        await ask(stream, LOOPBACK, 8)  # the line now follows this loop
        read_in_thread = await anyio.to_thread.run_sync(sim.now)
        await anyio.to_thread.run_sync(sim.set_value, "I1", 3.25)
    assert abs(read_in_thread - anyio.current_time()) < 5.0  # one timeline, not another clock
    assert sim.model.value("I1", sim.now()) == 3.25
    await stream.aclose()
