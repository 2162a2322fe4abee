"""Blocking sinks and one-call recording for scripts (docs/quickstart-sync.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from ..devices.models import Sample
from ..sinks import CsvSink, JsonlSink, SqliteSink, pipe
from ..sinks.base import Sink
from ..streaming.recorder import AcquisitionSummary, PollSource, record
from .portal import SyncPortal

__all__ = ["SyncSink", "record_to_sink", "sync_csv_sink", "sync_jsonl_sink", "sync_sqlite_sink"]


class SyncSink:
    """A blocking wrapper over any async sink: ``open``, ``write_many``, ``close``, ``with``.

    Args:
        sink: the async sink to drive.
        portal: share a running portal; by default one is created and closed with the sink.
    """

    def __init__(self, sink: Sink, *, portal: SyncPortal | None = None) -> None:
        self._sink = sink
        self._owns_portal = portal is None
        self._portal = portal if portal is not None else SyncPortal()

    def __repr__(self) -> str:
        return f"<SyncSink {self._sink!r}>"

    @property
    def sink(self) -> Sink:
        return self._sink

    def open(self) -> None:
        if self._owns_portal:
            self._portal.start()
        self._portal.call(self._sink.open)

    def write_many(self, samples: Sequence[Sample]) -> None:
        self._portal.call(self._sink.write_many, samples)

    def close(self) -> None:
        """Close the sink (idempotent) and stop an owned portal."""
        try:
            if self._portal.running:
                self._portal.call(self._sink.close)
        finally:
            if self._owns_portal:
                self._portal.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def sync_csv_sink(
    path: str | Path, *, overwrite: bool = False, portal: SyncPortal | None = None
) -> SyncSink:
    return SyncSink(CsvSink(path, overwrite=overwrite), portal=portal)


def sync_jsonl_sink(path: str | Path, portal: SyncPortal | None = None) -> SyncSink:
    return SyncSink(JsonlSink(path), portal=portal)


def sync_sqlite_sink(
    path: str | Path, *, table: str = "samples", portal: SyncPortal | None = None
) -> SyncSink:
    return SyncSink(SqliteSink(path, table=table), portal=portal)


async def _record_into(
    source: PollSource,
    sink: Sink,
    *,
    rate_hz: float,
    duration: float,
    names: Sequence[str] | None,
    timeout: float | None,
    batch_size: int,
    flush_interval: float,
) -> AcquisitionSummary:
    async with (
        sink,
        record(source, rate_hz=rate_hz, duration=duration, names=names, timeout=timeout) as rec,
    ):
        return await pipe(rec.stream, sink, batch_size=batch_size, flush_interval=flush_interval)


def record_to_sink(
    source: PollSource,
    sink: Sink,
    *,
    rate_hz: float,
    duration: float,
    names: Sequence[str] | None = None,
    timeout: float | None = None,
    batch_size: int = 64,
    flush_interval: float = 1.0,
    backend: str = "asyncio",
    portal: SyncPortal | None = None,
) -> AcquisitionSummary:
    """Record ``source`` into ``sink`` for ``duration`` seconds in one blocking call.

    Opens and closes ``sink``. ``source`` must live on the portal's loop (for example a
    ``SyncAnalyzer.analyzer`` or ``SyncManager.manager`` opened with the same ``portal``).

    Returns:
        The pipe's summary: ``samples_emitted`` = samples written.
    """
    # A borrowed portal stays open; without one, a private portal lives for this call only.
    scope = contextlib.nullcontext(portal) if portal is not None else SyncPortal(backend=backend)
    with scope as active:
        return active.call(
            _record_into,
            source,
            sink,
            rate_hz=rate_hz,
            duration=duration,
            names=names,
            timeout=timeout,
            batch_size=batch_size,
            flush_interval=flush_interval,
        )
