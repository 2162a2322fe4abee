"""The declared row schema of every sink and the Sample → row conversion
(docs/recording-and-sinks.md).

Theory of operation
-------------------
Every sink stores the same 22 columns, in the same order, with types fixed by :data:`SCHEMA`
rather than inferred from the data: an all-None first batch can never turn ``value`` into a text
column. :func:`sample_to_row` is the public, readable form (a dict) and :func:`sample_to_values`
the same values as a tuple in column order; the sinks convert a whole batch at once with
:func:`batch_columns` (the hot path of every write, see :func:`flatten`), which gives the same
values column by column.

Conversion rules: enums become their ``.value``; booleans stay ``bool``; timestamps become
``datetime.isoformat()`` text; ``ok`` is ``status.ok and value_state == "ok"`` (a row without a
value is never ok); an error sample has None in every channel column (``channel`` … ``alarm4``
and ``value_state``) and ``str(error)`` in ``error``. ``Reading.raw`` and ``Sample.metadata``
are not stored.

``value_state`` is the last column, added after the first release: files written before it have
the first 21 columns only (:data:`LEGACY_COLUMNS`). Readers accept both; the sinks never append
22-column rows to a 21-column CSV (refused) and store rows without the column in a 21-column SQL
table (one warning), see each sink.

Service rows (``servomex run``, docs/service.md §3) carry one more column, ``seq``
(:data:`SEQ_COLUMN`): the tick's sequence number, strictly increasing per device for the life
of the spool, which is what lets a sink recognise a batch it already holds after a crash.
It is the 23rd column of :data:`SERVICE_SCHEMA` and exists only in sinks built with
``seq_column=True``; the library's 22-column files and tables (capture, record + pipe) are
unchanged, and a sink never mixes the two schemas in one file or table. :func:`with_seqs`
appends the column to a batch's columns.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import repeat
from typing import Any, Final

from ..devices.models import Sample, ValueState
from ..errors import ServomexSinkSchemaError

__all__ = [
    "COLUMNS",
    "LEGACY_COLUMNS",
    "SCHEMA",
    "SEQ_COLUMN",
    "SERVICE_COLUMNS",
    "SERVICE_SCHEMA",
    "Column",
    "ColumnType",
    "RowValues",
    "batch_columns",
    "cells_by_value",
    "flatten",
    "join_rows",
    "repeated",
    "sample_to_row",
    "sample_to_values",
    "select_columns",
    "with_seqs",
]

#: The sinks' logger (the one :mod:`.base` uses).
_log = logging.getLogger("servomexlib.sinks")


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


#: The 22 columns of the row schema (docs/recording-and-sinks.md), in order.
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
    Column("value_state", ColumnType.TEXT),  # "ok", "over_range", "invalid"; None for errors
)

#: The column names of :data:`SCHEMA`, in order.
COLUMNS: Final[tuple[str, ...]] = tuple(c.name for c in SCHEMA)

#: The columns of files written before ``value_state`` existed: the first 21, same order.
LEGACY_COLUMNS: Final[tuple[str, ...]] = COLUMNS[:-1]

#: One row as a tuple in :data:`COLUMNS` order.
RowValues = tuple[Any, ...]

# Sanity check of the declaration itself (spec tables are data, checked at import).
assert len(COLUMNS) == 22
assert len(set(COLUMNS)) == 22
assert COLUMNS[-1] == "value_state"

#: The service rows' extra column: the tick's ``seq`` (docs/service.md §3).
SEQ_COLUMN: Final = Column("seq", ColumnType.INT, nullable=False)

#: The 23 columns of service rows: :data:`SCHEMA` then :data:`SEQ_COLUMN`.
SERVICE_SCHEMA: Final[tuple[Column, ...]] = (*SCHEMA, SEQ_COLUMN)

#: The column names of :data:`SERVICE_SCHEMA`, in order.
SERVICE_COLUMNS: Final[tuple[str, ...]] = tuple(c.name for c in SERVICE_SCHEMA)

_NO_CHANNEL: Final = (None,) * 14  # channel … alarm4 of an error sample
_WIDTH: Final = len(COLUMNS)


def flatten(samples: Iterable[Sample]) -> list[Any]:
    """The rows of ``samples`` in one flat list: row after row, each in :data:`COLUMNS` order.

    This is the one place where Samples become stored values; every sink calls it (through
    :func:`batch_columns`) once per batch, and :func:`sample_to_values` is its one-sample form.
    It is written as one loop over the batch because it is the hot path of every write: the
    per-sample cost is mostly reading the attributes of objects that are no longer in the CPU
    cache, so the loop avoids a Python call per sample and keeps everything in locals.

    ``datetime.isoformat()`` is the most expensive step (about 1.5 us), and the samples of one
    frame or tick share one ``received_at`` object, so the text of the previous timestamp is
    reused when the next sample holds the very same object (identity, not equality: equal
    instants in other time zones have other text).
    """
    flat: list[Any] = []
    add = flat.extend
    no_channel = _NO_CHANNEL
    value_ok = ValueState.OK
    last_received: datetime | None = None
    received = ""
    last_requested: datetime | None = None
    requested_text: str | None = None
    for sample in samples:
        received_at = sample.received_at
        if received_at is not last_received:
            received = received_at.isoformat()
            last_received = received_at
        requested_at = sample.requested_at
        if requested_at is None:
            requested = None
        elif requested_at is received_at:  # polled samples: one instant, often one object
            requested = received
        else:
            if requested_at is not last_requested:
                requested_text = requested_at.isoformat()
                last_requested = requested_at
            requested = requested_text
        reading = sample.reading
        # Enum values are read as ``member._value_`` (a plain attribute) rather than ``.value``
        # (a descriptor): the same string at a tenth of the cost.
        if reading is None:
            error = sample.error
            add(
                (
                    sample.device,
                    *no_channel,
                    sample.protocol._value_,
                    sample.monotonic_ns,
                    received,
                    requested,
                    sample.latency_s,
                    None if error is None else str(error),
                    None,
                )
            )
            continue
        status = reading.status
        a1, a2, a3, a4 = status.alarms
        fault = status.fault
        state = reading.value_state
        add(
            (
                sample.device,
                reading.channel._value_,
                reading.kind._value_,
                reading.name,
                reading.value,
                reading.unit._value_,
                state is value_ok and not (fault or a1 or a2 or a3 or a4),
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
                requested,
                sample.latency_s,
                None,
                state._value_,
            )
        )
    return flat


def batch_columns(samples: Sequence[Sample]) -> list[list[Any]]:
    """The values of ``samples`` as 22 column lists in :data:`COLUMNS` order (n values each).

    The form every sink encodes from: a column-at-a-time encoder can test a whole column for
    one repeated value or for None with C loops (``list.count``, ``in``) and convert it with
    ``map``, instead of paying Python-level work per row and per value.
    """
    flat = flatten(samples)
    # Strided slices (C loops) transpose the rows into columns.
    return [flat[i::_WIDTH] for i in range(_WIDTH)]


def with_seqs(columns: list[list[Any]], seqs: list[int] | None) -> list[list[Any]]:
    """``columns`` (from :func:`batch_columns`) with the ``seq`` column appended when ``seqs``
    is given (one per row); unchanged (the same list) otherwise."""
    if seqs is not None:
        columns.append(seqs)
    return columns


# -- column-at-a-time encoding helpers (shared by the sinks) -----------------------------------


def repeated(column: list[Any]) -> bool:
    """True when ``column`` holds one value in every row that may be stored once for all.

    Only None, bools and strings qualify: for them "equal" means "stored the same"
    (``list.count`` compares with ``is`` first, then ``==``). Numbers do not: ``0.0 == -0.0``
    and ``1 == 1.0`` but their texts differ.
    """
    first = column[0]
    return (
        first is None or first is True or first is False or type(first) is str
    ) and column.count(first) == len(column)


def cells_by_value[T](column: list[Any], encode: Callable[[Any], T]) -> list[T]:
    """``[encode(v) for v in column]``, calling ``encode`` once per distinct value.

    For columns of few distinct, hashable values (names, enum values, timestamps shared by a
    frame): the rest is a dict look-up per row in a C loop. Distinct keys are distinct by
    ``==`` and hash, which for the strings and None of a text column means distinct text.
    """
    table = {value: encode(value) for value in dict.fromkeys(column)}
    return list(map(table.__getitem__, column))


def join_rows[S: (str, bytes)](pieces: Sequence[S | list[S]], n: int, empty: S) -> S:
    """Row after row, the concatenation of ``pieces`` (``empty`` is ``""`` or ``b""``).

    A piece is either one text used in every row (a separator, a constant column) or a list of
    ``n`` texts, one per row. Adjacent constant pieces are merged first; the rows are then
    built with C loops only (``zip`` over the lists and ``itertools.repeat``, ``join``).
    """
    merged: list[S | list[S]] = []
    for piece in pieces:
        if isinstance(piece, list):
            merged.append(piece)
        elif merged and not isinstance(merged[-1], list):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    columns = [piece if isinstance(piece, list) else repeat(piece, n) for piece in merged]
    return empty.join(map(empty.join, zip(*columns, strict=True)))


def sample_to_values(sample: Sample) -> RowValues:
    """The row of ``sample`` as a tuple in :data:`COLUMNS` order (same values as
    :func:`sample_to_row`). Safe to call from any thread."""
    return tuple(flatten((sample,)))


def sample_to_row(sample: Sample) -> dict[str, Any]:
    """The 22-column row of ``sample`` as a dict of native Python values
    (docs/recording-and-sinks.md).

    Keys are :data:`COLUMNS` in order. Enums are given as their values (``"I1"``,
    ``"transducer"``, ``"%"``, ``"modbus_rtu"``, ``value_state`` ``"ok"``/``"over_range"``/
    ``"invalid"``), flags as ``bool``, ``received_at`` and ``requested_at`` as ISO-8601 text;
    ``ok`` is ``status.ok and value_state == "ok"``; an error sample has None in every channel
    column and in ``value_state``, and ``str(error)`` in ``error``. ``Reading.raw`` and
    ``Sample.metadata`` are not stored.
    """
    return dict(zip(COLUMNS, sample_to_values(sample), strict=True))


# Existing tables

_MISSING_HINTS: Final = {
    "value_state": (
        " (the table was created by an older version of servomexlib; "
        "ALTER TABLE … ADD COLUMN value_state TEXT stores it from now on)"
    ),
}


def select_columns(present: set[str], where: str) -> tuple[str, ...]:
    """The schema columns ``present`` in an existing target table, in schema order (the SQL
    sinks write only those).

    Schema columns the target lacks are dropped with one warning each. A table that lacks
    only ``value_state`` was created by an older version (21 columns); its warning says how to
    add the column.
    """
    for name in COLUMNS:
        if name not in present:
            hint = _MISSING_HINTS.get(name, "")
            _log.warning("%s has no column %r: its values are dropped%s", where, name, hint)
    columns = tuple(name for name in COLUMNS if name in present)
    if not columns:
        raise ServomexSinkSchemaError(f"{where} has none of the sample columns")
    return columns
