"""Discovery: which analyser, in which mode, is on which port (docs/cli.md "discover";
docs/protocol.md, §8 for the ladder, §9.4 for address scans).

Theory of operation
-------------------
**One address.** :func:`discover_port` is read-only: it runs the AUTO ladder (FC08 loopback
probes, then a passive listen of ``max(timeout, 2 × frame_period)``) and then one
``identify()`` in the mode found (:mod:`.port`).

**A bus.** :func:`scan_bus` finds every analyser on a multidrop line: one pass of short FC08
probes over the addresses, then one ``identify()`` per address that answered, all over one
shared Modbus line; without a protocol it finds the framing itself (:mod:`.bus`).

**Watching the line.** Every byte a scan reads is shown to one line watcher that looks for a
continuous frame (the AUTO ladder's own sniffer) and for well-formed Modbus replies from any
slave, so a broadcast ends an AUTO scan at once and a late echo is not lost
(:mod:`.line_watcher`).

**Saying why nothing was found.** When the asked addresses gave nothing, the result says what
the line does carry instead of a bare "no recognised protocol": a continuous broadcast, or
other addresses that answer — those seen replying plus a quick probe of
:data:`HINT_ADDRESSES` that were not asked (:mod:`.hints`). The answer is in
:attr:`DiscoveryResult.hint` and in the error's message and context.

Discovery never raises a :class:`~servomexlib.errors.ServomexError`: whatever went wrong —
bad arguments, a port that would not open, no recognised protocol, a failed identify — is stored
in :attr:`DiscoveryResult.error`. (Cancellation and non-library errors still propagate.)

A port given as a string is opened and closed here; a :class:`~servomexlib.transport.Transport`
is borrowed and left open.

The package's modules: :mod:`.results` (the values), :mod:`.addresses` (address lists),
:mod:`.line_watcher`, :mod:`.hints`, :mod:`.port` (one address) and :mod:`.bus` (the scan and
:func:`find_devices`). Import the public names from here.
"""

from __future__ import annotations

from .addresses import format_addresses, parse_addresses
from .bus import find_devices, scan_bus
from .hints import HINT_ADDRESSES
from .port import discover_port
from .results import DiscoveryResult, DiscoverySummary, LineHint, ScanProgress, summarize

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
