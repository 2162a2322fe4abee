"""The simulated line: timing and the in-process stream (docs/simulator.md).

Theory of operation
-------------------
A :class:`SimLine` is one simulated RS485 line with one or more :class:`Simulator` s on it
(several addresses = multidrop). Hosts attach to it through streams: the in-process
:class:`SimStream` (``sim.transport()``, ``sim://`` URLs), a pseudo-terminal bridged to such a
stream, or a TCP connection bridged to one (:mod:`servomexlib.sim.servers`). Every stream
hears everything the analysers send; whatever a stream sends reaches every analyser.

The line does its work lazily, inside the callers' own ``send``/``receive`` calls, so the
in-process stream needs no background task: ``send`` cuts requests out of the bytes (RTU by
function-code length, ASCII by ``:`` … CR LF), lets the addressed analyser answer, and puts the
reply on the line as an *emission* — bytes with the line time at which each one is complete;
``receive`` generates any continuous frames that have fallen due, then hands out the bytes
whose time has come, or sleeps until the next one is due.
Line time is read from the line's :class:`~servomexlib.sim.clock.LineClock`: by default the
clock of the event loop that uses the line, found at the first use inside it (under trio's
``MockClock`` or an asyncio loop on virtual time a test's timeline is virtual: a 3 s timeout
costs no wall time); the host clock once the line is served on a pty or TCP; or the
``line_clock`` the simulator was given. With ``realtime=True``:

* every character occupies ``bits_per_char / baud`` seconds (10 bits for 8-N-1), for the
  host's bytes and the analyser's alike, and one emission waits for the previous one;
* a reply starts a turnaround drawn uniformly from ``latency_s`` after the request's last byte;
* the measured silence rule (docs/protocol.md, §9.1): a request whose first byte follows the
  previous line activity by < 10 ms is lost with p = 0.26, by 10-50 ms with p = 0.08, by ≥ 50 ms
  never;
* or, with ``silence_drop_until_s`` (e.g. 0.08, ``sim://?drop_until_ms=80``), a *harsh* rule
  in its place: every request that follows less than that much silence is lost, every other
  one arrives — an analyser that needs more quiet than the measured one (a host must learn the
  silence this line needs).

``realtime=False`` removes pacing, turnaround and drops (the frame period stays: it is device
behaviour, not line timing). Randomness is drawn from generators seeded by ``seed``, one draw
per request for the drop decision and one per reply for the turnaround whether or not they
matter, so the same seed and the same traffic give byte-identical transcripts.

**Replies go out in order**, in both modes, as from a real serial slave: the analyser has one
UART, so an emission never starts before the previous one has ended. A reply held back by
:meth:`Simulator.delay_next` therefore holds back every later reply (the requests behind it
are still received and answered — values, counters and coils reflect them at once — but their
bytes queue behind the late one). This is what makes a host's line fence work: a reply to a
request sent after the late one can never overtake it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import ErrorContext, ServomexConnectionError, ServomexValidationError
from ..settings import SerialSettings
from .clock import LineClock
from .framing import AsciiRequestSplitter, ModbusRequest, RtuRequestSplitter
from .servers import LineServers, TcpAddress

if TYPE_CHECKING:
    from ..transport.sim import SimTransport
    from .simulator import Simulator

__all__ = [
    "MAX_STREAM_BUFFER",
    "SimLine",
    "SimStream",
    "lookup_line",
    "silence_drop_probability",
]

#: Bytes a stream buffers for a host that is not reading (an OS serial buffer is smaller);
#: past it the oldest emissions are dropped and counted.
MAX_STREAM_BUFFER = 65536
#: A receiving host is woken at most this often while bytes trickle in, so a paced reply
#: arrives in small chunks (as from a USB adapter) rather than one wake-up per character.
_MIN_WAKE_S = 0.001
_TIME_EPSILON = 1e-9


def silence_drop_probability(gap_s: float, until_s: float | None = None) -> float:
    """Probability that a request is lost, given the silence before its first byte.

    Measured through a USB-RS485 adapter at 19200 baud (docs/protocol.md, §9.1): 0 ms → 26 %,
    10-20 ms → 8 %, 50 ms → 0 %. With ``until_s`` the harsh rule instead: 1 below it, else 0.
    """
    if until_s is not None:
        return 1.0 if gap_s < until_s else 0.0
    if gap_s < 0.010:
        return 0.26
    if gap_s < 0.050:
        return 0.08
    return 0.0


# --------------------------------------------------------------------------------------------
# Emissions and consumers (pure: time passed in)


@dataclasses.dataclass(frozen=True, slots=True)
class _Emission:
    """Bytes put on the line at ``start``; byte i is complete at start + (i + 1) · char_time."""

    start: float
    data: bytes
    char_time: float

    def due_count(self, now: float) -> int:
        """How many bytes are complete at ``now``."""
        if now < self.start:
            return 0
        if self.char_time <= 0.0:
            return len(self.data)
        return min(len(self.data), int((now - self.start) / self.char_time + 1e-9))

    def due_time(self, index: int) -> float:
        return self.start + (index + 1) * self.char_time


class _Consumer:
    """One attached host: its own queue of emissions, cursor and wake-up hook."""

    __slots__ = (
        "attached_at",
        "broken",
        "closed",
        "offset",
        "overflow_bytes",
        "queue",
        "queued",
        "waiter",
    )

    def __init__(self, attached_at: float) -> None:
        self.attached_at = attached_at
        self.queue: deque[_Emission] = deque()
        self.offset = 0
        self.queued = 0
        self.overflow_bytes = 0
        self.broken = False
        self.closed = False
        self.waiter: anyio.Event | None = None

    def wake(self) -> None:
        if self.waiter is not None:
            self.waiter.set()
            self.waiter = None

    def push(self, emission: _Emission) -> None:
        # Bytes complete before the host attached were never heard by it (joining mid-frame).
        if emission.start < self.attached_at:
            skip = (
                len(emission.data)
                if emission.char_time <= 0.0
                else emission.due_count(self.attached_at)
            )
            if skip >= len(emission.data):
                return
            if skip:
                emission = _Emission(
                    emission.due_time(skip - 1), emission.data[skip:], emission.char_time
                )
        self.queue.append(emission)
        self.queued += len(emission.data)
        while self.queued > MAX_STREAM_BUFFER and len(self.queue) > 1:
            dropped = self.queue.popleft()
            lost = len(dropped.data) - self.offset
            self.offset = 0
            self.queued -= lost
            self.overflow_bytes += lost
        self.wake()

    def take(self, now: float, max_bytes: int) -> bytes:
        out = bytearray()
        while self.queue and len(out) < max_bytes:
            emission = self.queue[0]
            n = min(emission.due_count(now) - self.offset, max_bytes - len(out))
            if n <= 0:
                break
            out += emission.data[self.offset : self.offset + n]
            self.offset += n
            if self.offset >= len(emission.data):
                self.queue.popleft()
                self.offset = 0
        self.queued -= len(out)
        return bytes(out)

    def has_due(self, now: float) -> bool:
        """Whether a byte is due by ``now`` (what :meth:`take` would hand out)."""
        return bool(self.queue) and self.queue[0].due_count(now) > self.offset

    def next_due(self) -> float | None:
        if not self.queue:
            return None
        return self.queue[0].due_time(self.offset)


# --------------------------------------------------------------------------------------------
# Name registry for sim://<name>

_REGISTRY: dict[str, SimLine] = {}


def lookup_line(name: str) -> SimLine | None:
    """The line registered under ``name`` (by ``Simulator(name=…)`` or ``SimLine(name=…)``)."""
    return _REGISTRY.get(name)


def _register(name: str, line: SimLine) -> None:
    # The newest registration wins: a test that builds a fresh simulator under a name used
    # before gets the fresh one.
    _REGISTRY[name] = line


# --------------------------------------------------------------------------------------------
# The in-process stream


class SimStream(anyio.abc.ByteStream):
    """The host's end of a simulated line, usable on asyncio and trio without a helper task.

    ``receive`` returns the bytes that have arrived by now (paced at the line's character time
    when the line is realtime) and otherwise waits for the next one; ``send`` delivers a
    request to the analysers at once (the serial write is buffered, as an OS would). When the
    device vanishes, ``receive`` raises :class:`anyio.EndOfStream` and ``send``
    :class:`anyio.BrokenResourceError`; after ``aclose`` both raise
    :class:`anyio.ClosedResourceError`. ``send_eof`` does nothing (a serial line has no EOF).
    """

    def __init__(self, line: SimLine, consumer: _Consumer) -> None:
        self._line = line
        self._consumer = consumer

    @property
    def line(self) -> SimLine:
        return self._line

    @property
    def overflow_bytes(self) -> int:
        """Bytes lost because this stream was not read for too long."""
        return self._consumer.overflow_bytes

    async def receive(self, max_bytes: int = 65536) -> bytes:
        consumer = self._consumer
        line = self._line
        line.clock.follow_loop()
        # The checkpoint every receive owes comes first when bytes are due (so a realtime line
        # hands out what is due after it, as always); when none is, the wait below is it.
        now = line.now()
        line.advance(now)
        if consumer.closed or consumer.broken or consumer.has_due(now):
            await anyio.lowlevel.checkpoint()
        while True:
            if consumer.closed:
                raise anyio.ClosedResourceError
            now = self._line.now()
            self._line.advance(now)
            data = consumer.take(now, max_bytes)
            if data:
                return data
            if consumer.broken:
                raise anyio.EndOfStream
            wake_at = self._line.next_wakeup(consumer)
            event = anyio.Event()
            consumer.waiter = event
            delay = None if wake_at is None else max(wake_at - now, _MIN_WAKE_S)
            with anyio.move_on_after(delay):
                await event.wait()
            consumer.waiter = None

    async def send(self, item: bytes) -> None:
        consumer = self._consumer
        if consumer.closed:
            raise anyio.ClosedResourceError
        if consumer.broken:
            raise anyio.BrokenResourceError
        self._line.clock.follow_loop()
        now = self._line.now()
        self._line.advance(now)
        self._line.feed(bytes(item), now)
        await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        consumer = self._consumer
        if not consumer.closed:
            consumer.closed = True
            self._line.detach(consumer)
            consumer.wake()
        await anyio.lowlevel.checkpoint()


# --------------------------------------------------------------------------------------------
# The line


class SimLine:
    """One simulated serial line carrying one or more analysers (multidrop).

    ``SimLine(sim_a, sim_b, name="bench")`` moves the simulators onto one shared line. Line
    timing (baud, realtime, silence rule) comes from the first simulator. Usually built for
    you: every :class:`Simulator` starts on a line of its own.

    ``async with line`` (or ``async with sim``) owns the pty and TCP servers started by
    :meth:`serve_pty` / :meth:`serve_tcp`; leaving it stops them and removes what they created.
    """

    def __init__(self, *simulators: Simulator, name: str | None = None) -> None:
        if not simulators:
            raise ServomexValidationError("a simulated line needs at least one simulator")
        primary = simulators[0]
        self._simulators: list[Simulator] = []
        self.serial_settings: SerialSettings = primary.serial_settings
        self.char_time: float = primary.char_time
        self.realtime: bool = primary.realtime
        self.silence_drop: bool = primary.silence_drop
        #: The harsh silence rule's threshold (None: the measured rule).
        self.silence_drop_until_s: float | None = primary.silence_drop_until_s
        #: Seconds per character as the host sees it: the pacing when realtime, else None.
        self.paced_char_time: float | None = self.char_time if self.realtime else None
        #: The line's timeline (see :mod:`servomexlib.sim.clock`): the first simulator's.
        self.clock: LineClock = primary.timeline
        for sim in simulators[1:]:
            if sim.line_clock is not primary.line_clock:
                raise ServomexValidationError(
                    "simulators sharing a line must share one line_clock "
                    f"(address {sim.address} runs on another clock than address {primary.address})"
                )
        self._rng = random.Random(f"{primary.seed}:line")
        # t3.5 at the line's rate, but never under 15 ms: pty and socket reads can split one
        # request into chunks a few milliseconds apart.
        self._rtu = RtuRequestSplitter(gap_s=max(3.5 * self.char_time, 0.015))
        self._ascii = AsciiRequestSplitter()
        self._consumers: list[_Consumer] = []
        self._tx_free = -math.inf
        self._host_free = -math.inf
        self._activity: deque[tuple[float, float]] = deque(maxlen=64)
        self._vanished = False
        self._state_waiters: list[anyio.Event] = []
        self._servers = LineServers(self)
        self.name = name
        for sim in simulators:
            if sim.timeline is not self.clock and sim.line_clock is None:
                # Two default clocks (one simulator built outside the event loop, one inside)
                # can read differently: carry the joining analyser's state over to this line's
                # timeline.
                delta = self.clock.now() - sim.timeline.now()
                if delta:
                    sim._shift_time(delta)
            sim._move_to(self)
        if name is not None:
            _register(name, self)
        for sim in self._simulators:
            if sim.name is not None and sim.name != name:
                _register(sim.name, self)

    def __repr__(self) -> str:
        addrs = ",".join(str(s.address) for s in self._simulators)
        return (
            f"<SimLine name={self.name!r} addresses={addrs} consumers={len(self._consumers)}"
            f" vanished={self._vanished}>"
        )

    # ---------------------------------------------------------------- membership

    @property
    def simulators(self) -> tuple[Simulator, ...]:
        return tuple(self._simulators)

    def simulator(self, address: int) -> Simulator:
        """The simulator answering at ``address``."""
        for sim in self._simulators:
            if sim.address == address:
                return sim
        raise ServomexValidationError(f"no simulated analyser at address {address} on this line")

    def _add(self, sim: Simulator) -> None:
        self._simulators.append(sim)

    def _remove(self, sim: Simulator) -> None:
        with contextlib.suppress(ValueError):
            self._simulators.remove(sim)

    @property
    def label(self) -> str:
        return f"sim://{self.name}" if self.name else "sim://"

    # ---------------------------------------------------------------- time and bytes (pure)

    def now(self) -> float:
        """Line time (seconds; see :attr:`clock`)."""
        return self.clock.now()

    @property
    def vanished(self) -> bool:
        return self._vanished

    def attach(self, now: float) -> _Consumer:
        consumer = _Consumer(now)
        self._consumers.append(consumer)
        return consumer

    def detach(self, consumer: _Consumer) -> None:
        with contextlib.suppress(ValueError):
            self._consumers.remove(consumer)

    def open_stream(self) -> SimStream:
        """A new host attachment to this line.

        Raises:
            ServomexConnectionError: the device has vanished (see :meth:`vanish`).
        """
        if self._vanished:
            raise ServomexConnectionError(
                f"could not open {self.label}: the simulated device has vanished",
                context=ErrorContext(port=self.label),
            )
        return SimStream(self, self.attach(self.now()))

    def open_transport(self, label: str | None = None) -> SimTransport:
        """A new host attachment as a :class:`~servomexlib.transport.sim.SimTransport`
        labelled ``label`` (default: the line's label), reporting the line's settings and
        pacing (``char_time_s`` None when the line is not realtime).

        Raises:
            ServomexConnectionError: the device has vanished.
        """
        from ..transport.sim import SimTransport

        return SimTransport(
            self.open_stream(),
            label=label if label is not None else self.label,
            serial_settings=self.serial_settings,
            char_time_s=self.paced_char_time,
        )

    def transmit(self, data: bytes, start: float) -> float:
        """Put analyser bytes on the line no earlier than ``start``; returns their end time.

        Emissions never overlap or overtake each other, realtime or not: bytes queued behind a
        delayed reply start when it has ended (one UART, replies in order).
        """
        if not data:
            return start
        start = max(start, self._tx_free)
        char_time = self.char_time if self.realtime else 0.0
        end = start + len(data) * char_time
        self._tx_free = end
        self._activity.append((start, end))
        emission = _Emission(start, data, char_time)
        for consumer in self._consumers:
            consumer.push(emission)
        return end

    def _gap_before(self, t: float) -> float:
        last = -math.inf
        for start, end in self._activity:
            if start < t:
                last = max(last, min(end, t))
        return t - last

    def feed(self, data: bytes, now: float) -> None:
        """Bytes from a host, written at ``now``: cut requests and let the analysers answer."""
        if not data:
            return
        if self.realtime:
            start = max(now, self._host_free)
            char_time = self.char_time
        else:
            start, char_time = now, 0.0
        end = start + len(data) * char_time
        self._host_free = end
        requests = self._rtu.feed(data, start, char_time) + self._ascii.feed(data, start, char_time)
        requests.sort(key=lambda r: r.start)
        for request in requests:
            self._dispatch(request, now)
        self._activity.append((start, end))

    def _dispatch(self, request: ModbusRequest, now: float) -> None:
        roll = self._rng.random()  # drawn for every request: same traffic, same draws
        lost = False
        if self.realtime and self.silence_drop:
            # + 1 ns: line times are sums of floats, and a host that waited exactly 50 ms
            # (virtual time jumps straight to its deadline) must not come out a rounding error
            # short.
            gap = self._gap_before(request.start) + _TIME_EPSILON
            lost = roll < silence_drop_probability(gap, self.silence_drop_until_s)
        for sim in list(self._simulators):
            if sim.mode is request.framing:
                sim._on_request(request, lost, now)

    def advance(self, now: float) -> None:
        """Generate every continuous frame that has fallen due by ``now``."""
        for sim in self._simulators:
            sim._emit_frames(now)

    def next_wakeup(self, consumer: _Consumer) -> float | None:
        times = [t for t in (consumer.next_due(), *self._frame_times()) if t is not None]
        return min(times) if times else None

    def _frame_times(self) -> Iterable[float | None]:
        return (sim._next_frame for sim in self._simulators)

    @property
    def has_listeners(self) -> bool:
        return bool(self._consumers)

    def wake_all(self) -> None:
        for consumer in self._consumers:
            consumer.wake()

    # ---------------------------------------------------------------- vanish and return

    def vanish(self) -> None:
        """The device disappears (cable pulled, adapter unplugged).

        Every attached stream fails (``receive`` → end of stream, ``send`` → broken), new opens
        fail with :class:`ServomexConnectionError`, TCP connections are closed and the listener
        stops, pty links are removed. The analysers keep running.
        """
        if self._vanished:
            return
        self._vanished = True
        for consumer in self._consumers:
            consumer.broken = True
            consumer.queue.clear()
            consumer.queued = 0
            consumer.wake()
        self._consumers.clear()
        self._state_changed()

    def reappear(self) -> None:
        """The device is back: opens work again, TCP listens on the same port again and each
        served pty is reachable again at the same path."""
        if not self._vanished:
            return
        self._vanished = False
        self._state_changed()

    def _state_changed(self) -> None:
        waiters, self._state_waiters = self._state_waiters, []
        for event in waiters:
            event.set()

    async def wait_vanished(self, vanished: bool) -> None:
        """Return once the device has vanished (``True``) or is present (``False``)."""
        while self._vanished is not vanished:
            event = anyio.Event()
            self._state_waiters.append(event)
            await event.wait()

    # ---------------------------------------------------------------- servers

    async def __aenter__(self) -> Self:
        self.clock.follow_loop()
        await self._servers.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._servers.__aexit__(exc_type, exc, tb)

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpAddress:
        """Listen for TCP connections; each one attaches to this line. Returns where.

        The line runs on the host clock from now on (the other end is the operating system).

        Raises:
            ServomexConfigurationError: the line is not running (``async with``).
            ServomexConnectionError: the address cannot be listened on (port in use, unknown
                host, no permission) — raised here, naming ``tcp://HOST:PORT``.
        """
        return await self._servers.serve_tcp(host, port)

    async def serve_pty(self) -> str:
        """Serve the line on a new pseudo-terminal; returns a stable path to it.

        The path is a symlink in a temporary directory this line creates and owns; it points
        at the current ``/dev/pts/N`` and survives :meth:`vanish` / :meth:`reappear` (while
        vanished it is absent). Leaving ``async with`` removes the link and the directory.
        The line runs on the host clock from now on.

        Raises:
            ServomexConfigurationError: not running, or no pseudo-terminals on this platform.
        """
        return await self._servers.serve_pty()
