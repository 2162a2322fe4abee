"""The sink contract and the machinery the concrete sinks share.

Every sink has the same life cycle (docs/recording-and-sinks.md): ``open()`` (idempotent),
``write_many(samples)`` (RuntimeError unless open; an empty sequence is a no-op), ``close()``
(idempotent), and ``async with``. :class:`BaseSink` implements that contract once: concrete
sinks only provide ``_open``/``_write``/``_close``. Calls are serialised by a lock so batches
reach the medium in the order they were handed over, even from several tasks.

Blocking file and database work runs in worker threads (``anyio.to_thread.run_sync``), which
anyio never abandons on cancellation: a batch whose write has started is always finished before
the cancellation is delivered, so a cancelled capture does not leave half a batch behind.

Service rows (docs/service.md §3): a sink built with ``seq_column=True`` stores the 23-column
:data:`~.schema.SERVICE_SCHEMA` and needs ``write_many(samples, seqs=[...])`` — one ``seq`` per
sample — and reports, after ``open()``, the last ``seq`` it holds per device
(``last_seq_by_device()``), which is how the service drops a batch it already stored before a
crash (:class:`SeqSink`). ``write_many`` checks the pairing here, once for every sink.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import anyio

from ..devices.models import Sample
from ..errors import ErrorContext, ServomexValidationError

__all__ = [
    "IDENTIFIER_RE",
    "BaseSink",
    "ReportsOpen",
    "SeqSink",
    "Sink",
    "rotated_paths",
    "validate_identifier",
]

logger = logging.getLogger("servomexlib.sinks")

#: Table and schema names accepted by the SQL sinks (docs/recording-and-sinks.md).
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@runtime_checkable
class Sink(Protocol):
    """Anything :func:`~servomexlib.sinks.pipe` can write to."""

    async def open(self) -> None: ...

    async def write_many(self, samples: Sequence[Sample]) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class ReportsOpen(Protocol):
    """A sink that says whether it is open. Every :class:`BaseSink` does; a sink of the
    caller's own need not (then nothing can be checked before the first write)."""

    @property
    def is_open(self) -> bool: ...


@runtime_checkable
class SeqSink(Protocol):
    """A sink that stores service rows with their ``seq`` (``seq_column=True``)."""

    async def open(self) -> None: ...

    async def write_many(
        self, samples: Sequence[Sample], *, seqs: Sequence[int] | None = None
    ) -> None: ...

    async def last_seq_by_device(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


def validate_identifier(name: str, what: str) -> str:
    """Return ``name`` if it is a safe SQL identifier, else raise ServomexValidationError."""
    if not isinstance(name, str) or not IDENTIFIER_RE.fullmatch(name):
        raise ServomexValidationError(
            f"invalid {what} name {name!r}: must match {IDENTIFIER_RE.pattern}"
        )
    return name


def quote_identifier(name: str) -> str:
    """Double-quote an identifier already checked by :func:`validate_identifier`."""
    return '"' + name.replace('"', '""') + '"'


class BaseSink:
    """Life cycle shared by every sink; subclasses implement ``_open``/``_write``/``_close``."""

    def __init__(self, *, seq_column: bool = False) -> None:
        self._is_open = False
        self._lock = anyio.Lock()
        self.seq_column = bool(seq_column)

    @property
    def is_open(self) -> bool:
        """True between a successful ``open()`` and ``close()``."""
        return self._is_open

    async def open(self) -> None:
        """Open the medium (create/check the file or table). A second call does nothing.

        Raises:
            ServomexSinkError: the medium cannot be opened or does not match the schema.
        """
        async with self._lock:
            if self._is_open:
                return
            await self._open()
            self._is_open = True

    async def write_many(
        self, samples: Sequence[Sample], *, seqs: Sequence[int] | None = None
    ) -> None:
        """Store ``samples`` (one transaction / flush per call); an empty sequence is a no-op.

        ``seqs``: one ``seq`` per sample, required exactly when the sink was built with
        ``seq_column=True`` (service rows).

        Raises:
            RuntimeError: the sink is not open.
            ServomexValidationError: ``seqs`` given to a sink without the seq column, missing
                for one with it, of another length than ``samples`` or not integers.
            ServomexSinkWriteError: the medium failed; see each sink for what was kept.
        """
        if not self._is_open:
            raise RuntimeError(f"{type(self).__name__} is not open: call open() first")
        checked = self._check_seqs(samples, seqs)
        if not samples:
            return
        async with self._lock:
            if not self._is_open:
                raise RuntimeError(f"{type(self).__name__} was closed")
            if checked is None:
                await self._write(samples)
            else:
                await self._write(samples, checked)

    def _check_seqs(
        self, samples: Sequence[Sample], seqs: Sequence[int] | None
    ) -> list[int] | None:
        name = type(self).__name__
        if seqs is None:
            if self.seq_column:
                raise ServomexValidationError(
                    f"{name} stores service rows (seq_column=True): write_many needs seqs="
                )
            return None
        if not self.seq_column:
            raise ServomexValidationError(
                f"{name} has no seq column: build it with seq_column=True to store seqs"
            )
        checked = list(seqs)
        if len(checked) != len(samples):
            raise ServomexValidationError(
                f"{name}.write_many: {len(checked)} seqs for {len(samples)} samples "
                "(one seq per sample)"
            )
        for seq in checked:
            if type(seq) is not int or not (0 <= seq < 2**63):
                raise ServomexValidationError(
                    f"{name}.write_many: seq {seq!r} is not an integer in 0 .. 2**63-1"
                )
        return checked

    async def last_seq_by_device(self) -> dict[str, int]:
        """The highest ``seq`` stored per device (service rows; after ``open()``).

        Raises:
            RuntimeError: the sink is not open, or has no seq column.
        """
        if not self._is_open:
            raise RuntimeError(f"{type(self).__name__} is not open: call open() first")
        if not self.seq_column:
            raise RuntimeError(f"{type(self).__name__} has no seq column (seq_column=False)")
        async with self._lock:
            return await self._last_seqs()

    async def close(self) -> None:
        """Flush and release the medium. A second call does nothing."""
        # Shielded as a whole, lock included: a cancelled owner must still release the file or
        # connection (taking the lock is a checkpoint a pending cancellation would stop at).
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if not self._is_open:
                    return
                self._is_open = False
                await self._close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        raise NotImplementedError

    async def _last_seqs(self) -> dict[str, int]:
        raise NotImplementedError(f"{type(self).__name__} cannot report the seqs it holds")

    async def _close(self) -> None:
        raise NotImplementedError


def file_context(path: Path) -> ErrorContext:
    """The error context of a file sink."""
    return ErrorContext(extra={"path": str(path)})


# --------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------


def _rotation_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.stem) + r"\.(\d{4,})" + re.escape(path.suffix) + "$")


def rotated_paths(path: str | Path) -> list[Path]:
    """The files of a rotated capture in write order: ``path`` first, then ``stem.0001.ext``, ….

    Only files that exist are listed. A capture written without rotation is just ``[path]``.
    """
    path = Path(path)
    pattern = _rotation_pattern(path)
    numbered: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                numbered.append((int(match.group(1)), entry))
    numbered.sort()
    head = [path] if path.exists() else []
    return head + [p for _, p in numbered]


def rotation_path(path: Path, index: int) -> Path:
    """File ``index`` of a rotated capture: 0 → ``path``, n → ``stem.NNNN.ext``."""
    if index == 0:
        return path
    return path.with_name(f"{path.stem}.{index:04d}{path.suffix}")


def latest_rotation_index(path: Path) -> int:
    """The index of the newest existing file of the series (0 when none is numbered)."""
    pattern = _rotation_pattern(path)
    best = 0
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                best = max(best, int(match.group(1)))
    return best


class Rotation:
    """When to start the next file: by size (bytes) and/or by age (seconds on a clock).

    ``clock`` is a parameter (time is a parameter) so tests can drive it.
    """

    def __init__(
        self,
        rotate_bytes: int | None,
        rotate_seconds: float | None,
        clock: Callable[[], float],
    ) -> None:
        if rotate_bytes is not None and (
            isinstance(rotate_bytes, bool) or not isinstance(rotate_bytes, int) or rotate_bytes < 1
        ):
            raise ValueError(f"rotate_bytes must be None or an integer >= 1, got {rotate_bytes!r}")
        if rotate_seconds is not None and not (
            isinstance(rotate_seconds, int | float) and rotate_seconds > 0
        ):
            raise ValueError(f"rotate_seconds must be None or > 0, got {rotate_seconds!r}")
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.clock = clock
        self.started = clock()

    @property
    def enabled(self) -> bool:
        return self.rotate_bytes is not None or self.rotate_seconds is not None

    def restart(self) -> None:
        self.started = self.clock()

    def due(self, size: int) -> bool:
        """True when the current file (``size`` bytes) should be closed after this batch."""
        if self.rotate_bytes is not None and size >= self.rotate_bytes:
            return True
        return (
            self.rotate_seconds is not None and self.clock() - self.started >= self.rotate_seconds
        )
