"""What a Modbus sweep read becomes: the per-channel data, the name/unit cache, readings (private).

Pure: no I/O. :class:`~servomexlib.clients.modbus.ModbusClient` runs the planner's reads and
hands each reply to :meth:`SweepData.store`; :func:`build_readings` turns the collected data
into readings in channel-table order (docs/protocol.md, §4.3-§4.8, §5).

Theory of operation
-------------------
A slot whose name and unit are cached (by ``identify()`` or by its first whole-block read) is
read value-only — its 2 value registers — and its reading takes name and unit from the cache,
with ``raw`` the 4 value bytes as received (docs/protocol.md, §10.2). A slot read whole is decoded
from its 7-register block; its first whole read fills the cache, later ones keep the cached
name and unit (only ``identify()`` refreshes them, :func:`cache_identity`). A reading needs
both the slot's registers and its status discretes; a slot missing either (refused, exception
02) is left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime

from ..devices.models import (
    ChannelId,
    ChannelInfo,
    ProtocolKind,
    Reading,
    ValueState,
    build_reading,
)
from ..planner import VALUE_REGISTERS, PlannedRead, ReadFunction
from ..units import Unit
from ..wire.channels import CHANNEL_TABLE, DISCRETES_PER_CHANNEL, decode_status_bits
from ..wire.registers import (
    decode_channel_block,
    decode_float32_value,
    decode_modbus_name,
    decode_modbus_unit,
    slot_populated,
    words_to_bytes,
)

__all__ = ["Meta", "SweepData", "build_readings", "cache_identity"]


@dataclasses.dataclass(frozen=True, slots=True)
class Meta:
    """A slot's cached name and unit."""

    name: str | None
    unit: Unit


@dataclasses.dataclass(slots=True)
class SweepData:
    """The registers and discretes one sweep (or one ``read_channel``) has collected."""

    registers: dict[ChannelId, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    bits: dict[ChannelId, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    analyser: tuple[bool, ...] | None = None

    def covers(self, read: PlannedRead) -> bool:
        """Whether ``read``'s data is already in (a re-planned step keeps reads done)."""
        if read.is_analyser:
            return self.analyser is not None
        done = (
            self.registers if read.function_code == ReadFunction.READ_INPUT_REGISTERS else self.bits
        )
        return all(c in done for c in read.channels)

    def store_registers(self, read: PlannedRead, words: tuple[int, ...]) -> None:
        """File the FC04 reply to ``read`` under its channels."""
        for ch in read.channels:
            off = read.offset_of(ch)
            self.registers[ch] = words[off : off + read.items_of(ch)]

    def store_bits(self, read: PlannedRead, bits: tuple[bool, ...]) -> None:
        """File the FC02 reply to ``read`` under its channels (or as the analyser block)."""
        if read.is_analyser:
            self.analyser = bits
        for ch in read.channels:
            off = read.offset_of(ch)
            self.bits[ch] = bits[off : off + DISCRETES_PER_CHANNEL]


def build_readings(
    data: SweepData,
    meta: dict[ChannelId, Meta],
    protocol: ProtocolKind,
    received_at: datetime,
    monotonic_ns: int,
) -> tuple[Reading, ...]:
    """The readings of ``data`` in channel-table order; fills ``meta`` for first reads."""
    readings: list[Reading] = []
    for spec in CHANNEL_TABLE:
        ch = spec.channel
        if ch not in data.registers or ch not in data.bits:
            continue
        status = decode_status_bits(spec.kind, data.bits[ch])
        words = data.registers[ch]
        cached = meta.get(ch)
        if len(words) == VALUE_REGISTERS and cached is not None:
            # A value-only read: the name and unit are the cached ones; raw is the 4 value
            # bytes as received.
            raw = words_to_bytes(words)
            value = decode_float32_value(raw)
            reading = build_reading(
                ch,
                spec.kind,
                cached.name,
                value,
                cached.unit,
                status,
                protocol,
                received_at,
                monotonic_ns,
                raw,
                ValueState.INVALID if value is None else ValueState.OK,
            )
        else:
            reading = decode_channel_block(
                ch,
                words,
                status,
                received_at=received_at,
                monotonic_ns=monotonic_ns,
                protocol=protocol,
            )
            if cached is None:  # first read of this slot: cache its name and unit
                meta[ch] = Meta(reading.name, reading.unit)
            elif reading.name != cached.name or reading.unit != cached.unit:
                reading = dataclasses.replace(reading, name=cached.name, unit=cached.unit)
        readings.append(reading)
    return tuple(readings)


def cache_identity(
    blocks: Mapping[ChannelId, bytes], meta: dict[ChannelId, Meta]
) -> tuple[ChannelInfo, ...]:
    """Refresh ``meta`` from whole 7-register blocks (as bytes); returns the populated slots.

    A slot is populated when its name registers hold a label (not blank, not ``||||||``) or its
    unit registers are not blank (docs/protocol.md, §4.7); an unlabelled slot that reports a
    unit is listed with name None.
    """
    infos: list[ChannelInfo] = []
    for spec in CHANNEL_TABLE:
        block = blocks.get(spec.channel)
        if block is None:
            continue
        text = block[4:14]
        entry = Meta(decode_modbus_name(text[:6]), decode_modbus_unit(text[6:]))
        meta[spec.channel] = entry
        if slot_populated(text[:6], text[6:]):
            infos.append(ChannelInfo(spec.channel, spec.kind, entry.name, entry.unit))
    return tuple(infos)
