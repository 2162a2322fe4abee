"""Building continuous frames from field texts, at the analyser's widths
(docs/protocol.md, §3.2, §3.7). Pure: no I/O, no clock.

:func:`build_frame` joins the 5 header fields and the 8 fields of each block with ``;``,
appends the checksum (:func:`~.frame_layout.checksum`) and the terminator; fields are written
as given, so widths are the caller's. :func:`format_header`, :func:`format_block` and
:func:`format_value` produce the analyser's widths (name 6, value 6, unit 3). The simulator and
the testing kit build every frame they send with these, and :mod:`.frame_parse` reads each of
them back to the values they were built from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from ..devices.models import CalGroupState, ChannelId, ChannelStatus
from .charset import encode_display
from .frame_layout import UNLABELLED, checksum

__all__ = ["build_frame", "format_block", "format_header", "format_value"]


def build_frame(
    header_fields: Sequence[str | bytes],
    blocks: Sequence[Sequence[str | bytes]],
    *,
    terminator: bytes = b"\r\n",
) -> bytes:
    """Assemble a frame from its field texts and append the checksum and terminator.

    ``header_fields`` are the 5 header fields (date, time, FM, autocal, N); each block is 8
    fields. Fields are written as given (no padding is added), so widths are the caller's
    choice; :func:`format_header` and :func:`format_block` produce the analyser's widths.
    Text fields are encoded through the display charset.
    """
    parts: list[bytes] = []
    for f in [*header_fields, *(f for block in blocks for f in block)]:
        parts.append(f if isinstance(f, bytes) else encode_display(f))
    summed = b";".join(parts) + b";"
    return b" " + summed + f"{checksum(summed):04X};".encode() + terminator


def format_value(value: float | None, decimals: int = 3, *, width: int = 6) -> str:
    """Right-aligned value text as the analyser prints it; None → ``++++++`` (over-range).

    The real over-range representation is unknown (docs/protocol.md, §15 #1); the ``+`` fill
    decodes
    as value None with ``ValueState.OVER_RANGE`` (:func:`decode_value_field`). A value too
    wide for the field is printed with fewer decimals, then saturates.
    """
    if value is None or not math.isfinite(value):
        return "+" * width
    for d in range(decimals, -1, -1):
        text = f"{value:.{d}f}"
        if len(text) <= width:
            return text.rjust(width)
    return "+" * width


def format_header(
    *,
    clock: datetime | None,
    fault: bool,
    maintenance: bool,
    cal_groups: Sequence[CalGroupState],
    n_blocks: int,
) -> list[str]:
    """The 5 header fields at the analyser's widths."""
    if clock is None:
        date, time = "00-00-00", "00:00:00"
    else:
        date, time = clock.strftime("%d-%m-%y"), clock.strftime("%H:%M:%S")
    fm = ("F" if fault else " ") + ("M" if maintenance else " ")
    autocal = "".join(("C" if g.calibrating else "S") + str(g.cal_gas) for g in cal_groups)
    return [date, time, fm, autocal, f"{n_blocks:02d}"]


def format_block(
    channel: ChannelId,
    *,
    name: str | bytes | None,
    value_text: str,
    unit: str,
    status: ChannelStatus,
) -> list[str | bytes]:
    """The 8 fields of one channel block at the analyser's widths (name 6, value 6, unit 3)."""
    if name is None:
        name_field: str | bytes = UNLABELLED
    elif isinstance(name, bytes):
        name_field = (name + b" " * 6)[:6]
    else:
        name_field = name[:6].ljust(6)
    alarms = "".join(str(i + 1) if on else " " for i, on in enumerate(status.alarms))
    fm = ("F" if status.fault else " ") + ("M" if status.maintenance else " ")
    return [
        channel.value,
        name_field,
        value_text.rjust(6)[-6:] if len(value_text) > 6 else value_text.rjust(6),
        unit[:3].rjust(3),
        alarms,
        fm,
        "C" if status.calibrating else " ",
        "W" if status.warming_up else " ",
    ]
