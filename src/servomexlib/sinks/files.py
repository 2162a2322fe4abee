"""Append-only line files (CSV, JSONL) with optional rotation.

Theory of operation
-------------------
A batch is formatted in a worker thread into one ``bytes`` object and handed to the operating
system with a single unbuffered ``write`` on a file opened in append mode. Nothing is kept in a
user-space buffer between batches, so "flush after each ``write_many``" holds by construction
and a process killed with SIGKILL leaves every batch whose ``write_many`` returned (and, the
kernel completing a regular-file write it has started, never half a line of a later one —
short of a full disk or a power cut).

Rotation (``rotate_bytes=`` and/or ``rotate_seconds=``) is checked *before* each batch: when the
current file has reached the size or age, it is closed and the batch starts the next file of
the series ``path``, ``stem.0001.ext``, ``stem.0002.ext``, …. A batch is never split, nothing is
renamed, and an existing file is never reused for a new number, so no sample can be lost at a
boundary. On ``open()`` a rotating sink continues the newest file of an existing series.

Durability (``fsync=True``, what the service uses): after each batch the file is
``os.fsync``'d before ``write_many`` returns, and when a file is created its directory is
fsync'd too, so a returned batch survives an operating-system crash or power cut as well, not
only a killed process. Each fsync costs a disk round trip (milliseconds on a disk, far less on
flash); the library default (``False``) keeps the page-cache behaviour above.

Service rows (``seq_column=True``): :meth:`LineFileSink.last_seq_by_device` reads the newest
file of the series that holds rows (a series just rotated may have a header only), the whole
file when it is at most ``tail_bytes`` long, else its last ``tail_bytes``. The service delivers
in spool order and stores a batch with one ``write``, so the only rows a restarted service can
send again are those of the last batch, which are at the end of the newest file: the tail must
hold one whole batch (the 8 MiB default holds a 256-tick batch of 64-channel ticks).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import anyio

from ..devices.models import Sample
from ..errors import ServomexSinkWriteError
from .base import (
    BaseSink,
    Rotation,
    file_context,
    latest_rotation_index,
    logger,
    rotated_paths,
    rotation_path,
)

__all__ = ["DEFAULT_TAIL_BYTES", "LineFileSink"]

#: How much of the newest file ``last_seq_by_device`` reads (module documentation).
DEFAULT_TAIL_BYTES: Final = 8 * 1024 * 1024


class LineFileSink(BaseSink):
    """Common base of :class:`CsvSink` and :class:`JsonlSink`; not used directly."""

    _format = "file"
    #: What ends a stored row: a value may hold a bare line feed inside quotes (CSV), never
    #: this sequence as written by the format's own encoder.
    _record_end = b"\n"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        seq_column: bool = False,
        fsync: bool = False,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        super().__init__(seq_column=seq_column)
        self.fsync = bool(fsync)
        if isinstance(tail_bytes, bool) or not isinstance(tail_bytes, int) or tail_bytes < 1:
            raise ValueError(f"tail_bytes must be an integer >= 1, got {tail_bytes!r}")
        self.tail_bytes = tail_bytes
        self._base_path = Path(path)
        self._rotation = Rotation(rotate_bytes, rotate_seconds, clock)
        self._index = 0
        self._file: BinaryIO | None = None
        self._size = 0

    @property
    def path(self) -> Path:
        """The file being written (the newest of the series when rotating)."""
        return rotation_path(self._base_path, self._index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, open={self.is_open})"

    # -- hooks for the formats ---------------------------------------------------------------

    def _start_series(self) -> None:
        """Called once per ``open()`` before the first file is opened (in the worker thread)."""

    def _prepare(self, path: Path) -> tuple[BinaryIO, bytes]:
        """Open ``path`` for appending; return the file and a prefix to write first."""
        raise NotImplementedError

    def _encode(self, samples: Sequence[Sample], seqs: list[int] | None) -> bytes:
        raise NotImplementedError

    def _row_seq(self, line: bytes) -> tuple[str, int] | None:
        """``(device, seq)`` of one stored line of service rows; None if it is not one."""
        raise NotImplementedError

    # -- life cycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        self._index = latest_rotation_index(self._base_path) if self._rotation.enabled else 0
        self._start_series()
        self._open_file()

    def _open_file(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._write_error(f"could not create the directory of {path}", exc) from exc
        created = not path.exists()
        handle, prefix = self._prepare(path)
        try:
            self._size = os.fstat(handle.fileno()).st_size
            if prefix:
                self._write_all(handle, prefix)
            if self.fsync:
                os.fsync(handle.fileno())
                if created:
                    _fsync_directory(path.parent)
        except OSError as exc:
            handle.close()
            raise self._write_error(f"could not write to {path}", exc) from exc
        self._file = handle
        self._rotation.restart()

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        await anyio.to_thread.run_sync(self._write_sync, samples, seqs)

    def _write_sync(self, samples: Sequence[Sample], seqs: list[int] | None) -> None:
        if self._rotation.enabled and self._rotation.due(self._size):
            self._rotate()
        data = self._encode(samples, seqs)
        handle = self._file
        assert handle is not None
        try:
            self._write_all(handle, data)
            if self.fsync:
                os.fsync(handle.fileno())
        except OSError as exc:
            raise self._write_error(f"could not write to {self.path}", exc) from exc

    async def _last_seqs(self) -> dict[str, int]:
        return await anyio.to_thread.run_sync(self._last_seqs_sync)

    def _last_seqs_sync(self) -> dict[str, int]:
        # Newest file first: one just started by a rotation may hold a header only.
        for path in reversed(rotated_paths(self._base_path)):
            try:
                lines = _tail_lines(path, self.tail_bytes, self._record_end)
            except OSError as exc:
                raise self._write_error(f"could not read {path}", exc) from exc
            last: dict[str, int] = {}
            for line in lines:
                found = self._row_seq(line)
                if found is not None:
                    device, seq = found
                    if seq > last.get(device, -1):
                        last[device] = seq
            if last:
                return last
        return {}

    def _rotate(self) -> None:
        old = self.path
        self._close_sync()
        self._index += 1
        self._open_file()
        logger.info("rotated %s to %s", old, self.path)

    def _write_all(self, handle: BinaryIO, data: bytes) -> None:
        # One write() per batch; the loop only matters for the rare short write.
        view = memoryview(data)
        while view:
            written = handle.write(view)
            if not written:
                raise OSError("short write")
            view = view[written:]
        self._size += len(data)

    async def _close(self) -> None:
        await anyio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:
                raise self._write_error(f"could not close {self.path}", exc) from exc

    def _write_error(self, message: str, exc: BaseException) -> ServomexSinkWriteError:
        return ServomexSinkWriteError(f"{message}: {exc}", context=file_context(self.path))


def open_append(path: Path) -> BinaryIO:
    """Open ``path`` unbuffered for appending (created if missing)."""
    return open(path, "ab", buffering=0)


def ends_with_newline(path: Path) -> bool:
    """True when the file is missing, empty, or its last byte is a line feed."""
    try:
        with open(path, "rb") as reader:
            size = reader.seek(0, os.SEEK_END)
            if size == 0:
                return True
            reader.seek(size - 1)
            return reader.read(1) == b"\n"
    except FileNotFoundError:
        return True


def _fsync_directory(directory: Path) -> None:
    """fsync a directory so a file just created in it survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail_lines(path: Path, tail_bytes: int, end: bytes) -> list[bytes]:
    """The complete records of ``path`` ending in ``end`` (the whole file if at most
    ``tail_bytes``, else the records wholly inside its last ``tail_bytes``), without their
    ends; a record torn by a crash is left out."""
    with open(path, "rb") as reader:
        size = reader.seek(0, os.SEEK_END)
        start = max(0, size - tail_bytes)
        reader.seek(start)
        data = reader.read()
    records = data.split(end)
    records.pop()  # after the last record end: empty, or a record torn by a crash
    if start > 0 and records:
        records.pop(0)  # begins inside a record
    return records
