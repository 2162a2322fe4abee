"""The simulated SERVOPRO 4100 as a pure state machine (api.md §16.1, protocol.md §3-§4, §11).

No I/O, no clock, no anyio: every method that depends on time takes ``now`` (seconds on any
monotonic scale the caller chooses; the serving layer passes its line clock, by default
``time.monotonic()``).

Theory of operation
-------------------
:class:`AnalyserModel` holds what the analyser *is*: its channel slots and their values, flags
and alarms, the analyser-level flags, the four autocalibration groups, the coils and the
analyser clock. From that state it produces, byte-exactly, what the analyser *says*:

* :meth:`AnalyserModel.continuous_frame` — one continuous ASCII frame, built with the wire
  layer's ``format_header`` / ``format_block`` / ``format_value`` / ``build_frame``;
* :meth:`AnalyserModel.handle_pdu` — the Modbus application layer: request PDU in, response
  PDU out (normal or exception), using the wire layer's channel table and register codecs for
  every address and encoding and anymodbus's server-side PDU codecs for the envelopes.

Framing (RTU CRC, ASCII LRC) and request splitting are also here, as pure helpers
(:func:`rtu_adu`, :func:`ascii_adu`, :class:`RtuRequestSplitter`, :class:`AsciiRequestSplitter`);
*when* bytes move is the line's business (:mod:`servomexlib.sim.serve`).

Decisions where the device documentation is silent (protocol.md §13), all LIB:

* **Unit registers** carry the continuous unit field (3 characters, e.g. ``" % "``, ``" mA"``)
  followed by one NUL — so the worked ADU of protocol.md §4.5 comes out byte-exact.
* **Unlabelled but populated slots** (``name=None``) show ``||||||`` in continuous frames and
  six spaces in the Modbus name registers.
* **Unpopulated slots** read as zero memory: value registers ``00 00 00 00`` (0.0), name and
  unit registers all NUL, status discretes clear. With ``reject_gaps=True`` any FC04 or
  channel-FC02 read that touches an unpopulated slot is refused with exception 02.
* **Over-range** (``set_value(ch, None)``) is ``++++++`` in continuous frames and quiet NaN
  (``7F C0 00 00``) in the value registers.
* **Analyser fault** is set explicitly (``set_analyser``) *or* by any transducer's fault, as in
  the worked frame of protocol.md §3.6.
* **External inputs**: the Invalid flag is status bit 0 over Modbus and ``F`` in continuous
  frames (both decode to ``fault``); maintenance, calibration and warm-up do not apply.
* **Derived channels** copy bits 0-3 (fault, maintenance, calibrating, warming up) from their
  parent transducer (default: D\\ *n* → I\\ *n*); their own alarms are their own.
* **Coils**: FC05 stores the written value (FC01 reads it back); a 0→1 edge on coil g−1 starts
  group g (ignored while the group is already running), a 0→1 edge on coil 8 stops every group.
  A group runs gas 1 for ``gas1_s``, gas 2 for ``gas2_s``, then returns to sampling (``S1``).
* **Other function codes** get exception 01; a malformed request or a quantity outside the
  Modbus limits gets exception 03; FC08 sub-functions other than 0 get exception 01.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import unicodedata
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from anymodbus.crc import crc16_modbus_bytes, verify_crc
from anymodbus.exceptions import ProtocolError as _ModbusProtocolError
from anymodbus.lrc import lrc8_bytes, verify_lrc
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

from ..devices.models import (
    AnalyserStatus,
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    coerce_channel,
)
from ..errors import ErrorContext, ServomexValidationError
from ..units import Unit
from ..wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CAL_GROUPS,
    CHANNEL_TABLE,
    DISCRETES_PER_CHANNEL,
    REGISTERS_PER_CHANNEL,
    STOP_CALIBRATION_COIL,
    encode_analyser_bits,
    encode_status_bits,
    spec_for,
    start_calibration_coil,
)
from ..wire.charset import encode_display
from ..wire.continuous import build_frame, format_block, format_header, format_value
from ..wire.registers import encode_channel_block

__all__ = [
    "COIL_ADDRESSES",
    "DEFAULT_4100D_CHANNELS",
    "INPUT_REGISTER_COUNT",
    "AnalyserModel",
    "AsciiRequestSplitter",
    "CoilAction",
    "CoilWrite",
    "ModbusRequest",
    "RequestOutcome",
    "RtuRequestSplitter",
    "SimChannel",
    "SimRequest",
    "ascii_adu",
    "corrupt_adu",
    "rtu_adu",
]

#: FC04 space: 10 slots × 7 registers (protocol.md §4.4).
INPUT_REGISTER_COUNT = len(CHANNEL_TABLE) * REGISTERS_PER_CHANNEL
#: FC02 channel space: 10 slots × 8 discretes.
CHANNEL_DISCRETE_COUNT = len(CHANNEL_TABLE) * DISCRETES_PER_CHANNEL
#: Coils that exist (protocol.md §4.9): start groups 1-4 and stop-all.
COIL_ADDRESSES = (*(start_calibration_coil(g) for g in CAL_GROUPS), STOP_CALIBRATION_COIL)

_FC_READ_COILS = 0x01
_FC_READ_DISCRETES = 0x02
_FC_READ_INPUT_REGISTERS = 0x04
_FC_WRITE_COIL = 0x05
_FC_DIAGNOSTICS = 0x08
_EXC_ILLEGAL_FUNCTION = 0x01
_EXC_ILLEGAL_ADDRESS = 0x02
_EXC_ILLEGAL_VALUE = 0x03

_ORDER = {cid: i for i, cid in enumerate(ChannelId)}  # I1..I4, D1..D4, E1, E2: continuous order


def _validation(message: str) -> ServomexValidationError:
    return ServomexValidationError(message, context=ErrorContext(protocol="sim"))


# --------------------------------------------------------------------------------------------
# Channel configuration


def _unit_text(unit: str | Unit | None, kind: ChannelKind) -> str:
    if unit is None:
        return "mA" if kind is ChannelKind.EXTERNAL_INPUT else "%"
    text = str(unit.value if isinstance(unit, Unit) else unit).strip(" \x00")
    if len(text) > 3:
        raise _validation(f"unit {unit!r} is longer than the 3-character unit field")
    return text


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class SimChannel:
    """Configuration of one simulated channel slot.

    Args:
        channel: the slot (``ChannelId`` or its exact wire id, e.g. ``"I1"``).
        name: display name (``"Oxygen"``, ``"CO₂"``); None or empty → unlabelled slot
            (``||||||`` in continuous frames, six spaces in the Modbus name registers).
        unit: unit text (``"%"``, ``"vpm"``, ``"ppm"``, ``"mA"``) or a :class:`Unit`; None →
            ``mA`` for external inputs, ``%`` otherwise. Shown in a 3-character field
            (``" % "``, ``" mA"``, ``"vpm"``).
        value: initial value; None → over-range.
        decimals: digits after the point in continuous frames; None → 1 for mA, else 3.
        name_bytes: raw display-ROM name for the Modbus registers (≤ 6 bytes, space padded),
            e.g. ``b"CO\\x82   "``; default: ``name`` through the display charset.
        continuous_name: ASCII name for continuous frames; default: ``name`` folded to ASCII
            (``CO₂`` → ``CO2``).
        parent: the transducer a derived channel copies status bits 0-3 from
            (default D\\ *n* → I\\ *n*); only meaningful for D-channels.
        cal_group: the autocalibration group (1-4) the channel belongs to, if any.

    Raises:
        ServomexValidationError: unknown channel id, bad unit/name length, bad group.
    """

    channel: ChannelId
    name: str | None
    unit: str
    value: float | None
    decimals: int | None
    name_bytes: bytes | None
    continuous_name: str | None
    parent: ChannelId | None
    cal_group: int | None

    def __init__(
        self,
        channel: ChannelId | str,
        *,
        name: str | None = None,
        unit: str | Unit | None = None,
        value: float | None = 0.0,
        decimals: int | None = None,
        name_bytes: bytes | None = None,
        continuous_name: str | None = None,
        parent: ChannelId | str | None = None,
        cal_group: int | None = None,
    ) -> None:
        cid = coerce_channel(channel)
        name = name or None
        if decimals is not None and not 0 <= decimals <= 5:
            raise _validation(f"decimals must be 0-5, got {decimals!r}")
        if name_bytes is not None:
            name_bytes = bytes(name_bytes)
            if len(name_bytes) > 6:
                raise _validation(f"name_bytes is {len(name_bytes)} bytes; the name field holds 6")
        if continuous_name is not None and len(continuous_name) > 6:
            raise _validation(f"continuous_name {continuous_name!r} exceeds 6 characters")
        if name is not None and name_bytes is None and len(name) > 6:
            raise _validation(f"name {name!r} exceeds the 6-character name field")
        parent_id = None if parent is None else coerce_channel(parent)
        if parent_id is not None and parent_id.kind is not ChannelKind.TRANSDUCER:
            raise _validation(f"parent of {cid.value} must be a transducer, got {parent_id}")
        if cal_group is not None and cal_group not in CAL_GROUPS:
            raise _validation(f"cal_group must be 1-4, got {cal_group!r}")
        fields = {
            "channel": cid,
            "name": name,
            "unit": _unit_text(unit, cid.kind),
            "value": None if value is None else float(value),
            "decimals": decimals,
            "name_bytes": name_bytes,
            "continuous_name": continuous_name,
            "parent": parent_id,
            "cal_group": cal_group,
        }
        for key, item in fields.items():
            object.__setattr__(self, key, item)

    @property
    def kind(self) -> ChannelKind:
        return self.channel.kind

    @property
    def unit_field(self) -> str:
        """The 3-character unit field as sent in continuous mode: ``" % "``, ``" mA"``."""
        text = str(self.unit)
        return text if len(text) >= 3 else (" " + text).ljust(3)

    @property
    def unit_bytes(self) -> bytes:
        """The 4 bytes of the Modbus unit registers: the unit field plus a NUL."""
        return encode_display(self.unit_field) + b"\x00"

    @property
    def modbus_name(self) -> bytes:
        """The 6 display-ROM bytes of the Modbus name registers."""
        if self.name_bytes is not None:
            return self.name_bytes.ljust(6, b" ")
        if self.name is None:
            return b" " * 6
        return encode_display(self.name)[:6].ljust(6, b" ")

    @property
    def continuous_label(self) -> str | None:
        """The name as sent in continuous frames (plain ASCII), or None if unlabelled."""
        if self.continuous_name is not None:
            return self.continuous_name or None
        if self.name is None:
            return None
        folded = unicodedata.normalize("NFKC", self.name)
        return folded.encode("ascii", "replace").decode("ascii")[:6]

    @property
    def resolved_decimals(self) -> int:
        if self.decimals is not None:
            return self.decimals
        return 1 if str(self.unit).casefold() == "ma" else 3

    @property
    def resolved_parent(self) -> ChannelId | None:
        if self.kind is not ChannelKind.DERIVED:
            return None
        if self.parent is not None:
            return self.parent
        return ChannelId("I" + self.channel.value[1])


#: The measured 4100D (protocol.md §3.9): I1 Oxygen, I2 CO, I3 CO₂ (display-ROM name
#: ``43 4F 82 20 20 20`` over Modbus, ``CO2`` in continuous mode), E1/E2 unlabelled mA inputs.
#: Calibration groups (LIB): one per transducer.
DEFAULT_4100D_CHANNELS: tuple[SimChannel, ...] = (
    SimChannel(ChannelId.I1, name="Oxygen", unit="%", value=20.378, cal_group=1),
    SimChannel(ChannelId.I2, name="CO", unit="%", value=0.084, cal_group=2),
    SimChannel(
        ChannelId.I3,
        name="CO₂",
        unit="%",
        value=0.250,
        name_bytes=b"CO\x82   ",
        continuous_name="CO2",
        cal_group=3,
    ),
    SimChannel(ChannelId.E1, unit="mA", value=0.0),
    SimChannel(ChannelId.E2, unit="mA", value=0.0),
)


# --------------------------------------------------------------------------------------------
# Logs


class RequestOutcome(enum.StrEnum):
    """What became of one Modbus request seen on the simulated line."""

    ANSWERED = "answered"  # normal reply sent
    EXCEPTION = "exception"  # exception reply sent (01, 02, 03)
    SILENCE_DROPPED = "silence_dropped"  # lost to the measured silence rule (protocol.md §9.1)
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


class CoilAction(enum.StrEnum):
    NONE = "none"  # no 0→1 edge (or a coil that starts nothing)
    START = "start"  # 0→1 edge on coil g−1: group g starts
    IGNORED = "ignored"  # 0→1 edge while the group was already calibrating
    STOP = "stop"  # 0→1 edge on coil 8: every group stops


@dataclasses.dataclass(frozen=True, slots=True)
class CoilWrite:
    """One entry of ``Simulator.coil_log``: an FC05 write and what it triggered."""

    time: float
    coil: int
    on: bool
    action: CoilAction
    group: int | None = None


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


# --------------------------------------------------------------------------------------------
# The analyser


@dataclasses.dataclass(slots=True)
class _ChannelState:
    """Mutable per-channel state; the value is ``base`` moved by drift since ``since``."""

    config: SimChannel
    base: float | None
    since: float
    rate_per_s: float = 0.0
    noise: float = 0.0
    target: float | None = None
    fault: bool = False
    maintenance: bool = False
    invalid: bool = False
    alarms: list[bool] = dataclasses.field(default_factory=lambda: [False] * 4)
    warm_until: float = -math.inf


@dataclasses.dataclass(slots=True)
class _CalGroup:
    channels: frozenset[ChannelId]
    gas1_s: float = 30.0
    gas2_s: float = 30.0
    started_at: float | None = None

    def phase(self, now: float) -> tuple[bool, int]:
        """(calibrating, cal gas) at ``now``; idle groups report gas 1 (``S1``)."""
        if self.started_at is None:
            return False, 1
        elapsed = now - self.started_at
        if elapsed < 0 or elapsed >= self.gas1_s + self.gas2_s:
            return False, 1
        return True, 1 if elapsed < self.gas1_s else 2


def _check_mode(mode: ProtocolKind | str) -> ProtocolKind:
    try:
        kind = ProtocolKind(mode)
    except ValueError:
        raise _validation(f"unknown simulator mode {mode!r}") from None
    if kind is ProtocolKind.AUTO:
        raise _validation("the simulator needs a concrete mode, not auto")
    return kind


def _check_address(address: int) -> int:
    if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
        raise _validation(f"slave address must be 1-247, got {address!r}")
    return address


class AnalyserModel:
    """The analyser's state and its byte-exact answers. Pure: time is always passed in.

    Args:
        channels: 3-7 :class:`SimChannel` configs (any of the ten slots, each at most once);
            continuous frames list them in slot order (I…, D…, E1, E2).
        mode: the wire mode (continuous, Modbus RTU or Modbus ASCII).
        address: Modbus slave address 1-247.
        reject_gaps: refuse (exception 02) reads that touch an unpopulated slot.
        seed: seeds the noise generator.
        clock_origin: the analyser clock reading at ``now``.
        now: the model's creation time.

    Raises:
        ServomexValidationError: bad channel list, mode or address.
    """

    def __init__(
        self,
        channels: Iterable[SimChannel],
        *,
        mode: ProtocolKind | str = ProtocolKind.MODBUS_RTU,
        address: int = 1,
        reject_gaps: bool = False,
        seed: int = 0,
        clock_origin: datetime,
        now: float,
    ) -> None:
        configs = list(channels)
        for c in configs:
            if not isinstance(c, SimChannel):
                raise _validation(f"channels must be SimChannel objects, got {c!r}")
        ids = [c.channel for c in configs]
        if len(set(ids)) != len(ids):
            raise _validation(f"duplicate channel in {[i.value for i in ids]}")
        if not 3 <= len(configs) <= 7:
            raise _validation(f"the analyser has 3-7 channels, got {len(configs)}")
        configs.sort(key=lambda c: _ORDER[c.channel])
        self.mode = _check_mode(mode)
        self.address = _check_address(address)
        self.reject_gaps = bool(reject_gaps)
        self._rng = random.Random(seed)
        self._channels: dict[ChannelId, _ChannelState] = {
            c.channel: _ChannelState(c, c.value, now) for c in configs
        }
        self.analyser_fault = False
        self.analyser_maintenance = False
        self._clock_origin = clock_origin
        self._clock_t0 = now
        self._groups: dict[int, _CalGroup] = {g: _CalGroup(frozenset()) for g in CAL_GROUPS}
        for c in configs:
            if c.cal_group is not None:
                group = self._groups[c.cal_group]
                group.channels = group.channels | {c.channel}
        self._coils: dict[int, bool] = dict.fromkeys(COIL_ADDRESSES, False)
        self.coil_log: deque[CoilWrite] = deque(maxlen=10_000)

    # ---------------------------------------------------------------- configuration view

    @property
    def channels(self) -> tuple[SimChannel, ...]:
        """The channel configs in continuous order."""
        return tuple(s.config for s in self._channels.values())

    @property
    def channel_ids(self) -> tuple[ChannelId, ...]:
        return tuple(self._channels)

    def _state(self, ch: ChannelId | str) -> _ChannelState:
        cid = coerce_channel(ch)
        try:
            return self._channels[cid]
        except KeyError:
            present = ", ".join(c.value for c in self._channels)
            raise _validation(
                f"channel {cid.value} is not simulated (channels: {present})"
            ) from None

    # ---------------------------------------------------------------- scenario control

    def set_mode(self, mode: ProtocolKind | str) -> None:
        self.mode = _check_mode(mode)

    def set_address(self, address: int) -> None:
        self.address = _check_address(address)

    def set_name(
        self,
        ch: ChannelId | str,
        name: str | None,
        *,
        name_bytes: bytes | None = None,
        continuous_name: str | None = None,
    ) -> None:
        """Relabel a slot (None → unlabelled); the raw overrides are replaced too."""
        state = self._state(ch)
        state.config = dataclasses.replace(
            state.config, name=name, name_bytes=name_bytes, continuous_name=continuous_name
        )

    def set_value(self, ch: ChannelId | str, value: float | None, *, now: float) -> None:
        """Set the value (None → over-range); drift continues from here."""
        state = self._state(ch)
        state.base = None if value is None else float(value)
        state.since = now

    def over_range(self, ch: ChannelId | str, *, now: float) -> None:
        self.set_value(ch, None, now=now)

    def drift(
        self,
        ch: ChannelId | str,
        *,
        rate_per_s: float = 0.0,
        noise: float = 0.0,
        target: float | None = None,
        now: float,
    ) -> None:
        """Move the value by ``rate_per_s`` (towards ``target`` and stopping there, when given)
        and add Gaussian noise of standard deviation ``noise`` to every reading."""
        if noise < 0:
            raise _validation(f"noise must be >= 0, got {noise!r}")
        state = self._state(ch)
        state.base = self._drifted(state, now)
        state.since = now
        state.rate_per_s = float(rate_per_s)
        state.noise = float(noise)
        state.target = None if target is None else float(target)

    def set_fault(self, ch: ChannelId | str, on: bool = True) -> None:
        state = self._state(ch)
        self._own_flags(state, "fault")
        if state.config.kind is ChannelKind.EXTERNAL_INPUT:
            state.invalid = bool(on)
        else:
            state.fault = bool(on)

    def set_maintenance(self, ch: ChannelId | str, on: bool = True) -> None:
        state = self._state(ch)
        self._own_flags(state, "maintenance")
        if state.config.kind is ChannelKind.EXTERNAL_INPUT:
            raise _validation(f"{state.config.channel.value}: external inputs have no maintenance")
        state.maintenance = bool(on)

    def set_invalid(self, ch: ChannelId | str, on: bool = True) -> None:
        state = self._state(ch)
        if state.config.kind is not ChannelKind.EXTERNAL_INPUT:
            raise _validation(f"{state.config.channel.value}: only E-channels have Invalid")
        state.invalid = bool(on)

    def set_alarm(self, ch: ChannelId | str, n: int, on: bool = True) -> None:
        if n not in (1, 2, 3, 4):
            raise _validation(f"alarm number must be 1-4, got {n!r}")
        self._state(ch).alarms[n - 1] = bool(on)

    def set_analyser(self, *, fault: bool | None = None, maintenance: bool | None = None) -> None:
        if fault is not None:
            self.analyser_fault = bool(fault)
        if maintenance is not None:
            self.analyser_maintenance = bool(maintenance)

    def warm_up(
        self, seconds: float, channels: Iterable[ChannelId | str] | None = None, *, now: float
    ) -> None:
        """Show warming-up on ``channels`` (default: every transducer) for ``seconds``."""
        if channels is None:
            targets = [
                s for s in self._channels.values() if s.config.kind is ChannelKind.TRANSDUCER
            ]
        else:
            targets = [self._state(c) for c in channels]
        for state in targets:
            if state.config.kind is not ChannelKind.TRANSDUCER:
                raise _validation(f"{state.config.channel.value}: only transducers warm up")
            state.warm_until = now + float(seconds)

    def configure_calibration(
        self,
        group: int,
        *,
        channels: Iterable[ChannelId | str],
        gas1_s: float = 30.0,
        gas2_s: float = 30.0,
    ) -> None:
        """Assign ``channels`` to cal group ``group`` (replacing its members) and set the
        length of the gas-1 and gas-2 phases."""
        if group not in CAL_GROUPS:
            raise _validation(f"calibration group must be 1-4, got {group!r}")
        if gas1_s < 0 or gas2_s < 0:
            raise _validation("gas1_s and gas2_s must be >= 0")
        members = frozenset(self._state(c).config.channel for c in channels)
        cal = self._groups[group]
        cal.channels = members
        cal.gas1_s = float(gas1_s)
        cal.gas2_s = float(gas2_s)

    def start_calibration(self, group: int, *, now: float) -> bool:
        """Start ``group`` as a coil edge would; False if it is already running."""
        cal = self._groups[group]
        if cal.phase(now)[0]:
            return False
        cal.started_at = now
        return True

    def stop_calibration(self) -> None:
        for cal in self._groups.values():
            cal.started_at = None

    def set_clock(self, dt: datetime, *, now: float) -> None:
        """The analyser clock reads ``dt`` at ``now`` and runs from there."""
        self._clock_origin = dt
        self._clock_t0 = now

    # ---------------------------------------------------------------- observed state

    @staticmethod
    def _own_flags(state: _ChannelState, what: str) -> None:
        if state.config.kind is ChannelKind.DERIVED:
            raise _validation(
                f"{state.config.channel.value}: derived channels copy {what} from their parent"
            )

    def _drifted(self, state: _ChannelState, now: float) -> float | None:
        if state.base is None:
            return None
        value = state.base + state.rate_per_s * max(0.0, now - state.since)
        target = state.target
        if target is not None and state.rate_per_s != 0.0:
            value = min(value, target) if state.rate_per_s > 0 else max(value, target)
        return value

    def value(self, ch: ChannelId | str, now: float) -> float | None:
        """The reading at ``now`` (drift plus fresh noise); None while over-range."""
        state = self._state(ch)
        value = self._drifted(state, now)
        if value is not None and state.noise > 0.0:
            value += self._rng.gauss(0.0, state.noise)
        return value

    def clock(self, now: float) -> datetime:
        """The analyser clock at ``now`` (naive; whole seconds)."""
        dt = self._clock_origin + timedelta(seconds=now - self._clock_t0)
        return dt.replace(microsecond=0)

    def cal_groups(self, now: float) -> tuple[CalGroupState, ...]:
        return tuple(CalGroupState(g, *self._groups[g].phase(now)) for g in CAL_GROUPS)

    def _calibrating(self, cid: ChannelId, now: float) -> bool:
        return any(cid in cal.channels and cal.phase(now)[0] for cal in self._groups.values())

    def _transducer_bits(self, cid: ChannelId, now: float) -> tuple[bool, bool, bool, bool]:
        state = self._channels.get(cid)
        if state is None:
            return (False, False, False, False)
        return (
            state.fault,
            state.maintenance,
            self._calibrating(cid, now),
            now < state.warm_until,
        )

    def status(self, ch: ChannelId | str, now: float) -> ChannelStatus:
        """The channel's flags as the analyser presents them (per-kind rules applied)."""
        state = self._state(ch)
        config = state.config
        alarms = (state.alarms[0], state.alarms[1], state.alarms[2], state.alarms[3])
        if config.kind is ChannelKind.EXTERNAL_INPUT:
            return ChannelStatus(fault=state.invalid or state.fault, alarms=alarms)
        if config.kind is ChannelKind.DERIVED:
            parent = config.resolved_parent
            assert parent is not None
            fault, maint, cal, warm = self._transducer_bits(parent, now)
        else:
            fault, maint, cal, warm = self._transducer_bits(config.channel, now)
        return ChannelStatus(fault, maint, cal, warm, alarms)

    def analyser_status(self, now: float) -> AnalyserStatus:
        any_fault = any(
            s.fault for s in self._channels.values() if s.config.kind is ChannelKind.TRANSDUCER
        )
        groups = self.cal_groups(now)
        return AnalyserStatus(
            fault=self.analyser_fault or any_fault,
            maintenance=self.analyser_maintenance,
            cal_groups=(groups[0], groups[1], groups[2], groups[3]),
            clock=self.clock(now),
        )

    # ---------------------------------------------------------------- continuous mode

    def continuous_frame(self, now: float, *, terminator: bytes = b"\r\n") -> bytes:
        """One complete continuous frame as the analyser would send it at ``now``."""
        blocks: list[list[str | bytes]] = []
        for cid, state in self._channels.items():
            config = state.config
            status = self.status(cid, now)
            blocks.append(
                format_block(
                    cid,
                    name=config.continuous_label,
                    value_text=format_value(self.value(cid, now), config.resolved_decimals),
                    unit=config.unit_field,
                    status=status,
                )
            )
        analyser = self.analyser_status(now)
        header = format_header(
            clock=analyser.clock,
            fault=analyser.fault,
            maintenance=analyser.maintenance,
            cal_groups=analyser.cal_groups,
            n_blocks=len(blocks),
        )
        return build_frame(header, blocks, terminator=terminator)

    # ---------------------------------------------------------------- Modbus data model

    def input_registers(self, now: float) -> list[int]:
        """All 70 input registers (10 slots × 7); unpopulated slots are zero."""
        words = [0] * INPUT_REGISTER_COUNT
        for cid, state in self._channels.items():
            spec = spec_for(cid)
            block = encode_channel_block(
                self.value(cid, now), state.config.modbus_name, state.config.unit_bytes
            )
            words[spec.value_register : spec.register_end] = block
        return words

    def channel_discretes(self, now: float) -> list[bool]:
        """The 80 per-channel status discretes; unpopulated slots are clear."""
        bits = [False] * CHANNEL_DISCRETE_COUNT
        for cid in self._channels:
            spec = spec_for(cid)
            bits[spec.status_discrete : spec.discrete_end] = encode_status_bits(
                cid.kind, self.status(cid, now)
            )
        return bits

    def analyser_discretes(self, now: float) -> list[bool]:
        """Discretes 1000-1015: fault, maintenance, 6 undocumented (clear), 4 × (cal, gas 2)."""
        return list(encode_analyser_bits(self.analyser_status(now)))

    def coil(self, address: int) -> bool:
        return self._coils[address]

    def _populated_ranges(self, space: int) -> list[range]:
        out = []
        for cid in self._channels:
            spec = spec_for(cid)
            if space == _FC_READ_INPUT_REGISTERS:
                out.append(range(spec.value_register, spec.register_end))
            else:
                out.append(range(spec.status_discrete, spec.discrete_end))
        return out

    def _touches_gap(self, start: int, count: int, space: int) -> bool:
        populated = self._populated_ranges(space)
        return any(not any(addr in r for r in populated) for addr in range(start, start + count))

    def handle_pdu(self, pdu: bytes, now: float) -> bytes:
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
            return self._dispatch(fc, pdu, now)
        except _ModbusProtocolError:
            return encode_exception_response(fc, _EXC_ILLEGAL_VALUE)
        except _ModbusException as exc:
            return encode_exception_response(fc, exc.code)

    def _dispatch(self, fc: int, pdu: bytes, now: float) -> bytes:
        if fc == _FC_READ_INPUT_REGISTERS:
            req = decode_read_input_registers_request(pdu)
            if req.address + req.count > INPUT_REGISTER_COUNT:
                raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
            if self.reject_gaps and self._touches_gap(req.address, req.count, fc):
                raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
            words = self.input_registers(now)[req.address : req.address + req.count]
            return encode_read_input_registers_response(words)
        if fc == _FC_READ_DISCRETES:
            req = decode_read_discrete_inputs_request(pdu)
            end = req.address + req.count
            if end <= CHANNEL_DISCRETE_COUNT:
                if self.reject_gaps and self._touches_gap(req.address, req.count, fc):
                    raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
                bits = self.channel_discretes(now)[req.address : end]
            elif (
                req.address >= ANALYSER_STATUS_PDU
                and end <= ANALYSER_STATUS_PDU + ANALYSER_STATUS_COUNT
            ):
                offset = req.address - ANALYSER_STATUS_PDU
                bits = self.analyser_discretes(now)[offset : offset + req.count]
            else:
                raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
            return encode_read_discrete_inputs_response(bits)
        if fc == _FC_READ_COILS:
            req = decode_read_coils_request(pdu)
            addresses = range(req.address, req.address + req.count)
            if any(a not in self._coils for a in addresses):
                raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
            return encode_read_coils_response([self._coils[a] for a in addresses])
        if fc == _FC_WRITE_COIL:
            write = decode_write_single_coil_request(pdu)
            if write.address not in self._coils:
                raise _ModbusException(_EXC_ILLEGAL_ADDRESS)
            self.write_coil(write.address, write.on, now=now)
            return encode_write_single_coil_response(write.address, on=write.on)
        if fc == _FC_DIAGNOSTICS:
            if len(pdu) == 5 and pdu[1:3] != b"\x00\x00":
                raise _ModbusException(_EXC_ILLEGAL_FUNCTION)
            return encode_diagnostic_loopback_response(decode_diagnostic_loopback_request(pdu))
        raise _ModbusException(_EXC_ILLEGAL_FUNCTION)

    def write_coil(self, address: int, on: bool, *, now: float) -> CoilWrite:
        """Apply an FC05 write: store the value, act on a 0→1 edge, log it."""
        if address not in self._coils:
            raise _validation(f"coil {address} does not exist (coils: {COIL_ADDRESSES})")
        edge = on and not self._coils[address]
        self._coils[address] = bool(on)
        action, group = CoilAction.NONE, None
        if edge and address == STOP_CALIBRATION_COIL:
            self.stop_calibration()
            action = CoilAction.STOP
        elif edge:
            group = address + 1
            action = (
                CoilAction.START if self.start_calibration(group, now=now) else CoilAction.IGNORED
            )
        entry = CoilWrite(now, address, bool(on), action, group)
        self.coil_log.append(entry)
        return entry


class _ModbusException(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def describe_channels(channels: Sequence[SimChannel]) -> str:
    """Short text for logs and the CLI banner: ``I1 Oxygen 20.378 %, …``."""
    parts = []
    for c in channels:
        name = c.name if c.name is not None else "(unlabelled)"
        parts.append(f"{c.channel.value} {name} {c.value} {c.unit}")
    return ", ".join(parts)
