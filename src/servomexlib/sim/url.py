"""``sim://[name][?query]`` port strings: parsing, connecting, the transport scheme's opener.

``connect_url("sim://?mode=modbus_ascii&address=30")`` builds a private simulated line and
returns a stream attached to it; ``sim://bench?…`` builds the line the first time the name is
seen in this process and attaches every later open of ``sim://bench`` to that same line (its
query is then validated but not applied again — the line already exists). Any other scheme, a
path or a fragment is refused.

The query keys and what they mean are those of :class:`~servomexlib.sim.config.SimConfig`
(its module docstring has the table; docs/simulator.md the user's view): ``mode``,
``address`` (a comma list: one analyser per address), ``channels``, ``names``, ``units``,
``values``, ``baud``, ``period``, ``terminator``, ``latency_ms``, ``drop``, ``drop_until_ms``,
``reject_gaps``, ``realtime``, ``seed``, ``scenario``, ``clock``. Unknown keys, a key given
twice and bad values raise :class:`~servomexlib.errors.ServomexValidationError` naming the URL.

:func:`open_url_transport` is the opener the transport layer's scheme registry calls for
``sim://`` (the transport layer does not import the simulator; the top-level package registers
the opener, which imports this module on first use).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import anyio.abc
import anyio.lowlevel

from ..errors import ErrorContext, ServomexValidationError
from ..settings import SerialSettings
from .config import QUERY_KEYS, SimConfig, spec_from_options
from .line import SimLine, lookup_line

if TYPE_CHECKING:
    from ..transport.sim import SimTransport

__all__ = [
    "QUERY_KEYS",
    "SimConnection",
    "SimSpec",
    "connect_url",
    "line_for_url",
    "open_url_transport",
    "parse_sim_url",
    "spec_from_options",
]

#: The former name of :class:`~servomexlib.sim.config.SimConfig` (one release).
SimSpec = SimConfig


@dataclasses.dataclass(frozen=True, slots=True)
class SimConnection:
    """What :func:`connect_url` returns: the host end of the line and how the line is set."""

    stream: anyio.abc.ByteStream
    serial_settings: SerialSettings
    line: SimLine


def parse_sim_url(url: str) -> tuple[str | None, SimConfig]:
    """Split a ``sim://`` URL into its name (None if unnamed) and validated config.

    Raises:
        ServomexValidationError: not a ``sim://`` URL, a path, a repeated key, bad values.
    """
    if not isinstance(url, str):
        raise ServomexValidationError(f"port must be a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme.casefold() != "sim" or not url.casefold().startswith("sim://"):
        raise ServomexValidationError(
            f"not a simulator URL: {url!r} (expected sim://[name][?query])",
            context=ErrorContext(port=url),
        )
    if parts.path not in ("", "/") or parts.fragment:
        raise ServomexValidationError(
            f"sim:// URLs take a name and a query only: {url!r}", context=ErrorContext(port=url)
        )
    name = parts.netloc or None
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in options:
            raise ServomexValidationError(
                f"sim:// option {key!r} given twice", context=ErrorContext(port=url)
            )
        options[key] = value
    try:
        config = SimConfig.from_query(options, url=url, name=name)
    except ServomexValidationError as exc:
        if exc.context.port is None:  # e.g. a bad name
            raise ServomexValidationError(exc.message, context=ErrorContext(port=url)) from None
        raise
    return name, config


def connect_url(url: str) -> SimConnection:
    """Attach to the simulated line a ``sim://`` URL names, creating it if needed.

    Unnamed URLs get a private line per call; ``sim://name`` shares one line per process.

    Raises:
        ServomexValidationError: bad URL, unknown key or bad value.
        ServomexConnectionError: the named device has vanished.
    """
    line = line_for_url(url)
    return SimConnection(stream=line.open_stream(), serial_settings=line.serial_settings, line=line)


def line_for_url(url: str) -> SimLine:
    """The line a ``sim://`` URL names: the registered one for a known name, else a new one.

    Raises:
        ServomexValidationError: bad URL, unknown key or bad value.
    """
    name, config = parse_sim_url(url)
    line = lookup_line(name) if name is not None else None
    return line if line is not None else config.build()


async def open_url_transport(
    url: str, serial_settings: SerialSettings | None = None
) -> SimTransport:
    """The transport for a ``sim://`` port string (the ``sim`` scheme's opener).

    ``serial_settings`` is accepted for the scheme-opener signature and not used: a simulated
    line has its own settings (``baud`` in the query), which the transport reports.

    Raises:
        ServomexValidationError: bad URL or ``serial_settings`` not a SerialSettings.
        ServomexConnectionError: the named device has vanished.
    """
    if serial_settings is not None and not isinstance(serial_settings, SerialSettings):
        raise ServomexValidationError(
            f"serial_settings must be a SerialSettings, got {type(serial_settings).__name__}",
            context=ErrorContext(port=url),
        )
    line = line_for_url(url)
    # The checkpoint comes before the open, never between the open and the return: a
    # cancellation there would leave an open transport that nobody holds.
    await anyio.lowlevel.checkpoint()
    return line.open_transport(url)
