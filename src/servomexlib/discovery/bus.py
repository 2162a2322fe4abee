"""The bus scan: every analyser at a set of addresses on one multidrop line (:func:`scan_bus`).

Theory of operation
-------------------
The AUTO ladder's probes (three attempts of 0.5 s each, twice, per framing) would take minutes
over 247 addresses, so a scan makes one pass of *short* probes — :meth:`ModbusClient.probe
<servomexlib.clients.modbus.ModbusClient.probe>`: one FC08 echo attempt with a fresh payload,
waiting only the wire time of the request and its echo plus a turnaround allowance (≈ 68 ms at
19200 baud RTU), no retry (docs/protocol.md, §9.4) — and then identifies each address that
answered with the full timeout and retries. Every probe and identify of a scan goes through one
:class:`~servomexlib.clients.modbus.ModbusLine`, so the 50 ms silence holds across the change
of slave address. 247 unanswered probes at 19200 baud RTU take about 30 s. After each pass the
scan listens :data:`TAIL_S` for late echoes to its last probes.

Without a protocol (AUTO) the framing is found by the scan itself: a pass in Modbus RTU; if
no address answered, a pass in Modbus ASCII; then, if the passes took less than the listen
window, a passive listen for the rest of it.

Every byte the scan reads is shown to one :class:`~.line_watcher.LineWatcher`. A continuous
frame under AUTO ends the scan at once as CONTINUOUS_ASCII (the probe in flight is cancelled;
the frame and every byte after it are pushed back so the receiver starts with it); under an
explicit Modbus protocol it is kept as a hint, because a broadcasting analyser ignores every
probe. An address whose echo arrived after its probe gave up is identified like one that
answered in time (a slow analyser is not lost), and an address that answered on the line
without being asked becomes a hint (:mod:`.hints`).

:func:`find_devices` runs :func:`~.port.discover_port` or :func:`scan_bus` over several ports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import anyio

from ..clients.continuous import first_frame_wait
from ..clients.modbus import ModbusClient, ModbusLine
from ..devices.models import ProtocolKind, coerce_protocol
from ..errors import ErrorContext, ServomexError, ServomexTimeoutError
from ..settings import SerialSettings
from ..transport.base import Transport
from ..transport.ports import check_port, resolve_transport
from ..validation import check_serial_settings, check_timeout
from .addresses import check_addresses, format_addresses
from .hints import address_hint, no_device
from .line_watcher import MODBUS_FRAMINGS, LineWatcher
from .port import discover_port, identify, port_label
from .results import DiscoveryResult, LineHint, ScanPhase, ScanProgress

__all__ = ["LISTEN_CHUNK", "TAIL_S", "BusScan", "find_devices", "scan_bus"]

_log = logging.getLogger("servomexlib.discovery")

#: Bytes asked of the transport per read while listening.
LISTEN_CHUNK = 4096
#: Listening after a probe pass, for late echoes to its last probes: longer than any turnaround
#: measured (20-40 ms, HW) plus the echo on the wire, several times over.
TAIL_S = 0.2


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
    label = port_label(port)
    ctx = ErrorContext(port=label)
    try:
        asked = check_addresses(addresses, ctx)
        kind = ProtocolKind.AUTO if protocol is None else coerce_protocol(protocol, ctx)
        check_timeout(timeout, ctx)
        check_timeout(frame_period, ctx, what="frame_period", optional=True)
        check_timeout(probe_wait, ctx, what="probe_wait", optional=True)
        check_serial_settings(serial_settings, ctx)
        check_port(port)
        owned = isinstance(port, str)
        transport = await resolve_transport(port, serial_settings)
        try:
            scan = BusScan(
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


class BusScan:
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
        self.watcher = LineWatcher(collect=auto)
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
        framings = MODBUS_FRAMINGS if auto else (self.protocol,)
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
            hint = await address_hint(self.transport, framings, self.asked, self.watcher)
        error = no_device(self.label, self.asked, self.protocol, hint, window=window)
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
        """Listen :data:`TAIL_S` after a pass: a late echo to one of its last probes arrives
        when no later probe is reading the line. Bytes read here pass the line by, so the
        line's silence is kept by hand before anything is sent again."""
        last: float | None = None
        with anyio.move_on_after(TAIL_S):
            while True:
                data = await self.transport.receive(LISTEN_CHUNK)
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
                    watcher.feed(await self.transport.receive(LISTEN_CHUNK))
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
            info = await identify(
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
