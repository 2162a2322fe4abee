"""``servomex run`` in process: schedules, the tick → spool → sinks path, ``--once``.

The plant of issue 14's acceptance, over named sim:// lines: bus 0 Modbus RTU with two
analysers (addresses 1 and 30), bus 1 Modbus ASCII with three, bus 2 one continuous analyser;
sinks SQLite and CSV. Everything
waits on the event loop's clock only (the spool runs inline), so these tests run on virtual
time on both backends: a 10 s run takes well under a second of wall time, and the simulator's
own timeline (its request log) is what the assertions read. The Modbus lines use the harsh
silence rule (``drop_until_ms=50``): any request that follows less than 50 ms of line silence —
such as one interleaved with another analyser's exchange — is lost and recorded as such.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from servomexlib.service.config import ServiceConfig, parse_config
from servomexlib.service.runner import Service
from servomexlib.sim import RequestOutcome, lookup_line
from servomexlib.sim.url import line_for_url

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


def plant(
    tmp_path: Path, *, rates: tuple[float, float] = (1.0, 0.5)
) -> tuple[ServiceConfig, dict[str, str]]:
    """The acceptance plant; returns its config and the sim line name of each bus."""
    tag = uuid.uuid4().hex[:8]
    names = {"rtu": f"rtu{tag}", "ascii": f"asc{tag}", "cont": f"cont{tag}"}
    text = f"""
[service]
name = "test-site"
spool = "{tmp_path / "spool.db"}"
log_level = "debug"

[[bus]]
port = "sim://{names["rtu"]}?mode=modbus_rtu&address=1,30&drop_until_ms=50"
protocol = "modbus_rtu"
timeout = 0.5

[[bus.analyser]]
name = "kiln-inlet"
address = 30
rate_hz = {rates[0]}
channels = ["I1", "I2", "I3"]

[[bus.analyser]]
name = "kiln-outlet"
address = 1
rate_hz = {rates[0]}

[[bus]]
port = "sim://{names["ascii"]}?mode=modbus_ascii&address=2,3,4&drop_until_ms=50"
protocol = "modbus_ascii"
timeout = 0.5

[[bus.analyser]]
name = "dryer-1"
address = 2
rate_hz = {rates[1]}

[[bus.analyser]]
name = "dryer-2"
address = 3
rate_hz = {rates[1]}

[[bus.analyser]]
name = "dryer-3"
address = 4
rate_hz = {rates[1]}

[[bus]]
port = "sim://{names["cont"]}?mode=continuous&period=1.0"
protocol = "continuous"

[[bus.analyser]]
name = "stack"

[[sink]]
type = "sqlite"
path = "{tmp_path / "plant.db"}"

[[sink]]
type = "csv"
path = "{tmp_path / "plant.csv"}"
"""
    return parse_config(text, source="plant.toml"), names


def spool_ticks(path: Path) -> list[tuple[str, int, int]]:
    """(device, seq, rows) of every tick in the spool, in spool order."""
    with closing(sqlite3.connect(path)) as db:
        return list(db.execute("SELECT device, seq, nrows FROM ticks ORDER BY id"))


def sqlite_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return list(
            db.execute(
                "SELECT device, channel, value, received_at FROM samples "
                "ORDER BY device, received_at, channel"
            )
        )


def csv_rows(path: Path) -> list[tuple[Any, ...]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    out = [
        (r["device"], r["channel"] or None, float(r["value"]) if r["value"] else None,
         r["received_at"])
        for r in rows
    ]  # fmt: skip
    return sorted(out, key=lambda r: (r[0], r[3], r[1] or ""))


def quiet_service(config: ServiceConfig, **kw: Any) -> Service:
    return Service(
        config, spool_inline=True, handle_signals=False, configure_logs=False, environ={}, **kw
    )


async def test_duration_run_every_tick_in_every_sink(tmp_path: Path) -> None:
    duration = 10.0
    # PostgreSQL runs in tests/test_service_run_postgres.py: on real time (a real server over
    # TCP; virtual time would jump past every wait for it).
    config, lines = plant(tmp_path)
    service = quiet_service(config, duration=duration)
    assert await service.run() == 0
    assert service.flushed is True

    ticks = spool_ticks(config.spool)
    per_device = Counter(d for d, _, _ in ticks)
    expected = {a.name: (a.rate_hz or 1.0) * duration for a in config.analysers}
    for name, want in expected.items():
        assert abs(per_device[name] - want) <= 1, (name, per_device[name], want)
    # seq: contiguous per analyser, in spool order.
    for name in expected:
        seqs = [s for d, s, _ in ticks if d == name]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), name
    # No error tick: every tick is readings (kiln-inlet: its three configured channels).
    rows = sqlite_rows(tmp_path / "plant.db")
    assert all(r[1] is not None for r in rows)
    assert {r[1] for r in rows if r[0] == "kiln-inlet"} == {"I1", "I2", "I3"}
    assert {r[1] for r in rows if r[0] == "kiln-outlet"} == {"I1", "I2", "I3", "E1", "E2"}
    assert len(rows) == sum(n for _, _, n in ticks)
    for name, count in per_device.items():
        assert len({r[3] for r in rows if r[0] == name}) == count, name
    # The same rows in every sink.
    assert csv_rows(tmp_path / "plant.csv") == rows
    # Every row carries its tick's seq: per (device, seq), the spool's row count.
    with closing(sqlite3.connect(tmp_path / "plant.db")) as db:
        stored = Counter(db.execute("SELECT device, seq FROM samples").fetchall())
    assert dict(stored) == {(d, s): n for d, s, n in ticks}
    # Same-bus requests never interleaved: nothing was lost to the silence rule, every
    # request was answered, and each analyser got exactly its sweeps.
    for key, addresses in (("rtu", (1, 30)), ("ascii", (2, 3, 4))):
        line = lookup_line(lines[key])
        assert line is not None
        for address in addresses:
            outcomes = Counter(r.outcome for r in line.simulator(address).requests)
            assert set(outcomes) <= {RequestOutcome.ANSWERED, RequestOutcome.OTHER_ADDRESS}, (
                key, address, outcomes,
            )  # fmt: skip
            assert outcomes[RequestOutcome.ANSWERED] > 0
    # The state the metrics report agrees with the spool.
    for name, count in per_device.items():
        dev = service.state.devices[name]
        assert dev.ticks == count
        assert dev.up
        assert not dev.tick_errors
    assert all(s.backlog_rows == 0 for s in service.state.sinks.values())


async def test_once_prints_one_line_per_analyser_and_exits_0(tmp_path: Path) -> None:
    config, _ = plant(tmp_path)
    out = io.StringIO()
    assert await quiet_service(config, once=True, out=out).run() == 0
    lines = out.getvalue().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(a.name for a in config.analysers)
    assert all(": ok seq=" in line for line in lines), lines
    assert Counter(d for d, _, _ in spool_ticks(config.spool)) == {
        a.name: 1 for a in config.analysers
    }
    with closing(sqlite3.connect(tmp_path / "plant.db")) as db:
        (devices,) = db.execute("SELECT COUNT(DISTINCT device) FROM samples").fetchone()
    assert devices == len(config.analysers)


async def test_once_exits_1_when_an_analyser_does_not_answer(tmp_path: Path) -> None:
    config, lines = plant(tmp_path)
    line = line_for_url(config.buses[1].port)  # built (and registered) now, to silence it
    assert lookup_line(lines["ascii"]) is line
    line.simulator(3).mute()
    out = io.StringIO()
    assert await quiet_service(config, once=True, out=out).run() == 1
    by_name = {ln.split(":")[0]: ln for ln in out.getvalue().splitlines()}
    assert by_name["dryer-2"].startswith("dryer-2: error ")
    assert "dryer-2" not in [n for n, ln in by_name.items() if ": ok " in ln]
    assert sum(": ok seq=" in ln for ln in by_name.values()) == len(config.analysers) - 1
    # The failure is an error tick in the spool and in the sink: nothing is silently missing.
    with closing(sqlite3.connect(tmp_path / "plant.db")) as db:
        errors = db.execute("SELECT device, error FROM samples WHERE channel IS NULL").fetchall()
    assert [d for d, _ in errors] == ["dryer-2"]
    assert errors[0][1]


async def test_restart_keeps_seq_increasing_and_forgets_removed_sinks(tmp_path: Path) -> None:
    config, _ = plant(tmp_path)
    assert await quiet_service(config, once=True, out=io.StringIO()).run() == 0
    first = {d: s for d, s, _ in spool_ticks(config.spool)}
    import dataclasses

    fewer = dataclasses.replace(config, sinks=config.sinks[:1])
    assert await quiet_service(fewer, once=True, out=io.StringIO()).run() == 0
    second = [(d, s) for d, s, _ in spool_ticks(config.spool)][len(first) :]
    assert dict(second) == {d: s + 1 for d, s in first.items()}
    with closing(sqlite3.connect(config.spool)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sinks")]
    assert names == [config.sinks[0].label]
