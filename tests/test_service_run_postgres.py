"""``servomex run`` with a PostgreSQL sink next to SQLite and CSV: identical rows, ``seq`` equal.

The acceptance plant of tests/test_service_run.py plus a PostgreSQL sink (when
SERVOMEXLIB_TEST_POSTGRES_DSN is set). It runs on REAL time, unlike the virtual-time duration
test there: the PostgreSQL sink talks to a real server over TCP — on asyncio from the service's
loop, on trio from a private asyncio loop in a thread — and virtual time would jump past every
wait for the server (a delivery would hit its deadline at once and be retried for ever). The
run is short and bounded: 4 s of polling plus the final flush, per backend.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from servomexlib.service.config_model import SinkConfig, SinkType
from servomexlib.service.runner import Service
from test_service_crash import pg_query
from test_service_run import plant

pytestmark = pytest.mark.anyio

DSN_ENV = "SERVOMEXLIB_TEST_POSTGRES_DSN"


@pytest.fixture
def dsn() -> str:
    value = os.environ.get(DSN_ENV)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{DSN_ENV} is not set under CI: PostgreSQL tests must run there")
        pytest.skip(f"{DSN_ENV} not set (run .ci/postgres.sh to start a local server)")
    return value


@pytest.fixture
def pg_table(dsn: str) -> Iterator[str]:
    name = f"run_{uuid.uuid4().hex[:12]}"
    yield name
    pg_query(dsn, f'DROP TABLE IF EXISTS "{name}"')


Row = tuple[str, int, str | None, float | None, str]


def csv_rows(path: Path) -> list[Row]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [
            (r["device"], int(r["seq"]), r["channel"] or None,
             float(r["value"]) if r["value"] else None, r["received_at"])
            for r in csv.DictReader(handle)
        ]  # fmt: skip


def sorted_rows(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r[0], r[1], r[2] or ""))


@pytest.mark.timeout(60)
async def test_duration_run_identical_rows_in_sqlite_csv_and_postgres(
    tmp_path: Path, dsn: str, pg_table: str
) -> None:
    config, _ = plant(tmp_path)
    pg_sink = SinkConfig(type=SinkType.POSTGRES, dsn=dsn, table=pg_table, table_path="sink[2]")
    config = dataclasses.replace(config, sinks=(*config.sinks, pg_sink))
    service = Service(config, duration=4.0, handle_signals=False, configure_logs=False, environ={})
    assert await service.run() == 0
    assert service.flushed is True

    with closing(sqlite3.connect(config.spool)) as db:
        ticks = {(d, s): n for d, s, n in db.execute("SELECT device, seq, nrows FROM ticks")}
    assert {d for d, _ in ticks} == {a.name for a in config.analysers}

    with closing(sqlite3.connect(tmp_path / "plant.db")) as db:
        lite: list[Row] = db.execute(
            "SELECT device, seq, channel, value, received_at FROM samples"
        ).fetchall()
    text = csv_rows(tmp_path / "plant.csv")
    pg: list[Row] = [
        tuple(r)
        for r in pg_query(dsn, f'SELECT device, seq, channel, value, received_at FROM "{pg_table}"')
    ]
    assert sorted_rows(lite) == sorted_rows(text) == sorted_rows(pg)
    # seq equal to the spool's: every spooled tick, with its row count, and nothing else.
    per_tick = Counter((d, s) for d, s, *_ in lite)
    assert dict(per_tick) == ticks
    assert max(Counter((d, s, c) for d, s, c, *_ in pg).values()) == 1
