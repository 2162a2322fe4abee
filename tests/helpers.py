"""Shared test helpers: wire-layer decoding, and pseudo-terminals.

The acceptance rule for decoders: every input is fed whole, one byte at a time, and wrapped in
garbage, and all three ways must give identical results. :func:`decode_all_ways` does exactly
that through the real pipeline (:class:`FrameSplitter` then :func:`parse_frame`) and returns the
common result, so a test only asserts on values once.

Pseudo-terminals, the one way every test gets one:

* :func:`served_on_pty` — a simulator (or a simulated multidrop line) running and served on a
  fresh pty, ``async with served_on_pty(Simulator(mode=…)) as (sim, path):``; the simulator is
  stopped and the pty closed when the block ends.
* :class:`PtyFeeder` (the ``pty`` fixture of conftest.py) — the analyser side of a raw pty the
  test writes into itself, for byte-exact feeds the simulator does not make.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

import anyio
import pytest

from servomexlib.clients.continuous import ContinuousStatistics
from servomexlib.clients.modbus import ModbusStatistics
from servomexlib.devices.models import ChannelId, ChannelStatus, Frame, idle_cal_groups
from servomexlib.errors import ServomexProtocolError
from servomexlib.wire.continuous import (
    FrameSplitter,
    build_frame,
    format_block,
    format_header,
    format_value,
    frame_length,
    parse_frame,
)

DATA = Path(__file__).parent / "data"
IDLE_CAPTURE = DATA / "continuous_4100_idle_5ch.bin"
LIVE_CAPTURE = DATA / "continuous_4100_live_5ch.bin"

#: Every frame decoded by the helpers carries these stamps, so frames compare equal.
RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
MONOTONIC_NS = 123_456_789

#: The worked frame of protocol.md §3.6, byte for byte (206 bytes with CR LF).
WORKED_FRAME = (
    b" 14-03-24;09:05:30;F ;S1C2S1S1;05;"
    b"I1;Oxygen;20.950; % ;    ;  ; ; ;"
    b"I2;CO    ; 0.012; % ;    ;F ; ; ;"
    b"I3;CO2   ; 1.875; % ;    ;  ;C; ;"
    b"E1;||||||;   4.0; mA;    ;  ; ; ;"
    b"E2;||||||;   0.0; mA;    ;  ; ; ;"
    b"2A8C;\r\n"
)

# Whole junk lines put before and after the input. None of them is a frame; one is a frame
# fragment as seen when the receiver joins mid-frame, one is only spaces (dropped as blank).
LEADING_JUNK_LINES = (
    b"\x00\x01\x02garbage;line;;",
    b"\xff\xfe\xfd\x80",
    b";S1S1S1S1;05;I1;Oxygen;20.376; % ;    ;  ; ; ;",
    b"   ",
)
TRAILING_JUNK_LINES = (
    b"#tail noise ;05;",
    b" 06-10-20;02:54",
)
# Junk glued to each input line (same line, no terminator in between). The prefix contains a
# space and a plausible ";05;" so the splitter's frame search has something to reject.
GLUE_PREFIX = b"\x13\x11noise ;;05;xx"
GLUE_SUFFIX = b"\x00;2A1D;junk\x7f"

Outcome = Frame | ServomexProtocolError
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|$)")

if TYPE_CHECKING:
    from servomexlib.devices.analyzer import Analyzer


def is_standard_width(raw: bytes) -> bool:
    """True when ``raw`` is as long as its N field says (39 + 33·N without terminator)."""
    body = raw.rstrip(b"\r\n")
    digits = body[31:33]
    return digits.isdigit() and len(body) == frame_length(int(digits))


def parse(raw: bytes) -> Frame:
    """:func:`parse_frame` with the helpers' fixed stamps."""
    return parse_frame(raw, received_at=RECEIVED_AT, monotonic_ns=MONOTONIC_NS)


def capture_frames(path: Path) -> list[bytes]:
    """The frames of a capture file, terminators removed (a plain split, no library code)."""
    return [line for line in path.read_bytes().split(b"\n") if line]


def split(data: bytes, chunk: int | None) -> list[bytes]:
    """Run ``data`` through a fresh splitter whole (``chunk=None``) or ``chunk`` bytes at a time."""
    splitter = FrameSplitter()
    segments: list[bytes] = []
    if chunk is None:
        segments += splitter.feed(data)
    else:
        for i in range(0, len(data), chunk):
            segments += splitter.feed(data[i : i + chunk])
            assert splitter.buffered <= splitter.max_segment
    segments += splitter.flush()
    assert splitter.buffered == 0
    return segments


def parse_segments(segments: list[bytes]) -> list[Outcome]:
    """Parse every segment; a protocol error is an outcome, anything else propagates."""
    outcomes: list[Outcome] = []
    for segment in segments:
        try:
            outcomes.append(parse(segment))
        except ServomexProtocolError as exc:
            outcomes.append(exc)
    return outcomes


def with_garbage(data: bytes, *, glue: bool = True) -> bytes:
    """``data`` between junk lines; with ``glue`` every line of it also gets junk on both sides."""
    body = bytearray()
    for match in _LINE.finditer(data):
        content, terminator = match.group(1), match.group(2)
        if not content and not terminator:
            continue
        if content and glue:
            content = GLUE_PREFIX + content + GLUE_SUFFIX
        body += content + terminator
    if body and body[-1] not in b"\r\n":
        body += b"\n"
    lead = b"".join(line + b"\n" for line in LEADING_JUNK_LINES)
    # The trailing junk uses CR and CR LF terminators so mixed line ends are exercised too.
    trail = TRAILING_JUNK_LINES[0] + b"\r" + TRAILING_JUNK_LINES[1] + b"\r\n"
    return lead + bytes(body) + trail


def _key(outcome: Outcome) -> object:
    if isinstance(outcome, Frame):
        return outcome
    return (type(outcome), str(outcome), outcome.context)


def decode_all_ways(data: bytes, *, glue: bool = True) -> list[Outcome]:
    """Decode ``data`` whole, byte by byte and wrapped in garbage; assert identical results.

    Returns the outcomes (frames or protocol errors, one per non-blank line of ``data``).
    ``glue=False`` only adds junk lines around the input: a frame that fails its own checksum
    cannot be cut out of noise on its line, so glued junk would change an error's kind.
    """
    whole = parse_segments(split(data, None))
    bytewise = parse_segments(split(data, 1))
    junk = {line for line in (*LEADING_JUNK_LINES, *TRAILING_JUNK_LINES) if line.strip(b" ")}
    noisy_segments = [s for s in split(with_garbage(data, glue=glue), 7) if s not in junk]
    noisy = parse_segments(noisy_segments)
    assert [_key(o) for o in bytewise] == [_key(o) for o in whole]
    assert [_key(o) for o in noisy] == [_key(o) for o in whole]
    return whole


def decode_frames(data: bytes, *, glue: bool = True) -> list[Frame]:
    """:func:`decode_all_ways` for input that must hold only valid frames."""
    outcomes = decode_all_ways(data, glue=glue)
    frames = [o for o in outcomes if isinstance(o, Frame)]
    assert len(frames) == len(outcomes), f"unexpected errors: {outcomes}"
    return frames


def decode_one(data: bytes, *, glue: bool | None = None) -> Frame:
    """Decode exactly one valid frame all three ways (and directly through ``parse_frame``).

    The splitter finds a frame inside noise on its own line by the length its N field declares,
    so junk is glued on only when the frame has the analyser's field widths (``glue=None``).
    """
    if glue is None:
        glue = is_standard_width(data)
    frames = decode_frames(data, glue=glue)
    assert len(frames) == 1
    assert parse(data) == frames[0]
    return frames[0]


def decode_error(data: bytes) -> ServomexProtocolError:
    """The protocol error one invalid frame raises, identical all three ways and directly."""
    outcomes = decode_all_ways(data, glue=False)
    assert len(outcomes) == 1
    err = outcomes[0]
    assert isinstance(err, ServomexProtocolError), f"expected an error, decoded {err!r}"
    with pytest.raises(ServomexProtocolError) as direct:
        parse(data)
    assert _key(direct.value) == _key(err)
    return err


def two_block_frame(o2: float, *, terminator: bytes = b"\r\n") -> bytes:
    """A small valid broadcast: I1 Oxygen at ``o2`` % and an unlabelled E1 at 4.0 mA."""
    blocks = [
        format_block(
            ChannelId.I1,
            name="Oxygen",
            value_text=format_value(o2),
            unit=" % ",
            status=ChannelStatus(),
        ),
        format_block(
            ChannelId.E1,
            name=None,
            value_text=format_value(4.0, 1),
            unit=" mA",
            status=ChannelStatus(),
        ),
    ]
    header = format_header(
        clock=None, fault=False, maintenance=False, cal_groups=idle_cal_groups(), n_blocks=2
    )
    return build_frame(header, blocks, terminator=terminator)


# ------------------------------------------------------------------------- pseudo-terminals

#: For long end-to-end tests over real I/O (a pty, TCP): they run on real time, so each backend
#: costs its seconds of wall time again, and the backends' own pty/TCP I/O is what the transport
#: tests cover on both. Such a test runs on asyncio only (say why where it is used).
ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])


class PtyServer(Protocol):
    """What :func:`served_on_pty` serves: a ``Simulator`` or a ``SimLine``."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...

    async def serve_pty(self) -> str: ...


@asynccontextmanager
async def served_on_pty[S: PtyServer](server: S) -> AsyncIterator[tuple[S, str]]:
    """Run ``server`` and serve it on a fresh pseudo-terminal: ``(server, path)``."""
    async with server:
        yield server, await server.serve_pty()


class PtyFeeder:
    """The analyser side of a pseudo-terminal: the test writes bytes into the master.

    ``path`` is the slave end, for the code under test to open (set to raw mode). With
    ``hold_slave`` the feeder keeps its own slave descriptor open until :meth:`close`, as a
    broadcaster serving the pty does; otherwise it is closed at once and the port under test
    is the only one holding the slave.
    """

    def __init__(self, *, hold_slave: bool = False) -> None:
        if sys.platform == "win32":  # pragma: no cover - ptys are POSIX
            pytest.skip("pseudo-terminals are POSIX only")
        import tty

        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave: int | None = slave
        if not hold_slave:
            os.close(slave)
            self._slave = None
        os.set_blocking(self.master, False)

    def write_now(self, data: bytes) -> None:
        """Write ``data`` into the master at once (it must fit the pty's buffer)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    async def write(self, data: bytes) -> None:
        """Write ``data`` into the master, waiting while the pty's buffer is full."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                await anyio.wait_writable(self.master)
                continue
            view = view[written:]

    def close(self) -> None:
        os.close(self.master)
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None


def continuous_stats(anz: Analyzer) -> ContinuousStatistics:
    """``anz.statistics()`` of a continuous Analyzer, typed (fails the test otherwise)."""
    stats = anz.statistics()
    assert isinstance(stats, ContinuousStatistics), stats
    return stats


def modbus_stats(anz: Analyzer) -> ModbusStatistics:
    """``anz.statistics()`` of a Modbus Analyzer, typed (fails the test otherwise)."""
    stats = anz.statistics()
    assert isinstance(stats, ModbusStatistics), stats
    return stats
