"""Discovery: which analyser, in which mode, is on which port (api.md §14).

Theory of operation
-------------------
**One address.** :func:`discover_port` is read-only: it runs the AUTO ladder of protocol.md §8
(FC08 loopback probes, then a passive listen of ``max(timeout, 2 × frame_period)``) and then
one ``identify()`` in the mode found — FC04 (0, 70) over Modbus; over continuous mode a
receiver runs just until the first frame (the one AUTO recognised and pushed back) is decoded.
Nothing is written to the analyser beyond the loopback probes and register reads.

**A bus.** :func:`scan_bus` finds every analyser on a multidrop line. The ladder's probes
(three attempts of 0.5 s each, twice, per framing) would take minutes over 247 addresses, so a
scan makes one pass of *short* probes — :meth:`ModbusClient.probe
<servomexlib.clients.modbus.ModbusClient.probe>`: one FC08 echo attempt with a fresh payload,
waiting only the wire time of the request and its echo plus a turnaround allowance (≈ 68 ms at
19200 baud RTU), no retry — and then identifies each address that answered with the full
timeout and retries. Every probe and identify of a scan goes through one
:class:`~servomexlib.clients.modbus.ModbusLine`, so the 50 ms silence holds across the change
of slave address. 247 unanswered probes at 19200 baud RTU take about 30 s.

Without a protocol (AUTO) the framing is found by the scan itself: a pass in Modbus RTU; if
no address answered, a pass in Modbus ASCII; then, if the passes took less than the listen
window, a passive listen for the rest of it.

**Watching the line.** Every byte a scan reads — stale bytes thrown away during a silence,
replies, bytes that are neither — is shown to one :class:`_LineWatcher`. It looks for two
things:

* a checksum-valid, fully parsed *continuous frame*: under AUTO it ends the scan at once as
  CONTINUOUS_ASCII (the probe in flight is cancelled; the frame and every byte after it are
  pushed back so the receiver starts with it); under an explicit Modbus protocol it is kept as
  a hint, because a broadcasting analyser ignores every probe;
* well-formed *Modbus replies from any slave* (valid CRC/LRC, a reply's shape): an address
  whose echo arrived after its probe gave up is identified like one that answered in time (a
  slow analyser is not lost), and an address that answered on the line without being asked
  becomes a hint.

**Saying why nothing was found.** When the asked addresses gave nothing, the scan says what
the line does carry instead of a bare "no recognised protocol": a continuous broadcast, or
other addresses that answer — those seen replying plus a quick probe of a few common ones
(:data:`HINT_ADDRESSES`) that were not asked. :func:`discover_port` makes the same quick
probe after a failed ladder. The answer is in :attr:`DiscoveryResult.hint` and in the error's
message and context.

Discovery never raises a :class:`~servomexlib.errors.ServomexError`: whatever went wrong —
bad arguments, a port that would not open, no recognised protocol, a failed identify — is stored
in :attr:`DiscoveryResult.error`. (Cancellation and non-library errors still propagate.)

A port given as a string is opened and closed here; a :class:`~servomexlib.transport.Transport`
is borrowed and left open.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

import anyio
from anymodbus.crc import verify_crc
from anymodbus.lrc import verify_lrc

from .clients.continuous import ContinuousClient, first_frame_wait
from .clients.detect import detect_protocol
from .clients.modbus import ModbusClient, ModbusLine
from .devices.factory import (
    _check_address,
    _check_port,
    _check_positive,
    _check_settings,
    _coerce_protocol,
)
from .devices.models import DeviceInfo, ProtocolKind
from .errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from .settings import SerialSettings
from .transport.base import Transport
from .transport.ports import resolve_transport
from .wire.continuous import FrameSplitter, parse_frame

__all__ = [
    "HINT_ADDRESSES",
    "DiscoveryResult",
    "DiscoverySummary",
    "LineHint",
    "ScanProgress",
    "discover_port",
    "find_devices",
    "format_addresses",
    "parse_addresses",
    "scan_bus",
    "summarize",
]

_log = logging.getLogger("servomexlib.discovery")

#: Addresses a failed discovery probes quickly, when they were not asked, to say what answers:
#: 1 is the library's (and many installers') default, 30 the measured unit's, 2 the usual
#: second analyser of a multidrop line.
HINT_ADDRESSES: tuple[int, ...] = (1, 2, 30)

_MIN_ADDRESS, _MAX_ADDRESS = 1, 247
_MODBUS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)
_LISTEN_CHUNK = 4096
#: Listening after a probe pass, for late echoes to its last probes: longer than any turnaround
#: measured (20-40 ms, HW) plus the echo on the wire, several times over.
_TAIL_S = 0.2

ScanPhase = Literal["probing", "identifying"]


# --------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True, slots=True)
class LineHint:
    """What a port carries when nothing answered at the asked address(es).

    ``continuous_broadcast``: a valid continuous frame was seen (the analyser broadcasts;
    Modbus probes go unanswered). ``answering``: other slave addresses that answer, in
    ``answering_protocol``.
    """

    continuous_broadcast: bool = False
    answering: tuple[int, ...] = ()
    answering_protocol: ProtocolKind | None = None

    def describe(self) -> str:
        """The hint in the library's words (keyword arguments), e.g. ``address 30 answers in
        modbus_rtu: try address=30``."""
        if self.continuous_broadcast:
            return "the line carries a continuous broadcast: try protocol='continuous'"
        if not self.answering:
            return "nothing else answers either"
        where = f" in {self.answering_protocol.value}" if self.answering_protocol else ""
        if len(self.answering) == 1:
            return f"address {self.answering[0]} answers{where}: try address={self.answering[0]}"
        listed = ", ".join(str(a) for a in self.answering)
        return f"addresses {listed} answer{where}: try scan_bus(addresses={list(self.answering)})"


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveryResult:
    """What discovery found on one port (one analyser of a multidrop bus, for a scan).

    ``protocol`` is the mode recognised (None if none was); ``info`` the ``identify()``
    result; ``error`` the ServomexError that stopped discovery, if any. A port whose mode was
    found but whose identify failed has ``protocol`` set and an ``error``. ``address`` is the
    Modbus slave address the result is about (None for continuous mode and when nothing was
    found); ``hint`` what the line carries when nothing answered at the asked address(es).
    """

    port: str
    protocol: ProtocolKind | None
    info: DeviceInfo | None
    error: ServomexError | None = None
    address: int | None = None
    hint: LineHint | None = None

    @property
    def ok(self) -> bool:
        """No error and a protocol found."""
        return self.error is None and self.protocol is not None

    @property
    def is_broadcaster(self) -> bool:
        """The analyser broadcasts (Continuous ASCII mode)."""
        return self.protocol is ProtocolKind.CONTINUOUS_ASCII


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoverySummary:
    """Results split into ``found`` (``ok``) and ``failed``, each in the original order."""

    found: tuple[DiscoveryResult, ...]
    failed: tuple[DiscoveryResult, ...]

    @property
    def total(self) -> int:
        return len(self.found) + len(self.failed)


@dataclasses.dataclass(frozen=True, slots=True)
class ScanProgress:
    """Where a :func:`scan_bus` is: ``done`` of ``total`` addresses probed in ``protocol``
    (``phase`` ``"probing"``; ``found`` = addresses that answered so far) or identified
    (``"identifying"``; ``found`` = analysers identified so far)."""

    port: str
    protocol: ProtocolKind
    phase: ScanPhase
    done: int
    total: int
    found: int


# --------------------------------------------------------------------------- addresses


def parse_addresses(text: str) -> tuple[int, ...]:
    """Parse an address list: ``5``, ``1,2,30``, ``1-247``, ``1-10,30``.

    Returns:
        The addresses, ascending.

    Raises:
        ServomexValidationError: not a number, outside 1-247, a descending range, an address
            given twice, or nothing at all — naming the offending item.
    """
    if not isinstance(text, str) or not text.strip():
        raise ServomexValidationError(
            f"expected Modbus addresses such as 1,2,30 or 1-247, got {text!r}"
        )
    found: list[int] = []
    for item in text.split(","):
        part = item.strip()
        if not part:
            raise ServomexValidationError(f"empty item in address list {text!r}")
        low_text, dash, high_text = part.partition("-")
        low = _address_number(low_text, part)
        high = _address_number(high_text, part) if dash else low
        if high < low:
            raise ServomexValidationError(
                f"address range {part!r} runs backwards: write {high}-{low}"
            )
        found.extend(range(low, high + 1))
    return _check_addresses(found, ErrorContext())


def format_addresses(addresses: Iterable[int]) -> str:
    """The inverse of :func:`parse_addresses`: ``1-3,10,30-32`` (ascending, runs as ranges)."""
    values = sorted(set(addresses))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def _address_number(text: str, item: str) -> int:
    word = text.strip()
    if not word.isdigit():
        raise ServomexValidationError(f"not a Modbus address: {item!r} (use 1-247, 1,2,30 or 1-10)")
    value = int(word)
    if not _MIN_ADDRESS <= value <= _MAX_ADDRESS:
        raise ServomexValidationError(f"Modbus address {value} in {item!r} is outside 1-247")
    return value


def _check_addresses(addresses: object, ctx: ErrorContext) -> tuple[int, ...]:
    """An address, an address-list string or an iterable of addresses → ascending tuple."""
    if isinstance(addresses, str):
        try:
            return parse_addresses(addresses)
        except ServomexValidationError as exc:
            raise exc.with_context(port=ctx.port) from None
    if isinstance(addresses, int) and not isinstance(addresses, bool):
        return (_check_address(addresses, ctx),)
    if not isinstance(addresses, Iterable):
        raise ServomexValidationError(
            f"addresses must be an address, a list of addresses or a string such as "
            f"'1-247', got {addresses!r}",
            context=ctx,
        )
    values = [_check_address(a, ctx) for a in addresses]
    if not values:
        raise ServomexValidationError("no Modbus address to scan", context=ctx)
    seen: set[int] = set()
    for value in values:
        if value in seen:
            raise ServomexValidationError(f"Modbus address {value} is given twice", context=ctx)
        seen.add(value)
    return tuple(sorted(values))


# --------------------------------------------------------------------------- the line watcher


_RTU_READS = frozenset({0x01, 0x02, 0x03, 0x04})  # reply: addr · fc · byte count · data · CRC
_RTU_ECHOES = frozenset({0x05, 0x06, 0x08})  # reply: addr · fc · 4 bytes · CRC
_RTU_EXCEPTIONS = frozenset(fc | 0x80 for fc in _RTU_READS | _RTU_ECHOES)
_RTU_EXCEPTION_LEN = 5
_RTU_ECHO_LEN = 8
_RTU_MAX_ADU = 256
_ASCII_MAX_ADU = 2 * 255 + 3


def _reply_shape_ok(frame: bytes) -> bool:
    """Whether ``frame`` (address · PDU, check value removed) has the shape of a reply."""
    if len(frame) < 3 or not _MIN_ADDRESS <= frame[0] <= _MAX_ADDRESS:
        return False
    fc, size = frame[1], len(frame) - 1
    if fc in _RTU_READS:
        return size == 2 + frame[2] and frame[2] > 0
    if fc in _RTU_ECHOES:
        return size == 5
    return fc in _RTU_EXCEPTIONS and size == 2


class _ReplySpotter:
    """Finds well-formed Modbus replies from any slave in a byte stream (pure, bounded).

    RTU has no delimiters, so every offset whose first bytes look like a reply (a slave
    address, a reply function code, a byte count) is a candidate, checked by CRC once its last
    byte arrives; continuous text never looks like one (its bytes are printable, reply
    function codes are not). ASCII replies run from ``:`` to LF and are checked by LRC.
    Only the tail that can still hold the start of a reply is kept.
    """

    def __init__(self) -> None:
        self.seen: dict[ProtocolKind, set[int]] = {kind: set() for kind in _MODBUS}
        self._rtu = bytearray()
        self._base = 0  # stream offset of _rtu[0]
        self._decided = 0  # stream offset of the first candidate start not yet examined
        self._pending: list[tuple[int, int]] = []  # candidate (start, end) stream offsets
        self._ascii: bytearray | None = None  # from the last ':' on

    def feed(self, data: bytes) -> None:
        self._feed_rtu(data)
        self._feed_ascii(data)

    def _feed_rtu(self, data: bytes) -> None:
        buf = self._rtu
        buf += data
        end = self._base + len(buf)
        # Examine every start offset whose address, function code and byte count are known.
        while self._decided + 2 < end:
            i = self._decided - self._base
            length = self._rtu_length(buf[i], buf[i + 1], buf[i + 2])
            if length:
                self._pending.append((self._decided, self._decided + length))
            self._decided += 1
        still: list[tuple[int, int]] = []
        for start, stop in self._pending:
            if stop > end:
                still.append((start, stop))
                continue
            frame = bytes(buf[start - self._base : stop - self._base])
            if verify_crc(frame) and _reply_shape_ok(frame[:-2]):
                self.seen[ProtocolKind.MODBUS_RTU].add(frame[0])
        self._pending = still
        # Keep what an unresolved candidate or an unexamined start still needs: a candidate
        # resolves within 260 bytes, so the buffer stays under that plus one chunk.
        keep_from = min([start for start, _ in still] + [self._decided])
        if keep_from > self._base:
            del buf[: keep_from - self._base]
            self._base = keep_from

    @staticmethod
    def _rtu_length(address: int, fc: int, third: int) -> int:
        if not _MIN_ADDRESS <= address <= _MAX_ADDRESS:
            return 0
        if fc in _RTU_READS:
            return 5 + third if third else 0
        if fc in _RTU_ECHOES:
            return _RTU_ECHO_LEN
        if fc in _RTU_EXCEPTIONS:
            return _RTU_EXCEPTION_LEN
        return 0

    def _feed_ascii(self, data: bytes) -> None:
        for byte in data:
            if byte == 0x3A:  # ':' starts a frame (and abandons any unfinished one)
                self._ascii = bytearray()
            elif self._ascii is None:
                continue
            elif byte == 0x0A:  # LF ends it
                self._ascii_frame(bytes(self._ascii).rstrip(b"\r"))
                self._ascii = None
            elif len(self._ascii) >= _ASCII_MAX_ADU:
                self._ascii = None  # longer than any frame: noise
            else:
                self._ascii.append(byte)

    def _ascii_frame(self, body: bytes) -> None:
        try:
            frame = bytes.fromhex(body.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return
        if len(body) % 2 or not verify_lrc(frame) or not _reply_shape_ok(frame[:-1]):
            return
        self.seen[ProtocolKind.MODBUS_ASCII].add(frame[0])


class _LineWatcher:
    """Sees every byte a scan reads: looks for a continuous frame and for Modbus replies.

    ``feed`` never raises (it runs inside the line's reads). Once a frame is found,
    ``broadcast_seen`` is set; with ``collect`` (AUTO, or a continuous listen) ``frame`` then
    holds it (terminator included) and every byte fed after it, and ``scope`` — the cancel
    scope of the pass in flight — is cancelled. Without ``collect`` (an explicit Modbus scan)
    the frame is only a hint and nothing more is kept.
    """

    def __init__(self, *, collect: bool = True) -> None:
        self.replies = _ReplySpotter()
        self.spot_replies = True
        self.collect = collect
        self.frame: bytearray | None = None
        self.broadcast_seen = False
        self.scope: anyio.CancelScope | None = None
        self._splitter = FrameSplitter()
        self._pending = bytearray()  # the splitter's partial line, as raw bytes

    def feed(self, data: bytes) -> None:
        if self.spot_replies:
            self.replies.feed(data)
        if self.frame is not None:
            self.frame += data  # bytes after the frame belong to the continuous receiver
            return
        if self.broadcast_seen and not self.collect:
            return  # a hint only: one frame says enough
        self._pending += data
        for segment in self._splitter.feed(data):
            try:
                parse_frame(
                    segment, received_at=datetime.now(UTC), monotonic_ns=time.monotonic_ns()
                )
            except ServomexProtocolError:
                continue  # misaligned, partial, Modbus bytes or corrupt: keep looking
            self.broadcast_seen = True
            if self.collect:
                begin = max(self._pending.find(segment), 0)
                self.frame = bytearray(self._pending[begin:])
                if self.scope is not None:
                    self.scope.cancel()
            self._pending.clear()
            return
        del self._pending[: len(self._pending) - self._splitter.buffered]

    def take_frame(self) -> bytes:
        """The recognised frame and the bytes after it (empty if none); stop collecting."""
        data = bytes(self.frame or b"")
        self.frame = None
        self.collect = False
        return data


# --------------------------------------------------------------------------- one address


def _label(port: object) -> str:
    if isinstance(port, str):
        return port
    label = getattr(port, "label", None)
    return label if isinstance(label, str) else repr(port)


async def discover_port(
    port: str | Transport,
    *,
    address: int = 1,
    timeout: float = 1.0,
    serial_settings: SerialSettings | None = None,
    frame_period: float | None = None,
) -> DiscoveryResult:
    """Find the mode of the analyser on ``port`` and identify it (read-only).

    When the ladder recognises nothing, a quick probe of :data:`HINT_ADDRESSES` (those other
    than ``address``) in both Modbus framings says whether the line answers at another
    address: the result's ``hint`` and error message then name it.

    Args:
        port: a port string (api.md §16.2; opened and closed here) or a Transport (used as
            is and left open).
        address: Modbus slave address for the probes and identify (1–247).
        timeout: > 0; the Modbus per-transaction timeout and the base of the listen window
            ``max(timeout, 2 × frame_period)``.
        serial_settings: line settings for a string port.
        frame_period: expected continuous broadcast period (> 0; None → 2.0 s).

    Returns:
        A :class:`DiscoveryResult`; never raises a ServomexError (it is stored in ``error``).
    """
    label = _label(port)
    ctx = ErrorContext(port=label)
    protocol: ProtocolKind | None = None
    info: DeviceInfo | None = None
    hint: LineHint | None = None
    try:
        _check_address(address, ctx)
        _check_positive("timeout", timeout, ctx, optional=False)
        _check_positive("frame_period", frame_period, ctx, optional=True)
        _check_settings(serial_settings, ctx)
        _check_port(port)
        owned = isinstance(port, str)
        transport = await resolve_transport(port, serial_settings)
        try:
            try:
                protocol = await detect_protocol(
                    transport,
                    address=address,
                    listen_timeout=first_frame_wait(timeout, frame_period),
                    frame_period=frame_period,
                )
            except ServomexConnectionError as exc:
                if "tried" not in exc.context.extra:
                    raise  # the port failed: nothing to add
                hint = await _address_hint(
                    transport, _MODBUS, (address,), _LineWatcher(collect=False)
                )
                if hint is None:
                    raise
                raise _no_device(label, (address,), ProtocolKind.AUTO, hint) from exc
            info = await _identify(transport, protocol, address, timeout, frame_period)
        finally:
            if owned:
                with anyio.CancelScope(shield=True):
                    await transport.aclose()
    except ServomexError as exc:
        _log.info("discovery on %s: %s", label, exc)
        return DiscoveryResult(label, protocol, info, exc, hint=hint)
    _log.info("discovery on %s: %s, %d channel(s)", label, protocol.value, len(info.channels))
    modbus_address = None if protocol is ProtocolKind.CONTINUOUS_ASCII else address
    return DiscoveryResult(label, protocol, info, address=modbus_address)


async def _identify(
    transport: Transport,
    protocol: ProtocolKind,
    address: int,
    timeout: float,
    frame_period: float | None,
) -> DeviceInfo:
    """One identify in ``protocol``; leaves the transport open (the caller closes it)."""
    if protocol is ProtocolKind.CONTINUOUS_ASCII:
        client = ContinuousClient(transport, timeout=timeout, frame_period=frame_period)
        async with anyio.create_task_group() as tg:
            await client.start(tg)
            try:
                # The frame AUTO recognised was pushed back: usually no wait at all.
                return await client.identify()
            finally:
                tg.cancel_scope.cancel()
    # Not closed: closing the client would close the (possibly borrowed) transport, and a
    # Modbus client owns no task.
    modbus = ModbusClient(transport, framing=protocol, address=address, timeout=timeout)
    return await modbus.identify()


# --------------------------------------------------------------------------- a bus


async def scan_bus(
    port: str | Transport,
    *,
    addresses: Iterable[int] | int | str,
    protocol: ProtocolKind | str | None = None,
    timeout: float = 1.0,
    serial_settings: SerialSettings | None = None,
    frame_period: float | None = None,
    probe_wait: float | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
) -> list[DiscoveryResult]:
    """Find every analyser at ``addresses`` on ``port`` (read-only; module docstring).

    One pass of short FC08 probes over the addresses, then one ``identify()`` per address that
    answered (or whose echo arrived late), all over one shared Modbus line.

    Args:
        port: a port string (opened and closed here) or a Transport (borrowed, left open).
        addresses: the slave addresses: an iterable of ints, one int, or a string such as
            ``"1-247"`` or ``"1,2,30"`` (:func:`parse_addresses`); scanned in ascending order.
        protocol: ``MODBUS_RTU`` / ``MODBUS_ASCII`` (scan in that framing),
            ``CONTINUOUS_ASCII`` (listen, then identify the broadcaster) or None / ``AUTO``
            (find the framing: see the module docstring).
        timeout: > 0; the per-attempt response timeout of each identify and the base of the
            listen window ``max(timeout, 2 × frame_period)``.
        serial_settings: line settings for a string port.
        frame_period: expected continuous broadcast period (> 0; None → 2.0 s).
        probe_wait: how long each probe waits for its echo (> 0); None → the line's default
            (request and echo on the wire plus a turnaround allowance). Never the full timeout.
        on_progress: called after every probe and every identify (``ScanProgress``).

    Returns:
        One :class:`DiscoveryResult` per analyser found, by address (one for a continuous
        broadcaster); an analyser that answered the probe but whose identify failed has
        ``protocol`` and ``address`` set and the identify's ``error``. When none was found, a
        single result whose ``error`` says so — ``ServomexConnectionError`` (``"no recognised
        protocol on …"`` under AUTO, or ``"no device at address … (hint)"``), or
        ``ServomexTimeoutError`` when an explicit Modbus framing got no echo and nothing else
        answers — and whose ``hint`` says what the line carries instead. A port that fails
        mid-scan gives one result with that error. Never raises a ServomexError.
    """
    label = _label(port)
    ctx = ErrorContext(port=label)
    try:
        asked = _check_addresses(addresses, ctx)
        kind = ProtocolKind.AUTO if protocol is None else _coerce_protocol(protocol, ctx)
        _check_positive("timeout", timeout, ctx, optional=False)
        _check_positive("frame_period", frame_period, ctx, optional=True)
        _check_positive("probe_wait", probe_wait, ctx, optional=True)
        _check_settings(serial_settings, ctx)
        _check_port(port)
        owned = isinstance(port, str)
        transport = await resolve_transport(port, serial_settings)
        try:
            scan = _Scan(
                transport, label, asked, kind, timeout, frame_period, probe_wait, on_progress
            )
            results = await scan.run()
        finally:
            if owned:
                with anyio.CancelScope(shield=True):
                    await transport.aclose()
    except ServomexError as exc:
        _log.info("scan of %s: %s", label, exc)
        return [DiscoveryResult(label, None, None, exc)]
    found = sum(r.ok for r in results)
    _log.info("scan of %s: %d analyser(s) found", label, found)
    return results


class _Scan:
    """One :func:`scan_bus` run over an open transport (arguments already validated)."""

    def __init__(
        self,
        transport: Transport,
        label: str,
        asked: tuple[int, ...],
        protocol: ProtocolKind,
        timeout: float,
        frame_period: float | None,
        probe_wait: float | None,
        on_progress: Callable[[ScanProgress], None] | None,
    ) -> None:
        self.transport = transport
        self.label = label
        self.asked = asked
        self.protocol = protocol
        self.timeout = timeout
        self.frame_period = frame_period
        self.probe_wait = probe_wait
        self.on_progress = on_progress
        auto = protocol in (ProtocolKind.AUTO, ProtocolKind.CONTINUOUS_ASCII)
        self.watcher = _LineWatcher(collect=auto)
        self.window = first_frame_wait(timeout, frame_period)

    async def run(self) -> list[DiscoveryResult]:
        """The results: one per analyser found, or one saying why none was.

        Raises:
            ServomexError: the port failed (closed, lost) — the caller stores it.
        """
        started = anyio.current_time()
        auto = self.protocol is ProtocolKind.AUTO
        if self.protocol is ProtocolKind.CONTINUOUS_ASCII:
            return await self._continuous(self.window, required=True)
        framings = _MODBUS if auto else (self.protocol,)
        for framing in framings:
            line = ModbusLine(self.transport, framing=framing, on_receive=self.watcher.feed)
            answered: set[int] = set()
            with anyio.CancelScope() as scope:
                self.watcher.scope = scope if auto else None
                await self._probe_pass(line, framing, answered)
                await self._tail(line)
            self.watcher.scope = None
            if self.watcher.frame is not None:
                _log.info(
                    "%s: a continuous frame arrived during the %s pass", self.label, framing.value
                )
                return await self._continuous(0.0, required=True)
            late = (self.watcher.replies.seen[framing] & set(self.asked)) - answered
            if late:
                _log.info(
                    "%s: late echo from address(es) %s; identifying them too",
                    self.label,
                    format_addresses(late),
                )
            if answered or late:
                return await self._identify_all(line, framing, sorted(answered | late))
        window: float | None = None
        if auto:
            window = self.window
            remaining = window - (anyio.current_time() - started)
            if remaining > 0:
                results = await self._continuous(remaining, required=False)
                if results:
                    return results
        if self.watcher.broadcast_seen:
            hint: LineHint | None = LineHint(continuous_broadcast=True)
        else:
            hint = await _address_hint(self.transport, framings, self.asked, self.watcher)
        error = _no_device(self.label, self.asked, self.protocol, hint, window=window)
        return [DiscoveryResult(self.label, None, None, error, hint=hint)]

    async def _probe_pass(
        self, line: ModbusLine, framing: ProtocolKind, answered: set[int]
    ) -> None:
        total = len(self.asked)
        for done, address in enumerate(self.asked, start=1):
            client = ModbusClient(line, framing=framing, address=address, timeout=self.timeout)
            reply = await client.probe(wait=self.probe_wait)
            if reply is not None:
                answered.add(address)
                _log.debug("%s: address %d answered in %.1f ms", self.label, address, reply * 1e3)
            self._progress(framing, "probing", done, total, len(answered))

    async def _tail(self, line: ModbusLine) -> None:
        """Listen :data:`_TAIL_S` after a pass: a late echo to one of its last probes arrives
        when no later probe is reading the line. Bytes read here pass the line by, so the
        line's silence is kept by hand before anything is sent again."""
        last: float | None = None
        with anyio.move_on_after(_TAIL_S):
            while True:
                data = await self.transport.receive(_LISTEN_CHUNK)
                last = anyio.current_time()
                self.watcher.feed(data)
        if last is not None:
            await anyio.sleep_until(last + line.silence_s)

    async def _identify_all(
        self, line: ModbusLine, framing: ProtocolKind, found: Sequence[int]
    ) -> list[DiscoveryResult]:
        self.watcher.spot_replies = False  # big FC04 replies: nothing more to learn from them
        results: list[DiscoveryResult] = []
        for done, address in enumerate(found, start=1):
            client = ModbusClient(line, framing=framing, address=address, timeout=self.timeout)
            try:
                info = await client.identify()
            except ServomexError as exc:
                _log.info(
                    "%s: address %d answered the probe, identify failed: %s",
                    self.label,
                    address,
                    exc,
                )
                results.append(DiscoveryResult(self.label, framing, None, exc, address=address))
            else:
                results.append(DiscoveryResult(self.label, framing, info, address=address))
            self._progress(framing, "identifying", done, len(found), sum(r.ok for r in results))
        return results

    async def _continuous(self, window: float, *, required: bool) -> list[DiscoveryResult]:
        """Listen up to ``window`` for a frame (unless one is in hand), then identify."""
        watcher = self.watcher
        if watcher.frame is None and not watcher.broadcast_seen:
            self.transport.drain_input()
            with anyio.move_on_after(window):
                while watcher.frame is None:
                    watcher.feed(await self.transport.receive(_LISTEN_CHUNK))
        if watcher.frame is None:
            if not required:
                return []
            raise ServomexTimeoutError(
                f"no valid continuous frame within {window:g}s on {self.label}",
                context=ErrorContext(
                    port=self.label,
                    protocol=ProtocolKind.CONTINUOUS_ASCII,
                    extra={"listen_s": window},
                ),
            )
        self.transport.pushback(watcher.take_frame())
        try:
            info = await _identify(
                self.transport, ProtocolKind.CONTINUOUS_ASCII, 1, self.timeout, self.frame_period
            )
        except ServomexError as exc:
            return [DiscoveryResult(self.label, ProtocolKind.CONTINUOUS_ASCII, None, exc)]
        return [DiscoveryResult(self.label, ProtocolKind.CONTINUOUS_ASCII, info)]

    def _progress(
        self, framing: ProtocolKind, phase: ScanPhase, done: int, total: int, found: int
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(ScanProgress(self.label, framing, phase, done, total, found))


# --------------------------------------------------------------------------- hints


async def _address_hint(
    transport: Transport,
    framings: Sequence[ProtocolKind],
    asked: Sequence[int],
    watcher: _LineWatcher,
) -> LineHint | None:
    """Which addresses other than ``asked`` answer, in the first framing where any does.

    Candidates: the addresses seen replying on the line plus :data:`HINT_ADDRESSES`, minus
    the asked ones; each gets one short probe (a fresh line per framing: its silence starts
    now, after whatever the previous line did).
    """
    skip = set(asked)
    for framing in framings:
        candidates = sorted((watcher.replies.seen[framing] | set(HINT_ADDRESSES)) - skip)
        if not candidates:
            continue
        line = ModbusLine(transport, framing=framing, on_receive=watcher.feed)
        answering = []
        for address in candidates:
            client = ModbusClient(line, framing=framing, address=address)
            if await client.probe() is not None:
                answering.append(address)
        if answering:
            return LineHint(answering=tuple(answering), answering_protocol=framing)
    return None


def _no_device(
    label: str,
    asked: Sequence[int],
    protocol: ProtocolKind,
    hint: LineHint | None,
    *,
    window: float | None = None,
) -> ServomexError:
    """The error of a port where nothing answered at ``asked``."""
    spec = format_addresses(asked)
    plural = "es" if len(asked) > 1 else ""
    extra: dict[str, object] = {"addresses": spec}
    if hint is not None:
        if hint.continuous_broadcast:
            extra["continuous_broadcast"] = True
        if hint.answering:
            extra["answering_addresses"] = format_addresses(hint.answering)
        message = f"no device at address{plural} {spec} on {label} ({hint.describe()})"
    elif protocol is ProtocolKind.AUTO:
        listened = f", no valid continuous frame within {window:g}s" if window is not None else ""
        message = (
            f"no recognised protocol on {label} (no FC08 echo from address{plural} {spec} in "
            f"modbus_rtu or modbus_ascii{listened})"
        )
    else:
        message = (
            f"no device at address{plural} {spec} on {label} (no FC08 echo in {protocol.value})"
        )
    ctx = ErrorContext(
        port=label,
        protocol=protocol,
        address=asked[0] if len(asked) == 1 else None,
        extra=extra,
    )
    if protocol in _MODBUS and hint is None:
        return ServomexTimeoutError(message, context=ctx)
    return ServomexConnectionError(message, context=ctx)


# --------------------------------------------------------------------------- several ports


async def find_devices(
    ports: Iterable[str | Transport],
    *,
    address: int = 1,
    timeout: float = 1.0,
    frame_period: float | None = None,
    addresses: Iterable[int] | str | None = None,
) -> list[DiscoveryResult]:
    """:func:`discover_port` on each port, one after another, in order.

    With ``addresses`` (a list or a string such as ``"1-247"``), each port is scanned with
    :func:`scan_bus` instead (AUTO framing) and its results follow each other in the list.
    """
    results: list[DiscoveryResult] = []
    for port in ports:
        if addresses is not None:
            results += await scan_bus(
                port, addresses=addresses, timeout=timeout, frame_period=frame_period
            )
            continue
        results.append(
            await discover_port(port, address=address, timeout=timeout, frame_period=frame_period)
        )
    return results


def summarize(results: Iterable[DiscoveryResult]) -> DiscoverySummary:
    """Split ``results`` into found (``ok``) and failed."""
    items = tuple(results)
    return DiscoverySummary(
        found=tuple(r for r in items if r.ok), failed=tuple(r for r in items if not r.ok)
    )
