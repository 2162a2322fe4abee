"""Entry points: ``open_device``, ``open_continuous`` and ``detect_protocol``.

Usage: docs/quickstart-async.md. Every argument is validated before any I/O (the shared checks
of :mod:`servomexlib.validation`: slave address 1-247, positive finite timeouts). A string port
is opened (and owned) here; a Transport is used as is. Either way the returned Analyzer closes
the transport on exit. An open that fails or is cancelled after the port was opened (during
AUTO detection) closes the port it opened, shielded, before the error propagates.
"""

from __future__ import annotations

import anyio

from ..clients.base import AnalyzerClient
from ..clients.continuous import ContinuousClient, first_frame_wait
from ..errors import ErrorContext, ServomexValidationError
from ..settings import SerialSettings
from ..transport.base import Transport
from ..transport.ports import check_port, resolve_transport
from ..validation import check_address, check_serial_settings, check_timeout
from .analyzer import Analyzer
from .models import ProtocolKind, coerce_protocol

__all__ = ["detect_protocol", "open_continuous", "open_device"]

_MODBUS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)


def _port_label(port: object) -> str | None:
    if isinstance(port, str):
        return port
    return port.label if isinstance(port, Transport) else None


async def open_device(
    port: str | Transport,
    *,
    protocol: ProtocolKind | str = ProtocolKind.AUTO,
    address: int = 1,
    serial_settings: SerialSettings | None = None,
    timeout: float = 1.0,
    identify: bool = True,
    frame_period: float | None = None,
) -> Analyzer:
    """Open one analyser; returns an Analyzer that is **not yet entered**.

    Use it as ``async with await open_device(port, protocol="continuous") as anz: …``.

    Args:
        port: a port string (device path, COM name, ``sim://…``, ``tcp://host:port``; see
            ``servomexlib.transport.ports``) — opened and owned here — or a Transport, used as is.
        protocol: ProtocolKind or its string value; AUTO runs the ladder of docs/protocol.md, §8.
        address: Modbus slave address 1–247 (validated for every protocol).
        serial_settings: line settings for a string port (its ``port`` is replaced by
            ``port``); default ``SerialSettings(port=port)``.
        timeout: > 0; the Modbus per-transaction timeout and the base of the continuous
            first-frame wait ``max(timeout, 2 × frame_period)``.
        identify: run ``identify()`` on entry and cache it in ``info``.
        frame_period: > 0 or None (2.0 s): the expected continuous broadcast period.

    Raises:
        ServomexValidationError: a bad argument (before any I/O).
        ServomexConnectionError: ``"could not open …"``; AUTO found nothing.
    """
    ctx = ErrorContext(port=_port_label(port))
    kind = coerce_protocol(protocol, ctx)
    address = check_address(address, ctx)
    check_timeout(timeout, ctx)
    check_timeout(frame_period, ctx, what="frame_period", optional=True)
    check_serial_settings(serial_settings, ctx)
    check_port(port)
    owned = isinstance(port, str)
    transport = await resolve_transport(port, serial_settings)
    try:
        if kind is ProtocolKind.AUTO:
            kind = await detect_protocol(
                transport,
                address=address,
                listen_timeout=first_frame_wait(timeout, frame_period),
                frame_period=frame_period,
            )
        client = _make_client(
            kind, transport, address=address, timeout=timeout, frame_period=frame_period
        )
    except BaseException:
        if owned:
            # Shielded: a cancelled open must still release the port it opened.
            with anyio.CancelScope(shield=True):
                await transport.aclose()
        raise
    return Analyzer(client, identify_on_enter=identify)


async def open_continuous(
    port: str | Transport,
    *,
    device: str = "",
    timeout: float = 1.0,
    serial_settings: SerialSettings | None = None,
    frame_period: float | None = None,
) -> Analyzer:
    """Open an analyser in Continuous ASCII mode (no AUTO, no identify on entry).

    Raises:
        ServomexValidationError: a bad argument (before any I/O).
        ServomexConnectionError: ``"could not open …"``.
    """
    ctx = ErrorContext(port=_port_label(port), protocol=ProtocolKind.CONTINUOUS_ASCII)
    check_timeout(timeout, ctx)
    check_timeout(frame_period, ctx, what="frame_period", optional=True)
    check_serial_settings(serial_settings, ctx)
    if not isinstance(device, str):
        raise ServomexValidationError(f"device must be a string, got {device!r}", context=ctx)
    check_port(port)
    transport = await resolve_transport(port, serial_settings)
    client = ContinuousClient(transport, timeout=timeout, frame_period=frame_period)
    return Analyzer(client, device=device)


def _make_client(
    kind: ProtocolKind,
    transport: Transport,
    *,
    address: int,
    timeout: float,
    frame_period: float | None,
) -> AnalyzerClient:
    if kind is ProtocolKind.CONTINUOUS_ASCII:
        return ContinuousClient(transport, timeout=timeout, frame_period=frame_period)
    if kind in _MODBUS:
        # Imported lazily: the Modbus stack (anymodbus) is only needed for Modbus ports.
        from ..clients.modbus import ModbusClient

        client: AnalyzerClient = ModbusClient(
            transport, framing=kind, address=address, timeout=timeout
        )
        return client
    raise ServomexValidationError(  # pragma: no cover - AUTO is resolved before
        f"protocol {kind.value} cannot be opened directly"
    )


async def detect_protocol(
    transport: Transport,
    *,
    address: int = 1,
    probe_timeout: float = 0.5,
    probe_tries: int = 2,
    listen_timeout: float = 5.0,
    frame_period: float | None = None,
    frame_frequency: float | None = None,
) -> ProtocolKind:
    """Find the analyser's wire mode with the ladder of docs/protocol.md, §8.

    Listen window: ``max(listen_timeout, 2 × frame_period)`` when ``frame_period`` is given,
    else ``listen_timeout``; ``frame_frequency`` is an alias of ``frame_period``.

    Raises:
        ServomexConnectionError: ``"no recognised protocol on <port> …"``.
    """
    period = frame_period if frame_period is not None else frame_frequency
    ctx = ErrorContext(port=transport.label, protocol=ProtocolKind.AUTO)
    check_address(address, ctx)
    check_timeout(probe_timeout, ctx, what="probe_timeout")
    check_timeout(listen_timeout, ctx, what="listen_timeout")
    check_timeout(period, ctx, what="frame_period", optional=True)
    window = listen_timeout if period is None else max(listen_timeout, 2.0 * period)
    # Imported lazily: the ladder's Modbus probes need the Modbus stack (anymodbus).
    from ..clients.detect import detect_protocol as ladder

    return await ladder(
        transport,
        address=address,
        probe_timeout=probe_timeout,
        probe_tries=probe_tries,
        listen_timeout=window,
    )
