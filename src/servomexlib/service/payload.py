"""The data payload of one tick (docs/service.md §4): what ``/api/latest`` serves and what the
MQTT sink publishes on ``{prefix}/{site}/{device}/data``.

Theory of operation
-------------------
One tick of one analyser becomes one JSON object: the tick's identity (``device``, ``seq``),
its timestamps (``received_at``, ``requested_at`` — ISO 8601 with milliseconds and the UTC
offset — and ``latency_s``), the wire ``protocol``, the analyser-level flags and one entry per
reading. A failed tick has ``"readings": []`` and ``"error"``: the message of its error
sample. Nothing is guessed: a value that is not a finite number (over-range, invalid) is
``null`` with its ``value_state`` saying why, an analyser flag that was not read is ``null``.

:func:`tick_payload` builds it from the samples of a tick as the scheduler has them;
:func:`spooled_payload` from a :class:`~servomexlib.service.spool_rows.SpooledTick` read back
from the spool (what a forwarder holds), so both paths give the same object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..devices.models import Sample
from .spool_rows import SpooledTick

__all__ = ["reading_entry", "spooled_payload", "tick_payload"]


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def reading_entry(sample: Sample) -> dict[str, Any]:
    """One entry of ``readings`` (a sample that holds a reading)."""
    reading = sample.reading
    assert reading is not None
    status = reading.status
    return {
        "channel": reading.channel.value,
        "name": reading.name,
        "value": _number(reading.value),
        "unit": reading.unit.value,
        "ok": reading.ok,
        "value_state": reading.value_state.value,
        "fault": status.fault,
        "maintenance": status.maintenance,
        "calibrating": status.calibrating,
        "warming_up": status.warming_up,
        "alarms": list(status.alarms),
    }


def tick_payload(
    device: str,
    seq: int,
    samples: Sequence[Sample],
    *,
    fault: bool | None = None,
    maintenance: bool | None = None,
) -> dict[str, Any]:
    """The §4 payload of one tick: ``samples`` are the tick's rows (a failed tick: its one
    error sample); ``fault``/``maintenance`` the analyser flags (None when not read)."""
    first = samples[0] if samples else None
    readings = [reading_entry(s) for s in samples if s.reading is not None]
    payload: dict[str, Any] = {
        "device": device,
        "seq": seq,
        "received_at": _when(first.received_at) if first is not None else None,
        "requested_at": _when(first.requested_at) if first is not None else None,
        "latency_s": _number(first.latency_s) if first is not None else None,
        "protocol": first.protocol.value if first is not None else None,
        "analyser": {"fault": fault, "maintenance": maintenance},
        "readings": readings,
    }
    if not readings:
        errors = [str(s.error) for s in samples if s.error is not None]
        payload["error"] = errors[0] if errors else "the tick holds no reading"
    return payload


def spooled_payload(tick: SpooledTick) -> dict[str, Any]:
    """:func:`tick_payload` of a tick read back from the spool."""
    return tick_payload(
        tick.device,
        tick.seq,
        tick.samples,
        fault=tick.analyser_fault,
        maintenance=tick.analyser_maintenance,
    )
