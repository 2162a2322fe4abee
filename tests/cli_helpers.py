"""Running ``servomex`` in-process for the CLI tests: one :func:`run` for every test file.

``run(capsys, "read", port, "--format", "json")`` calls :func:`servomexlib.cli.main` with the
arguments and returns what happened: the exit code, stdout as a list of lines, and stderr as
text (an ``error: …`` line is asserted on whole, its final newline included). Unpack it
(``code, lines, err = run(...)``) or use the fields.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from servomexlib.cli import main

__all__ = ["CliRun", "run"]


class CliRun(NamedTuple):
    """One in-process run of ``servomex``."""

    code: int  # the exit code main() returned
    lines: list[str]  # stdout, split into lines ([] when nothing was printed)
    err: str  # stderr as printed

    @property
    def err_lines(self) -> list[str]:
        """stderr split into lines."""
        return self.err.splitlines()

    @property
    def out(self) -> str:
        """stdout's lines joined again (without the final newline)."""
        return "\n".join(self.lines)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> CliRun:
    """Run ``servomex *argv`` in this process; what it printed is taken from ``capsys``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return CliRun(code, out.splitlines(), err)
