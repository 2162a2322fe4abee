"""The service's durable spool: every tick is committed here before any sink sees it
(docs/service.md §3).

Theory of operation
-------------------
The spool is one SQLite database in WAL mode, written by one process (an exclusive ``flock`` on
``<spool>.lock`` refuses a second service on the same file). Four tables:

* ``devices(device, last_seq)`` — the last ``seq`` given to each analyser. A tick's ``seq`` is
  allocated in the transaction that stores the tick, so it is strictly increasing per device for
  the life of the spool, across restarts and crashes, with no gap and no reuse. A device's first
  ``seq`` is the wall clock in microseconds since the epoch (then +1 per tick): should the spool
  file ever be lost and recreated, the new ticks still have higher ``seq`` than those the
  sinks already hold, so the sinks' duplicate filter on ``(device, seq)`` cannot mistake them
  for rows they have (it stays below 2^53, exact in JSON consumers).
* ``ticks(id, device, seq, committed_at, nrows, end_row, analyser flags)`` — one row per tick;
  ``id`` is the *spool position*, global over devices, in commit order, never reused (taken
  from the counters in ``spool_state``); ``end_row`` is the running total of rows, so a backlog
  in rows is one subtraction.
* ``rows(tick, idx, <the 22 columns of servomexlib.sinks.schema.SCHEMA>)`` — the tick's
  samples as exactly the rows every sink stores (:func:`~servomexlib.sinks.schema.flatten`),
  clustered by tick (``WITHOUT ROWID``). They read back as equal :class:`Sample` objects except
  for what no sink stores either: ``Reading.raw`` and ``Sample.metadata`` come back empty, the
  error of an error sample comes back as a :class:`ServomexError` holding ``str(error)``, a
  time zone comes back as its UTC offset, and a non-finite ``latency_s`` as None (SQLite has no
  NaN).
* ``sinks(name, acked, acked_rows, dropped_rows, dropped_ticks)`` — one cursor per sink: the
  position of the last tick the sink acknowledged. :meth:`Spool.pending` gives the ticks after
  it in spool order; :meth:`Spool.ack` moves it forward (never back).

Durability. ``synchronous=FULL`` by default: each commit fsyncs the WAL, so a tick reported as
committed survives a power cut as well as ``kill -9``. ``NORMAL`` survives a process crash but a
power cut may roll back the last commits, *including seq allocations*: if a sink had already
stored (and fsync'd) such a tick, the next ticks would get the same ``seq`` again and that sink
would drop them as duplicates. The fsync costs ~1 ms of a worker thread per tick, not CPU;
``append_many`` commits several ticks with one fsync when that matters.

A sink registered after ticks exist starts *from now* (after the newest tick): the spool is a
delivery buffer, not an archive, and a new sink must not start with a backlog (or, on a full
spool, with drops). ``register_sink(name, backfill=True)`` starts it at the oldest tick still
held instead. A sink no longer configured should be forgotten (:meth:`Spool.forget_sink`): its
cursor would keep every tick undelivered.

Pruning. The size is ``(page_count − freelist_count) × page_size`` (freed pages are reused, the
file is never vacuumed). At ``max_bytes``, delivered ticks (acknowledged by every registered
sink) are deleted oldest first down to 90 %; if undelivered ticks alone still fill the spool,
the oldest of them — those of the most-behind sink — are dropped down to 98 %: every sink whose
cursor they were ahead of counts them in :meth:`Spool.dropped` and one error is logged naming
the sinks and the seq range per device. That is the only way the service loses data. (A batch
already in flight to a sink when it is dropped may still be delivered; it is counted anyway.)

Threads. :class:`Spool` is blocking and thread-safe (one connection, one lock);
:class:`~servomexlib.service.spool_async.AsyncSpool` runs it on worker threads for the event
loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from ..devices.models import AnalyserStatus, ProtocolKind, Sample
from ..errors import ErrorContext, ServomexError, ServomexValidationError
from ..sinks.schema import COLUMNS, SCHEMA
from .spool_rows import (
    Backlog,
    NewTick,
    ServomexSpoolError,
    SpooledTick,
    assemble,
    check_name,
    prepare,
)

if sys.platform != "win32":
    import fcntl

__all__ = [
    "SCHEMA_VERSION",
    "Backlog",
    "NewTick",
    "ServomexSpoolError",
    "Spool",
    "SpooledTick",
]

_log = logging.getLogger("servomexlib.service.spool")

#: ``PRAGMA user_version`` of the layout this module writes.
SCHEMA_VERSION: Final = 1
_PRUNE_TO: Final = 0.90  # delivered ticks are pruned down to this fraction of the limit
_DROP_TO: Final = 0.98  # undelivered ticks are dropped down to this fraction
_SYNCHRONOUS: Final = ("FULL", "NORMAL")
_ROW_COLUMNS: Final = ", ".join(f'"{c.name}" {c.type.sqlite}' for c in SCHEMA)
_INSERT_ROW: Final = f"INSERT INTO rows VALUES ({', '.join('?' * (len(COLUMNS) + 2))})"
_WIDTH: Final = len(COLUMNS)

_DDL: Final = f"""
BEGIN IMMEDIATE;
CREATE TABLE spool_state (id INTEGER PRIMARY KEY CHECK (id = 1),
    ticks INTEGER NOT NULL, rows INTEGER NOT NULL);
INSERT INTO spool_state VALUES (1, 0, 0);
CREATE TABLE devices (device TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE ticks (id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL,
    committed_at REAL NOT NULL, nrows INTEGER NOT NULL, end_row INTEGER NOT NULL,
    analyser_fault INTEGER, analyser_maintenance INTEGER);
CREATE TABLE rows (tick INTEGER NOT NULL, idx INTEGER NOT NULL, {_ROW_COLUMNS},
    PRIMARY KEY (tick, idx)) WITHOUT ROWID;
CREATE TABLE sinks (name TEXT PRIMARY KEY, acked INTEGER NOT NULL, acked_rows INTEGER NOT NULL,
    dropped_rows INTEGER NOT NULL DEFAULT 0, dropped_ticks INTEGER NOT NULL DEFAULT 0,
    registered_at REAL NOT NULL) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""


class Spool:
    """The durable spool (module docstring). Blocking and thread-safe; use as a context
    manager or call :meth:`close`.

    Args:
        path: the database file (created with its parent directories if missing).
        max_bytes: the size at which pruning starts (``spool_max_mb × 2**20``); None: no limit.
        synchronous: ``"FULL"`` (default: power-cut safe) or ``"NORMAL"`` (crash safe only).
        clock: wall clock in seconds (``committed_at``, backlog ages, the first ``seq``).

    Raises:
        ServomexSpoolError: not a spool or a newer layout, another process holds it, or SQLite
            failed; ServomexValidationError: bad arguments.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ServomexValidationError(
                f"spool synchronous must be FULL or NORMAL, got {synchronous!r}"
            )
        if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes < 1):
            raise ServomexValidationError(
                f"spool max_bytes must be None or >= 1, got {max_bytes!r}"
            )
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._lock_file: Any = None
        self._db: sqlite3.Connection | None = None
        self._head_id = 0
        self._head_rows = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_file_lock()
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=64
            )
            self._setup(sync)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise self._error("cannot open the spool", exc) from exc
        except BaseException:
            self.close()
            raise

    # -- life cycle -----------------------------------------------------------------------

    def _take_file_lock(self) -> None:
        if sys.platform == "win32":  # pragma: no cover - no advisory lock there
            return
        handle = open(self.path.with_name(self.path.name + ".lock"), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ServomexSpoolError(
                f"spool {self.path} is in use by another process", context=self._context()
            ) from None
        self._lock_file = handle

    def _setup(self, synchronous: str) -> None:
        db = self._conn()
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ServomexSpoolError(
                f"spool {self.path}: WAL journal not available (got {mode!r})",
                context=self._context(),
            )
        db.execute(f"PRAGMA synchronous={synchronous}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
                raise ServomexSpoolError(
                    f"{self.path} is an SQLite database but not a spool", context=self._context()
                )
            db.executescript(_DDL)  # one transaction: BEGIN … COMMIT in the script
        elif version != SCHEMA_VERSION:
            raise ServomexSpoolError(
                f"spool {self.path} has layout version {version}; this servomexlib reads "
                f"version {SCHEMA_VERSION}",
                context=self._context(),
            )
        self._head_id, self._head_rows = db.execute(
            "SELECT ticks, rows FROM spool_state WHERE id = 1"
        ).fetchone()

    def close(self) -> None:
        """Close the database and release the lock file. A second call does nothing."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()
            handle, self._lock_file = self._lock_file, None
            if handle is not None:
                handle.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ServomexSpoolError(f"spool {self.path} is closed", context=self._context())
        return self._db

    def _context(self) -> ErrorContext:
        return ErrorContext(extra={"spool": str(self.path)})

    def _error(self, what: str, exc: BaseException) -> ServomexSpoolError:
        if isinstance(exc, ServomexSpoolError):
            return exc
        return ServomexSpoolError(f"{what} {self.path}: {exc}", context=self._context())

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Any:
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise self._error(f"cannot {what} in", exc) from exc

    # -- appending --------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The position of the newest committed tick (0 when none ever was)."""
        return self._head_id

    def append(
        self,
        device: str,
        samples: Sequence[Sample] | ServomexError | str,
        *,
        analyser: AnalyserStatus | None = None,
        protocol: ProtocolKind | None = None,
        received_at: datetime | None = None,
        monotonic_ns: int | None = None,
        requested_at: datetime | None = None,
        latency_s: float | None = None,
    ) -> int:
        """Commit one tick of ``device`` and return its ``seq``.

        ``samples`` are the tick's samples (all of ``device``), or for a failed tick the error
        (a ServomexError or its message): then ``protocol``, ``received_at`` and
        ``monotonic_ns`` are required and one error row is stored.

        Raises:
            ServomexValidationError: an empty tick, a sample of another device, missing fields.
            ServomexSpoolError: SQLite failed (nothing was stored).
        """
        if isinstance(samples, ServomexError | str):
            if protocol is None or received_at is None or monotonic_ns is None:
                raise ServomexValidationError(
                    f"spool: the failed tick of {device!r} needs protocol, received_at and "
                    "monotonic_ns"
                )
            error = samples if isinstance(samples, ServomexError) else ServomexError(samples)
            sample = Sample(
                device, None, None, protocol, monotonic_ns, received_at, requested_at,
                latency_s, error=error,
            )  # fmt: skip
            samples = (sample,)
        return self.append_many((NewTick(device, samples, analyser),))[0]

    def append_many(self, ticks: Iterable[NewTick]) -> list[int]:
        """Commit several ticks in one transaction (one fsync) and return their ``seq``."""
        prepared = [prepare(tick) for tick in ticks]
        if not prepared:
            return []
        seqs: list[int] = []
        now = self._clock()
        origin = max(1, int(now * 1_000_000))
        with self._transaction("append to") as db:
            head_id, head_rows = self._head_id, self._head_rows
            for tick, flat, n in prepared:
                head_id += 1
                head_rows += n
                (seq,) = db.execute(
                    "INSERT INTO devices VALUES (?, ?) ON CONFLICT(device) "
                    "DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
                    (tick.device, origin),
                ).fetchone()
                status = tick.analyser
                db.execute(
                    "INSERT INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        head_id, tick.device, seq, now, n, head_rows,
                        None if status is None else status.fault,
                        None if status is None else status.maintenance,
                    ),
                )  # fmt: skip
                db.executemany(
                    _INSERT_ROW,
                    [(head_id, i, *flat[i * _WIDTH : (i + 1) * _WIDTH]) for i in range(n)],
                )
                seqs.append(seq)
            db.execute(
                "UPDATE spool_state SET ticks = ?, rows = ? WHERE id = 1", (head_id, head_rows)
            )
        self._head_id, self._head_rows = head_id, head_rows
        if self.max_bytes is not None:
            try:  # the ticks are committed: a failing prune must not report them as lost
                if self.used_bytes() >= self.max_bytes:
                    self.prune()
            except ServomexSpoolError as exc:
                _log.error("event=spool_prune_failed spool=%s error=%r", self.path, str(exc))
        return seqs

    def last_seq(self, device: str) -> int | None:
        """The last ``seq`` given to ``device`` (None if it never ticked)."""
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT last_seq FROM devices WHERE device = ?", (device,))
                .fetchone()
            )
        return None if row is None else int(row[0])

    # -- sinks and cursors ------------------------------------------------------------------

    def register_sink(self, name: str, *, backfill: bool = False) -> None:
        """Give sink ``name`` a cursor if it has none: after the newest tick, or with
        ``backfill`` before the oldest tick held. A known sink keeps its cursor."""
        check_name(name)
        with self._transaction("register a sink in") as db:
            if db.execute("SELECT 1 FROM sinks WHERE name = ?", (name,)).fetchone():
                return
            acked, acked_rows = self._head_id, self._head_rows
            if backfill:
                first = db.execute("SELECT id, end_row - nrows FROM ticks ORDER BY id LIMIT 1")
                row = first.fetchone()
                if row is not None:
                    acked, acked_rows = row[0] - 1, row[1]
            db.execute(
                "INSERT INTO sinks VALUES (?, ?, ?, 0, 0, ?)",
                (name, acked, acked_rows, self._clock()),
            )

    def forget_sink(self, name: str) -> None:
        """Remove sink ``name``'s cursor (its undelivered ticks no longer hold the spool)."""
        with self._transaction("forget a sink in") as db:
            db.execute("DELETE FROM sinks WHERE name = ?", (name,))

    def sinks(self) -> list[str]:
        """The registered sinks, by name."""
        with self._lock:
            return [r[0] for r in self._conn().execute("SELECT name FROM sinks ORDER BY name")]

    def cursor(self, name: str) -> int:
        """The position of the last tick sink ``name`` acknowledged."""
        with self._lock:
            return self._sink_row(self._conn(), name)[0]

    def _sink_row(self, db: sqlite3.Connection, name: str) -> tuple[int, int, int, int]:
        row = db.execute(
            "SELECT acked, acked_rows, dropped_rows, dropped_ticks FROM sinks WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise ServomexValidationError(
                f"spool {self.path}: no sink named {name!r} is registered",
                context=self._context(),
            )
        return row  # type: ignore[no-any-return]

    def pending(self, name: str, limit: int = 256) -> list[SpooledTick]:
        """Up to ``limit`` ticks after sink ``name``'s cursor, in spool order."""
        if limit < 1:
            raise ServomexValidationError(f"spool pending: limit must be >= 1, got {limit!r}")
        with self._lock:
            db = self._conn()
            try:
                acked = self._sink_row(db, name)[0]
                ticks = db.execute(
                    "SELECT id, device, seq, committed_at, analyser_fault, analyser_maintenance "
                    "FROM ticks WHERE id > ? ORDER BY id LIMIT ?",
                    (acked, limit),
                ).fetchall()
                if not ticks:
                    return []
                rows = db.execute(
                    "SELECT * FROM rows WHERE tick >= ? AND tick <= ? ORDER BY tick, idx",
                    (ticks[0][0], ticks[-1][0]),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._error("cannot read", exc) from exc
        return assemble(ticks, rows)

    def ack(self, name: str, upto: int) -> None:
        """Sink ``name`` holds every tick up to position ``upto``; an older position does
        nothing (the cursor never moves back)."""
        if upto > self._head_id:
            raise ServomexValidationError(
                f"spool {self.path}: sink {name!r} acknowledged position {upto}, beyond the "
                f"newest tick {self._head_id}",
                context=self._context(),
            )
        with self._transaction("acknowledge in") as db:
            if upto <= self._sink_row(db, name)[0]:
                return
            (end_row,) = db.execute("SELECT end_row FROM ticks WHERE id = ?", (upto,)).fetchone()
            db.execute(
                "UPDATE sinks SET acked = ?, acked_rows = ? WHERE name = ?", (upto, end_row, name)
            )

    def backlog(self, name: str) -> Backlog:
        """What sink ``name`` has not acknowledged yet."""
        with self._lock:
            db = self._conn()
            acked, acked_rows, _, _ = self._sink_row(db, name)
            row = db.execute("SELECT committed_at FROM ticks WHERE id = ?", (acked + 1,))
            oldest = row.fetchone()
        return Backlog(
            ticks=self._head_id - acked,
            rows=self._head_rows - acked_rows,
            oldest_committed_at=None if oldest is None else float(oldest[0]),
        )

    def dropped(self, name: str) -> int:
        """Rows of sink ``name`` dropped undelivered because the spool was full (ever)."""
        with self._lock:
            return self._sink_row(self._conn(), name)[2]

    # -- pruning ------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """The bytes of the database's pages in use (``(page_count − freelist) × page_size``)."""
        with self._lock:
            try:
                return _used_bytes(self._conn())
            except sqlite3.Error as exc:
                raise self._error("cannot measure", exc) from exc

    def prune(self) -> None:
        """Apply the size limit now (module docstring); :meth:`append` calls it when due."""
        limit = self.max_bytes
        if limit is None:
            return
        with self._transaction("prune") as db:
            if _used_bytes(db) < limit:
                return
            sinks = db.execute("SELECT min(acked) FROM sinks").fetchone()[0]
            floor = self._head_id if sinks is None else int(sinks)
            self._delete_down_to(db, floor, limit * _PRUNE_TO)
            if _used_bytes(db) < limit:
                return
            last = self._delete_down_to(db, self._head_id, limit * _DROP_TO, dropping=True)
            _log.debug("spool pruned: dropped through position %s", last)

    def _delete_down_to(
        self, db: sqlite3.Connection, ceiling: int, target: float, *, dropping: bool = False
    ) -> int:
        """Delete the oldest ticks (at most through ``ceiling``) until the used size is below
        ``target``; return the last position deleted (0 when none)."""
        last = 0
        while True:
            used = _used_bytes(db)
            first = db.execute("SELECT min(id), count(*) FROM ticks").fetchone()
            oldest, held = first
            if used <= target or oldest is None or oldest > ceiling:
                return last
            # The share of the ticks to delete, estimated from their share of the size.
            count = max(1, math.ceil(held * (used - target) / used))
            upto = min(ceiling, oldest + count - 1)
            if dropping:
                self._record_drop(db, upto)
            db.execute("DELETE FROM rows WHERE tick <= ?", (upto,))
            db.execute("DELETE FROM ticks WHERE id <= ?", (upto,))
            last = upto

    def _record_drop(self, db: sqlite3.Connection, upto: int) -> None:
        (end_row,) = db.execute("SELECT end_row FROM ticks WHERE id = ?", (upto,)).fetchone()
        lost = db.execute(
            "SELECT name, acked, acked_rows FROM sinks WHERE acked < ?", (upto,)
        ).fetchall()
        low = min(a for _, a, _ in lost) if lost else upto
        ranges = db.execute(
            "SELECT device, min(seq), max(seq) FROM ticks WHERE id > ? AND id <= ? "
            "GROUP BY device ORDER BY device",
            (low, upto),
        ).fetchall()
        for name, acked, acked_rows in lost:
            db.execute(
                "UPDATE sinks SET acked = ?, acked_rows = ?, dropped_rows = dropped_rows + ?, "
                "dropped_ticks = dropped_ticks + ? WHERE name = ?",
                (upto, end_row, end_row - acked_rows, upto - acked, name),
            )
            _log.error(
                "event=spool_full_dropped spool=%s sink=%s rows=%d ticks=%d seq=%s",
                self.path, name, end_row - acked_rows, upto - acked,
                ",".join(f"{d}:{lo}-{hi}" for d, lo, hi in ranges),
            )  # fmt: skip


def _used_bytes(db: sqlite3.Connection) -> int:
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)
