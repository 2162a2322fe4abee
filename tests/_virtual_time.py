"""Virtual time for both backends: trio's ``MockClock`` and :class:`VirtualTimeLoop` for asyncio.

Tests that run the realistic simulator on the event loop's clock (``line_clock=
anyio.current_time``) use the ``anyio_backend`` fixture below: when nothing is ready, time jumps
to the next timer, so a timeline of many seconds runs in a fraction of a second of wall time,
and asyncio and trio see exactly the same timeline.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import pytest
from trio.testing import MockClock


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, instead of sleeping, advances its loop's virtual clock."""

    #: Zero-timeout selects (callbacks are ready) that skip the poll of the real selector
    #: between two polls. Under virtual time a loop iteration is mostly such a select, and the
    #: system call was ~14 % of a simulated poll's CPU; skipping it only delays noticing real
    #: I/O (a worker thread's wake-up, a socket) by a few iterations in which the loop had
    #: other work anyway: every select that would wait or jump the clock polls first.
    SKIP_ZERO_POLLS = 15

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        self._skipped = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            if self._skipped < self.SKIP_ZERO_POLLS:
                self._skipped += 1
                return []
            self._skipped = 0
            return super().select(0)
        self._skipped = 0
        events = super().select(0)
        if events:
            return events
        if timeout is None:  # nothing scheduled: only real I/O can wake us
            return super().select(None)
        assert self.loop is not None
        self.loop.virtual_now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """asyncio on virtual time, like trio's ``MockClock(autojump_threshold=0)``."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.virtual_now = 0.0

    def time(self) -> float:
        return self.virtual_now


def virtual_backend(name: str) -> tuple[str, dict[str, Any]]:
    """``anyio_backend`` for backend ``name`` on virtual time (a fresh clock each call)."""
    if name == "trio":
        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return ("asyncio", {"loop_factory": VirtualTimeLoop})


@pytest.fixture(params=["asyncio", "trio"])
def virtual_anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Use as ``anyio_backend = virtual_anyio_backend`` in a test module (or mark single tests
    ``@pytest.mark.virtual_time``: tests/conftest.py)."""
    return virtual_backend(request.param)
