"""Exactly once across kills: ``servomex run`` killed with SIGKILL at 10 random moments.

Issue 14's acceptance: "kill -9 of the service at 10 random moments, restarted each time:
across all runs every tick committed to the spool reaches every sink exactly once (no gap, no
duplicate (device, seq, channel))". The service runs as a subprocess (``python -m servomexlib
run``) over in-process sim:// buses, with SQLite and CSV sinks (and PostgreSQL when
SERVOMEXLIB_TEST_POSTGRES_DSN is set). Each run is killed a random time after it reported
READY=1 on a notify socket — a kill, a process exit and a restart are real-time by nature, so
this test sleeps for real, bounded: ten runs of at most ~1.5 s of polling plus start-up, then
one clean run with ``--duration`` that lets every sink drain. The seed is fixed so a failure
can be replayed; the kill moments spread over start-up, polling and delivery.

What is compared: the spool's ``ticks`` table (device, seq, rows per tick) against every
sink's rows: each (device, seq) holds exactly that tick's row count, no (device, seq, channel)
appears twice, and no sink holds a tick the spool does not.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

DSN_ENV = "SERVOMEXLIB_TEST_POSTGRES_DSN"
KILLS = 10
SEED = 14_2026


def write_config(tmp_path: Path, pg_table: str | None) -> Path:
    tag = uuid.uuid4().hex[:8]
    pg = ""
    if pg_table is not None:
        pg = f"""
[[sink]]
type = "postgres"
dsn = "${{{DSN_ENV}}}"
table = "{pg_table}"
"""
    text = f"""
[service]
name = "crash"
spool = "{tmp_path / "spool.db"}"
log_level = "info"

[[bus]]
port = "sim://crash{tag}?mode=modbus_rtu&address=1,30"
protocol = "modbus_rtu"
timeout = 0.3

[[bus.analyser]]
name = "a30"
address = 30
rate_hz = 1.5
channels = ["I1", "I2"]

[[bus.analyser]]
name = "a1"
address = 1
rate_hz = 1.5
channels = ["I1", "I2", "I3"]

[[bus]]
port = "sim://stack{tag}?mode=continuous&period=0.25"
protocol = "continuous"

[[bus.analyser]]
name = "stack"

[[sink]]
type = "sqlite"
path = "{tmp_path / "out.db"}"

[[sink]]
type = "csv"
path = "{tmp_path / "out.csv"}"
{pg}"""
    path = tmp_path / "plant.toml"
    path.write_text(text, encoding="utf-8")
    return path


def start(
    config: Path, tmp_path: Path, run: int, *extra: str
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock_path = tmp_path / f"n{run}.sock"
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
    log = open(tmp_path / f"run{run}.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "servomexlib", "run", str(config), "--quiet", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()  # the child holds its own descriptor
    return proc, sock


def wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> None:
    sock.settimeout(0.2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(encoding="utf-8", errors="replace")
        try:
            if sock.recv(64) == b"READY=1":
                return
        except TimeoutError:
            continue
    raise AssertionError("no READY=1 within 30 s")


def wait_for_growth(path: Path, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    """Return as soon as ``path`` grows (busy-polled: the kill must follow the write within a
    fraction of a millisecond to land before the acknowledgement)."""
    size = path.stat().st_size if path.exists() else 0
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if path.stat().st_size > size:
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, "the service stopped while the test waited for a batch"
    raise AssertionError(f"{path} did not grow within {deadline_s} s")


def spool_ticks(path: Path) -> dict[tuple[str, int], int]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT device, seq, nrows FROM ticks ORDER BY id").fetchall()
    ticks = {(d, s): n for d, s, n in rows}
    assert len(ticks) == len(rows), "the spool itself holds a (device, seq) twice"
    return ticks


def check_exactly_once(
    where: str, rows: list[tuple[str, int, str | None]], ticks: dict[tuple[str, int], int]
) -> None:
    repeated = [k for k, n in Counter(rows).items() if n > 1]
    assert not repeated, f"{where}: duplicate (device, seq, channel): {repeated[:5]}"
    per_tick = Counter((d, s) for d, s, _ in rows)
    missing = sorted(k for k in ticks if k not in per_tick)
    extra = sorted(k for k in per_tick if k not in ticks)
    assert not missing, f"{where}: {len(missing)} spooled ticks missing, e.g. {missing[:5]}"
    assert not extra, f"{where}: ticks the spool does not hold: {extra[:5]}"
    short = {k: (per_tick[k], n) for k, n in ticks.items() if per_tick[k] != n}
    assert not short, f"{where}: ticks with other row counts (stored, spooled): {short}"


def pg_query(dsn: str, sql: str) -> list[Any]:
    """Run one statement with a plain asyncpg connection on a private loop in a thread."""
    import asyncpg

    result: list[Any] = []

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            result.extend(await conn.fetch(sql))
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    thread.join(30)
    return result


@pytest.mark.timeout(120)
def test_kill_9_at_random_moments_every_tick_reaches_every_sink_once(tmp_path: Path) -> None:
    dsn = os.environ.get(DSN_ENV)
    pg_table = f"crash_{uuid.uuid4().hex[:12]}" if dsn else None
    config = write_config(tmp_path, pg_table)
    rng = random.Random(SEED)
    try:
        for run in range(KILLS):
            proc, sock = start(config, tmp_path, run)
            try:
                with sock:
                    if run % 3 == 0:
                        # At a random moment, start-up included (real time: the moment of the
                        # kill is what is being varied).
                        time.sleep(rng.uniform(0.05, 1.5))
                    else:
                        wait_ready(sock, proc, tmp_path / f"run{run}.log")
                        if run % 3 == 1:
                            time.sleep(rng.uniform(0.0, 1.0))  # real time, as above
                        else:
                            # Right after a batch reached the CSV file: most likely before
                            # the spool recorded its acknowledgement — the window in which a
                            # restart delivers a batch the sink already holds.
                            wait_for_growth(tmp_path / "out.csv", proc, deadline_s=10)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == -signal.SIGKILL, (
                run,
                proc.returncode,
                (tmp_path / f"run{run}.log").read_text(encoding="utf-8", errors="replace"),
            )
        # One clean run that drains every sink (--duration: a clean stop flushes them).
        proc, sock = start(config, tmp_path, KILLS, "--duration", "2")
        with sock:
            rc = proc.wait(timeout=60)
        log = (tmp_path / f"run{KILLS}.log").read_text(encoding="utf-8", errors="replace")
        assert rc == 0, log

        ticks = spool_ticks(tmp_path / "spool.db")
        devices = Counter(d for d, _ in ticks)
        assert set(devices) == {"a30", "a1", "stack"}, devices
        assert len(ticks) >= 40, len(ticks)  # the runs did poll
        with closing(sqlite3.connect(tmp_path / "spool.db")) as db:
            acked = dict(db.execute("SELECT name, acked FROM sinks").fetchall())
            (head,) = db.execute("SELECT MAX(id) FROM ticks").fetchone()
        assert all(a == head for a in acked.values()), (acked, head)

        with closing(sqlite3.connect(tmp_path / "out.db")) as db:
            stored = db.execute("SELECT device, seq, channel FROM samples").fetchall()
        check_exactly_once("sqlite", stored, ticks)
        with open(tmp_path / "out.csv", encoding="utf-8", newline="") as handle:
            records = list(csv.DictReader(handle))
        check_exactly_once(
            "csv", [(r["device"], int(r["seq"]), r["channel"] or None) for r in records], ticks
        )
        if dsn is not None:
            pg = pg_query(dsn, f'SELECT device, seq, channel FROM "{pg_table}"')
            check_exactly_once("postgres", [tuple(r) for r in pg], ticks)
    finally:
        if dsn is not None:
            pg_query(dsn, f'DROP TABLE IF EXISTS "{pg_table}"')
