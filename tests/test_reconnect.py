"""Auto-reconnect (issue 6 acceptance): the pty peer vanishes mid-recording and comes back.

The simulator serves a real pseudo-terminal behind a stable symlink; ``sim.vanish()`` closes
the pty master (as unplugging a USB adapter does: reads and writes on the open port fail with
EIO) and removes the link; ``sim.reappear()`` serves a new pty at the same path. ``record``
with ``auto_reconnect`` must absorb the loss, rebuild its source through ``reconnect_factory``
(reopening the same path) and carry on, losing and duplicating nothing it emitted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import pytest

from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_device
from servomexlib.devices.models import ChannelId, ProtocolKind, Sample
from servomexlib.errors import ServomexConnectionError, ServomexTimeoutError
from servomexlib.sim import Simulator
from servomexlib.streaming.recorder import AcquisitionSummary, PollSource, record

pytestmark = pytest.mark.anyio

CHANNELS = [ChannelId(c) for c in ("I1", "I2", "I3", "E1", "E2")]


class Reopener:
    """A ``reconnect_factory`` that reopens the same port.

    Each Analyzer lives in a task of the test's task group (a continuous Analyzer runs its
    receiver in a task group entered by that task, so it must also be left by it); ``open``
    first closes the previous Analyzer, then opens and enters a new one.
    """

    def __init__(self, tg: anyio.abc.TaskGroup, path: str, **kw: Any) -> None:
        self._tg = tg
        self._path = path
        self._kw = kw
        self._release: anyio.Event | None = None
        self._released: anyio.Event | None = None
        self.attempts = 0
        self.opened = 0
        self.closed = 0

    async def open(self) -> Analyzer:
        self.attempts += 1
        await self.close()
        anz: Analyzer = await self._tg.start(self._hold)
        self.opened += 1
        return anz

    async def source(self) -> PollSource:
        return await self.open()

    async def close(self) -> None:
        if self._release is None or self._released is None:
            return
        self._release.set()
        await self._released.wait()
        self._release = self._released = None
        self.closed += 1

    async def _hold(self, *, task_status: anyio.abc.TaskStatus[Analyzer]) -> None:
        # An open failure is raised from ``tg.start`` in the caller (the recorder's factory).
        anz = await open_device(self._path, **self._kw)
        release, released = anyio.Event(), anyio.Event()
        try:
            async with anz:
                self._release, self._released = release, released
                task_status.started(anz)
                await release.wait()
        finally:
            released.set()


def check_batches(batches: list[Sequence[Sample]], *, distinct: bool) -> list[int]:
    """Every batch whole and error-free; stamps in order. Returns the batches' monotonic_ns."""
    stamps = []
    for batch in batches:
        assert [s.channel for s in batch] == CHANNELS
        assert all(s.error is None for s in batch)
        assert len({s.monotonic_ns for s in batch}) == 1  # one frame per batch
        stamps.append(batch[0].monotonic_ns)
    if distinct:
        assert stamps == sorted(set(stamps))  # strictly increasing: no batch twice
    else:
        assert stamps == sorted(stamps)  # sample-and-hold may repeat, never go back
    return stamps


#: Bytes already on their way when the device vanished (in the pty's buffer) may still be read,
#: and stamped, just after the moment of the unplug, the later the busier the machine. Within
#: this much of it a batch still counts as from before the outage; the outage lasts 3 s.
LINGER_NS = 1_000_000_000


async def record_through_an_outage(
    sim: Simulator, path: str, *, rate_hz: float, duration: float, **open_kw: Any
) -> tuple[list[Sequence[Sample]], Any, Reopener, tuple[int, int]]:
    """Record from ``path`` while the device vanishes for 3 s; returns what was seen."""
    batches: list[Sequence[Sample]] = []
    outage: list[int] = []
    async with anyio.create_task_group() as tg:
        reopener = Reopener(tg, path, **open_kw)
        first = await reopener.open()

        async def pull_the_cable() -> None:
            await anyio.sleep(1.5)
            outage.append(time.monotonic_ns())
            sim.vanish()
            await anyio.sleep(3)
            sim.reappear()
            outage.append(time.monotonic_ns())

        async with record(
            first,
            rate_hz=rate_hz,
            duration=duration,
            auto_reconnect=True,
            reconnect_factory=reopener.source,
        ) as rec:
            tg.start_soon(pull_the_cable)
            async for batch in rec.stream:
                batches.append(batch)
        await reopener.close()
    return batches, rec.summary, reopener, (outage[0], outage[1])


def check_outage_absorbed(
    batches: list[Sequence[Sample]], summary: AcquisitionSummary, reopener: Reopener, *, ticks: int
) -> None:
    """The loss was absorbed: every absorbed ConnectionError led to one reopen attempt (the one
    during the outage failed, the one after it succeeded); nothing emitted was lost or
    duplicated, and the schedule accounts for every tick."""
    assert summary.disconnects >= 2
    assert reopener.attempts == 1 + summary.disconnects
    assert reopener.opened == 2
    assert reopener.closed == 2  # the vanished Analyzer and the last one
    assert len(batches) == summary.samples_emitted
    assert summary.samples_emitted + summary.samples_late == ticks


async def test_modbus_recording_survives_a_vanished_pty() -> None:
    rate_hz, duration = 2.0, 8.0
    async with Simulator(mode=ProtocolKind.MODBUS_RTU, address=30) as sim:
        path = await sim.serve_pty()
        with anyio.fail_after(19):
            batches, summary, reopener, (gone, back) = await record_through_an_outage(
                sim,
                path,
                rate_hz=rate_hz,
                duration=duration,
                protocol="modbus_rtu",
                address=30,
                timeout=0.5,
            )
    check_outage_absorbed(batches, summary, reopener, ticks=round(duration * rate_hz))
    stamps = check_batches(batches, distinct=True)
    before = [t for t in stamps if t < gone + LINGER_NS]
    after = [t for t in stamps if t > back]
    assert len(before) + len(after) == len(stamps)  # nothing was acquired during the outage
    assert len(before) >= 2
    assert len(after) >= 3
    for batch in batches:
        assert batch[0].value == pytest.approx(20.378, abs=1e-6)
        assert batch[0].requested_at is not None
        assert batch[0].latency_s is not None


async def test_continuous_recording_survives_a_vanished_pty() -> None:
    rate_hz, duration = 4.0, 7.0
    async with Simulator(mode=ProtocolKind.CONTINUOUS_ASCII, frame_period=0.25) as sim:
        path = await sim.serve_pty()
        with anyio.fail_after(19):
            batches, summary, reopener, (gone, back) = await record_through_an_outage(
                sim,
                path,
                rate_hz=rate_hz,
                duration=duration,
                protocol="continuous",
                frame_period=0.25,
            )
    check_outage_absorbed(batches, summary, reopener, ticks=round(duration * rate_hz))
    stamps = check_batches(batches, distinct=False)
    before = sorted({t for t in stamps if t < gone + LINGER_NS})
    after = sorted({t for t in stamps if t > back})
    assert len(before) + len(after) == len(set(stamps))
    assert len(before) >= 3  # distinct broadcast frames on each side of the outage
    assert len(after) >= 3
    assert all(b[0].value == pytest.approx(20.378, abs=1e-6) for b in batches)


# --- what the Analyzer raises when the port goes away ----------------------------------------


@pytest.mark.parametrize("mode", [ProtocolKind.MODBUS_RTU, ProtocolKind.CONTINUOUS_ASCII])
async def test_vanished_port_is_a_connection_error_not_a_timeout(mode: ProtocolKind) -> None:
    async with Simulator(mode=mode, frame_period=0.2) as sim:
        path = await sim.serve_pty()
        with anyio.fail_after(10):
            async with await open_device(path, protocol=mode, frame_period=0.2) as anz:
                await anz.poll()
                sim.vanish()
                started = time.monotonic()
                with pytest.raises(ServomexConnectionError) as info:
                    await anz.poll(wait_fresh=True)
                elapsed = time.monotonic() - started
    assert not isinstance(info.value, ServomexTimeoutError)
    assert info.value.context.port == path
    assert elapsed < 1.0  # the OS reports the loss at once; no timeout is waited out


async def test_port_lost_while_waiting_for_a_reply() -> None:
    """The reply never comes because the adapter is gone: ConnectionError, not a timeout."""
    async with Simulator(mode=ProtocolKind.MODBUS_RTU) as sim:
        path = await sim.serve_pty()
        with anyio.fail_after(10):
            anz = await open_device(path, protocol="modbus_rtu", timeout=3.0, identify=False)
            try:
                sim.mute()

                async def unplug() -> None:
                    await anyio.sleep(0.3)
                    sim.vanish()

                started = time.monotonic()
                caught: BaseException | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(unplug)
                    try:
                        await anz.poll()
                    except ServomexConnectionError as exc:
                        caught = exc
                elapsed = time.monotonic() - started
            finally:
                await anz.aclose()
    assert isinstance(caught, ServomexConnectionError)
    assert not isinstance(caught, ServomexTimeoutError)
    assert caught.context.address == 1
    assert caught.context.port == path
    assert elapsed < 1.5  # well before the 3 s response timeout
