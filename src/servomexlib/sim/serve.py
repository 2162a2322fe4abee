"""The simulated line: timing, the in-process stream, pseudo-terminals and TCP (api.md §16.1).

Theory of operation
-------------------
A :class:`SimLine` is one simulated RS485 line with one or more :class:`Simulator` s on it
(several addresses = multidrop). Hosts attach to it through streams: the in-process
:class:`SimStream` (``sim.transport()``, ``sim://`` URLs), a pseudo-terminal bridged to such a
stream, or a TCP connection bridged to one. Every stream hears everything the analysers send;
whatever a stream sends reaches every analyser.

The line does its work lazily, inside the callers' own ``send``/``receive`` calls, so the
in-process stream needs no background task: ``send`` cuts requests out of the bytes (RTU by
function-code length, ASCII by ``:`` … CR LF), lets the addressed analyser answer, and puts the
reply on the line as an *emission* — bytes with the line time at which each one is complete;
``receive`` generates any continuous frames that have fallen due, then hands out the bytes
whose time has come, or sleeps until the next one is due.

Line time is ``time.monotonic()`` unless the simulator was given another ``line_clock``
(e.g. ``anyio.current_time``, so an in-process line runs on the event loop's clock — under
trio's ``MockClock`` a test's timeline is virtual: a 3 s timeout costs no wall time). Serving
a pty or TCP keeps the host clock by default. With ``realtime=True``:

* every character occupies ``bits_per_char / baud`` seconds (10 bits for 8-N-1), for the
  host's bytes and the analyser's alike, and one emission waits for the previous one;
* a reply starts a turnaround drawn uniformly from ``latency_s`` after the request's last byte;
* the measured silence rule (protocol.md §9.1): a request whose first byte follows the previous
  line activity by < 10 ms is lost with p = 0.26, by 10-50 ms with p = 0.08, by ≥ 50 ms never;
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
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute

from ..devices.models import ChannelId, ProtocolKind, coerce_channel
from ..errors import (
    ErrorContext,
    ServomexConfigurationError,
    ServomexConnectionError,
    ServomexValidationError,
)
from ..settings import SerialSettings
from .model import (
    DEFAULT_4100D_CHANNELS,
    AnalyserModel,
    AsciiRequestSplitter,
    CoilWrite,
    ModbusRequest,
    RequestOutcome,
    RtuRequestSplitter,
    SimChannel,
    SimRequest,
    ascii_adu,
    corrupt_adu,
    rtu_adu,
)

if TYPE_CHECKING:
    from ..transport.sim import SimTransport

__all__ = [
    "FIRST_FRAME_DELAY_S",
    "SimLine",
    "SimStream",
    "Simulator",
    "TcpAddress",
    "lookup_line",
    "silence_drop_probability",
]

_log = logging.getLogger("servomexlib.sim")

#: A continuous-mode analyser sends its first frame this long after it is created (or switched
#: to continuous mode), so a host that opens the line at once sees a whole first frame quickly.
FIRST_FRAME_DELAY_S = 0.05
#: Bytes a stream buffers for a host that is not reading (an OS serial buffer is smaller);
#: past it the oldest emissions are dropped and counted.
MAX_STREAM_BUFFER = 65536
#: A receiving host is woken at most this often while bytes trickle in, so a paced reply
#: arrives in small chunks (as from a USB adapter) rather than one wake-up per character.
_MIN_WAKE_S = 0.001
#: At most this many missed continuous frames are generated after a long pause.
_MAX_CATCH_UP_FRAMES = 200
_TERMINATORS = (b"\r\n", b"\n", b"\r")
_TIME_EPSILON = 1e-9


def silence_drop_probability(gap_s: float, until_s: float | None = None) -> float:
    """Probability that a request is lost, given the silence before its first byte.

    Measured through a USB-RS485 adapter at 19200 baud (protocol.md §9.1): 0 ms → 26 %,
    10-20 ms → 8 %, 50 ms → 0 %. With ``until_s`` the harsh rule instead: 1 below it, else 0.
    """
    if until_s is not None:
        return 1.0 if gap_s < until_s else 0.0
    if gap_s < 0.010:
        return 0.26
    if gap_s < 0.050:
        return 0.08
    return 0.0


class TcpAddress(NamedTuple):
    """Where :meth:`Simulator.serve_tcp` listens; unpacks as ``(host, port)``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"


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
        await anyio.lowlevel.checkpoint()
        consumer = self._consumer
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
        self._clock: Callable[[], float] = primary.line_clock
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
        self._tg: anyio.abc.TaskGroup | None = None
        self._tmpdir: str | None = None
        self._links: list[str] = []
        self._pty_count = 0
        self.name = name
        for sim in simulators:
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
        return self._clock()

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
        # + 1 ns: line times are sums of floats, and a host that waited exactly 50 ms (virtual
        # time jumps straight to its deadline) must not come out a rounding error short.
        gap = self._gap_before(request.start) + _TIME_EPSILON
        lost = (
            self.realtime
            and self.silence_drop
            and roll < silence_drop_probability(gap, self.silence_drop_until_s)
        )
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

    async def _wait_vanished(self, vanished: bool) -> None:
        while self._vanished is not vanished:
            event = anyio.Event()
            self._state_waiters.append(event)
            await event.wait()

    # ---------------------------------------------------------------- servers

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise ServomexConfigurationError(f"{self.label} is already running")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The servers' task group wraps an error raised in the body (e.g. serve_tcp's
            # "could not listen"); when nothing else failed, let the body's error through as
            # itself, not as a one-member exception group.
            if exc is None or not all(leaf is exc for leaf in _leaves(group)):
                raise
        finally:
            self._cleanup_links()
        return None

    def _require_running(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ServomexConfigurationError(
                "the simulator is not running: use `async with sim:` before serving it"
            )
        return self._tg

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpAddress:
        """Listen for TCP connections; each one attaches to this line. Returns where.

        Raises:
            ServomexConfigurationError: the line is not running (``async with``).
            ServomexConnectionError: the address cannot be listened on (port in use, unknown
                host, no permission) — raised here, naming ``tcp://HOST:PORT``.
        """
        tg = self._require_running()
        listener = await _listen_tcp(host, port)
        address = TcpAddress(host, int(listener.extra(SocketAttribute.local_port)))
        try:
            await tg.start(self._run_tcp, listener, address)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            raise
        return address

    async def serve_pty(self) -> str:
        """Serve the line on a new pseudo-terminal; returns a stable path to it.

        The path is a symlink in a temporary directory this line creates and owns; it points
        at the current ``/dev/pts/N`` and survives :meth:`vanish` / :meth:`reappear` (while
        vanished it is absent). Leaving ``async with`` removes the link and the directory.

        Raises:
            ServomexConfigurationError: not running, or no pseudo-terminals on this platform.
        """
        tg = self._require_running()
        if sys.platform == "win32" or not hasattr(os, "openpty"):
            raise ServomexConfigurationError(
                "pseudo-terminals are not available on this platform; serve over TCP instead"
            )
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="servomexlib-sim-")
        link = os.path.join(self._tmpdir, f"tty{self._pty_count}")
        self._pty_count += 1
        await tg.start(self._run_pty, link)
        return link

    def _cleanup_links(self) -> None:
        for link in self._links:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        self._links.clear()
        if self._tmpdir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmpdir)
            self._tmpdir = None

    async def _run_tcp(
        self,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        address: TcpAddress,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``listener``; after a vanish/reappear cycle listen on the same port again."""
        current: anyio.abc.Listener[anyio.abc.SocketStream] | None = listener
        _log.info("simulator %s listening on %s", self.label, address.url)
        task_status.started()
        while True:
            try:
                while current is None:
                    await self._wait_vanished(False)
                    try:
                        current = await _listen_tcp(address.host, address.port)
                    except ServomexConnectionError as exc:
                        # Someone took the port while the device was away: keep trying.
                        _log.warning("simulator %s: %s; retrying", self.label, exc)
                        await anyio.sleep(0.5)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(current.serve, self._serve_connection, tg)
                    await self._wait_vanished(True)
                    tg.cancel_scope.cancel()
            finally:
                if current is not None:
                    await current.aclose()
                current = None

    async def _serve_connection(self, conn: anyio.abc.ByteStream) -> None:
        async with conn:
            try:
                stream = self.open_stream()
            except ServomexConnectionError:
                return
            async with stream, anyio.create_task_group() as tg:

                async def upstream() -> None:
                    with contextlib.suppress(
                        anyio.EndOfStream,
                        anyio.BrokenResourceError,
                        anyio.ClosedResourceError,
                        OSError,
                    ):
                        while True:
                            await stream.send(await conn.receive())
                    tg.cancel_scope.cancel()

                async def downstream() -> None:
                    with contextlib.suppress(
                        anyio.EndOfStream,
                        anyio.BrokenResourceError,
                        anyio.ClosedResourceError,
                        OSError,
                    ):
                        while True:
                            await conn.send(await stream.receive())
                    tg.cancel_scope.cancel()

                tg.start_soon(upstream)
                tg.start_soon(downstream)

    async def _run_pty(
        self, link: str, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        import tty  # POSIX only: imported here so the module loads everywhere

        started = False
        while True:
            await self._wait_vanished(False)
            master, slave = os.openpty()
            try:
                # Raw: no echo, no line discipline; the client sets its own modes when it opens.
                tty.setraw(slave)
                os.set_blocking(master, False)
                target = os.ttyname(slave)
                tmp = link + ".new"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                os.symlink(target, tmp)
                os.replace(tmp, link)
                if link not in self._links:
                    self._links.append(link)
                stream = self.open_stream()
                if not started:
                    _log.info("simulator %s serving %s -> %s", self.label, link, target)
                    task_status.started()
                    started = True
                async with stream, anyio.create_task_group() as tg:
                    tg.start_soon(self._pty_reader, master, stream)
                    tg.start_soon(self._pty_writer, master, stream)
                    await self._wait_vanished(True)
                    tg.cancel_scope.cancel()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link)
                os.close(master)
                os.close(slave)

    @staticmethod
    async def _pty_reader(master: int, stream: SimStream) -> None:
        while True:
            await anyio.wait_readable(master)
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                # EIO while no client has the slave open on some systems: wait and retry.
                await anyio.sleep(0.05)
                continue
            if data:
                try:
                    await stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    @staticmethod
    async def _pty_writer(master: int, stream: SimStream) -> None:
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            view = memoryview(data)
            while view:
                try:
                    written = os.write(master, view)
                except BlockingIOError:
                    # Nobody is draining the terminal: wait a little, then drop (a UART does not
                    # wait for the host).
                    with anyio.move_on_after(0.1):
                        await anyio.wait_writable(master)
                        continue
                    break
                view = view[written:]


# --------------------------------------------------------------------------------------------
# The simulator


def _coerce_channels(channels: Iterable[SimChannel | ChannelId | str]) -> list[SimChannel]:
    from .presets import default_channel

    out = []
    for item in channels:
        out.append(item if isinstance(item, SimChannel) else default_channel(item))
    return out


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _listen_tcp(host: str, port: int) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    """A TCP listener on ``host:port``; OS errors become one ServomexConnectionError."""
    url = f"tcp://{host}:{port}"
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ServomexConnectionError(
            f"could not listen on {url}: {reason}", context=ErrorContext(port=url)
        ) from exc


def _read_clock(clock: Callable[[], float]) -> float:
    try:
        return float(clock())
    except Exception as exc:
        raise ServomexConfigurationError(
            f"the simulator's line_clock failed ({exc}); a clock such as anyio.current_time "
            "needs a running event loop: build the simulator inside it"
        ) from exc


def _check_latency(latency_s: float | tuple[float, float] | Sequence[float]) -> tuple[float, float]:
    if isinstance(latency_s, int | float):
        lo = hi = float(latency_s)
    else:
        values = [float(v) for v in latency_s]
        if len(values) != 2:
            raise ServomexValidationError(f"latency_s must be (min, max), got {latency_s!r}")
        lo, hi = values
    if not 0.0 <= lo <= hi:
        raise ServomexValidationError(f"latency_s must satisfy 0 <= min <= max, got {latency_s!r}")
    return lo, hi


class Simulator:
    """A simulated SERVOPRO 4100, byte-exact in continuous, Modbus RTU and Modbus ASCII mode.

    Args:
        mode: wire mode.
        address: Modbus slave address 1-247.
        channels: 3-7 :class:`SimChannel` configs (or channel ids for the default config of
            that slot); default the measured 4100D: I1 Oxygen, I2 CO, I3 CO₂, E1, E2.
        name: registers the simulator's line for ``sim://<name>``.
        serial: the line settings (default ``SerialSettings(port="sim://…")``, 19200 8-N-1).
        frame_period: seconds between continuous frames; 0 = no frames.
        terminator: continuous frame terminator: ``b"\\r\\n"``, ``b"\\n"`` or ``b"\\r"``.
        latency_s: (min, max) reply turnaround in seconds, or one number.
        silence_drop: apply the measured silence rule (realtime only).
        silence_drop_until_s: the harsh silence rule instead of the measured one: every request
            following less than this many seconds of line silence is lost (realtime, with
            ``silence_drop``); None (default) keeps the measured rule.
        reject_gaps: answer exception 02 to reads touching an unpopulated slot.
        realtime: pace bytes, add turnaround and drops; False for fast unit tests.
        seed: seeds every random choice (noise, turnaround, drops).
        clock: the analyser clock at creation (naive datetime); None → the host clock.
        baudrate: pace the line at this rate instead of ``serial.baudrate`` (e.g. 115200 for
            benchmarks; ``SerialSettings`` itself only accepts 2400-19200).
        line_clock: the line's monotonic clock in seconds; None → ``time.monotonic`` (the host
            clock, which pty and TCP serving want). ``anyio.current_time`` runs the line on the
            event loop's clock, e.g. trio's ``MockClock`` for tests on virtual time; it is read
            once here, so build the simulator inside the event loop then.

    Scenario methods are synchronous and take effect at the next frame or reply.

    Raises:
        ServomexValidationError: any bad argument.
    """

    def __init__(
        self,
        *,
        mode: ProtocolKind | str = ProtocolKind.MODBUS_RTU,
        address: int = 1,
        channels: Iterable[SimChannel | ChannelId | str] = DEFAULT_4100D_CHANNELS,
        name: str | None = None,
        serial: SerialSettings | None = None,
        frame_period: float = 2.0,
        terminator: bytes = b"\r\n",
        latency_s: float | tuple[float, float] = (0.015, 0.030),
        silence_drop: bool = True,
        silence_drop_until_s: float | None = None,
        reject_gaps: bool = False,
        realtime: bool = True,
        seed: int = 0,
        clock: datetime | None = None,
        baudrate: int | None = None,
        line_clock: Callable[[], float] | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ServomexValidationError(f"simulator name must be a non-empty word, got {name!r}")
        self.name = name
        self.label = f"sim://{name}" if name else "sim://"
        if serial is None:
            serial = SerialSettings(port=self.label)
        elif not isinstance(serial, SerialSettings):
            raise ServomexValidationError(f"serial must be SerialSettings, got {serial!r}")
        self.serial_settings = serial
        if baudrate is not None and (
            isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0
        ):
            raise ServomexValidationError(f"baudrate must be a positive integer, got {baudrate!r}")
        self.baudrate = baudrate if baudrate is not None else serial.baudrate
        self.char_time = serial.bits_per_char / self.baudrate
        if not isinstance(frame_period, int | float) or frame_period < 0:
            raise ServomexValidationError(f"frame_period must be >= 0, got {frame_period!r}")
        self.frame_period = float(frame_period)
        if terminator not in _TERMINATORS:
            raise ServomexValidationError(f"terminator must be CR LF, LF or CR, got {terminator!r}")
        self.terminator = bytes(terminator)
        self.latency_s = _check_latency(latency_s)
        self.silence_drop = bool(silence_drop)
        if silence_drop_until_s is not None and (
            isinstance(silence_drop_until_s, bool)
            or not isinstance(silence_drop_until_s, int | float)
            or not math.isfinite(silence_drop_until_s)
            or silence_drop_until_s < 0
        ):
            raise ServomexValidationError(
                f"silence_drop_until_s must be None or seconds >= 0, got {silence_drop_until_s!r}"
            )
        self.silence_drop_until_s = (
            None if silence_drop_until_s is None else float(silence_drop_until_s)
        )
        self.realtime = bool(realtime)
        self.seed = int(seed)
        self._rng = random.Random(f"{self.seed}:turnaround")
        self._reply_loss_rng = random.Random(f"{self.seed}:reply-loss")
        if line_clock is not None and not callable(line_clock):
            raise ServomexValidationError(f"line_clock must be callable, got {line_clock!r}")
        self.line_clock: Callable[[], float] = line_clock or time.monotonic
        now = _read_clock(self.line_clock)
        self.model = AnalyserModel(
            _coerce_channels(channels),
            mode=mode,
            address=address,
            reject_gaps=reject_gaps,
            seed=self.seed,
            clock_origin=clock if clock is not None else datetime.now(),
            now=now,
        )
        self._requests: deque[SimRequest] = deque(maxlen=100_000)
        self._drop_next = 0
        self._corrupt_next = 0
        self._delays: deque[float] = deque()
        self._reply_loss = 0.0
        self._counter_channel: ChannelId | None = None
        self._request_count = 0
        self._muted = False
        self._next_frame: float | None = (
            now + FIRST_FRAME_DELAY_S if self.model.mode is ProtocolKind.CONTINUOUS_ASCII else None
        )
        self._line: SimLine | None = None
        SimLine(self, name=name)

    def __repr__(self) -> str:
        return (
            f"<Simulator {self.label} mode={self.mode.value} address={self.address}"
            f" channels={','.join(c.value for c in self.model.channel_ids)}>"
        )

    # ---------------------------------------------------------------- line membership

    def _move_to(self, line: SimLine) -> None:
        if self._line is not None:
            self._line._remove(self)
        self._line = line
        line._add(self)

    @property
    def line(self) -> SimLine:
        assert self._line is not None
        return self._line

    def now(self) -> float:
        """The line clock (``line_clock``, by default ``time.monotonic()``) driving the model."""
        return self.line.now()

    # ---------------------------------------------------------------- inspection

    @property
    def mode(self) -> ProtocolKind:
        return self.model.mode

    @property
    def address(self) -> int:
        return self.model.address

    @property
    def channels(self) -> tuple[SimChannel, ...]:
        return self.model.channels

    @property
    def coil_log(self) -> tuple[CoilWrite, ...]:
        """Every FC05 write received, with the action it triggered."""
        return tuple(self.model.coil_log)

    @property
    def requests(self) -> tuple[SimRequest, ...]:
        """Every Modbus request seen in this simulator's framing: (time, ADU, outcome, reply)."""
        return tuple(self._requests)

    @property
    def muted(self) -> bool:
        return self._muted

    def frame(self) -> bytes:
        """The continuous frame the analyser would send now (whatever its mode)."""
        return self.model.continuous_frame(self.now(), terminator=self.terminator)

    # ---------------------------------------------------------------- scenario control

    def set_value(self, ch: ChannelId | str, v: float | None) -> None:
        """Set a channel's value; None → over-range."""
        self.model.set_value(ch, v, now=self.now())

    def over_range(self, ch: ChannelId | str) -> None:
        self.model.over_range(ch, now=self.now())

    def drift(
        self,
        ch: ChannelId | str,
        *,
        rate_per_s: float = 0.0,
        noise: float = 0.0,
        target: float | None = None,
    ) -> None:
        self.model.drift(ch, rate_per_s=rate_per_s, noise=noise, target=target, now=self.now())

    def set_name(
        self,
        ch: ChannelId | str,
        name: str | None,
        *,
        name_bytes: bytes | None = None,
        continuous_name: str | None = None,
    ) -> None:
        self.model.set_name(ch, name, name_bytes=name_bytes, continuous_name=continuous_name)

    def set_fault(self, ch: ChannelId | str, on: bool = True) -> None:
        self.model.set_fault(ch, on)

    def set_maintenance(self, ch: ChannelId | str, on: bool = True) -> None:
        self.model.set_maintenance(ch, on)

    def set_alarm(self, ch: ChannelId | str, n: int, on: bool = True) -> None:
        self.model.set_alarm(ch, n, on)

    def set_invalid(self, ch: ChannelId | str, on: bool = True) -> None:
        self.model.set_invalid(ch, on)

    def set_analyser(self, *, fault: bool | None = None, maintenance: bool | None = None) -> None:
        self.model.set_analyser(fault=fault, maintenance=maintenance)

    def warm_up(self, seconds: float, channels: Iterable[ChannelId | str] | None = None) -> None:
        self.model.warm_up(seconds, channels, now=self.now())

    def configure_calibration(
        self,
        group: int,
        *,
        channels: Iterable[ChannelId | str],
        gas1_s: float = 30.0,
        gas2_s: float = 30.0,
    ) -> None:
        self.model.configure_calibration(group, channels=channels, gas1_s=gas1_s, gas2_s=gas2_s)

    def start_calibration(self, group: int) -> bool:
        """Start cal group ``group`` now, as a coil edge would; False if already running."""
        if group not in (1, 2, 3, 4):
            raise ServomexValidationError(f"calibration group must be 1-4, got {group!r}")
        return self.model.start_calibration(group, now=self.now())

    def stop_calibration(self) -> None:
        self.model.stop_calibration()

    def set_clock(self, dt: datetime) -> None:
        self.model.set_clock(dt, now=self.now())

    def set_mode(self, kind: ProtocolKind | str) -> None:
        self.model.set_mode(kind)
        self._next_frame = (
            self.now() + FIRST_FRAME_DELAY_S
            if self.model.mode is ProtocolKind.CONTINUOUS_ASCII
            else None
        )
        self.line.wake_all()

    def set_address(self, n: int) -> None:
        self.model.set_address(n)

    def drop_next(self, n: int = 1) -> None:
        """Process the next ``n`` addressed requests but send no reply."""
        self._drop_next += max(0, int(n))

    def corrupt_next(self, n: int = 1) -> None:
        """Send the next ``n`` replies with a broken CRC/LRC."""
        self._corrupt_next += max(0, int(n))

    def delay_next(self, seconds: float, n: int = 1) -> None:
        """Transmit the next ``n`` replies ``seconds`` later than normal (a slow or busy slave).

        Only replies that are transmitted use a delay (dropped, lost and muted ones do not;
        corrupted ones do). Replies go out in order, so the replies behind a delayed one wait
        for it: one long delay postpones everything after it, as on a real serial line. A
        delayed reply is recorded in :attr:`requests` with its ``delay_s``, as ``DELAYED``
        (a delayed exception or corrupted reply keeps that outcome). Calls queue up:
        ``delay_next(0.5)`` then ``delay_next(0.2)`` delays the next reply by 0.5 s and the
        one after it by 0.2 s.

        Raises:
            ServomexValidationError: ``seconds`` negative or not finite, ``n`` negative.
        """
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ServomexValidationError(f"delay must be >= 0 seconds, got {seconds!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ServomexValidationError(f"n must be a count >= 0, got {n!r}")
        self._delays.extend([float(seconds)] * n)

    def lose_replies(self, fraction: float) -> None:
        """From now on lose each reply with probability ``fraction`` (0 turns it off).

        The request is still received and applied; its reply is not sent (recorded as
        ``DROPPED``). Draws come from a generator seeded by ``seed`` — one per addressed
        request while ``fraction`` > 0 — so the same traffic loses the same replies.

        Raises:
            ServomexValidationError: ``fraction`` outside 0-1.
        """
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0.0 <= fraction <= 1.0
        ):
            raise ServomexValidationError(f"reply loss must be 0-1, got {fraction!r}")
        self._reply_loss = float(fraction)

    def count_requests(self, ch: ChannelId | str | None) -> None:
        """Make channel ``ch`` a request counter; None stops (the value stays where it is).

        Whenever the analyser builds a reply, ``ch``'s value is set to :attr:`request_count`
        — the requests received so far, this one included — so a reading from ``ch`` tells
        which request it answers: a reply to a request sent after the host read
        ``request_count`` carries a larger number than it read. The count reaches the
        continuous frames too (it is the channel's value).

        Raises:
            ServomexValidationError: ``ch`` is not simulated.
        """
        if ch is None:
            self._counter_channel = None
            return
        self.model.value(ch, self.now())  # validates that the slot is simulated
        self._counter_channel = coerce_channel(ch)
        self.model.set_value(self._counter_channel, float(self._request_count), now=self.now())

    @property
    def request_count(self) -> int:
        """Requests this analyser has received: a valid checksum, its own address, not lost to
        the silence rule — whatever became of the reply (dropped, delayed, muted)."""
        return self._request_count

    def mute(self, on: bool = True) -> None:
        """Stop (or resume) transmitting: no replies, no frames. Requests are still applied."""
        self._muted = bool(on)

    def inject(self, raw_bytes: bytes) -> None:
        """Put raw bytes on the line now, whatever the mode."""
        line = self.line
        line.transmit(bytes(raw_bytes), line.now())

    def vanish(self) -> None:
        """Make the device disappear from its line (see :meth:`SimLine.vanish`)."""
        self.line.vanish()

    def reappear(self) -> None:
        """Bring a vanished device back (see :meth:`SimLine.reappear`)."""
        self.line.reappear()

    @property
    def vanished(self) -> bool:
        return self.line.vanished

    # ---------------------------------------------------------------- access

    def open_stream(self) -> SimStream:
        """A raw in-process byte stream attached to this simulator's line."""
        return self.line.open_stream()

    def transport(self) -> SimTransport:
        """An in-process :class:`~servomexlib.transport.sim.SimTransport` on this line."""
        from ..transport.sim import SimTransport

        return SimTransport(
            self.line.open_stream(),
            label=self.label,
            serial_settings=self.serial_settings,
            char_time_s=self.line.paced_char_time,
        )

    async def __aenter__(self) -> Self:
        await self.line.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self.line.__aexit__(exc_type, exc, tb)

    async def serve_pty(self) -> str:
        """Serve the line on a pseudo-terminal; returns its stable path (POSIX)."""
        return await self.line.serve_pty()

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpAddress:
        """Listen on TCP; every connection attaches to the same line. Returns ``(host, port)``."""
        return await self.line.serve_tcp(host, port)

    # ---------------------------------------------------------------- line callbacks

    def _frame_adu(self, pdu: bytes) -> bytes:
        if self.mode is ProtocolKind.MODBUS_ASCII:
            return ascii_adu(self.address, pdu)
        return rtu_adu(self.address, pdu)

    def _answer(self, pdu: bytes, at: float) -> bytes:
        """The response PDU to a request PDU addressed to this analyser (a test seam)."""
        return self.model.handle_pdu(pdu, at)

    def _on_request(self, request: ModbusRequest, lost: bool, now: float) -> None:
        record = self._requests.append
        if not request.valid:
            record(SimRequest(request.start, request.adu, RequestOutcome.BAD_CHECKSUM))
            return
        if request.address == 0:
            record(SimRequest(request.start, request.adu, RequestOutcome.BROADCAST))
            return
        if request.address != self.address:
            record(SimRequest(request.start, request.adu, RequestOutcome.OTHER_ADDRESS))
            return
        if lost:
            record(SimRequest(request.start, request.adu, RequestOutcome.SILENCE_DROPPED))
            return
        turnaround = self._rng.uniform(*self.latency_s)
        lose = self._reply_loss > 0.0 and self._reply_loss_rng.random() < self._reply_loss
        line = self.line
        at = request.end if line.realtime else now
        self._request_count += 1
        if self._counter_channel is not None:
            self.model.set_value(self._counter_channel, float(self._request_count), now=at)
        pdu = self._answer(request.pdu, at)
        reply = self._frame_adu(pdu)
        outcome = RequestOutcome.EXCEPTION if pdu[0] & 0x80 else RequestOutcome.ANSWERED
        send = True
        delay = 0.0
        if self._muted:
            outcome, send = RequestOutcome.MUTED, False
        elif self._drop_next > 0:
            self._drop_next -= 1
            outcome, send = RequestOutcome.DROPPED, False
        elif lose:
            outcome, send = RequestOutcome.DROPPED, False
        else:
            if self._corrupt_next > 0:
                self._corrupt_next -= 1
                reply = corrupt_adu(reply, self.mode)
                outcome = RequestOutcome.CORRUPTED
            if self._delays:
                delay = self._delays.popleft()
                if delay > 0.0 and outcome is RequestOutcome.ANSWERED:
                    outcome = RequestOutcome.DELAYED
        record(SimRequest(request.start, request.adu, outcome, reply, delay))
        if send:
            line.transmit(reply, (at + turnaround if line.realtime else now) + delay)

    def _emit_frames(self, now: float) -> None:
        if self.model.mode is not ProtocolKind.CONTINUOUS_ASCII or self.frame_period <= 0:
            self._next_frame = None
            return
        if self._next_frame is None:
            self._next_frame = now + FIRST_FRAME_DELAY_S
        period = self.frame_period
        behind = now - self._next_frame
        if behind > _MAX_CATCH_UP_FRAMES * period:
            self._next_frame += period * (math.floor(behind / period) - _MAX_CATCH_UP_FRAMES)
        line = self.line
        while self._next_frame <= now:
            t = self._next_frame
            self._next_frame = t + period
            if self._muted or not line.has_listeners:
                continue
            line.transmit(self.model.continuous_frame(t, terminator=self.terminator), t)
