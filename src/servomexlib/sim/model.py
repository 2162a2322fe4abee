"""The simulated SERVOPRO 4100 as a pure state machine (docs/protocol.md, §3, §4, §12).

No I/O, no clock, no anyio: every method that depends on time takes ``now`` (seconds on any
monotonic scale the caller chooses; the line passes its line time, by default the event
loop's clock — :mod:`servomexlib.sim.clock`).

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

The channel configs are :mod:`servomexlib.sim.channels`; framing (RTU CRC, ASCII LRC) and
request splitting are pure helpers in :mod:`servomexlib.sim.framing` (re-exported here);
*when* bytes move is the line's business (:mod:`servomexlib.sim.line`).

Decisions where the device documentation is silent (docs/protocol.md, §15), all LIB:

* **Unit registers** carry the continuous unit field (3 characters, e.g. ``" % "``, ``" mA"``)
  followed by one NUL — so the worked ADU of docs/protocol.md, §4.13 comes out byte-exact.
* **Unlabelled but populated slots** (``name=None``) show ``||||||`` in continuous frames and
  six spaces in the Modbus name registers.
* **Unpopulated slots** read as zero memory: value registers ``00 00 00 00`` (0.0), name and
  unit registers all NUL, status discretes clear. With ``reject_gaps=True`` any FC04 or
  channel-FC02 read that touches an unpopulated slot is refused with exception 02.
* **Over-range** (``set_value(ch, None)``) is ``++++++`` in continuous frames and quiet NaN
  (``7F C0 00 00``) in the value registers.
* **Analyser fault** is set explicitly (``set_analyser``) *or* by any transducer's fault, as in
  the worked frame of docs/protocol.md, §3.7.
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
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta

from ..devices.models import (
    AnalyserStatus,
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    coerce_channel,
)
from ..errors import ErrorContext
from ..validation import check_address
from ..wire.channels import (
    CAL_GROUPS,
    STOP_CALIBRATION_COIL,
    encode_analyser_bits,
    encode_status_bits,
    spec_for,
)
from ..wire.continuous import build_frame, format_block, format_header, format_value
from ..wire.registers import encode_channel_block
from .channels import (
    DEFAULT_4100D_CHANNELS,
    SimChannel,
    check_channel_list,
    describe_channels,
    sim_error,
)
from .framing import (
    AsciiRequestSplitter,
    ModbusRequest,
    RequestOutcome,
    RtuRequestSplitter,
    SimRequest,
    ascii_adu,
    corrupt_adu,
    rtu_adu,
)
from .pdu import CHANNEL_DISCRETE_COUNT, COIL_ADDRESSES, INPUT_REGISTER_COUNT, answer_pdu

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
    "check_mode",
    "corrupt_adu",
    "describe_channels",
    "rtu_adu",
]


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


def check_mode(mode: ProtocolKind | str) -> ProtocolKind:
    """The simulator's wire mode: continuous, Modbus RTU or Modbus ASCII (not AUTO)."""
    try:
        kind = ProtocolKind(mode)
    except ValueError:
        raise sim_error(f"unknown simulator mode {mode!r}") from None
    if kind is ProtocolKind.AUTO:
        raise sim_error("the simulator needs a concrete mode, not auto")
    return kind


def _check_address(address: int) -> int:
    return check_address(address, ErrorContext(protocol="sim"))


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
        configs = check_channel_list(channels)
        self.mode = check_mode(mode)
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
            raise sim_error(f"channel {cid.value} is not simulated (channels: {present})") from None

    def shift_time(self, delta: float) -> None:
        """Move every stored instant by ``delta`` seconds: the same state on a timeline whose
        readings are ``delta`` larger (a simulator joining a line with another clock)."""
        for state in self._channels.values():
            state.since += delta
            state.warm_until += delta
        for cal in self._groups.values():
            if cal.started_at is not None:
                cal.started_at += delta
        self._clock_t0 += delta

    # ---------------------------------------------------------------- scenario control

    def set_mode(self, mode: ProtocolKind | str) -> None:
        self.mode = check_mode(mode)

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
            raise sim_error(f"noise must be >= 0, got {noise!r}")
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
            raise sim_error(f"{state.config.channel.value}: external inputs have no maintenance")
        state.maintenance = bool(on)

    def set_invalid(self, ch: ChannelId | str, on: bool = True) -> None:
        state = self._state(ch)
        if state.config.kind is not ChannelKind.EXTERNAL_INPUT:
            raise sim_error(f"{state.config.channel.value}: only E-channels have Invalid")
        state.invalid = bool(on)

    def set_alarm(self, ch: ChannelId | str, n: int, on: bool = True) -> None:
        if n not in (1, 2, 3, 4):
            raise sim_error(f"alarm number must be 1-4, got {n!r}")
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
                raise sim_error(f"{state.config.channel.value}: only transducers warm up")
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
            raise sim_error(f"calibration group must be 1-4, got {group!r}")
        if gas1_s < 0 or gas2_s < 0:
            raise sim_error("gas1_s and gas2_s must be >= 0")
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
            raise sim_error(
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

    def handle_pdu(self, pdu: bytes, now: float) -> bytes:
        """Answer one request PDU (function code + data) with a response PDU (normal or
        exception; see :func:`servomexlib.sim.pdu.answer_pdu`)."""
        return answer_pdu(self, pdu, now)

    def write_coil(self, address: int, on: bool, *, now: float) -> CoilWrite:
        """Apply an FC05 write: store the value, act on a 0→1 edge, log it."""
        if address not in self._coils:
            raise sim_error(f"coil {address} does not exist (coils: {COIL_ADDRESSES})")
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
