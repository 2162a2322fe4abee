"""ServomexManager: multidrop over real ptys, concurrency across ports, policies, lifecycle."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from helpers import ASYNCIO_ONLY, served_on_pty
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import ChannelId, ErrorPolicy, Frame, ProtocolKind
from servomexlib.errors import (
    ServomexConnectionError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.manager import DeviceResult, ServomexManager, port_key
from servomexlib.sim import RequestOutcome, SimLine, Simulator

pytestmark = pytest.mark.anyio


def _sim(address: int, *, mode: ProtocolKind = ProtocolKind.MODBUS_RTU) -> Simulator:
    sim = Simulator(mode=mode, address=address, seed=address)
    sim.set_value("I1", 20.0 + address)  # every analyser reads differently
    sim.set_value("E1", 4.0 + address)
    return sim


@asynccontextmanager
async def served_lines(
    addresses_per_line: list[list[int]], mode: ProtocolKind = ProtocolKind.MODBUS_RTU
) -> AsyncIterator[list[tuple[str, SimLine]]]:
    """Start one simulated multidrop line per entry, each served on its own real pty."""
    async with AsyncExitStack() as stack:
        served = []
        for addresses in addresses_per_line:
            line = SimLine(*[_sim(a, mode=mode) for a in addresses])
            _, path = await stack.enter_async_context(served_on_pty(line))
            served.append((path, line))
        yield served


def _check_values(results: Mapping[str, DeviceResult[Frame]], expected: dict[str, int]) -> None:
    for name, address in expected.items():
        result = results[name]
        assert result.ok, (name, result.error)
        frame = result.value
        assert frame is not None
        assert frame.channel("I1").value == pytest.approx(20.0 + address, abs=1e-5)
        assert frame.channel("E1").value == pytest.approx(4.0 + address, abs=1e-5)
        assert frame.channel("I2").value == pytest.approx(0.084, abs=1e-6)
        assert frame.channel("I3").name == "CO\u2082"
        assert frame.requested_at is not None
        assert frame.latency_s is not None


# ---------------------------------------------------------------------------- port keys


def test_port_keys_are_canonical(tmp_path: Path) -> None:
    assert port_key("COM3") == port_key("com3") == port_key("\\\\.\\COM3") == "COM3"
    assert port_key("TCP://Host.Example:4001") == "tcp://host.example:4001"
    assert port_key("sim://Bench?address=1,2") == "sim://Bench?address=1,2"
    target = tmp_path / "ttyUSB0"
    target.write_text("")
    link = tmp_path / "by-id-analyser"
    link.symlink_to(target)
    assert port_key(str(link)) == port_key(str(target)) == os.path.realpath(target)
    assert port_key("/dev/does-not-exist") == "/dev/does-not-exist"
    obj = object()
    assert port_key(obj) == f"transport:{id(obj)}"  # type: ignore[arg-type]


def test_device_result() -> None:
    ok = DeviceResult.success(3)
    bad: DeviceResult[int] = DeviceResult.failure(ServomexTimeoutError("x"))
    assert ok.ok
    assert ok.value == 3
    assert ok.error is None
    assert not bad.ok
    assert bad.value is None
    with pytest.raises(ServomexValidationError):
        DeviceResult(value=1, error=ValueError())


# ---------------------------------------------------------------------------- multidrop over ptys


# The long pty tests below run on asyncio only (helpers.ASYNCIO_ONLY: seconds of real line time;
# the backends' pty I/O is covered on both in test_transport_serial.py).


@pytest.mark.timeout(60)
@ASYNCIO_ONLY
async def test_four_analysers_on_one_pty() -> None:
    with anyio.fail_after(45):
        async with served_lines([[1, 2, 3, 4]]) as served, ServomexManager() as mgr:
            path, line = served[0]
            for a in (1, 2, 3, 4):
                anz = await mgr.add(f"a{a}", path, address=a)
                assert anz.device == f"a{a}"
            assert mgr.names == ("a1", "a2", "a3", "a4")
            for _ in range(2):
                results = await mgr.poll()
                _check_values(results, {f"a{a}": a for a in (1, 2, 3, 4)})
            samples = await mgr.poll_samples()
            # Each managed analyser was identified before its first sweep, so sweeps cover
            # only its five populated slots (no empty I4/D1-D4 rows).
            populated = [ChannelId(c) for c in ("I1", "I2", "I3", "E1", "E2")]
            assert [(s.device, s.channel) for s in samples] == [
                (f"a{a}", ch) for a in (1, 2, 3, 4) for ch in populated
            ]
            for a in (1, 2, 3, 4):
                info = mgr.get(f"a{a}").info
                assert info is not None
                assert [c.channel for c in info.channels] == populated
            # The 50 ms silence held across every change of slave address: nothing lost.
            outcomes = {r.outcome for r in line.simulators[0].requests}
            assert RequestOutcome.SILENCE_DROPPED not in outcomes


@pytest.mark.timeout(90)
@ASYNCIO_ONLY
async def test_two_analysers_on_each_of_four_ptys_run_concurrently() -> None:
    with anyio.fail_after(80):
        async with served_lines([[1, 2], [3, 4], [5, 6], [7, 8]]) as served:
            async with ServomexManager() as single:
                path = served[0][0]
                await single.add("a1", path, address=1)
                await single.add("a2", path, address=2)
                await single.poll()  # warm up
                _check_values((await single.poll()), {"a1": 1, "a2": 2})
            async with ServomexManager() as mgr:
                for path, line in served:
                    for sim in line.simulators:
                        await mgr.add(f"a{sim.address}", path, address=sim.address)
                await mgr.poll()
                # Every simulator on a line logs every request on it (with its line time).
                logs = [line.simulators[0] for _, line in served]
                marks = [len(sim.requests) for sim in logs]
                results = await mgr.poll()
                _check_values(results, {f"a{a}": a for a in range(1, 9)})
    # Ports run concurrently. Judged on the simulators' request times rather than by comparing
    # two wall-clock durations (noisy on a busy machine): each port's sweep is several
    # transactions with 50 ms of silence before each, and every port had sent its first
    # request before any port sent its last one. Ports polled one after another could not.
    sweeps = [[r.time for r in sim.requests[mark:]] for sim, mark in zip(logs, marks, strict=True)]
    assert all(len(times) >= 2 for times in sweeps), sweeps
    first_requests = [min(times) for times in sweeps]
    last_requests = [max(times) for times in sweeps]
    assert max(first_requests) < min(last_requests), sweeps


@pytest.mark.timeout(60)
@ASYNCIO_ONLY
async def test_muted_analyser_policies() -> None:
    with anyio.fail_after(45):
        async with served_lines([[1, 2], [3]]) as served:
            (path_a, _), (path_b, line_b) = served
            line_b.simulators[0].mute()
            async with ServomexManager(error_policy=ErrorPolicy.RETURN) as mgr:
                await mgr.add("a1", path_a, address=1, timeout=0.2)
                await mgr.add("a2", path_a, address=2, timeout=0.2)
                await mgr.add("mute", path_b, address=3, timeout=0.2)
                results = await mgr.poll()
                assert results["a1"].ok
                assert results["a2"].ok
                assert isinstance(results["mute"].error, ServomexTimeoutError)
                samples = await mgr.poll_samples()
                assert {s.device for s in samples} == {"a1", "a2"}

                async def read_o2(anz: Analyzer) -> float | None:
                    return (await anz.read_channel(ChannelId.I1)).value

                each = await mgr.execute_each(read_o2)
                assert each["a1"].value == pytest.approx(21.0)
                assert isinstance(each["mute"].error, ServomexTimeoutError)
            async with ServomexManager(error_policy=ErrorPolicy.RAISE) as mgr:
                await mgr.add("a1", path_a, address=1, timeout=0.2)
                await mgr.add("mute", path_b, address=3, timeout=0.2)
                with pytest.raises(ExceptionGroup) as info:
                    await mgr.execute_each(read_o2)
                assert "one or more analysers failed" in str(info.value)
                assert [type(e) for e in info.value.exceptions] == [ServomexTimeoutError]
                # poll ignores the policy and always returns the complete mapping
                results = await mgr.poll()
                assert set(results) == {"a1", "mute"}


@pytest.mark.timeout(60)
async def test_direct_calls_on_a_shared_port_serialise() -> None:
    with anyio.fail_after(45):
        async with served_lines([[1, 2]]) as served, ServomexManager() as mgr:
            path, line = served[0]
            a1 = await mgr.add("a1", path, address=1)
            a2 = await mgr.add("a2", path, address=2)
            values: dict[str, float | None] = {}

            async def read(name: str, anz: Analyzer) -> None:
                for _ in range(3):
                    values[name] = (await anz.read_channel("I1")).value

            async with anyio.create_task_group() as tg:
                tg.start_soon(read, "a1", a1)
                tg.start_soon(read, "a2", a2)
            assert values == {"a1": pytest.approx(21.0), "a2": pytest.approx(22.0)}
            outcomes = [r.outcome for r in line.simulators[0].requests]
            assert RequestOutcome.SILENCE_DROPPED not in outcomes
            # 2 analysers x 3 reads x (FC04 + FC02); the first simulator answered its half
            assert outcomes.count(RequestOutcome.ANSWERED) == 6
            assert outcomes.count(RequestOutcome.OTHER_ADDRESS) == 6


# ---------------------------------------------------------------- lifecycle and validation


async def test_validation_and_lifecycle() -> None:
    url = "sim://mgr-life?mode=modbus_rtu&address=1,2&realtime=0"
    mgr = ServomexManager()
    a = await mgr.add("a", url, address=1)
    with pytest.raises(ServomexValidationError, match="already in use"):
        await mgr.add("a", url, address=2)
    with pytest.raises(ServomexValidationError, match="multidrop"):
        await mgr.add("c", url, protocol=ProtocolKind.CONTINUOUS_ASCII)
    with pytest.raises(ServomexValidationError, match="multidrop"):
        await mgr.add("c", url, protocol="auto")
    with pytest.raises(ServomexValidationError, match="already speaks"):
        await mgr.add("c", url, protocol="modbus_ascii", address=2)
    with pytest.raises(ServomexValidationError, match="1-247"):
        await mgr.add("c", "sim://mgr-other?realtime=0", address=0)
    with pytest.raises(ServomexValidationError, match="unknown analyser"):
        await mgr.poll(["nope"])
    with pytest.raises(ServomexValidationError, match="unknown analyser"):
        mgr.get("nope")
    b = await mgr.add("b", url, address=2)
    assert mgr.get("b") is b
    # ref-counted: the port stays open while one analyser still uses it
    await mgr.remove("a")
    assert (await b.read_channel("I1")).value == pytest.approx(20.378, abs=1e-5)
    transport = b.transport
    await mgr.remove("b")
    assert not transport.is_open
    assert a.transport is transport
    await mgr.close()
    await mgr.close()  # idempotent
    assert mgr.closed
    with pytest.raises(ServomexConnectionError, match="manager is closed"):
        await mgr.add("x", url)
    with pytest.raises(ServomexConnectionError, match="manager is closed"):
        await mgr.remove("b")
    with pytest.raises(ServomexConnectionError, match="manager is closed"):
        await mgr.poll()


async def test_prebuilt_analyzer_and_transport_sources_are_not_closed() -> None:
    anz = await open_device("sim://?mode=modbus_rtu&realtime=0", protocol="modbus_rtu")
    async with ServomexManager() as mgr:
        assert await mgr.add("solo", anz) is anz
        results = await mgr.poll()
        assert results["solo"].ok
    assert anz.transport.is_open  # the caller owns it
    await anz.aclose()

    from servomexlib.transport.ports import resolve_transport

    transport = await resolve_transport("sim://?mode=modbus_ascii&realtime=0")
    async with ServomexManager() as mgr:
        bound = await mgr.add("t", transport, protocol="modbus_ascii")
        assert (await bound.read_channel("I2")).value == pytest.approx(0.084, abs=1e-6)
    assert transport.is_open
    await transport.aclose()


@pytest.mark.virtual_time  # in-process sim://: the recorder and the line on the loop's clock
async def test_manager_is_a_poll_source_for_record() -> None:
    from servomexlib.streaming.recorder import record

    url = "sim://mgr-rec?mode=modbus_rtu&address=1,2&realtime=0"
    async with ServomexManager() as mgr:
        await mgr.add("a", url, address=1)
        await mgr.add("b", url, address=2)
        with anyio.fail_after(20):
            # a Modbus sweep costs 3 x 50 ms of silence: 2 analysers fit in a 0.5 s tick
            async with record(mgr, rate_hz=2, duration=1.5) as rec:
                batches = [b async for b in rec.stream]
    # 3 slots, each polled (a stall of more than a period would skip one: counted late)
    assert len(batches) == rec.summary.samples_emitted >= 1
    assert rec.summary.samples_emitted + rec.summary.samples_late == 3
    assert all({s.device for s in batch} == {"a", "b"} for batch in batches)
