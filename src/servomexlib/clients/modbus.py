"""The Modbus RTU/ASCII client: anymodbus bound to our transport (protocol.md §4, §5, §9, §11).

Theory of operation
-------------------
**The line.** A :class:`ModbusLine` is one serial line (one port): the transport, one
``anymodbus.Bus`` over it, a lock and the time of the last byte that crossed the line. Several
:class:`ModbusClient` objects — one per slave address — may share a line; everything about
timing lives in the line, so the rules below hold across a change of slave address.

**Silence before every request (HW).** Through a USB-RS485 adapter the measured analyser lost
26 % of requests sent back to back and none sent after 50 ms of quiet. So before *every*
request — first attempts and retries alike — the line waits until 50 ms have passed since the
last byte sent or received on it, reading whatever arrives meanwhile and throwing it away (a
late reply or noise is stale by definition, and each stale byte restarts the 50 ms). The
line's stream wrapper stamps every send and receive, so "last byte" is exact, including the
bytes anymodbus itself reads.

**Why we drive single attempts ourselves.** anymodbus's knobs cannot express the rules exactly:

* its ``request_timeout`` is fixed per ``Bus`` (an immutable ``BusConfig``), but our per-call
  ``timeout=`` must override the response timeout of every transaction of that call, and the
  line (and thus the Bus) is shared by clients with different timeouts;
* its inter-frame gap only sleeps; it does not read and discard bytes arriving during the gap,
  and it runs from the end of its own attempts, not from the last byte on the line;
* its retry policy retries every ``ProtocolError`` (including a well-formed reply that does not
  match the request, which we report as ``ServomexProtocolError`` at once) and knows nothing of
  our error mapping.

So the Bus is configured for exactly one attempt per call (``RetryPolicy(retries=0)``), no
inter-frame gap of its own, and a generous ``request_timeout`` ceiling; this module runs the
attempt loop: silence → one ``Slave`` call under ``anyio.fail_after(timeout)`` → classify. Up to
2 retries follow only for the idempotent function codes FC01–04 and FC08 and only after no
reply, a CRC/LRC error or a malformed frame; FC05 is never retried; exception replies are never
retried. There is no deadline around a multi-transaction operation (HW lesson: it cancelled
valid retries mid-sweep).

**Late replies.** anymodbus's late-reply window is on (50 ms, the silence): after an attempt
whose outcome is uncertain (timeout, checksum or frame error, mismatched reply, cancellation)
the Bus discards what arrives before sending again. The line learns of such attempts through
anymodbus's transaction observer and folds the window into its own silence, extended to cover
the slowest possible reply measured from when the request left (turnaround + a maximum-size
ADU), so the window is waited out *before* the next attempt's response timeout starts.

**Errors** (protocol.md §4.12) are translated here and nowhere else: exception 01/02/other →
``ServomexIllegalFunctionError`` / ``ServomexIllegalDataAddressError`` / ``ServomexModbusError``;
no valid reply after the retries → ``ServomexTimeoutError``; a closed or lost port →
``ServomexConnectionError``; a well-formed reply that does not answer the request →
``ServomexProtocolError``; bad parameters → ``ServomexValidationError`` before any I/O. Every
error carries port, protocol, address, function code, register (or 1-based coil), channel,
the request ADU, the bytes received for it and the time spent.

**Sweeps** follow the :class:`~servomexlib.planner.ReadPlanner`: FC04 reads, channel FC02 reads,
then FC02 (1000, 16). An exception 02 is fed to the planner; when that changes the plan the
step is re-run once with the new plan (reads already done are kept). Timeouts never change the
plan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anymodbus
from anymodbus.framing import get_framer

from ..devices.models import (
    AnalyserStatus,
    CalibrationProgress,
    Capability,
    ChannelId,
    ChannelInfo,
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
    ServomexIllegalFunctionError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from ..planner import PlannedRead, ReadFunction, ReadPlanner, WireModel
from ..settings import SerialSettings
from ..units import Unit
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
    decode_channel_block,
    decode_modbus_name,
    decode_modbus_unit,
    words_to_bytes,
)

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

SILENCE_S = 0.05  # HW: 0 ms → 26 % lost, 10-20 ms → 8 %, 50 ms → 0 % (USB-RS485, 19200)
RETRIES = 2  # extra attempts for idempotent function codes (LIB)
DEFAULT_TIMEOUT = 1.0  # per-attempt response timeout (LIB)
MODEL_NAME = "4000-series"  # the unit reports no model identity anywhere (protocol.md §13)
LOOPBACK_PAYLOAD_LEN = 2
_MAX_TURNAROUND_S = 0.1  # replies came after 20-40 ms (HW); allow for a slow one
_MAX_RTU_ADU = 256
_MAX_ASCII_ADU = 2 * 255 + 3  # ':' + hex(addr · PDU · LRC) + CR LF
_BUS_CEILING_S = 60.0  # anymodbus' maximum request_timeout; ours (fail_after) fires first
_MIN_INTER_CHAR_S = 0.010  # RTU stray-frame drain gap; USB adapters deliver in 1-16 ms bursts
_DISCARD_CHUNK = 256
_IDEMPOTENT = frozenset({0x01, 0x02, 0x03, 0x04, 0x08})
_FC_READ_COILS = 0x01
_FC_WRITE_COIL = 0x05
_FC_DIAGNOSTICS = 0x08
_UNCERTAIN = frozenset(
    {
        anymodbus.TransactionOutcome.TIMEOUT,
        anymodbus.TransactionOutcome.CHECKSUM_ERROR,
        anymodbus.TransactionOutcome.UNEXPECTED_RESPONSE,
        anymodbus.TransactionOutcome.FRAME_ERROR,
        anymodbus.TransactionOutcome.CANCELLED,
        anymodbus.TransactionOutcome.ERROR,
    }
)
_FRAMINGS = {
    ProtocolKind.MODBUS_RTU: anymodbus.Framing.RTU,
    ProtocolKind.MODBUS_ASCII: anymodbus.Framing.ASCII,
}


def _framing(kind: ProtocolKind | str) -> ProtocolKind:
    try:
        framing = ProtocolKind(kind)
    except ValueError:
        framing = None
    if framing not in _FRAMINGS:
        raise ServomexValidationError(
            f"a Modbus client needs framing modbus_rtu or modbus_ascii, got {kind!r}",
            context=ErrorContext(protocol=kind),
        )
    return framing


def _check_timeout(timeout: float | None, what: str = "timeout") -> None:
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ServomexValidationError(
            f"{what} must be a positive number of seconds, got {timeout!r}"
        )


class _LineStream(anyio.abc.ByteStream):
    """The transport as anymodbus sees it: stamps every byte and records each attempt's reply."""

    def __init__(self, transport: Transport, line: ModbusLine) -> None:
        self._transport = transport
        self._line = line

    @property
    def extra_attributes(self) -> Any:
        # Forward typed attributes (anyserial's config) so anymodbus can see the port.
        extra = getattr(self._transport, "extra_attributes", None)
        return extra if extra is not None else {}

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._transport.receive(max_bytes)
        self._line._received(data)
        return data

    async def send(self, item: bytes) -> None:
        try:
            await self._transport.send(item)
        finally:
            self._line._sent()

    async def drain(self) -> None:
        """Wait until the request has left the port when the transport can tell (RS485)."""
        drain = getattr(self._transport, "drain", None)
        if drain is not None:
            await drain()

    async def send_eof(self) -> None:
        await self._transport.send_eof()

    async def aclose(self) -> None:
        await self._transport.aclose()


class ModbusLine:
    """One serial line shared by the :class:`ModbusClient` of every slave on it.

    Holds the transport, one ``anymodbus.Bus``, the lock that serialises transactions and the
    time of the last byte on the line, so the 50 ms silence holds across a change of slave
    address. Closing the line closes the transport.

    Args:
        transport: the byte transport (pushed-back bytes are dropped: the Modbus framer never
            sees bytes parked for a continuous reader).
        framing: ``MODBUS_RTU`` or ``MODBUS_ASCII``.
        silence_s: pre-request silence (default 50 ms, HW).
        on_receive: called with every chunk read from the transport — stale bytes discarded
            during a silence and reply bytes alike — before anything else looks at it. AUTO
            uses it to spot continuous frames while its Modbus probes run; it must not raise.

    Raises:
        ServomexValidationError: a non-Modbus framing or a negative silence.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        framing: ProtocolKind | str,
        silence_s: float = SILENCE_S,
        on_receive: Callable[[bytes], None] | None = None,
    ) -> None:
        self._framing = _framing(framing)
        if not math.isfinite(silence_s) or silence_s < 0:
            raise ServomexValidationError(f"silence_s must be >= 0, got {silence_s!r}")
        self._transport = transport
        self._silence = float(silence_s)
        self._on_receive = on_receive
        settings = transport.serial_settings
        char_time = settings.char_time_s if settings is not None else 10 / 19200
        self._char_time = char_time
        max_adu = _MAX_RTU_ADU if self._framing is ProtocolKind.MODBUS_RTU else _MAX_ASCII_ADU
        # The slowest reply, measured from when its request left: turnaround + the reply's
        # characters (the longest ADU until the client names the expected reply).
        self._late_reply_s = _MAX_TURNAROUND_S + max_adu * char_time
        self._last_activity: float | None = None
        self._last_sent: float | None = None
        self._quiet_until = -math.inf
        self._capture: bytearray | None = None
        self._stale_bytes = 0
        self._closed = False
        self.lock = anyio.Lock()
        config = anymodbus.BusConfig(
            request_timeout=_BUS_CEILING_S,
            timing=anymodbus.TimingConfig(
                inter_frame_idle=0.0,  # the line enforces the silence itself
                inter_char_idle=max(1.5 * char_time, _MIN_INTER_CHAR_S),
                late_reply_window=self._silence,
            ),
            retries=anymodbus.RetryPolicy(retries=0),  # the client runs the attempt loop
            reset_input_buffer_before_request=False,  # stale bytes are read and discarded
        )
        self.bus = anymodbus.Bus(
            _LineStream(transport, self),
            config=config,
            framing=_FRAMINGS[self._framing],
            on_transaction=self._observe,
        )
        transport.drain_input()

    def __repr__(self) -> str:
        return f"<ModbusLine {self._transport.label!r} {self._framing.value}>"

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def framing(self) -> ProtocolKind:
        return self._framing

    @property
    def silence_s(self) -> float:
        return self._silence

    @property
    def stale_bytes(self) -> int:
        """Bytes read and discarded during pre-request silences."""
        return self._stale_bytes

    @property
    def is_closed(self) -> bool:
        return self._closed

    def encode_adu(self, slave_address: int, pdu: bytes) -> bytes:
        """The ADU the line would send for ``pdu`` to ``slave_address``."""
        return get_framer(_FRAMINGS[self._framing]).encode_adu(slave_address=slave_address, pdu=pdu)

    async def aclose(self) -> None:
        """Close the Bus and the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.bus.aclose()

    # -- timing (call with the lock held) -------------------------------------------------

    async def wait_silence(self) -> None:
        """Wait for ``silence_s`` of quiet since the last byte (and any late-reply window).

        Bytes arriving meanwhile are stale: they are read, counted, dropped, and restart the
        wait. A line opened just now counts as active now (its past is unknown).
        """
        if self._last_activity is None:
            self._last_activity = anyio.current_time()
        while True:
            now = anyio.current_time()
            until = max(self._last_activity + self._silence, self._quiet_until)
            if now >= until:
                return
            with anyio.move_on_after(until - now):
                data = await self._transport.receive(_DISCARD_CHUNK)
                self._received(data, stale=True)

    def begin_capture(self, reply_chars: int | None = None) -> None:
        """Start recording the attempt's reply; ``reply_chars`` sizes its late-reply window."""
        self._capture = bytearray()
        if reply_chars is not None:
            self._late_reply_s = _MAX_TURNAROUND_S + reply_chars * self._char_time

    def end_capture(self) -> bytes | None:
        data, self._capture = self._capture, None
        return bytes(data) if data else None

    def _received(self, data: bytes, *, stale: bool = False) -> None:
        self._last_activity = anyio.current_time()
        if self._on_receive is not None and data:
            self._on_receive(data)
        if stale:
            self._stale_bytes += len(data)
            _log.debug("discarded %d stale byte(s) on %s", len(data), self._transport.label)
        elif self._capture is not None:
            self._capture += data

    def _sent(self) -> None:
        self._last_activity = self._last_sent = anyio.current_time()

    def _observe(self, info: anymodbus.TransactionInfo) -> None:
        """anymodbus transaction observer: open the late-reply window after uncertain attempts."""
        if info.outcome not in _UNCERTAIN or info.sent_at is None:
            return
        until = max(
            info.ended_at + self.bus.config.timing.late_reply_window,
            info.sent_at + self._late_reply_s,
        )
        self._quiet_until = max(self._quiet_until, until)


@dataclasses.dataclass(frozen=True, slots=True)
class ModbusStatistics:
    """Counters of one client (one slave address).

    ``transactions`` counts requests (each once, however many attempts); ``attempts`` every
    request sent; ``retries`` the extra attempts; ``timeouts`` transactions that ended in
    ``ServomexTimeoutError``; ``exceptions`` Modbus exception replies; ``checksum_errors``
    attempts answered with a bad CRC/LRC; ``stale_bytes`` bytes discarded by the line's silence.
    """

    transactions: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    exceptions: int = 0
    checksum_errors: int = 0
    stale_bytes: int = 0


@dataclasses.dataclass(slots=True)
class _Counters:
    transactions: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    exceptions: int = 0
    checksum_errors: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Meta:
    name: str | None
    unit: Unit


@dataclasses.dataclass(slots=True)
class _SweepData:
    registers: dict[ChannelId, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    bits: dict[ChannelId, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    analyser: tuple[bool, ...] | None = None

    def covers(self, read: PlannedRead) -> bool:
        if read.is_analyser:
            return self.analyser is not None
        done = (
            self.registers if read.function_code == ReadFunction.READ_INPUT_REGISTERS else self.bits
        )
        return all(c in done for c in read.channels)


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
        kind = _framing(framing)
        if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
            raise ServomexValidationError(
                f"Modbus slave address must be 1-247, got {address!r}",
                context=ErrorContext(
                    protocol=kind, address=address if isinstance(address, int) else None
                ),
            )
        _check_timeout(timeout)
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
        self._slave = self._line.bus.slave(address)
        self._meta: dict[ChannelId, _Meta] = {}
        self._populated: tuple[ChannelId, ...] | None = None
        self._counters = _Counters()
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
        c = self._counters
        return ModbusStatistics(
            c.transactions,
            c.attempts,
            c.retries,
            c.timeouts,
            c.exceptions,
            c.checksum_errors,
            self._line.stale_bytes,
        )

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
        """One sweep (protocol.md §5) over :attr:`sweep_channels`; ``wait_fresh`` is a no-op.

        Slots the device refused even singly are omitted (one warning each).
        """
        t = self._resolve_timeout(timeout)
        received_at, mono_ns, started = _stamp()
        data = await self._sweep(self.sweep_channels, t, include_analyser=True)
        readings = self._readings(data, received_at, mono_ns)
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
        data = _SweepData()
        for read in self.read_planner.plan([channel], include_analyser=False):
            try:
                await self._execute(read, data, t)
            except ServomexIllegalDataAddressError:
                if self.read_planner.learn_rejection(read):
                    self._warn_unreadable()
                raise
        return self._readings(data, received_at, mono_ns)[0]

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

        A slot is populated when its name or unit registers carry non-blank text (an unlabelled
        ``||||||`` slot counts, with name None). Later sweeps cover only those slots; when none
        qualifies, sweeps stay at all ten.

        Firmware that refuses the broad read with exception 02 (it covers unmapped slots) is
        asked slot by slot instead, FC04 (block, 7); a slot refused on its own is unpopulated
        and marked unreadable in the read planner (protocol.md §9.3).
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
        infos: list[ChannelInfo] = []
        for spec in CHANNEL_TABLE:
            block = blocks.get(spec.channel)
            if block is None:
                continue
            text = block[4:14]
            meta = _Meta(decode_modbus_name(text[:6]), decode_modbus_unit(text[6:]))
            self._meta[spec.channel] = meta
            if text.strip(b" \x00"):
                infos.append(ChannelInfo(spec.channel, spec.kind, meta.name, meta.unit))
        self._populated = tuple(i.channel for i in infos) or None
        settings = self.transport.serial_settings
        return DeviceInfo(
            model=MODEL_NAME,
            channels=tuple(infos),
            protocol=self.protocol,
            address=self.address,
            serial_settings=settings
            if settings is not None
            else SerialSettings(self.transport.label),
        )

    async def start_calibration(self, group: int, *, timeout: float | None = None) -> None:
        """Pulse the group's start coil: FC05 ON → FC01 read-back → FC05 OFF (protocol.md §4.9)."""
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
                context=self._context(function_code=_FC_DIAGNOSTICS),
            )
        pdu = bytes((_FC_DIAGNOSTICS, 0, 0)) + data
        echo = await self._transact(
            _FC_DIAGNOSTICS, 0, pdu, lambda s: s.diagnostic_loopback(data), t
        )
        if echo != data:
            raise ServomexProtocolError(
                f"loopback echoed {echo.hex(' ')} for {data.hex(' ')}",
                context=self._context(
                    function_code=_FC_DIAGNOSTICS,
                    register=0,
                    request=self._line.encode_adu(self.address, pdu),
                ),
            )
        return echo

    # -- sweeps -----------------------------------------------------------------------------

    async def _sweep(
        self, channels: tuple[ChannelId, ...], timeout: float, *, include_analyser: bool
    ) -> _SweepData:
        """Run the plan; on exception 02 that teaches the planner something, re-plan and re-run
        the rest once per learning step (reads already done are kept)."""
        data = _SweepData()
        while True:
            pending = [
                r
                for r in self.read_planner.plan(channels, include_analyser=include_analyser)
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

    async def _execute(self, read: PlannedRead, data: _SweepData, timeout: float) -> None:
        channel = read.channels[0] if len(read.channels) == 1 else None
        if read.function_code == ReadFunction.READ_INPUT_REGISTERS:
            words = await self._read_registers(read.address, read.count, timeout, channel=channel)
            for ch in read.channels:
                off = read.offset_of(ch)
                data.registers[ch] = tuple(words[off : off + REGISTERS_PER_CHANNEL])
        else:
            bits = await self._read_bits(read.address, read.count, timeout, channel=channel)
            if read.is_analyser:
                data.analyser = bits
            for ch in read.channels:
                off = read.offset_of(ch)
                data.bits[ch] = tuple(bits[off : off + DISCRETES_PER_CHANNEL])

    def _readings(
        self, data: _SweepData, received_at: datetime, mono_ns: int
    ) -> tuple[Reading, ...]:
        readings: list[Reading] = []
        for spec in CHANNEL_TABLE:
            ch = spec.channel
            if ch not in data.registers or ch not in data.bits:
                continue
            status = decode_status_bits(spec.kind, data.bits[ch])
            reading = decode_channel_block(
                ch,
                data.registers[ch],
                status,
                received_at=received_at,
                monotonic_ns=mono_ns,
                protocol=self.protocol,
            )
            meta = self._meta.get(ch)
            if meta is None:  # first read of this slot: cache its name and unit
                self._meta[ch] = _Meta(reading.name, reading.unit)
            else:
                reading = dataclasses.replace(reading, name=meta.name, unit=meta.unit)
            readings.append(reading)
        return tuple(readings)

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
        self, address: int, count: int, timeout: float, *, channel: ChannelId | None = None
    ) -> tuple[int, ...]:
        pdu = bytes((ReadFunction.READ_INPUT_REGISTERS,)) + _u16(address) + _u16(count)
        return await self._transact(
            int(ReadFunction.READ_INPUT_REGISTERS),
            address,
            pdu,
            lambda s: s.read_input_registers(address, count=count),
            timeout,
            channel=channel,
        )

    async def _read_bits(
        self, address: int, count: int, timeout: float, *, channel: ChannelId | None = None
    ) -> tuple[bool, ...]:
        pdu = bytes((ReadFunction.READ_DISCRETE_INPUTS,)) + _u16(address) + _u16(count)
        return await self._transact(
            int(ReadFunction.READ_DISCRETE_INPUTS),
            address,
            pdu,
            lambda s: s.read_discrete_inputs(address, count=count),
            timeout,
            channel=channel,
        )

    async def _pulse(self, coil: int, timeout: float) -> None:
        """FC05 ON, FC01 read-back (value ignored), FC05 OFF — in that order.

        A failed ON raises at once (FC05 is never retried and we cannot know whether it
        landed). Once ON succeeded, OFF is always attempted so the coil is left at 0 for the
        next 0→1 edge; the first failure is raised.
        """
        number = coil + 1  # errors name the 1-based coil (protocol.md §4.12)
        on_pdu = bytes((_FC_WRITE_COIL,)) + _u16(coil) + b"\xff\x00"
        off_pdu = bytes((_FC_WRITE_COIL,)) + _u16(coil) + b"\x00\x00"
        read_pdu = bytes((_FC_READ_COILS,)) + _u16(coil) + _u16(1)
        await self._transact(
            _FC_WRITE_COIL, number, on_pdu, lambda s: s.write_coil(coil, on=True), timeout
        )
        try:
            await self._transact(
                _FC_READ_COILS, number, read_pdu, lambda s: s.read_coils(coil, count=1), timeout
            )
        except ServomexError:
            with anyio.CancelScope(shield=True):
                try:
                    await self._transact(
                        _FC_WRITE_COIL,
                        number,
                        off_pdu,
                        lambda s: s.write_coil(coil, on=False),
                        timeout,
                    )
                except ServomexError as exc:
                    _log.warning("%s: could not return coil %d to 0: %s", self.device, number, exc)
            raise
        await self._transact(
            _FC_WRITE_COIL, number, off_pdu, lambda s: s.write_coil(coil, on=False), timeout
        )

    async def _transact[T](
        self,
        function_code: int,
        register: int,
        request_pdu: bytes,
        call: Callable[[anymodbus.Slave], Awaitable[T]],
        timeout: float,
        *,
        channel: ChannelId | None = None,
    ) -> T:
        """One transaction: silence, attempt, classify; retries per protocol.md §9.1."""
        if self._line.is_closed:
            raise ServomexConnectionError(
                f"{self.transport.label} is closed",
                context=self._context(function_code=function_code, register=register),
            )
        request = self._line.encode_adu(self.address, request_pdu)
        reply_chars = _reply_chars(self.protocol, request_pdu)
        attempts = 1 + RETRIES if function_code in _IDEMPOTENT else 1
        started = time.monotonic()
        self._counters.transactions += 1
        last: BaseException | None = None
        response: bytes | None = None

        def context(**kw: Any) -> ErrorContext:
            return self._context(
                function_code=function_code,
                register=register,
                channel=channel,
                request=request,
                response=response,
                elapsed_s=time.monotonic() - started,
            ).merged(**kw)

        async with self._line.lock:
            for attempt in range(attempts):
                self._counters.attempts += 1
                if attempt:
                    self._counters.retries += 1
                try:
                    await self._line.wait_silence()
                except ServomexError as exc:
                    raise exc.with_context(**_fields(context())) from exc.__cause__
                self._line.begin_capture(reply_chars)
                try:
                    with anyio.fail_after(timeout):
                        return await call(self._slave)
                except anymodbus.ModbusExceptionResponse as exc:
                    response = self._line.end_capture()
                    self._counters.exceptions += 1
                    raise _exception_reply(exc, context()) from exc
                except anymodbus.UnexpectedResponseError as exc:
                    response = self._line.end_capture()
                    raise ServomexProtocolError(str(exc), context=context()) from exc
                except anymodbus.ConfigurationError as exc:
                    raise ServomexValidationError(str(exc), context=context()) from exc
                except (anymodbus.ProtocolError, anymodbus.FrameTimeoutError, TimeoutError) as exc:
                    response = self._line.end_capture()
                    lost = _connection_cause(exc)
                    if lost is not None:
                        raise lost.with_context(**_fields(context())) from exc
                    if isinstance(exc, anymodbus.ChecksumError):
                        self._counters.checksum_errors += 1
                    last = exc
                except (anymodbus.ConnectionLostError, anymodbus.BusClosedError) as exc:
                    response = self._line.end_capture()
                    lost = _connection_cause(exc)
                    if lost is not None:
                        raise lost.with_context(**_fields(context())) from exc
                    raise ServomexConnectionError(str(exc), context=context()) from exc
                except anymodbus.ModbusError as exc:
                    response = self._line.end_capture()
                    raise ServomexModbusError(
                        str(exc) or type(exc).__name__, context=context()
                    ) from exc
                except ServomexError as exc:
                    response = self._line.end_capture()
                    raise exc.with_context(**_fields(context())) from exc
                finally:
                    self._line.end_capture()
                if attempt + 1 < attempts:
                    _log.debug(
                        "%s: attempt %d/%d of FC%02d at %d failed (%s); retrying",
                        self.device,
                        attempt + 1,
                        attempts,
                        function_code,
                        register,
                        _describe(last),
                    )
        self._counters.timeouts += 1
        message = (
            "no response from slave"
            if isinstance(last, TimeoutError)
            else f"no valid response from slave: {_describe(last)}"
        )
        raise ServomexTimeoutError(message, context=context(extra={"attempts": attempts})) from last

    # -- helpers ----------------------------------------------------------------------------

    def _resolve_timeout(self, timeout: float | None) -> float:
        _check_timeout(timeout)
        return self._timeout if timeout is None else float(timeout)

    def _context(self, **kw: Any) -> ErrorContext:
        return ErrorContext(
            port=self.transport.label, protocol=self.protocol, address=self.address
        ).merged(**kw)


def _stamp() -> tuple[datetime, int, float]:
    """received_at/requested_at, monotonic_ns and a monotonic start, taken at one instant."""
    return datetime.now(UTC), time.monotonic_ns(), time.monotonic()


def _reply_chars(framing: ProtocolKind, request_pdu: bytes) -> int:
    """Characters of the normal reply to ``request_pdu`` (reads: from the count; else 5 bytes)."""
    fc = request_pdu[0]
    count = int.from_bytes(request_pdu[3:5], "big") if len(request_pdu) >= 5 else 0
    if fc in (0x01, 0x02):
        pdu_len = 2 + math.ceil(count / 8)
    elif fc in (0x03, 0x04):
        pdu_len = 2 + 2 * count
    else:
        pdu_len = 5  # FC05 and FC08 sub 0 echo their request
    if framing is ProtocolKind.MODBUS_RTU:
        return 1 + pdu_len + 2
    return 1 + 2 * (1 + pdu_len + 1) + 2


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    return str(exc) or type(exc).__name__


def _fields(ctx: ErrorContext) -> dict[str, Any]:
    """A context's set fields as keywords for ``with_context`` (keeps the error's own extras)."""
    out: dict[str, Any] = {
        f.name: getattr(ctx, f.name)
        for f in dataclasses.fields(ctx)
        if f.name != "extra" and getattr(ctx, f.name) is not None
    }
    if ctx.extra:
        out["extra"] = dict(ctx.extra)
    return out


def _connection_cause(exc: BaseException) -> ServomexConnectionError | None:
    """The transport's connection error behind an anymodbus error (EOF mid-frame, closed)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ServomexConnectionError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _exception_reply(exc: anymodbus.ModbusExceptionResponse, ctx: ErrorContext) -> ServomexError:
    """protocol.md §4.12: 01 → IllegalFunction, 02 → IllegalDataAddress, else ModbusError."""
    code = exc.exception_code
    ctx = ctx.merged(exception_code=code)
    message = str(exc) or type(exc).__name__
    if code == 0x01:
        return ServomexIllegalFunctionError(message, context=ctx)
    if code == 0x02:
        return ServomexIllegalDataAddressError(message, context=ctx)
    return ServomexModbusError(message, context=ctx)
