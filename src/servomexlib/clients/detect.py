"""AUTO: tell continuous, Modbus RTU and Modbus ASCII apart on an open transport
(docs/protocol.md, §8).

Theory of operation
-------------------
The analyser runs exactly one mode, chosen on its front panel, and only the Modbus modes answer.
So the ladder asks first and listens last:

1. Drop the transport's pushback buffer, so bytes parked for a continuous reader never reach a
   Modbus framer.
2. Probe in Modbus RTU: FC08 sub-function 0 with payload ``AB CD`` through a temporary
   :class:`~servomexlib.clients.modbus.ModbusClient` (its own line: 50 ms silence before each
   request, 2 retries, ``probe_timeout`` per attempt), up to ``probe_tries`` times. The echo —
   or any well-formed exception reply from the addressed slave — proves the framing.
3. Drop the pushback buffer again and probe the same way in Modbus ASCII.
4. Listen passively for ``max(listen_timeout, 2 × frame_period)`` (the window must exceed the
   operator-set broadcast period, HW), cutting the bytes at CR/LF with
   :class:`~servomexlib.wire.continuous.FrameSplitter`; the first segment that passes checksum
   and full parse proves continuous mode. That frame and every byte after it are pushed back so
   the continuous receiver starts with it.
5. Otherwise raise :class:`~servomexlib.errors.ServomexConnectionError` naming what was tried.

**Sniffing during the probes.** A broadcasting analyser ignores the probes, but its frames
arrive while they run: the probes' line reads them as stale bytes during its pre-request
silence, or its framer rejects them as non-matching replies. Waiting for both probes to time
out (≈ 3.3 s each) before listening would make continuous detection slow for no reason, so one
:class:`FrameSniffer` sees every byte read during the whole ladder (through the
:class:`~servomexlib.clients.modbus.ModbusLine` ``on_receive`` hook, then in the listen step).
A checksum-valid, fully parsed frame seen at any point ends the ladder at once as
CONTINUOUS_ASCII: the probe in flight is cancelled and the frame plus every byte read after it
is pushed back. The order of the ladder is unchanged — the probes still go first and a Modbus answer
still wins — the listen step merely starts with the bytes the probes already read.

:class:`FrameSniffer` is public because discovery's bus scan
(:mod:`servomexlib.discovery`) watches its line for a broadcast the same way: one sniffer, two
users. Without ``collect`` it only notes that a broadcast was seen (a hint for an explicit
Modbus scan) and keeps no bytes.

The temporary clients are never closed (that would close the transport); they own no task.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from ..devices.models import ProtocolKind
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from ..validation import check_address, check_timeout
from ..wire.continuous import FrameSplitter, parse_frame
from .modbus import ModbusClient, ModbusLine

if TYPE_CHECKING:
    from ..transport.base import Transport

__all__ = [
    "DEFAULT_FRAME_PERIOD",
    "DEFAULT_LISTEN_TIMEOUT",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_PROBE_TRIES",
    "PROBE_PAYLOAD",
    "FrameSniffer",
    "detect_protocol",
]

_log = logging.getLogger("servomexlib.detect")

PROBE_PAYLOAD = b"\xab\xcd"  # FC08 "return query data" payload used by AUTO (LIB)
DEFAULT_PROBE_TIMEOUT = 0.5
DEFAULT_PROBE_TRIES = 2
DEFAULT_LISTEN_TIMEOUT = 5.0
DEFAULT_FRAME_PERIOD = 2.0  # the expected broadcast period when the caller names none
_LISTEN_CHUNK = 4096


async def detect_protocol(
    transport: Transport,
    *,
    address: int = 1,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    probe_tries: int = DEFAULT_PROBE_TRIES,
    listen_timeout: float = DEFAULT_LISTEN_TIMEOUT,
    frame_period: float | None = None,
    frame_frequency: float | None = None,
) -> ProtocolKind:
    """Run the AUTO ladder (docs/protocol.md, §8) and return the concrete mode found.

    Args:
        transport: an open transport; it is left open whatever the outcome.
        address: Modbus slave address for the probes (1-247).
        probe_timeout: per-attempt response timeout of each FC08 probe.
        probe_tries: FC08 probes per framing (each with the client's 2 retries).
        listen_timeout: passive listening window for continuous frames.
        frame_period: expected broadcast period; widens the window to ``2 × frame_period``.
        frame_frequency: alias of ``frame_period`` (same meaning, seconds between frames).

    Returns:
        ``MODBUS_RTU``, ``MODBUS_ASCII`` or ``CONTINUOUS_ASCII``. For continuous mode the
        recognised frame and the bytes after it are pushed back onto ``transport``.

    Raises:
        ServomexValidationError: a bad argument (before any I/O).
        ServomexConnectionError: nothing recognised (``"no recognised protocol on <port> …"``,
            context port, address, ``protocol=auto``), or the transport closed.
    """
    ctx = ErrorContext(port=transport.label, address=address, protocol=ProtocolKind.AUTO)
    check_address(address, ctx)
    check_timeout(probe_timeout, ctx, what="probe_timeout")
    check_timeout(listen_timeout, ctx, what="listen_timeout")
    check_timeout(frame_period, ctx, what="frame_period", optional=True)
    check_timeout(frame_frequency, ctx, what="frame_frequency", optional=True)
    if isinstance(probe_tries, bool) or not isinstance(probe_tries, int) or probe_tries < 1:
        raise ServomexValidationError(f"probe_tries must be >= 1, got {probe_tries!r}", context=ctx)
    if frame_period is not None and frame_frequency is not None and frame_period != frame_frequency:
        raise ServomexValidationError(
            "frame_frequency is an alias of frame_period; give one of them", context=ctx
        )
    period = frame_period if frame_period is not None else frame_frequency
    window = max(listen_timeout, 2 * period) if period is not None else listen_timeout
    started = time.monotonic()
    sniffer = FrameSniffer()

    for framing in (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII):
        transport.drain_input()
        answered = False
        with anyio.CancelScope() as scope:
            sniffer.scope = scope
            answered = await _probe(
                transport, framing, address, probe_timeout, probe_tries, sniffer
            )
        sniffer.scope = None
        if sniffer.found is not None:
            transport.pushback(sniffer.take())
            _log.info(
                "%s: AUTO saw a continuous frame during the %s probe",
                transport.label,
                framing.value,
            )
            return ProtocolKind.CONTINUOUS_ASCII
        if answered:
            _log.info("%s: AUTO found %s at address %d", transport.label, framing.value, address)
            return framing

    transport.drain_input()
    if await _listen(transport, window, sniffer):
        _log.info("%s: AUTO found continuous frames", transport.label)
        return ProtocolKind.CONTINUOUS_ASCII
    raise ServomexConnectionError(
        f"no recognised protocol on {transport.label} (no FC08 echo from address {address} in "
        f"modbus_rtu or modbus_ascii, no valid continuous frame within {window:g}s)",
        context=ctx.merged(
            elapsed_s=time.monotonic() - started,
            extra={"tried": "modbus_rtu,modbus_ascii,continuous", "listen_s": window},
        ),
    )


class FrameSniffer:
    """Looks for a valid continuous frame in every byte fed to it (AUTO's probes and listen,
    a bus scan's line).

    ``feed`` cuts the bytes at CR/LF (:class:`~servomexlib.wire.continuous.FrameSplitter`);
    the first segment that passes checksum and full parse is a frame: ``seen`` becomes True.
    With ``collect`` (the default), ``found`` then holds that frame (terminator included) and
    every byte fed after it — they belong to the continuous receiver — and ``scope``, the
    cancel scope of the probe in flight if any, is cancelled so the caller stops at once.
    Without ``collect`` the frame is only noted (``seen``) and nothing is kept. ``feed`` never
    raises: it runs inside a Modbus line's reads. Memory is bounded by the splitter's maximum
    segment.
    """

    def __init__(self, *, collect: bool = True) -> None:
        self.collect = collect
        self.seen = False
        self.found: bytearray | None = None
        self.scope: anyio.CancelScope | None = None
        self._splitter = FrameSplitter()
        self._pending = bytearray()  # the splitter's partial line, as raw bytes

    def feed(self, data: bytes) -> None:
        if self.found is not None:
            self.found += data  # bytes after the frame belong to the continuous receiver
            return
        if self.seen and not self.collect:
            return  # noted already: one frame says enough
        self._pending += data
        for segment in self._splitter.feed(data):
            try:
                parse_frame(
                    segment, received_at=datetime.now(UTC), monotonic_ns=time.monotonic_ns()
                )
            except ServomexProtocolError:
                continue  # misaligned, partial, Modbus bytes or corrupt: keep looking
            self.seen = True
            if self.collect:
                # Segments are cut from these bytes, so the frame is found in them.
                begin = max(self._pending.find(segment), 0)
                self.found = bytearray(self._pending[begin:])
                if self.scope is not None:
                    self.scope.cancel()
            self._pending.clear()
            return
        # Keep only what the splitter still holds (bounded by its maximum segment).
        del self._pending[: len(self._pending) - self._splitter.buffered]

    def take(self) -> bytes:
        """The recognised frame and the bytes after it (empty if none was found); from now on
        the sniffer only notes frames (``collect`` is cleared)."""
        data = bytes(self.found or b"")
        self.found = None
        self.collect = False
        return data


async def _probe(
    transport: Transport,
    framing: ProtocolKind,
    address: int,
    timeout: float,
    tries: int,
    sniffer: FrameSniffer,
) -> bool:
    """FC08 ``AB CD`` up to ``tries`` times; True on the echo or an exception reply.

    Every byte the probe's line reads is shown to ``sniffer`` as well.
    """
    line = ModbusLine(transport, framing=framing, on_receive=sniffer.feed)
    client = ModbusClient(line, framing=framing, address=address, timeout=timeout)
    for attempt in range(tries):
        try:
            echo = await client.loopback(PROBE_PAYLOAD)
        except ServomexModbusError:
            return True  # a well-formed exception reply from our slave proves the framing
        except (ServomexTimeoutError, ServomexProtocolError) as exc:
            _log.debug(
                "%s: %s probe %d failed: %s", transport.label, framing.value, attempt + 1, exc
            )
            continue
        if echo == PROBE_PAYLOAD:
            return True
    return False


async def _listen(transport: Transport, window: float, sniffer: FrameSniffer) -> bool:
    """Listen for ``window`` seconds; on the first valid frame push it (and the rest) back.

    The sniffer keeps what the probes read, so a frame they left half-read completes here.
    """
    with anyio.move_on_after(window):
        while sniffer.found is None:
            sniffer.feed(await transport.receive(_LISTEN_CHUNK))
    if sniffer.found is None:
        return False
    transport.pushback(sniffer.take())
    return True
