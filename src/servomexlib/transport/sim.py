"""``SimTransport``: the host side of the in-process simulator's line (docs/simulator.md).

The simulator's stream does its work inside its own ``send``/``receive`` calls, so this
transport needs no task of its own: it is a :class:`ByteStreamTransport` over a
:class:`~servomexlib.sim.line.SimStream`, labelled with the ``sim://`` URL, and implements the
whole transport contract as a serial port on that line would appear:

* ``char_time_s`` — the line's pacing (``bits_per_char / baud``) when the simulator is
  realtime; None when it is not (bytes then arrive at memory speed: no line rate to judge by).
* ``pending`` — the pushback buffer (the stream itself holds no bytes that have arrived and
  not been asked for: ``receive`` hands out whatever is due).
* ``flush_input()`` — returns None, like a generic byte stream: the simulator keeps what its
  line delivered while nobody read, as a device server or pty would, and the continuous
  receiver's line-rate check (docs/protocol.md, §9.6) is what discards such a backlog. This
  keeps the in-process line byte-for-byte what a served one is.
* ``drain()`` — immediate: the in-process write is buffered as an operating system buffers a
  serial write, and the simulator paces the request's characters itself.
* ``extra_attributes`` — the stream's (none).

This module does not import the simulator: ``sim.transport()`` and the ``sim://`` opener
(:func:`servomexlib.sim.open_url_transport`) build the transport around their stream.
"""

from __future__ import annotations

from .base import ByteStreamTransport

__all__ = ["SimTransport"]


class SimTransport(ByteStreamTransport):
    """A :class:`ByteStreamTransport` over a simulator stream; the label is the ``sim://`` URL."""
