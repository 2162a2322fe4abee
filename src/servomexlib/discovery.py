"""Discovery: which analyser, in which mode, is on which port (api.md §14).

Theory of operation
-------------------
:func:`discover_port` is read-only: it runs the AUTO ladder of protocol.md §8 (FC08 loopback
probes, then a passive listen of ``max(timeout, 2 × frame_period)``) and then one
``identify()`` in the mode found — FC04 (0, 70) over Modbus; over continuous mode a receiver
runs just until the first frame (the one AUTO recognised and pushed back) is decoded. Nothing
is written to the analyser beyond the loopback probes and register reads.

Discovery never raises a :class:`~servomexlib.errors.ServomexError`: whatever went wrong —
bad arguments, a port that would not open, no recognised protocol, a failed identify — is stored
in :attr:`DiscoveryResult.error`. (Cancellation and non-library errors still propagate.)

A port given as a string is opened and closed here; a :class:`~servomexlib.transport.Transport`
is borrowed and left open.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import anyio

from .clients.continuous import ContinuousClient, first_frame_wait
from .clients.detect import detect_protocol
from .clients.modbus import ModbusClient
from .devices.factory import _check_address, _check_port, _check_positive, _check_settings
from .devices.models import DeviceInfo, ProtocolKind
from .errors import ErrorContext, ServomexError
from .settings import SerialSettings
from .transport.base import Transport
from .transport.ports import resolve_transport

__all__ = ["DiscoveryResult", "DiscoverySummary", "discover_port", "find_devices", "summarize"]

_log = logging.getLogger("servomexlib.discovery")


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveryResult:
    """What :func:`discover_port` found on one port.

    ``protocol`` is the mode AUTO recognised (None if it recognised none); ``info`` the
    ``identify()`` result; ``error`` the ServomexError that stopped discovery, if any. A port
    whose mode was found but whose identify failed has ``protocol`` set and an ``error``.
    """

    port: str
    protocol: ProtocolKind | None
    info: DeviceInfo | None
    error: ServomexError | None = None

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
    try:
        _check_address(address, ctx)
        _check_positive("timeout", timeout, ctx, optional=False)
        _check_positive("frame_period", frame_period, ctx, optional=True)
        _check_settings(serial_settings, ctx)
        _check_port(port)
        owned = isinstance(port, str)
        transport = await resolve_transport(port, serial_settings)
        try:
            protocol = await detect_protocol(
                transport,
                address=address,
                listen_timeout=first_frame_wait(timeout, frame_period),
                frame_period=frame_period,
            )
            info = await _identify(transport, protocol, address, timeout, frame_period)
        finally:
            if owned:
                with anyio.CancelScope(shield=True):
                    await transport.aclose()
    except ServomexError as exc:
        _log.info("discovery on %s: %s", label, exc)
        return DiscoveryResult(label, protocol, info, exc)
    _log.info("discovery on %s: %s, %d channel(s)", label, protocol.value, len(info.channels))
    return DiscoveryResult(label, protocol, info)


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


async def find_devices(
    ports: Iterable[str | Transport],
    *,
    address: int = 1,
    timeout: float = 1.0,
    frame_period: float | None = None,
) -> list[DiscoveryResult]:
    """:func:`discover_port` on each port, one after another, in order."""
    results: list[DiscoveryResult] = []
    for port in ports:
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
