"""Shared test configuration: every async test runs on asyncio and on trio.

Fixtures: ``anyio_backend`` (both backends), ``data_dir``, ``pty`` (a raw pseudo-terminal the
test feeds itself: :class:`helpers.PtyFeeder`). A simulator served on a pty is
``helpers.served_on_pty``.

Time: a test marked ``@pytest.mark.virtual_time`` gets both backends on virtual time (trio's
``MockClock``, asyncio's ``VirtualTimeLoop``: tests/_virtual_time.py), for tests whose code
only waits on the event loop's clock (a whole module does the same with ``anyio_backend =
virtual_anyio_backend``). Tests over real I/O (a pty, TCP, a thread) stay on real time; the
long end-to-end ones run on one backend (``helpers.ASYNCIO_ONLY``) since the backends' own
I/O is covered by the transport tests on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _virtual_time import virtual_backend
from helpers import PtyFeeder

DATA = Path(__file__).parent / "data"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    backend: str = request.param
    if request.node.get_closest_marker("virtual_time") is not None:
        return virtual_backend(backend)
    return backend


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def pty() -> Iterator[PtyFeeder]:
    """A fresh raw pty whose slave path the code under test opens; closed afterwards."""
    feeder = PtyFeeder()
    try:
        yield feeder
    finally:
        feeder.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked @pytest.mark.slow (deselected by default)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``slow`` tests unless ``--run-slow`` is given (or ``-m`` names markers)."""
    if config.getoption("--run-slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
