"""Imports run one way: every module's imports respect the layer order (docs/architecture.md).

Every module under ``src/servomexlib`` is parsed with ``ast`` (nothing is imported). Every
import counts — module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-only
import is still a dependency of the code that names the type) — whether relative or absolute.
Each module belongs to one layer; a module may import its own layer and the layers below it:

    values → wire → transport → clients → streaming → devices → manager → sinks → sync
           → sim → service → testing → cli

with two exceptions:

* **sim** is a side branch: the simulator is a device model plus the servers that put it on a
  line, so it imports only values, wire and transport. Only the layers above it (service,
  testing, cli) import it; the transport layer reaches it only through the ``sim://`` opener
  that the package root registers (``servomexlib.transport.schemes``). ``service`` (the
  ``servomex run`` daemon) sits above sinks and manager and may use the simulator's URL parser
  to check a configuration's ``sim://`` ports when it loads.
* **the package root** (``servomexlib/__init__.py``) re-exports the public API and may import
  anything (lazily, on first use of a name). Because it sits on top, no module may import names
  from it (``from servomexlib import X``); import them from the module that defines them.

A second rule: no module imports a private name (``_name``, not a ``__dunder__``) from another
module. Private names are private to their module; a helper that two modules need is public in
one of them (or in a shared module). There is no exception for packages' ``__init__`` files.

The failure message lists every violation with its file and line.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import servomexlib

PACKAGE = Path(servomexlib.__file__).parent
ROOT = "servomexlib"

#: Layers from the bottom up; a module's layer is that of the longest matching prefix.
ORDER = (
    "values",
    "wire",
    "transport",
    "clients",
    "streaming",
    "devices",
    "manager",
    "sinks",
    "sync",
    "sim",
    "service",
    "testing",
    "cli",
    "root",
)
PREFIXES = {
    "servomexlib.errors": "values",
    "servomexlib.settings": "values",
    "servomexlib.units": "values",
    "servomexlib.validation": "values",
    "servomexlib._version": "values",
    "servomexlib._lazy": "values",  # PEP 562 helper of the package files
    "servomexlib.devices": "values",  # the package file: a docstring only
    "servomexlib.devices.models": "values",
    "servomexlib.wire": "wire",
    "servomexlib.planner": "wire",
    "servomexlib.decode": "wire",  # offline decoding: the wire layer plus a timestamp
    "servomexlib.transport": "transport",
    "servomexlib.clients": "clients",
    "servomexlib.streaming": "streaming",
    "servomexlib.devices.analyzer": "devices",
    "servomexlib.devices.factory": "devices",
    "servomexlib.manager": "manager",
    "servomexlib.discovery": "manager",
    "servomexlib.sinks": "sinks",
    "servomexlib.sync": "sync",
    "servomexlib.service": "service",  # ``servomex run``: above sinks and manager
    "servomexlib.sim": "sim",
    "servomexlib.testing": "testing",
    "servomexlib.cli": "cli",
    "servomexlib.__main__": "cli",
}
#: The package root is a layer of its own (only the module ``servomexlib`` itself).
ROOT_LAYER = "root"
#: Layers a side branch may import (instead of everything below it in ORDER).
ALLOWED = {"sim": frozenset({"values", "wire", "transport", "sim"})}


@dataclasses.dataclass(frozen=True)
class Imported:
    module: str  # the importing module
    path: Path
    line: int
    target: str  # the imported module (resolved, absolute)
    names: tuple[str, ...]  # names taken from it (``from target import a, b``), else ()
    where: str  # "module level", "function level" or "type checking"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [ROOT, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_module(name: str) -> bool:
    return name in MODULES


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, where: str) -> list[tuple[ast.AST, str]]:
    """Every import node below ``node`` with where it sits."""
    found: list[tuple[ast.AST, str]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append((child, where))
        inner = where
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "function level"
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            inner = "type checking" if where == "module level" else where
        found.extend(_walk(child, inner))
    return found


def _imports() -> list[Imported]:
    result: list[Imported] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, where in _walk(tree, "module level"):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    result.append(Imported(module, path, node.lineno, alias.name, (), where))
                continue
            assert isinstance(node, ast.ImportFrom)
            target = _resolve(module, path, node)
            plain: list[str] = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if _is_module(sub):  # ``from package import submodule``
                    result.append(Imported(module, path, node.lineno, sub, (), where))
                else:
                    plain.append(alias.name)
            if plain:
                result.append(Imported(module, path, node.lineno, target, tuple(plain), where))
    return result


def layer_of(module: str) -> str | None:
    if module == ROOT:
        return ROOT_LAYER
    best = ""
    for prefix in PREFIXES:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return PREFIXES[best] if best else None


def _may_import(importer: str, imported: str) -> bool:
    if importer == "root":
        return True
    allowed = ALLOWED.get(importer)
    if allowed is not None:
        return imported in allowed
    if imported in ALLOWED:  # a side branch: only layers above it may import it
        return ORDER.index(importer) > ORDER.index(imported)
    return ORDER.index(imported) <= ORDER.index(importer)


def _where(imp: Imported) -> str:
    rel = imp.path.relative_to(PACKAGE.parent)
    return f"{rel}:{imp.line} ({imp.where})"


def layer_violations() -> list[str]:
    problems: list[str] = []
    for imp in _imports():
        if not (imp.target == ROOT or imp.target.startswith(ROOT + ".")):
            continue
        mine, theirs = layer_of(imp.module), layer_of(imp.target)
        if mine is None or theirs is None:
            problems.append(f"{_where(imp)}: no layer for {imp.module} or {imp.target}")
        elif not _may_import(mine, theirs):
            what = f"{imp.target} ({', '.join(imp.names)})" if imp.names else imp.target
            problems.append(f"{_where(imp)}: {mine} imports {theirs}: {what}")
    return problems


def private_violations() -> list[str]:
    problems: list[str] = []
    for imp in _imports():
        if not (imp.target == ROOT or imp.target.startswith(ROOT + ".")):
            continue
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and imp.target != imp.module:
            problems.append(f"{_where(imp)}: imports {', '.join(private)} from {imp.target}")
    return problems


def test_every_module_has_a_layer() -> None:
    unmapped = sorted(m for m in MODULES if layer_of(m) is None)
    assert unmapped == [], f"give these modules a layer in tests/test_layers.py: {unmapped}"
    assert "servomexlib.validation" in MODULES


def test_imports_run_one_way() -> None:
    problems = layer_violations()
    assert problems == [], (
        f"{len(problems)} import(s) against the layer order "
        f"({' → '.join(ORDER[:-1])}; sim imports only values, wire, transport):\n  "
        + "\n  ".join(problems)
    )


def test_no_module_imports_another_modules_private_names() -> None:
    problems = private_violations()
    assert problems == [], (
        f"{len(problems)} import(s) of another module's private names:\n  " + "\n  ".join(problems)
    )


# ---------------------------------------------------------------- the checker itself


def test_the_checker_resolves_relative_and_function_level_imports() -> None:
    """The scan sees what it must: these imports exist in modules this test knows well."""
    seen = {(i.module, i.target, i.where) for i in _imports()}
    # A relative, module-level import two levels up.
    assert ("servomexlib.devices.factory", "servomexlib.transport.ports", "module level") in seen
    # A type-only import of a sibling module.
    assert ("servomexlib.transport.schemes", "servomexlib.transport.base", "type checking") in seen
    # The sim:// opener's function-level import in the package root.
    assert ("servomexlib", "servomexlib.sim", "function level") in seen


def test_the_checker_flags_upward_and_private_imports() -> None:
    assert not _may_import("streaming", "devices")
    assert not _may_import("transport", "sim")
    assert not _may_import("sim", "clients")
    assert not _may_import("manager", "sim")
    assert _may_import("cli", "sim")
    assert _may_import("testing", "sim")
    assert _may_import("devices", "streaming")
    assert _may_import("root", "cli")
    assert not _may_import("values", "root")
    assert layer_of("servomexlib.devices.models") == "values"
    assert layer_of("servomexlib.devices.analyzer") == "devices"
    assert layer_of("servomexlib") == "root"
    assert layer_of("servomexlib.nothing_like_this") is None  # the root is no catch-all
