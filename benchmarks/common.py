"""Shared pieces of the benchmark suite: the figure row, statistics and the table."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["Figure", "Settings", "child_env", "percentile", "print_table", "python_exe"]


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Run-wide knobs: ``quick`` shrinks every sample size for a smoke run."""

    quick: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    """One row of the table.

    ``ratio`` is the figure divided by its bound or target; ``limit`` is the condition on the
    ratio (``("<=", 1.05)`` or ``(">=", 1.0)``), None for context rows (INFO). ``status``
    overrides the computed result (e.g. ``"SKIP"``).
    """

    group: str
    name: str
    measured: str
    bound: str
    ratio: float | None = None
    limit: tuple[str, float] | None = None
    status: str | None = None
    note: str = ""

    @property
    def result(self) -> str:
        if self.status is not None:
            return self.status
        if self.limit is None or self.ratio is None:
            return "INFO"
        op, value = self.limit
        ok = self.ratio <= value if op == "<=" else self.ratio >= value
        return "PASS" if ok else "FAIL"


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile at index ``p·(n−1)`` of the sorted values (NaN if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def python_exe() -> str:
    """The interpreter running the suite (the venv's), for child processes."""
    return sys.executable or "python3"


def child_env() -> dict[str, str]:
    """Environment for child processes: the repository's ``src`` and root on the path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    parts = [os.path.join(root, "src"), root]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def print_table(figures: Sequence[Figure], *, file: TextIO | None = None) -> None:
    """Print the figures as an aligned text table, then the notes."""
    out = file if file is not None else sys.stdout
    header = ("#", "figure", "measured", "bound / target", "ratio", "limit", "result")
    rows = []
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.3f}"
        limit = "" if f.limit is None else f"{f.limit[0]} {f.limit[1]:g}"
        rows.append((f.group, f.name, f.measured, f.bound, ratio, limit, f.result))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        cells = []
        for i, cell in enumerate(row):
            cells.append(cell.rjust(widths[i]) if i in (4,) else cell.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    print(fmt(header), file=out)
    print(line, file=out)
    for row in rows:
        print(fmt(row), file=out)
    notes = [(f.group, f.name, f.note) for f in figures if f.note]
    if notes:
        print(file=out)
        print("notes:", file=out)
        for group, name, note in notes:
            print(f"  [{group}] {name}: {note}", file=out)
