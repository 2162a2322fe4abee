"""Saying why nothing was found: which other addresses answer, and the error that says so.

When the asked addresses gave nothing, discovery says what the line does carry instead of a
bare "no recognised protocol": a continuous broadcast (seen by the
:class:`~.line_watcher.LineWatcher`), or other addresses that answer — those seen replying on
the line plus a quick probe of a few common ones (:data:`HINT_ADDRESSES`) that were not asked
(:func:`address_hint`). :func:`no_device` builds the error of such a port: its message names the
hint in the library's words, its context carries the addresses.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..clients.modbus import ModbusClient, ModbusLine
from ..devices.models import ProtocolKind
from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexTimeoutError,
)
from ..transport.base import Transport
from .addresses import format_addresses
from .line_watcher import MODBUS_FRAMINGS, LineWatcher
from .results import LineHint

__all__ = ["HINT_ADDRESSES", "address_hint", "no_device"]

#: Addresses a failed discovery probes quickly, when they were not asked, to say what answers:
#: 1 is the library's (and many installers') default, 30 the measured unit's, 2 the usual
#: second analyser of a multidrop line.
HINT_ADDRESSES: tuple[int, ...] = (1, 2, 30)


async def address_hint(
    transport: Transport,
    framings: Sequence[ProtocolKind],
    asked: Sequence[int],
    watcher: LineWatcher,
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


def no_device(
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
    if protocol in MODBUS_FRAMINGS and hint is None:
        return ServomexTimeoutError(message, context=ctx)
    return ServomexConnectionError(message, context=ctx)
