"""Group 4: ``record()`` cadence at 20 Hz against a cheap in-process source.

The source answers ``poll_samples`` at once (one checkpoint, a prebuilt batch of five
samples), so the figures measure the recorder's scheduling, not a device. Drift of tick n is
``(clock when poll_samples returned) − (first tick's start + n · period)``; the maximum is the
recorder's own ``summary.max_drift_ms`` (the same definition, api.md §7); late ticks are
``summary.samples_late``. The consumer drains the stream as a real one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel

from servomexlib import Sample, record

from .common import Figure, Settings, percentile
from .sinks import make_samples

__all__ = ["run"]

RATE_HZ = 20.0
MAX_DRIFT_MS = 2.5


class _CheapSource:
    def __init__(self, batch: list[Sample]) -> None:
        self.batch = batch
        self.returned: list[float] = []

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> Sequence[Sample]:
        await anyio.lowlevel.checkpoint()
        self.returned.append(anyio.current_time())
        return self.batch


async def run_async(settings: Settings) -> list[Figure]:
    duration = 2.0 if settings.quick else 30.0
    source = _CheapSource(make_samples(5))
    batches = 0
    async with record(source, rate_hz=RATE_HZ, duration=duration) as rec:
        async for _batch in rec.stream:
            batches += 1
    summary = rec.summary
    period = 1.0 / RATE_HZ
    t0 = source.returned[0]
    drifts = [(t - t0 - i * period) * 1000.0 for i, t in enumerate(source.returned)]
    floor = await _bare_sleep_lateness(len(drifts))
    return [
        Figure(
            "4",
            f"record() at {RATE_HZ:g} Hz for {duration:g} s: max drift",
            f"{summary.max_drift_ms:.2f} ms (p50 {percentile(drifts, 0.5):.2f}, "
            f"p99 {percentile(drifts, 0.99):.2f})",
            f"<= {MAX_DRIFT_MS} ms",
            summary.max_drift_ms / MAX_DRIFT_MS,
            ("<=", 1.0),
            note=(
                f"{batches} batches, {summary.samples_emitted} emitted; tick duration p50 "
                f"{summary.tick_duration_ms_p50:.3f} ms, p99 {summary.tick_duration_ms_p99:.3f} ms"
            ),
        ),
        Figure(
            "4",
            f"record() at {RATE_HZ:g} Hz for {duration:g} s: late ticks",
            f"{summary.samples_late}",
            "0",
            float(summary.samples_late),
            ("<=", 0.0),
        ),
        floor,
    ]


async def _bare_sleep_lateness(ticks: int) -> Figure:
    """Context: lateness of a bare ``anyio.sleep_until`` loop at the same rate (the platform)."""
    period = 1.0 / RATE_HZ
    start = anyio.current_time()
    late = []
    for n in range(ticks):
        target = start + n * period
        await anyio.sleep_until(target)
        late.append((anyio.current_time() - target) * 1000.0)
    return Figure(
        "4",
        f"context: bare anyio.sleep_until at {RATE_HZ:g} Hz, {ticks} ticks (platform floor)",
        f"max {max(late):.2f} ms (p50 {percentile(late, 0.5):.2f}, p99 "
        f"{percentile(late, 0.99):.2f})",
        f"{MAX_DRIFT_MS} ms",
        max(late) / MAX_DRIFT_MS,
        None,
    )


def run(settings: Settings) -> list[Figure]:
    return anyio.run(run_async, settings)
