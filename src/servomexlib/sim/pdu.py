"""The simulated analyser's Modbus application layer: request PDU in, response PDU out (pure).

:func:`answer_pdu` decodes a request with anymodbus' server-side PDU codecs, reads or writes
the :class:`~servomexlib.sim.model.AnalyserModel` at ``now`` and encodes the response — or the
exception reply the real unit would give: 01 for function codes other than 01/02/04/05/08
(and FC08 sub-functions other than 0), 02 outside the map of docs/protocol.md, §4.4-§4.10 (or
touching an unpopulated slot with ``reject_gaps``), 03 for a malformed request or a quantity
outside the Modbus limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anymodbus.exceptions import ProtocolError as _ModbusProtocolError
from anymodbus.pdu import (
    decode_diagnostic_loopback_request,
    decode_read_coils_request,
    decode_read_discrete_inputs_request,
    decode_read_input_registers_request,
    decode_write_single_coil_request,
    encode_diagnostic_loopback_response,
    encode_exception_response,
    encode_read_coils_response,
    encode_read_discrete_inputs_response,
    encode_read_input_registers_response,
    encode_write_single_coil_response,
)

from ..wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CAL_GROUPS,
    CHANNEL_TABLE,
    DISCRETES_PER_CHANNEL,
    REGISTERS_PER_CHANNEL,
    STOP_CALIBRATION_COIL,
    spec_for,
    start_calibration_coil,
)

if TYPE_CHECKING:
    from .model import AnalyserModel

__all__ = ["CHANNEL_DISCRETE_COUNT", "COIL_ADDRESSES", "INPUT_REGISTER_COUNT", "answer_pdu"]

#: FC04 space: 10 slots × 7 registers (docs/protocol.md, §4.4).
INPUT_REGISTER_COUNT = len(CHANNEL_TABLE) * REGISTERS_PER_CHANNEL
#: FC02 channel space: 10 slots × 8 discretes.
CHANNEL_DISCRETE_COUNT = len(CHANNEL_TABLE) * DISCRETES_PER_CHANNEL
#: Coils that exist (docs/protocol.md, §4.10): start groups 1-4 and stop-all.
COIL_ADDRESSES = (*(start_calibration_coil(g) for g in CAL_GROUPS), STOP_CALIBRATION_COIL)

_FC_READ_COILS = 0x01
_FC_READ_DISCRETES = 0x02
_FC_READ_INPUT_REGISTERS = 0x04
_FC_WRITE_COIL = 0x05
_FC_DIAGNOSTICS = 0x08
_EXC_ILLEGAL_FUNCTION = 0x01
_EXC_ILLEGAL_ADDRESS = 0x02
_EXC_ILLEGAL_VALUE = 0x03


def _populated_ranges(model: AnalyserModel, space: int) -> list[range]:
    out = []
    for cid in model.channel_ids:
        spec = spec_for(cid)
        if space == _FC_READ_INPUT_REGISTERS:
            out.append(range(spec.value_register, spec.register_end))
        else:
            out.append(range(spec.status_discrete, spec.discrete_end))
    return out


def _touches_gap(model: AnalyserModel, start: int, count: int, space: int) -> bool:
    populated = _populated_ranges(model, space)
    return any(not any(addr in r for r in populated) for addr in range(start, start + count))


def answer_pdu(model: AnalyserModel, pdu: bytes, now: float) -> bytes:
    """Answer one request PDU (function code + data) with a response PDU.

    Exception 01 for function codes other than 01/02/04/05/08 (and FC08 sub-functions
    other than 0), 02 outside the map (or touching an unpopulated slot with
    ``reject_gaps``), 03 for malformed requests and out-of-range quantities.
    """
    if not pdu:
        return encode_exception_response(0x01, _EXC_ILLEGAL_FUNCTION)
    fc = pdu[0]
    if not 1 <= fc <= 0x7F:
        return encode_exception_response(fc & 0x7F or 1, _EXC_ILLEGAL_FUNCTION)
    try:
        return _dispatch(model, fc, pdu, now)
    except _ModbusProtocolError:
        return encode_exception_response(fc, _EXC_ILLEGAL_VALUE)
    except _ModbusException as exc:
        return encode_exception_response(fc, exc.code)


def _dispatch(model: AnalyserModel, fc: int, pdu: bytes, now: float) -> bytes:
    if fc == _FC_READ_INPUT_REGISTERS:
        req = decode_read_input_registers_request(pdu)
        if req.address + req.count > INPUT_REGISTER_COUNT:
            raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
        if model.reject_gaps and _touches_gap(model, req.address, req.count, fc):
            raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
        words = model.input_registers(now)[req.address : req.address + req.count]
        return encode_read_input_registers_response(words)
    if fc == _FC_READ_DISCRETES:
        req = decode_read_discrete_inputs_request(pdu)
        end = req.address + req.count
        if end <= CHANNEL_DISCRETE_COUNT:
            if model.reject_gaps and _touches_gap(model, req.address, req.count, fc):
                raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
            bits = model.channel_discretes(now)[req.address : end]
        elif (
            req.address >= ANALYSER_STATUS_PDU
            and end <= ANALYSER_STATUS_PDU + ANALYSER_STATUS_COUNT
        ):
            offset = req.address - ANALYSER_STATUS_PDU
            bits = model.analyser_discretes(now)[offset : offset + req.count]
        else:
            raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
        return encode_read_discrete_inputs_response(bits)
    if fc == _FC_READ_COILS:
        req = decode_read_coils_request(pdu)
        addresses = range(req.address, req.address + req.count)
        if any(a not in COIL_ADDRESSES for a in addresses):
            raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
        return encode_read_coils_response([model.coil(a) for a in addresses])
    if fc == _FC_WRITE_COIL:
        write = decode_write_single_coil_request(pdu)
        if write.address not in COIL_ADDRESSES:
            raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
        model.write_coil(write.address, write.on, now=now)
        return encode_write_single_coil_response(write.address, on=write.on)
    if fc == _FC_DIAGNOSTICS:
        if len(pdu) == 5 and pdu[1:3] != b"\x00\x00":
            raise _ModbusException(_EXC_ILLEGAL_FUNCTION)
        return encode_diagnostic_loopback_response(decode_diagnostic_loopback_request(pdu))
    raise _ModbusException(_EXC_ILLEGAL_FUNCTION)


class _ModbusException(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
