"""pipe(): flattening, batching by size and time, flushing on errors and cancellation."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from datetime import datetime
from functools import partial

import anyio
import pytest

from servomexlib.devices.models import Sample
from servomexlib.errors import ServomexSinkWriteError
from servomexlib.sinks import InMemorySink, Sink, pipe
from servomexlib.streaming.recorder import AcquisitionSummary, record
from sink_samples import make_samples

pytestmark = pytest.mark.anyio


class RecordingSink(InMemorySink):
    """An InMemorySink that also remembers the size of every write_many call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        self.writes.append(len(samples))
        await super()._write(samples)


async def from_list(
    batches: list[list[Sample]], *, delay: float = 0.0
) -> AsyncGenerator[list[Sample]]:
    for batch in batches:
        if delay:
            await anyio.sleep(delay)
        yield batch


def chunks(samples: list[Sample], size: int) -> list[list[Sample]]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


async def test_pipe_flattens_batches_and_counts_samples_written() -> None:
    samples = make_samples(100)
    sink = RecordingSink()
    async with sink:
        with anyio.fail_after(10):
            summary = await pipe(from_list(chunks(samples, 7)), sink, batch_size=30)
    assert sink.samples == samples
    assert isinstance(summary, AcquisitionSummary)
    assert summary.samples_emitted == 100
    assert summary.samples_late == 0
    assert summary.disconnects == 0
    assert isinstance(summary.started_at, datetime)
    assert summary.finished_at is not None
    assert summary.finished_at >= summary.started_at
    # Flushes at >= 30 buffered (after 5 batches of 7 = 35), the rest at the end.
    assert sink.writes == [35, 35, 30]


async def test_pipe_flushes_every_batch_with_zero_interval() -> None:
    sink = RecordingSink()
    async with sink:
        with anyio.fail_after(10):
            await pipe(from_list(chunks(make_samples(20), 5)), sink, flush_interval=0)
    assert sink.writes == [5, 5, 5, 5]


async def test_pipe_flushes_by_time_when_batches_trickle_in() -> None:
    sink = RecordingSink()
    async with sink:
        with anyio.fail_after(20):
            await pipe(
                from_list(chunks(make_samples(40), 2), delay=0.02),
                sink,
                batch_size=1000,
                flush_interval=0.1,
            )
    # 20 batches over >= 0.4 s: several time-based flushes, each of several batches.
    assert sum(sink.writes) == 40
    assert len(sink.writes) >= 3
    assert len(sink.writes) < 20


async def test_pipe_accepts_bare_samples() -> None:
    samples = make_samples(5)

    async def single() -> AsyncIterator[Sample]:
        for s in samples:
            yield s

    async with InMemorySink() as sink:
        summary = await pipe(single(), sink)
    assert sink.samples == samples
    assert summary.samples_emitted == 5


async def test_pipe_writes_the_buffer_when_the_stream_fails() -> None:
    samples = make_samples(10)

    async def failing() -> AsyncIterator[list[Sample]]:
        yield samples[:4]
        yield samples[4:]
        raise OSError("line lost")

    sink = RecordingSink()
    async with sink:
        with pytest.raises(OSError, match="line lost"):
            await pipe(failing(), sink, batch_size=1000, flush_interval=1000)
    assert sink.samples == samples
    assert sink.writes == [10]


async def test_pipe_writes_the_buffer_when_cancelled() -> None:
    samples = make_samples(12)
    sent = anyio.Event()

    async def endless() -> AsyncIterator[list[Sample]]:
        yield samples[:6]
        yield samples[6:]
        sent.set()
        await anyio.sleep_forever()
        yield []  # pragma: no cover

    sink = RecordingSink()
    async with sink, anyio.create_task_group() as tg:
        tg.start_soon(partial(pipe, endless(), sink, batch_size=1000, flush_interval=1000))
        with anyio.fail_after(10):
            await sent.wait()
        tg.cancel_scope.cancel()  # like Ctrl-C
    assert sink.samples == samples
    assert sink.writes == [12]


async def test_pipe_propagates_sink_errors_without_retrying() -> None:
    class Broken(RecordingSink):
        async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
            self.writes.append(len(samples))
            raise ServomexSinkWriteError("disk full")

    sink = Broken()
    async with sink, aclosing(from_list(chunks(make_samples(10), 5))) as stream:
        with pytest.raises(ServomexSinkWriteError, match="disk full"):
            await pipe(stream, sink, flush_interval=0)
    assert sink.writes == [5]


async def test_pipe_checks_its_arguments() -> None:
    sink = InMemorySink()
    stream = from_list([])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            await pipe(stream, sink, batch_size=bad)  # type: ignore[arg-type]
    for bad_interval in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="flush_interval"):
            await pipe(stream, sink, flush_interval=bad_interval)
    with pytest.raises(RuntimeError, match="open"):
        await pipe(stream, sink)


async def test_record_into_pipe_end_to_end() -> None:
    class Source:
        def __init__(self) -> None:
            self.tick = 0

        async def poll_samples(
            self, *, names: Sequence[str] | None = None, timeout: float | None = None
        ) -> Sequence[Sample]:
            self.tick += 1
            return make_samples(5 * self.tick)[-5:]

    source = Source()
    sink: Sink = InMemorySink()
    async with sink:
        with anyio.fail_after(20):
            async with record(source, rate_hz=50, duration=0.2) as rec:
                summary = await pipe(rec.stream, sink, batch_size=8, flush_interval=0.05)
    assert isinstance(sink, InMemorySink)
    assert summary.samples_emitted == len(sink.samples) == 5 * source.tick
    assert sink.samples == make_samples(5 * source.tick)
