"""What discovery returns: results, hints, progress (the values of :mod:`servomexlib.discovery`).

Frozen, slotted values; no I/O. A :class:`DiscoveryResult` is about one port (one analyser of a
multidrop bus, for a scan); a :class:`LineHint` says what a line carries when nothing answered at
the asked address(es); :class:`ScanProgress` is what :func:`~servomexlib.discovery.scan_bus`
reports after every probe and identify.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from ..devices.models import DeviceInfo, ProtocolKind
from ..errors import ServomexError

__all__ = [
    "DiscoveryResult",
    "DiscoverySummary",
    "LineHint",
    "ScanPhase",
    "ScanProgress",
    "summarize",
]

ScanPhase = Literal["probing", "identifying"]


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


def summarize(results: Iterable[DiscoveryResult]) -> DiscoverySummary:
    """Split ``results`` into found (``ok``) and failed."""
    items = tuple(results)
    return DiscoverySummary(
        found=tuple(r for r in items if r.ok), failed=tuple(r for r in items if not r.ok)
    )
