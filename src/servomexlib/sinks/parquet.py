"""Parquet sink (pyarrow, extra ``parquet``): one row group per batch, declared column types.

Theory of operation — and what survives a crash
-----------------------------------------------
A Parquet file keeps its index (the footer with the schema and the row-group offsets) at the
**end**, written only when the file is closed. Row groups are handed to the operating system as
each ``write_many`` completes, but a process killed before ``close()`` (SIGKILL, power cut)
leaves a file without footer, which no Parquet reader opens: in the default single-file mode
everything since ``open()`` is then unreadable without special recovery tools.

For long captures that must survive a kill, pass ``part_batches=N``: ``path`` is then a
**directory** (a Parquet dataset) and the sink writes ``part-00000.parquet``,
``part-00001.parquet``, … closing each part (footer included) after ``N`` batches. The part being
written is named ``_part-NNNNN.parquet.partial`` — readers skip names starting with ``_`` — and
is renamed when complete, so ``pyarrow.parquet.read_table(path)`` always sees only complete
files. A kill then loses at most the ``N`` batches of the open part (``part_batches=1`` loses
none that were flushed, at the cost of one small file per batch).

``journal=True`` gives both: batches go to complete part files in ``<path>.parts/`` while the
capture runs (a kill leaves that directory, readable with ``pyarrow.parquet.read_table``, holding
every batch that was flushed), and ``close()`` consolidates them into the single file ``path``
(one row group per batch, as in the default mode) and removes the directory. ``servomex capture``
uses this mode for ``.parquet`` outputs.

pyarrow is imported at ``open()``, never at import time; when it is missing the sink raises
:class:`ServomexSinkDependencyError` naming ``pip install 'servomexlib[parquet]'``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio

from ..devices.models import Sample
from ..errors import (
    ErrorContext,
    ServomexSinkDependencyError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from .base import BaseSink, logger
from .schema import SCHEMA, SERVICE_SCHEMA, ColumnType, batch_columns, repeated, with_seqs

__all__ = ["ParquetSink"]

_INSTALL_HINT: Final = "pip install 'servomexlib[parquet]'"
_PART_RE: Final = re.compile(r"_?part-\d{5,}\.parquet(\.partial)?")
_COMPRESSIONS: Final = frozenset({"none", "snappy", "gzip", "brotli", "lz4", "zstd"})


def import_pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or ServomexSinkDependencyError naming the extra."""
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ServomexSinkDependencyError(
            f"ParquetSink needs pyarrow >= 16: {_INSTALL_HINT}"
        ) from exc
    return pa, pq


def _column_array(pa: Any, values: list[Any], kind: Any) -> Any:
    """The Arrow array of one column of a batch (values of Arrow type ``kind``).

    A column holding one value in every row (:func:`~.schema.repeated`) — the device, the
    protocol, flags that did not change, None in ``requested_at``/``latency_s``/``error`` — is
    built by Arrow itself (``nulls``/``repeat``) instead of converting every Python object;
    the values are the same.
    """
    if repeated(values):
        first = values[0]
        if first is None:
            return pa.nulls(len(values), kind)
        return pa.repeat(pa.scalar(first, type=kind), len(values))
    return pa.array(values, type=kind)


class ParquetSink(BaseSink):
    """Write samples to a Parquet file (docs/recording-and-sinks.md).

    Column types come from the declared schema (string, float64, bool, int64), all nullable.
    Each ``write_many`` becomes one row group (split further only when ``row_group_size`` is
    smaller than the batch), so feed it large batches (``pipe(..., batch_size=10_000)``):
    tiny row groups make big, slow files.

    Crash behaviour: a single Parquet file is readable only after ``close()`` wrote its footer;
    a process killed before that leaves an unreadable file. ``part_batches=N`` writes a
    directory of complete part files instead, so a kill loses at most the open part's ``N``
    batches (see the module documentation).

    Args:
        path: the ``.parquet`` file (or, with ``part_batches``, the dataset directory).
        compression: ``zstd`` (default), ``snappy``, ``gzip``, ``brotli``, ``lz4`` or ``none``.
        use_dictionary: dictionary-encode columns (small files for repetitive text).
        row_group_size: maximum rows per row group; None = the whole batch.
        overwrite: replace an existing file (or the part files of an existing directory);
            without it an existing ``path`` is refused with ServomexSinkWriteError.
        part_batches: crash-safe mode, see the module documentation: close a complete part
            file every ``part_batches`` batches.
        journal: crash-safe single file: parts in ``<path>.parts/`` while open, consolidated
            into ``path`` by ``close()`` (see the module documentation).
        seq_column: service rows: a 23rd column ``seq`` (int64), ``write_many(..., seqs=)``.
            (``last_seq_by_device`` is not available for Parquet yet.)

    Raises:
        ServomexValidationError: unknown compression.
        ValueError: bad ``row_group_size`` or ``part_batches``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compression: str = "zstd",
        use_dictionary: bool = True,
        row_group_size: int | None = None,
        overwrite: bool = False,
        part_batches: int | None = None,
        journal: bool = False,
        seq_column: bool = False,
    ) -> None:
        super().__init__(seq_column=seq_column)
        self.path = Path(path)
        if journal and part_batches is not None:
            raise ValueError("journal=True writes one part per batch; do not pass part_batches")
        self.journal = bool(journal)
        self.journal_dir = self.path.with_name(self.path.name + ".parts")
        if str(compression).lower() not in _COMPRESSIONS:
            raise ServomexValidationError(
                f"invalid Parquet compression {compression!r}; expected one of "
                f"{', '.join(sorted(_COMPRESSIONS))}"
            )
        self.compression = str(compression).lower()
        self.use_dictionary = bool(use_dictionary)
        for name, value in (("row_group_size", row_group_size), ("part_batches", part_batches)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        self.row_group_size = row_group_size
        self.overwrite = bool(overwrite)
        self.part_batches = part_batches
        self._pa: Any = None
        self._pq: Any = None
        self._schema: Any = None
        self._types: list[Any] = []
        self._writer: Any = None
        self._part = 0
        self._part_fill = 0

    def __repr__(self) -> str:
        return f"ParquetSink(path={str(self.path)!r}, open={self.is_open})"

    def _context(self) -> ErrorContext:
        return ErrorContext(extra={"path": str(self.path)})

    def _error(self, message: str, exc: BaseException) -> ServomexSinkWriteError:
        return ServomexSinkWriteError(f"{message}: {exc}", context=self._context())

    async def _open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        await anyio.to_thread.run_sync(self._write_sync, samples, seqs)

    async def _close(self) -> None:
        await anyio.to_thread.run_sync(self._close_sync)

    def _open_sync(self) -> None:
        pa, pq = import_pyarrow()
        self._pa, self._pq = pa, pq
        arrow_types = {
            ColumnType.TEXT: pa.string(),
            ColumnType.FLOAT: pa.float64(),
            ColumnType.BOOL: pa.bool_(),
            ColumnType.INT: pa.int64(),
        }
        declared = SERVICE_SCHEMA if self.seq_column else SCHEMA
        self._types = [arrow_types[c.type] for c in declared]
        self._schema = pa.schema(
            [pa.field(c.name, t, nullable=True) for c, t in zip(declared, self._types, strict=True)]
        )
        self._part = 0
        self._part_fill = 0
        if self.journal:
            self._prepare_file()
            self._prepare_directory(self.journal_dir)
        elif self.part_batches is None:
            self._prepare_file()
            self._writer = self._new_writer(self.path)
        else:
            self._prepare_directory(self.path)

    @property
    def _dataset_dir(self) -> Path:
        return self.journal_dir if self.journal else self.path

    @property
    def _batches_per_part(self) -> int | None:
        return 1 if self.journal else self.part_batches

    def _prepare_file(self) -> None:
        path = self.path
        if path.exists() or path.is_symlink():
            if not self.overwrite:
                raise ServomexSinkWriteError(
                    f"Parquet file {path} already exists; pass overwrite=True to replace it",
                    context=self._context(),
                )
            if path.is_dir():
                raise ServomexSinkWriteError(
                    f"{path} is a directory, not a Parquet file", context=self._context()
                )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"could not create the directory of {path}", exc) from exc

    def _prepare_directory(self, path: Path) -> None:
        try:
            if path.is_file() or path.is_symlink():
                if not self.overwrite:
                    raise ServomexSinkWriteError(
                        f"{path} already exists; pass overwrite=True to replace it",
                        context=self._context(),
                    )
                path.unlink()
            path.mkdir(parents=True, exist_ok=True)
            ours = [p for p in path.iterdir() if _PART_RE.fullmatch(p.name)]
            if ours and not self.overwrite:
                raise ServomexSinkWriteError(
                    f"Parquet dataset {path} already holds part files; "
                    "pass overwrite=True to replace them",
                    context=self._context(),
                )
            for old in ours:
                old.unlink()
        except OSError as exc:
            raise self._error(f"could not prepare the Parquet directory {path}", exc) from exc

    def _part_paths(self) -> tuple[Path, Path]:
        name = f"part-{self._part:05d}.parquet"
        return self._dataset_dir / f"_{name}.partial", self._dataset_dir / name

    def _new_writer(self, target: Path) -> Any:
        try:
            return self._pq.ParquetWriter(
                str(target),
                self._schema,
                compression=self.compression,
                use_dictionary=self.use_dictionary,
            )
        except (OSError, self._pa.ArrowException) as exc:
            raise self._error(f"could not create Parquet file {target}", exc) from exc

    def _write_sync(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        pa = self._pa
        n = len(samples)
        columns = with_seqs(batch_columns(samples), seqs)
        try:
            arrays = [
                _column_array(pa, column, kind)
                for column, kind in zip(columns, self._types, strict=True)
            ]
            table = pa.Table.from_arrays(arrays, schema=self._schema)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise self._error("could not convert the batch to Arrow", exc) from exc
        per_part = self._batches_per_part
        if per_part is not None and self._writer is None:
            self._writer = self._new_writer(self._part_paths()[0])
        try:
            self._writer.write_table(table, row_group_size=self.row_group_size or n)
        except (OSError, pa.ArrowException) as exc:
            raise self._error(f"could not write a row group to {self.path}", exc) from exc
        if per_part is not None:
            self._part_fill += 1
            if self._part_fill >= per_part:
                self._finish_part()

    def _finish_part(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        partial, final = self._part_paths()
        try:
            writer.close()
            os.replace(partial, final)
        except (OSError, self._pa.ArrowException) as exc:
            raise self._error(f"could not complete Parquet part {final}", exc) from exc
        logger.debug("completed Parquet part %s", final)
        self._part += 1
        self._part_fill = 0

    def _close_sync(self) -> None:
        if self.journal:
            self._finish_part()
            self._consolidate()
            return
        if self.part_batches is not None:
            self._finish_part()
            return
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except (OSError, self._pa.ArrowException) as exc:
                raise self._error(f"could not close Parquet file {self.path}", exc) from exc

    def _consolidate(self) -> None:
        """Journal mode: merge the complete parts, in order, into ``path``; then drop them.

        The file is written under a temporary name and renamed, so ``path`` is either absent or
        complete; the parts are removed only after that rename.
        """
        parts = sorted(p for p in self.journal_dir.glob("part-*.parquet") if p.is_file())
        partial = self.path.with_name(self.path.name + ".partial")
        writer = self._new_writer(partial)
        try:
            for part in parts:
                source = self._pq.ParquetFile(str(part))
                for index in range(source.num_row_groups):
                    group = source.read_row_group(index)
                    writer.write_table(group, row_group_size=max(group.num_rows, 1))
            writer.close()
            os.replace(partial, self.path)
            for part in parts:
                part.unlink()
            self.journal_dir.rmdir()
        except (OSError, self._pa.ArrowException) as exc:
            raise self._error(
                f"could not consolidate {self.journal_dir} into {self.path} "
                "(the parts are kept and readable)",
                exc,
            ) from exc
