"""Simulator-backed Modbus fakes for tests (docs/simulator.md, "In your own tests").

:func:`mock_modbus_transport` puts an anymodbus :class:`~anymodbus.testing.MockSlave` — plain
register banks a test can load and inspect — on a simulated line (no pacing, no drops) and
returns an in-process transport to it. The simulator does the line work (RTU or ASCII framing,
silence for bad CRC/LRC and other addresses); the slave's banks answer. Helpers load the banks
with 4100 channel blocks through the wire layer's channel table and codecs, so the addresses and
encodings are exactly those of docs/protocol.md, §4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from anymodbus import ExceptionCode, Framing
from anymodbus.exceptions import ProtocolError as _ModbusProtocolError
from anymodbus.pdu import encode_exception_response
from anymodbus.testing import MockSlave as _AnymodbusMockSlave
from anymodbus.testing import ServerException

from ..devices.models import ChannelId, ProtocolKind, coerce_channel
from ..errors import ServomexValidationError
from ..settings import SerialSettings
from ..wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CAL_GROUPS,
    CAL_STATUS_PDU,
    STOP_CALIBRATION_COIL,
    spec_for,
)
from ..wire.registers import encode_channel_block
from .pdu import CHANNEL_DISCRETE_COUNT, INPUT_REGISTER_COUNT
from .simulator import Simulator

if TYPE_CHECKING:
    from ..transport.sim import SimTransport

__all__ = [
    "DEFAULT_4100_BANK",
    "CoilOp",
    "MockChannel",
    "MockSlave",
    "ReadOp",
    "coil_ops",
    "load_4100_banks",
    "load_cal_state",
    "mock_modbus_transport",
    "read_ops",
]

_NO_STATUS = (False,) * 8


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class MockChannel:
    """One channel block for the mock banks, with raw display-ROM name and unit bytes.

    ``name`` is padded/truncated to 6 bytes, ``unit`` to 3 bytes (a NUL is appended in the
    registers); ``status_bits`` are the channel's 8 FC02 discretes in wire order.
    """

    channel: ChannelId
    value: float | None
    name: bytes
    unit: bytes
    status_bits: tuple[bool, ...]

    def __init__(
        self,
        channel: ChannelId | str,
        value: float | None,
        name: bytes = b"\0" * 6,
        unit: bytes = b"\0" * 3,
        status_bits: Sequence[bool] = _NO_STATUS,
    ) -> None:
        bits = tuple(bool(b) for b in status_bits)
        if len(bits) != 8:
            raise ServomexValidationError(f"status_bits needs 8 values, got {len(bits)}")
        object.__setattr__(self, "channel", coerce_channel(channel))
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "name", bytes(name)[:6].ljust(6, b"\0"))
        object.__setattr__(self, "unit", bytes(unit)[:3].ljust(3, b"\0"))
        object.__setattr__(self, "status_bits", bits)


#: The measured 4100D's five channels (docs/protocol.md, §3.10, §4.13): I1 20.378 Oxygen,
#: I2 0.084 CO, I3 0.250 CO₂ (``43 4F 82 20 20 20``), E1/E2 0.0 mA unlabelled.
DEFAULT_4100_BANK: tuple[MockChannel, ...] = (
    MockChannel(ChannelId.I1, 20.378, b"Oxygen", b"%\0\0"),
    MockChannel(ChannelId.I2, 0.084, b"CO    ", b"%\0\0"),
    MockChannel(ChannelId.I3, 0.250, b"CO\x82   ", b"%\0\0"),
    MockChannel(ChannelId.E1, 0.0, b"\0" * 6, b"mA\0"),
    MockChannel(ChannelId.E2, 0.0, b"\0" * 6, b"mA\0"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class CoilOp:
    """A recorded coil access: FC05 write (``on`` = value written) or FC01 read (value read)."""

    function_code: int
    coil: int
    on: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ReadOp:
    """A recorded read request (FC01-FC04): where and how many."""

    function_code: int
    address: int
    count: int


def _set_bit(bank: bytearray, index: int, on: bool) -> None:
    if on:
        bank[index >> 3] |= 1 << (index & 7)
    else:
        bank[index >> 3] &= ~(1 << (index & 7)) & 0xFF


def _get_bit(bank: bytearray, index: int) -> bool:
    return bool(bank[index >> 3] & (1 << (index & 7)))


class MockSlave(_AnymodbusMockSlave):
    """An anymodbus mock slave sized for the 4100 map, with address-range checks and op logs.

    Reads outside ``valid_input_ranges`` / ``valid_discrete_ranges`` (half-open
    ``(start, stop)`` pairs; a read must lie inside one range) and coil accesses outside coils
    0-3 and 8 get exception 02; ``disabled_function_codes`` get exception 01.
    """

    def __init__(
        self,
        *,
        address: int = 1,
        framing: Framing = Framing.RTU,
        disabled_function_codes: frozenset[int] | None = None,
        record_coil_ops: bool = False,
        record_read_ops: bool = False,
        valid_input_ranges: Sequence[tuple[int, int]] | None = None,
        valid_discrete_ranges: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(
            address=address,
            register_count=INPUT_REGISTER_COUNT,
            input_register_count=INPUT_REGISTER_COUNT,
            coil_count=STOP_CALIBRATION_COIL + 1,
            discrete_input_count=1100,
            disabled_function_codes=disabled_function_codes,
            framing=framing,
        )
        self.record_coil_ops = record_coil_ops
        self.record_read_ops = record_read_ops
        self.valid_input_ranges: tuple[tuple[int, int], ...] = tuple(
            valid_input_ranges or ((0, INPUT_REGISTER_COUNT),)
        )
        self.valid_discrete_ranges: tuple[tuple[int, int], ...] = tuple(
            valid_discrete_ranges
            or (
                (0, CHANNEL_DISCRETE_COUNT),
                (ANALYSER_STATUS_PDU, ANALYSER_STATUS_PDU + ANALYSER_STATUS_COUNT),
            )
        )
        self.coil_ops: list[CoilOp] = []
        self.read_ops: list[ReadOp] = []

    def handle(self, request_pdu: bytes) -> bytes:
        fc = request_pdu[0]
        if fc in self.disabled_function_codes:
            raise ServerException(ExceptionCode.ILLEGAL_FUNCTION)
        if fc in (0x01, 0x02, 0x03, 0x04) and len(request_pdu) == 5:
            address = int.from_bytes(request_pdu[1:3], "big")
            count = int.from_bytes(request_pdu[3:5], "big")
            if self.record_read_ops:
                self.read_ops.append(ReadOp(fc, address, count))
            ranges: tuple[tuple[int, int], ...] | None = None
            if fc == 0x04:
                ranges = self.valid_input_ranges
            elif fc == 0x02:
                ranges = self.valid_discrete_ranges
            elif fc == 0x01:
                ranges = tuple((c, c + 1) for c in (*range(len(CAL_GROUPS)), 8))
            if ranges is not None and not any(
                lo <= address and address + count <= hi for lo, hi in ranges
            ):
                raise ServerException(ExceptionCode.ILLEGAL_DATA_ADDRESS)
            if fc == 0x01 and self.record_coil_ops:
                for coil in range(address, address + count):
                    self.coil_ops.append(CoilOp(fc, coil, _get_bit(self.coils, coil)))
        if fc == 0x05 and len(request_pdu) == 5:
            coil = int.from_bytes(request_pdu[1:3], "big")
            if coil not in (*range(len(CAL_GROUPS)), STOP_CALIBRATION_COIL):
                raise ServerException(ExceptionCode.ILLEGAL_DATA_ADDRESS)
            if self.record_coil_ops:
                self.coil_ops.append(CoilOp(fc, coil, request_pdu[3:5] == b"\xff\x00"))
        return super().handle(request_pdu)


def load_4100_banks(slave: _AnymodbusMockSlave, channels: Iterable[MockChannel]) -> None:
    """Write each channel's 7 registers and 8 status discretes at its address
    (docs/protocol.md, §4.4)."""
    for ch in channels:
        spec = spec_for(ch.channel)
        words = encode_channel_block(ch.value, ch.name, ch.unit)
        slave.input_registers[spec.value_register : spec.register_end] = list(words)
        for i, bit in enumerate(ch.status_bits):
            _set_bit(slave.discrete_inputs, spec.status_discrete + i, bit)


def load_cal_state(
    slave: _AnymodbusMockSlave, group: int, *, calibrating: bool = True, gas2: bool = False
) -> None:
    """Set cal group ``group``'s discretes: 1008 + 2(g−1) (calibrating), 1009 + 2(g−1) (gas 2)."""
    if group not in CAL_GROUPS:
        raise ServomexValidationError(f"calibration group must be 1-4, got {group!r}")
    base = CAL_STATUS_PDU + 2 * (group - 1)
    _set_bit(slave.discrete_inputs, base, calibrating)
    _set_bit(slave.discrete_inputs, base + 1, gas2)


def coil_ops(slave: MockSlave) -> list[CoilOp]:
    """The coil accesses recorded so far (``record_coil_ops=True``), oldest first."""
    return list(slave.coil_ops)


def read_ops(slave: MockSlave) -> list[ReadOp]:
    """The read requests recorded so far (``record_read_ops=True``), oldest first."""
    return list(slave.read_ops)


def _slave_backed_simulator(slave: MockSlave, *, mode: ProtocolKind) -> Simulator:
    """A simulator on an unpaced line whose Modbus answers come from ``slave``'s banks."""
    sim = Simulator(
        mode=mode,
        address=slave.address,
        serial=SerialSettings(port="mock://modbus"),
        realtime=False,
        silence_drop=False,
    )
    sim.label = "mock://modbus"

    def answer(pdu: bytes, at: float) -> bytes:
        try:
            return slave.handle(pdu)
        except ServerException as exc:
            return encode_exception_response(pdu[0], int(exc.code))
        except _ModbusProtocolError:
            return encode_exception_response(pdu[0], ExceptionCode.ILLEGAL_DATA_VALUE)

    sim.override_reply(answer)
    return sim


def _framing(framing: Framing | ProtocolKind | str) -> tuple[Framing, ProtocolKind]:
    text = str(framing.value if isinstance(framing, Framing | ProtocolKind) else framing)
    text = text.casefold()
    if text in ("rtu", "modbus_rtu"):
        return Framing.RTU, ProtocolKind.MODBUS_RTU
    if text in ("ascii", "modbus_ascii"):
        return Framing.ASCII, ProtocolKind.MODBUS_ASCII
    raise ServomexValidationError(f"framing must be RTU or ASCII, got {framing!r}")


@asynccontextmanager
async def mock_modbus_transport(
    *,
    framing: Framing | ProtocolKind | str = Framing.RTU,
    address: int = 1,
    channels: Iterable[MockChannel] = DEFAULT_4100_BANK,
    disabled_function_codes: Iterable[int] | None = None,
    record_coil_ops: bool = False,
    record_read_ops: bool = False,
    valid_input_ranges: Sequence[tuple[int, int]] | None = None,
    valid_discrete_ranges: Sequence[tuple[int, int]] | None = None,
) -> AsyncIterator[tuple[SimTransport, MockSlave]]:
    """Yield ``(transport, slave)``: an in-process transport to a 4100-shaped mock slave.

    The transport reports 19200 baud 8-N-1; the slave has the 70 input registers, ≥ 1100
    discrete inputs and coils 0-8, loaded with ``channels``. Exception 02 for reads outside the
    valid ranges (default: the whole docs/protocol.md, §4.4 map), exception 01 for
    ``disabled_function_codes``; requests with a bad CRC/LRC or for another address get no reply.
    The transport is closed on exit.
    """
    amb_framing, kind = _framing(framing)
    slave = MockSlave(
        address=address,
        framing=amb_framing,
        disabled_function_codes=frozenset(disabled_function_codes or ()),
        record_coil_ops=record_coil_ops,
        record_read_ops=record_read_ops,
        valid_input_ranges=valid_input_ranges,
        valid_discrete_ranges=valid_discrete_ranges,
    )
    load_4100_banks(slave, channels)
    sim = _slave_backed_simulator(slave, mode=kind)
    transport = sim.transport()
    try:
        yield transport, slave
    finally:
        await transport.aclose()
