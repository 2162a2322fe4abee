"""The runnable Python blocks of README.md and docs/*.md work against sim://.

Convention: a fenced ``python`` block directly preceded by the line ``<!-- run -->`` is
runnable; it is executed as a script in a subprocess (in a temporary directory, 45 s timeout)
and must exit 0. Other blocks are illustrations (real ports, placeholders) and are only
compiled, so a syntax error in any documented Python is still caught.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK_RE = re.compile(r"(?P<marker><!-- run -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(path: Path) -> list[tuple[int, bool, str]]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in BLOCK_RE.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        found.append((line, match.group("marker") is not None, match.group("code")))
    return found


RUNNABLE = [
    pytest.param(path, line, code, id=f"{path.name}:{line}")
    for path in DOCS
    for line, run, code in blocks(path)
    if run
]
ALL = [
    pytest.param(path, line, code, id=f"{path.name}:{line}")
    for path in DOCS
    for line, _, code in blocks(path)
]


def _printed_output(path: Path, line: int) -> list[str] | None:
    """The ``text`` block right after the runnable block at ``line`` when the prose between
    them says it "prints" (a deterministic example): the docs show real output."""
    text = path.read_text(encoding="utf-8")
    start = sum(len(x) for x in text.splitlines(keepends=True)[: line - 1])
    end = text.find("```", start)
    if end < 0:
        return None
    rest = text[end + 3 :]
    match = re.match(r"\n\n(?P<prose>[^`]*?prints[^`]*?)\n\n```text\n(?P<out>.*?)```", rest, re.S)
    if match is None:
        return None
    return match.group("out").splitlines()


def test_docs_have_runnable_blocks() -> None:
    names = {p.values[0].name for p in RUNNABLE}  # type: ignore[union-attr]
    for doc in (
        "quickstart-async.md",
        "quickstart-sync.md",
        "simulator.md",
        "recording-and-sinks.md",
    ):
        assert doc in names


@pytest.mark.parametrize(("path", "line", "code"), ALL)
def test_block_compiles(path: Path, line: int, code: str) -> None:
    compile(code, f"{path.name}:{line}", "exec")


@pytest.mark.parametrize(("path", "line", "code"), RUNNABLE)
def test_block_runs(path: Path, line: int, code: str, tmp_path: Path) -> None:
    # The blocks run in a scratch directory that looks like the repository root for the files
    # the docs name (the real captures in tests/data), so they cannot write into the checkout.
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "tests" / "data")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=45, cwd=tmp_path
    )
    assert proc.returncode == 0, f"{path.name}:{line}\n{proc.stdout}\n{proc.stderr}"
    expected = _printed_output(path, line)
    if expected is not None:
        assert proc.stdout.splitlines() == expected, f"{path.name}:{line}: output differs"
