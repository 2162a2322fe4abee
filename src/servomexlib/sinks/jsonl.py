"""JSON Lines sink: one JSON object per sample, appended."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Final

from ..devices.models import Sample
from .base import logger
from .files import LineFileSink, ends_with_newline, open_append
from .schema import RowValues, sample_to_values

__all__ = ["JsonlSink"]

_BOOL: Final = {True: "true", False: "false", None: "null"}
_INFINITY: Final = float("inf")
_string = json.encoder.encode_basestring  # the ensure_ascii=False string encoder (C)
_float = float.__repr__


def _number(value: float | None) -> str:
    """A float or int as ``json.dumps`` writes it (NaN/Infinity included)."""
    if value is None:
        return "null"
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return _float(value) if value.__class__ is float else repr(value)


def json_line(values: RowValues) -> str:
    """One JSON object for a row, identical to ``json.dumps(row, ensure_ascii=False)``.

    Written out by hand because it runs once per stored sample and ``json.dumps`` of a
    21-key dict costs several times more; the equivalence is tested against ``json.dumps``.
    """
    (
        device,
        channel,
        kind,
        name,
        value,
        unit,
        ok,
        fault,
        maintenance,
        calibrating,
        warming_up,
        alarm1,
        alarm2,
        alarm3,
        alarm4,
        protocol,
        monotonic_ns,
        received_at,
        requested_at,
        latency_s,
        error,
    ) = values
    s, b = _string, _BOOL
    return (
        f'{{"device": {s(device)}, '
        f'"channel": {"null" if channel is None else s(channel)}, '
        f'"kind": {"null" if kind is None else s(kind)}, '
        f'"name": {"null" if name is None else s(name)}, '
        f'"value": {_number(value)}, '
        f'"unit": {"null" if unit is None else s(unit)}, '
        f'"ok": {b[ok]}, "fault": {b[fault]}, "maintenance": {b[maintenance]}, '
        f'"calibrating": {b[calibrating]}, "warming_up": {b[warming_up]}, '
        f'"alarm1": {b[alarm1]}, "alarm2": {b[alarm2]}, "alarm3": {b[alarm3]}, '
        f'"alarm4": {b[alarm4]}, '
        f'"protocol": {s(protocol)}, '
        f'"monotonic_ns": {monotonic_ns!r}, '
        f'"received_at": {s(received_at)}, '
        f'"requested_at": {"null" if requested_at is None else s(requested_at)}, '
        f'"latency_s": {_number(latency_s)}, '
        f'"error": {"null" if error is None else s(error)}}}'
    )


class JsonlSink(LineFileSink):
    """Append one ``json.dumps(row, ensure_ascii=False)`` line per sample (utf-8, ``\\n``).

    Values are native JSON: booleans ``true``/``false``, numbers, strings, ``null``; keys in
    schema order. The file is opened in append mode: existing lines are always kept (if the
    file does not end with a line break, one is added first). Each ``write_many`` reaches the
    operating system before it returns.

    Args:
        path: the ``.jsonl`` file.
        rotate_bytes, rotate_seconds: optional rotation into ``stem.0001.jsonl``, … (see
            :class:`CsvSink`).
    """

    _format = "JSONL"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path, rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds, clock=clock
        )

    def _prepare(self, path: Path) -> tuple[BinaryIO, bytes]:
        prefix = b""
        if not ends_with_newline(path):
            logger.warning("%s does not end with a line break; starting a new line", path)
            prefix = b"\n"
        try:
            handle = open_append(path)
        except OSError as exc:
            raise self._write_error(f"could not open {path}", exc) from exc
        return handle, prefix

    def _encode(self, samples: Sequence[Sample]) -> bytes:
        lines = [json_line(sample_to_values(s)) for s in samples]
        lines.append("")
        return "\n".join(lines).encode("utf-8")
