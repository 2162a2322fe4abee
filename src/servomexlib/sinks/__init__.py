"""Sinks that store samples, and :func:`pipe` to feed them from a recording
(docs/recording-and-sinks.md).

Every sink stores the same 22 declared columns (:data:`SCHEMA`, see :func:`sample_to_row`) and
has the same life cycle: ``open()``, ``write_many(samples)``, ``close()``, ``async with``.

==================  =================================================================
``InMemorySink``    keeps the Sample objects in ``.samples``
``CsvSink``         CSV; appends to a matching header, refuses any other unless overwrite
``JsonlSink``       JSON Lines, appended
``SqliteSink``      SQLite in WAL mode, one transaction per batch
``ParquetSink``     Parquet via pyarrow (extra ``parquet``), one row group per batch
``PostgresSink``    PostgreSQL via asyncpg (extra ``postgres``), binary COPY
==================  =================================================================

CSV, JSONL and SQLite keep every batch whose ``write_many`` returned when the process is killed;
see :class:`ParquetSink` for what a kill leaves of a Parquet file (and ``part_batches=`` for a
crash-safe layout). CSV, JSONL and SQLite can rotate files by size or age (``rotate_bytes=``,
``rotate_seconds=``); :func:`rotated_paths` lists a rotated capture in order.
"""

from __future__ import annotations

from .base import IDENTIFIER_RE, BaseSink, Sink, rotated_paths
from .csv import CsvSink
from .jsonl import JsonlSink
from .memory import InMemorySink
from .parquet import ParquetSink
from .pipe import pipe
from .postgres import PostgresConfig, PostgresSink
from .schema import COLUMNS, SCHEMA, Column, ColumnType, sample_to_row, sample_to_values
from .sqlite import SqliteSink

__all__ = [
    "COLUMNS",
    "IDENTIFIER_RE",
    "SCHEMA",
    "BaseSink",
    "Column",
    "ColumnType",
    "CsvSink",
    "InMemorySink",
    "JsonlSink",
    "ParquetSink",
    "PostgresConfig",
    "PostgresSink",
    "Sink",
    "SqliteSink",
    "pipe",
    "rotated_paths",
    "sample_to_row",
    "sample_to_values",
]
