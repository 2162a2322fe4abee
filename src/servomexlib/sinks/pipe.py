"""``pipe()``: drain a stream of sample batches into a sink, losing nothing that arrived."""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, Iterable
from datetime import UTC, datetime

import anyio

from ..devices.models import Sample
from ..streaming.recorder import AcquisitionSummary
from .base import ReportsOpen, Sink

__all__ = ["pipe"]


async def pipe(
    stream: AsyncIterable[Iterable[Sample] | Sample],
    sink: Sink,
    *,
    batch_size: int = 64,
    flush_interval: float = 1.0,
) -> AcquisitionSummary:
    """Write every sample of ``stream`` to ``sink`` in batches (docs/recording-and-sinks.md).

    ``stream`` yields per-tick batches (``Recording.stream``); each batch is flattened into a
    buffer (a bare :class:`Sample`, as a ``StreamingSession`` yields, is taken as a batch of
    one). The buffer is written with ``sink.write_many`` when it holds ``batch_size`` samples or
    more, or when ``flush_interval`` seconds or more have passed since the last write — both
    checked when a batch arrives — and once more at the end.

    Nothing that was received is lost when the pipe stops early: if the stream raises, or the
    pipe is cancelled (Ctrl-C), the buffered samples are written before the exception
    propagates. Every write is shielded from cancellation, so a batch is never cut in half.

    Args:
        stream: async iterable of batches (sequences of samples).
        sink: an **open** sink.
        batch_size: buffered samples that trigger a write (integer >= 1).
        flush_interval: seconds between writes when batches trickle in (finite, >= 0; 0 writes
            every batch at once).

    Returns:
        A new :class:`AcquisitionSummary`: ``started_at``/``finished_at`` of the pipe and
        ``samples_emitted`` = samples written; the other counters are 0.

    Raises:
        ValueError: bad ``batch_size`` or ``flush_interval``.
        RuntimeError: the sink is not open.
        ServomexSinkError: the sink failed (the pipe stops; the failed batch is not retried).
        Whatever the stream raised, after the buffer was written.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if (
        isinstance(flush_interval, bool)
        or not isinstance(flush_interval, int | float)
        or not math.isfinite(flush_interval)
        or flush_interval < 0
    ):
        raise ValueError(f"flush_interval must be a finite number >= 0, got {flush_interval!r}")
    if isinstance(sink, ReportsOpen) and not sink.is_open:
        raise RuntimeError(f"pipe() needs an open sink: call {type(sink).__name__}.open() first")

    summary = AcquisitionSummary(started_at=datetime.now(UTC))
    buffer: list[Sample] = []
    last_flush = anyio.current_time()

    async def flush() -> None:
        nonlocal buffer, last_flush
        pending, buffer = buffer, []
        last_flush = anyio.current_time()
        if pending:
            # Shielded: a cancellation (Ctrl-C) waits for the batch instead of dropping it.
            with anyio.CancelScope(shield=True):
                await sink.write_many(pending)
            summary.samples_emitted += len(pending)

    try:
        async for batch in stream:
            if isinstance(batch, Sample):
                buffer.append(batch)
            else:
                buffer.extend(batch)
            if len(buffer) >= batch_size or anyio.current_time() - last_flush >= flush_interval:
                await flush()
        await flush()
    except BaseException:
        # The stream failed or the pipe was cancelled: keep what was received, then re-raise.
        # A failure of this last write is chained to the original error, not hiding it.
        if buffer:
            await flush()
        raise
    finally:
        summary.finished_at = datetime.now(UTC)
    return summary
