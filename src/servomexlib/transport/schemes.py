"""The port-scheme registry: who opens a ``scheme://…`` port string.

Theory of operation
-------------------
The transport layer knows device paths, COM names and ``tcp://host:port`` itself. Any other
``scheme://`` form is opened by an *opener* registered here::

    register_scheme("sim", open_sim)   # async open_sim(url, serial_settings) -> Transport

:func:`~servomexlib.transport.ports.resolve_transport` looks the scheme up (case-insensitive)
and awaits the opener with the whole port string and the caller's ``serial_settings``; the
opener returns an open :class:`~servomexlib.transport.base.Transport` that the caller then owns.
This keeps the transport layer below the layers that provide such transports: the in-process
simulator (``sim://``) lives above the transport layer, and the top-level package
(``servomexlib/__init__.py``) registers its opener, which imports the simulator only when a
``sim://`` port is first opened. Registering again replaces the opener (the last one wins).

This module is deliberately light (typing only) so that registering a scheme does not import
the serial or TCP machinery.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import ServomexValidationError
from ..settings import SerialSettings

if TYPE_CHECKING:
    from .base import Transport

__all__ = [
    "BUILTIN_SCHEMES",
    "SchemeOpener",
    "register_scheme",
    "registered_schemes",
    "scheme_opener",
    "unregister_scheme",
]

type SchemeOpener = Callable[[str, SerialSettings | None], Awaitable[Transport]]

#: Schemes the transport layer parses and opens itself; they cannot be registered.
BUILTIN_SCHEMES = frozenset({"tcp"})

_SCHEME_NAME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_OPENERS: dict[str, SchemeOpener] = {}


def _normalise(scheme: object) -> str:
    if not isinstance(scheme, str) or not _SCHEME_NAME.match(scheme.lower()):
        raise ServomexValidationError(
            f"a port scheme is a name such as 'sim' (letters, digits, '+', '.', '-'), "
            f"got {scheme!r}"
        )
    return scheme.lower()


def register_scheme(scheme: str, opener: SchemeOpener) -> None:
    """Let ``scheme://…`` port strings be opened by ``opener`` (replacing any earlier one).

    Raises:
        ServomexValidationError: not a scheme name, a built-in scheme (``tcp``), or an opener
            that is not callable.
    """
    name = _normalise(scheme)
    if name in BUILTIN_SCHEMES:
        raise ServomexValidationError(f"the {name}:// scheme is built in and cannot be replaced")
    if not callable(opener):
        raise ServomexValidationError(f"the opener of {name}:// must be callable, got {opener!r}")
    _OPENERS[name] = opener


def unregister_scheme(scheme: str) -> None:
    """Forget the opener of ``scheme``; nothing happens when none is registered."""
    _OPENERS.pop(_normalise(scheme), None)


def scheme_opener(scheme: str) -> SchemeOpener | None:
    """The opener registered for ``scheme`` (any case), or None."""
    return _OPENERS.get(scheme.lower())


def registered_schemes() -> tuple[str, ...]:
    """The registered schemes, sorted."""
    return tuple(sorted(_OPENERS))
