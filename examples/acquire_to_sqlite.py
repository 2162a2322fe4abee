"""Record an analyser to SQLite at a fixed rate, then read the database back.

Usage: ``python examples/acquire_to_sqlite.py [PORT] [--db PATH] [--duration S] [--rate HZ]``.
PORT defaults to a simulated Modbus RTU analyser with drifting values; give ``/dev/ttyUSB0``,
``COM3`` or ``tcp://host:port`` (and ``--address 30`` for the measured unit) for real hardware.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import tempfile
from pathlib import Path

import anyio

from servomexlib import open_device, record
from servomexlib.sinks import SqliteSink, pipe

DEFAULT_PORT = "sim://?mode=modbus_rtu&scenario=drift&realtime=0"


async def acquire(port: str, db: Path, *, address: int, rate: float, duration: float) -> int:
    async with await open_device(port, address=address) as anz, SqliteSink(db) as sink:
        async with record(anz, rate_hz=rate, duration=duration) as recording:
            summary = await pipe(recording.stream, sink)
        print(f"late ticks: {recording.summary.samples_late}")
    return summary.samples_emitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", default=DEFAULT_PORT)
    parser.add_argument("--address", type=int, default=1)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "samples.db"
    written = anyio.run(
        lambda: acquire(args.port, db, address=args.address, rate=args.rate, duration=args.duration)
    )
    print(f"wrote {written} samples to {db}")
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute(
            "SELECT channel, COUNT(*), AVG(value), unit FROM samples "
            "WHERE error IS NULL GROUP BY channel, unit ORDER BY MIN(rowid)"
        ).fetchall()
    for channel, n, mean, unit in rows:
        print(f"{channel:<3} n={n} mean={mean:.4f} {unit}")


if __name__ == "__main__":
    main()
