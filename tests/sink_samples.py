"""Deterministic samples for the sink tests, and their expected rows written out by hand.

``expected_row`` deliberately does not call the library: it spells out api.md §10 so the sink
tests compare what was stored against the specification, not against ``sample_to_row``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from servomexlib.devices.models import (
    ChannelId,
    ChannelStatus,
    ProtocolKind,
    Reading,
    Sample,
    ValueState,
)
from servomexlib.errors import ErrorContext, ServomexChecksumError, ServomexTimeoutError
from servomexlib.units import Unit

COLUMNS = [
    "device",
    "channel",
    "kind",
    "name",
    "value",
    "unit",
    "ok",
    "fault",
    "maintenance",
    "calibrating",
    "warming_up",
    "alarm1",
    "alarm2",
    "alarm3",
    "alarm4",
    "protocol",
    "monotonic_ns",
    "received_at",
    "requested_at",
    "latency_s",
    "error",
    "value_state",
]
#: The columns of files written before value_state existed (api.md §10).
LEGACY_COLUMNS = COLUMNS[:21]
BOOL_COLUMNS = COLUMNS[6:15]
FLOAT_COLUMNS = ("value", "latency_s")
INT_COLUMNS = ("monotonic_ns",)

T0 = datetime(2026, 3, 14, 9, 5, 30, 123456, tzinfo=UTC)
_NAMES = ("Oxygen", "CO₂ ñ", None, 'we"ird, name', "")
_VALUES = (20.95, 0.1 + 0.2, None, -1.5e-12, 123456789.125, 0.0, 1e300)
_CHANNELS = tuple(ChannelId)
_UNITS = tuple(Unit)
_PROTOCOLS = (ProtocolKind.CONTINUOUS_ASCII, ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)


def _status(i: int) -> ChannelStatus:
    bits = [(i >> k) & 1 == 1 for k in range(8)]
    return ChannelStatus(
        fault=bits[0],
        maintenance=bits[1],
        calibrating=bits[2],
        warming_up=bits[3],
        alarms=(bits[4], bits[5], bits[6], bits[7]),
    )


def make_samples(n: int, *, per_frame: int = 5, error_every: int = 97) -> list[Sample]:
    """``n`` samples in frames of ``per_frame`` sharing timestamps; every ``error_every``-th
    sample is an error sample. Covers every enum value, None and awkward text and floats."""
    samples: list[Sample] = []
    received = T0
    requested: datetime | None = None
    latency: float | None = None
    protocol = _PROTOCOLS[0]
    for i in range(n):
        if i % per_frame == 0:
            frame = i // per_frame
            received = T0 + timedelta(microseconds=frame * 250_001)
            protocol = _PROTOCOLS[frame % len(_PROTOCOLS)]
            polled = protocol is not ProtocolKind.CONTINUOUS_ASCII
            requested = received if polled else None
            latency = (0.001 * (frame % 50) + 0.0125) if polled else None
        mono = 1_000_000_000 + i * 1_000_003
        device = f"dev{i % 3}" if i % 11 else "analyser-ü"
        if error_every and i % error_every == error_every - 1:
            error = (
                ServomexChecksumError("bad checksum, got '1F'\nexpected \"2A\"")
                if i % 2
                else ServomexTimeoutError("read timed out", context=ErrorContext(port="sim://"))
            )
            samples.append(
                Sample(
                    device=device,
                    channel=None,
                    reading=None,
                    protocol=protocol,
                    monotonic_ns=mono,
                    received_at=received,
                    requested_at=requested,
                    latency_s=latency,
                    error=error,
                )
            )
            continue
        channel = _CHANNELS[i % len(_CHANNELS)]
        value = _VALUES[i % len(_VALUES)]
        # A missing value is over-range or invalid in turn; a number is ok.
        state = ValueState.OK
        if value is None:
            state = ValueState.OVER_RANGE if (i // len(_VALUES)) % 2 else ValueState.INVALID
        reading = Reading(
            channel=channel,
            kind=channel.kind,
            name=_NAMES[i % len(_NAMES)],
            value=value,
            unit=_UNITS[i % len(_UNITS)],
            status=_status(i % 256),
            protocol=protocol,
            received_at=received,
            monotonic_ns=mono,
            raw=b"raw;bytes",
            value_state=state,
        )
        samples.append(
            Sample(
                device=device,
                channel=channel,
                reading=reading,
                protocol=protocol,
                monotonic_ns=mono,
                received_at=received,
                requested_at=requested,
                latency_s=latency,
            )
        )
    return samples


def expected_row(sample: Sample) -> dict[str, Any]:
    """The row api.md §10 prescribes for ``sample``, written out independently."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row["device"] = sample.device
    row["protocol"] = sample.protocol.value
    row["monotonic_ns"] = sample.monotonic_ns
    row["received_at"] = sample.received_at.isoformat()
    row["requested_at"] = None if sample.requested_at is None else sample.requested_at.isoformat()
    row["latency_s"] = sample.latency_s
    if sample.reading is None:
        row["error"] = str(sample.error)
        return row
    r = sample.reading
    s = r.status
    row.update(
        channel=r.channel.value,
        kind=r.kind.value,
        name=r.name,
        value=r.value,
        unit=r.unit.value,
        # a row without a value is never ok
        ok=not s.fault and not any(s.alarms) and r.value_state.value == "ok",
        fault=s.fault,
        maintenance=s.maintenance,
        calibrating=s.calibrating,
        warming_up=s.warming_up,
        alarm1=s.alarms[0],
        alarm2=s.alarms[1],
        alarm3=s.alarms[2],
        alarm4=s.alarms[3],
        value_state=r.value_state.value,
    )
    return row


def as_csv_fields(row: dict[str, Any]) -> list[str]:
    """How api.md §10 says a row looks in CSV: 1/0, repr for floats, empty for None."""
    fields = []
    for value in row.values():
        if value is None:
            fields.append("")
        elif isinstance(value, bool):
            fields.append("1" if value else "0")
        elif isinstance(value, float):
            fields.append(repr(value))
        else:
            fields.append(str(value))
    return fields


def as_sqlite_row(row: dict[str, Any]) -> tuple[Any, ...]:
    """How a row reads back from SQLite: booleans as 0/1 integers."""
    return tuple(int(v) if isinstance(v, bool) else v for v in row.values())


@functools.cache
def many_samples() -> tuple[Sample, ...]:
    """The 100 000 samples of the round-trip tests (built once per test session)."""
    return tuple(make_samples(ROUND_TRIP))


@functools.cache
def many_expected() -> tuple[dict[str, Any], ...]:
    return tuple(expected_row(s) for s in many_samples())


ROUND_TRIP = 100_000
#: Round trips write in batches of this many samples (a realistic pipe batch).
BATCH = 5_000


def batches(samples: tuple[Sample, ...] | list[Sample], size: int = BATCH) -> list[list[Sample]]:
    return [list(samples[i : i + size]) for i in range(0, len(samples), size)]


def error_only_batch(n: int = 5) -> list[Sample]:
    """A first batch in which every typed column is None (error samples)."""
    return [
        Sample(
            device="d",
            channel=None,
            reading=None,
            protocol=ProtocolKind.MODBUS_RTU,
            monotonic_ns=i,
            received_at=T0,
            error=ServomexTimeoutError("no reply"),
        )
        for i in range(n)
    ]
