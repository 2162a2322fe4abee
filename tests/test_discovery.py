"""Discovery (api.md §14): discover_port, find_devices, summarize against simulators and ptys."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyserial
import pytest
from anymodbus.crc import crc16_modbus_bytes
from anyserial.exceptions import UnsupportedPlatformError

from helpers import ASYNCIO_ONLY
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.discovery import (
    DiscoveryResult,
    DiscoverySummary,
    discover_port,
    find_devices,
    summarize,
)
from servomexlib.errors import (
    ServomexConfigurationError,
    ServomexConnectionError,
    ServomexModbusError,
    ServomexValidationError,
)
from servomexlib.settings import SerialSettings
from servomexlib.sim import Simulator
from servomexlib.transport.listing import SerialPortInfo, list_serial_ports
from servomexlib.transport.serial import SerialTransport
from servomexlib.transport.timed import TimedReader
from servomexlib.units import Unit

pytestmark = pytest.mark.anyio

CHANNELS = [ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.E1, ChannelId.E2]


@asynccontextmanager
async def silent_pty() -> AsyncIterator[str]:
    """A pseudo-terminal nobody writes to."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


async def assert_released(path: str) -> None:
    """The port was closed: an exclusive open succeeds."""
    transport = await SerialTransport.open(SerialSettings(port=path, exclusive=True))
    await transport.aclose()


@ASYNCIO_ONLY  # ~12 s of real probing over four ptys; pty I/O on both: test_transport_serial.py
async def test_find_devices_in_all_three_modes_and_a_silent_pty() -> None:
    async with (
        Simulator(mode="modbus_rtu", address=30) as rtu,
        Simulator(mode="modbus_ascii", address=30) as ascii_,
        Simulator(mode="continuous", frame_period=0.5) as cont,
        silent_pty() as silent,
    ):
        ports = [await rtu.serve_pty(), await ascii_.serve_pty(), await cont.serve_pty(), silent]
        started = time.monotonic()
        with anyio.fail_after(40):
            results = await find_devices(ports, address=30, timeout=0.3, frame_period=0.5)
        elapsed = time.monotonic() - started
        for path in ports:
            await assert_released(path)  # every port opened here was closed again

    assert [r.port for r in results] == ports
    assert [r.protocol for r in results] == [
        ProtocolKind.MODBUS_RTU,
        ProtocolKind.MODBUS_ASCII,
        ProtocolKind.CONTINUOUS_ASCII,
        None,
    ]
    assert [r.ok for r in results] == [True, True, True, False]
    assert [r.is_broadcaster for r in results] == [False, False, True, False]
    for r in results[:3]:
        assert r.error is None
        assert r.info is not None
        assert [c.channel for c in r.info.channels] == CHANNELS
        co2 = "CO2" if r.is_broadcaster else "CO₂"  # continuous names are ASCII
        assert [c.name for c in r.info.channels] == ["Oxygen", "CO", co2, None, None]
        assert r.info.channels[3].unit is Unit.MILLIAMP
        assert r.info.serial_settings.port == r.port
    assert [r.info.address for r in results[:3] if r.info is not None] == [30, 30, 0]

    failed = results[3]
    assert failed.info is None
    assert isinstance(failed.error, ServomexConnectionError)
    assert str(failed.error).startswith(f"no recognised protocol on {silent}")

    # Read-only: the Modbus analysers saw loopback probes and register reads, no coil write.
    for sim in (rtu, ascii_):
        assert sim.coil_log == ()
        codes = {
            r.adu[1] if sim.mode is ProtocolKind.MODBUS_RTU else int(r.adu[3:5], 16)
            for r in sim.requests
        }
        assert codes == {0x08, 0x04}
    # Sequential, each within its own AUTO bound (silent: ≈ 6.6 s of probes + 1 s listening).
    assert elapsed < 30

    summary = summarize(results)
    assert isinstance(summary, DiscoverySummary)
    assert summary.found == tuple(results[:3])
    assert summary.failed == (failed,)
    assert summary.total == 4


async def test_a_borrowed_transport_is_left_open() -> None:
    sim = Simulator(mode="modbus_rtu", address=7, realtime=False)
    transport = sim.transport()
    try:
        with anyio.fail_after(20):
            result = await discover_port(transport, address=7, timeout=0.2)
        assert result.ok
        assert result.port == transport.label
        assert result.protocol is ProtocolKind.MODBUS_RTU
        assert transport.is_open
        # Still usable by the caller afterwards.
        request = bytes.fromhex("07 08 00 00 AB CD")
        request += crc16_modbus_bytes(request)
        await transport.send(request)
        with anyio.fail_after(5):
            assert await TimedReader(transport).read_exact(len(request), timeout=2) == request
    finally:
        await transport.aclose()


async def test_a_borrowed_continuous_transport_is_left_open() -> None:
    sim = Simulator(mode="continuous", frame_period=0.1, realtime=False)
    transport = sim.transport()
    try:
        with anyio.fail_after(20):
            result = await discover_port(transport, timeout=0.2, frame_period=0.1)
            assert result.ok
            assert result.is_broadcaster
            assert result.info is not None
            assert [c.channel for c in result.info.channels] == CHANNELS
            assert transport.is_open
            # The receiver stopped with discovery: the caller reads the line itself again.
            line = await TimedReader(transport).read_until(b"\n", timeout=2)
        assert line.endswith(b"\n")
    finally:
        await transport.aclose()


async def test_identify_failure_keeps_the_protocol_and_stores_the_error() -> None:
    sim = Simulator(mode="modbus_rtu", realtime=False)
    sim.refuse(0x04, exception=0x04)  # FC08 answered, FC04 fails (device failure)
    transport = sim.transport()
    try:
        with anyio.fail_after(20):
            result = await discover_port(transport, timeout=0.2)
    finally:
        await transport.aclose()
    assert result.protocol is ProtocolKind.MODBUS_RTU
    assert result.info is None
    assert isinstance(result.error, ServomexModbusError)
    assert result.error.context.extra["exception_code"] == 4
    assert not result.ok
    assert summarize([result]).failed == (result,)


@pytest.mark.parametrize(
    ("port", "kwargs", "error"),
    [
        ("bogus://x", {}, ServomexValidationError),
        ("/dev/servomexlib-does-not-exist", {}, ServomexConnectionError),
        ("sim://?mode=modbus_rtu", {"address": 0}, ServomexValidationError),
        ("sim://?mode=modbus_rtu", {"timeout": -1.0}, ServomexValidationError),
        ("sim://?mode=modbus_rtu", {"frame_period": 0}, ServomexValidationError),
    ],
)
async def test_errors_are_stored_not_raised(
    port: str, kwargs: dict[str, float], error: type[Exception]
) -> None:
    with anyio.fail_after(10):
        result = await discover_port(port, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, DiscoveryResult)
    assert isinstance(result.error, error)
    assert result.protocol is None
    assert result.info is None
    assert not result.ok
    assert not result.is_broadcaster


async def test_sim_url_port_and_empty_summary() -> None:
    with anyio.fail_after(10):
        (result,) = await find_devices(["sim://?mode=modbus_rtu&address=12&realtime=0"], address=12)
    assert result.ok
    assert result.info is not None
    assert result.info.address == 12
    empty = summarize([])
    assert (empty.found, empty.failed, empty.total) == ((), (), 0)


async def test_a_modbus_result_carries_its_address() -> None:
    with anyio.fail_after(10):
        (result,) = await find_devices(["sim://?mode=modbus_rtu&address=12&realtime=0"], address=12)
    assert result.address == 12
    assert result.hint is None


async def test_find_devices_with_addresses_scans_each_port() -> None:
    ports = ["sim://?address=1,3&realtime=0", "sim://?mode=continuous&period=0.1&realtime=0"]
    with anyio.fail_after(30):
        results = await find_devices(ports, addresses="1-3", timeout=0.2, frame_period=0.1)
    assert [(r.port, r.protocol, r.address, r.ok) for r in results] == [
        (ports[0], ProtocolKind.MODBUS_RTU, 1, True),
        (ports[0], ProtocolKind.MODBUS_RTU, 3, True),
        (ports[1], ProtocolKind.CONTINUOUS_ASCII, None, True),
    ]


# ---------------------------------------------------------------------------- port listing


def _port_info(device: str, **kw: object) -> anyserial.PortInfo:
    return anyserial.PortInfo(device=device, **kw)  # type: ignore[arg-type]


async def test_the_port_listing_adds_by_id_names_and_usb_ids(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "ttyUSB0").touch()
    (dev / "ttyS0").touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    link = by_id / "usb-FTDI_FT232R_USB_UART_A12345-if00-port0"
    link.symlink_to(dev / "ttyUSB0")

    async def enumerate_ports() -> list[anyserial.PortInfo]:
        return [
            _port_info(str(dev / "ttyUSB0"), vid=0x0403, pid=0x6001, product="FT232R USB UART"),
            _port_info(str(dev / "ttyS0")),
            _port_info("/dev/ttyACM0", vid=0x2341, pid=0x43, manufacturer="Arduino", product="Uno"),
        ]

    ports = await list_serial_ports(enumerate_ports=enumerate_ports, by_id_dir=by_id)
    assert [p.path for p in ports] == sorted(
        ["/dev/ttyACM0", str(dev / "ttyUSB0"), str(dev / "ttyS0")]
    )
    by_path = {p.path: p for p in ports}
    usb = by_path[str(dev / "ttyUSB0")]
    assert (usb.description, usb.usb_id, usb.by_id) == ("FT232R USB UART", "0403:6001", str(link))
    plain = by_path[str(dev / "ttyS0")]
    assert (plain.description, plain.usb_id, plain.by_id) == (None, None, None)
    assert by_path["/dev/ttyACM0"].description == "Arduino Uno"
    assert by_path["/dev/ttyACM0"].usb_id == "2341:0043"
    # No by-id directory (no adapter plugged in, or not Linux): no aliases, no error.
    ports = await list_serial_ports(enumerate_ports=enumerate_ports, by_id_dir=tmp_path / "none")
    assert all(p.by_id is None for p in ports)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (UnsupportedPlatformError("no discovery on plan9"), ServomexConfigurationError),
        (PermissionError(13, "Permission denied"), ServomexConnectionError),
    ],
)
async def test_a_failed_port_listing_is_a_servomex_error(
    failure: Exception, error: type[Exception]
) -> None:
    async def enumerate_ports() -> list[anyserial.PortInfo]:
        raise failure

    with pytest.raises(error) as info:
        await list_serial_ports(enumerate_ports=enumerate_ports)
    assert info.value.__cause__ is failure


async def test_the_machine_listing_runs() -> None:
    """The real enumeration (whatever this machine has) returns SerialPortInfo values."""
    ports = await list_serial_ports()
    assert all(isinstance(p, SerialPortInfo) and p.path for p in ports)
