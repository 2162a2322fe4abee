"""The Modbus RTU/ASCII client: anymodbus over our transport (docs/protocol.md, §4, §5, §9, §12).

Theory of operation
-------------------
A :class:`ModbusClient` is one analyser — one slave address — on a
:class:`~servomexlib.clients.modbus_line.ModbusLine`, the serial line it shares with every other
slave on the port. The work is split by concern:

* :mod:`.modbus_line` — the line: the transport as anymodbus sees it (every byte stamped), the
  50 ms silence before every request, the late-reply window, the fence state per address and
  the fence and probe exchanges;
* :mod:`.modbus_learning` — what the line learns, pure: reply times and the learned wait,
  turnarounds, the learned silence;
* :mod:`.modbus_fence` — the fence's pure parts: fresh payloads, the reply matcher;
* :mod:`.modbus_outcomes` — the declarative table: each anymodbus exception → retryable?
  leaves the line uncertain? which ``Servomex*`` error (docs/protocol.md, §4.14);
* :mod:`.modbus_attempts` — the attempt loop that reads the table: fence, silence, one
  attempt, classify, retry (docs/protocol.md, §9.2-§9.4);
* this module — the operations: sweeps, single reads, identify, calibration, loopback, probe.

**Errors** (docs/protocol.md, §4.14) are translated by the outcome table and nowhere else:
exception 01/02/other → ``ServomexIllegalFunctionError`` / ``ServomexIllegalDataAddressError`` /
``ServomexModbusError``; no valid reply after the retries → ``ServomexTimeoutError``; a closed
or lost port → ``ServomexConnectionError``; a well-formed reply that does not answer the
request → ``ServomexProtocolError``; bad parameters → ``ServomexValidationError`` before any
I/O. Every error carries port, protocol, address, function code, register (or 1-based coil),
channel, the request ADU, the bytes received for it and the time spent.

**Sweeps** follow the :class:`~servomexlib.planner.ReadPlanner`: FC04 reads, channel FC02 reads,
then FC02 (1000, 16). A slot whose name and unit are cached (by ``identify()`` or by its first
read) is read value-only — its 2 value registers, not its 7-register block — and its reading
takes name and unit from the cache, with ``raw`` the 4 value bytes as received; a slot read for
the first time is read whole, which fills the cache. ``read_channel`` always reads the whole
block (docs/protocol.md, §5), names still from the cache; only ``identify()`` refreshes it. An
exception 02 is fed to the planner; when that changes the plan the step is re-run once with the
new plan (reads already done are kept). Timeouts never change the plan.

``statistics()`` shows ``learned_wait_s``, ``silence_s``, the turnaround percentiles and the
counters; ``servomex diag link`` prints them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anymodbus

from ..devices.models import (
    AnalyserStatus,
    CalibrationProgress,
    Capability,
    ChannelId,
    ChannelStatus,
    DeviceInfo,
    Frame,
    ProtocolKind,
    Reading,
)
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexIllegalDataAddressError,
    ServomexProtocolError,
    ServomexValidationError,
)
from ..planner import PlannedRead, ReadFunction, ReadPlanner, WireModel
from ..settings import SerialSettings
from ..validation import check_address, check_timeout
from ..wire.channels import (
    ANALYSER_STATUS_COUNT,
    ANALYSER_STATUS_PDU,
    CAL_GROUPS,
    CAL_STATUS_COUNT,
    CAL_STATUS_PDU,
    CHANNEL_TABLE,
    DISCRETES_PER_CHANNEL,
    REGISTERS_PER_CHANNEL,
    STOP_CALIBRATION_COIL,
    calibration_progress,
    decode_analyser_bits,
    decode_status_bits,
    spec_for,
    start_calibration_coil,
)
from ..wire.registers import (
    words_to_bytes,
)
from .modbus_attempts import FC_DIAGNOSTICS, RETRIES, CallTimeout, ModbusStatistics, Transactions
from .modbus_line import SILENCE_S, ModbusLine, check_framing
from .modbus_outcomes import context_fields
from .modbus_sweep import Meta, SweepData, build_readings, cache_identity

if TYPE_CHECKING:
    from ..transport.base import Transport

__all__ = [
    "DEFAULT_TIMEOUT",
    "MODEL_NAME",
    "RETRIES",
    "SILENCE_S",
    "ModbusClient",
    "ModbusLine",
    "ModbusStatistics",
]

_log = logging.getLogger("servomexlib.modbus")

DEFAULT_TIMEOUT = 1.0  # per-attempt response timeout (LIB)
MODEL_NAME = "4000-series"  # the unit reports no model identity anywhere (docs/protocol.md, §15)
LOOPBACK_PAYLOAD_LEN = 2
_FC_READ_COILS = 0x01
_FC_WRITE_COIL = 0x05


class ModbusClient:
    """One analyser (slave address) in Modbus RTU or ASCII mode; implements ``ControlClient``.

    Args:
        transport_or_line: a transport (the client creates and owns a line over it, and closes
            it in :meth:`aclose`) or an existing :class:`ModbusLine` shared with other slaves
            (not closed by the client).
        framing: ``MODBUS_RTU`` or ``MODBUS_ASCII``; must match a given line's framing.
        address: slave address 1-247.
        timeout: default per-attempt response timeout in seconds.
        device: label for logs.
        planner: the read planner; default one for the line's baud rate and framing.

    Raises:
        ServomexValidationError: bad framing, address or timeout, or a line of another framing.
    """

    capabilities: Capability = (
        Capability.READ_CHANNELS
        | Capability.READ_STATUS
        | Capability.IDENTIFY
        | Capability.AUTOCAL
        | Capability.LOOPBACK
    )

    def __init__(
        self,
        transport_or_line: Transport | ModbusLine,
        *,
        framing: ProtocolKind | str,
        address: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        device: str = "",
        planner: ReadPlanner | None = None,
    ) -> None:
        kind = check_framing(framing)
        check_address(address, ErrorContext(protocol=kind))
        check_timeout(timeout, ErrorContext(protocol=kind, address=address))
        if isinstance(transport_or_line, ModbusLine):
            if transport_or_line.framing is not kind:
                raise ServomexValidationError(
                    f"line speaks {transport_or_line.framing.value}, client asked for {kind.value}",
                    context=ErrorContext(port=transport_or_line.transport.label, protocol=kind),
                )
            self._line = transport_or_line
            self._owns_line = False
        else:
            self._line = ModbusLine(transport_or_line, framing=kind)
            self._owns_line = True
        self.protocol: ProtocolKind = kind
        self.transport: Transport = self._line.transport
        self.address: int = address
        self.device = device or self.transport.label
        self._timeout = float(timeout)
        settings = self.transport.serial_settings
        if planner is None:
            model = (
                WireModel.from_settings(settings, kind)
                if settings is not None
                else WireModel(framing=kind)
            )
            planner = ReadPlanner(model)
        self.read_planner: ReadPlanner = planner
        self._planned_silence = self._line.base_silence_s
        self._tx = Transactions(self._line, address, kind, self.device)
        self._counters = self._tx.counters
        self._meta: dict[ChannelId, Meta] = {}
        self._populated: tuple[ChannelId, ...] | None = None
        self._warned_unreadable: set[ChannelId] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<ModbusClient {self.transport.label!r} {self.protocol.value} address={self.address} "
            f"transactions={self._counters.transactions} timeouts={self._counters.timeouts}>"
        )

    @property
    def line(self) -> ModbusLine:
        return self._line

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def sweep_channels(self) -> tuple[ChannelId, ...]:
        """The slots a sweep covers: those ``identify()`` found populated, else all ten."""
        return self._populated if self._populated else tuple(s.channel for s in CHANNEL_TABLE)

    def statistics(self) -> ModbusStatistics:
        return self._tx.statistics()

    def sweep_plan(self) -> tuple[PlannedRead, ...]:
        """The reads the next :meth:`poll` will make (no I/O): value-only spans for the slots
        whose name and unit are cached, costed with the line's current silence — e.g. for a
        rate check on an open analyser."""
        return self._plan(self.sweep_channels, include_analyser=True)

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Nothing runs in the background in Modbus mode."""

    async def aclose(self) -> None:
        """Close the line (and so the transport) if this client created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_line:
            await self._line.aclose()

    # -- public operations ----------------------------------------------------------------

    async def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        """One sweep (docs/protocol.md, §5) over :attr:`sweep_channels`; ``wait_fresh`` is a no-op.

        Slots the device refused even singly are omitted (one warning each).
        """
        t = self._resolve_timeout(timeout)
        received_at, mono_ns, started = _stamp()
        data = await self._sweep(self.sweep_channels, t, include_analyser=True)
        readings = build_readings(data, self._meta, self.protocol, received_at, mono_ns)
        assert data.analyser is not None
        analyser = decode_analyser_bits(data.analyser)
        latency = time.monotonic() - started
        return Frame(
            readings=readings,
            analyser=analyser,
            protocol=self.protocol,
            received_at=received_at,
            monotonic_ns=mono_ns,
            raw=b"".join(r.raw for r in readings),
            requested_at=received_at,
            latency_s=latency,
        )

    async def read_channel(self, ch: ChannelId, *, timeout: float | None = None) -> Reading:
        """FC04 (block, 7) then FC02 (block, 8).

        Raises:
            ServomexIllegalDataAddressError: the slot is (or turns out to be) unreadable.
        """
        t = self._resolve_timeout(timeout)
        channel = ChannelId(ch)
        if channel in self.read_planner.unreadable:
            raise ServomexIllegalDataAddressError(
                f"channel {channel.value} was refused by the device (exception 02)",
                context=self._context(channel=channel, register=spec_for(channel).value_register),
            )
        received_at, mono_ns, _ = _stamp()
        data = SweepData()
        for read in self.read_planner.plan([channel], include_analyser=False):
            try:
                await self._execute(read, data, t)
            except ServomexIllegalDataAddressError:
                if self.read_planner.learn_rejection(read):
                    self._warn_unreadable()
                raise
        return build_readings(data, self._meta, self.protocol, received_at, mono_ns)[0]

    async def status(self, ch: ChannelId, *, timeout: float | None = None) -> ChannelStatus:
        """FC02 (status block, 8), decoded with the channel kind's rules."""
        t = self._resolve_timeout(timeout)
        channel = ChannelId(ch)
        spec = spec_for(channel)
        bits = await self._read_bits(
            spec.status_discrete, DISCRETES_PER_CHANNEL, t, channel=channel
        )
        return decode_status_bits(channel.kind, bits)

    async def analyser_status(self, *, timeout: float | None = None) -> AnalyserStatus:
        """FC02 (1000, 16); ``clock`` is always None over Modbus."""
        t = self._resolve_timeout(timeout)
        bits = await self._read_bits(ANALYSER_STATUS_PDU, ANALYSER_STATUS_COUNT, t)
        return decode_analyser_bits(bits)

    async def identify(self, *, timeout: float | None = None) -> DeviceInfo:
        """FC04 (0, 70) on every call: refresh the name/unit cache and list populated slots.

        A slot is populated when its name registers hold a label (not blank, not ``||||||``)
        or its unit registers are not blank (docs/protocol.md, §4.7): ``||||||`` with a blank
        unit is an empty slot; an unlabelled slot that reports a unit is listed with name None.
        Later sweeps cover only those slots; when none qualifies, sweeps stay at all ten.

        Firmware that refuses the broad read with exception 02 (it covers unmapped slots) is
        asked slot by slot instead, FC04 (block, 7); a slot refused on its own is unpopulated
        and marked unreadable in the read planner (docs/protocol.md, §10.4).
        """
        t = self._resolve_timeout(timeout)
        total = len(CHANNEL_TABLE) * REGISTERS_PER_CHANNEL
        blocks: dict[ChannelId, bytes] = {}
        try:
            raw = words_to_bytes(await self._read_registers(0, total, t))
        except ServomexIllegalDataAddressError:
            _log.info("%s: FC04 (0, %d) refused; identifying slot by slot", self.device, total)
            for spec in CHANNEL_TABLE:
                read = self.read_planner.plan([spec.channel], include_analyser=False)
                if not read:  # already known unreadable
                    continue
                try:
                    words = await self._read_registers(
                        spec.value_register, REGISTERS_PER_CHANNEL, t, channel=spec.channel
                    )
                except ServomexIllegalDataAddressError:
                    # An unmapped slot: unpopulated, and unreadable for read_channel. Sweeps
                    # never asked for it, so this is not worth a warning.
                    if self.read_planner.learn_rejection(read[0]):
                        self._warned_unreadable.add(spec.channel)
                        _log.info("%s: slot %s is not mapped", self.device, spec.channel.value)
                    continue
                blocks[spec.channel] = words_to_bytes(words)
        else:
            for spec in CHANNEL_TABLE:
                blocks[spec.channel] = raw[spec.value_register * 2 : spec.register_end * 2]
        infos = cache_identity(blocks, self._meta)
        self._populated = tuple(i.channel for i in infos) or None
        settings = self.transport.serial_settings
        return DeviceInfo(
            model=MODEL_NAME,
            channels=infos,
            protocol=self.protocol,
            address=self.address,
            serial_settings=settings
            if settings is not None
            else SerialSettings(self.transport.label),
        )

    async def start_calibration(self, group: int, *, timeout: float | None = None) -> None:
        """Pulse the group's start coil: FC05 ON → FC01 read-back → FC05 OFF (docs/protocol.md
        §4.10)."""
        t = self._resolve_timeout(timeout)
        if group not in CAL_GROUPS:
            raise ServomexValidationError(
                f"calibration group must be 1-4, got {group!r}", context=self._context()
            )
        await self._pulse(start_calibration_coil(group), t)

    async def stop_calibration(self, *, timeout: float | None = None) -> None:
        """Pulse coil 00009 (PDU 8), which stops every group."""
        await self._pulse(STOP_CALIBRATION_COIL, self._resolve_timeout(timeout))

    async def calibration_status(
        self, group: int, *, timeout: float | None = None
    ) -> CalibrationProgress:
        """FC02 (1008, 8) decoded for ``group``."""
        t = self._resolve_timeout(timeout)
        if group not in CAL_GROUPS:
            raise ServomexValidationError(
                f"calibration group must be 1-4, got {group!r}", context=self._context()
            )
        bits = await self._read_bits(CAL_STATUS_PDU, CAL_STATUS_COUNT, t)
        return calibration_progress(group, bits)

    async def loopback(
        self, payload: bytes = b"\x00\x00", *, timeout: float | None = None
    ) -> bytes:
        """FC08 sub-function 0 with a 2-byte payload; returns the echo.

        Raises:
            ServomexValidationError: ``payload`` is not exactly 2 bytes.
            ServomexProtocolError: the echo differs from the payload.
        """
        t = self._resolve_timeout(timeout)
        data = bytes(payload)
        if len(data) != LOOPBACK_PAYLOAD_LEN:
            raise ServomexValidationError(
                f"loopback payload must be exactly 2 bytes, got {len(data)}",
                context=self._context(function_code=FC_DIAGNOSTICS),
            )
        pdu = bytes((FC_DIAGNOSTICS, 0, 0)) + data
        self._line.note_payload(data)
        echo = await self._tx.run(FC_DIAGNOSTICS, 0, pdu, lambda s: s.diagnostic_loopback(data), t)
        if echo != data:
            # Another request's echo: this one's may still be on its way.
            self._line.mark_uncertain(self.address)
            raise ServomexProtocolError(
                f"loopback echoed {echo.hex(' ')} for {data.hex(' ')}",
                context=self._context(
                    function_code=FC_DIAGNOSTICS,
                    register=0,
                    request=self._line.encode_adu(self.address, pdu),
                ),
            )
        return echo

    async def probe(self, *, wait: float | None = None) -> float | None:
        """Is anything answering at this address? One short FC08 echo attempt (a bus scan).

        After the line's silence, sends FC08 sub-function 0 with a fresh payload (never one
        used on this line recently) and listens for ``wait`` seconds: by default the wire time
        of the request and its echo plus a turnaround allowance of 60 ms (or the slowest
        turnaround this line has measured plus 20 ms, when that is longer) — about 68 ms at
        19200 baud RTU, so 247 addresses take well under a minute. There is no retry and no
        fence, and an unanswered probe never makes the line uncertain: the echo names its own
        payload, so a late one can never be taken as a value; it is discarded as stale by a
        later silence or fence, and the next request waits until a late echo would have come.
        An exception reply (``0x88``, e.g. exception 01 from firmware without FC08) counts:
        something answers at this address.

        Returns:
            Seconds from handing the request to the port until the reply was complete, or
            None when no valid reply came within ``wait`` (a reply with a bad CRC/LRC, another
            address's reply or an echo of another payload is not one).

        Raises:
            ServomexValidationError: ``wait`` is not a positive number, before any I/O.
            ServomexConnectionError: the port is closed or failed.
        """
        check_timeout(wait, self._context(), what="wait", optional=True)
        line = self._line
        if line.is_closed:
            raise ServomexConnectionError(
                f"{self.transport.label} is closed",
                context=self._context(function_code=FC_DIAGNOSTICS, register=0),
            )
        limit = line.probe_wait(self.address) if wait is None else float(wait)
        started = time.monotonic()
        async with line.lock:
            self._counters.transactions += 1
            self._counters.attempts += 1
            try:
                return await line.probe(self.address, limit)
            except ServomexError as exc:
                raise exc.with_context(
                    **context_fields(
                        self._context(
                            function_code=FC_DIAGNOSTICS,
                            register=0,
                            elapsed_s=time.monotonic() - started,
                        )
                    )
                ) from exc.__cause__

    # -- sweeps -----------------------------------------------------------------------------

    async def _sweep(
        self, channels: tuple[ChannelId, ...], timeout: CallTimeout, *, include_analyser: bool
    ) -> SweepData:
        """Run the plan; on exception 02 that teaches the planner something, re-plan and re-run
        the rest once per learning step (reads already done are kept)."""
        data = SweepData()
        while True:
            pending = [
                r
                for r in self._plan(channels, include_analyser=include_analyser)
                if not data.covers(r)
            ]
            replanned = False
            for read in pending:
                try:
                    await self._execute(read, data, timeout)
                except ServomexIllegalDataAddressError:
                    if not self.read_planner.learn_rejection(read):
                        raise
                    _log.info(
                        "%s: exception 02 on FC%02d (%d, %d); read plan now %r",
                        self.device,
                        read.function_code,
                        read.address,
                        read.count,
                        self.read_planner,
                    )
                    self._warn_unreadable()
                    replanned = True
                    break
            if not replanned:
                return data

    def _plan(
        self, channels: tuple[ChannelId, ...], *, include_analyser: bool
    ) -> tuple[PlannedRead, ...]:
        """The planner's reads for a sweep: value-only spans for the slots whose name and unit
        are cached, costed with the line's current silence."""
        planner = self.read_planner
        silence = self._line.silence_s
        if silence != self._planned_silence:  # learned: cost the plan with the real silence
            planner.model = planner.model.with_silence(silence)
            self._planned_silence = silence
        return planner.plan(
            channels, include_analyser=include_analyser, value_only=frozenset(self._meta)
        )

    async def _execute(self, read: PlannedRead, data: SweepData, timeout: CallTimeout) -> None:
        channel = read.channels[0] if len(read.channels) == 1 else None
        if read.function_code == ReadFunction.READ_INPUT_REGISTERS:
            words = await self._read_registers(read.address, read.count, timeout, channel=channel)
            data.store_registers(read, words)
        else:
            bits = await self._read_bits(read.address, read.count, timeout, channel=channel)
            data.store_bits(read, bits)

    def _warn_unreadable(self) -> None:
        for ch in sorted(self.read_planner.unreadable - self._warned_unreadable):
            self._warned_unreadable.add(ch)
            _log.warning(
                "%s: channel %s refused by the device (exception 02); omitted from sweeps",
                self.device,
                ch.value,
            )

    # -- transactions ---------------------------------------------------------------------

    async def _read_registers(
        self, address: int, count: int, timeout: CallTimeout, *, channel: ChannelId | None = None
    ) -> tuple[int, ...]:
        def call(slave: anymodbus.Slave) -> Awaitable[tuple[int, ...]]:
            return slave.read_input_registers(address, count=count)

        fc = ReadFunction.READ_INPUT_REGISTERS
        pdu = _pdu(fc, address, count)
        return await self._tx.run(fc, address, pdu, call, timeout, channel=channel)

    async def _read_bits(
        self, address: int, count: int, timeout: CallTimeout, *, channel: ChannelId | None = None
    ) -> tuple[bool, ...]:
        def call(slave: anymodbus.Slave) -> Awaitable[tuple[bool, ...]]:
            return slave.read_discrete_inputs(address, count=count)

        fc = ReadFunction.READ_DISCRETE_INPUTS
        pdu = _pdu(fc, address, count)
        return await self._tx.run(fc, address, pdu, call, timeout, channel=channel)

    async def _pulse(self, coil: int, timeout: CallTimeout) -> None:
        """FC05 ON, FC01 read-back (value ignored), FC05 OFF — in that order.

        A failed ON raises at once (FC05 is never retried and we cannot know whether it
        landed). Once ON succeeded, OFF is always attempted so the coil is left at 0 for the
        next 0→1 edge; the first failure is raised.
        """
        number = coil + 1  # errors name the 1-based coil (docs/protocol.md, §4.2, §4.14)
        on_pdu = _pdu(_FC_WRITE_COIL, coil, 0xFF00)
        off_pdu = _pdu(_FC_WRITE_COIL, coil, 0x0000)
        read_pdu = _pdu(_FC_READ_COILS, coil, 1)
        await self._tx.run(
            _FC_WRITE_COIL, number, on_pdu, lambda s: s.write_coil(coil, on=True), timeout
        )
        try:
            await self._tx.run(
                _FC_READ_COILS, number, read_pdu, lambda s: s.read_coils(coil, count=1), timeout
            )
        except ServomexError:
            with anyio.CancelScope(shield=True):
                try:
                    await self._tx.run(
                        _FC_WRITE_COIL,
                        number,
                        off_pdu,
                        lambda s: s.write_coil(coil, on=False),
                        timeout,
                    )
                except ServomexError as exc:
                    _log.warning("%s: could not return coil %d to 0: %s", self.device, number, exc)
            raise
        await self._tx.run(
            _FC_WRITE_COIL, number, off_pdu, lambda s: s.write_coil(coil, on=False), timeout
        )

    # -- helpers ----------------------------------------------------------------------------

    def _resolve_timeout(self, timeout: float | None) -> CallTimeout:
        if timeout is None:
            return CallTimeout(self._timeout, learned=True)
        return CallTimeout(check_timeout(timeout, self._context()), learned=False)

    def _context(self, **kw: Any) -> ErrorContext:
        return self._tx.context(**kw)


def _stamp() -> tuple[datetime, int, float]:
    """received_at/requested_at, monotonic_ns and a monotonic start, taken at one instant."""
    return datetime.now(UTC), time.monotonic_ns(), time.monotonic()


def _pdu(function_code: int, address: int, value: int) -> bytes:
    """A request PDU of the form fc · address · count (or coil value), big-endian."""
    return bytes((function_code,)) + address.to_bytes(2, "big") + value.to_bytes(2, "big")
