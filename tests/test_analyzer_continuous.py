"""Continuous mode end to end (issue 4 acceptance): Analyzer + factory over real ptys and TCP.

A small test-only feeder (the ``pty`` fixture, :class:`helpers.PtyFeeder`) writes frames built
with ``build_frame`` into the pty master; the Analyzer opens the slave path through anyserial
exactly as it would open a USB adapter.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyserial
import pytest

from helpers import ASYNCIO_ONLY, PtyFeeder, continuous_stats, served_on_pty
from servomexlib.decode import decode_frame, split_frames
from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.factory import open_continuous, open_device
from servomexlib.devices.models import (
    MODBUS_CAPABILITIES,
    CalibrationProgress,
    ChannelId,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Sample,
    StreamMode,
    idle_cal_groups,
)
from servomexlib.errors import (
    ServomexChecksumError,
    ServomexConfirmationRequiredError,
    ServomexConnectionError,
    ServomexProtocolUnsupportedError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.settings import SerialSettings
from servomexlib.transport import FakeTransport
from servomexlib.units import Unit
from servomexlib.wire.continuous import (
    MAX_SEGMENT,
    build_frame,
    format_block,
    format_header,
    format_value,
)

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data"

# ---------------------------------------------------------------------------- test feeder

CONFIGS: dict[int, list[tuple[ChannelId, str | None, float, str, int]]] = {
    3: [
        (ChannelId.I1, "Oxygen", 20.378, " % ", 3),
        (ChannelId.E1, None, 4.0, " mA", 1),
        (ChannelId.E2, None, 0.0, " mA", 1),
    ],
    5: [
        (ChannelId.I1, "Oxygen", 20.378, " % ", 3),
        (ChannelId.I2, "CO", 0.084, " % ", 3),
        (ChannelId.I3, "CO2", 0.250, " % ", 3),
        (ChannelId.E1, None, 0.0, " mA", 1),
        (ChannelId.E2, None, 0.0, " mA", 1),
    ],
    7: [
        (ChannelId.I1, "Oxygen", 20.950, " % ", 3),
        (ChannelId.I2, "CO", 0.012, " % ", 3),
        (ChannelId.I3, "CO2", 1.875, " % ", 3),
        (ChannelId.I4, "CH4", 2.5, "vpm", 1),
        (ChannelId.D1, None, 20.95, " % ", 2),
        (ChannelId.E1, None, 12.5, " mA", 1),
        (ChannelId.E2, None, 0.0, " mA", 1),
    ],
}


def make_frame(n: int, *, term: bytes = b"\r\n", bump: float = 0.0) -> bytes:
    """A frame of configuration ``n``; ``bump`` is added to the first channel's value."""
    blocks = [
        format_block(
            ch,
            name=name,
            value_text=format_value(value + (bump if i == 0 else 0.0), decimals),
            unit=unit,
            status=ChannelStatus(),
        )
        for i, (ch, name, value, unit, decimals) in enumerate(CONFIGS[n])
    ]
    header = format_header(
        clock=None, fault=False, maintenance=False, cal_groups=idle_cal_groups(), n_blocks=n
    )
    return build_frame(header, blocks, terminator=term)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def collect(samples: AsyncIterator[Sample], n: int) -> list[Sample]:
    out: list[Sample] = []
    async for sample in samples:
        out.append(sample)
        if len(out) == n:
            break
    return out


def expected_values(n: int) -> list[tuple[ChannelId, str | None, float, Unit]]:
    units = {" % ": Unit.PERCENT, " mA": Unit.MILLIAMP, "vpm": Unit.VPM}
    return [(ch, name, value, units[unit]) for ch, name, value, unit, _ in CONFIGS[n]]


def frame_values(frame: Frame) -> list[tuple[ChannelId, str | None, float | None, Unit]]:
    return [(r.channel, r.name, r.value, r.unit) for r in frame.readings]


# ---------------------------------------------------------------------------- pty end to end


@pytest.mark.parametrize("n", [3, 5, 7])
@pytest.mark.parametrize("term", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
async def test_identify_poll_stream_over_pty(pty: PtyFeeder, n: int, term: bytes) -> None:
    with anyio.fail_after(10):
        anz = await open_device(pty.path, protocol=ProtocolKind.CONTINUOUS_ASCII, frame_period=0.5)
        assert anz.device == pty.path

        async def broadcast() -> None:
            for i in range(100):
                await pty.write(make_frame(n, term=term, bump=i / 1000))
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(broadcast)
            async with anz:
                info = anz.info
                assert info is not None
                assert info.model == "4000-series"
                assert info.protocol is ProtocolKind.CONTINUOUS_ASCII
                assert info.address == 0
                assert info.serial_settings == SerialSettings(port=pty.path)
                assert [(c.channel, c.name, c.unit) for c in info.channels] == [
                    (ch, name, unit) for ch, name, _, unit in expected_values(n)
                ]
                frame = await anz.poll(wait_fresh=True)
                got = frame_values(frame)
                assert [g[:2] + g[3:] for g in got] == [e[:2] + e[3:] for e in expected_values(n)]
                assert got[1:] == expected_values(n)[1:]
                assert anz.snapshot() is frame
                reading = await anz.read_channel(CONFIGS[n][-1][0])
                assert reading.value == CONFIGS[n][-1][2]
                async with anz.stream() as samples:
                    assert samples.mode is StreamMode.AUTOPRINT
                    batch = await collect(samples, 2 * n)
                assert [s.channel for s in batch] == [c[0] for c in CONFIGS[n]] * 2
                assert all(s.device == pty.path for s in batch)
                assert all(s.error is None for s in batch)
                assert anz.dropped_frames == 0
            tg.cancel_scope.cancel()


async def test_open_continuous_uses_device_label_and_no_identify(pty: PtyFeeder) -> None:
    with anyio.fail_after(5):
        anz = await open_continuous(pty.path, device="stack-1", frame_period=0.5)
        async with anz:
            assert anz.info is None
            await pty.write(make_frame(5))
            samples = await anz.poll_samples()
            assert [s.device for s in samples] == ["stack-1"] * 5
            assert samples[0].value == pytest.approx(20.378)
            assert (await anz.read_all()).keys() == {c[0] for c in CONFIGS[5]}


@pytest.mark.parametrize("name", ["idle", "live"])
async def test_real_capture_replayed_byte_by_byte(pty: PtyFeeder, name: str) -> None:
    capture = (DATA / f"continuous_4100_{name}_5ch.bin").read_bytes()
    expected = [decode_frame(raw) for raw in split_frames(capture)]
    assert len(expected) == 6
    with anyio.fail_after(20):
        anz = await open_continuous(pty.path)
        async with anz, anz.stream() as samples:
            for byte in capture:
                await pty.write(bytes([byte]))
                await anyio.lowlevel.checkpoint()
            got = await collect(samples, 30)
    frames = [got[i : i + 5] for i in range(0, 30, 5)]
    assert anz.dropped_frames == 0
    for exp, samples_of_frame in zip(expected, frames, strict=True):
        assert [s.reading.raw for s in samples_of_frame if s.reading] == [
            r.raw for r in exp.readings
        ]
        values = {s.channel: s.value for s in samples_of_frame}
        names = {s.channel: s.reading.name for s in samples_of_frame if s.reading}
        assert names == {
            ChannelId.I1: "Oxygen",
            ChannelId.I2: "CO",
            ChannelId.I3: "CO2",
            ChannelId.E1: None,
            ChannelId.E2: None,
        }
        assert values[ChannelId.I2] == 0.084
        assert values[ChannelId.E1] == values[ChannelId.E2] == 0.0
        if name == "idle":
            assert values[ChannelId.I1] == 20.376
            assert values[ChannelId.I3] == 0.250
        else:
            assert values[ChannelId.I1] in (20.378, 20.379)
            assert values[ChannelId.I3] == 0.247
    checksums = [f.raw[-5:-1].decode() for f in expected]
    documented = {
        "idle": ["2A1D", "2A1F", "2A21", "2A23", "2A1D", "2A1F"],
        "live": ["2A36", "2A29", "2A2C", "2A2E", "2A30", "2A32"],
    }
    assert checksums == documented[name]
    last = anz.snapshot()
    assert last.analyser.cal_groups == idle_cal_groups()
    assert not last.analyser.fault
    assert not last.analyser.maintenance


@ASYNCIO_ONLY  # 1 MiB through a real pty (~14 s); the backends' pty I/O is tested on both above
async def test_random_garbage_between_frames(pty: PtyFeeder) -> None:
    """1 MiB of random bytes between valid frames: every frame arrives, damage is counted,
    the splitter stays within its bound and the receiver never stops."""
    rng = random.Random(4)
    n_frames = 64
    junk_size = (1 << 20) // n_frames
    frames = [make_frame(5, term=b"\r\n", bump=i / 1000) for i in range(n_frames)]
    with anyio.fail_after(40):
        anz = await open_continuous(pty.path)
        async with anz:
            good: list[float | None] = []
            errors = 0
            peak_buffer = 0

            async def feed() -> None:
                for f in frames:
                    await pty.write(rng.randbytes(junk_size))
                    await pty.write(f)
                # A clean line at the end so the last frame is not glued to anything.
                await pty.write(b"\r\n")

            async with anyio.create_task_group() as tg, anz.stream() as samples:
                tg.start_soon(feed)
                async for sample in samples:
                    stats = continuous_stats(anz)
                    peak_buffer = max(peak_buffer, stats.buffered)
                    if sample.error is not None:
                        errors += 1
                        continue
                    if sample.channel is ChannelId.I1:
                        good.append(sample.value)
                        if len(good) == n_frames:
                            break
            assert good == [pytest.approx(20.378 + i / 1000) for i in range(n_frames)]
            stats = continuous_stats(anz)
            assert stats.running
            assert stats.frames_ok == n_frames
            assert anz.dropped_frames > 0
            assert errors == anz.dropped_frames
            assert stats.garbage_bytes + stats.bytes_received > 1 << 20
            assert peak_buffer <= MAX_SEGMENT
            assert stats.buffered <= MAX_SEGMENT
            # the loop is still alive: one more frame gets through

            async def one_more() -> None:
                await anyio.sleep(0.1)  # after poll() below has started waiting
                await pty.write(make_frame(3))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one_more)
                fresh = await anz.poll(wait_fresh=True, timeout=5)
            assert len(fresh.readings) == 3


async def test_tcp_device_server(pty: PtyFeeder) -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            for i in range(50):
                await stream.send(make_frame(7, term=b"\n", bump=i / 100))
                await anyio.sleep(0.02)

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            url = f"tcp://127.0.0.1:{port}"
            async with await open_device(url, protocol="continuous") as anz:
                assert anz.device == url
                assert anz.info is not None
                assert anz.info.serial_settings == SerialSettings(port=url)
                assert [c.channel for c in anz.info.channels] == [c[0] for c in CONFIGS[7]]
                frame = await anz.poll(wait_fresh=True)
                assert frame_values(frame)[1:] == expected_values(7)[1:]
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------- bad input


async def test_nonexistent_port_fails_within_a_second() -> None:
    start = time.monotonic()
    with pytest.raises(ServomexConnectionError) as info:
        await open_device("/dev/ttyNOSUCHPORT7", protocol="continuous")
    assert time.monotonic() - start < 1.0
    assert "could not open /dev/ttyNOSUCHPORT7" in str(info.value)
    assert info.value.context.port == "/dev/ttyNOSUCHPORT7"


async def test_silent_line_times_out_within_the_bound(pty: PtyFeeder) -> None:
    fds = open_fds()
    anz = await open_device(pty.path, protocol="continuous", timeout=0.2, frame_period=0.1)
    assert anz.client.first_frame_timeout == 0.2  # type: ignore[attr-defined]
    start = time.monotonic()
    with anyio.fail_after(5), pytest.raises(ServomexTimeoutError) as info:
        async with anz:
            pass
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.2
    assert info.value.message.startswith("no continuous frame within 0.2s")
    assert info.value.context.port == pty.path
    assert not anz.transport.is_open
    assert open_fds() == fds
    default = await open_device(pty.path, protocol="continuous")
    assert default.client.first_frame_timeout == 4.0  # type: ignore[attr-defined]
    await default.aclose()


async def test_unknown_channel_is_a_validation_error(pty: PtyFeeder) -> None:
    with anyio.fail_after(5):
        anz = await open_continuous(pty.path)
        with pytest.raises(ServomexValidationError, match="unknown channel"):
            await anz.read_channel("X9")  # rejected before I/O, even un-entered
        async with anz:
            await pty.write(make_frame(3))
            with pytest.raises(ServomexValidationError, match="unknown channel"):
                await anz.status("i1")
            with pytest.raises(ServomexValidationError, match="I2 is not in this frame"):
                await anz.read_channel(ChannelId.I2)


async def test_baud_outside_range_before_the_port_is_touched(
    pty: PtyFeeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = anyserial.open_serial_port

    async def spy(path: str, config: Any = None) -> Any:
        opened.append(path)
        return await real_open(path, config)

    monkeypatch.setattr(anyserial, "open_serial_port", spy)
    with pytest.raises(ServomexValidationError, match="outside"):
        SerialSettings(port=pty.path, baudrate=115200)
    tampered = SerialSettings(port=pty.path)
    object.__setattr__(tampered, "baudrate", 1200)
    with pytest.raises(ServomexValidationError, match="1200"):
        await open_device(pty.path, protocol="continuous", serial_settings=tampered)
    with pytest.raises(ServomexValidationError, match="1200"):
        await open_continuous(pty.path, serial_settings=tampered)
    assert opened == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"address": 0}, "address"),
        ({"address": 248}, "address"),
        ({"address": True}, "address"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"frame_period": 0}, "frame_period"),
        ({"protocol": "bogus"}, "protocol"),
        ({"protocol": 3}, "protocol"),
        ({"serial_settings": {"baudrate": 9600}}, "serial_settings"),
    ],
)
async def test_open_device_validates_before_io(
    pty: PtyFeeder, kwargs: dict[str, Any], match: str
) -> None:
    fds = open_fds()
    kwargs.setdefault("protocol", "continuous")
    with pytest.raises(ServomexValidationError, match=match):
        await open_device(pty.path, **kwargs)
    assert open_fds() == fds


async def test_bad_port_values() -> None:
    with pytest.raises(ServomexValidationError, match="scheme"):
        await open_device("gopher://x", protocol="continuous")
    with pytest.raises(ServomexValidationError):
        await open_device(123, protocol="continuous")  # type: ignore[arg-type]
    with pytest.raises(ServomexValidationError, match="timeout"):
        await open_continuous("/dev/null", timeout=0)


async def test_fifty_open_close_cycles_leave_nothing_behind(
    pty: PtyFeeder, anyio_backend: str
) -> None:
    async def tasks() -> int:
        if anyio_backend == "asyncio":
            import asyncio

            return len(asyncio.all_tasks())
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

        return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type]

    fds, n_tasks = open_fds(), await tasks()
    with anyio.fail_after(30):
        for i in range(50):
            anz = await open_device(pty.path, protocol="continuous", identify=False)
            async with anz:
                await pty.write(make_frame(3, bump=i / 1000))
                frame = await anz.poll(timeout=5)
                assert frame.readings[0].value == pytest.approx(20.378 + i / 1000)
                async with anz.stream():
                    pass
    await anyio.lowlevel.checkpoint()
    assert open_fds() == fds
    assert await tasks() == n_tasks


# ---------------------------------------------------------------------------- gates


async def test_calibration_refused_on_continuous_before_any_byte() -> None:
    fake = FakeTransport()
    anz = await open_continuous(fake)
    with pytest.raises(ServomexConfirmationRequiredError):
        await anz.start_calibration(7)
    with pytest.raises(ServomexConfirmationRequiredError):
        await anz.start_calibration(1)
    with pytest.raises(ServomexProtocolUnsupportedError):
        await anz.start_calibration(7, confirm=True)
    with pytest.raises(ServomexConfirmationRequiredError):
        await anz.stop_calibration()
    with pytest.raises(ServomexProtocolUnsupportedError):
        await anz.stop_calibration(confirm=True)
    with pytest.raises(ServomexProtocolUnsupportedError):
        await anz.calibration_status(9)
    with pytest.raises(ServomexProtocolUnsupportedError):
        await anz.loopback(b"\xab\xcd")
    async with anz:
        with pytest.raises(ServomexProtocolUnsupportedError) as info:
            await anz.start_calibration(1, confirm=True)
    assert info.value.context.protocol is ProtocolKind.CONTINUOUS_ASCII
    assert fake.writes == []
    assert anz.read_planner is None


async def test_continuous_operations_need_the_session() -> None:
    anz = await open_continuous(FakeTransport())
    for call in (anz.poll(), anz.identify(), anz.analyser_status(), anz.read_channel("I1")):
        with pytest.raises(ServomexConnectionError, match="analyser not started"):
            await call
    with pytest.raises(ServomexConnectionError, match="analyser not started"):
        anz.stream()
    with pytest.raises(ServomexValidationError, match="no frame cached yet"):
        anz.snapshot()
    await anz.aclose()


async def test_stream_modes_and_session_lifecycle() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with await open_continuous(fake) as anz:
            with pytest.raises(ServomexValidationError):
                anz.stream(mode=StreamMode.POLL)
            with pytest.raises(ServomexValidationError):
                anz.stream(mode="sideways")
            first = anz.stream(mode="autoprint", rate_hz=123)  # rate ignored
            second = anz.stream()
            assert continuous_stats(anz).subscribers == 2
            fake.feed(make_frame(3) + b"junk\n")
            a = await collect(first, 4)
            b = await collect(second, 4)
            assert [s.value for s in a] == [s.value for s in b] == [20.378, 4.0, 0.0, None]
            assert isinstance(a[3].error, ServomexProtocolUnsupportedError | Exception)
            await first.aclose()
            await first.aclose()
            assert first.closed
            assert continuous_stats(anz).subscribers == 1
            assert [s async for s in first] == []
            live = anz.stream()
        # exiting the Analyzer ends every stream
        assert [s async for s in live] == []
        await live.aclose()
        await second.aclose()
    assert anz.dropped_frames == 1


async def test_identify_is_served_from_cache_until_refresh() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with await open_continuous(fake) as anz:
            fake.feed(make_frame(3))
            info = await anz.identify()
            assert anz.info is info
            assert [c.channel for c in info.channels] == [ChannelId.I1, ChannelId.E1, ChannelId.E2]
            fake.feed(make_frame(5))  # the analyser now broadcasts five channels
            await anyio.wait_all_tasks_blocked()  # the receiver has decoded it
            assert continuous_stats(anz).frames_ok == 2
            assert len((await anz.poll()).readings) == 5
            assert await anz.identify() is info  # cached: the old three channels
            fresh = await anz.identify(refresh=True)
            assert [c.channel for c in fresh.channels] == [c[0] for c in CONFIGS[5]]
            assert anz.info is fresh
            assert await anz.identify() is fresh
    assert await anz.identify() is fresh  # no I/O, so it still answers after the session


async def test_error_sample_carries_the_error() -> None:
    fake = FakeTransport()
    with anyio.fail_after(5):
        async with await open_continuous(fake, device="d") as anz, anz.stream() as samples:
            good = make_frame(3)
            fake.feed(good[:-7] + b"FFFF;\r\n")
            (sample,) = await collect(samples, 1)
    assert sample.channel is None
    assert sample.reading is None
    assert sample.device == "d"
    assert isinstance(sample.error, ServomexChecksumError)
    assert sample.value is None


async def test_exit_closes_transport_even_if_identify_fails() -> None:
    fake = FakeTransport()
    anz = await open_device(fake, protocol="continuous", timeout=0.05, frame_period=0.01)
    with anyio.fail_after(5), pytest.raises(ServomexTimeoutError):
        async with anz:
            pass
    assert not fake.is_open
    with pytest.raises(ServomexValidationError):
        async with anz:
            pass


# ---------------------------------------------------------------------------- Modbus delegation


@dataclasses.dataclass
class StubModbusClient:
    """Just enough of a Modbus client to check the Analyzer's gates and delegation."""

    transport: FakeTransport
    protocol: ProtocolKind = ProtocolKind.MODBUS_RTU
    capabilities: Any = MODBUS_CAPABILITIES
    address: int = 30
    read_planner: object = dataclasses.field(default_factory=object)
    calls: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    polls: int = 0
    fail_after_polls: int | None = None

    async def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        self.polls += 1
        if self.fail_after_polls is not None and self.polls > self.fail_after_polls:
            raise ServomexConnectionError("line gone", context=None)
        raw = make_frame(3, bump=self.polls / 1000)
        frame = decode_frame(raw)
        return dataclasses.replace(frame, protocol=ProtocolKind.MODBUS_RTU)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self.calls.append(("start", None))

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def start_calibration(self, group: int, *, timeout: float | None = None) -> None:
        self.calls.append(("start_calibration", group))

    async def stop_calibration(self, *, timeout: float | None = None) -> None:
        self.calls.append(("stop_calibration", timeout))

    async def calibration_status(
        self, group: int, *, timeout: float | None = None
    ) -> CalibrationProgress:
        from servomexlib.devices.models import CalPhase

        self.calls.append(("calibration_status", group))
        return CalibrationProgress(group, False, CalPhase.IDLE)

    async def loopback(self, payload: bytes, *, timeout: float | None = None) -> bytes:
        self.calls.append(("loopback", payload))
        return payload


async def test_modbus_gates_and_unentered_use() -> None:
    stub = StubModbusClient(FakeTransport())
    anz = Analyzer(stub)  # type: ignore[arg-type]
    assert anz.device == "fake://test"
    assert anz.dropped_frames == 0
    assert anz.read_planner is stub.read_planner
    with pytest.raises(ServomexConfirmationRequiredError):
        await anz.start_calibration(7)
    with pytest.raises(ServomexValidationError, match="1-4"):
        await anz.start_calibration(7, confirm=True)
    with pytest.raises(ServomexValidationError):
        await anz.calibration_status(0)
    with pytest.raises(ServomexValidationError, match="2 bytes"):
        await anz.loopback(b"\x00")
    with pytest.raises(ServomexValidationError, match="timeout"):
        await anz.stop_calibration(confirm=True, timeout=-1)
    assert stub.calls == []
    await anz.start_calibration(2, confirm=True)
    await anz.stop_calibration(confirm=True, timeout=0.5)
    assert (await anz.calibration_status(3)).group == 3
    assert await anz.loopback(b"\xab\xcd") == b"\xab\xcd"
    assert stub.calls == [
        ("start_calibration", 2),
        ("stop_calibration", 0.5),
        ("calibration_status", 3),
        ("loopback", b"\xab\xcd"),
    ]
    with pytest.raises(ServomexValidationError, match="POLL"):
        anz.stream(mode="autoprint")
    with pytest.raises(ServomexValidationError, match="rate_hz"):
        anz.stream(rate_hz=0)
    with pytest.raises(ServomexValidationError, match="no frame cached yet"):
        anz.snapshot()
    await anz.aclose()
    assert not stub.transport.is_open


async def test_modbus_entered_session_closes_transport() -> None:
    stub = StubModbusClient(FakeTransport())
    async with Analyzer(stub, device="m1") as anz:  # type: ignore[arg-type]
        assert anz.device == "m1"
        # A Modbus Analyzer owns no task group, so there is nothing to start (api.md §5).
        assert stub.calls == []
    assert not stub.transport.is_open


async def test_modbus_session_is_entered_in_one_task_and_closed_in_another() -> None:
    stub = StubModbusClient(FakeTransport())
    anz = Analyzer(stub, device="m2")  # type: ignore[arg-type]
    stack = AsyncExitStack()

    async def enter(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        await stack.enter_async_context(anz)  # entered in this child task, which then ends
        task_status.started()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(enter)
        assert (await anz.poll()).readings  # usable from the parent task
        await stack.aclose()  # closed by the parent: no "cancel scope in a different task"
    assert not stub.transport.is_open
    with anyio.move_on_after(0.01) as scope:  # the parent's cancel scopes still work
        await anyio.sleep(1)
    assert scope.cancelled_caught


async def test_modbus_poll_stream_runs_record_in_the_session() -> None:
    stub = StubModbusClient(FakeTransport())
    anz = Analyzer(stub, device="m")  # type: ignore[arg-type]
    session = anz.stream(rate_hz=50)
    assert session.mode is StreamMode.POLL
    with pytest.raises(ServomexValidationError, match="enter"):
        await session.__anext__()
    with anyio.fail_after(5):
        async with session as samples:
            got = await collect(samples, 6)
        assert [s.channel for s in got] == [ChannelId.I1, ChannelId.E1, ChannelId.E2] * 2
        assert [s.device for s in got] == ["m"] * 6
        assert got[0].value == pytest.approx(20.379)
        assert got[3].value == pytest.approx(20.380)
        polls = stub.polls
        await anyio.sleep(0.1)
        assert stub.polls == polls  # closing the session cancelled the producer
    assert [s async for s in session] == []
    await anz.aclose()


async def test_modbus_poll_stream_reraises_the_producer_error() -> None:
    stub = StubModbusClient(FakeTransport(), fail_after_polls=1)
    anz = Analyzer(stub)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        async with anz.stream(rate_hz=100) as samples:
            got: list[Sample] = []

            async def drain() -> None:
                async for sample in samples:
                    got.append(sample)

            with pytest.raises(ServomexConnectionError, match="line gone"):
                await drain()
    assert len(got) == 3
    await anz.aclose()


# ---------------------------------------------------------------------------- simulator driven

SIM_CHANNELS: dict[int, list[tuple[str, str | None, str | None, float]]] = {
    3: [("I1", "Oxygen", "%", 20.95), ("E1", None, None, 4.0), ("E2", None, None, 12.5)],
    5: [
        ("I1", "Oxygen", "%", 20.378),
        ("I2", "CO", "%", 0.084),
        ("I3", "CO2", "%", 0.25),
        ("E1", None, None, 0.0),
        ("E2", None, None, 0.0),
    ],
    7: [
        ("I1", "Oxygen", "%", 20.95),
        ("I2", "CO", "vpm", 120.0),
        ("I3", "CO2", "%", 1.875),
        ("I4", None, "%", 0.5),
        ("D1", "O2dry", "%", 21.1),
        ("E1", "Flow", "mA", 7.5),
        ("E2", None, None, 20.0),
    ],
}
_UNIT_OF = {"%": Unit.PERCENT, "vpm": Unit.VPM, "mA": Unit.MILLIAMP, None: None}
_TERMS = {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r"}


def sim_expected(n: int) -> list[tuple[ChannelId, str | None, float, Unit]]:
    out = []
    for ch, name, unit, value in SIM_CHANNELS[n]:
        default = Unit.MILLIAMP if ch.startswith("E") else Unit.PERCENT
        out.append((ChannelId(ch), name, value, _UNIT_OF[unit] or default))
    return out


def sim_url(n: int, term: str, period: float) -> str:
    from urllib.parse import quote

    chans = SIM_CHANNELS[n]
    return (
        "sim://?mode=continuous"
        f"&channels={','.join(c[0] for c in chans)}"
        f"&names={quote(','.join(c[1] or '' for c in chans))}"
        f"&units={quote(','.join(c[2] or '' for c in chans))}"
        f"&values={','.join(str(c[3]) for c in chans)}"
        f"&period={period}&terminator={term}&realtime=0"
    )


@asynccontextmanager
async def simulated_port(n: int, term: str, via: str, period: float) -> AsyncIterator[str]:
    """A port string reaching a continuous simulator of configuration ``n``."""
    if via == "sim":
        yield sim_url(n, term, period)
        return
    from servomexlib.sim import SimChannel, Simulator

    channels = [
        SimChannel(ChannelId(ch), name=name, unit=unit, value=value)
        for ch, name, unit, value in SIM_CHANNELS[n]
    ]
    # Character pacing stays on for one configuration (a 7-block frame takes ~140 ms at
    # 19200 baud); the others run unpaced to keep the matrix fast.
    sim = Simulator(
        mode="continuous",
        channels=channels,
        frame_period=period,
        terminator=_TERMS[term],
        realtime=(n == 5),
    )
    if via == "pty":
        async with served_on_pty(sim) as (_, path):
            yield path
    else:
        async with sim:
            host, port = await sim.serve_tcp()
            yield f"tcp://{host}:{port}"


@pytest.mark.parametrize("via", ["pty", "tcp", "sim"])
@pytest.mark.parametrize("term", ["crlf", "lf", "cr"])
@pytest.mark.parametrize("n", [3, 5, 7])
async def test_simulator_identify_poll_stream(n: int, term: str, via: str) -> None:
    expected = sim_expected(n)
    with anyio.fail_after(15):
        async with simulated_port(n, term, via, period=0.05) as port:
            anz = await open_device(port, protocol=ProtocolKind.CONTINUOUS_ASCII, frame_period=0.05)
            async with anz:
                assert anz.info is not None
                assert [(c.channel, c.name, c.unit) for c in anz.info.channels] == [
                    (ch, name, unit) for ch, name, _, unit in expected
                ]
                assert anz.info.address == 0
                if via == "pty":
                    assert anz.info.serial_settings == SerialSettings(port=port)
                else:
                    assert anz.info.serial_settings.baudrate == 19200
                frame = await anz.poll(wait_fresh=True)
                assert frame_values(frame) == expected
                assert frame.raw.startswith(b" ")
                async with anz.stream() as samples:
                    got = await collect(samples, 2 * n)
                assert [(s.channel, s.value) for s in got] == [(e[0], e[2]) for e in expected] * 2
                assert anz.dropped_frames == 0


async def test_simulator_value_changes_reach_the_stream() -> None:
    from servomexlib.sim import Simulator

    sim = Simulator(mode="continuous", frame_period=0.05)
    with anyio.fail_after(10):
        async with (
            served_on_pty(sim) as (_, port),
            await open_continuous(port, frame_period=0.05) as anz,
        ):
            await anz.poll()
            sim.set_value("I1", 12.345)
            sim.set_value("I2", None)  # over-range → None
            async with anz.stream() as samples:
                async for sample in samples:
                    if sample.channel is ChannelId.I1 and sample.value == 12.345:
                        break
                frame = await anz.poll(wait_fresh=True)
            assert frame.channel("I1").value == 12.345
            assert frame.channel("I2").value is None
