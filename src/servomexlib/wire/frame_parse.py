"""Parsing continuous frames: validation, field decoding and the caches
(docs/protocol.md, §3.4, §3.5, §3.9). Pure: no I/O, no clock, no logging; callers pass the
timestamps a frame is stamped with.

Theory of operation
-------------------
:func:`parse_frame` validates in the order of docs/protocol.md, §3.9 — shape of the start,
checksum, token structure, N, token count, then the fields — and raises the matching
:class:`~servomexlib.errors.ServomexProtocolError` subclass. Header and block fields are decoded
leniently: an unparsable clock is None, an unknown unit is ``Unit.UNKNOWN``.

A value field that is not a finite number never becomes a guessed value: it decodes to
``value=None`` and a :class:`~servomexlib.devices.models.ValueState` saying why —
``OVER_RANGE`` for the analyser's over/under-range glyphs (``******``, ``------``, ``OVER``, …)
and ``INVALID`` for anything else (blank, unparsable, ``nan``/``inf``); see
:func:`decode_value_field`.

**Speed.** A live analyser repeats almost everything from one frame to the next: names, units,
status fields, most whole blocks, and usually the whole block section (only the clock changes).
So decoded blocks, block sections (with their byte sum), names, units, status fields, dates and
calibration-group fields are cached, every cache bounded (cleared or no longer filled when
full). A frame in the analyser's standard layout takes a fast path (:func:`_parse_standard`)
that builds the models with the slot-setting builders of
:mod:`servomexlib.devices.models` (``build_reading`` …); anything unusual falls back to the full
parse, which decides and raises in the documented order. Both paths return equal Frames.
"""

from __future__ import annotations

import dataclasses
import math
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
    build_analyser_status,
    build_frame,
    build_reading,
)
from ..errors import (
    ErrorContext,
    ServomexChecksumError,
    ServomexFrameError,
    ServomexParseError,
)
from ..units import Unit, coerce_unit
from .charset import decode_display
from .frame_layout import (
    BLOCK_FIELDS,
    HEADER_FIELDS,
    HEADER_LENGTH,
    HEX_DIGITS,
    SPACE,
    TRAILER_LENGTH,
    checksum,
    checksum_field_matches,
)

__all__ = ["decode_value_field", "parse_frame"]

_IDS: dict[bytes, ChannelId] = {c.value.encode(): c for c in ChannelId}


def _context(frame: bytes) -> ErrorContext:
    # Built only when raising: building it for every good frame cost ~10 % of a parse.
    return ErrorContext(protocol=ProtocolKind.CONTINUOUS_ASCII, response=frame)


def _strip_terminator(raw: bytes) -> bytes:
    return raw.rstrip(b"\r\n")


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
#: (``++++++``, docs/protocol.md, §3.5), so the library reads back what it writes.
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
    """Classify a channel block's value field (docs/protocol.md, §3.5).

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
            len(alarms) > 0 and alarms[0] != SPACE,
            len(alarms) > 1 and alarms[1] != SPACE,
            len(alarms) > 2 and alarms[2] != SPACE,
            len(alarms) > 3 and alarms[3] != SPACE,
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


def _cal_groups(
    field: bytes,
) -> tuple[CalGroupState, CalGroupState, CalGroupState, CalGroupState]:
    """The calibration groups of a header field, remembered per distinct field (bounded)."""
    groups = _GROUP_CACHE.get(field)
    if groups is None:
        groups = _decode_cal_groups(field)
        if len(_GROUP_CACHE) < _CACHE_LIMIT:
            _GROUP_CACHE[field] = groups
    return groups


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
        or frame[0] != SPACE
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
    if not checksum_field_matches(field, (sum(head) + body_sum) & 0xFFFF):
        return None
    try:
        n = int(header[4].strip())
    except ValueError:
        return None
    if n != len(blocks):
        return None
    groups = _cal_groups(header[3])
    fm = header[2]
    analyser = build_analyser_status(
        len(fm) > 0 and fm[0] == 0x46,  # 'F'
        len(fm) > 1 and fm[1] == 0x4D,  # 'M'
        groups,
        _decode_clock(header[0], header[1]),
    )
    protocol = ProtocolKind.CONTINUOUS_ASCII
    build = build_reading
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
    return build_frame(readings, analyser, protocol, received_at, monotonic_ns, frame, None, None)


def parse_frame(
    raw: bytes,
    *,
    received_at: datetime,
    monotonic_ns: int,
) -> Frame:
    """Parse one continuous frame (with or without its CR LF / LF / CR terminator).

    Validation order (docs/protocol.md, §3.9): shape of the start, checksum, token structure, N,
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
    if not frame or frame[0] != SPACE:
        raise ServomexFrameError(
            "continuous frame must start with a space (0x20)", context=_context(frame)
        )
    if len(frame) < 1 + TRAILER_LENGTH:
        raise ServomexFrameError(
            f"continuous frame too short ({len(frame)} bytes)", context=_context(frame)
        )
    field = frame[-5:-1]
    computed = checksum(frame[1:-5])
    if len(field) != 4 or not HEX_DIGITS.issuperset(field):
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
    groups = _cal_groups(tokens[3])
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
