"""The pure wire layer imports no async, I/O or logging machinery.

Independent checks: the wire modules' own source contains no import of a forbidden module
(``ast``); in a fresh interpreter, importing them with a bare stand-in for the package root (so
``servomexlib/__init__.py``, which imports the async layers, does not run) loads none of those
modules; and importing them after the real package root adds none. The value modules they build
on (errors, units, settings, models, decode) are held to the same rule, because importing a wire
module imports them too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import servomexlib

FORBIDDEN = ("anyio", "anyserial", "anymodbus", "trio", "asyncio", "logging")
PACKAGE = Path(servomexlib.__file__).parent

WIRE_MODULES = [
    "servomexlib.wire.continuous",
    "servomexlib.wire.channels",
    "servomexlib.wire.registers",
    "servomexlib.wire.charset",
]
# What the wire modules depend on; they must be just as pure.
VALUE_MODULES = [
    "servomexlib.errors",
    "servomexlib.units",
    "servomexlib.settings",
    "servomexlib.devices.models",
    "servomexlib.decode",
]
PLANNER = "servomexlib.planner"


def _source(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    path = PACKAGE / rel.with_suffix(".py")
    return path if path.exists() else PACKAGE / rel / "__init__.py"


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _is_forbidden(name: str) -> bool:
    return name.split(".")[0] in FORBIDDEN


def _planner_exists() -> bool:
    return _source(PLANNER).exists()


@pytest.mark.parametrize("module", [*WIRE_MODULES, *VALUE_MODULES, "servomexlib.wire"])
def test_source_imports_nothing_forbidden(module: str) -> None:
    path = _source(module)
    assert path.exists(), path
    bad = sorted(n for n in _imported_names(path) if _is_forbidden(n))
    assert bad == [], f"{module} imports {bad}"


def test_planner_source_imports_nothing_forbidden() -> None:
    if not _planner_exists():
        pytest.skip("servomexlib.planner does not exist yet")
    bad = sorted(n for n in _imported_names(_source(PLANNER)) if _is_forbidden(n))
    assert bad == [], f"{PLANNER} imports {bad}"


_PROBE = """
import importlib.util, json, sys, types
forbidden = {forbidden!r}
def hits():
    return sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
start = hits()
if {bare_root!r}:
    # Stand in for the package root without running servomexlib/__init__.py (which imports
    # the async layers): the wire modules and their value modules are then imported alone.
    spec = importlib.util.find_spec("servomexlib")
    root = types.ModuleType("servomexlib")
    root.__path__ = list(spec.submodule_search_locations)
    sys.modules["servomexlib"] = root
else:
    import servomexlib
after_package = hits()
for name in {modules!r}:
    __import__(name)
after_wire = hits()
print(json.dumps({{"start": start, "package": after_package, "wire": after_wire}}))
"""


def _probe(modules: list[str], *, bare_root: bool) -> dict[str, list[str]]:
    code = _PROBE.format(forbidden=FORBIDDEN, modules=modules, bare_root=bare_root)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_wire_modules_alone_import_nothing_forbidden() -> None:
    result = _probe(WIRE_MODULES + VALUE_MODULES, bare_root=True)
    assert result["start"] == []
    assert result["wire"] == [], f"importing the wire layer pulled in {result['wire']}"


def test_wire_modules_add_nothing_forbidden_after_the_package() -> None:
    result = _probe(WIRE_MODULES + VALUE_MODULES, bare_root=False)
    added = sorted(set(result["wire"]) - set(result["package"]))
    assert added == [], f"importing the wire layer pulled in {added}"


def test_planner_imports_nothing_forbidden_at_runtime() -> None:
    if not _planner_exists():
        pytest.skip("servomexlib.planner does not exist yet")
    result = _probe([PLANNER], bare_root=True)
    assert result["wire"] == [], f"importing the planner pulled in {result['wire']}"


def test_report_what_the_package_root_imports(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a purity requirement of the root, but the lead wants to know (reported, not failed)."""
    result = _probe([], bare_root=False)
    pulled = sorted({m.split(".")[0] for m in set(result["package"]) - set(result["start"])})
    with capsys.disabled():
        print(f"\n`import servomexlib` (the package root) imports: {pulled or 'none of them'}")
