"""SerialTransport over a real pseudo-terminal: settings applied, errors, retries, reopen; paths
that are not serial ports refused with a clean error."""

from __future__ import annotations

import errno
import os
import re
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyserial
import pytest

from servomexlib.devices.factory import open_continuous, open_device
from servomexlib.errors import ServomexConnectionError, ServomexValidationError
from servomexlib.settings import ByteSize, Parity, SerialSettings, StopBits
from servomexlib.sync import Servomex
from servomexlib.transport import SerialTransport, TransportBrokenError
from servomexlib.transport import serial as serial_mod
from servomexlib.transport.timed import TimedReader

pytestmark = pytest.mark.anyio


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    try:
        yield master, path
    finally:
        os.close(master)


async def test_open_read_write_and_idempotent_close(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    with anyio.fail_after(5):
        t = await SerialTransport.open(SerialSettings(port=path))
        assert t.label == path
        assert t.serial_settings == SerialSettings(port=path)
        os.write(master, b"hello\n")
        assert await TimedReader(t).read_until(b"\n", timeout=2) == b"hello\n"
        await TimedReader(t).write(b"\x01\x04", timeout=1)
        assert os.read(master, 10) == b"\x01\x04"
        await t.aclose()
        await t.aclose()
        assert not t.is_open


async def test_every_setting_is_applied(pty_pair: tuple[int, str]) -> None:
    _, path = pty_pair
    settings = SerialSettings(
        port=path,
        baudrate=9600,
        bytesize=ByteSize.SEVEN,
        parity=Parity.EVEN,
        stopbits=StopBits.TWO,
        rtscts=True,
        xonxoff=True,
    )
    with anyio.fail_after(5):
        t = await SerialTransport.open(settings)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
            try:
                iflag, _, cflag, _, ispeed, ospeed, _ = termios.tcgetattr(fd)
            finally:
                os.close(fd)
        finally:
            await t.aclose()
    # Linux ptys force CS8 and no parity (drivers/tty/pty.c), so data bits and parity are
    # checked on the configuration handed to anyserial instead.
    config = serial_mod.serial_config(settings)
    assert config.baudrate == 9600
    assert config.byte_size is anyserial.ByteSize.SEVEN
    assert config.parity is anyserial.Parity.EVEN
    assert config.stop_bits is anyserial.StopBits.TWO
    assert config.flow_control.rts_cts
    assert config.flow_control.xon_xoff
    assert config.exclusive
    assert ispeed == ospeed == termios.B9600
    assert cflag & termios.CSTOPB
    assert cflag & termios.CRTSCTS
    assert iflag & termios.IXON
    assert iflag & termios.IXOFF


async def test_exclusive_open_refuses_a_second_opener(pty_pair: tuple[int, str]) -> None:
    _, path = pty_pair
    with anyio.fail_after(5):
        first = await SerialTransport.open(SerialSettings(port=path))
        try:
            with pytest.raises(ServomexConnectionError, match=f"could not open {path}"):
                await SerialTransport.open(SerialSettings(port=path))
            shared = await SerialTransport.open(SerialSettings(port=path, exclusive=False))
            await shared.aclose()
        finally:
            await first.aclose()


async def test_nonexistent_port_fails_fast_naming_the_port() -> None:
    start = time.monotonic()
    with pytest.raises(ServomexConnectionError) as info:
        await SerialTransport.open(SerialSettings(port="/dev/ttyDOESNOTEXIST9"))
    assert time.monotonic() - start < 1.0
    err = info.value
    assert err.message.startswith("could not open /dev/ttyDOESNOTEXIST9")
    assert err.context.port == "/dev/ttyDOESNOTEXIST9"
    assert isinstance(err.__cause__, OSError)


async def test_com_name_on_posix_is_a_clean_connection_error() -> None:
    with pytest.raises(ServomexConnectionError, match="could not open COM3"):
        await SerialTransport.open(SerialSettings(port="COM3"))


async def test_baud_outside_range_is_rejected_before_opening() -> None:
    with pytest.raises(ServomexValidationError, match="outside"):
        SerialSettings(port="/dev/ttyS0", baudrate=115200)
    with pytest.raises(ServomexValidationError):
        await SerialTransport.open("/dev/ttyS0")  # type: ignore[arg-type]


async def _denied_then_ok(
    failures: int,
) -> tuple[list[str], serial_mod._Opener]:
    calls: list[str] = []

    async def opener(path: str, config: anyserial.SerialConfig) -> anyserial.SerialPort:
        calls.append(path)
        if len(calls) <= failures:
            raise anyserial.PortBusyError(errno.EACCES, "Access is denied", path)
        raise anyserial.PortNotFoundError(errno.ENOENT, "stop here", path)

    return calls, opener


async def test_windows_permission_denied_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serial_mod, "WINDOWS_OPEN_RETRY_DELAY_S", 0.001)
    calls, opener = await _denied_then_ok(3)
    with pytest.raises(ServomexConnectionError, match="stop here") as info:
        await serial_mod._open_port(SerialSettings(port="COM7"), opener=opener, windows=True)
    assert len(calls) == 4  # three denials retried, the fourth attempt reached the opener
    assert info.value.context.extra["attempts"] == 4


async def test_windows_retry_gives_up_after_six(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serial_mod, "WINDOWS_OPEN_RETRY_DELAY_S", 0.001)
    calls, opener = await _denied_then_ok(100)
    with pytest.raises(ServomexConnectionError, match="could not open COM7"):
        await serial_mod._open_port(SerialSettings(port="COM7"), opener=opener, windows=True)
    assert len(calls) == 1 + serial_mod.WINDOWS_OPEN_RETRIES


async def test_no_retry_off_windows() -> None:
    calls, opener = await _denied_then_ok(100)
    with pytest.raises(ServomexConnectionError):
        await serial_mod._open_port(SerialSettings(port="/dev/x"), opener=opener, windows=False)
    assert len(calls) == 1


async def test_reopen_with_new_settings(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    with anyio.fail_after(5):
        t = await SerialTransport.open(SerialSettings(port=path))
        t.pushback(b"stale")
        await t.reopen(SerialSettings(port=path, baudrate=4800))
        try:
            assert t.is_open
            assert t.pending == 0
            assert t.serial_settings is not None
            assert t.serial_settings.baudrate == 4800
            os.write(master, b"x")
            assert await TimedReader(t).read_exact(1, timeout=2) == b"x"
        finally:
            await t.aclose()


async def test_vanished_device_is_a_connection_error() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    with anyio.fail_after(5):
        t = await SerialTransport.open(SerialSettings(port=path))
        try:
            os.close(master)
            with pytest.raises(TransportBrokenError) as info:
                await t.receive()
            assert info.value.context.port == path
        finally:
            await t.aclose()


# --- paths that are not serial ports (issue 11 item 10) ----------------------------------------


@pytest.fixture
def not_ports(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Paths that cannot be opened as a serial port, with what the refusal must say."""
    regular = tmp_path / "capture.csv"
    regular.write_text("device,channel\n")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    return {
        "/dev/null": ("/dev/null", "not a serial port"),
        "regular file": (str(regular), "not a serial port (a regular file)"),
        "directory": (str(directory), "not a serial port (a directory)"),
        "missing": (str(tmp_path / "ttyUSB9"), "no such device"),
    }


KINDS = ["/dev/null", "regular file", "directory", "missing"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_path_that_is_not_a_serial_port_is_refused_naming_it(
    kind: str, not_ports: dict[str, tuple[str, str]]
) -> None:
    path, says = not_ports[kind]
    with pytest.raises(ServomexConnectionError) as info:
        await SerialTransport.open(SerialSettings(port=path))
    err = info.value
    assert err.message.startswith(f"could not open {path}: {says}")
    assert err.context.port == path


@pytest.mark.parametrize("kind", KINDS)
async def test_open_device_refuses_it_in_every_mode(
    kind: str, not_ports: dict[str, tuple[str, str]]
) -> None:
    path, says = not_ports[kind]
    for protocol in ("auto", "continuous", "modbus_rtu"):
        with pytest.raises(ServomexConnectionError, match=f"could not open {re.escape(path)}: "):
            await open_device(path, protocol=protocol)
    with pytest.raises(ServomexConnectionError, match=re.escape(says)):
        await open_continuous(path)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_sync_facade_refuses_it_without_a_traceback_of_termios(
    kind: str, backend: str, not_ports: dict[str, tuple[str, str]]
) -> None:
    path, says = not_ports[kind]
    with pytest.raises(ServomexConnectionError) as info:
        Servomex.open(path, backend=backend)
    assert info.value.message.startswith(f"could not open {path}: {says}")
    assert info.value.context.port == path


def test_a_terminal_ioctl_failure_reads_as_not_a_serial_port() -> None:
    # termios.error is not an OSError; both spellings of ENOTTY give the same words.
    assert serial_mod._open_failure(termios.error(errno.ENOTTY, "Inappropriate ioctl")) == (
        "not a serial port (Inappropriate ioctl for device)"
    )
    assert serial_mod._open_failure(OSError(errno.ENOTTY, "Inappropriate ioctl")) == (
        "not a serial port (Inappropriate ioctl for device)"
    )
    assert serial_mod._open_failure(OSError(errno.EBUSY, "busy")) == "[Errno 16] busy"


async def test_drain_waits_for_the_output_queue_and_reports_a_closed_port(
    pty_pair: tuple[int, str],
) -> None:
    master, path = pty_pair
    with anyio.fail_after(5):
        t = await SerialTransport.open(SerialSettings(port=path))
        await t.send(b"\x01\x04\x00\x00")
        await t.drain()
        assert os.read(master, 10) == b"\x01\x04\x00\x00"
        assert t.extra(anyserial.SerialStreamAttribute.config).baudrate == 19200
        await t.aclose()
        with pytest.raises(ServomexConnectionError) as info:
            await t.drain()
        assert info.value.context.port == path
