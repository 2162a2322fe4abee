"""AUTO detection (protocol.md §8): RTU, ASCII and continuous told apart; nothing → error.

The tests over a FakeTransport or an in-process simulator are marked ``virtual_time``
(tests/conftest.py): AUTO's probe and listen windows run on the loop's clock, so their bounds
are checked on that clock, exactly, at no wall-time cost. The pty and pymodbus (TCP, a thread)
tests run on real time; the long AUTO-over-a-pty ones on asyncio only.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anyio
import pytest
from anymodbus import Framing
from anymodbus.framing import get_framer
from anymodbus.pdu import encode_exception_response

from _modbus_server import ModbusTestServer
from helpers import ASYNCIO_ONLY, PtyFeeder, served_on_pty
from servomexlib.clients.detect import detect_protocol
from servomexlib.devices.models import ProtocolKind
from servomexlib.errors import ServomexConnectionError, ServomexValidationError
from servomexlib.transport.fake import FakeTransport
from servomexlib.transport.tcp import TcpTransport
from servomexlib.transport.timed import TimedReader
from servomexlib.wire.continuous import split_frames

pytestmark = pytest.mark.anyio


RTU_PROBE = bytes.fromhex("01 08 00 00 AB CD 5E AE")
ASCII_PROBE = b":01080000ABCD7F\r\n"


@pytest.mark.parametrize(
    ("framing", "expected"),
    [
        ("rtu", ProtocolKind.MODBUS_RTU),
        ("ascii", ProtocolKind.MODBUS_ASCII),
    ],
)
@pytest.mark.parametrize("address", [1, 30])
async def test_detects_modbus_against_pymodbus(
    framing: str, expected: ProtocolKind, address: int
) -> None:
    with ModbusTestServer(framing=framing, addresses=(address,)) as server:
        transport = await TcpTransport.open("127.0.0.1", server.port)
        try:
            with anyio.fail_after(20):
                found = await detect_protocol(transport, address=address, probe_timeout=0.1)
        finally:
            await transport.aclose()
    assert found is expected
    probes = [r.adu for r in server.received]
    assert all(b"\x08\x00\x00\xab\xcd" in p or b"080000ABCD" in p for p in probes)
    if expected is ProtocolKind.MODBUS_RTU:
        assert len(probes) == 1  # the first probe answered
    else:
        # RTU probes (2 tries × 3 attempts) went unanswered, then one ASCII probe.
        assert probes[-1].startswith(b":")
        assert probes[-1] == get_framer(Framing.ASCII).encode_adu(
            slave_address=address, pdu=b"\x08\x00\x00\xab\xcd"
        )


@pytest.mark.virtual_time
async def test_rtu_exception_reply_counts() -> None:
    fake = FakeTransport(
        {
            RTU_PROBE: get_framer(Framing.RTU).encode_adu(
                slave_address=1, pdu=encode_exception_response(8, 1)
            )
        }
    )
    with anyio.fail_after(10):
        assert await detect_protocol(fake, probe_timeout=0.1) is ProtocolKind.MODBUS_RTU
    assert fake.writes == [RTU_PROBE]


@pytest.mark.virtual_time
async def test_ascii_after_rtu_fails() -> None:
    fake = FakeTransport({ASCII_PROBE: ASCII_PROBE})
    fake.pushback(b"parked bytes")
    with anyio.fail_after(10):
        assert await detect_protocol(fake, probe_timeout=0.1) is ProtocolKind.MODBUS_ASCII
    assert fake.writes == [RTU_PROBE] * 6 + [ASCII_PROBE]


@pytest.mark.virtual_time
async def test_continuous_frame_is_pushed_back(data_dir: Path) -> None:
    capture = (data_dir / "continuous_4100_idle_5ch.bin").read_bytes()
    frames = [f + b"\n" for f in split_frames(capture)]
    fake = FakeTransport()
    # Half a frame is on the line already; whole frames follow every 0.3 s while AUTO runs.
    fake.feed(frames[0][40:])

    async def broadcast() -> None:
        for frame in itertools.cycle(frames[1:]):
            await anyio.sleep(0.3)
            fake.feed(frame)

    started = anyio.current_time()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(broadcast)
            found = await detect_protocol(
                fake, listen_timeout=0.5, frame_period=1.0, probe_timeout=0.1
            )
            # The recognised frame comes back first, whole, terminator included.
            head = await TimedReader(fake).read_until(b"\n", timeout=1)
            tg.cancel_scope.cancel()
    assert found is ProtocolKind.CONTINUOUS_ASCII
    assert head in frames[1:]
    assert anyio.current_time() - started < 2 * 1.0 + 3
    # The Modbus probes went first; the frame that arrived while the RTU probe ran ended the
    # ladder at once (the probes' bytes are sniffed), so no ASCII probe was needed.
    assert fake.writes
    assert set(fake.writes) == {RTU_PROBE}


@pytest.mark.virtual_time
async def test_frame_period_widens_the_listen_window(data_dir: Path) -> None:
    capture = (data_dir / "continuous_4100_idle_5ch.bin").read_bytes()
    frame = split_frames(capture)[0] + b"\r\n"
    fake = FakeTransport()

    async def late_frame() -> None:
        await anyio.sleep(0.8 + 1.4)  # after the probes (~1.4 s) and past listen_timeout
        fake.feed(frame)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(late_frame)
            found = await detect_protocol(
                fake, listen_timeout=0.2, frame_frequency=0.6, probe_timeout=0.1
            )
    assert found is ProtocolKind.CONTINUOUS_ASCII
    assert fake.pending == len(frame)


@pytest.mark.virtual_time
async def test_silent_line_raises_connection_error() -> None:
    fake = FakeTransport(label="fake://silent")
    started = anyio.current_time()
    with anyio.fail_after(20), pytest.raises(ServomexConnectionError) as info:
        await detect_protocol(fake, address=30, listen_timeout=0.3, probe_timeout=0.1)
    elapsed = anyio.current_time() - started
    assert elapsed < 2 * 2 * 3 * (0.1 + 0.11) + 0.3 + 1.0
    err = info.value
    assert str(err).startswith("no recognised protocol on fake://silent")
    assert err.context.port == "fake://silent"
    assert err.context.address == 30
    assert err.context.protocol is ProtocolKind.AUTO
    assert fake.is_open  # AUTO never closes the transport


@pytest.mark.virtual_time
async def test_garbage_is_not_a_frame() -> None:
    fake = FakeTransport()
    fake.feed(b" not a frame;\n:0102\r\n" + b"\x00\xff" * 50 + b"\n")
    with anyio.fail_after(20), pytest.raises(ServomexConnectionError):
        await detect_protocol(fake, listen_timeout=0.3, probe_timeout=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": 0},
        {"address": 248},
        {"probe_timeout": 0},
        {"probe_tries": 0},
        {"listen_timeout": -1.0},
        {"frame_period": 0.0},
        {"frame_period": 1.0, "frame_frequency": 2.0},
    ],
)
async def test_validation_before_io(kwargs: dict[str, float]) -> None:
    fake = FakeTransport()
    with pytest.raises(ServomexValidationError):
        await detect_protocol(fake, **kwargs)  # type: ignore[arg-type]
    assert fake.writes == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("modbus_rtu", ProtocolKind.MODBUS_RTU),
        ("modbus_ascii", ProtocolKind.MODBUS_ASCII),
        ("continuous", ProtocolKind.CONTINUOUS_ASCII),
    ],
)
@pytest.mark.virtual_time  # the in-process line follows the loop's clock
async def test_detects_each_simulator_mode(mode: str, expected: ProtocolKind) -> None:
    sim = pytest.importorskip("servomexlib.sim")
    from servomexlib.transport.sim import SimTransport

    url = f"sim://?mode={mode}&address=30&period=0.5"
    conn = sim.connect_url(url)
    transport = SimTransport(conn.stream, label=url, serial_settings=conn.serial_settings)
    started = anyio.current_time()
    try:
        with anyio.fail_after(20):
            found = await detect_protocol(
                transport, address=30, probe_timeout=0.2, listen_timeout=0.5, frame_period=0.5
            )
            assert found is expected
            assert anyio.current_time() - started < 2 * 0.5 + 3 + 2  # ladder bound + probe time
            if expected is ProtocolKind.CONTINUOUS_ASCII:
                frame = await TimedReader(transport).read_until(b"\n", timeout=2)
                assert frame.startswith(b" ")
                assert split_frames(frame) == [frame.rstrip(b"\r\n")]
    finally:
        await transport.aclose()


# --- the AUTO bound (issue 5): each mode within 2 × frame_period + 3 s ------------------------


@pytest.mark.parametrize(
    ("mode", "address"),
    [
        (ProtocolKind.MODBUS_RTU, 1),
        (ProtocolKind.MODBUS_ASCII, 30),
        (ProtocolKind.CONTINUOUS_ASCII, 1),
    ],
)
@ASYNCIO_ONLY  # seconds of real probing over a pty; pty I/O on both: test_transport_serial.py
async def test_open_device_auto_over_a_pty_within_the_bound(
    mode: ProtocolKind, address: int
) -> None:
    """``open_device(protocol="auto")`` on a realtime simulator behind a real pty, with the
    library defaults (probe 0.5 s, 2 tries): found and identified within 2 × period + 3 s."""
    from servomexlib.devices.factory import open_device
    from servomexlib.sim import Simulator

    period = 2.0  # the simulator's and the library's default broadcast period
    sim = Simulator(mode=mode, address=address, frame_period=period)
    async with served_on_pty(sim) as (_, path):
        # Join the line mid-broadcast, as a real host would: the next whole frame is up to one
        # period away.
        await anyio.sleep(0.7)
        started = time.monotonic()
        with anyio.fail_after(20):
            anz = await open_device(path, protocol="auto", address=address)
            elapsed = time.monotonic() - started
            async with anz:
                assert anz.protocol is mode
                assert anz.info is not None
                assert [c.channel.value for c in anz.info.channels] == [
                    "I1",
                    "I2",
                    "I3",
                    "E1",
                    "E2",
                ]
                assert anz.info.channels[0].name == "Oxygen"
                frame = await anz.poll()
                assert frame.channel("I1").value == pytest.approx(20.378, abs=1e-6)
    assert elapsed < 2 * period + 3
    if mode is ProtocolKind.MODBUS_RTU:
        assert elapsed < 1.0  # the first probe is answered
    if mode is ProtocolKind.CONTINUOUS_ASCII:
        # Seen by the sniffer while the RTU probe ran: within one period (+ frame time).
        assert elapsed < period + 0.6


async def test_continuous_found_during_the_probes_not_after_them() -> None:
    """A broadcaster is recognised while the RTU probe is still running (well before the
    ≈ 6.6 s the two Modbus probes would take), and the recognised frame is not lost."""
    from servomexlib.settings import SerialSettings
    from servomexlib.sim import Simulator
    from servomexlib.transport.serial import SerialTransport

    sim = Simulator(mode="continuous", frame_period=0.5, realtime=True)
    async with served_on_pty(sim) as (_, path):
        transport = await SerialTransport.open(SerialSettings(port=path))
        try:
            started = time.monotonic()
            with anyio.fail_after(20):
                found = await detect_protocol(transport)  # library defaults
                elapsed = time.monotonic() - started
                head = await TimedReader(transport).read_until(b"\n", timeout=2)
        finally:
            await transport.aclose()
    assert found is ProtocolKind.CONTINUOUS_ASCII
    assert elapsed < 0.5 + 0.6
    assert split_frames(head) == [head.rstrip(b"\r\n")]
    assert head.startswith(b" ")
    assert sim.requests == ()  # the continuous analyser ignores Modbus requests


async def test_silent_pty_raises_connection_error_naming_what_was_tried() -> None:
    from servomexlib.settings import SerialSettings
    from servomexlib.transport.serial import SerialTransport

    silent = PtyFeeder(hold_slave=True)  # nothing is ever written into it
    try:
        transport = await SerialTransport.open(SerialSettings(port=silent.path))
        started = time.monotonic()
        try:
            with anyio.fail_after(20), pytest.raises(ServomexConnectionError) as info:
                await detect_protocol(transport, probe_timeout=0.1, listen_timeout=0.4)
        finally:
            await transport.aclose()
    finally:
        silent.close()
    elapsed = time.monotonic() - started
    # 2 framings × 2 tries × 3 attempts × (0.1 s + silence/late-reply window) + 0.4 s listen.
    assert 0.4 < elapsed < 2 * 2 * 3 * (0.1 + 0.11) + 0.4 + 1.0
    err = info.value
    assert str(err).startswith(f"no recognised protocol on {silent.path}")
    assert err.context.extra["tried"] == "modbus_rtu,modbus_ascii,continuous"
