"""Modbus framing on the simulated line: ADUs, request splitting and the request log (pure).

The analyser model answers PDUs; this module is what surrounds them on the wire. Building a
reply ADU (:func:`rtu_adu`: address, PDU, CRC-16 low byte first; :func:`ascii_adu`: ``:``,
upper-case hex with the LRC, CR LF) and breaking one on purpose (:func:`corrupt_adu`); cutting
requests out of the bytes a host writes (:class:`RtuRequestSplitter` by the length the function
code implies and the t3.5 silence, :class:`AsciiRequestSplitter` by ``:`` … LF), each request
stamped with the line times of its first and last character; and the record of what became of
each request (:class:`RequestOutcome`, :class:`SimRequest`). No I/O and no clock: times are
passed in. Both splitters have a hard maximum (the largest ADU); bytes past it are dropped and
counted in ``garbage_bytes``.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from anymodbus.crc import crc16_modbus_bytes, verify_crc
from anymodbus.lrc import lrc8_bytes, verify_lrc

from ..devices.models import ProtocolKind

__all__ = [
    "AsciiRequestSplitter",
    "ModbusRequest",
    "RequestOutcome",
    "RtuRequestSplitter",
    "SimRequest",
    "ascii_adu",
    "corrupt_adu",
    "rtu_adu",
]


# --------------------------------------------------------------------------------------------
# Logs


class RequestOutcome(enum.StrEnum):
    """What became of one Modbus request seen on the simulated line."""

    ANSWERED = "answered"  # normal reply sent
    EXCEPTION = "exception"  # exception reply sent (01, 02, 03)
    SILENCE_DROPPED = "silence_dropped"  # lost to the silence rule (docs/protocol.md, §9.1)
    DROPPED = "dropped"  # processed, reply suppressed by drop_next() or lose_replies()
    CORRUPTED = "corrupted"  # processed, reply sent with a corrupted CRC/LRC (corrupt_next())
    DELAYED = "delayed"  # processed, normal reply sent ``delay_s`` late (delay_next())
    MUTED = "muted"  # processed, no reply because the analyser is muted
    BAD_CHECKSUM = "bad_checksum"  # CRC/LRC or framing error: silently ignored
    OTHER_ADDRESS = "other_address"  # addressed to another slave: silently ignored
    BROADCAST = "broadcast"  # address 0: silently ignored


@dataclasses.dataclass(frozen=True, slots=True)
class SimRequest:
    """One entry of ``Simulator.requests``: when, the raw request ADU, what happened.

    ``reply`` is the reply ADU built (also when it was then dropped or muted); ``delay_s`` how
    much later than normal it was transmitted (``Simulator.delay_next``).
    """

    time: float
    adu: bytes
    outcome: RequestOutcome
    reply: bytes | None = None
    delay_s: float = 0.0


# --------------------------------------------------------------------------------------------
# Framing (pure)


def rtu_adu(address: int, pdu: bytes) -> bytes:
    """``addr · PDU · CRC16`` (CRC low byte first)."""
    head = bytes((address,)) + pdu
    return head + crc16_modbus_bytes(head)


def ascii_adu(address: int, pdu: bytes) -> bytes:
    """``':' · HEX(addr · PDU · LRC) · CR LF``, uppercase hex."""
    body = bytes((address,)) + pdu
    return b":" + (body + lrc8_bytes(body)).hex().upper().encode("ascii") + b"\r\n"


def corrupt_adu(adu: bytes, framing: ProtocolKind) -> bytes:
    """The same ADU with its check value broken (one bit of the CRC / LRC flipped)."""
    if framing is ProtocolKind.MODBUS_ASCII:
        body = bytearray(bytes.fromhex(adu[1:-2].decode("ascii")))
        body[-1] ^= 0x01
        return b":" + bytes(body).hex().upper().encode("ascii") + b"\r\n"
    out = bytearray(adu)
    out[-2] ^= 0x01
    return bytes(out)


@dataclasses.dataclass(frozen=True, slots=True)
class ModbusRequest:
    """A request ADU cut from the line. ``valid`` is False for a CRC/LRC or framing error."""

    start: float  # line time of its first character
    end: float  # line time its last character was complete
    framing: ProtocolKind
    adu: bytes
    valid: bool
    address: int = -1
    pdu: bytes = b""


# Request lengths by function code (addr + PDU + CRC) for the length-aware RTU splitter.
_RTU_FIXED_LENGTH = {0x01: 8, 0x02: 8, 0x03: 8, 0x04: 8, 0x05: 8, 0x06: 8, 0x08: 8}
_RTU_BYTE_COUNT_AT_6 = frozenset({0x0F, 0x10})
_RTU_MAX = 256


class RtuRequestSplitter:
    """Cuts Modbus RTU requests out of the bytes a host sends.

    A request ends at the length its function code implies (FC01-06, 08: 8 bytes; FC15/16:
    9 + byte count); for other codes the shortest CRC-valid prefix is taken. A silence longer
    than ``gap_s`` between two characters discards any partial request, as the t3.5 rule does on
    a real slave. The buffer never exceeds 256 bytes (the largest RTU ADU).
    """

    __slots__ = ("_buf", "_gap", "_last_end", "_start", "garbage_bytes")

    def __init__(self, gap_s: float) -> None:
        self._gap = gap_s
        self._buf = bytearray()
        self._start = 0.0
        self._last_end = -math.inf
        self.garbage_bytes = 0

    def feed(self, data: bytes, start: float, char_time: float) -> list[ModbusRequest]:
        """Feed ``data`` whose first character begins at ``start``; return finished requests."""
        out: list[ModbusRequest] = []
        if self._buf and start - self._last_end > self._gap:
            self.garbage_bytes += len(self._buf)
            self._buf.clear()
        for i, byte in enumerate(data):
            t = start + i * char_time
            if not self._buf:
                self._start = t
            self._buf.append(byte)
            self._last_end = t + char_time
            length = self._length()
            if length is None:
                if len(self._buf) >= _RTU_MAX:
                    self.garbage_bytes += len(self._buf)
                    self._buf.clear()
                continue
            adu = bytes(self._buf[:length])
            del self._buf[:length]
            valid = verify_crc(adu)
            out.append(
                ModbusRequest(
                    self._start,
                    self._last_end,
                    ProtocolKind.MODBUS_RTU,
                    adu,
                    valid,
                    adu[0] if valid else -1,
                    adu[1:-2] if valid else b"",
                )
            )
        return out

    def _length(self) -> int | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        fc = buf[1]
        fixed = _RTU_FIXED_LENGTH.get(fc)
        if fixed is not None:
            return fixed if len(buf) >= fixed else None
        if fc in _RTU_BYTE_COUNT_AT_6:
            if len(buf) < 7:
                return None
            total = 9 + buf[6]
            return total if len(buf) >= total else None
        # Unknown function code: the request is complete once its CRC verifies.
        return len(buf) if len(buf) >= 4 and verify_crc(bytes(buf)) else None


_ASCII_MAX = 1 + 2 * 256 + 2
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class AsciiRequestSplitter:
    """Cuts Modbus ASCII requests (``:`` … CR LF) out of the bytes a host sends.

    Bytes before ``:`` are discarded; a new ``:`` restarts the frame; LF ends it (a CR before
    it is stripped). Odd or non-hex content or a bad LRC yields an invalid request. The buffer
    is bounded by the largest ASCII ADU.
    """

    __slots__ = ("_buf", "_start", "garbage_bytes")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._start = 0.0
        self.garbage_bytes = 0

    def feed(self, data: bytes, start: float, char_time: float) -> list[ModbusRequest]:
        out: list[ModbusRequest] = []
        for i, byte in enumerate(data):
            t = start + i * char_time
            if byte == 0x3A:  # ':'
                self.garbage_bytes += len(self._buf)
                self._buf = bytearray(b":")
                self._start = t
                continue
            if not self._buf:
                self.garbage_bytes += 1
                continue
            if byte == 0x0A:
                self._buf.append(byte)
                out.append(self._finish(bytes(self._buf), t + char_time))
                self._buf.clear()
                continue
            self._buf.append(byte)
            if len(self._buf) > _ASCII_MAX:
                self.garbage_bytes += len(self._buf)
                self._buf.clear()
        return out

    def _finish(self, frame: bytes, end: float) -> ModbusRequest:
        hex_part = frame[1:].rstrip(b"\r\n")
        if len(hex_part) % 2 or len(hex_part) < 6 or not _HEX_DIGITS.issuperset(hex_part):
            return ModbusRequest(self._start, end, ProtocolKind.MODBUS_ASCII, frame, False)
        body = bytes.fromhex(hex_part.decode("ascii"))
        if not verify_lrc(body):
            return ModbusRequest(self._start, end, ProtocolKind.MODBUS_ASCII, frame, False)
        return ModbusRequest(
            self._start, end, ProtocolKind.MODBUS_ASCII, frame, True, body[0], body[1:-1]
        )
