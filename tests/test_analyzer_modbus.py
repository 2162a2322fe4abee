"""Modbus end to end (issue 5 acceptance): ``open_device`` + ``Analyzer`` against the simulator.

Most tests reach the simulator through a real pseudo-terminal opened by anyserial, exactly as a
USB-RS485 adapter would be; the long poll runs use the in-process transport to stay fast. The
simulator's request log (``sim.requests``) is the wire-level witness: it shows which ADUs the
read planner sent, which were answered, dropped or refused.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from helpers import ASYNCIO_ONLY, modbus_stats
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import (
    CalGroupState,
    CalPhase,
    ChannelId,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Sample,
    StreamMode,
)
from servomexlib.errors import (
    ServomexConfirmationRequiredError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.planner import SpanPolicy
from servomexlib.settings import SerialSettings
from servomexlib.sim import (
    CoilAction,
    CoilWrite,
    ModbusRequest,
    RequestOutcome,
    SimChannel,
    Simulator,
)
from servomexlib.sim.model import ascii_adu, rtu_adu
from servomexlib.units import Unit

pytestmark = pytest.mark.anyio

RTU = ProtocolKind.MODBUS_RTU
ASCII = ProtocolKind.MODBUS_ASCII
I1, I2, I3, D1, E1, E2 = (ChannelId(c) for c in ("I1", "I2", "I3", "D1", "E1", "E2"))
MODES = [(RTU, 1), (RTU, 30), (ASCII, 1), (ASCII, 30)]
CLEAR = ChannelStatus()


def f32(value: float) -> float:
    """``value`` as it survives the float32 registers, given as the shortest decimal that
    converts back to the same float32 (api.md §2: ``20.378``, not ``20.378000259399414``)."""
    packed = struct.pack(">f", value)
    for digits in range(1, 10):
        shortest = float(f"{struct.unpack('>f', packed)[0]:.{digits}g}")
        if struct.pack(">f", shortest) == packed:
            return shortest
    raise AssertionError(f"no float32 round trip for {value!r}")  # pragma: no cover


def adu(framing: ProtocolKind, address: int, pdu: bytes) -> bytes:
    return rtu_adu(address, pdu) if framing is RTU else ascii_adu(address, pdu)


def read_pdu(fc: int, start: int, count: int) -> bytes:
    return bytes((fc,)) + start.to_bytes(2, "big") + count.to_bytes(2, "big")


def coil_pdu(fc: int, coil: int, on: bool | None = None) -> bytes:
    tail = (1).to_bytes(2, "big") if on is None else (b"\xff\x00" if on else b"\x00\x00")
    return bytes((fc,)) + coil.to_bytes(2, "big") + tail


def reads(framing: ProtocolKind, address: int, *plan: tuple[int, int, int]) -> list[bytes]:
    return [adu(framing, address, read_pdu(*r)) for r in plan]


# The full three-transaction sweep of protocol.md §5 (at 19200 RTU, I1 I2 I3 E1 E2).
BROAD = ((4, 0, 70), (2, 0, 80), (2, 1000, 16))
# The same sweep once names and units are cached: the value registers of I1 … E2 only.
VALUE_BROAD = ((4, 0, 65), (2, 0, 80), (2, 1000, 16))


@asynccontextmanager
async def served(**kw: Any) -> AsyncIterator[tuple[Simulator, str]]:
    """A running simulator served on a fresh pty: ``(sim, path)``."""
    async with Simulator(**kw) as sim:
        yield sim, await sim.serve_pty()


def since(sim: Simulator, mark: int) -> list[bytes]:
    return [r.adu for r in sim.requests[mark:]]


# ------------------------------------------------------------------------------- values

# A 4100 with a derived channel: D1 copies bits 0-3 from I2 (not its default parent I1).
D_CHANNELS = [
    SimChannel("I1", name="Oxygen", unit="%", value=20.378),
    SimChannel("I2", name="CO", unit="%", value=0.084),
    SimChannel("I3", name="CO₂", unit="%", value=0.25),  # 0x82 from the display ROM
    SimChannel("D1", name="COdry", unit="vpm", value=912.5, parent="I2"),
    SimChannel("E1", value=4.0),  # unlabelled external input
    SimChannel("E2", name="Flow", unit="mA", value=12.5),
]
EXPECTED_INFO = [
    (I1, "Oxygen", Unit.PERCENT),
    (I2, "CO", Unit.PERCENT),
    (I3, "CO₂", Unit.PERCENT),
    (D1, "COdry", Unit.VPM),
    (E1, None, Unit.MILLIAMP),
    (E2, "Flow", Unit.MILLIAMP),
]
PARENT = ChannelStatus(fault=True, maintenance=True, calibrating=True, warming_up=True)
EXPECTED_STATUS = {
    I1: CLEAR,
    I2: PARENT,
    I3: CLEAR,
    D1: ChannelStatus(True, True, True, True, (False, False, True, False)),  # own alarm 3
    E1: ChannelStatus(fault=True),  # Invalid
    E2: ChannelStatus(alarms=(True, False, False, False)),
}
EXPECTED_VALUES = {c.channel: f32(c.value or 0.0) for c in D_CHANNELS}


def scenario(sim: Simulator) -> None:
    """Parent I2 in fault, maintenance, calibration (group 1, gas 1) and warm-up."""
    sim.set_fault(I2)
    sim.set_maintenance(I2)
    sim.warm_up(600, [I2])
    sim.configure_calibration(1, channels=[I2], gas1_s=600, gas2_s=600)
    assert sim.start_calibration(1)
    sim.set_alarm(D1, 3)
    sim.set_invalid(E1)
    sim.set_alarm(E2, 1)
    sim.set_analyser(maintenance=True)


def check_readings(frame: Frame, framing: ProtocolKind, *, value_only: bool = True) -> None:
    assert [r.channel for r in frame.readings] == [c for c, _, _ in EXPECTED_INFO]
    for reading, (ch, name, unit) in zip(frame.readings, EXPECTED_INFO, strict=True):
        assert reading.value == EXPECTED_VALUES[ch], ch
        assert reading.name == name
        assert reading.unit is unit
        assert reading.kind is ch.kind
        assert reading.status == EXPECTED_STATUS[ch], ch
        assert reading.protocol is framing
        # A value-only sweep: the 4 value bytes as received (else value, name, unit: 14).
        assert len(reading.raw) == (4 if value_only else 14)
    assert frame.channel(I2).status.ok is False
    assert frame.channel(I1).status.ok is True
    assert frame.channel(E1).status.ok is False  # Invalid counts as a fault


@pytest.mark.parametrize(("framing", "address"), MODES)
async def test_values_names_units_and_flags_over_a_pty(framing: ProtocolKind, address: int) -> None:
    # Character pacing and turnaround on for address 30, off for address 1 (keeps it fast).
    realtime = address == 30
    async with served(mode=framing, address=address, channels=D_CHANNELS, realtime=realtime) as (
        sim,
        path,
    ):
        scenario(sim)
        with anyio.fail_after(20):
            anz = await open_device(path, protocol=framing.value, address=address, timeout=0.5)
            async with anz:
                info = anz.info
                assert info is not None
                assert [(c.channel, c.name, c.unit) for c in info.channels] == EXPECTED_INFO
                assert info.model == "4000-series"
                assert info.protocol is framing
                assert info.address == address
                assert info.serial_settings == SerialSettings(port=path)
                assert anz.device == path

                frame = await anz.poll()
                check_readings(frame, framing)
                analyser = frame.analyser
                assert analyser.fault is True  # a transducer is in fault
                assert analyser.maintenance is True
                assert analyser.clock is None  # Modbus has no clock
                assert analyser.cal_groups == (
                    CalGroupState(1, True, 1),
                    CalGroupState(2, False, 1),
                    CalGroupState(3, False, 1),
                    CalGroupState(4, False, 1),
                )
                assert analyser.cal_groups[0].phase is CalPhase.CAL_GAS_1
                assert await anz.analyser_status() == analyser

                for ch in (I3, D1, E1):
                    reading = await anz.read_channel(ch.value)
                    assert reading.value == EXPECTED_VALUES[ch]
                    assert reading.name == frame.channel(ch).name
                    assert reading.status == EXPECTED_STATUS[ch]
                    assert await anz.status(ch) == EXPECTED_STATUS[ch]
                assert (await anz.read_channel(I3)).name == "CO₂"

                # The parent clears: the D-channel's copies follow; its own alarm stays.
                sim.set_fault(I2, False)
                sim.set_maintenance(I2, False)
                assert await anz.status(D1) == ChannelStatus(
                    False, False, True, True, (False, False, True, False)
                )
                assert anz.dropped_frames == 0


@pytest.mark.parametrize(("framing", "address"), [(RTU, 30), (ASCII, 1)])
async def test_polled_samples_carry_requested_at_and_latency(
    framing: ProtocolKind, address: int
) -> None:
    async with served(mode=framing, address=address) as (_, path):
        with anyio.fail_after(20):
            async with await open_device(path, protocol=framing, address=address) as anz:
                before = time.monotonic_ns()
                frame = await anz.poll()
                after = time.monotonic_ns()
                samples = await anz.poll_samples()
    assert frame.requested_at is not None
    assert frame.requested_at == frame.received_at
    assert frame.latency_s is not None
    # Three transactions, each behind 50 ms of silence, all inside the call.
    assert 0.15 < frame.latency_s <= (after - before) / 1e9
    assert before <= frame.monotonic_ns <= after
    assert len(samples) == 5
    first = samples[0]
    assert all(s.requested_at == first.requested_at == first.received_at for s in samples)
    assert all(s.latency_s == first.latency_s for s in samples)
    assert first.latency_s is not None
    assert first.latency_s > 0.15
    assert first.monotonic_ns > frame.monotonic_ns
    assert [s.device for s in samples] == [path] * 5
    assert [s.value for s in samples] == [f32(20.378), f32(0.084), f32(0.25), 0.0, 0.0]


# ------------------------------------------------------------------------------- the plan


async def test_one_poll_is_three_transactions_at_19200_rtu() -> None:
    async with served() as (sim, path):
        with anyio.fail_after(20):
            async with await open_device(path, protocol="modbus_rtu") as anz:
                assert since(sim, 0) == reads(RTU, 1, (4, 0, 70))  # identify
                for _ in range(3):
                    mark = len(sim.requests)
                    await anz.poll()
                    assert since(sim, mark) == reads(RTU, 1, *VALUE_BROAD)
                await anz.identify(refresh=True)
                assert since(sim, mark + 3) == reads(RTU, 1, (4, 0, 70))
    # The worked ADUs of protocol.md §4.11, byte for byte.
    assert reads(RTU, 1, *BROAD) == [
        bytes.fromhex("01 04 00 00 00 46 71 F8"),
        bytes.fromhex("01 02 00 00 00 50 78 36"),
        bytes.fromhex("01 02 03 E8 00 10 F9 B6"),
    ]
    assert {r.outcome for r in sim.requests} == {RequestOutcome.ANSWERED}


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_sweeps_read_values_only_until_identify_refreshes_the_names(
    framing: ProtocolKind,
) -> None:
    """Names and units are cached: after identify every sweep reads the 2 value registers per
    slot (the request log shows FC04 (0, 65), never a name register again), so a renamed
    slot keeps its old name — until ``identify(refresh=True)`` re-reads all ten slots."""
    async with served(mode=framing, realtime=False) as (sim, path):
        with anyio.fail_after(20):
            async with await open_device(path, protocol=framing) as anz:
                assert since(sim, 0) == reads(framing, 1, (4, 0, 70))  # identify
                mark = len(sim.requests)
                sim.set_name(I1, "N2")
                sim.set_value(I1, 21.5)
                frame = await anz.poll()
                assert since(sim, mark) == reads(framing, 1, *VALUE_BROAD)
                assert frame.channel(I1).value == 21.5  # the value is read …
                assert frame.channel(I1).name == "Oxygen"  # … the name is the cached one
                assert frame.channel(I1).raw == struct.pack(">f", 21.5)
                assert (await anz.identify()).channels[0].name == "Oxygen"  # cached: no I/O
                assert len(sim.requests) == mark + 3
                info = await anz.identify(refresh=True)
                assert since(sim, mark + 3) == reads(framing, 1, (4, 0, 70))
                assert info.channels[0].name == "N2"
                mark = len(sim.requests)
                frame = await anz.poll()
                assert since(sim, mark) == reads(framing, 1, *VALUE_BROAD)
                assert frame.channel(I1).name == "N2"
                assert frame.channel(I1).unit is Unit.PERCENT


@pytest.mark.parametrize(
    ("framing", "baud", "fc04"),
    [
        # Value-only spans (identify cached the names): I1-I3 and E1-E2 read together.
        (RTU, 4800, ((4, 0, 16), (4, 56, 9))),  # split: 298.3 ms vs 367.9 for (0, 65)
        (ASCII, 9600, ((4, 0, 16), (4, 56, 9))),  # split: 302.5 ms vs 370.0
        (RTU, 9600, ((4, 0, 65),)),  # one broad read still wins
    ],
)
async def test_plan_follows_baud_rate_and_framing(
    framing: ProtocolKind, baud: int, fc04: tuple[tuple[int, int, int], ...]
) -> None:
    line = SerialSettings(port="sim://", baudrate=baud)
    async with served(mode=framing, serial=line, realtime=False) as (sim, path):
        with anyio.fail_after(20):
            anz = await open_device(
                path, protocol=framing, serial_settings=SerialSettings(port=path, baudrate=baud)
            )
            async with anz:
                assert anz.info is not None
                assert anz.info.serial_settings.baudrate == baud
                mark = len(sim.requests)
                frame = await anz.poll()
    assert since(sim, mark) == reads(framing, 1, *fc04, (2, 0, 80), (2, 1000, 16))
    assert [r.value for r in frame.readings] == [f32(20.378), f32(0.084), f32(0.25), 0.0, 0.0]


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_gap_free_reads_learned_from_one_exception_02_and_kept(
    framing: ProtocolKind,
) -> None:
    async with served(mode=framing, reject_gaps=True, realtime=False) as (sim, path):
        with anyio.fail_after(20):
            async with await open_device(path, protocol=framing) as anz:
                assert anz.info is not None
                assert [c.channel for c in anz.info.channels] == [I1, I2, I3, E1, E2]
                mark = len(sim.requests)
                first = await anz.poll()
                learned = since(sim, mark)
                mark = len(sim.requests)
                later = [await anz.poll() for _ in range(2)]
                after = sim.requests[mark:]
                planner = anz.read_planner
                assert planner is not None
    gap_free = reads(framing, 1, (4, 0, 16), (4, 56, 9), (2, 0, 24), (2, 64, 16), (2, 1000, 16))
    # One exception 02 per space, then the gap-free reads (completed reads are kept).
    assert learned == [
        *reads(framing, 1, (4, 0, 65)),
        *gap_free[:2],
        *reads(framing, 1, (2, 0, 80)),
        *gap_free[2:],
    ]
    assert [r.adu for r in after] == gap_free * 2
    assert {r.outcome for r in after} == {RequestOutcome.ANSWERED}  # no exception any more
    assert planner.policy(4) is SpanPolicy.GAP_FREE
    assert planner.policy(2) is SpanPolicy.GAP_FREE
    for frame in (first, *later):
        assert [r.value for r in frame.readings] == [
            f32(20.378),
            f32(0.084),
            f32(0.25),
            0.0,
            0.0,
        ]
        assert frame.channel(I3).name == "CO₂"


async def test_dead_address_times_out_within_the_bound_and_keeps_the_plan() -> None:
    timeout = 0.3
    async with served(address=1) as (sim, path):
        anz = await open_device(path, protocol=RTU, address=9, timeout=timeout, identify=False)
        try:
            planner = anz.read_planner
            assert planner is not None
            channels = [I1, I2, I3, E1, E2]
            plan_before = planner.plan(channels)
            started = time.monotonic()
            with anyio.fail_after(20), pytest.raises(ServomexTimeoutError) as info:
                await anz.poll()
            elapsed = time.monotonic() - started
            assert planner.plan(channels) == plan_before
            assert planner.policy(4) is SpanPolicy.COST
            assert planner.policy(2) is SpanPolicy.COST
            assert planner.unreadable == frozenset()
        finally:
            await anz.aclose()
    assert elapsed <= 3 * (timeout + 0.05) + 0.5
    err = info.value
    assert err.context.port == path
    assert err.context.address == 9
    assert err.context.protocol is RTU
    # The first transaction's three attempts, then nothing (no re-run, no other read).
    assert [r.adu for r in sim.requests] == reads(RTU, 9, (4, 0, 70)) * 3
    assert {r.outcome for r in sim.requests} == {RequestOutcome.OTHER_ADDRESS}


# ------------------------------------------------------------------------------- pacing


async def run_polls(n: int) -> None:
    """``n`` consecutive polls against a realtime simulator with the silence rule on."""
    sim = Simulator(
        mode=RTU, realtime=True, silence_drop=True, seed=5, line_clock=anyio.current_time
    )
    anz = await open_device(sim.transport(), protocol=RTU, timeout=0.5)
    expected = [f32(20.378), f32(0.084), f32(0.25), 0.0, 0.0]
    errors: list[BaseException] = []
    async with anz:
        for i in range(n):
            sim.set_value(I2, i / 1000)
            expected[1] = f32(i / 1000)
            try:
                frame = await anz.poll()
            except ServomexTimeoutError as exc:  # pragma: no cover - the acceptance is zero
                errors.append(exc)
                continue
            assert [r.value for r in frame.readings] == expected
        stats = modbus_stats(anz)
    assert errors == []
    outcomes = [r.outcome for r in sim.requests]
    assert set(outcomes) == {RequestOutcome.ANSWERED}  # the silence rule never bit
    # identify + 3 per poll. On the real clock, once the reply wait is learned (wire time +
    # ~50 ms), a busy machine waking the loop late can make an attempt give up on a reply that
    # is on its way; it is retried (after a fence), never lost, so any repeated attempt must be
    # one of those. (The tests below run on virtual time, where no wake-up is late.)
    assert stats.retries <= stats.short_timeouts
    assert len(outcomes) >= 1 + 3 * n
    if stats.retries == 0:
        assert len(outcomes) == 1 + 3 * n
    assert stats.timeouts == 0


@pytest.mark.virtual_time  # in-process: the line and the client on the loop's clock
async def test_consecutive_polls_with_the_silence_rule_on() -> None:
    with anyio.fail_after(40):
        await run_polls(15)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.virtual_time
async def test_two_hundred_consecutive_polls_with_the_silence_rule_on() -> None:
    with anyio.fail_after(150):
        await run_polls(200)


def lossy_simulator(*, loss: float, **kw: Any) -> Simulator:
    """A simulator that drops each reply it would send with probability ``loss`` (seeded)."""
    sim = Simulator(**kw)
    loss_rng = random.Random(f"{kw.get('seed', 0)}:loss")

    def maybe_drop(request: ModbusRequest) -> None:
        if loss_rng.random() < loss:
            sim.drop_next(1)

    sim.on_request(maybe_drop)
    return sim


@pytest.mark.virtual_time  # in-process: the timeouts and retries on the loop's clock
async def test_thirty_percent_dropped_replies_never_give_a_wrong_value() -> None:
    polls = 16
    sim = lossy_simulator(
        loss=0.3, mode=RTU, realtime=False, seed=11, line_clock=anyio.current_time
    )
    # identify=False: the sweeps cover all ten slots and the drops hit every read kind.
    anz = await open_device(sim.transport(), protocol=RTU, timeout=0.05, identify=False)
    ok = timeouts = 0
    with anyio.fail_after(50):
        async with anz:
            for i in range(polls):
                # A new value for every poll: a stale or misrouted reply would show.
                o2, e1 = 20.0 + i / 8, float(i % 20)
                sim.set_value(I1, o2)
                sim.set_value(E1, e1)
                sim.set_alarm(I3, 1 + i % 4)
                try:
                    frame = await anz.poll()
                except ServomexTimeoutError:
                    timeouts += 1
                else:
                    ok += 1
                    assert frame.channel(I1).value == f32(o2)
                    assert frame.channel(E1).value == f32(e1)
                    assert frame.channel(I2).value == f32(0.084)
                    assert frame.channel(I3).status.alarms[i % 4] is True
                sim.set_alarm(I3, 1 + i % 4, False)
            stats = modbus_stats(anz)
    outcomes = [r.outcome for r in sim.requests]
    dropped = outcomes.count(RequestOutcome.DROPPED)
    assert 0.2 < dropped / len(outcomes) < 0.4  # the injected loss rate
    assert stats.retries > 0  # the retries absorbed most drops
    assert ok + timeouts == polls
    assert ok > polls // 2


# ------------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(("framing", "address"), [(RTU, 30), (ASCII, 1)])
@ASYNCIO_ONLY  # seconds of real calibration phases over a pty; pty I/O on both backends above
async def test_calibration_pulse_gates_and_phases(framing: ProtocolKind, address: int) -> None:
    async with served(mode=framing, address=address) as (sim, path):
        # Each pass of the status loop below is three transactions (≈ 0.2 s with the 50 ms
        # silences); 1 s phases leave room for a pass delayed by a busy machine, so no phase
        # is stepped over.
        sim.configure_calibration(2, channels=[I1], gas1_s=1.0, gas2_s=1.0)
        with anyio.fail_after(20):
            anz = await open_device(path, protocol=framing, address=address, identify=False)
            async with anz:
                # Gates: nothing reaches the line.
                with pytest.raises(ServomexConfirmationRequiredError):
                    await anz.start_calibration(2)
                with pytest.raises(ServomexConfirmationRequiredError):
                    await anz.stop_calibration()
                for group in (0, 5):
                    with pytest.raises(ServomexValidationError):
                        await anz.start_calibration(group, confirm=True)
                    with pytest.raises(ServomexValidationError):
                        await anz.calibration_status(group)
                assert sim.requests == ()
                assert sim.coil_log == ()

                progress = await anz.calibration_status(2)
                assert (progress.group, progress.active, progress.phase) == (
                    2,
                    False,
                    CalPhase.IDLE,
                )

                mark = len(sim.requests)
                await anz.start_calibration(2, confirm=True)
                pulse = since(sim, mark)
                phases = [CalPhase.IDLE]
                calibrating = []
                while phases[-1] is not CalPhase.IDLE or len(phases) == 1:
                    progress = await anz.calibration_status(2)
                    calibrating.append((await anz.status(I1)).calibrating)
                    if progress.phase is not phases[-1]:
                        phases.append(progress.phase)
                    assert (await anz.calibration_status(1)).phase is CalPhase.IDLE
                assert progress.active is False
                assert (await anz.status(I1)).calibrating is False

                mark = len(sim.requests)
                await anz.stop_calibration(confirm=True)
                stop = since(sim, mark)
    # The exact ordered pulse on coil g−1 = 1: FC05 ON, FC01 read-back, FC05 OFF.
    assert pulse == [
        adu(framing, address, coil_pdu(5, 1, True)),
        adu(framing, address, coil_pdu(1, 1)),
        adu(framing, address, coil_pdu(5, 1, False)),
    ]
    assert stop == [
        adu(framing, address, coil_pdu(5, 8, True)),
        adu(framing, address, coil_pdu(1, 8)),
        adu(framing, address, coil_pdu(5, 8, False)),
    ]
    log: tuple[CoilWrite, ...] = sim.coil_log
    assert [(w.coil, w.on, w.action, w.group) for w in log] == [
        (1, True, CoilAction.START, 2),
        (1, False, CoilAction.NONE, None),
        (8, True, CoilAction.STOP, None),
        (8, False, CoilAction.NONE, None),
    ]
    assert phases == [CalPhase.IDLE, CalPhase.CAL_GAS_1, CalPhase.CAL_GAS_2, CalPhase.IDLE]
    assert any(calibrating)


# ------------------------------------------------------------------------------- streaming


async def test_poll_stream_yields_correct_samples() -> None:
    async with served(mode=ASCII, address=30, realtime=False) as (sim, path):
        with anyio.fail_after(20):
            anz: Analyzer = await open_device(path, protocol=ASCII, address=30)
            async with anz:
                session = anz.stream(rate_hz=10)
                assert session.mode is StreamMode.POLL
                got: list[Sample] = []
                async with session as samples:
                    async for sample in samples:
                        got.append(sample)
                        if len(got) == 5:
                            sim.set_value(I1, 19.5)  # seen from the next poll on
                        if len(got) == 15:
                            break
    values = [s.value for s in got]
    assert values[:5] == [f32(20.378), f32(0.084), f32(0.25), 0.0, 0.0]
    assert values[10:] == [f32(19.5), f32(0.084), f32(0.25), 0.0, 0.0]
    assert [s.channel for s in got] == [I1, I2, I3, E1, E2] * 3
    assert all(s.error is None and s.protocol is ASCII for s in got)
    assert all(s.requested_at is not None and s.latency_s is not None for s in got)
    stamps = [s.monotonic_ns for s in got[::5]]
    assert stamps == sorted(set(stamps))  # three distinct, ordered polls
