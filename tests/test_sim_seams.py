"""The simulator's public test seams: ``on_request``, ``override_reply``, ``refuse``; the
``sim://`` opener and the transport contract of ``SimTransport``."""

from __future__ import annotations

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from servomexlib.errors import ServomexValidationError
from servomexlib.sim import (
    ModbusRequest,
    RequestOutcome,
    SimLine,
    Simulator,
    open_url_transport,
)
from servomexlib.sim.model import ascii_adu, rtu_adu
from servomexlib.transport.base import Transport
from servomexlib.transport.sim import SimTransport

LOOPBACK_PDU = bytes.fromhex("080000ABCD")
FC04_I1 = bytes.fromhex("0400000002")  # I1's value registers
COIL0_ON = bytes.fromhex("050000FF00")


async def ask(stream: anyio.abc.ByteStream, request: bytes, n: int) -> bytes:
    await stream.send(request)
    buf = b""
    with anyio.fail_after(5):
        while len(buf) < n:
            buf += await stream.receive()
    return buf


@pytest.mark.anyio
async def test_refuse_answers_one_function_code_with_an_exception() -> None:
    sim = Simulator(realtime=False)
    stop = sim.refuse(0x08)  # firmware without diagnostics
    stream = sim.open_stream()
    assert await ask(stream, rtu_adu(1, LOOPBACK_PDU), 5) == rtu_adu(1, b"\x88\x01")
    reply = await ask(stream, rtu_adu(1, FC04_I1), 9)  # other codes are answered
    assert reply[:3] == bytes.fromhex("010404")
    stop()
    stop()  # idempotent
    assert await ask(stream, rtu_adu(1, LOOPBACK_PDU), 8) == rtu_adu(1, LOOPBACK_PDU)
    assert [r.outcome for r in sim.requests] == [
        RequestOutcome.EXCEPTION,
        RequestOutcome.ANSWERED,
        RequestOutcome.ANSWERED,
    ]
    await stream.aclose()


@pytest.mark.anyio
async def test_refuse_with_another_exception_code_in_ascii() -> None:
    sim = Simulator(mode="modbus_ascii", address=30, realtime=False)
    sim.refuse(0x04, exception=0x04)  # device failure
    stream = sim.open_stream()
    expected = ascii_adu(30, b"\x84\x04")
    assert await ask(stream, ascii_adu(30, FC04_I1), len(expected)) == expected
    await stream.aclose()


@pytest.mark.anyio
async def test_override_reply_newest_first_and_none_falls_through() -> None:
    sim = Simulator(realtime=False)
    seen: list[tuple[bytes, float]] = []

    def echo_everything(pdu: bytes, at: float) -> bytes | None:
        seen.append((pdu, at))
        return LOOPBACK_PDU

    def only_coils(pdu: bytes, at: float) -> bytes | None:
        return b"\x85\x04" if pdu[:1] == b"\x05" else None

    sim.override_reply(echo_everything)
    remove = sim.override_reply(only_coils)
    stream = sim.open_stream()
    assert await ask(stream, rtu_adu(1, COIL0_ON), 5) == rtu_adu(1, b"\x85\x04")
    assert sim.coil_log == ()  # an overridden request never reaches the model
    assert await ask(stream, rtu_adu(1, FC04_I1), 8) == rtu_adu(1, LOOPBACK_PDU)
    assert [pdu for pdu, _ in seen] == [FC04_I1]
    remove()
    assert await ask(stream, rtu_adu(1, COIL0_ON), 8) == rtu_adu(1, LOOPBACK_PDU)
    await stream.aclose()


@pytest.mark.anyio
async def test_on_request_sees_received_requests_and_steers_their_replies() -> None:
    a = Simulator(realtime=False)
    b = Simulator(realtime=False, address=2)
    SimLine(a, b)
    heard: list[ModbusRequest] = []

    def drop_the_first(request: ModbusRequest) -> None:
        heard.append(request)
        if len(heard) == 1:
            b.drop_next(1)  # applies to this very request's reply

    remove = b.on_request(drop_the_first)
    stream = a.open_stream()
    bad_crc = bytearray(rtu_adu(2, LOOPBACK_PDU))
    bad_crc[-1] ^= 0xFF
    await stream.send(bytes(bad_crc))  # not received: bad checksum
    await stream.send(rtu_adu(1, LOOPBACK_PDU))  # not b's
    await anyio.lowlevel.checkpoint()
    await stream.send(rtu_adu(2, LOOPBACK_PDU))  # received, reply dropped by the hook
    assert await ask(stream, rtu_adu(2, LOOPBACK_PDU), 16) == (
        rtu_adu(1, LOOPBACK_PDU) + rtu_adu(2, LOOPBACK_PDU)
    )
    assert [(r.address, r.pdu) for r in heard] == [(2, LOOPBACK_PDU)] * 2
    remove()
    await ask(stream, rtu_adu(2, LOOPBACK_PDU), 8)
    assert len(heard) == 2
    assert [r.outcome for r in b.requests] == [
        RequestOutcome.BAD_CHECKSUM,
        RequestOutcome.OTHER_ADDRESS,
        RequestOutcome.DROPPED,
        RequestOutcome.ANSWERED,
        RequestOutcome.ANSWERED,
    ]
    assert b.request_count == 3
    await stream.aclose()


@pytest.mark.anyio
async def test_a_hook_can_put_bytes_on_the_line_ahead_of_the_reply() -> None:
    sim = Simulator(realtime=False)
    stale = b"\xde\xad"

    def inject_once(request: ModbusRequest) -> None:
        remove()
        sim.inject(stale)

    remove = sim.on_request(inject_once)
    stream = sim.open_stream()
    assert await ask(stream, rtu_adu(1, LOOPBACK_PDU), 10) == stale + rtu_adu(1, LOOPBACK_PDU)
    assert await ask(stream, rtu_adu(1, LOOPBACK_PDU), 8) == rtu_adu(1, LOOPBACK_PDU)
    await stream.aclose()


def test_seams_refuse_bad_arguments() -> None:
    sim = Simulator(realtime=False)
    for bad in ({"function_code": 0}, {"function_code": 128}, {"function_code": True}):
        with pytest.raises(ServomexValidationError, match="function_code"):
            sim.refuse(**bad)
    with pytest.raises(ServomexValidationError, match="exception"):
        sim.refuse(0x08, exception=0)
    with pytest.raises(ServomexValidationError):
        sim.on_request(None)  # type: ignore[arg-type]
    with pytest.raises(ServomexValidationError):
        sim.override_reply("nope")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_delay_runs_are_one_entry_per_call() -> None:
    sim = Simulator(realtime=False)
    sim.delay_next(0.01, n=3)
    sim.delay_next(0.0, n=10**9)  # a billion undelayed replies cost one entry, not a list
    stream = sim.open_stream()
    for _ in range(4):
        await ask(stream, rtu_adu(1, LOOPBACK_PDU), 8)
    assert [r.delay_s for r in sim.requests] == [0.01, 0.01, 0.01, 0.0]
    assert [r.outcome for r in sim.requests][:3] == [RequestOutcome.DELAYED] * 3
    await stream.aclose()


@pytest.mark.anyio
async def test_open_url_transport_is_a_full_transport() -> None:
    url = "sim://?mode=modbus_rtu&baud=9600&latency_ms=1"
    transport = await open_url_transport(url, None)
    assert isinstance(transport, SimTransport)
    assert isinstance(transport, Transport)
    assert transport.label == url
    assert transport.serial_settings is not None
    assert transport.serial_settings.baudrate == 9600
    assert transport.char_time_s == pytest.approx(10 / 9600)
    assert transport.pending == 0
    assert await transport.flush_input() is None  # the line-rate check handles backlogs
    await transport.drain()
    assert dict(transport.extra_attributes) == {}
    await transport.send(rtu_adu(1, LOOPBACK_PDU))
    buf = b""
    with anyio.fail_after(5):
        while len(buf) < 8:
            buf += await transport.receive()
    assert buf == rtu_adu(1, LOOPBACK_PDU)
    await transport.aclose()
    unpaced = await open_url_transport("sim://?realtime=0")
    assert unpaced.char_time_s is None
    await unpaced.aclose()
    with pytest.raises(ServomexValidationError):
        await open_url_transport("sim://", "COM1")  # type: ignore[arg-type]
    with pytest.raises(ServomexValidationError):
        await open_url_transport("sim://?colour=blue", None)
