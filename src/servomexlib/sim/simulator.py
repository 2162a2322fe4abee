"""The :class:`Simulator` facade: one simulated SERVOPRO 4100 on a line (docs/simulator.md).

Theory of operation
-------------------
A ``Simulator`` joins the pure device model (:class:`~servomexlib.sim.model.AnalyserModel`:
what the analyser *is* and *says*) to a line (:class:`~servomexlib.sim.line.SimLine`: *when*
bytes move). It is built from one :class:`~servomexlib.sim.config.SimConfig` — its keyword
arguments are that config's fields — and starts on a line of its own; ``SimLine(a, b)`` puts
several on one bus.

The line calls back into the simulator: :meth:`Simulator._on_request` for every request cut
from the bytes a host wrote in this simulator's framing (it records the outcome, lets the
model answer, applies the fault injections and transmits the reply), and
:meth:`Simulator._emit_frames` to generate the continuous frames that have fallen due.

Scenario methods are synchronous and work anywhere, also outside an event loop: each takes
effect at the simulator's current line time (:meth:`now`; before the line is first used inside
an event loop that is host time, see :mod:`servomexlib.sim.clock`).

Public seams for tests replace subclassing: :meth:`on_request` (a hook that sees each request
the analyser receives, before it is answered — it may drop, delay or corrupt that reply, or
inject bytes ahead of it), :meth:`override_reply` (answer some PDUs differently from the
model) and :meth:`refuse` (answer one function code with an exception, e.g. firmware without
FC08). Each returns a function that undoes it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ..devices.models import ChannelId, ProtocolKind, coerce_channel
from ..errors import ServomexConfigurationError, ServomexValidationError
from ..settings import SerialSettings
from .channels import DEFAULT_4100D_CHANNELS, SimChannel
from .clock import LineClock
from .config import SimConfig, check_latency, coerce_channels
from .framing import ModbusRequest, RequestOutcome, SimRequest, ascii_adu, corrupt_adu, rtu_adu
from .line import SimLine, SimStream
from .model import AnalyserModel, CoilWrite, check_mode
from .presets import apply_preset
from .scenario import AnalyserScenario

if TYPE_CHECKING:
    from ..transport.sim import SimTransport
    from .servers import TcpAddress

__all__ = ["FIRST_FRAME_DELAY_S", "ReplyOverride", "RequestHook", "Simulator"]

#: A continuous-mode analyser sends its first frame this long after it is created (or switched
#: to continuous mode), so a host that opens the line at once sees a whole first frame quickly.
FIRST_FRAME_DELAY_S = 0.05
#: At most this many missed continuous frames are generated after a long pause.
_MAX_CATCH_UP_FRAMES = 200

#: ``hook(request)``: sees a request the analyser received, before it is counted and answered.
RequestHook = Callable[[ModbusRequest], None]
#: ``answer(pdu, at)``: the response PDU for a request PDU, or None to let the model answer.
ReplyOverride = Callable[[bytes, float], bytes | None]


def _read_clock(clock: LineClock) -> float:
    try:
        return clock.now()
    except Exception as exc:
        raise ServomexConfigurationError(
            f"the simulator's line_clock failed ({exc}); a clock such as anyio.current_time "
            "needs a running event loop: build the simulator inside it (or leave line_clock "
            "unset: the default follows the event loop that uses the line)"
        ) from exc


def _remover(items: list[Callable[..., object]], item: Callable[..., object]) -> Callable[[], None]:
    def remove() -> None:
        if item in items:
            items.remove(item)

    return remove


class Simulator(AnalyserScenario):
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
        line_clock: the line's monotonic clock in seconds. None (the default) follows the
            event loop that uses the line — virtual time under trio's ``MockClock`` or an
            asyncio loop on virtual time — and the host clock once the line is served on a
            pty or TCP (:mod:`servomexlib.sim.clock`); the simulator may be built outside any
            loop. An explicit clock is used as given and read here.

    The keyword arguments are the fields of :class:`~servomexlib.sim.config.SimConfig`
    (``address`` → ``addresses``); :meth:`from_config` builds from one, and :attr:`config`
    is the one this simulator was built from. Scenario methods are synchronous and take effect
    at the next frame or reply.

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
        config = SimConfig(
            mode=check_mode(mode),
            addresses=(address,),
            channels=coerce_channels(channels),
            name=name,
            serial=serial,
            frame_period=frame_period,
            terminator=terminator,
            latency_s=check_latency(latency_s),
            silence_drop=silence_drop,
            silence_drop_until_s=silence_drop_until_s,
            reject_gaps=reject_gaps,
            realtime=realtime,
            seed=seed,
            clock=clock,
            baudrate=baudrate,
            line_clock=line_clock,
        )
        #: The configuration this simulator was built from (its address is the first one).
        self.config = config
        self.name = config.name
        self.label = config.label
        self.serial_settings = config.serial_settings
        self.baudrate = config.pace_baudrate
        self.char_time = config.char_time
        self.frame_period = config.frame_period
        self.terminator = config.terminator
        self.latency_s = config.latency_s
        self.silence_drop = config.silence_drop
        self.silence_drop_until_s = config.silence_drop_until_s
        self.realtime = config.realtime
        self.seed = config.seed
        #: The explicit line clock, or None (the default: follow the event loop).
        self.line_clock = config.line_clock
        self._rng = random.Random(f"{self.seed}:turnaround")
        self._reply_loss_rng = random.Random(f"{self.seed}:reply-loss")
        self._timeline = LineClock(config.line_clock)
        now = _read_clock(self._timeline)
        self.model = AnalyserModel(
            config.channels,
            mode=config.mode,
            address=config.addresses[0],
            reject_gaps=config.reject_gaps,
            seed=self.seed,
            clock_origin=config.clock if config.clock is not None else datetime.now(),
            now=now,
        )
        self._requests: deque[SimRequest] = deque(maxlen=100_000)
        self._drop_next = 0
        self._corrupt_next = 0
        # Runs of (seconds, replies left): one entry per delay_next() call, whatever its n.
        self._delays: deque[tuple[float, int]] = deque()
        self._reply_loss = 0.0
        self._counter_channel: ChannelId | None = None
        self._request_count = 0
        self._muted = False
        self._request_hooks: list[RequestHook] = []
        self._reply_overrides: list[ReplyOverride] = []
        self._next_frame: float | None = (
            now + FIRST_FRAME_DELAY_S if self.model.mode is ProtocolKind.CONTINUOUS_ASCII else None
        )
        self._line: SimLine | None = None
        SimLine(self, name=config.name)

    @classmethod
    def from_config(cls, config: SimConfig) -> Self:
        """The simulator ``config`` describes, with its ``scenario`` applied.

        Raises:
            ServomexValidationError: ``config`` has several addresses (use
                :meth:`SimConfig.build` for a multidrop line).
        """
        if len(config.addresses) != 1:
            raise ServomexValidationError(
                f"a Simulator is one analyser, the config has addresses {list(config.addresses)}:"
                " SimConfig.build() puts one per address on a line"
            )
        kwargs = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in ("addresses", "scenario")
        }
        sim = cls(address=config.addresses[0], **kwargs)
        sim.config = config
        if config.scenario is not None:
            apply_preset(sim, config.scenario)
        return sim

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

    def _shift_time(self, delta: float) -> None:
        self.model.shift_time(delta)
        if self._next_frame is not None:
            self._next_frame += delta

    @property
    def line(self) -> SimLine:
        assert self._line is not None
        return self._line

    @property
    def timeline(self) -> LineClock:
        """The clock reading this simulator's line time (its line's)."""
        return self._line.clock if self._line is not None else self._timeline

    def now(self) -> float:
        """Line time: the clock driving the model (see :attr:`timeline`)."""
        return self.timeline.now()

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

    # ---------------------------------------------------------------- scenario control (and the
    # model-level methods inherited from AnalyserScenario)

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
        if n:
            self._delays.append((float(seconds), n))

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
        return self.line.open_transport(self.label)

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

    # ---------------------------------------------------------------- test seams

    def on_request(self, hook: RequestHook) -> Callable[[], None]:
        """Call ``hook(request)`` for every request this analyser receives.

        "Receives": a valid checksum, its own address, not lost to the silence rule — the
        requests :attr:`request_count` counts. The hook runs before the request is counted and
        answered, so scenario calls it makes apply to this request's reply: ``drop_next(1)``
        loses it, ``delay_next(s)`` delays it, ``corrupt_next(1)`` breaks it, ``inject(raw)``
        puts bytes on the line ahead of it, ``set_value`` changes what it reports. Hooks run
        in the order they were added. Returns a function that removes the hook (idempotent;
        a hook may remove itself).
        """
        if not callable(hook):
            raise ServomexValidationError(f"on_request needs a callable, got {hook!r}")
        self._request_hooks.append(hook)
        return _remover(self._request_hooks, hook)  # type: ignore[arg-type]

    def override_reply(self, answer: ReplyOverride) -> Callable[[], None]:
        """Answer request PDUs with ``answer(pdu, at)`` instead of the model.

        ``pdu`` is the request PDU (function code + data), ``at`` the line time the request
        was complete. Return the response PDU (normal or exception: ``bytes((fc | 0x80,
        code))``), or None to let the next override — and finally the model — answer. The
        newest override is asked first. An overridden request does not reach the model (a
        refused coil write changes nothing); framing, fault injection and the request log
        apply as usual. Returns a function that removes the override.
        """
        if not callable(answer):
            raise ServomexValidationError(f"override_reply needs a callable, got {answer!r}")
        self._reply_overrides.append(answer)
        return _remover(self._reply_overrides, answer)  # type: ignore[arg-type]

    def refuse(self, function_code: int, exception: int = 0x01) -> Callable[[], None]:
        """Answer every request with ``function_code`` by exception ``exception``.

        ``refuse(0x08)`` is firmware without diagnostics (exception 01, illegal function);
        ``refuse(0x04, exception=0x04)`` an analyser whose register reads fail (device
        failure). Returns a function that stops refusing.

        Raises:
            ServomexValidationError: ``function_code`` not 1-127 or ``exception`` not 1-255.
        """
        for what, value, top in (
            ("function_code", function_code, 127),
            ("exception", exception, 255),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ServomexValidationError(f"{what} must be 1-{top}, got {value!r}")
        head = bytes((function_code,))
        reply = bytes((function_code | 0x80, exception))

        def answer(pdu: bytes, at: float) -> bytes | None:
            return reply if pdu[:1] == head else None

        return self.override_reply(answer)

    # ---------------------------------------------------------------- line callbacks

    def _frame_adu(self, pdu: bytes) -> bytes:
        if self.mode is ProtocolKind.MODBUS_ASCII:
            return ascii_adu(self.address, pdu)
        return rtu_adu(self.address, pdu)

    def _answer(self, pdu: bytes, at: float) -> bytes:
        """The response PDU to a request PDU addressed to this analyser."""
        for answer in reversed(self._reply_overrides):
            reply = answer(pdu, at)
            if reply is not None:
                return bytes(reply)
        return self.model.handle_pdu(pdu, at)

    def _next_delay(self) -> float:
        if not self._delays:
            return 0.0
        seconds, left = self._delays[0]
        if left <= 1:
            self._delays.popleft()
        else:
            self._delays[0] = (seconds, left - 1)
        return seconds

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
        for hook in tuple(self._request_hooks):
            hook(request)
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
            delay = self._next_delay()
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
