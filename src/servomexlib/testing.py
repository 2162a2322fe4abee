"""The public test kit: fakes, capture helpers and simulator-backed Modbus fakes.

Guide: docs/simulator.md ("In your own tests").

Use it in your own tests::

    from servomexlib.testing import FakeTransport, build_continuous_frame, mock_modbus_transport

* :class:`FakeTransport` — an in-memory transport with scripted replies.
* :func:`split_continuous_frames`, :func:`build_continuous_frame`, :func:`continuous_checksum`
  — the continuous frame rules of docs/protocol.md, §3 (thin wrappers over the wire layer).
* :func:`load_arrow_script` — ``> request`` / ``< reply`` hex scripts for :class:`FakeTransport`.
* :func:`mock_modbus_transport` and friends — a 4100-shaped Modbus slave behind an in-process
  simulated line (see :mod:`servomexlib.sim.mock`).
* :class:`Simulator` — the full simulator (:mod:`servomexlib.sim`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ServomexValidationError
from .sim import SimChannel, Simulator
from .sim.mock import (
    DEFAULT_4100_BANK,
    CoilOp,
    MockChannel,
    MockSlave,
    ReadOp,
    coil_ops,
    load_4100_banks,
    load_cal_state,
    mock_modbus_transport,
    read_ops,
)
from .transport.fake import FakeTransport
from .wire.continuous import build_frame, checksum, split_frames

__all__ = [
    "DEFAULT_4100_BANK",
    "CoilOp",
    "FakeTransport",
    "MockChannel",
    "MockSlave",
    "ReadOp",
    "SimChannel",
    "Simulator",
    "build_continuous_frame",
    "coil_ops",
    "continuous_checksum",
    "load_4100_banks",
    "load_arrow_script",
    "load_cal_state",
    "mock_modbus_transport",
    "read_ops",
    "split_continuous_frames",
]


def split_continuous_frames(capture: bytes) -> list[bytes]:
    """Split a capture into frames (docs/protocol.md, §3.8: CR LF, LF or CR), blank lines dropped,
    terminators removed."""
    return split_frames(bytes(capture))


def build_continuous_frame(
    header_fields: Sequence[str | bytes],
    blocks: Sequence[Sequence[str | bytes]],
    *,
    terminator: bytes = b"\r\n",
) -> bytes:
    """A complete frame from its 5 header fields and 8-field blocks, written as given, with
    checksum and terminator appended (reproduces docs/protocol.md, §3.7 exactly)."""
    return build_frame(header_fields, blocks, terminator=terminator)


def continuous_checksum(data: bytes) -> str:
    """The checksum field (4 uppercase hex digits) for ``data`` — the bytes the checksum covers:
    from after the leading space up to and including the ``;`` before the checksum."""
    return f"{checksum(bytes(data)):04X}"


_HEX_SEPARATORS = re.compile(r"[\s:,]+")


def _hex(text: str, line_no: int) -> bytes:
    digits = _HEX_SEPARATORS.sub("", text)
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ServomexValidationError(f"arrow script line {line_no}: bad hex {text!r}") from None


def load_arrow_script(text: str) -> dict[bytes, bytes]:
    """Parse a ``> request`` / ``< reply`` hex script into a :class:`FakeTransport` script.

    One ``>`` line starts a request; the ``<`` lines after it are its reply, concatenated (none
    → empty reply). ``#`` starts a comment; blank lines are ignored; hex digits may be separated
    by spaces, ``:`` or ``,``. A later entry for the same request replaces an earlier one.

    Raises:
        ServomexValidationError: bad hex, a reply before any request, or an unknown line.
    """
    script: dict[bytes, bytes] = {}
    request: bytes | None = None
    for line_no, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        marker, body = line[0], line[1:]
        if marker == ">":
            request = _hex(body, line_no)
            script[request] = b""
        elif marker == "<":
            if request is None:
                raise ServomexValidationError(
                    f"arrow script line {line_no}: reply before any request"
                )
            script[request] += _hex(body, line_no)
        else:
            raise ServomexValidationError(
                f"arrow script line {line_no}: expected '>' or '<', got {raw_line!r}"
            )
    return script
