"""Offline decoding of continuous frames and captures (no I/O beyond reading the clock)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .devices.models import Frame
from .wire.continuous import parse_frame, split_frames

__all__ = ["decode_frame", "split_frames"]


def decode_frame(
    raw: bytes,
    *,
    received_at: datetime | None = None,
    monotonic_ns: int | None = None,
) -> Frame:
    """Decode one continuous frame (CR LF, LF, CR or no terminator).

    The frame is stamped now unless ``received_at``/``monotonic_ns`` are given.

    Raises:
        ServomexFrameError, ServomexChecksumError, ServomexParseError: as docs/protocol.md, §3.9.
    """
    return parse_frame(
        raw,
        received_at=received_at if received_at is not None else datetime.now(UTC),
        monotonic_ns=monotonic_ns if monotonic_ns is not None else time.monotonic_ns(),
    )
