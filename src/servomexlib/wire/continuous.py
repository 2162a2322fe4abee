"""Continuous ASCII frames: checksum, parse, build and an incremental splitter (protocol.md §3).

Pure code: no I/O, no clock, no logging. Callers pass the timestamps a frame is stamped with.

Theory of operation
-------------------
A frame is ``0x20`` + 5 header fields + N channel blocks of 8 fields + a 4-hex-digit checksum,
every field followed by ``;``, then a line terminator. It is ``39 + 33·N`` bytes long without the
terminator. The checksum is the 16-bit sum of every byte after the leading space up to and
including the ``;`` before the checksum field.

:class:`FrameSplitter` cuts a byte stream into segments at every CR or LF (CR LF, LF-only and
CR-only lines all work; the captures of the real unit are LF-only) and never holds more than
``max_segment`` bytes: past that the pending bytes are garbage, dropped and counted, and
everything up to the next terminator is discarded. A segment whose length does not match its
own header is searched for an embedded frame (a ``0x20`` whose header declares a length that
fits and whose checksum verifies), so a frame glued to line noise is still recovered; the noise
around it is counted as garbage.

:func:`parse_frame` validates in the order of protocol.md §3.8 and raises the matching
:class:`~servomexlib.errors.ServomexProtocolError` subclass.

A value field that is not a finite number never becomes a guessed value: it decodes to
``value=None`` and a :class:`~servomexlib.devices.models.ValueState` saying why —
``OVER_RANGE`` for the analyser's over/under-range glyphs (``******``, ``------``, ``OVER``, …)
and ``INVALID`` for anything else (blank, unparsable, ``nan``/``inf``); see
:func:`decode_value_field`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime

from ..devices.models import (
    AnalyserStatus,
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    ValueState,
    _build_analyser_status,
    _build_frame,
    _build_reading,
)
from ..errors import (
    ErrorContext,
    ServomexChecksumError,
    ServomexFrameError,
    ServomexParseError,
)
from ..units import Unit, coerce_unit
from .charset import decode_display, encode_display

__all__ = [
    "BLOCK_FIELDS",
    "BLOCK_LENGTH",
    "HEADER_FIELDS",
    "HEADER_LENGTH",
    "MAX_SEGMENT",
    "UNLABELLED",
    "FrameSplitter",
    "SplitterStats",
    "build_frame",
    "checksum",
    "decode_value_field",
    "format_block",
    "format_header",
    "format_value",
    "frame_length",
    "parse_frame",
    "split_frames",
]

HEADER_FIELDS = 5
BLOCK_FIELDS = 8
HEADER_LENGTH = 34  # leading space + 33 header bytes
BLOCK_LENGTH = 33
TRAILER_LENGTH = 5  # 4 checksum digits + ';'
UNLABELLED = "||||||"  # six 0x7C: the slot has no label (HW)
#: Hard bound on one line: a frame with N = 99 (the largest two-digit count) is 3306 bytes.
MAX_SEGMENT = 4096

_CR, _LF, _SPACE = 0x0D, 0x0A, 0x20
_HEX = frozenset(b"0123456789abcdefABCDEF")
_IDS: dict[bytes, ChannelId] = {c.value.encode(): c for c in ChannelId}


def frame_length(n_blocks: int) -> int:
    """Bytes in a frame of ``n_blocks`` channel blocks, without terminator."""
    return HEADER_LENGTH + BLOCK_LENGTH * n_blocks + TRAILER_LENGTH


def checksum(summed: bytes) -> int:
    """Unsigned byte sum & 0xFFFF of the bytes the checksum covers."""
    return sum(summed) & 0xFFFF


def _context(frame: bytes) -> ErrorContext:
    # Built only when raising: building it for every good frame cost ~10 % of a parse.
    return ErrorContext(protocol=ProtocolKind.CONTINUOUS_ASCII, response=frame)


def _strip_terminator(raw: bytes) -> bytes:
    return raw.rstrip(b"\r\n")


# --------------------------------------------------------------------------------------------
# Parsing


@dataclasses.dataclass(frozen=True, slots=True)
class _BlockDecode:
    """Cache of the decoded parts of a channel block that do not depend on time."""

    channel: ChannelId
    kind: ChannelKind
    name: str | None
    value: float | None
    unit: Unit
    status: ChannelStatus
    raw: bytes
    value_state: ValueState


def _decode_name(token: bytes) -> str | None:
    text = decode_display(token).strip()
    if not text or not text.strip("|"):
        return None
    return text


#: Characters an over/under-range glyph is made of (``******``, ``------``, `` -.-- ``), and
#: the ones it must contain at least one of. ``+`` is the simulator's own over-range fill
#: (``++++++``, api.md §16.1), so the library reads back what it writes.
_GLYPH_CHARS = b"*-+. "
_GLYPH_MARKS = (b"*", b"-", b"+")
_RANGE_WORDS = frozenset({b"OVER", b"UNDER"})
_OK, _OVER_RANGE, _INVALID = ValueState.OK, ValueState.OVER_RANGE, ValueState.INVALID


def _is_range_glyph(text: bytes) -> bool:
    """``text`` (already trimmed, not a number) is an over/under-range indication."""
    if not text.strip(_GLYPH_CHARS):
        return any(mark in text for mark in _GLYPH_MARKS)
    return text.upper() in _RANGE_WORDS


def decode_value_field(token: bytes) -> tuple[float | None, ValueState]:
    """Classify a channel block's value field (protocol.md §3.4, api.md §2).

    Returns:
        ``(value, ValueState.OK)`` for a finite number; ``(None, ValueState.OVER_RANGE)``
        for an over/under-range glyph — a field of only ``*``, ``-``, ``+``, ``.`` and spaces
        holding at least one ``*``, ``-`` or ``+`` (``******``, ``------``, `` -.-- ``,
        ``++++++``), or the word ``OVER``/``UNDER`` in any case; ``(None,
        ValueState.INVALID)`` for a blank field, anything else that is not a number, and a
        non-finite number (``nan``, ``inf``, ``1e999``). Never raises.
    """
    text = token.strip()
    if not text:
        return None, _INVALID
    try:
        value = float(text)
    except ValueError:
        return None, _OVER_RANGE if _is_range_glyph(text) else _INVALID
    if math.isfinite(value):
        return value, _OK
    return None, _INVALID


def _flag(token: bytes, index: int, char: int) -> bool:
    return len(token) > index and token[index] == char


def _decode_status(alarms: bytes, fm: bytes, cal: bytes, warm: bytes) -> ChannelStatus:
    return ChannelStatus(
        fault=_flag(fm, 0, 0x46),  # 'F'
        maintenance=_flag(fm, 1, 0x4D),  # 'M'
        calibrating=cal.strip() == b"C",
        warming_up=warm.strip() == b"W",
        alarms=(
            len(alarms) > 0 and alarms[0] != _SPACE,
            len(alarms) > 1 and alarms[1] != _SPACE,
            len(alarms) > 2 and alarms[2] != _SPACE,
            len(alarms) > 3 and alarms[3] != _SPACE,
        ),
    )


# Small caches: a live analyser repeats the same names, units and status fields in every frame.
_NAME_CACHE: dict[bytes, str | None] = {}
_UNIT_CACHE: dict[bytes, Unit] = {}
_STATUS_CACHE: dict[tuple[bytes, bytes, bytes, bytes], ChannelStatus] = {}
_CACHE_LIMIT = 512


def _cached[K, V](cache: dict[K, V], key: K, make: object) -> V:
    try:
        return cache[key]
    except KeyError:
        value: V = make(*key) if isinstance(key, tuple) else make(key)  # type: ignore[operator]
        if len(cache) < _CACHE_LIMIT:
            cache[key] = value
        return value


def _decode_block(fields: list[bytes], raw: bytes, ctx_raw: bytes) -> _BlockDecode:
    """Decode one block's 8 fields; ``raw`` is the fields joined by ';'."""
    cid = _IDS.get(fields[0].strip())
    if cid is None:
        raise ServomexParseError(
            f"unknown channel id {fields[0].decode('latin-1')!r}",
            context=_context(ctx_raw),
        )
    value, state = decode_value_field(fields[2])
    return _BlockDecode(
        channel=cid,
        kind=cid.kind,
        name=_cached(_NAME_CACHE, fields[1], _decode_name),
        value=value,
        unit=_cached(_UNIT_CACHE, fields[3], _decode_unit),
        status=_cached(_STATUS_CACHE, (fields[4], fields[5], fields[6], fields[7]), _decode_status),
        raw=raw,
        value_state=state,
    )


def _decode_unit(token: bytes) -> Unit:
    return coerce_unit(decode_display(token))


# Whole decoded blocks keyed by their raw bytes (the 8 fields joined by ';', which is
# unambiguous because no field contains ';'). A live analyser repeats most blocks verbatim from
# one frame to the next, so decoding a block is usually one dict lookup. Cleared when full, so
# a stream of ever-changing values costs a plain decode, never unbounded memory.
_BLOCK_CACHE: dict[bytes, _BlockDecode] = {}
_BLOCK_CACHE_LIMIT = 1024


# The date field changes once a day: its (year, month, day) — or None when it is not three
# integers — is cached. Whether the whole clock is a valid datetime is still checked per frame.
_DATE_CACHE: dict[bytes, tuple[int, int, int] | None] = {}


def _decode_date(date: bytes) -> tuple[int, int, int] | None:
    d = date.split(b"-")
    if len(d) != 3:
        return None
    try:
        return 2000 + int(d[2]), int(d[1]), int(d[0])
    except ValueError:
        return None


def _decode_clock(date: bytes, time: bytes) -> datetime | None:
    try:
        ymd = _DATE_CACHE[date]
    except KeyError:
        ymd = _decode_date(date)
        if len(_DATE_CACHE) >= _CACHE_LIMIT:
            _DATE_CACHE.clear()
        _DATE_CACHE[date] = ymd
    # Explicit indexing instead of unpacking a generator: this runs once per frame.
    t = time.split(b":")
    if ymd is None or len(t) != 3:
        return None
    try:
        return datetime(ymd[0], ymd[1], ymd[2], int(t[0]), int(t[1]), int(t[2]))
    except (ValueError, TypeError, OverflowError):
        return None


def _decode_cal_groups(
    token: bytes,
) -> tuple[CalGroupState, CalGroupState, CalGroupState, CalGroupState]:
    groups = []
    for g in range(4):
        state = token[2 * g : 2 * g + 1]
        gas = token[2 * g + 1 : 2 * g + 2]
        groups.append(CalGroupState(g + 1, state == b"C", 2 if gas == b"2" else 1))
    return tuple(groups)  # type: ignore[return-value]


_GROUP_CACHE: dict[bytes, tuple[CalGroupState, CalGroupState, CalGroupState, CalGroupState]] = {}


# Whole channel-block sections (every block of a frame, as bytes) → their decoded blocks and
# byte sum. Consecutive frames of a live analyser usually differ only in the clock, so the
# sections repeat; bounded like the block cache.
_BODY_CACHE: dict[bytes, tuple[tuple[_BlockDecode, ...], int]] = {}
_BODY_CACHE_LIMIT = 1024
_SEMI = 0x3B


def _decode_body(body: bytes) -> tuple[tuple[_BlockDecode, ...], int] | None:
    """Blocks and byte sum of a section of whole blocks; None if it is not exactly that."""
    tokens = body.split(b";")
    if len(tokens) % BLOCK_FIELDS != 1 or tokens[-1] != b"":
        return None
    blocks = []
    cache = _BLOCK_CACHE
    for start in range(0, len(tokens) - 1, BLOCK_FIELDS):
        fields = tokens[start : start + BLOCK_FIELDS]
        raw_block = b";".join(fields)
        block = cache.get(raw_block)
        if block is None:
            try:
                block = _decode_block(fields, raw_block, body)
            except ServomexParseError:
                return None  # the full parse raises it, with the whole frame as context
            if len(cache) >= _BLOCK_CACHE_LIMIT:
                cache.clear()
            cache[raw_block] = block
        blocks.append(block)
    return tuple(blocks), sum(body)


def _parse_standard(frame: bytes, received_at: datetime, monotonic_ns: int) -> Frame | None:
    """The fast path of :func:`parse_frame` for a frame in the analyser's own layout.

    It applies when the header is the standard 33 bytes (5 fields) and every check of the full
    parse passes; it then returns the very same Frame. Anything else — a bad checksum, a
    different layout, an unknown channel — returns None and the full parse decides (and raises
    in the documented order). The checksum is the header's byte sum plus the cached sum of the
    block section, which is the sum the full parse computes.
    """
    if (
        len(frame) < HEADER_LENGTH + TRAILER_LENGTH
        or frame[0] != _SPACE
        or frame[HEADER_LENGTH - 1] != _SEMI
        or frame[-1] != _SEMI
        or frame[-TRAILER_LENGTH - 1] != _SEMI
    ):
        return None
    head = frame[1:HEADER_LENGTH]
    header = head.split(b";")
    if len(header) != HEADER_FIELDS + 1:
        return None
    body = frame[HEADER_LENGTH:-TRAILER_LENGTH]
    cached = _BODY_CACHE.get(body)
    if cached is None:
        cached = _decode_body(body)
        if cached is None:
            return None
        if len(_BODY_CACHE) >= _BODY_CACHE_LIMIT:
            _BODY_CACHE.clear()
        _BODY_CACHE[body] = cached
    blocks, body_sum = cached
    field = frame[-TRAILER_LENGTH:-1]
    if not _HEX.issuperset(field) or int(field, 16) != (sum(head) + body_sum) & 0xFFFF:
        return None
    try:
        n = int(header[4].strip())
    except ValueError:
        return None
    if n != len(blocks):
        return None
    groups = _GROUP_CACHE.get(header[3])
    if groups is None:
        groups = _decode_cal_groups(header[3])
        if len(_GROUP_CACHE) < _CACHE_LIMIT:
            _GROUP_CACHE[header[3]] = groups
    fm = header[2]
    analyser = _build_analyser_status(
        len(fm) > 0 and fm[0] == 0x46,  # 'F'
        len(fm) > 1 and fm[1] == 0x4D,  # 'M'
        groups,
        _decode_clock(header[0], header[1]),
    )
    protocol = ProtocolKind.CONTINUOUS_ASCII
    build = _build_reading
    readings = tuple(
        [
            build(
                b.channel,
                b.kind,
                b.name,
                b.value,
                b.unit,
                b.status,
                protocol,
                received_at,
                monotonic_ns,
                b.raw,
                b.value_state,
            )
            for b in blocks
        ]
    )
    return _build_frame(readings, analyser, protocol, received_at, monotonic_ns, frame, None, None)


def parse_frame(
    raw: bytes,
    *,
    received_at: datetime,
    monotonic_ns: int,
) -> Frame:
    """Parse one continuous frame (with or without its CR LF / LF / CR terminator).

    Validation order (protocol.md §3.8): shape of the start, checksum, token structure, N,
    token count, then the fields. Header and block fields are decoded leniently (an unparsable
    value is None, an unparsable clock is None, an unknown unit is ``Unit.UNKNOWN``).

    Raises:
        ServomexFrameError: empty, no leading space, too short, missing final ';', wrong
            number of fields for N.
        ServomexChecksumError: the checksum field is not hex or does not match
            (``context.extra`` holds ``computed`` and ``expected``).
        ServomexParseError: N is not an integer, or a channel id is unknown.
    """
    frame = _strip_terminator(bytes(raw))
    fast = _parse_standard(frame, received_at, monotonic_ns)
    if fast is not None:
        return fast
    if not frame or frame[0] != _SPACE:
        raise ServomexFrameError(
            "continuous frame must start with a space (0x20)", context=_context(frame)
        )
    if len(frame) < 1 + TRAILER_LENGTH:
        raise ServomexFrameError(
            f"continuous frame too short ({len(frame)} bytes)", context=_context(frame)
        )
    field = frame[-5:-1]
    computed = checksum(frame[1:-5])
    if len(field) != 4 or not _HEX.issuperset(field):
        raise ServomexChecksumError(
            f"checksum field {field!r} is not 4 hex digits",
            context=_context(frame).merged(
                computed=f"{computed:04X}", expected=field.decode("latin-1")
            ),
        )
    expected = int(field, 16)
    if expected != computed:
        raise ServomexChecksumError(
            f"checksum mismatch: computed {computed:04X}, frame says {expected:04X}",
            context=_context(frame).merged(computed=f"{computed:04X}", expected=f"{expected:04X}"),
        )
    tokens = frame[1:].split(b";")
    if len(tokens) < 7 or tokens[-1] != b"":
        raise ServomexFrameError(
            "continuous frame must have at least 7 fields and end with ';'", context=_context(frame)
        )
    try:
        n = int(tokens[4].strip())
    except ValueError:
        raise ServomexParseError(
            f"channel count {tokens[4].decode('latin-1')!r} is not an integer",
            context=_context(frame),
        ) from None
    if n < 0 or len(tokens) != HEADER_FIELDS + BLOCK_FIELDS * n + 2:
        raise ServomexFrameError(
            f"frame declares {n} channels but has {len(tokens)} fields "
            f"(expected {HEADER_FIELDS + BLOCK_FIELDS * n + 2})",
            context=_context(frame),
        )
    groups = _GROUP_CACHE.get(tokens[3])
    if groups is None:
        groups = _decode_cal_groups(tokens[3])
        if len(_GROUP_CACHE) < _CACHE_LIMIT:
            _GROUP_CACHE[tokens[3]] = groups
    fm = tokens[2]
    analyser = AnalyserStatus(
        fault=_flag(fm, 0, 0x46),
        maintenance=_flag(fm, 1, 0x4D),
        cal_groups=groups,
        clock=_decode_clock(tokens[0], tokens[1]),
    )
    readings = []
    cache = _BLOCK_CACHE
    protocol = ProtocolKind.CONTINUOUS_ASCII
    for start in range(HEADER_FIELDS, HEADER_FIELDS + BLOCK_FIELDS * n, BLOCK_FIELDS):
        fields = tokens[start : start + BLOCK_FIELDS]
        raw_block = b";".join(fields)
        block = cache.get(raw_block)
        if block is None:
            block = _decode_block(fields, raw_block, frame)
            if len(cache) >= _BLOCK_CACHE_LIMIT:
                cache.clear()
            cache[raw_block] = block
        readings.append(
            Reading(
                block.channel,
                block.kind,
                block.name,
                block.value,
                block.unit,
                block.status,
                protocol,
                received_at,
                monotonic_ns,
                block.raw,
                block.value_state,
            )
        )
    return Frame(
        readings=tuple(readings),
        analyser=analyser,
        protocol=ProtocolKind.CONTINUOUS_ASCII,
        received_at=received_at,
        monotonic_ns=monotonic_ns,
        raw=frame,
    )


# --------------------------------------------------------------------------------------------
# Building


def build_frame(
    header_fields: Sequence[str | bytes],
    blocks: Sequence[Sequence[str | bytes]],
    *,
    terminator: bytes = b"\r\n",
) -> bytes:
    """Assemble a frame from its field texts and append the checksum and terminator.

    ``header_fields`` are the 5 header fields (date, time, FM, autocal, N); each block is 8
    fields. Fields are written as given (no padding is added), so widths are the caller's
    choice; :func:`format_header` and :func:`format_block` produce the analyser's widths.
    Text fields are encoded through the display charset.
    """
    parts: list[bytes] = []
    for f in [*header_fields, *(f for block in blocks for f in block)]:
        parts.append(f if isinstance(f, bytes) else encode_display(f))
    summed = b";".join(parts) + b";"
    return b" " + summed + f"{checksum(summed):04X};".encode() + terminator


def format_value(value: float | None, decimals: int = 3, *, width: int = 6) -> str:
    """Right-aligned value text as the analyser prints it; None → ``++++++`` (over-range).

    The real over-range representation is unknown (protocol.md §13); the ``+`` fill decodes
    as value None with ``ValueState.OVER_RANGE`` (:func:`decode_value_field`). A value too
    wide for the field is printed with fewer decimals, then saturates.
    """
    if value is None or not math.isfinite(value):
        return "+" * width
    for d in range(decimals, -1, -1):
        text = f"{value:.{d}f}"
        if len(text) <= width:
            return text.rjust(width)
    return "+" * width


def format_header(
    *,
    clock: datetime | None,
    fault: bool,
    maintenance: bool,
    cal_groups: Sequence[CalGroupState],
    n_blocks: int,
) -> list[str]:
    """The 5 header fields at the analyser's widths."""
    if clock is None:
        date, time = "00-00-00", "00:00:00"
    else:
        date, time = clock.strftime("%d-%m-%y"), clock.strftime("%H:%M:%S")
    fm = ("F" if fault else " ") + ("M" if maintenance else " ")
    autocal = "".join(("C" if g.calibrating else "S") + str(g.cal_gas) for g in cal_groups)
    return [date, time, fm, autocal, f"{n_blocks:02d}"]


def format_block(
    channel: ChannelId,
    *,
    name: str | bytes | None,
    value_text: str,
    unit: str,
    status: ChannelStatus,
) -> list[str | bytes]:
    """The 8 fields of one channel block at the analyser's widths (name 6, value 6, unit 3)."""
    if name is None:
        name_field: str | bytes = UNLABELLED
    elif isinstance(name, bytes):
        name_field = (name + b" " * 6)[:6]
    else:
        name_field = name[:6].ljust(6)
    alarms = "".join(str(i + 1) if on else " " for i, on in enumerate(status.alarms))
    fm = ("F" if status.fault else " ") + ("M" if status.maintenance else " ")
    return [
        channel.value,
        name_field,
        value_text.rjust(6)[-6:] if len(value_text) > 6 else value_text.rjust(6),
        unit[:3].rjust(3),
        alarms,
        fm,
        "C" if status.calibrating else " ",
        "W" if status.warming_up else " ",
    ]


# --------------------------------------------------------------------------------------------
# Splitting


@dataclasses.dataclass(frozen=True, slots=True)
class SplitterStats:
    segments: int  # non-blank segments handed out
    recovered: int  # frames cut out of a longer noisy segment
    garbage_bytes: int  # bytes discarded (overflow and noise around recovered frames)
    overflows: int  # times the bound was hit
    buffered: int  # bytes currently held


class FrameSplitter:
    """Incremental splitter for a continuous byte stream.

    ``feed(data)`` returns the complete, non-blank segments (without terminators) found so far;
    partial data is kept for the next call, never more than ``max_segment`` bytes.
    """

    __slots__ = ("_buf", "_discarding", "_garbage", "_max", "_overflows", "_recovered", "_segments")

    def __init__(self, max_segment: int = MAX_SEGMENT) -> None:
        if max_segment < frame_length(1):
            raise ValueError(f"max_segment must be at least {frame_length(1)}")
        self._buf = bytearray()
        self._max = max_segment
        self._discarding = False
        self._garbage = 0
        self._overflows = 0
        self._segments = 0
        self._recovered = 0

    @property
    def max_segment(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def garbage_bytes(self) -> int:
        return self._garbage

    def stats(self) -> SplitterStats:
        return SplitterStats(
            self._segments, self._recovered, self._garbage, self._overflows, len(self._buf)
        )

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        n = len(data)
        while start < n:
            cut = _next_terminator(data, start)
            if cut < 0:
                self._append(data[start:])
                break
            self._append(data[start:cut])
            if self._discarding:
                self._discarding = False
            else:
                self._emit(bytes(self._buf), out)
            self._buf.clear()
            start = cut + 1
        return out

    def pending_frame_bytes(self) -> int | None:
        """Bytes still to come before the partial frame held now can end, or None if unknown.

        Known once the held bytes start with a frame header carrying its N field: the declared
        length minus what is held, plus one terminator byte. None when nothing is held, while an
        over-long line is being discarded, or when the held bytes do not start like a frame.
        """
        if not self._buf or self._discarding:
            return None
        declared = _declared_length(self._buf, 0)
        if declared < 0:
            return None
        return max(declared - len(self._buf), 0) + 1

    def flush(self) -> list[bytes]:
        """Hand out whatever is pending as a final segment (end of stream)."""
        out: list[bytes] = []
        if not self._discarding:
            self._emit(bytes(self._buf), out)
        self._buf.clear()
        self._discarding = False
        return out

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False

    def _append(self, chunk: bytes) -> None:
        if self._discarding:
            self._garbage += len(chunk)
            return
        if len(self._buf) + len(chunk) > self._max:
            # A line longer than any frame can be: keep nothing of it.
            self._garbage += len(self._buf) + len(chunk)
            self._overflows += 1
            self._buf.clear()
            self._discarding = True
            return
        self._buf += chunk

    def _emit(self, segment: bytes, out: list[bytes]) -> None:
        if not segment.strip(b" "):
            self._garbage += len(segment)
            return
        self._segments += 1
        if _declared_length(segment, 0) == len(segment):
            out.append(segment)
            return
        found = locate_frame(segment)
        if found is None:
            out.append(segment)
            return
        begin, end = found
        self._recovered += 1
        self._garbage += len(segment) - (end - begin)
        out.append(segment[begin:end])


def _next_terminator(data: bytes, start: int) -> int:
    cr = data.find(b"\r", start)
    lf = data.find(b"\n", start)
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)


def _declared_length(segment: bytes | bytearray, begin: int) -> int:
    """Length the frame starting at ``begin`` declares through its N field, or -1."""
    if len(segment) - begin < HEADER_LENGTH or segment[begin] != _SPACE:
        return -1
    digits = segment[begin + 31 : begin + 33]
    if segment[begin + 33] != 0x3B or not digits.isdigit():
        return -1
    return frame_length(int(digits))


def locate_frame(segment: bytes) -> tuple[int, int] | None:
    """Find a checksum-valid frame embedded in a noisy segment: (begin, end) or None."""
    begin = segment.find(b" ")
    while begin >= 0:
        length = _declared_length(segment, begin)
        end = begin + length
        if length > 0 and end <= len(segment):
            candidate = segment[begin:end]
            field = candidate[-5:-1]
            if (
                candidate[-1] == 0x3B
                and _HEX.issuperset(field)
                and int(field, 16) == checksum(candidate[1:-5])
            ):
                return begin, end
        begin = segment.find(b" ", begin + 1)
    return None


def split_frames(capture: bytes) -> list[bytes]:
    """Split a whole capture into frames (protocol.md §3.7), terminators removed.

    Segments end at any CR or LF; blank segments are dropped. Frames glued to noise on the same
    line are cut out when their checksum verifies.
    """
    splitter = FrameSplitter()
    return splitter.feed(capture) + splitter.flush()
