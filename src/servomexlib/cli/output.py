"""What the ``servomex`` subcommands print: the read-format lines and JSON documents
(docs/cli.md).

The read-format lines (:func:`read_block`, :func:`format_reading_line`, …) are shared by read,
decode and watch. A reading without a value shows its ``value_state`` (``over_range`` /
``invalid``) instead of a bare None, and JSON documents carry a ``value_state`` key next to
``value``; ``ok`` is :attr:`Reading.ok <servomexlib.Reading.ok>` — the status is ok *and* there
is a value (docs/protocol.md, §13).

JSON output (``--format json``) is JSON Lines everywhere: every stdout line is one complete
JSON document (:func:`emit_json`). Commands that report a stream of things (stream, decode,
discover, diag tap) write one document per thing; read and diag plan write one document. A
sample's document is its sink row (docs/recording-and-sinks.md) with ``value_state`` moved next
to ``value``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ..devices.models import DeviceInfo, Frame, Reading, Sample
from ..sinks.schema import sample_to_row
from .running import describe_error

__all__ = [
    "emit_json",
    "format_device_line",
    "format_frame_line",
    "format_reading_line",
    "format_sample_line",
    "frame_json",
    "info_json",
    "read_block",
    "reading_ok",
    "reading_value_text",
    "sample_json",
    "value_state",
    "value_text",
]


def value_state(reading: Reading) -> str:
    """``reading.value_state`` as text: ``ok``, ``over_range`` or ``invalid``."""
    return reading.value_state.value


def reading_ok(reading: Reading) -> bool:
    """``reading.ok``: the status is ok and there is a value (docs/protocol.md, §13)."""
    return reading.ok


def value_text(value: float | None, state: str | None = None) -> str:
    """``{value:g}``; for a missing value the state (``over_range``, ``invalid``) or ``None``."""
    if value is not None:
        return f"{value:g}"
    return state if state is not None and state != "ok" else "None"


def reading_value_text(reading: Reading) -> str:
    """The value of ``reading`` as the read format shows it (see :func:`value_text`)."""
    return value_text(reading.value, value_state(reading))


def format_reading_line(reading: Reading, *, indent: int = 2) -> str:
    """``  {id:<3} {name or "(unlabelled)":<12} {value:>10} {unit:<4} ok={b}``; the value is
    ``{value:g}``, or ``over_range``/``invalid`` when the analyser gave none."""
    name = reading.name or "(unlabelled)"
    return (
        f"{' ' * indent}{reading.channel.value:<3} {name:<12} {reading_value_text(reading):>10} "
        f"{reading.unit.value:<4} ok={reading_ok(reading)}"
    )


def format_frame_line(frame: Frame) -> str:
    """``frame @ {received_at.isoformat()} protocol={p} fault={b} maintenance={b}``."""
    return (
        f"frame @ {frame.received_at.isoformat()} protocol={frame.protocol.value} "
        f"fault={frame.analyser.fault} maintenance={frame.analyser.maintenance}"
    )


def format_device_line(info: DeviceInfo) -> str:
    """``device: {model} protocol={p}``."""
    return f"device: {info.model} protocol={info.protocol.value}"


def read_block(frame: Frame) -> list[str]:
    """The frame line and one reading line per reading (the ``read`` format)."""
    return [format_frame_line(frame), *(format_reading_line(r) for r in frame.readings)]


def format_sample_line(sample: Sample) -> str:
    """``{id:<3} {str(value):>10} {unit}`` (``over_range``/``invalid`` for a missing value),
    or ``error: {err}`` for an error sample."""
    if sample.reading is None:
        error = sample.error
        text = describe_error(error) if error is not None else "no reading"
        return f"error: {text}"
    reading = sample.reading
    if reading.value is not None:
        value = str(reading.value)
    else:
        value = value_text(None, value_state(reading))
    return f"{reading.channel.value:<3} {value:>10} {reading.unit.value}"


def _with_value_state(row: dict[str, Any], state: str | None) -> dict[str, Any]:
    """``row`` with a ``value_state`` key right after ``value``."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "value_state":
            continue
        out[key] = value
        if key == "value":
            out["value_state"] = state
    return out


def sample_json(sample: Sample) -> dict[str, Any]:
    """The row of ``sample`` (docs/recording-and-sinks.md) with ``value_state`` next to
    ``value``."""
    row = sample_to_row(sample)
    return _with_value_state(row, row.get("value_state"))


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def info_json(info: DeviceInfo) -> dict[str, Any]:
    """A JSON-ready description of a DeviceInfo."""
    return {
        "model": info.model,
        "protocol": info.protocol.value,
        "address": info.address,
        "port": info.serial_settings.port,
        "baudrate": info.serial_settings.baudrate,
        "channels": [
            {
                "channel": c.channel.value,
                "kind": c.kind.value,
                "name": c.name,
                "unit": c.unit.value,
            }
            for c in info.channels
        ],
    }


def frame_json(frame: Frame) -> dict[str, Any]:
    """A JSON-ready description of a Frame: timestamps, analyser status and readings
    (``Reading.as_dict()`` with booleans as JSON booleans, ``value_state`` after ``value`` and
    ``ok`` = ``reading.ok``)."""
    readings = []
    for reading in frame.readings:
        row = _with_value_state(reading.as_dict(), value_state(reading))
        row["ok"] = reading_ok(reading)
        for key in (
            "fault",
            "maintenance",
            "calibrating",
            "warming_up",
            "alarm1",
            "alarm2",
            "alarm3",
            "alarm4",
            "ok",
        ):
            row[key] = bool(row[key])
        readings.append(row)
    analyser = frame.analyser
    return {
        "received_at": frame.received_at.isoformat(),
        "requested_at": _iso(frame.requested_at),
        "latency_s": frame.latency_s,
        "protocol": frame.protocol.value,
        "analyser": {
            "fault": analyser.fault,
            "maintenance": analyser.maintenance,
            "clock": _iso(analyser.clock),
            "cal_groups": [g.phase.value for g in analyser.cal_groups],
        },
        "readings": readings,
    }


def emit_json(document: object, out: TextIO | None = None) -> None:
    """Print ``document`` as one compact JSON line."""
    print(json.dumps(document, ensure_ascii=False), file=out or sys.stdout, flush=True)
