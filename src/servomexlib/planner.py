"""The wire-cost read planner (docs/protocol.md, §10). Pure: no I/O, no clock, no logging.

Theory of operation
-------------------
Every Modbus transaction costs a fixed overhead — the 50 ms of line silence the analyser needs
before each request (HW), plus its turnaround — and then wire time for the characters sent and
received. Reading two channels that lie apart either costs one read that bridges the gap (paying
the gap's registers in wire time) or two reads (paying a second overhead). Which is cheaper
depends on the baud rate, the framing and the size of the gap, so the planner computes it:

* Each requested channel contributes one *block* per address space: 7 input registers (FC04)
  and 8 discretes (FC02), at the addresses of :data:`~servomexlib.wire.channels.CHANNEL_TABLE`.
  A *value-only* channel (``plan(..., value_only=…)``: the client has its name and unit
  cached) contributes only its 2 value registers to FC04: its *span* is (value register, 2).
  Sweeps after ``identify()`` read value-only spans; at 2400 baud RTU the poll of I1 I2 I3 E1
  E2 drops from 134 to 114 characters on the wire (FC04 (0, 16) + (56, 9) instead of (0, 21)
  + (56, 14)), and at 19200 to FC04 (0, 65).
* Per address space the sorted spans are cut into consecutive groups; each group becomes one
  read from its first span's start to its last span's end, everything between included. A
  small dynamic programme over the cut points finds the partition with the least total cost
  (:meth:`WireModel.transaction_cost`), subject to the read-size limits. Ties go to fewer reads.
* The analyser-status block FC02 (1000, 16) is always a read of its own: the discretes between
  the channel block (0-79) and 1000 are undocumented, so they are never bridged.
* Reads come out in sweep order: FC04 reads, channel FC02 reads, the analyser read.
* A sweep asks the same question every tick, so plans are memoised per (channels, value-only
  set, analyser read); the memo is emptied whenever what a plan depends on changes (the model,
  e.g. a learned silence; a span policy; an unreadable slot).

Some firmware may refuse reads that cover unmapped addresses. The planner learns that only from
Modbus exception 02 (Illegal Data Address), per address space, in three steps
(docs/protocol.md, §10.4):
a rejected gap-bridging read makes the space *gap-free* (only adjacent blocks merge); a rejected
gap-free multi-block read makes it *per-block*; a rejected single block marks that channel slot
unreadable, and later plans omit it. A timeout teaches nothing: it says nothing about addresses.

A *gap* is an address in no requested channel's whole block: the name and unit registers a
value-only read of I1 and I2 passes over (FC04 (0, 9)) belong to a requested slot, which the
device maps (identify read them), so that read is gap-free; FC04 (14, 44) from I3 to E1 bridges
the unrequested slots I4-D4. So the learned policies mean the same with value-only spans as with
whole blocks: gap-free reads never touch a slot that was not asked for.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from collections.abc import Iterable

from .devices.models import ChannelId, ProtocolKind, coerce_channel
from .errors import ErrorContext, ServomexValidationError
from .settings import SerialSettings
from .wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CHANNEL_TABLE,
    DISCRETES_PER_CHANNEL,
    REGISTERS_PER_CHANNEL,
    spec_for,
)

__all__ = [
    "MAX_READ_DISCRETES",
    "MAX_READ_REGISTERS",
    "VALUE_REGISTERS",
    "PlannedRead",
    "ReadFunction",
    "ReadPlanner",
    "SpanPolicy",
    "WireModel",
]

#: Modbus application protocol limits for one read (FC04: 125 registers, FC02: 2000 bits).
MAX_READ_REGISTERS = 125
MAX_READ_DISCRETES = 2000
#: FC04 registers of a value-only span: the float32 value (docs/protocol.md, §4.3).
VALUE_REGISTERS = 2


class ReadFunction(enum.IntEnum):
    """The two read function codes a sweep uses."""

    READ_DISCRETE_INPUTS = 0x02  # per-channel status (PDU 0-79) and analyser status (1000-1015)
    READ_INPUT_REGISTERS = 0x04  # channel blocks: value, name, unit (PDU 0-69)


class SpanPolicy(enum.StrEnum):
    """How far reads in one address space may reach, as learned from exception 02."""

    COST = "cost"  # any partition; the cheapest wins (the default)
    GAP_FREE = "gap_free"  # only adjacent blocks merge into one read
    PER_BLOCK = "per_block"  # one read per channel block


_POLICY_RANK = {SpanPolicy.COST: 0, SpanPolicy.GAP_FREE: 1, SpanPolicy.PER_BLOCK: 2}


@dataclasses.dataclass(frozen=True, slots=True)
class _FramingChars:
    """Characters on the wire per framing (docs/protocol.md, §10.1)."""

    request: int  # a read request ADU
    registers_base: int  # FC04 response without data
    per_register: int  # FC04 response characters per register
    bits_base: int  # FC02 response without data
    per_bit_byte: int  # FC02 response characters per data byte


_CHARS = {
    # RTU: addr fc addr(2) count(2) crc(2) = 8; response addr fc bc data crc(2).
    ProtocolKind.MODBUS_RTU: _FramingChars(8, 5, 2, 5, 1),
    # ASCII: ':' + 2 hex per byte of addr·PDU·LRC + CR LF; request 1 + 2·7 + 2 = 17.
    ProtocolKind.MODBUS_ASCII: _FramingChars(17, 11, 4, 11, 2),
}


@dataclasses.dataclass(frozen=True, slots=True)
class WireModel:
    """What one transaction costs on a line (docs/protocol.md, §10.1).

    ``cost = silence_s + turnaround_s + (request chars + response chars) × char_time_s`` with
    ``char_time_s = bits_per_char / baudrate``. The 20 ms turnaround is an estimate
    (docs/protocol.md, §15 #17).
    A client re-plans with its line's current silence (:meth:`with_silence`) once the line has
    learned that it needs more than 50 ms.

    Raises:
        ServomexValidationError: a non-Modbus framing, or a non-positive baud rate or character
            size, or a negative silence/turnaround.
    """

    baudrate: int = 19200
    framing: ProtocolKind = ProtocolKind.MODBUS_RTU
    bits_per_char: int = 10
    silence_s: float = 0.05
    turnaround_s: float = 0.020

    def __post_init__(self) -> None:
        try:
            framing = ProtocolKind(self.framing)
        except ValueError:
            framing = None
        if framing not in _CHARS:
            raise ServomexValidationError(
                f"the read planner needs a Modbus framing, got {self.framing!r}",
                context=ErrorContext(protocol=self.framing),
            )
        object.__setattr__(self, "framing", framing)
        for name in ("baudrate", "bits_per_char"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ServomexValidationError(f"{name} must be a positive integer, got {value!r}")
        for name in ("silence_s", "turnaround_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ServomexValidationError(f"{name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_settings(cls, settings: SerialSettings, framing: ProtocolKind | str) -> WireModel:
        """The model for a line opened with ``settings`` (baud rate and character size)."""
        return cls(
            baudrate=settings.baudrate,
            framing=ProtocolKind(framing),
            bits_per_char=settings.bits_per_char,
        )

    def with_silence(self, silence_s: float) -> WireModel:
        """This model with another pre-request silence (``self`` when it is the same)."""
        if silence_s == self.silence_s:
            return self
        return dataclasses.replace(self, silence_s=silence_s)

    @property
    def char_time_s(self) -> float:
        """Seconds one character occupies on the line."""
        return self.bits_per_char / self.baudrate

    def request_chars(self) -> int:
        """Characters of one read request ADU."""
        return _CHARS[self.framing].request

    def response_chars(self, function_code: int, count: int) -> int:
        """Characters of the normal response to a read of ``count`` items with ``function_code``.

        Raises:
            ServomexValidationError: a function code other than 02 or 04, or ``count`` < 1.
        """
        chars = _CHARS[self.framing]
        if count < 1:
            raise ServomexValidationError(f"a read covers at least one item, got {count}")
        if function_code == ReadFunction.READ_INPUT_REGISTERS:
            return chars.registers_base + chars.per_register * count
        if function_code == ReadFunction.READ_DISCRETE_INPUTS:
            return chars.bits_base + chars.per_bit_byte * math.ceil(count / 8)
        raise ServomexValidationError(
            f"the planner only costs FC02 and FC04 reads, got function code {function_code}",
            context=ErrorContext(function_code=function_code),
        )

    def transaction_cost(self, function_code: int, count: int) -> float:
        """Seconds one read transaction is expected to take, silence included."""
        chars = self.request_chars() + self.response_chars(function_code, count)
        return self.silence_s + self.turnaround_s + chars * self.char_time_s


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedRead:
    """One read of a sweep: ``count`` items from PDU ``address`` with ``function_code``.

    ``channels`` are the channel slots whose blocks the read covers, in address order; it is
    empty for the analyser-status read. ``cost_s`` is the model's estimate for the read.
    ``value_only`` are the channels of an FC04 read that are read as their 2 value registers
    only (name and unit cached by the client); the others' whole 7-register blocks are read.
    """

    function_code: int
    address: int
    count: int
    channels: tuple[ChannelId, ...]
    cost_s: float
    value_only: frozenset[ChannelId] = frozenset()

    @property
    def end(self) -> int:
        """One past the last PDU address read."""
        return self.address + self.count

    @property
    def block_size(self) -> int:
        """Items per channel block in this read's address space."""
        if self.function_code == ReadFunction.READ_INPUT_REGISTERS:
            return REGISTERS_PER_CHANNEL
        return DISCRETES_PER_CHANNEL

    def items_of(self, channel: ChannelId) -> int:
        """Items this read returns for ``channel``: 2 when value-only, else its whole block."""
        return VALUE_REGISTERS if channel in self.value_only else self.block_size

    @property
    def is_analyser(self) -> bool:
        """True for the analyser-status read FC02 (1000, 16)."""
        return not self.channels and self.function_code == ReadFunction.READ_DISCRETE_INPUTS

    @property
    def bridges_gap(self) -> bool:
        """True when the read also covers addresses in none of its channels' whole blocks
        (a value-only read passing over a requested slot's name and unit bridges nothing)."""
        starts = [self.offset_of(c) for c in self.channels]
        return any(b - a > self.block_size for a, b in itertools.pairwise(starts))

    def offset_of(self, channel: ChannelId) -> int:
        """Where ``channel``'s block starts within this read's data (items from ``address``)."""
        spec = spec_for(channel)
        start = (
            spec.value_register
            if self.function_code == ReadFunction.READ_INPUT_REGISTERS
            else spec.status_discrete
        )
        return start - self.address


@dataclasses.dataclass(frozen=True, slots=True)
class _Block:
    """One channel's span in one address space: [start, end) is read, [start, block_end) is
    the channel's whole block (the two differ for a value-only FC04 span)."""

    channel: ChannelId
    start: int
    end: int
    block_end: int


def _blocks(
    function_code: ReadFunction, channels: Iterable[ChannelId], value_only: frozenset[ChannelId]
) -> list[_Block]:
    out: list[_Block] = []
    for channel in channels:
        spec = spec_for(channel)
        if function_code is ReadFunction.READ_INPUT_REGISTERS:
            start = spec.value_register
            end = start + VALUE_REGISTERS if channel in value_only else spec.register_end
            out.append(_Block(channel, start, end, spec.register_end))
        else:
            out.append(_Block(channel, spec.status_discrete, spec.discrete_end, spec.discrete_end))
    out.sort(key=lambda b: b.start)
    return out


_TABLE_ORDER = {spec.channel: i for i, spec in enumerate(CHANNEL_TABLE)}
_COST_EPSILON = 1e-12  # costs within this are ties (float noise), resolved by fewer reads
_PLAN_CACHE = 64  # plans kept per planner (a client asks a handful of distinct questions)


class ReadPlanner:
    """Chooses the FC04/FC02 reads that minimise wire time, and learns from exception 02.

    Args:
        model: the line's cost model.
        max_registers: largest FC04 read (7-125).
        max_discretes: largest FC02 read (16-2000).

    Raises:
        ServomexValidationError: a limit outside its range (a read must fit one channel block
            and the 16-bit analyser block).
    """

    def __init__(
        self,
        model: WireModel | None = None,
        *,
        max_registers: int = MAX_READ_REGISTERS,
        max_discretes: int = MAX_READ_DISCRETES,
    ) -> None:
        if not REGISTERS_PER_CHANNEL <= max_registers <= MAX_READ_REGISTERS:
            raise ServomexValidationError(
                f"max_registers must be {REGISTERS_PER_CHANNEL}-{MAX_READ_REGISTERS}, "
                f"got {max_registers}"
            )
        if not ANALYSER_STATUS_COUNT <= max_discretes <= MAX_READ_DISCRETES:
            raise ServomexValidationError(
                f"max_discretes must be {ANALYSER_STATUS_COUNT}-{MAX_READ_DISCRETES}, "
                f"got {max_discretes}"
            )
        self._model = model if model is not None else WireModel()
        self._max = {
            ReadFunction.READ_INPUT_REGISTERS: max_registers,
            ReadFunction.READ_DISCRETE_INPUTS: max_discretes,
        }
        self._policy: dict[ReadFunction, SpanPolicy] = {}
        self._unreadable: set[ChannelId] = set()
        # Plans by request: a sweep asks the same question every tick. Emptied whenever
        # anything a plan depends on changes (the model, a policy, an unreadable slot).
        self._plans: dict[tuple[object, ...], tuple[PlannedRead, ...]] = {}
        self.reset()

    def __repr__(self) -> str:
        policies = ", ".join(f"fc{int(fc):02d}={p.value}" for fc, p in self._policy.items())
        bad = ",".join(c.value for c in sorted(self._unreadable, key=_TABLE_ORDER.__getitem__))
        return (
            f"ReadPlanner({self._model.framing.value} @ {self._model.baudrate} baud, "
            f"{policies}, unreadable=[{bad}])"
        )

    @property
    def model(self) -> WireModel:
        """The cost model. Assigning one (e.g. the same line with a longer learned silence)
        keeps everything learned."""
        return self._model

    @model.setter
    def model(self, model: WireModel) -> None:
        if not isinstance(model, WireModel):
            raise ServomexValidationError(f"model must be a WireModel, got {model!r}")
        if model != self._model:
            self._plans.clear()
        self._model = model

    @property
    def max_registers(self) -> int:
        return self._max[ReadFunction.READ_INPUT_REGISTERS]

    @property
    def max_discretes(self) -> int:
        return self._max[ReadFunction.READ_DISCRETE_INPUTS]

    @property
    def unreadable(self) -> frozenset[ChannelId]:
        """Channel slots the device refused even as a single block; plans omit them."""
        return frozenset(self._unreadable)

    def policy(self, function_code: int) -> SpanPolicy:
        """The learned span policy of the FC02 or FC04 address space.

        Raises:
            ServomexValidationError: any other function code.
        """
        return self._policy[self._space(function_code)]

    def reset(self) -> None:
        """Forget everything learned: both spaces back to COST, no unreadable slots."""
        self._policy = dict.fromkeys(ReadFunction, SpanPolicy.COST)
        self._unreadable = set()
        self._plans.clear()

    def cost(self, reads: Iterable[PlannedRead]) -> float:
        """Total estimated seconds of ``reads``."""
        return sum(read.cost_s for read in reads)

    def plan(
        self,
        channels: Iterable[ChannelId | str],
        *,
        include_analyser: bool = True,
        value_only: bool | Iterable[ChannelId | str] = False,
    ) -> tuple[PlannedRead, ...]:
        """The reads of one sweep over ``channels`` (duplicates ignored, unreadable omitted).

        Returns FC04 reads, then channel FC02 reads, then (with ``include_analyser``) the
        analyser-status read FC02 (1000, 16). Every requested readable channel is covered by
        exactly one read per address space. ``value_only`` names the channels whose FC04 span
        is their 2 value registers (True: every channel; False, the default: none — whole
        7-register blocks, as before); channels it names that are not requested are ignored.

        Raises:
            ServomexValidationError: an unknown channel id.
        """
        asked = tuple(channels)
        values = value_only if isinstance(value_only, bool) else tuple(value_only)
        try:
            values_key = values if isinstance(values, bool) else frozenset(values)
            key = (asked, include_analyser, values_key)
            cached = self._plans.get(key)
        except TypeError:  # an unhashable item: not a channel id, refused by the planning
            return self._plan(asked, include_analyser, values)
        if cached is None:
            cached = self._plan(asked, include_analyser, values)
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            self._plans[key] = cached
        return cached

    def _plan(
        self,
        channels: tuple[ChannelId | str, ...],
        include_analyser: bool,
        value_only: bool | tuple[ChannelId | str, ...],
    ) -> tuple[PlannedRead, ...]:
        wanted = {coerce_channel(c) for c in channels} - self._unreadable
        ordered = sorted(wanted, key=_TABLE_ORDER.__getitem__)
        if value_only is True:
            values = frozenset(ordered)
        elif value_only is False:
            values = frozenset()
        else:
            values = frozenset(coerce_channel(c) for c in value_only) & wanted
        reads: list[PlannedRead] = []
        if ordered:
            reads += self._plan_space(ReadFunction.READ_INPUT_REGISTERS, ordered, values)
            reads += self._plan_space(ReadFunction.READ_DISCRETE_INPUTS, ordered, frozenset())
        if include_analyser:
            reads.append(self.analyser_read())
        return tuple(reads)

    def analyser_read(self) -> PlannedRead:
        """The analyser-status read FC02 (1000, 16), never merged with anything."""
        fc = ReadFunction.READ_DISCRETE_INPUTS
        return PlannedRead(
            fc,
            ANALYSER_STATUS_PDU,
            ANALYSER_STATUS_COUNT,
            (),
            self._model.transaction_cost(fc, ANALYSER_STATUS_COUNT),
        )

    def learn_rejection(self, read: PlannedRead) -> bool:
        """Learn from exception 02 on ``read``; True if plans change (re-run the step once).

        A gap-bridging read makes its space GAP_FREE; a gap-free read of several blocks makes it
        PER_BLOCK; a single block marks its channel unreadable. Nothing is learned from the
        analyser read or from a read the current state already excludes (returns False).
        """
        if read.function_code not in (
            ReadFunction.READ_DISCRETE_INPUTS,
            ReadFunction.READ_INPUT_REGISTERS,
        ):
            return False
        space = ReadFunction(read.function_code)
        if not read.channels:
            return False
        if len(read.channels) == 1:
            if read.channels[0] in self._unreadable:
                return False
            self._unreadable.add(read.channels[0])
            self._plans.clear()
            return True
        target = SpanPolicy.GAP_FREE if read.bridges_gap else SpanPolicy.PER_BLOCK
        if _POLICY_RANK[target] <= _POLICY_RANK[self._policy[space]]:
            return False
        self._policy[space] = target
        self._plans.clear()
        return True

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _space(function_code: int) -> ReadFunction:
        try:
            return ReadFunction(function_code)
        except ValueError:
            raise ServomexValidationError(
                f"no read plan for function code {function_code}; expected 2 or 4",
                context=ErrorContext(function_code=function_code),
            ) from None

    def _allowed(self, fc: ReadFunction, blocks: list[_Block], first: int, last: int) -> bool:
        """May blocks[first..last] (inclusive) form one read under the limits and policy?"""
        if blocks[last].end - blocks[first].start > self._max[fc]:
            return False
        policy = self._policy[fc]
        if policy is SpanPolicy.PER_BLOCK:
            return first == last
        if policy is SpanPolicy.GAP_FREE:
            return all(blocks[i].block_end == blocks[i + 1].start for i in range(first, last))
        return True

    def _plan_space(
        self, fc: ReadFunction, channels: list[ChannelId], value_only: frozenset[ChannelId]
    ) -> list[PlannedRead]:
        """Cheapest partition of the space's sorted spans into consecutive reads (DP)."""
        blocks = _blocks(fc, channels, value_only)
        n = len(blocks)
        # best[i] = (cost, reads, cut) of the cheapest plan for blocks[:i]; cut = start of the
        # last read. A single block always fits (the limits are at least one block).
        best: list[tuple[float, int, int]] = [(0.0, 0, 0)] + [(math.inf, 0, 0)] * n
        for i in range(1, n + 1):
            for j in range(i):
                if not self._allowed(fc, blocks, j, i - 1):
                    continue
                span = blocks[i - 1].end - blocks[j].start
                cost = best[j][0] + self._model.transaction_cost(fc, span)
                count = best[j][1] + 1
                cur_cost, cur_count, _ = best[i]
                if cost < cur_cost - _COST_EPSILON or (
                    abs(cost - cur_cost) <= _COST_EPSILON and count < cur_count
                ):
                    best[i] = (cost, count, j)
        reads: list[PlannedRead] = []
        i = n
        while i > 0:
            j = best[i][2]
            start, end = blocks[j].start, blocks[i - 1].end
            members = tuple(b.channel for b in blocks[j:i])
            reads.append(
                PlannedRead(
                    fc,
                    start,
                    end - start,
                    members,
                    self._model.transaction_cost(fc, end - start),
                    value_only & frozenset(members),
                )
            )
            i = j
        reads.reverse()
        return reads
