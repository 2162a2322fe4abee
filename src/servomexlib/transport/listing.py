"""Which serial ports does this machine have? (``servomex discover`` with no port, docs/cli.md)

Theory of operation
-------------------
anyserial already enumerates serial ports on every platform it supports (a sysfs walk on
Linux, IOKit on macOS, the BSD device tree, the Windows registry), with the USB vendor and
product ids of USB adapters. :func:`list_serial_ports` runs that enumeration (anyserial does it
in a worker thread) and turns each entry into a :class:`SerialPortInfo`, adding what a user
looking for an analyser wants to see on Linux: the stable ``/dev/serial/by-id/…`` name of the
adapter, which survives replugging and renumbering (``ttyUSB0`` becoming ``ttyUSB1``).

Nothing is opened: listing never touches the ports themselves, so it cannot disturb an
analyser or another program using one.

The enumerator is a parameter, so tests (and callers with their own inventory) give a fake
listing instead of the machine's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import anyserial
from anyserial.exceptions import UnsupportedPlatformError

from ..errors import ServomexConfigurationError, ServomexConnectionError

__all__ = ["BY_ID_DIR", "PortEnumerator", "SerialPortInfo", "list_serial_ports"]

#: Where udev keeps one stable symlink per serial adapter (Linux).
BY_ID_DIR = Path("/dev/serial/by-id")

#: An enumeration of ports: anyserial's by default.
PortEnumerator = Callable[[], Awaitable[Iterable[anyserial.PortInfo]]]


@dataclasses.dataclass(frozen=True, slots=True)
class SerialPortInfo:
    """One serial port of this machine.

    ``path`` is the device to open (``/dev/ttyUSB0``, ``COM3``); ``description`` what the
    platform says it is (the USB product string, or manufacturer and product), None when it
    says nothing; ``vid``/``pid`` the USB ids of a USB adapter; ``by_id`` the stable
    ``/dev/serial/by-id/…`` alias of that device, when udev made one.
    """

    path: str
    description: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    by_id: str | None = None

    @property
    def usb_id(self) -> str | None:
        """``vvvv:pppp`` in lowercase hex (as ``lsusb`` prints it), or None for a non-USB port."""
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"


async def list_serial_ports(
    *,
    enumerate_ports: PortEnumerator | None = None,
    by_id_dir: Path | None = BY_ID_DIR,
) -> list[SerialPortInfo]:
    """The machine's serial ports, sorted by path.

    Args:
        enumerate_ports: the enumeration to use (an async callable returning anyserial
            ``PortInfo`` records); None → ``anyserial.list_serial_ports``.
        by_id_dir: directory of stable symlinks to look the ports up in; None to skip.

    Returns:
        One :class:`SerialPortInfo` per port (empty when the machine has none).

    Raises:
        ServomexConfigurationError: anyserial cannot enumerate ports on this platform.
        ServomexConnectionError: the operating system refused the enumeration.
    """
    enumerate_fn = enumerate_ports if enumerate_ports is not None else anyserial.list_serial_ports
    try:
        found = list(await enumerate_fn())
    except UnsupportedPlatformError as exc:
        raise ServomexConfigurationError(
            f"cannot list serial ports on this platform: {exc}; give the port by name"
        ) from exc
    except OSError as exc:
        raise ServomexConnectionError(f"could not list serial ports: {exc}") from exc
    aliases = _aliases(by_id_dir) if by_id_dir is not None else {}
    ports = [
        SerialPortInfo(
            path=info.device,
            description=_description(info),
            vid=info.vid,
            pid=info.pid,
            serial_number=info.serial_number,
            by_id=aliases.get(_resolved(info.device)),
        )
        for info in found
    ]
    return sorted(ports, key=lambda p: p.path)


def _description(info: anyserial.PortInfo) -> str | None:
    if info.description:
        return info.description
    words = [w for w in (info.manufacturer, info.product) if w]
    return " ".join(words) if words else None


def _resolved(path: str) -> str:
    # os.path, not pathlib: a missing path stays as given instead of raising.
    return os.path.realpath(path) if os.path.exists(path) else path


def _aliases(directory: Path) -> dict[str, str]:
    """``{resolved device path: by-id link}`` for every link in ``directory``."""
    try:
        links = sorted(directory.iterdir())
    except OSError:  # no such directory (no USB adapter plugged in, not Linux)
        return {}
    aliases: dict[str, str] = {}
    for link in links:
        target = _resolved(str(link))
        aliases.setdefault(target, str(link))
    return aliases
