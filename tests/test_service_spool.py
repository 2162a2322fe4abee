"""The service's durable spool (docs/service.md §3): round trip, seq, cursors, kill -9,
pruning and the drop counter."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servomexlib.devices.models import (
    AnalyserStatus,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    Reading,
    Sample,
    ValueState,
    idle_cal_groups,
)
from servomexlib.errors import ServomexError, ServomexTimeoutError, ServomexValidationError
from servomexlib.service.spool import SCHEMA_VERSION, ServomexSpoolError, Spool
from servomexlib.service.spool_rows import NewTick
from servomexlib.units import Unit

T0 = datetime(2026, 12, 2, 10, 0, 1, 250000, tzinfo=UTC)
WALL = 1_780_000_000.0  # the spool's wall clock in these tests (seconds since the epoch)


def reading_sample(
    device: str, channel: ChannelId, value: float | None, *, when: datetime = T0, mono: int = 7
) -> Sample:
    state = ValueState.OK if value is not None else ValueState.OVER_RANGE
    reading = Reading(
        channel, channel.kind, "Oxygen", value, Unit.PERCENT, ChannelStatus(),
        ProtocolKind.MODBUS_RTU, when, mono, b"", state,
    )  # fmt: skip
    return Sample(device, channel, reading, ProtocolKind.MODBUS_RTU, mono, when, when, 0.0125)


def tick(device: str, n: int = 3, value: float = 20.5) -> list[Sample]:
    return [reading_sample(device, c, value + i) for i, c in enumerate(list(ChannelId)[:n])]


def open_spool(path: Path, **kw: object) -> Spool:
    return Spool(path, clock=lambda: WALL, **kw)  # type: ignore[arg-type]


# -- round trip -----------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_zones = st.one_of(
    st.none(),
    st.just(UTC),
    # Whole seconds: datetime.fromisoformat drops an offset's microseconds (Python 3.13).
    st.integers(-23 * 3600, 23 * 3600).map(lambda s: timezone(timedelta(seconds=s))),
)
_times = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1)),
    _zones,
)
_latency = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_flags = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans())
_protocols = st.sampled_from(
    [ProtocolKind.CONTINUOUS_ASCII, ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII]
)


@st.composite
def samples(draw: st.DrawFn, device: str) -> Sample:
    protocol = draw(_protocols)
    mono = draw(_int64)
    received = draw(_times)
    requested = draw(st.one_of(st.none(), st.just(received), _times))
    latency = draw(_latency)
    if draw(st.integers(0, 5)) == 0:
        error = ServomexTimeoutError(draw(_text))
        return Sample(device, None, None, protocol, mono, received, requested, latency, error=error)
    channel = draw(st.sampled_from(list(ChannelId)))
    state = draw(st.sampled_from(list(ValueState)))
    value = (
        draw(st.floats(allow_nan=False, allow_infinity=False)) if state is ValueState.OK else None
    )
    status = ChannelStatus(*draw(st.tuples(st.booleans(), st.booleans(), st.booleans())), False)
    status = ChannelStatus(status.fault, status.maintenance, status.calibrating,
                           draw(st.booleans()), draw(_flags))  # fmt: skip
    reading = Reading(
        channel, draw(st.sampled_from(list(ChannelKind))), draw(st.one_of(st.none(), _text)),
        value, draw(st.sampled_from(list(Unit))), status, protocol, received, mono, b"", state,
    )  # fmt: skip
    return Sample(device, channel, reading, protocol, mono, received, requested, latency)


def comparable(sample: Sample) -> tuple[object, ...]:
    """A Sample's fields with its error as (class, text): exceptions compare by identity."""
    error = sample.error
    return (
        sample.device, sample.channel, sample.reading, sample.protocol, sample.monotonic_ns,
        sample.received_at, sample.requested_at, sample.latency_s, dict(sample.metadata),
        None if error is None else str(error),
    )  # fmt: skip


_RUNS = itertools.count()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    device=_text.filter(bool),
    data=st.data(),
)
def test_ticks_read_back_as_equal_samples(tmp_path: Path, device: str, data: st.DataObject) -> None:
    ticks = data.draw(
        st.lists(st.lists(samples(device), min_size=1, max_size=6), min_size=1, max_size=4)
    )
    path = tmp_path / f"rt-{next(_RUNS)}.db"
    with open_spool(path) as spool:
        spool.register_sink("s")
        seqs = [spool.append(device, t) for t in ticks]
        back = spool.pending("s", 100)
    assert [t.seq for t in back] == seqs
    for stored, original in zip(back, ticks, strict=True):
        assert stored.device == device
        assert [comparable(s) for s in stored.samples] == [comparable(s) for s in original]
        for s, o in zip(stored.samples, original, strict=True):
            if o.error is None:
                assert s == o  # exactly equal, field for field (no error to compare by identity)
            else:
                assert type(s.error) is ServomexError


def test_failed_tick_and_analyser_flags(tmp_path: Path) -> None:
    with open_spool(tmp_path / "s.db") as spool:
        spool.register_sink("s")
        err = ServomexTimeoutError("no reply from address 30")
        seq = spool.append(
            "kiln", err, protocol=ProtocolKind.MODBUS_RTU, received_at=T0, monotonic_ns=5,
            requested_at=T0, latency_s=1.0,
        )  # fmt: skip
        status = AnalyserStatus(True, False, idle_cal_groups())
        spool.append("kiln", tick("kiln", 2), analyser=status)
        failed, ok = spool.pending("s")
    assert failed.seq == seq
    assert failed.error == "no reply from address 30"
    assert failed.readings == ()
    assert failed.samples[0].channel is None
    assert failed.analyser_fault is None
    assert ok.error is None
    assert len(ok.readings) == 2
    assert (ok.analyser_fault, ok.analyser_maintenance) == (True, False)


def test_non_finite_latency_is_stored_as_none(tmp_path: Path) -> None:
    sample = reading_sample("a", ChannelId.I1, 1.0)
    nan = dataclasses.replace(sample, latency_s=float("nan"))
    with open_spool(tmp_path / "s.db") as spool:
        spool.register_sink("s")
        spool.append("a", [nan])
        (back,) = spool.pending("s")
    assert back.samples[0].latency_s is None


def test_bad_ticks_are_refused_and_store_nothing(tmp_path: Path) -> None:
    with open_spool(tmp_path / "s.db") as spool:
        with pytest.raises(ServomexValidationError, match="'kiln' has no sample"):
            spool.append("kiln", [])
        with pytest.raises(ServomexValidationError, match="device 'other' in the tick of 'kiln'"):
            spool.append("kiln", tick("other"))
        with pytest.raises(ServomexValidationError, match="needs protocol"):
            spool.append("kiln", "timeout")
        assert spool.head == 0
        assert spool.last_seq("kiln") is None


# -- seq ------------------------------------------------------------------------------------


def test_seq_per_device_starts_at_the_wall_clock_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_spool(path) as spool:
        a = [spool.append("a", tick("a")) for _ in range(3)]
        b = spool.append("b", tick("b"))
    origin = int(WALL * 1_000_000)
    assert a == [origin, origin + 1, origin + 2]
    assert b == origin
    with Spool(path, clock=lambda: WALL + 3600) as spool:  # the origin only applies to new devices
        assert spool.append("a", tick("a")) == origin + 3
        assert spool.last_seq("b") == origin
        assert spool.append_many([NewTick("b", tick("b")), NewTick("a", tick("a"))]) == [
            origin + 1,
            origin + 4,
        ]
        assert spool.head == 7


def test_a_second_process_cannot_open_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    code = (
        "import time; from servomexlib.service.spool import Spool; "
        f"s = Spool({str(path)!r}); print('open', flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "open\n"
        with pytest.raises(ServomexSpoolError, match="in use by another process"):
            Spool(path)
    finally:
        child.kill()
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    Spool(path).close()  # the lock dies with its process


def test_files_that_are_not_spools_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ServomexSpoolError, match=r"junk\.db"):
        Spool(junk)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE samples (x)")
    db.close()
    with pytest.raises(ServomexSpoolError, match="not a spool"):
        Spool(other)
    newer = tmp_path / "newer.db"
    Spool(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ServomexSpoolError, match="layout version 2"):
        Spool(newer)


# -- cursors --------------------------------------------------------------------------------


def test_cursors_are_per_sink_and_resume_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_spool(path) as spool:
        spool.register_sink("csv")
        spool.register_sink("pg")
        for i in range(5):
            spool.append("a", tick("a", 2, value=float(i)))
        first = spool.pending("csv", 2)
        spool.ack("csv", first[-1].position)
        spool.ack("csv", 1)  # older: ignored
        with pytest.raises(ServomexValidationError, match="beyond the newest tick"):
            spool.ack("csv", 99)
        with pytest.raises(ServomexValidationError, match="no sink named 'nope'"):
            spool.pending("nope")
    with Spool(path, clock=lambda: WALL + 10) as spool:
        assert [t.position for t in spool.pending("csv")] == [3, 4, 5]
        assert [t.position for t in spool.pending("pg")] == [1, 2, 3, 4, 5]
        backlog = spool.backlog("csv")
        assert (backlog.ticks, backlog.rows, backlog.oldest_committed_at) == (3, 6, WALL)
        assert backlog.age_s(WALL + 10) == 10
        spool.register_sink("late")  # from now
        spool.register_sink("archive", backfill=True)  # from the oldest tick held
        assert spool.pending("late") == []
        assert len(spool.pending("archive")) == 5
        spool.forget_sink("pg")
        assert spool.sinks() == ["archive", "csv", "late"]


# -- kill -9 -------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from servomexlib.devices.models import ChannelId, ChannelStatus, ProtocolKind, Reading, Sample
    from servomexlib.service.spool import Spool
    from servomexlib.units import Unit

    spool = Spool(sys.argv[1])
    spool.register_sink("sink")
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        now = datetime.now(UTC)
        samples = [
            Sample("kiln", c, Reading(c, c.kind, "O2", float(n), Unit.PERCENT, ChannelStatus(),
                   ProtocolKind.MODBUS_RTU, now, n, b""), ProtocolKind.MODBUS_RTU, n, now, now)
            for c in (ChannelId.I1, ChannelId.I2)
        ]
        print("seq", spool.append("kiln", samples), flush=True)
        if n % 7 == 0:
            ticks = spool.pending("sink", 5)
            spool.ack("sink", ticks[-1].position)
            print("ack", ticks[-1].position, flush=True)
    """
)


def test_kill_9_at_random_moments_loses_no_committed_tick(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    path = tmp_path / "spool.db"
    rng = random.Random(14)
    reported: list[int] = []
    acked = 0
    for _run in range(10):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == "ready\n"
            # Real time on purpose: the child must be killed while it is committing ticks.
            time.sleep(rng.uniform(0.02, 0.25))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(10)
        # What it reported before it died: whole lines only (a kill can cut the last one short,
        # and a cut report is not a report).
        with child.stdout:
            out = child.stdout.read()
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n") or len(line.split()) != 2:
                continue
            word, number = line.split()
            if word == "seq":
                reported.append(int(number))
            else:
                acked = int(number)
    assert len(reported) > 10
    with Spool(path) as spool:
        spool.register_sink("check", backfill=True)
        stored = [t.seq for t in spool.pending("check", 1_000_000)]
        assert spool.cursor("sink") >= acked
        after = spool.pending("sink", 1_000_000)
        assert after == [] or after[0].position == spool.cursor("sink") + 1
    assert set(reported) <= set(stored)  # every reported commit is there …
    assert stored == list(range(stored[0], stored[0] + len(stored)))  # … no gap, no duplicate
    assert len(stored) - len(reported) <= 10  # at most one commit per run unreported


# -- pruning and dropping -------------------------------------------------------------------


def fill(spool: Spool, n: int, device: str = "a") -> None:
    for i in range(n):
        spool.append(device, tick(device, 10, value=float(i)))


def test_delivered_ticks_are_pruned_first(tmp_path: Path) -> None:
    limit = 400_000
    with open_spool(tmp_path / "s.db", max_bytes=limit) as spool:
        spool.register_sink("a")
        spool.register_sink("b")
        for _ in range(40):
            fill(spool, 50)
            for name in ("a", "b"):
                spool.ack(name, spool.head)
            assert spool.used_bytes() < limit
        assert spool.head == 2000
        assert spool.dropped("a") == spool.dropped("b") == 0
        # b falls behind: a's deliveries are pruned, b's backlog is kept while it fits.
        mark = spool.head
        fill(spool, 100)
        spool.ack("a", spool.head)
        assert [t.position for t in spool.pending("b", 1000)][:1] == [mark + 1]
        assert len(spool.pending("b", 1000)) == 100


def test_undelivered_rows_of_the_most_behind_sink_are_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 300_000
    with open_spool(tmp_path / "s.db", max_bytes=limit) as spool:
        spool.register_sink("live")
        spool.register_sink("dead")
        with caplog.at_level(logging.ERROR, "servomexlib.service.spool"):
            for _ in range(30):
                fill(spool, 50)
                spool.ack("live", spool.head)  # "dead" never acknowledges
        assert spool.used_bytes() < limit
        dropped = spool.dropped("dead")
        backlog = spool.backlog("dead")
        assert dropped > 0
        assert spool.dropped("live") == 0
        assert dropped + backlog.rows == 1500 * 10  # every row delivered, held or counted
        assert spool.cursor("dead") == 1500 - backlog.ticks
        held = spool.pending("dead", 10_000)
        assert held[-1].position == 1500
        assert held[0].position == spool.cursor("dead") + 1
    errors = [r.getMessage() for r in caplog.records]
    assert errors
    assert all("event=spool_full_dropped" in m and "sink=dead" in m for m in errors)
    assert "seq=a:" in errors[0]
    total = sum(int(m.split(" rows=")[1].split()[0]) for m in errors)
    assert total == dropped
