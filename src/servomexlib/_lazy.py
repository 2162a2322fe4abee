"""Names imported on first use (PEP 562), for packages that re-export heavy modules.

A package lists ``name → defining module`` and gets a module ``__getattr__`` and ``__dir__``::

    __getattr__, __dir__ = lazy_attributes(__name__, globals(), {"Analyzer": "servomexlib.…"})

``__getattr__`` imports the defining module the first time a name is used and stores the value
in the package's namespace, so later lookups bypass the hook; any other public name is tried
as a submodule (``servomexlib.transport.serial``). ``__dir__`` lists both. This keeps
``import servomexlib`` (and ``import servomexlib.transport``) cheap: anyio, anyserial and
anymodbus load only when something that needs them is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for the lazy ``names``."""

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
            namespace[name] = value  # later lookups bypass this hook
            return value
        if not name.startswith("_"):
            qualified = f"{package}.{name}"
            try:
                return importlib.import_module(qualified)
            except ModuleNotFoundError as exc:
                if exc.name != qualified:
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
