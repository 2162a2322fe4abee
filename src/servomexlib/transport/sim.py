"""``SimTransport``: the host side of the in-process simulator's line (api.md §16.1).

The simulator's stream does its work inside its own ``send``/``receive`` calls, so this
transport needs no task of its own; it is a plain :class:`ByteStreamTransport`.
"""

from __future__ import annotations

from .base import ByteStreamTransport

__all__ = ["SimTransport"]


class SimTransport(ByteStreamTransport):
    """A :class:`ByteStreamTransport` over a simulator stream; the label is the ``sim://`` URL."""
