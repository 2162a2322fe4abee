"""Discovery of one address on one port: :func:`discover_port`, and what every discovery shares.

:func:`discover_port` is read-only: it runs the AUTO ladder of docs/protocol.md, §8 (FC08
loopback probes, then a passive listen of ``max(timeout, 2 × frame_period)``) and then one
``identify()`` in the mode found — FC04 (0, 70) over Modbus; over continuous mode a receiver
runs just until the first frame (the one AUTO recognised and pushed back) is decoded. Nothing is
written to the analyser beyond the loopback probes and register reads. When the ladder
recognises nothing, a quick probe of :data:`~.hints.HINT_ADDRESSES` says whether the line
answers at another address.

Shared with the bus scan: :func:`port_label` and :func:`identify`. The argument checks are
the library's own (:func:`~servomexlib.transport.ports.check_port`, and
:mod:`servomexlib.validation` for settings, addresses and durations).
"""

from __future__ import annotations

import logging

import anyio

from ..clients.continuous import ContinuousClient, first_frame_wait
from ..clients.detect import detect_protocol
from ..clients.modbus import ModbusClient
from ..devices.models import DeviceInfo, ProtocolKind
from ..errors import ErrorContext, ServomexConnectionError, ServomexError
from ..settings import SerialSettings
from ..transport.base import ByteStreamTransport, Transport
from ..transport.ports import check_port, resolve_transport
from ..validation import check_address, check_serial_settings, check_timeout
from .hints import address_hint, no_device
from .line_watcher import MODBUS_FRAMINGS, LineWatcher
from .results import DiscoveryResult, LineHint

__all__ = ["discover_port", "identify", "port_label"]

_log = logging.getLogger("servomexlib.discovery")


def port_label(port: object) -> str:
    """The label of ``port``: the string itself, a transport's ``label``, else its repr."""
    if isinstance(port, str):
        return port
    if isinstance(port, ByteStreamTransport | Transport):
        return port.label
    return repr(port)


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
        port: a port string (a device path, a COM name, ``sim://…`` or ``tcp://host:port``;
            opened and closed here) or a Transport (used as is and left open).
        address: Modbus slave address for the probes and identify (1–247).
        timeout: > 0; the Modbus per-transaction timeout and the base of the listen window
            ``max(timeout, 2 × frame_period)``.
        serial_settings: line settings for a string port.
        frame_period: expected continuous broadcast period (> 0; None → 2.0 s).

    Returns:
        A :class:`DiscoveryResult`; never raises a ServomexError (it is stored in ``error``).
    """
    label = port_label(port)
    ctx = ErrorContext(port=label)
    protocol: ProtocolKind | None = None
    info: DeviceInfo | None = None
    hint: LineHint | None = None
    try:
        check_address(address, ctx)
        check_timeout(timeout, ctx)
        check_timeout(frame_period, ctx, what="frame_period", optional=True)
        check_serial_settings(serial_settings, ctx)
        check_port(port)
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
                hint = await address_hint(
                    transport, MODBUS_FRAMINGS, (address,), LineWatcher(collect=False)
                )
                if hint is None:
                    raise
                raise no_device(label, (address,), ProtocolKind.AUTO, hint) from exc
            info = await identify(transport, protocol, address, timeout, frame_period)
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


async def identify(
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
