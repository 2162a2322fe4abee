"""Modbus RTU/ASCII: an independent master (pymodbus) over a real pty against `servomex simulate`,
plus in-process, TCP and pty serving with multidrop, fault injection and vanish/return."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import anyio
import anymodbus
import pytest
from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient

from servomexlib.errors import ServomexConnectionError
from servomexlib.sim import RequestOutcome, SimChannel, SimLine, Simulator
from servomexlib.sim.model import ascii_adu, rtu_adu

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")

SERVOMEX = [sys.executable, "-c", "import sys; from servomexlib.cli import main; sys.exit(main())"]


def f32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def words_bytes(words: Sequence[int]) -> bytes:
    return struct.pack(f">{len(words)}H", *words)


class Served:
    def __init__(self, proc: subprocess.Popen[str], path: str) -> None:
        self.proc = proc
        self.path = path


@contextlib.contextmanager
def start_simulator(*args: str) -> Iterator[Served]:
    proc = subprocess.Popen(
        [*SERVOMEX, "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path, proc.stderr.read() if proc.stderr else ""
        yield Served(proc, path)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


CHANNEL_ARGS = (
    "--address", "30",
    "--channels", "I1,I2,I3,D1,E1,E2",
    "--names", "Oxygen,CO,CO₂,,,Flow",
    "--units", "%,vpm,%,%,mA,mA",
    "--values", "20.95,84,0.25,over,4,12.5",
    "--no-drop",
)  # fmt: skip


@pytest.fixture(params=["rtu", "ascii"])
def framing(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def client_for(path: str, framing: str) -> ModbusSerialClient:
    framer = FramerType.RTU if framing == "rtu" else FramerType.ASCII
    client = ModbusSerialClient(path, framer=framer, baudrate=19200, timeout=1.0, retries=1)
    assert client.connect()
    return client


def test_pymodbus_reads_the_whole_map_over_a_pty(framing: str) -> None:
    mode = "modbus_rtu" if framing == "rtu" else "modbus_ascii"
    with start_simulator("--mode", mode, "--scenario", "alarm", *CHANNEL_ARGS) as served:
        client = client_for(served.path, framing)
        try:
            regs = client.read_input_registers(0, count=70, device_id=30)
            assert not regs.isError(), regs
            words = regs.registers
            raw = words_bytes(words)

            def block(i: int) -> bytes:
                return raw[14 * i : 14 * i + 14]

            assert f32(words[0], words[1]) == pytest.approx(20.95, abs=1e-6)
            assert block(0)[4:] == b"Oxygen" + b" % \x00"
            assert f32(words[7], words[8]) == 84.0
            assert block(1)[4:] == b"CO    " + b"vpm\x00"
            assert block(2) == bytes.fromhex("3E800000 434F82202020") + b" % \x00"
            assert block(3) == b"\x00" * 14  # I4 unpopulated: zero memory
            d1 = block(4)
            assert d1[:4] == bytes.fromhex("7FC00000")
            assert d1[4:] == b" " * 6 + b" % \x00"
            assert raw[5 * 14 : 8 * 14] == b"\x00" * 42  # D2-D4 unpopulated
            assert block(8) == bytes.fromhex("40800000") + b" " * 6 + b" mA\x00"
            assert f32(words[63], words[64]) == 12.5
            assert block(9)[4:] == b"Flow  " + b" mA\x00"
            # one channel at a time gives the same bytes
            for i in (0, 2, 8):
                one = client.read_input_registers(7 * i, count=7, device_id=30)
                assert words_bytes(one.registers) == block(i)
            bits = client.read_discrete_inputs(0, count=80, device_id=30).bits[:80]
            # preset 'alarm': alarm 1 on the first transducer, alarm 2 on the last channel
            assert [i for i, b in enumerate(bits) if b] == [4, 72 + 5]
            status = client.read_discrete_inputs(1000, count=16, device_id=30).bits[:16]
            assert status == [False] * 16
            coils = client.read_coils(0, count=4, device_id=30).bits[:4]
            assert coils == [False] * 4
            assert client.read_coils(8, count=1, device_id=30).bits[0] is False
            echo = client.diag_query_data(b"\xab\xcd", device_id=30)
            assert not echo.isError()
            for bad in (
                client.read_input_registers(70, count=1, device_id=30),
                client.read_input_registers(60, count=11, device_id=30),
                client.read_discrete_inputs(80, count=1, device_id=30),
                client.read_discrete_inputs(999, count=2, device_id=30),
                client.read_discrete_inputs(1016, count=1, device_id=30),
                client.read_coils(4, count=1, device_id=30),
                client.write_coil(5, True, device_id=30),
            ):
                assert bad.isError()
                assert bad.exception_code == 2
            holding = client.read_holding_registers(0, count=1, device_id=30)
            assert holding.isError()
            assert holding.exception_code == 1
        finally:
            client.close()  # type: ignore[no-untyped-call]


def test_pymodbus_coil_pulses_run_the_calibration_cycle(framing: str) -> None:
    mode = "modbus_rtu" if framing == "rtu" else "modbus_ascii"
    with start_simulator("--mode", mode, "--scenario", "calibration", *CHANNEL_ARGS) as served:
        client = client_for(served.path, framing)
        try:

            def cal_bits() -> list[bool]:
                return list(client.read_discrete_inputs(1008, count=8, device_id=30).bits[:8])

            def pulse(coil: int) -> None:
                assert not client.write_coil(coil, True, device_id=30).isError()
                assert client.read_coils(coil, count=1, device_id=30).bits[0] is True
                assert not client.write_coil(coil, False, device_id=30).isError()

            assert cal_bits() == [False] * 8
            started = time.monotonic()
            pulse(0)  # start group 1 (I1): gas 1 for 2 s, gas 2 for 2 s
            assert cal_bits()[:2] == [True, False]
            i1 = client.read_discrete_inputs(0, count=8, device_id=30).bits
            assert i1[2] is True  # I1 calibrating
            d1 = client.read_discrete_inputs(32, count=8, device_id=30).bits
            assert d1[2] is True  # D1 copies I1
            assert client.read_discrete_inputs(8, count=8, device_id=30).bits[2] is False
            time.sleep(max(0.0, 2.3 - (time.monotonic() - started)))
            assert cal_bits()[:2] == [True, True]  # gas 2
            pulse(8)  # stop all
            assert cal_bits() == [False] * 8
            assert client.read_discrete_inputs(0, count=8, device_id=30).bits[2] is False
            pulse(1)  # group 2 (I2)
            assert cal_bits()[2:4] == [True, False]
            pulse(8)
            assert cal_bits() == [False] * 8
        finally:
            client.close()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------- in-process


async def exchange(stream: anyio.abc.ByteStream, request: bytes, *, expect: int) -> bytes:
    await stream.send(request)
    buf = b""
    while len(buf) < expect:
        buf += await stream.receive()
    return buf


async def silent(stream: anyio.abc.ByteStream, request: bytes, wait: float = 0.15) -> bool:
    await stream.send(request)
    with anyio.move_on_after(wait):
        await stream.receive()
        return False
    return True


@pytest.mark.anyio
async def test_multidrop_only_the_addressed_analyser_answers() -> None:
    a = Simulator(address=1, realtime=False)
    b = Simulator(
        address=30,
        realtime=False,
        mode="modbus_rtu",
        channels=[SimChannel("I1", name="Other", value=1.5), "E1", "E2"],
    )
    asc = Simulator(address=2, realtime=False, mode="modbus_ascii")
    line = SimLine(a, b, asc)
    assert line.simulator(30) is b
    stream = line.open_stream()
    with anyio.fail_after(5):
        ra = await exchange(stream, bytes.fromhex("010400000007B1C8"), expect=19)
        rb = await exchange(stream, bytes.fromhex("1E0400000007B3A7"), expect=19)
        assert ra[7:13] == b"Oxygen"
        assert rb[7:13] == b"Other "
        assert rb[0] == 30
        assert await silent(stream, rtu_adu(5, bytes.fromhex("0400000007")))  # nobody at 5
        assert await silent(stream, rtu_adu(0, bytes.fromhex("050000FF00")))  # broadcast
        bad = bytearray(bytes.fromhex("010400000007B1C8"))
        bad[-1] ^= 0xFF
        assert await silent(stream, bytes(bad))
        # the ASCII analyser answers ASCII only
        reply = await exchange(stream, b":020400000007F3\r\n", expect=39)
        assert reply.startswith(b":02040E")
        assert reply.endswith(b"\r\n")
        assert await silent(stream, rtu_adu(2, bytes.fromhex("0400000007")))
    outcomes = [r.outcome for r in a.requests]
    assert RequestOutcome.OTHER_ADDRESS in outcomes
    assert RequestOutcome.BROADCAST in outcomes
    assert RequestOutcome.BAD_CHECKSUM in outcomes
    assert [r.outcome for r in b.requests].count(RequestOutcome.ANSWERED) == 1
    await stream.aclose()


@pytest.mark.anyio
async def test_fault_injection_drop_corrupt_mute() -> None:
    sim = Simulator(realtime=False)
    stream = sim.open_stream()
    request = bytes.fromhex("01080000ABCD5EAE")
    with anyio.fail_after(5):
        sim.drop_next(2)
        assert await silent(stream, request)
        assert await silent(stream, request)
        assert await exchange(stream, request, expect=8) == request
        sim.corrupt_next(1)
        corrupt = await exchange(stream, request, expect=8)
        assert corrupt[:6] == request[:6]
        assert corrupt != request
        sim.mute()
        assert await silent(stream, bytes.fromhex("01050000FF008C3A"))
        assert sim.model.coil(0) is True  # muted, but the write was applied
        sim.mute(False)
        sim.set_address(30)
        assert await silent(stream, request)
        reply = await exchange(stream, bytes.fromhex("1E080000ABCD5CC1"), expect=8)
        assert reply == bytes.fromhex("1E080000ABCD5CC1")
    assert [r.outcome for r in sim.requests] == [
        RequestOutcome.DROPPED,
        RequestOutcome.DROPPED,
        RequestOutcome.ANSWERED,
        RequestOutcome.CORRUPTED,
        RequestOutcome.MUTED,
        RequestOutcome.OTHER_ADDRESS,
        RequestOutcome.ANSWERED,
    ]
    assert sim.requests[2].reply == request
    assert sim.coil_log[0].coil == 0
    await stream.aclose()


@pytest.mark.anyio
async def test_anymodbus_bus_over_the_sim_transport_ascii() -> None:
    sim = Simulator(mode="modbus_ascii", address=30, realtime=False)
    sim.set_alarm("I2", 2)
    transport = sim.transport()
    assert transport.label == "sim://"
    assert transport.serial_settings is not None
    assert transport.serial_settings.baudrate == 19200
    bus = anymodbus.Bus(transport, framing=anymodbus.Framing.ASCII)
    slave = bus.slave(30)
    with anyio.fail_after(5):
        regs = await slave.read_input_registers(14, count=7)
        assert words_bytes(list(regs))[4:10] == bytes.fromhex("434F82202020")
        bits = await slave.read_discrete_inputs(8, count=8)
        assert bits == (False, False, False, False, False, True, False, False)
        with pytest.raises(anymodbus.IllegalDataAddressError):
            await slave.read_input_registers(70, count=1)
        with pytest.raises(anymodbus.IllegalFunctionError):
            await slave.read_holding_registers(0, count=1)
    await bus.aclose()


@pytest.mark.anyio
async def test_in_process_vanish_and_return() -> None:
    sim = Simulator(realtime=False, name="vanish-test")
    stream = sim.open_stream()
    request = bytes.fromhex("01080000ABCD5EAE")
    with anyio.fail_after(5):
        assert await exchange(stream, request, expect=8) == request
        sim.vanish()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(request)
        with pytest.raises(ServomexConnectionError):
            sim.open_stream()
        sim.reappear()
        fresh = sim.open_stream()
        assert await exchange(fresh, request, expect=8) == request
        await fresh.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await fresh.receive()
    await stream.aclose()


@pytest.mark.anyio
async def test_tcp_serving_vanish_and_return_on_the_same_port() -> None:
    request = bytes.fromhex("01080000ABCD5EAE")
    async with Simulator(realtime=False) as sim:
        host, port = await sim.serve_tcp()
        assert host == "127.0.0.1"
        assert port > 0
        with anyio.fail_after(10):
            first = await anyio.connect_tcp(host, port)
            second = await anyio.connect_tcp(host, port)
            assert await exchange(first, request, expect=8) == request
            # both connections hear the one line
            assert await second.receive() == request
            sim.vanish()
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                await drain(first)
            await first.aclose()
            await second.aclose()
            while True:  # the listener is gone
                try:
                    probe = await anyio.connect_tcp(host, port)
                except OSError:
                    break
                await probe.aclose()
                await anyio.sleep(0.02)
            sim.reappear()
            while True:
                try:
                    again = await anyio.connect_tcp(host, port)
                    break
                except OSError:
                    await anyio.sleep(0.02)
            assert await exchange(again, request, expect=8) == request
            await again.aclose()


@pytest.mark.anyio
async def test_tcp_serving_on_a_busy_port_is_one_clear_error() -> None:
    """``servomex simulate --tcp PORT`` on a port in use: one ServomexConnectionError naming
    tcp://HOST:PORT, raised by serve_tcp itself and out of ``async with`` — no exception
    group; the line keeps working."""
    with contextlib.closing(socket.socket()) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        async def serve_busy_port_twice() -> None:
            async with Simulator(realtime=False) as sim:
                with pytest.raises(ServomexConnectionError) as caught:
                    await sim.serve_tcp(port=port)
                inside.append(caught.value)
                # still serving: another port works
                host, other = await sim.serve_tcp()
                probe = await anyio.connect_tcp(host, other)
                await probe.aclose()
                await sim.serve_tcp(port=port)  # this time out of `async with`

        inside: list[ServomexConnectionError] = []
        with anyio.fail_after(10), pytest.raises(ServomexConnectionError) as outside:
            await serve_busy_port_twice()
    for error in (*inside, outside.value):
        assert type(error) is ServomexConnectionError
        assert str(error).startswith(f"could not listen on tcp://127.0.0.1:{port}: ")
        assert error.context.port == f"tcp://127.0.0.1:{port}"
        assert isinstance(error.__cause__, OSError)
    assert len(inside) == 1


async def drain(stream: anyio.abc.ByteStream) -> None:
    while True:
        await stream.receive()


def link_state(path: str) -> tuple[bool, bool, str]:
    """(is a symlink, resolves to something, its target or "")."""
    is_link = os.path.islink(path)
    return is_link, os.path.exists(path), os.readlink(path) if is_link else ""


async def wait_until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await anyio.sleep(0.01)


async def pty_exchange(path: str, request: bytes, expect: int) -> bytes:
    import termios
    import tty

    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        termios.tcflush(fd, termios.TCIOFLUSH)
        os.write(fd, request)
        buf = b""
        while len(buf) < expect:
            await anyio.wait_readable(fd)
            try:
                buf += os.read(fd, 1024)
            except BlockingIOError:
                continue
        return buf
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_pty_serving_stable_path_vanish_and_return() -> None:
    request = ascii_adu(1, bytes.fromhex("080000ABCD"))
    async with Simulator(mode="modbus_ascii", realtime=False) as sim:
        path = await sim.serve_pty()
        is_link, _, target = link_state(path)
        assert is_link
        assert target.startswith("/dev/")
        with anyio.fail_after(10):
            assert await pty_exchange(path, request, len(request)) == request
            sim.vanish()
            await wait_until(lambda: not link_state(path)[0])
            sim.reappear()
            await wait_until(lambda: link_state(path)[1])
            assert await pty_exchange(path, request, len(request)) == request
    assert link_state(path) == (False, False, "")
    assert link_state(path.rsplit("/", 1)[0])[1] is False  # its directory is gone too
