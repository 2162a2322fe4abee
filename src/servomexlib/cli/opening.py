"""Opening what the shared options name (docs/cli.md).

:func:`open_analyzer` opens a real port / ``sim://`` / ``tcp://`` through
:func:`~servomexlib.open_device`, or replays a capture endlessly (:data:`FIXTURE_INTERVAL_S`
between frames) through a :class:`~servomexlib.FakeTransport` behind
:func:`~servomexlib.open_continuous` (``--fixture``). A capture is split into frames the way the
continuous receiver splits the line (docs/protocol.md, §3.8).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from ..devices.analyzer import Analyzer
from ..devices.factory import open_continuous, open_device
from ..devices.models import ProtocolKind
from ..errors import ServomexValidationError
from ..settings import SerialSettings
from ..transport.fake import FakeTransport
from ..wire.continuous import split_frames

__all__ = [
    "FIXTURE_INTERVAL_S",
    "analyzer_address",
    "load_fixture",
    "open_analyzer",
    "replay",
    "require_port",
    "serial_settings_for",
    "transport_label",
]

#: Pause before each replayed fixture frame.
FIXTURE_INTERVAL_S = 0.005


def serial_settings_for(args: argparse.Namespace) -> SerialSettings | None:
    """``SerialSettings`` carrying ``--baud`` (the port is filled in when opened), or None."""
    baud = getattr(args, "baud", None)
    if baud is None:
        return None
    return SerialSettings(port=args.port or "", baudrate=baud)


def load_fixture(path: str | Path) -> list[bytes]:
    """The frames of a capture file (split as docs/protocol.md, §3.8 says), each with CR LF
    re-appended.

    Raises:
        ServomexValidationError: unreadable file, or no frame in it.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ServomexValidationError(f"cannot read fixture {str(path)!r}: {exc}") from exc
    frames = [frame + b"\r\n" for frame in split_frames(data)]
    if not frames:
        raise ServomexValidationError(f"fixture {str(path)!r} holds no frames")
    return frames


async def replay(
    transport: FakeTransport, frames: list[bytes], *, interval: float = FIXTURE_INTERVAL_S
) -> None:
    """Feed ``frames`` to ``transport`` in an endless loop, ``interval`` s before each frame,
    until cancelled or the transport is closed."""
    while transport.is_open:
        await transport.emit(frames, interval=interval)


def _fixture_protocol_check(args: argparse.Namespace) -> None:
    protocol = getattr(args, "protocol", "auto")
    if protocol not in ("auto", ProtocolKind.CONTINUOUS_ASCII.value):
        raise ServomexValidationError(
            f"--fixture replays a continuous capture; --protocol {protocol} cannot be used with it"
        )


def require_port(args: argparse.Namespace) -> str:
    """``args.port``, or ServomexValidationError when neither a port nor --fixture was given."""
    if not args.port:
        raise ServomexValidationError("no port given: pass a port (or --fixture CAPTURE)")
    return str(args.port)


@asynccontextmanager
async def open_analyzer(
    args: argparse.Namespace,
    *,
    identify: bool = False,
    protocol: ProtocolKind | str | None = None,
) -> AsyncIterator[Analyzer]:
    """Open and enter the analyser the shared options name; close it on exit.

    With ``--fixture`` the capture is replayed endlessly by a background task (owned here)
    into a FakeTransport behind ``open_continuous``; ``identify`` then runs after entering.

    Raises:
        ServomexValidationError: neither a port nor ``--fixture``; a Modbus ``--protocol``
            with ``--fixture``; an unreadable or empty fixture.
        ServomexError: whatever opening the device raised.
    """
    fixture = getattr(args, "fixture", None)
    if fixture:
        _fixture_protocol_check(args)
        frames = load_fixture(fixture)
        fake = FakeTransport(label=str(fixture))
        async with anyio.create_task_group() as tg:
            tg.start_soon(replay, fake, frames)
            anz = await open_continuous(fake, timeout=args.timeout, frame_period=args.frame_period)
            async with anz:
                if identify:
                    await anz.identify()
                yield anz
            tg.cancel_scope.cancel()
        return
    port = require_port(args)
    anz = await open_device(
        port,
        protocol=protocol if protocol is not None else args.protocol,
        address=args.address,
        serial_settings=serial_settings_for(args),
        timeout=args.timeout,
        identify=identify,
        frame_period=args.frame_period,
    )
    async with anz:
        yield anz


def transport_label(anz: Analyzer) -> str:
    """The port label of an Analyzer (for headers)."""
    return str(anz.transport.label)


def analyzer_address(anz: Analyzer) -> int | None:
    """The Modbus address, or None in continuous mode."""
    if anz.protocol is ProtocolKind.CONTINUOUS_ASCII:
        return None
    return int(anz.client.address)
