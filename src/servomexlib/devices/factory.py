"""Entry points: ``open_device``, ``open_continuous`` and ``detect_protocol`` (api.md §4).

Every argument is validated before any I/O. A string port is opened (and owned) here; a
Transport is used as is. Either way the returned Analyzer closes the transport on exit. An
open that fails or is cancelled after the port was opened (during AUTO detection) closes the
port it opened, shielded, before the error propagates.
"""

from __future__ import annotations

import math

import anyio

from ..clients.base import AnalyzerClient
from ..clients.continuous import ContinuousClient, first_frame_wait
from ..errors import ErrorContext, ServomexValidationError
from ..settings import SerialSettings
from ..transport.base import ByteStreamTransport, Transport
from ..transport.ports import parse_port, resolve_transport
from .analyzer import Analyzer
from .models import ProtocolKind

__all__ = ["detect_protocol", "open_continuous", "open_device"]

_MODBUS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)


def _port_label(port: object) -> str | None:
    return port if isinstance(port, str) else getattr(port, "label", None)


def _check_port(port: object) -> None:
    if isinstance(port, str):
        parse_port(port)  # grammar errors before any I/O
    elif not isinstance(port, ByteStreamTransport | Transport):
        raise ServomexValidationError(f"port must be a string or a Transport, got {port!r}")


def _coerce_protocol(protocol: ProtocolKind | str, ctx: ErrorContext) -> ProtocolKind:
    if isinstance(protocol, ProtocolKind):
        return protocol
    if isinstance(protocol, str):
        try:
            return ProtocolKind(protocol.strip().lower())
        except ValueError:
            pass
    valid = ", ".join(p.value for p in ProtocolKind)
    raise ServomexValidationError(
        f"unknown protocol {protocol!r}; expected one of {valid}", context=ctx
    )


def _check_positive(name: str, value: object, ctx: ErrorContext, *, optional: bool) -> None:
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        allowed = " or None" if optional else ""
        raise ServomexValidationError(
            f"{name} must be a positive number of seconds{allowed}, got {value!r}", context=ctx
        )


def _check_address(address: object, ctx: ErrorContext) -> int:
    if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
        raise ServomexValidationError(
            f"address must be an integer 1-247, got {address!r}", context=ctx
        )
    return address


def _check_settings(settings: object, ctx: ErrorContext) -> None:
    if settings is not None and not isinstance(settings, SerialSettings):
        raise ServomexValidationError(
            f"serial_settings must be a SerialSettings or None, got {type(settings).__name__}",
            context=ctx,
        )


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
        port: a port string (api.md §16.2: device path, COM name, ``sim://…``,
            ``tcp://host:port``) — opened and owned here — or a Transport, used as is.
        protocol: ProtocolKind or its string value; AUTO runs the protocol.md §8 ladder.
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
    kind = _coerce_protocol(protocol, ctx)
    address = _check_address(address, ctx)
    _check_positive("timeout", timeout, ctx, optional=False)
    _check_positive("frame_period", frame_period, ctx, optional=True)
    _check_settings(serial_settings, ctx)
    _check_port(port)
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
    _check_positive("timeout", timeout, ctx, optional=False)
    _check_positive("frame_period", frame_period, ctx, optional=True)
    _check_settings(serial_settings, ctx)
    if not isinstance(device, str):
        raise ServomexValidationError(f"device must be a string, got {device!r}", context=ctx)
    _check_port(port)
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
    """Find the analyser's wire mode with the protocol.md §8 ladder.

    Listen window: ``max(listen_timeout, 2 × frame_period)`` when ``frame_period`` is given,
    else ``listen_timeout``; ``frame_frequency`` is an alias of ``frame_period``.

    Raises:
        ServomexConnectionError: ``"no recognised protocol on <port> …"``.
    """
    period = frame_period if frame_period is not None else frame_frequency
    ctx = ErrorContext(port=transport.label, protocol=ProtocolKind.AUTO)
    _check_address(address, ctx)
    _check_positive("probe_timeout", probe_timeout, ctx, optional=False)
    _check_positive("listen_timeout", listen_timeout, ctx, optional=False)
    _check_positive("frame_period", period, ctx, optional=True)
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
