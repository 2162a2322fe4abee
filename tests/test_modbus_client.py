"""The Modbus client against an independent server (pymodbus over TCP loopback) and fakes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import anyio
import pytest
from anymodbus import Framing
from anymodbus.framing import get_framer
from anymodbus.pdu import (
    encode_exception_response,
    encode_read_discrete_inputs_response,
    encode_read_input_registers_response,
)

from _modbus_server import CHANNELS, ModbusTestServer, registers
from servomexlib.clients.base import AnalyzerClient, ControlClient
from servomexlib.clients.modbus import ModbusClient, ModbusLine, ModbusStatistics
from servomexlib.devices.models import CalPhase, ChannelId, Frame, ProtocolKind
from servomexlib.errors import (
    ServomexConnectionError,
    ServomexError,
    ServomexIllegalDataAddressError,
    ServomexIllegalFunctionError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.planner import ReadPlanner, SpanPolicy, WireModel
from servomexlib.transport.fake import FakeTransport
from servomexlib.transport.tcp import TcpTransport
from servomexlib.units import Unit

pytestmark = pytest.mark.anyio

RTU, ASCII = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII
I1, I2, I3, D1, E1, E2 = (ChannelId(c) for c in ("I1", "I2", "I3", "D1", "E1", "E2"))

# protocol.md §4.11, keyed by (framing, address).
ADU = {
    (RTU, 1): {
        "loop": "01 08 00 00 AB CD 5E AE",
        "fc04_70": "01 04 00 00 00 46 71 F8",
        "fc04_65": "01 04 00 00 00 41 30 3A",  # value-only sweep I1…E2
        "fc02_80": "01 02 00 00 00 50 78 36",
        "fc02_1000": "01 02 03 E8 00 10 F9 B6",
        "fc02_1008": "01 02 03 F0 00 08 79 BB",
        "fc04_i1": "01 04 00 00 00 07 B1 C8",
        "fc02_i1": "01 02 00 00 00 08 79 CC",
        "c0_on": "01 05 00 00 FF 00 8C 3A",
        "c0_read": "01 01 00 00 00 01 FD CA",
        "c0_off": "01 05 00 00 00 00 CD CA",
        "c8_on": "01 05 00 08 FF 00 0D F8",
        "c8_read": "01 01 00 08 00 01 7C 08",
        "c8_off": "01 05 00 08 00 00 4C 08",
    },
    (ASCII, 1): {
        "loop": ":01080000ABCD7F",
        "fc04_70": ":010400000046B5",
        "fc04_65": ":010400000041BA",
        "fc02_80": ":010200000050AD",
        "fc02_1000": ":010203E8001002",
        "fc02_1008": ":010203F0000802",
        "fc04_i1": ":010400000007F4",
        "fc02_i1": ":010200000008F5",
        "c0_on": ":01050000FF00FB",
        "c0_read": ":010100000001FD",
        "c0_off": ":010500000000FA",
        "c8_on": ":01050008FF00F3",
        "c8_read": ":010100080001F5",
        "c8_off": ":010500080000F2",
    },
    (RTU, 30): {
        "loop": "1E 08 00 00 AB CD 5C C1",
        "fc04_70": "1E 04 00 00 00 46 73 97",
        "fc04_65": "1E 04 00 00 00 41 32 55",
        "fc02_80": "1E 02 00 00 00 50 7A 59",
        "fc02_1000": "1E 02 03 E8 00 10 FB D9",
        "fc02_1008": "1E 02 03 F0 00 08 7B D4",
        "fc04_i1": "1E 04 00 00 00 07 B3 A7",
        "fc02_i1": "1E 02 00 00 00 08 7B A3",
        "c0_on": "1E 05 00 00 FF 00 8E 55",
        "c0_read": "1E 01 00 00 00 01 FF A5",
        "c0_off": "1E 05 00 00 00 00 CF A5",
        "c8_on": "1E 05 00 08 FF 00 0F 97",
        "c8_read": "1E 01 00 08 00 01 7E 67",
        "c8_off": "1E 05 00 08 00 00 4E 67",
    },
    (ASCII, 30): {
        "loop": ":1E080000ABCD62",
        "fc04_70": ":1E040000004698",
        "fc04_65": ":1E04000000419D",
        "fc02_80": ":1E020000005090",
        "fc02_1000": ":1E0203E80010E5",
        "fc02_1008": ":1E0203F00008E5",
        "fc04_i1": ":1E0400000007D7",
        "fc02_i1": ":1E0200000008D8",
        "c0_on": ":1E050000FF00DE",
        "c0_read": ":1E0100000001E0",
        "c0_off": ":1E0500000000DD",
        "c8_on": ":1E050008FF00D6",
        "c8_read": ":1E0100080001D8",
        "c8_off": ":1E0500080000D5",
    },
}


def adu(framing: ProtocolKind, address: int, key: str) -> bytes:
    text = ADU[(framing, address)][key]
    if framing is ASCII:
        return text.encode() + b"\r\n"
    return bytes.fromhex(text)


MODES = [(RTU, 1), (ASCII, 1), (RTU, 30), (ASCII, 30)]


def is_open(transport: object) -> bool:
    return bool(transport.is_open)  # type: ignore[attr-defined]


async def connect(server: ModbusTestServer) -> TcpTransport:
    return await TcpTransport.open("127.0.0.1", server.port)


def make_server(framing: ProtocolKind, address: int = 1, **kw: object) -> ModbusTestServer:
    name = "rtu" if framing is RTU else "ascii"
    return ModbusTestServer(framing=name, addresses=(address,), **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def open_client(
    server: ModbusTestServer, framing: ProtocolKind, address: int = 1, **kw: object
) -> AsyncIterator[ModbusClient]:
    client = ModbusClient(await connect(server), framing=framing, address=address, **kw)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.aclose()


# --- against pymodbus -------------------------------------------------------------------


@pytest.mark.parametrize(("framing", "address"), MODES)
async def test_poll_identify_read_against_pymodbus(framing: ProtocolKind, address: int) -> None:
    with make_server(framing, address) as server:
        client = ModbusClient(await connect(server), framing=framing, address=address)
        try:
            with anyio.fail_after(20):
                assert isinstance(cast(object, client), AnalyzerClient)
                assert isinstance(cast(object, client), ControlClient)
                frame = await client.poll()
                # Before identify: all ten slots, three transactions (protocol.md §5).
                assert server.requests() == [
                    adu(framing, address, "fc04_70"),
                    adu(framing, address, "fc02_80"),
                    adu(framing, address, "fc02_1000"),
                ]
                assert len(frame.readings) == 10
                check_frame_values(frame, framing)

                info = await client.identify()
                assert info.model == "4000-series"
                assert info.address == address
                assert info.protocol is framing
                assert [c.channel for c in info.channels] == [I1, I2, I3, D1, E1, E2]
                assert [c.name for c in info.channels] == [
                    "O2",
                    "CO",
                    "CO₂",
                    "Oxygen",
                    None,
                    "Ext 2",
                ]
                assert [c.unit for c in info.channels] == [Unit.PERCENT] * 4 + [Unit.MILLIAMP] * 2
                assert client.sweep_channels == (I1, I2, I3, D1, E1, E2)

                del server.received[:]
                frame = await client.poll()
                assert frame.channels == (I1, I2, I3, D1, E1, E2)
                # Names and units cached: the value registers only, I1's value … E2's value
                # in one read (the broad read still wins at 19200 RTU).
                assert server.requests() == [
                    adu(framing, address, "fc04_65"),
                    adu(framing, address, "fc02_80"),
                    adu(framing, address, "fc02_1000"),
                ]
                check_frame_values(frame, framing, value_only=True)

                del server.received[:]
                reading = await client.read_channel(I1)
                assert server.requests() == [
                    adu(framing, address, "fc04_i1"),
                    adu(framing, address, "fc02_i1"),
                ]
                assert reading.value == pytest.approx(20.378, abs=1e-6)
                assert reading.status.alarms == (True, False, False, False)
                assert reading.raw == bytes.fromhex("41A30625") + b"O2    %\x00\x00\x00"

                status = await client.status(E1)
                assert status.fault
                assert not status.maintenance
                assert not status.ok
                analyser = await client.analyser_status()
                assert analyser.fault
                assert not analyser.maintenance
                assert analyser.clock is None
                assert [g.phase for g in analyser.cal_groups] == [
                    CalPhase.IDLE,
                    CalPhase.CAL_GAS_2,
                    CalPhase.IDLE,
                    CalPhase.IDLE,
                ]
                del server.received[:]
                progress = await client.calibration_status(2)
                assert (progress.group, progress.active, progress.phase) == (
                    2,
                    True,
                    CalPhase.CAL_GAS_2,
                )
                assert (await client.calibration_status(1)).phase is CalPhase.IDLE
                assert server.requests()[0] == adu(framing, address, "fc02_1008")

                del server.received[:]
                assert await client.loopback(b"\xab\xcd") == b"\xab\xcd"
                assert server.requests() == [adu(framing, address, "loop")]

                del server.received[:]
                await client.start_calibration(1)
                await client.stop_calibration()
                assert server.requests() == [
                    adu(framing, address, key)
                    for key in ("c0_on", "c0_read", "c0_off", "c8_on", "c8_read", "c8_off")
                ]
                assert server.coil_writes == [(0, True), (0, False), (8, True), (8, False)]
                stats = client.statistics()
                assert isinstance(stats, ModbusStatistics)
                assert stats.retries == 0
                assert stats.timeouts == 0
                assert stats.exceptions == 0
        finally:
            await client.aclose()
        assert not is_open(client.transport)


def check_frame_values(frame: Frame, framing: ProtocolKind, *, value_only: bool = False) -> None:
    assert frame.protocol is framing
    assert frame.requested_at == frame.received_at
    assert frame.latency_s is not None
    assert 0 < frame.latency_s < 5
    i1, i2, i3 = frame.channel("I1"), frame.channel("I2"), frame.channel("I3")
    d1, e1, e2 = frame.channel("D1"), frame.channel("E1"), frame.channel("E2")
    assert i1.value == 20.378  # the shortest decimal that packs back to the same float32
    assert i2.value == pytest.approx(0.084, abs=1e-7)
    assert i3.value == 0.25
    assert i3.name == "CO₂"
    if value_only:  # raw = the 4 value bytes as received
        assert i3.raw == bytes.fromhex("3E800000")
    else:
        assert i3.raw == bytes.fromhex("3E800000434F82202020") + b"%\x00\x00\x00"
    assert (i1.unit, e1.unit) == (Unit.PERCENT, Unit.MILLIAMP)
    assert d1.value == 20.95
    assert d1.name == "Oxygen"
    assert d1.unit is Unit.PERCENT
    assert e1.name is None
    assert e1.value == 4.0
    assert e2.name == "Ext 2"
    assert e2.value == 0.0
    assert i1.status.alarms == (True, False, False, False)
    assert not i1.status.fault
    assert i2.status.fault
    assert not i2.status.ok
    # D1 copies its parent's fault bit and has its own alarm 2.
    assert d1.status.fault
    assert d1.status.alarms == (False, True, False, False)
    # E1 Invalid → fault; E-channel bits 1-3 are reserved.
    assert e1.status.fault
    assert not e1.status.ok
    assert not e2.status.fault
    assert e2.status.ok
    assert frame.analyser.fault
    assert frame.analyser.cal_groups[1].calibrating
    assert frame.analyser.cal_groups[1].cal_gas == 2
    for reading in frame.readings:
        assert reading.received_at == frame.received_at
        assert reading.monotonic_ns == frame.monotonic_ns
        assert len(reading.raw) == (4 if value_only else 14)
    if ChannelId.I4 in frame.channels:  # before identify: an empty slot reads as blank
        blank = frame.channel("I4")
        assert blank.value == 0.0
        assert blank.name is None
        assert blank.unit is Unit.UNKNOWN


async def test_silence_between_requests_and_address_change() -> None:
    """≥ 50 ms of quiet before every request, on one line shared by two slave addresses."""
    server = ModbusTestServer(framing="rtu", addresses=(1, 30))
    with server:
        transport = await connect(server)
        line = ModbusLine(transport, framing=RTU)
        first = ModbusClient(line, framing=RTU, address=1)
        second = ModbusClient(line, framing="modbus_rtu", address=30)
        try:
            with anyio.fail_after(20):
                for _ in range(2):
                    await first.poll()
                    await second.analyser_status()
                    await second.poll()
        finally:
            await first.aclose()
            await second.aclose()
            assert is_open(transport)  # a shared line is not closed by its clients
            await line.aclose()
        assert not is_open(transport)
    assert len(server.received) == 14
    assert [r.adu[0] for r in server.received[:4]] == [1, 1, 1, 30]
    gaps = server.silences()
    assert len(gaps) == 13
    assert min(gaps) >= 0.049


async def test_retry_after_a_dropped_reply() -> None:
    with make_server(RTU) as server:
        server.drop_replies = 1
        async with open_client(server, RTU) as client:
            with anyio.fail_after(20):
                frame = await client.poll(timeout=0.3)
            assert frame.channel(I3).value == 0.25
            stats = client.statistics()
            assert (stats.transactions, stats.attempts, stats.retries) == (3, 4, 1)
            assert stats.timeouts == 0
    # The same request twice, then the rest; the retry also waited for the silence.
    assert server.requests()[:2] == [adu(RTU, 1, "fc04_70")] * 2
    assert server.received[1].at - server.received[0].at >= 0.3


async def test_fc05_is_never_retried() -> None:
    with make_server(RTU) as server:
        server.drop_replies, server.drop_fc = 1, 5
        async with open_client(server, RTU) as client:
            with anyio.fail_after(20), pytest.raises(ServomexTimeoutError) as info:
                await client.start_calibration(1, timeout=0.2)
    assert server.requests() == [adu(RTU, 1, "c0_on")]
    ctx = info.value.context
    assert (ctx.function_code, ctx.register, ctx.address, ctx.protocol) == (5, 1, 1, RTU)
    assert ctx.request == adu(RTU, 1, "c0_on")
    assert ctx.port is not None
    assert ctx.port.startswith("tcp://127.0.0.1:")
    assert ctx.extra["attempts"] == 1


async def test_dead_address_times_out_within_bound_and_keeps_plan() -> None:
    with make_server(RTU, address=30) as server:
        async with open_client(server, RTU, address=7, timeout=0.2) as client:
            started = time.monotonic()
            with anyio.fail_after(20), pytest.raises(ServomexTimeoutError) as info:
                await client.poll()
            elapsed = time.monotonic() - started
            assert elapsed <= 3 * (0.2 + 0.05) + 0.5
            assert client.read_planner.policy(4) is SpanPolicy.COST
            assert client.read_planner.unreadable == frozenset()
            assert client.statistics().timeouts == 1
    assert len(server.requests()) == 3  # one transaction, 3 attempts, no re-run
    err = info.value
    assert err.context.address == 7
    assert err.context.function_code == 4
    assert err.context.register == 0
    assert err.context.response is None
    assert err.context.elapsed_s is not None
    assert err.context.elapsed_s >= 0.6
    assert "no response from slave" in str(err)
    assert "address=7" in str(err)
    assert "fc=0x04" in str(err)


@pytest.mark.parametrize("framing", [RTU, ASCII])
async def test_learns_gap_free_reads_from_exception_02(framing: ProtocolKind) -> None:
    channels = {k: v for k, v in CHANNELS.items() if k != 4}  # the measured unit: no D1
    with make_server(framing, reject_gaps=True, channels=channels) as server:
        async with open_client(server, framing) as client:
            with anyio.fail_after(20):
                info = await client.identify()  # (0, 70) refused → slot by slot
                assert [c.channel for c in info.channels] == [I1, I2, I3, E1, E2]
                assert info.channels[2].name == "CO₂"
                assert client.sweep_channels == (I1, I2, I3, E1, E2)
                identify_requests = server.requests()
                assert identify_requests[0] == request_adu(framing, 1, 4, 0, 70)
                assert identify_requests[1:] == [
                    request_adu(framing, 1, 4, 7 * slot, 7) for slot in range(10)
                ]
                assert client.read_planner.unreadable == {
                    ChannelId(c) for c in ("I4", "D1", "D2", "D3", "D4")
                }
                exceptions = client.statistics().exceptions
                del server.received[:]
                frame = await client.poll()
                assert frame.channels == (I1, I2, I3, E1, E2)
                assert frame.channel(I3).name == "CO₂"
                assert client.read_planner.policy(4) is SpanPolicy.GAP_FREE
                assert client.read_planner.policy(2) is SpanPolicy.GAP_FREE
                assert client.statistics().exceptions == exceptions + 2
                first = list(server.requests())
                del server.received[:]
                await client.poll()
                again = server.requests()
    # Value-only spans (names cached by identify): I1-I3 and E1-E2 are adjacent slots, so
    # gap-free reads may pass over their name and unit registers.
    reads = [(4, 0, 16), (4, 56, 9), (2, 0, 24), (2, 64, 16), (2, 1000, 16)]
    expected = [request_adu(framing, 1, *r) for r in reads]
    assert again == expected  # protocol.md §5, learned and kept
    assert (
        first
        == [
            request_adu(framing, 1, 4, 0, 65),  # rejected (exception 02)
            *expected[:2],
            request_adu(framing, 1, 2, 0, 80),  # rejected
            *expected[2:],
        ]
    )


async def test_unreadable_slot_is_omitted_and_read_channel_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ok = set(range(10)) - {8}  # slot E1 refuses everything
    channels = {k: CHANNELS.get(k, (0.0, b"||||||", b"\x00" * 4)) for k in ok}
    with make_server(RTU, reject_gaps=True, channels=channels) as server:
        async with open_client(server, RTU) as client:
            with anyio.fail_after(20):
                frame = await client.poll()
                assert E1 not in frame.channels
                assert len(frame.readings) == 9
                assert client.read_planner.unreadable == frozenset({E1})
                warnings = [r for r in caplog.records if "omitted" in r.getMessage()]
                assert len(warnings) == 1
                frame = await client.poll()
                assert len(frame.readings) == 9
                assert len([r for r in caplog.records if "omitted" in r.getMessage()]) == 1
                before = len(server.received)
                with pytest.raises(ServomexIllegalDataAddressError) as info:
                    await client.read_channel(E1)
                assert len(server.received) == before  # known unreadable: no I/O
                assert info.value.context.channel is E1


def request_adu(framing: ProtocolKind, address: int, fc: int, start: int, count: int) -> bytes:
    pdu = bytes((fc,)) + start.to_bytes(2, "big") + count.to_bytes(2, "big")
    kind = Framing.RTU if framing is RTU else Framing.ASCII
    return get_framer(kind).encode_adu(slave_address=address, pdu=pdu)


# --- against scripted fakes ------------------------------------------------------------


def rtu(pdu: bytes, address: int = 1) -> bytes:
    return get_framer(Framing.RTU).encode_adu(slave_address=address, pdu=pdu)


def ascii_adu(pdu: bytes, address: int = 1) -> bytes:
    return get_framer(Framing.ASCII).encode_adu(slave_address=address, pdu=pdu)


FC04_70 = adu(RTU, 1, "fc04_70")
FC02_80 = adu(RTU, 1, "fc02_80")
FC02_1000 = adu(RTU, 1, "fc02_1000")


def full_script(regs: list[int] | None = None) -> dict[bytes, bytes]:
    return {
        FC04_70: rtu(encode_read_input_registers_response(regs or registers())),
        FC02_80: rtu(encode_read_discrete_inputs_response([False] * 80)),
        FC02_1000: rtu(encode_read_discrete_inputs_response([False] * 16)),
    }


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (1, ServomexIllegalFunctionError),
        (2, ServomexIllegalDataAddressError),
        (4, ServomexModbusError),
        (6, ServomexModbusError),
    ],
)
async def test_exception_replies_map_and_are_not_retried(
    code: int, cls: type[ServomexError]
) -> None:
    fake = FakeTransport({adu(RTU, 1, "fc02_1000"): rtu(encode_exception_response(2, code))})
    client = ModbusClient(fake, framing=RTU)
    with anyio.fail_after(10), pytest.raises(cls) as info:
        await client.analyser_status()
    assert type(info.value) is cls
    assert fake.writes == [adu(RTU, 1, "fc02_1000")]
    ctx = info.value.context
    assert ctx.extra["exception_code"] == code
    assert (ctx.function_code, ctx.register, ctx.port, ctx.protocol) == (
        2,
        1000,
        "fake://test",
        RTU,
    )
    assert ctx.request == adu(RTU, 1, "fc02_1000")
    assert ctx.response == rtu(encode_exception_response(2, code))
    assert client.statistics().exceptions == 1


async def test_exception_reply_ascii_bytes() -> None:
    """protocol.md §4.11: FC04 exception 02 from slave 1 is :01840279 in ASCII."""
    request = adu(ASCII, 1, "fc04_i1")
    fake = FakeTransport({request: b":01840279\r\n"})
    client = ModbusClient(fake, framing=ASCII)
    with anyio.fail_after(10), pytest.raises(ServomexIllegalDataAddressError):
        await client.read_channel(I1)
    assert client.read_planner.unreadable == frozenset({I1})


class EchoingFake(FakeTransport):
    """A FakeTransport that also answers every RTU FC08 sub-function 0 request with its echo
    (the fence's payload is fresh each time, so it cannot be scripted exactly)."""

    async def send(self, item: bytes) -> None:
        await super().send(item)
        if item[1:4] == b"\x08\x00\x00" and bytes(item) not in self.script:
            self.feed(bytes(item))


def fences(writes: list[bytes]) -> list[bytes]:
    return [w for w in writes if w[1:4] == b"\x08\x00\x00"]


async def test_crc_error_is_retried_then_times_out() -> None:
    good = rtu(encode_read_discrete_inputs_response([True] + [False] * 15))
    bad = good[:-1] + bytes((good[-1] ^ 0xFF,))
    replies = [bad, good]
    fake = EchoingFake({FC02_1000: lambda _req: replies.pop(0) if replies else bad})
    client = ModbusClient(fake, framing=RTU, timeout=0.2)
    with anyio.fail_after(10):
        status = await client.analyser_status()
        assert status.fault
        assert client.statistics().checksum_errors == 1
        assert client.statistics().retries == 1
        assert client.line.uncertain_addresses == (1,)  # the bad reply's attempt is uncertain
        with pytest.raises(ServomexTimeoutError) as info:
            await client.analyser_status()
    assert info.value.context.response == bad
    assert "CRC" in str(info.value)
    # The second call is a new transaction after an uncertain attempt: fenced first.
    assert len(fake.writes) == 2 + 1 + 3
    (fence,) = fences(fake.writes)
    assert fake.writes[2] == fence
    assert fence[4:6] not in (b"\xab\xcd", b"\x00\x00")  # a fresh payload
    assert client.statistics().fences == 1


async def test_mismatched_reply_is_a_protocol_error() -> None:
    wrong = rtu(encode_read_discrete_inputs_response([False] * 8))  # 1 byte for 16 bits
    fake = FakeTransport({FC02_1000: wrong})
    client = ModbusClient(fake, framing=RTU)
    with anyio.fail_after(10), pytest.raises(ServomexProtocolError) as info:
        await client.analyser_status()
    assert not isinstance(info.value, ServomexTimeoutError | ServomexModbusError)
    assert len(fake.writes) == 1


async def test_reply_from_other_address_is_no_response() -> None:
    other = rtu(encode_read_discrete_inputs_response([False] * 16), address=2)
    fake = FakeTransport({FC02_1000: other})
    client = ModbusClient(fake, framing=RTU, timeout=0.15)
    with anyio.fail_after(10), pytest.raises(ServomexTimeoutError):
        await client.analyser_status()
    assert len(fake.writes) == 3


async def test_stale_bytes_are_discarded_before_the_request() -> None:
    fake = FakeTransport(full_script())
    fake.pushback(b"\x01\x02\x02\xff\xff")  # parked bytes never reach the framer
    client = ModbusClient(fake, framing=RTU)
    fake.feed(b"\x01\x02\x02\x00\x01garbage")  # a stale late reply sitting in the buffer
    with anyio.fail_after(10):
        status = await client.analyser_status()
    assert not status.fault
    assert client.statistics().stale_bytes == 12


async def test_metadata_cached_until_identify() -> None:
    """Names and units are cached on a slot's first read; later sweeps read only the value
    registers, so a renamed slot keeps its cached name until identify() re-reads it."""
    regs = registers()
    fake = FakeTransport(map_script(regs, [False] * 80))
    client = ModbusClient(fake, framing=RTU)
    with anyio.fail_after(10):
        assert (await client.poll()).channel(I1).name == "O2"
        assert fake.writes[0] == FC04_70  # first sweep: whole blocks, filling the cache
        renamed = list(regs)
        renamed[2:5] = [0x4E32, 0x2020, 0x2020]  # "N2    "
        renamed[0:2] = [0x41A8, 0x0000]  # 21.0
        fake.script.update(map_script(renamed, [False] * 80))
        del fake.writes[:]
        frame = await client.poll()
        assert fake.writes[0] == request_adu(RTU, 1, 4, 0, 65)  # value registers only
        assert frame.channel(I1).value == 21.0
        assert frame.channel(I1).name == "O2"  # cached on first read
        assert frame.channel(I1).raw == bytes.fromhex("41A80000")  # the value as received
        reading = await client.read_channel(I1)  # the whole block, names still cached
        assert reading.raw[4:10] == b"N2    "  # raw is what was received
        assert reading.name == "O2"
        info = await client.identify()
        assert info.channels[0].name == "N2"
        assert (await client.poll()).channel(I1).name == "N2"
        assert (await client.read_channel(I1)).name == "N2"


async def test_identify_with_no_populated_slot_keeps_all_ten() -> None:
    fake = FakeTransport(full_script([0] * 70))
    client = ModbusClient(fake, framing=RTU)
    with anyio.fail_after(10):
        info = await client.identify()
    assert info.channels == ()
    assert len(client.sweep_channels) == 10
    assert info.serial_settings.port == "fake://test"


def map_script(regs: list[int], bits: list[bool]) -> dict[bytes, bytes]:
    """Every FC04 read of the 70 registers and every FC02 read of the 80 channel discretes
    and of the analyser block, answered from ``regs`` and ``bits`` (any plan is served)."""
    script: dict[bytes, bytes] = {}
    for start in range(70):
        for count in range(1, 71 - start):
            words = regs[start : start + count]
            script[request_adu(RTU, 1, 4, start, count)] = rtu(
                encode_read_input_registers_response(words)
            )
    for start in range(80):
        for count in range(1, 81 - start):
            script[request_adu(RTU, 1, 2, start, count)] = rtu(
                encode_read_discrete_inputs_response(bits[start : start + count])
            )
    script[FC02_1000] = rtu(encode_read_discrete_inputs_response([False] * 16))
    return script


async def test_identify_lists_only_populated_slots() -> None:
    """api.md §5: ``||||||`` with a blank unit is an empty slot; a unit or a label populates."""
    channels = {
        0: (20.5, b"O2    ", b"%\x00\x00\x00"),  # I1: label and unit → listed
        1: (1.0, b"||||||", b"    "),  # I2: unlabelled, blank unit (spaces) → empty
        2: (2.0, b"||||||", b"\x00\x00\x00\x00"),  # I3: unlabelled, blank unit (NULs) → empty
        8: (4.0, b"||||||", b"mA\x00\x00"),  # E1: unlabelled with a unit → listed, name None
        9: (0.5, b"Ext 2 ", b"    "),  # E2: a label, blank unit → listed
    }
    regs = registers(channels)
    fake = FakeTransport(map_script(regs, [False] * 80))
    client = ModbusClient(fake, framing=RTU)
    with anyio.fail_after(10):
        info = await client.identify()
        listed = [(c.channel, c.name, c.unit) for c in info.channels]
        assert listed == [
            (I1, "O2", Unit.PERCENT),
            (E1, None, Unit.MILLIAMP),
            (E2, "Ext 2", Unit.UNKNOWN),
        ]
        assert client.sweep_channels == (I1, E1, E2)
        del fake.writes[:]
        frame = await client.poll()
    assert frame.channels == (I1, E1, E2)  # the empty slots are not swept
    assert frame.channel(E2).value == 0.5
    assert frame.channel(E1).name is None
    # The wire carries exactly the value-only plan for the three populated slots.
    plan = client.read_planner.plan((I1, E1, E2), include_analyser=True, value_only=True)
    assert plan == client.sweep_plan()
    assert fake.writes == [request_adu(RTU, 1, r.function_code, r.address, r.count) for r in plan]
    assert [(r.address, r.count) for r in plan if r.function_code == 4] == [(0, 65)]


async def test_validation_before_any_io() -> None:
    fake = FakeTransport()
    with pytest.raises(ServomexValidationError):
        ModbusClient(fake, framing=ProtocolKind.CONTINUOUS_ASCII)
    for bad in (0, 248, -1, True):
        with pytest.raises(ServomexValidationError):
            ModbusClient(fake, framing=RTU, address=bad)
    with pytest.raises(ServomexValidationError):
        ModbusClient(fake, framing=RTU, timeout=0)
    line = ModbusLine(fake, framing=ASCII)
    with pytest.raises(ServomexValidationError):
        ModbusClient(line, framing=RTU)
    client = ModbusClient(fake, framing=RTU)
    calls: list[Callable[[], object]] = [
        lambda: client.start_calibration(0),
        lambda: client.start_calibration(5),
        lambda: client.calibration_status(0),
        lambda: client.loopback(b"\x00"),
        lambda: client.loopback(b"\x00\x00\x00"),
        lambda: client.poll(timeout=-1),
        lambda: client.status(I1, timeout=float("nan")),
    ]
    for call in calls:
        with pytest.raises(ServomexValidationError):
            await call()  # type: ignore[misc]
    assert fake.writes == []


async def test_closed_port_is_a_connection_error() -> None:
    fake = FakeTransport(full_script())
    client = ModbusClient(fake, framing=RTU)
    await client.aclose()
    await client.aclose()  # idempotent
    with anyio.fail_after(10), pytest.raises(ServomexConnectionError) as info:
        await client.poll()
    assert info.value.context.port == "fake://test"
    assert info.value.context.address == 1


async def test_peer_closing_mid_reply_is_a_connection_error() -> None:
    fake = FakeTransport()
    client = ModbusClient(fake, framing=RTU)

    async def close_after_half() -> None:
        await anyio.sleep(0.1)
        fake.feed(b"\x01\x02")
        await fake.send_eof()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(close_after_half)
            with pytest.raises(ServomexConnectionError) as info:
                await client.analyser_status()
    assert info.value.context.function_code == 2


async def test_loopback_mismatch_and_planner_injection() -> None:
    request = adu(RTU, 1, "loop")
    fake = FakeTransport({request: rtu(b"\x08\x00\x00\xab\xce")})
    planner = ReadPlanner(WireModel(baudrate=4800))
    client = ModbusClient(fake, framing=RTU, planner=planner)
    assert client.read_planner is planner
    with anyio.fail_after(10), pytest.raises(ServomexProtocolError):
        await client.loopback(b"\xab\xcd")
    assert fake.writes == [request]


async def test_pulse_returns_coil_to_zero_when_read_back_fails() -> None:
    on, read, off = (adu(RTU, 1, k) for k in ("c8_on", "c8_read", "c8_off"))
    fake = FakeTransport({on: on, off: off, read: rtu(encode_exception_response(1, 4))})
    client = ModbusClient(fake, framing=RTU)
    with anyio.fail_after(10), pytest.raises(ServomexModbusError) as info:
        await client.stop_calibration()
    assert fake.writes == [on, read, off]
    assert info.value.context.register == 9  # the 1-based coil


# --- against the built-in simulator (src/servomexlib/sim) -------------------------------


def sim_client(url: str, framing: ProtocolKind, address: int = 1) -> tuple[ModbusClient, object]:
    sim = pytest.importorskip("servomexlib.sim")
    from servomexlib.transport.sim import SimTransport

    conn = sim.connect_url(url)
    transport = SimTransport(conn.stream, label=url, serial_settings=conn.serial_settings)
    return ModbusClient(transport, framing=framing, address=address), conn.line


@pytest.mark.parametrize(("framing", "address"), MODES)
@pytest.mark.virtual_time  # in-process: the line's silences on the loop's (virtual) clock
async def test_against_simulator(framing: ProtocolKind, address: int) -> None:
    url = f"sim://?mode={framing.value}&address={address}&realtime=0"
    client, line = sim_client(url, framing, address)
    try:
        with anyio.fail_after(20):
            info = await client.identify()
            assert [c.channel for c in info.channels] == [I1, I2, I3, E1, E2]
            assert info.channels[2].name == "CO₂"
            frame = await client.poll()
            assert frame.channel(I1).value == 20.378
            assert frame.channel(I3).value == 0.25
            assert frame.channel(I3).name == "CO₂"
            assert frame.channel(E1).unit is Unit.MILLIAMP
            sim = line.simulator(address)  # type: ignore[attr-defined]
            tail = [r.adu for r in sim.requests][-3:]
            assert tail == [
                adu(framing, address, "fc04_65"),
                adu(framing, address, "fc02_80"),
                adu(framing, address, "fc02_1000"),
            ]
            assert await client.loopback(b"\xab\xcd") == b"\xab\xcd"
    finally:
        await client.aclose()


@pytest.mark.virtual_time  # in-process: the line's silences on the loop's (virtual) clock
async def test_simulator_rejecting_gaps_is_learned_once() -> None:
    url = "sim://?mode=modbus_rtu&reject_gaps=1&realtime=0"
    client, line = sim_client(url, RTU)
    try:
        with anyio.fail_after(20):
            await client.identify()
            sim = line.simulator(1)  # type: ignore[attr-defined]
            before = len(sim.requests)
            await client.poll()
            await client.poll()
            adus = [r.adu for r in sim.requests][before:]
    finally:
        await client.aclose()
    reads = [(4, 0, 16), (4, 56, 9), (2, 0, 24), (2, 64, 16), (2, 1000, 16)]
    learned = [request_adu(RTU, 1, *r) for r in reads]
    assert adus[-5:] == learned  # the second poll goes straight to gap-free reads
    assert adus[:-5] == [
        request_adu(RTU, 1, 4, 0, 65),
        *learned[:2],
        request_adu(RTU, 1, 2, 0, 80),
        *learned[2:],
    ]


@pytest.mark.parametrize("fenced", [True, False])
async def test_late_reply_on_real_time(fenced: bool) -> None:
    """issue 11 item 1 on the real clock (tests/test_late_reply.py runs the sweeps on virtual
    time). I1's first reply is lost and its retry's held back 0.69 s, past the third attempt's
    timeout, so the late I1 block arrives about 0.1 s into I2's read. Fenced, I2 reads its own
    value; with the fence switched off (the private knob) it reads I1's — the bug. This test
    sleeps for real (~2 s): it checks the rule against wall-clock scheduling; every timing
    margin is at least 0.1 s, for a slow shared machine."""
    from servomexlib.sim import RequestOutcome, Simulator

    sim = Simulator(latency_s=0.02, seed=4)
    sim.set_value(I1, 11.0)
    sim.set_value(I2, -7.25)
    client = ModbusClient(sim.transport(), framing=RTU, timeout=0.25)
    client.line._fence_enabled = fenced
    try:
        with anyio.fail_after(20):
            assert (await client.read_channel(I2)).value == -7.25
            sim.drop_next(1)
            sim.delay_next(0.6875)
            with pytest.raises(ServomexTimeoutError):
                await client.read_channel(I1)
            reading = await client.read_channel(I2)
    finally:
        await client.aclose()
    outcomes = [r.outcome for r in sim.requests[2:5]]
    assert outcomes == [RequestOutcome.DROPPED, RequestOutcome.DELAYED, RequestOutcome.ANSWERED]
    if fenced:
        assert reading.value == -7.25
        assert client.statistics().fences == 1
        assert sim.requests[5].adu[1] == 0x08  # the fence went out before I2's read
    else:
        assert reading.value == 11.0
        assert client.statistics().fences == 0
