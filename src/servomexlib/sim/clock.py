"""The simulated line's clock: the event loop's time by default, resolved lazily.

Theory of operation
-------------------
Everything the simulator does is a function of *line time*: when a byte is complete, how much
silence preceded a request, when the next continuous frame is due, how far a value has
drifted. A :class:`LineClock` is the one reader of line time for a line. It has three modes:

* **Following the event loop** (the default, ``Simulator(line_clock=None)``): line time is the
  clock of the event loop that uses the line — ``loop.time()`` on asyncio, the run's clock on
  trio — so a test under trio's ``MockClock(autojump_threshold=0)`` or an asyncio loop on
  virtual time runs the simulator on virtual time too: a paced reply takes its wire time, a
  3 s timeout costs no wall time. The loop is found *lazily*, at the first reading made inside
  it, because a simulator is often built outside any loop (module level, sync code,
  ``servomex simulate``). Until then the line runs on the host clock (``time.monotonic``): the
  only time there is. The readers captured are thread-safe (``loop.time`` and trio's clock
  object), so scenario methods called from another thread (the sync facade) read the same
  timeline.
* **Pinned to the host clock**: serving the line on a pseudo-terminal or over TCP
  (:meth:`pin_to_host`) — the other end is the operating system, which runs on real time.
  A line that is served stays on the host clock from then on, and every in-process stream on
  it follows (under a virtual-time loop such a stream simply waits for real time).
* **An explicit clock** (``line_clock=anyio.current_time``, a test's fake clock): read as
  given, never switched. It is read when the simulator is built, so a clock that needs a
  running loop needs the simulator built inside it.

Switching readers never makes line time jump: the new reader is offset so that line time
continues from its last value (:meth:`follow_loop` after a line was read on the host clock,
or used by an earlier event loop; :meth:`pin_to_host`). A line first read inside a loop needs
no offset, and its times are that loop's times (``sim.requests[i].time`` compares with
``anyio.current_time()``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel

__all__ = ["LineClock"]


def _current_loop_clock() -> tuple[object, Callable[[], float]] | None:
    """(identity of the running event loop, a thread-safe reader of its clock), or None."""
    try:
        token = anyio.lowlevel.current_token()
    except anyio.NoEventLoopError:
        return None
    native = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return native, native.time
    import trio  # the only other anyio backend; imported only when it is running

    return native, trio.lowlevel.current_clock().current_time


class LineClock:
    """Line time in seconds (see the module docstring for the three modes).

    Args:
        source: an explicit clock (a callable returning seconds), or None to follow the
            event loop that uses the line.
    """

    __slots__ = ("_explicit", "_loop", "_offset", "_pinned", "_read", "_reader")

    def __init__(self, source: Callable[[], float] | None = None) -> None:
        self._explicit = source
        self._reader: Callable[[], float] = source if source is not None else time.monotonic
        self._offset = 0.0
        self._loop: object | None = None
        self._pinned = source is not None
        self._read = False

    def __repr__(self) -> str:
        return f"<LineClock {self.mode} now={self.now():.6f}>"

    @property
    def source(self) -> Callable[[], float] | None:
        """The explicit clock given at construction, or None (following the event loop)."""
        return self._explicit

    @property
    def mode(self) -> str:
        """``"explicit"``, ``"host"`` (pinned by serving), ``"loop"`` (bound to an event
        loop) or ``"unbound"`` (not yet read inside a loop: host time for now)."""
        if self._explicit is not None:
            return "explicit"
        if self._pinned:
            return "host"
        return "loop" if self._loop is not None else "unbound"

    def now(self) -> float:
        """Line time now. An unbound default clock first tries to bind to the running loop."""
        if not self._pinned and self._loop is None:
            self.follow_loop()
        value = self._reader() + self._offset
        self._read = True
        return value

    def follow_loop(self) -> None:
        """Run on the clock of the event loop calling this (a no-op outside a loop, for an
        explicit or pinned clock, and for the loop already followed).

        Called at every async entry point of the line (stream ``send``/``receive``,
        ``async with``), so a line built outside any loop, or used by an earlier loop (one
        test after another), joins the loop that uses it now.
        """
        if self._pinned:
            return
        found = _current_loop_clock()
        if found is None or found[0] is self._loop:
            return
        loop, reader = found
        self._switch(reader)
        self._loop = loop

    def pin_to_host(self) -> None:
        """Run on the host clock (``time.monotonic``) from now on; explicit clocks stay."""
        if self._pinned:
            return
        self._switch(time.monotonic)
        self._loop = None
        self._pinned = True

    def _switch(self, reader: Callable[[], float]) -> None:
        if self._read:  # line time continues from where it is
            self._offset = self._reader() + self._offset - reader()
        else:
            self._offset = 0.0
        self._reader = reader
