"""The runnable Python blocks of README.md and docs/*.md work against sim://.

Convention: a fenced ``python`` block directly preceded by the line ``<!-- run -->`` is
runnable; it is executed as a script in a subprocess (in a temporary directory, 45 s timeout)
and must exit 0. Other blocks are illustrations (real ports, placeholders) and are only
compiled, so a syntax error in any documented Python is still caught.
"""

from __future__ import annotations

import re
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
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=45, cwd=tmp_path
    )
    assert proc.returncode == 0, f"{path.name}:{line}\n{proc.stdout}\n{proc.stderr}"
