"""The declared row schema of every sink and the Sample → row conversion (api.md §10).

Theory of operation
-------------------
Every sink stores the same 21 columns, in the same order, with types fixed by :data:`SCHEMA`
rather than inferred from the data: an all-None first batch can never turn ``value`` into a text
column. :func:`sample_to_row` is the public, readable form (a dict); the sinks use
:func:`sample_to_values`, which returns the same values as a tuple in column order and is the
hot path of every write (it runs once per stored sample, so it avoids per-call allocations
beyond the tuple itself and caches the ISO-8601 text of the timestamp shared by a frame).

Conversion rules: enums become their ``.value``; booleans stay ``bool``; timestamps become
``datetime.isoformat()`` text; an error sample has None in every channel column (``channel`` …
``alarm4``) and ``str(error)`` in ``error``. ``Reading.raw`` and ``Sample.metadata`` are not stored.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from ..devices.models import Sample

__all__ = [
    "COLUMNS",
    "SCHEMA",
    "Column",
    "ColumnType",
    "RowValues",
    "sample_to_row",
    "sample_to_values",
]


class ColumnType(enum.StrEnum):
    """The logical type of a column; each sink maps it to its format's own type."""

    TEXT = "text"
    FLOAT = "float"
    BOOL = "bool"
    INT = "int"

    @property
    def sqlite(self) -> str:
        """The SQLite declared type (booleans are stored as INTEGER 0/1)."""
        return _SQLITE_TYPES[self]

    @property
    def postgres(self) -> str:
        """The PostgreSQL column type."""
        return _POSTGRES_TYPES[self]


_SQLITE_TYPES = {
    ColumnType.TEXT: "TEXT",
    ColumnType.FLOAT: "REAL",
    ColumnType.BOOL: "INTEGER",
    ColumnType.INT: "INTEGER",
}
_POSTGRES_TYPES = {
    ColumnType.TEXT: "text",
    ColumnType.FLOAT: "double precision",
    ColumnType.BOOL: "boolean",
    ColumnType.INT: "bigint",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One declared column: its name, logical type and whether the value may be None."""

    name: str
    type: ColumnType
    nullable: bool = True


#: The 21 columns of api.md §10, in order.
SCHEMA: Final[tuple[Column, ...]] = (
    Column("device", ColumnType.TEXT, nullable=False),
    Column("channel", ColumnType.TEXT),
    Column("kind", ColumnType.TEXT),
    Column("name", ColumnType.TEXT),
    Column("value", ColumnType.FLOAT),
    Column("unit", ColumnType.TEXT),
    Column("ok", ColumnType.BOOL),
    Column("fault", ColumnType.BOOL),
    Column("maintenance", ColumnType.BOOL),
    Column("calibrating", ColumnType.BOOL),
    Column("warming_up", ColumnType.BOOL),
    Column("alarm1", ColumnType.BOOL),
    Column("alarm2", ColumnType.BOOL),
    Column("alarm3", ColumnType.BOOL),
    Column("alarm4", ColumnType.BOOL),
    Column("protocol", ColumnType.TEXT, nullable=False),
    Column("monotonic_ns", ColumnType.INT, nullable=False),
    Column("received_at", ColumnType.TEXT, nullable=False),
    Column("requested_at", ColumnType.TEXT),
    Column("latency_s", ColumnType.FLOAT),
    Column("error", ColumnType.TEXT),
)

#: The column names of :data:`SCHEMA`, in order.
COLUMNS: Final[tuple[str, ...]] = tuple(c.name for c in SCHEMA)

#: One row as a tuple in :data:`COLUMNS` order.
RowValues = tuple[Any, ...]

# Sanity check of the declaration itself (spec tables are data, checked at import).
assert len(COLUMNS) == 21
assert len(set(COLUMNS)) == 21

_NO_CHANNEL: Final = (None,) * 14  # channel … alarm4 of an error sample


def _make_converter() -> Callable[[Sample], RowValues]:
    # Enum values are read as ``member._value_`` (a plain attribute) rather than ``.value``
    # (a descriptor): it is the same string and costs a tenth of the time on this hot path.
    #
    # ``datetime.isoformat()`` is the most expensive step of a conversion (about 1.5 us), and the
    # samples of one frame or tick share one ``received_at`` object, so the text of the last
    # timestamp is memoised, keyed on identity. Each entry is one (datetime, text) tuple replaced
    # by a single assignment, so concurrent callers (sinks converting in worker threads) can
    # only cause a cache miss, never a wrong answer; nothing is held alive beyond the last
    # timestamp. The caches are closure cells rather than an object with a ``__call__`` method:
    # that saves two Python calls per sample.
    received_entry: tuple[datetime | None, str] = (None, "")
    requested_entry: tuple[datetime | None, str] = (None, "")

    def convert(sample: Sample) -> RowValues:
        """The row of ``sample`` as a tuple in COLUMNS order (same values as sample_to_row)."""
        nonlocal received_entry, requested_entry
        received_at = sample.received_at
        entry = received_entry
        if entry[0] is received_at:
            received = entry[1]
        else:
            received = received_at.isoformat()
            received_entry = (received_at, received)
        requested = sample.requested_at
        if requested is None:
            requested_text = None
        elif requested is received_at:  # polled samples: one instant, often one object
            requested_text = received
        else:
            entry = requested_entry
            if entry[0] is requested:
                requested_text = entry[1]
            else:
                requested_text = requested.isoformat()
                requested_entry = (requested, requested_text)
        reading = sample.reading
        if reading is None:
            error = sample.error
            return (
                sample.device,
                *_NO_CHANNEL,
                sample.protocol._value_,
                sample.monotonic_ns,
                received,
                requested_text,
                sample.latency_s,
                None if error is None else str(error),
            )
        status = reading.status
        a1, a2, a3, a4 = status.alarms
        fault = status.fault
        return (
            sample.device,
            reading.channel._value_,
            reading.kind._value_,
            reading.name,
            reading.value,
            reading.unit._value_,
            not (fault or a1 or a2 or a3 or a4),
            fault,
            status.maintenance,
            status.calibrating,
            status.warming_up,
            a1,
            a2,
            a3,
            a4,
            sample.protocol._value_,
            sample.monotonic_ns,
            received,
            requested_text,
            sample.latency_s,
            None,
        )

    return convert


#: The row of ``sample`` as a tuple in :data:`COLUMNS` order: the sinks' hot path, same values
#: as :func:`sample_to_row`. Safe to call from any thread.
sample_to_values: Final[Callable[[Sample], RowValues]] = _make_converter()


def sample_to_row(sample: Sample) -> dict[str, Any]:
    """The 21-column row of ``sample`` as a dict of native Python values (api.md §10).

    Keys are :data:`COLUMNS` in order. Enums are given as their values (``"I1"``,
    ``"transducer"``, ``"%"``, ``"modbus_rtu"``), flags as ``bool``, ``received_at`` and
    ``requested_at`` as ISO-8601 text; an error sample has None in every channel column
    and ``str(error)`` in ``error``. ``Reading.raw`` and ``Sample.metadata`` are not stored.
    """
    return dict(zip(COLUMNS, sample_to_values(sample), strict=True))
