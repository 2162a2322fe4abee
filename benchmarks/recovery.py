"""Group 7: recording through lost replies and a harsh silence rule, before and after.

Issue 12 item 2. One simulated 4100D (I1 I2 I3 E1 E2) at 19200 RTU with realistic line timing
is served on a pseudo-terminal, opened with ``open_device`` (identify on entry) and recorded
with ``record(anz, rate_hz=3)``. Three faults:

* 5 % and 30 % of replies lost (``sim.lose_replies``), from after the identify;
* the harsh silence rule: every request that follows less than 80 ms of line silence is lost
  (``Simulator(silence_drop_until_s=0.08)``), from the start.

Each is recorded twice on the same run: **before** = the old behaviour, every attempt waiting
the whole 1 s timeout (``record(..., timeout=1.0)``: a per-call timeout switches the learned
waits off), and **after** = the library default (``timeout=None``: learned waits, learned
silence). Figures per run: poll time p50/p90 (each poll's own ``latency_s``, request to last
reply), the rate the recorder achieved (successful polls per second of recording) and the
wrong values. A value is wrong when I1 — the simulator's request counter, set when a reply is
built — is not larger than the previous poll's (a stale reply taken as new), or any other
channel differs from the value it was given (a reply taken for another read). Both runs must
show zero. The ratio is after p90 ÷ before p90; the harsh rule's must be ≤ 0.5 (issue 12:
"well below half").
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import anyio

import servomexlib
from servomexlib import ProtocolKind, Sample, SerialSettings, record
from servomexlib.devices.models import ChannelId
from servomexlib.errors import ServomexTimeoutError
from servomexlib.sim import Simulator

from .common import Figure, Settings, percentile

__all__ = ["run"]

RTU = ProtocolKind.MODBUS_RTU
RATE_HZ = 3.0
TIMEOUT = 1.0
HARSH_S = 0.08
KNOWN = {ChannelId.I2: -7.25, ChannelId.I3: 0.25, ChannelId.E1: 4.0, ChannelId.E2: 12.5}
HALF = 0.5


@dataclasses.dataclass(slots=True)
class Run:
    latencies: list[float]
    ok: int
    errors: int
    wrong: int
    duration: float
    retries: int
    short_timeouts: int
    silence_s: float
    learned_wait_s: float | None
    learned_at_s: float | None  # seconds into the recording when the silence reached 80 ms
    steady: list[float]  # poll times after that

    @property
    def rate(self) -> float:
        return self.ok / self.duration

    def describe(self) -> str:
        p50 = statistics.median(self.latencies) if self.latencies else float("nan")
        p90 = percentile(self.latencies, 0.90)
        return (
            f"p50 {p50 * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, {self.rate:.2f} Hz, "
            f"{self.wrong} wrong"
        )

    def tail(self) -> str:
        """Mean and max poll time, and the p90 after the silence was learned."""
        if not self.latencies:
            return "no poll"
        text = (
            f"mean {statistics.fmean(self.latencies) * 1000:.0f} ms, max "
            f"{max(self.latencies) * 1000:.0f} ms"
        )
        if self.steady:
            text += f", p90 once learned {percentile(self.steady, 0.9) * 1000:.0f} ms"
        return text


async def record_once(
    *, loss: float = 0.0, harsh: bool = False, learned: bool, duration: float, seed: int
) -> Run:
    sim = Simulator(
        mode=RTU,
        serial=SerialSettings(port="sim://", baudrate=19200),
        seed=seed,
        silence_drop_until_s=HARSH_S if harsh else None,
    )
    sim.count_requests(ChannelId.I1)
    for ch, value in KNOWN.items():
        sim.set_value(ch, value)
    latencies: list[float] = []
    steady: list[float] = []
    ok = errors = wrong = 0
    last_count = -1.0
    learned_at: float | None = None
    async with sim:
        path = await sim.serve_pty()
        anz = await servomexlib.open_device(
            path, protocol=RTU, serial_settings=SerialSettings(port=path), timeout=TIMEOUT
        )
        async with anz:
            if loss:
                sim.lose_replies(loss)
            client = anz.client
            start = anyio.current_time()
            async with record(
                _Refusing(anz),
                rate_hz=RATE_HZ,
                duration=duration,
                timeout=None if learned else TIMEOUT,
            ) as rec:
                async for batch in rec.stream:
                    good = check(batch)
                    if good is None:
                        errors += 1
                        continue
                    count, latency, bad = good
                    ok += 1
                    latencies.append(latency)
                    if learned_at is not None:
                        steady.append(latency)
                    if bad or count <= last_count:
                        wrong += 1
                    last_count = max(last_count, count)
                    silence = client.line.silence_s  # type: ignore[attr-defined]
                    if learned_at is None and silence >= HARSH_S - 1e-9:
                        learned_at = anyio.current_time() - start
            stats = anz.statistics()
    return Run(
        latencies,
        ok,
        errors,
        wrong,
        duration,
        stats.retries,
        stats.short_timeouts,
        stats.silence_s,
        stats.learned_wait_s,
        learned_at,
        steady,
    )


class _Refusing:
    """The analyser as a ``PollSource`` whose failed polls (``ServomexTimeoutError`` after all
    retries — allowed: refusing is fine, guessing is not) become empty batches, so the
    recording goes on and counts them."""

    def __init__(self, anz: Any) -> None:
        self.anz = anz

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> Sequence[Sample]:
        try:
            samples: Sequence[Sample] = await self.anz.poll_samples(timeout=timeout)
        except ServomexTimeoutError:
            return []
        return samples


def check(batch: Sequence[Sample]) -> tuple[float, float, bool] | None:
    """(I1's count, the poll's latency, any known value wrong) or None for an error batch."""
    if not batch or batch[0].error is not None:
        return None
    values = {s.channel: s.value for s in batch}
    count = values.get(ChannelId.I1)
    latency = batch[0].latency_s
    if count is None or latency is None:
        return None
    bad = any(values.get(ch) != v for ch, v in KNOWN.items())
    return count, latency, bad


async def run_async(settings: Settings) -> list[Figure]:
    loss_duration = 5.0 if settings.quick else 15.0
    # The harsh rule costs the old client seconds per poll; the new one learns the silence in
    # its first ~15 s (the open-time timeout until 8 replies are timed, then 10 ms steps).
    harsh_before = 6.0 if settings.quick else 25.0
    harsh_after = 12.0 if settings.quick else 60.0
    scenarios: list[tuple[str, dict[str, Any], float, float, tuple[str, float] | None]] = [
        ("5 % lost replies", {"loss": 0.05}, loss_duration, loss_duration, None),
        ("30 % lost replies", {"loss": 0.30}, loss_duration, loss_duration, None),
        (
            f"silence rule: lost unless {HARSH_S * 1000:.0f} ms quiet",
            {"harsh": True},
            harsh_before,
            harsh_after,
            ("<=", HALF),
        ),
    ]
    figures: list[Figure] = []
    for seed, (name, kw, before_s, after_s, limit) in enumerate(scenarios, start=21):
        before = await record_once(learned=False, duration=before_s, seed=seed, **kw)
        after = await record_once(learned=True, duration=after_s, seed=seed, **kw)
        ratio = percentile(after.latencies, 0.9) / percentile(before.latencies, 0.9)
        learned = (
            "none"
            if after.learned_wait_s is None
            else f"{(after.learned_wait_s) * 1000:.0f} ms + wire time"
        )
        extra = (
            f"; silence reached {HARSH_S * 1000:.0f} ms after {after.learned_at_s:.1f} s"
            if after.learned_at_s is not None
            else ""
        )
        figures.append(
            Figure(
                "7",
                f"record() {RATE_HZ:g} Hz RTU 19200, {name}: after (learned)",
                after.describe(),
                f"before (fixed 1 s): {before.describe()}",
                ratio,
                limit,
                note=(
                    f"after: {after.tail()}; before: {before.tail()}; "
                    f"after: {after.duration:g} s, {after.ok} polls, {after.errors} failed, "
                    f"{after.retries} retries ({after.short_timeouts} after a learned wait), "
                    f"wait {learned}, silence {after.silence_s * 1000:.0f} ms{extra}; before: "
                    f"{before.duration:g} s, {before.ok} polls, {before.errors} failed, "
                    f"{before.retries} retries; ratio = p90 after / before"
                ),
            )
        )
        figures.append(
            Figure(
                "7",
                f"  wrong values, {name} (before + after)",
                f"{before.wrong} + {after.wrong}",
                "0",
                float(before.wrong + after.wrong),
                ("<=", 0.0),
            )
        )
    return figures


def run(settings: Settings) -> list[Figure]:
    return anyio.run(run_async, settings)
