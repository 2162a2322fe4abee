"""The spool's values and how a tick's rows become Samples again (docs/service.md §3).

Theory of operation
-------------------
A tick is stored as exactly the rows every sink stores: :func:`~servomexlib.sinks.schema.flatten`
gives them, in the 22 columns of :data:`~servomexlib.sinks.schema.SCHEMA`. :func:`assemble` is
the inverse: it rebuilds each row's :class:`Sample` (and :class:`Reading`) from the column
values. What no sink stores is not rebuilt either: ``Reading.raw`` is ``b""``,
``Sample.metadata`` is empty, an error comes back as a :class:`ServomexError` holding
``str(error)``; a reading's ``protocol``, ``received_at`` and ``monotonic_ns`` are its sample's
(as :meth:`Frame.as_samples` makes them), a time zone comes back as its UTC offset, and a
non-finite ``latency_s`` is stored as None (SQLite has no NaN; :func:`prepare` makes that
explicit rather than leaving it to SQLite). ``ok`` is stored but not read back: it is derived.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

from ..devices.models import (
    AnalyserStatus,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    Reading,
    Sample,
    ValueState,
)
from ..errors import ServomexError, ServomexValidationError
from ..sinks.schema import COLUMNS, flatten
from ..units import Unit

__all__ = [
    "Backlog",
    "NewTick",
    "ServomexSpoolError",
    "SpooledTick",
    "assemble",
    "check_name",
    "prepare",
]

_WIDTH: Final = len(COLUMNS)
_LATENCY: Final = COLUMNS.index("latency_s")


class ServomexSpoolError(ServomexError):
    """The spool cannot be opened, read or written (the message names the file)."""


class NewTick(NamedTuple):
    """One tick for :meth:`Spool.append_many`: its device, samples and analyser status."""

    device: str
    samples: Sequence[Sample]
    analyser: AnalyserStatus | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SpooledTick:
    """One committed tick as read back from the spool.

    ``position`` is its place in spool order (what :meth:`Spool.ack` takes); ``samples`` are
    its rows as Samples (a failed tick: its one error sample). ``analyser_fault`` and
    ``analyser_maintenance`` are the analyser-level flags of the tick (None when not given).
    """

    position: int
    device: str
    seq: int
    committed_at: float
    samples: tuple[Sample, ...]
    analyser_fault: bool | None = None
    analyser_maintenance: bool | None = None

    @property
    def readings(self) -> tuple[Sample, ...]:
        """The samples that hold a reading."""
        return tuple(s for s in self.samples if s.reading is not None)

    @property
    def error(self) -> str | None:
        """A failed tick's message (no reading, an error row), else None."""
        if any(s.reading is not None for s in self.samples):
            return None
        for sample in self.samples:
            if sample.error is not None:
                return str(sample.error)
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    """What a sink has not acknowledged yet: ``ticks``, ``rows``, and when the oldest of them
    was committed (wall clock seconds; None when the backlog is empty)."""

    ticks: int
    rows: int
    oldest_committed_at: float | None

    def age_s(self, now: float) -> float:
        """Seconds the oldest unacknowledged tick has waited (0 when there is none)."""
        if self.oldest_committed_at is None:
            return 0.0
        return max(0.0, now - self.oldest_committed_at)


# -- conversion -------------------------------------------------------------------------------


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ServomexValidationError(
            f"spool: a sink or device name is a non-empty str, got {name!r}"
        )


def prepare(tick: NewTick) -> tuple[NewTick, list[Any], int]:
    check_name(tick.device)
    samples = tick.samples
    if not samples:
        raise ServomexValidationError(
            f"spool: the tick of {tick.device!r} has no sample (a failed tick has its error)"
        )
    for sample in samples:
        if sample.device != tick.device:
            raise ServomexValidationError(
                f"spool: a sample of device {sample.device!r} in the tick of {tick.device!r}"
            )
    flat = flatten(samples)
    # SQLite has no NaN (it would store NULL): say so by storing None ourselves.
    for i in range(_LATENCY, len(flat), _WIDTH):
        value = flat[i]
        if value is not None and not math.isfinite(value):
            flat[i] = None
    return tick, flat, len(samples)


_CHANNELS: Final = {c.value: c for c in ChannelId}
_KINDS: Final = {k.value: k for k in ChannelKind}
_UNITS: Final = {u.value: u for u in Unit}
_PROTOCOLS: Final = {p.value: p for p in ProtocolKind}
_STATES: Final = {s.value: s for s in ValueState}
_FLAG: Final = {None: None, 0: False, 1: True}


def assemble(ticks: list[Any], rows: list[Any]) -> list[SpooledTick]:
    """Rebuild the ticks' Samples from their rows (the inverse of :func:`flatten`)."""
    times: dict[str, datetime] = {}

    def when(text: str) -> datetime:
        value = times.get(text)
        if value is None:
            value = times[text] = datetime.fromisoformat(text)
        return value

    by_tick: dict[int, list[Sample]] = {t[0]: [] for t in ticks}
    for row in rows:
        (tick, _idx, device, channel, kind, name, value, unit, _ok, fault, maintenance,
         calibrating, warming_up, a1, a2, a3, a4, protocol_text, monotonic_ns, received_text,
         requested_text, latency_s, error, value_state) = row  # fmt: skip
        protocol = _PROTOCOLS[protocol_text]
        received_at = when(received_text)
        requested_at = None if requested_text is None else when(requested_text)
        if channel is None:
            sample = Sample(
                device, None, None, protocol, monotonic_ns, received_at, requested_at,
                latency_s, error=None if error is None else ServomexError(error),
            )  # fmt: skip
        else:
            status = ChannelStatus(
                bool(fault), bool(maintenance), bool(calibrating), bool(warming_up),
                (bool(a1), bool(a2), bool(a3), bool(a4)),
            )  # fmt: skip
            reading = Reading(
                _CHANNELS[channel], _KINDS[kind], name, value, _UNITS[unit], status, protocol,
                received_at, monotonic_ns, b"", _STATES[value_state],
            )  # fmt: skip
            sample = Sample(
                device, reading.channel, reading, protocol, monotonic_ns, received_at,
                requested_at, latency_s,
            )  # fmt: skip
        by_tick[tick].append(sample)
    return [
        SpooledTick(
            position=t[0],
            device=t[1],
            seq=t[2],
            committed_at=t[3],
            samples=tuple(by_tick[t[0]]),
            analyser_fault=_FLAG[t[4]],
            analyser_maintenance=_FLAG[t[5]],
        )
        for t in ticks
    ]
