"""Managed analysers sweep only populated slots; identify is cached (issue 11 items 3 and 4).

A real 4100 with five channels fills its unused slots (I4, D1-D4) with ``||||||`` and a blank
unit. Swept blindly those slots come back as ``0.0``, unit ``?``, ``ok=1`` — phantom rows. The
manager therefore identifies each analyser it builds before its first sweep (api.md §5, §8 as
amended by issue 11) and sweeps only the populated slots; an identify that fails fails that
analyser's cycle and is retried on the next one, never replaced by a sweep of all ten slots.

The wire-level witness is the mock slave's read log (``read_ops``) and the simulator's request
log; the row-level witness is what ``record()`` → ``pipe()`` stores in an ``InMemorySink``.
The async tests over in-process transports run on virtual time (``virtual_time``,
tests/conftest.py); the sync facade's run in a portal thread on real time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import ChannelId, ProtocolKind, Sample
from servomexlib.errors import ServomexTimeoutError
from servomexlib.manager import ServomexManager
from servomexlib.sim import Simulator
from servomexlib.sim.model import rtu_adu
from servomexlib.sinks import InMemorySink, pipe
from servomexlib.streaming.recorder import record
from servomexlib.sync import SyncPortal
from servomexlib.sync.manager import SyncManager
from servomexlib.sync.sinks import record_to_sink
from servomexlib.testing import (
    DEFAULT_4100_BANK,
    MockChannel,
    MockSlave,
    ReadOp,
    load_4100_banks,
    mock_modbus_transport,
    read_ops,
)
from servomexlib.transport.sim import SimTransport
from servomexlib.units import Unit

pytestmark = pytest.mark.anyio

I1, I2, I3, I4, E1, E2 = (ChannelId(c) for c in ("I1", "I2", "I3", "I4", "E1", "E2"))
D1, D2, D3, D4 = (ChannelId(c) for c in ("D1", "D2", "D3", "D4"))
IDENTIFY = ReadOp(4, 0, 70)

#: How a real analyser fills a slot it does not use: ``||||||`` and a blank unit.
EMPTY_SLOTS = tuple(MockChannel(ch, 0.0, b"||||||", b"\0\0\0") for ch in (I4, D1, D2, D3, D4))
#: "left": the measured 4100D bank (I1 I2 I3 labelled, E1 E2 unlabelled with unit mA).
LEFT_BANK = (*DEFAULT_4100_BANK, *EMPTY_SLOTS)
LEFT_CHANNELS = [I1, I2, I3, E1, E2]
#: "right": the same, but D2 is unlabelled (``||||||``) and reports a unit: populated, name None.
RIGHT_BANK = (
    *DEFAULT_4100_BANK,
    *(c for c in EMPTY_SLOTS if c.channel is not D2),
    MockChannel(D2, 1.5, b"||||||", b"%\0\0"),
)
RIGHT_CHANNELS = [I1, I2, I3, D2, E1, E2]
EXPECTED = {
    "left": LEFT_CHANNELS,
    "right": RIGHT_CHANNELS,
}
VALUES = {I1: 20.378, I2: 0.084, I3: 0.25, D2: 1.5, E1: 0.0, E2: 0.0}
UNITS = {I1: Unit.PERCENT, I2: Unit.PERCENT, I3: Unit.PERCENT, D2: Unit.PERCENT}
NAMES = {I1: "Oxygen", I2: "CO", I3: "CO\u2082", D2: None, E1: None, E2: None}


@asynccontextmanager
async def two_banks() -> AsyncIterator[tuple[tuple[SimTransport, MockSlave], ...]]:
    """Two mock analysers, each behind its own in-process transport (two port groups)."""
    async with AsyncExitStack() as stack:
        left = await stack.enter_async_context(
            mock_modbus_transport(address=1, channels=LEFT_BANK, record_read_ops=True)
        )
        right = await stack.enter_async_context(
            mock_modbus_transport(address=7, channels=RIGHT_BANK, record_read_ops=True)
        )
        yield left, right


def check_cycle(samples: Sequence[Sample]) -> None:
    """One sweep of both analysers: exactly their populated slots, right values and units."""
    assert [(s.device, s.channel) for s in samples] == [
        (device, ch) for device in ("left", "right") for ch in EXPECTED[device]
    ]
    for s in samples:
        assert s.error is None
        assert s.reading is not None
        assert s.channel is not None
        assert s.value == pytest.approx(VALUES[s.channel], abs=1e-6)
        assert s.unit is UNITS.get(s.channel, Unit.MILLIAMP)
        assert s.unit is not Unit.UNKNOWN
        assert s.reading.name == NAMES[s.channel]


def check_wire(slave: MockSlave, sweeps: int) -> None:
    """Identify ran once, first; then only sweeps (3 reads each at 19200 RTU)."""
    ops = read_ops(slave)
    assert ops[0] == IDENTIFY
    assert len(ops) == 1 + 3 * sweeps, ops


# ---------------------------------------------------------------------------- async manager


@pytest.mark.virtual_time
async def test_manager_polls_only_populated_slots() -> None:
    with anyio.fail_after(20):
        async with two_banks() as ((t_left, s_left), (t_right, s_right)), ServomexManager() as mgr:
            await mgr.add("left", t_left, address=1)
            await mgr.add("right", t_right, address=7)
            assert mgr.get("left").info is None  # not identified before its first sweep
            assert read_ops(s_left) == []
            check_cycle(await mgr.poll_samples())
            results = await mgr.poll()
            for name, channels in EXPECTED.items():
                frame = results[name].value
                assert frame is not None
                assert [r.channel for r in frame.readings] == channels
                info = mgr.get(name).info
                assert info is not None
                assert [c.channel for c in info.channels] == channels
            check_wire(s_left, sweeps=2)
            check_wire(s_right, sweeps=2)


@pytest.mark.virtual_time
async def test_manager_record_pipe_stores_only_populated_rows() -> None:
    with anyio.fail_after(30):
        async with two_banks() as ((t_left, s_left), (t_right, s_right)), ServomexManager() as mgr:
            await mgr.add("left", t_left, address=1)
            await mgr.add("right", t_right, address=7)
            sink = InMemorySink()
            # The recorder runs on anyio's clock (virtual here); 3 ticks at 2 Hz.
            async with sink, record(mgr, rate_hz=2, duration=1.5) as rec:
                written = await pipe(rec.stream, sink, batch_size=1)
    emitted = rec.summary.samples_emitted
    assert emitted >= 1
    assert written.samples_emitted == len(sink.samples) == emitted * (5 + 6)
    per_tick = len(LEFT_CHANNELS) + len(RIGHT_CHANNELS)
    for tick in range(emitted):
        check_cycle(sink.samples[tick * per_tick : (tick + 1) * per_tick])
    stored = {(s.device, s.channel) for s in sink.samples}
    assert ("left", I4) not in stored
    assert ("right", D1) not in stored
    check_wire(s_left, sweeps=emitted)
    check_wire(s_right, sweeps=emitted)


@pytest.mark.virtual_time
async def test_failed_identify_fails_the_cycle_and_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead analyser's cycle fails with the identify error, sends no sweep (no fallback to
    all ten slots), and identify is tried again on the next cycle."""
    mute = Simulator(mode=ProtocolKind.MODBUS_RTU, address=3, realtime=False, name="pop-mute")
    mute.mute()
    identify_adu = rtu_adu(3, bytes((4, 0, 0, 0, 70)))
    with anyio.fail_after(30):
        async with two_banks() as ((t_left, _), _right), ServomexManager() as mgr:
            await mgr.add("left", t_left, address=1)
            await mgr.add("mute", "sim://pop-mute", address=3, timeout=0.05)
            results = await mgr.poll()
            assert isinstance(results["mute"].error, ServomexTimeoutError)
            left = results["left"].value
            assert left is not None
            assert [r.channel for r in left.readings] == LEFT_CHANNELS
            assert mgr.get("mute").info is None
            with caplog.at_level(logging.WARNING, logger="servomexlib.manager"):
                samples = await mgr.poll_samples()
            assert {s.device for s in samples} == {"left"}
            assert any("mute" in r.getMessage() for r in caplog.records)
            # Two failed cycles: every request the dead analyser was sent was an identify
            # (or a line fence, FC08) — never a sweep read.
            sent = [r.adu for r in mute.requests]
            assert sent.count(identify_adu) >= 2
            assert all(a == identify_adu or a[1] == 0x08 for a in sent), sent
            # The analyser comes back: the next cycle identifies it, then sweeps populated slots.
            mute.mute(False)
            mark = len(mute.requests)
            results = await mgr.poll()
            frame = results["mute"].value
            assert frame is not None, results["mute"].error
            populated = [I1, I2, I3, E1, E2]  # the simulator's default channels
            assert [r.channel for r in frame.readings] == populated
            info = mgr.get("mute").info
            assert info is not None
            assert [c.channel for c in info.channels] == populated
            answered = [r.adu for r in mute.requests[mark:] if r.adu[1] != 0x08]
            # One identify, then one value-only sweep: FC04 (0, 65) covers the value registers
            # of I1-I3, E1 and E2, then the channel and analyser discretes (19200 RTU).
            sweep = [rtu_adu(3, bytes((2, 0, 0, 0, 80))), rtu_adu(3, bytes((2, 3, 232, 0, 16)))]
            assert answered == [identify_adu, rtu_adu(3, bytes((4, 0, 0, 0, 65))), *sweep]


# ---------------------------------------------------------------------------- sync manager


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.mark.timeout(40)
def test_sync_manager_polls_and_records_only_populated_slots(backend: str) -> None:
    with SyncPortal(backend=backend) as portal:
        left_cm = portal.wrap_async_context_manager(
            mock_modbus_transport(address=1, channels=LEFT_BANK, record_read_ops=True)
        )
        right_cm = portal.wrap_async_context_manager(
            mock_modbus_transport(address=7, channels=RIGHT_BANK, record_read_ops=True)
        )
        with (
            left_cm as (t_left, s_left),
            right_cm as (t_right, s_right),
            SyncManager(portal=portal) as mgr,
        ):
            mgr.add("left", t_left, address=1)
            mgr.add("right", t_right, address=7)
            check_cycle(mgr.poll_samples())
            sink = InMemorySink()
            # Real time: 2 ticks at 2 Hz through record → pipe in the portal's loop.
            summary = record_to_sink(
                mgr.manager, sink, rate_hz=2, duration=1.0, batch_size=1, portal=portal
            )
            per_tick = len(LEFT_CHANNELS) + len(RIGHT_CHANNELS)
            assert summary.samples_emitted == len(sink.samples)
            assert len(sink.samples) % per_tick == 0
            ticks = len(sink.samples) // per_tick
            assert ticks >= 1
            for tick in range(ticks):
                check_cycle(sink.samples[tick * per_tick : (tick + 1) * per_tick])
            check_wire(s_left, sweeps=1 + ticks)
            check_wire(s_right, sweeps=1 + ticks)


# ---------------------------------------------------------------------------- identify cache


async def test_identify_is_cached_until_refresh() -> None:
    with anyio.fail_after(20):
        async with mock_modbus_transport(address=5, channels=LEFT_BANK, record_read_ops=True) as (
            transport,
            slave,
        ):
            anz: Analyzer = await open_device(transport, protocol="modbus_rtu", address=5)
            async with anz:  # identify on entry (open_device's default)
                info = anz.info
                assert info is not None
                assert read_ops(slave) == [IDENTIFY]
                assert await anz.identify() is info  # served from the cache: no I/O
                assert await anz.identify(timeout=0.5) is info
                assert read_ops(slave) == [IDENTIFY]
                # The analyser is relabelled: I1 now says "O2", and I4 gains a label.
                load_4100_banks(
                    slave,
                    [
                        MockChannel(I1, 20.378, b"O2    ", b"%\0\0"),
                        MockChannel(I4, 2.5, b"CH4   ", b"vpm"),
                    ],
                )
                assert await anz.identify() is info  # still the cache ...
                assert len(read_ops(slave)) == 1
                frame = await anz.poll()
                assert frame.channel(I1).name == "Oxygen"  # ... and the name cache
                assert [r.channel for r in frame.readings] == LEFT_CHANNELS
                swept = len(read_ops(slave))
                fresh = await anz.identify(refresh=True)  # re-reads the device
                assert read_ops(slave)[swept:] == [IDENTIFY]
                assert fresh is not info
                assert anz.info is fresh
                assert [(c.channel, c.name) for c in fresh.channels][:4] == [
                    (I1, "O2"),
                    (I2, "CO"),
                    (I3, "CO\u2082"),
                    (I4, "CH4"),
                ]
                frame = await anz.poll()
                assert frame.channel(I1).name == "O2"
                assert [r.channel for r in frame.readings] == [I1, I2, I3, I4, E1, E2]
                assert frame.channel(I4).unit is Unit.VPM
                done = len(read_ops(slave))
                assert await anz.identify() is fresh
                assert len(read_ops(slave)) == done


async def test_concurrent_first_identifies_read_the_device_once() -> None:
    with anyio.fail_after(20):
        async with mock_modbus_transport(channels=LEFT_BANK, record_read_ops=True) as (
            transport,
            slave,
        ):
            anz: Analyzer = await open_device(transport, protocol="modbus_rtu", identify=False)
            got: list[object] = []

            async def ask() -> None:
                got.append(await anz.identify())

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(ask)
            assert read_ops(slave) == [IDENTIFY]
            assert got[0] is got[1] is got[2] is anz.info
            await anz.aclose()
