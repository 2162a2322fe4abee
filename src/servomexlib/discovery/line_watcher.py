"""Watching a scan's line: Modbus replies from any slave, and continuous frames.

Every byte a bus scan reads — stale bytes thrown away during a silence, replies, bytes that are
neither — is shown to one :class:`LineWatcher`. It looks for two things:

* a checksum-valid, fully parsed *continuous frame*, through the AUTO ladder's own
  :class:`~servomexlib.clients.detect.FrameSniffer` (one sniffer implementation for both);
* well-formed *Modbus replies from any slave*, through :class:`ReplySpotter`: valid CRC/LRC
  and a reply's shape (a read's byte count, an echo's 4 bytes, an exception's code).

:class:`ReplySpotter` is pure and bounded. RTU has no delimiters, so every offset whose first
bytes look like a reply (a slave address, a reply function code, a byte count) is a candidate,
checked by CRC once its last byte arrives; continuous text never looks like one (its bytes are
printable, reply function codes are not). ASCII replies run from ``:`` to LF and are checked by
LRC. Only the tail that can still hold the start of a reply is kept.
"""

from __future__ import annotations

import anyio
from anymodbus.crc import verify_crc
from anymodbus.lrc import verify_lrc

from ..clients.detect import FrameSniffer
from ..devices.models import ProtocolKind
from ..validation import MAX_ADDRESS, MIN_ADDRESS

__all__ = ["MODBUS_FRAMINGS", "LineWatcher", "ReplySpotter", "reply_shape_ok"]

#: The two Modbus framings, in the order a scan tries them.
MODBUS_FRAMINGS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)

_RTU_READS = frozenset({0x01, 0x02, 0x03, 0x04})  # reply: addr · fc · byte count · data · CRC
_RTU_ECHOES = frozenset({0x05, 0x06, 0x08})  # reply: addr · fc · 4 bytes · CRC
_RTU_EXCEPTIONS = frozenset(fc | 0x80 for fc in _RTU_READS | _RTU_ECHOES)
_RTU_EXCEPTION_LEN = 5
_RTU_ECHO_LEN = 8
_RTU_MAX_ADU = 256
_ASCII_MAX_ADU = 2 * 255 + 3


def reply_shape_ok(frame: bytes) -> bool:
    """Whether ``frame`` (address · PDU, check value removed) has the shape of a reply."""
    if len(frame) < 3 or not MIN_ADDRESS <= frame[0] <= MAX_ADDRESS:
        return False
    fc, size = frame[1], len(frame) - 1
    if fc in _RTU_READS:
        return size == 2 + frame[2] and frame[2] > 0
    if fc in _RTU_ECHOES:
        return size == 5
    return fc in _RTU_EXCEPTIONS and size == 2


class ReplySpotter:
    """Finds well-formed Modbus replies from any slave in a byte stream (pure, bounded).

    RTU has no delimiters, so every offset whose first bytes look like a reply (a slave
    address, a reply function code, a byte count) is a candidate, checked by CRC once its last
    byte arrives; continuous text never looks like one (its bytes are printable, reply
    function codes are not). ASCII replies run from ``:`` to LF and are checked by LRC.
    Only the tail that can still hold the start of a reply is kept.
    """

    def __init__(self) -> None:
        self.seen: dict[ProtocolKind, set[int]] = {kind: set() for kind in MODBUS_FRAMINGS}
        self._rtu = bytearray()
        self._base = 0  # stream offset of _rtu[0]
        self._decided = 0  # stream offset of the first candidate start not yet examined
        self._pending: list[tuple[int, int]] = []  # candidate (start, end) stream offsets
        self._ascii: bytearray | None = None  # from the last ':' on

    def feed(self, data: bytes) -> None:
        self._feed_rtu(data)
        self._feed_ascii(data)

    def _feed_rtu(self, data: bytes) -> None:
        buf = self._rtu
        buf += data
        end = self._base + len(buf)
        # Examine every start offset whose address, function code and byte count are known.
        while self._decided + 2 < end:
            i = self._decided - self._base
            length = self._rtu_length(buf[i], buf[i + 1], buf[i + 2])
            if length:
                self._pending.append((self._decided, self._decided + length))
            self._decided += 1
        still: list[tuple[int, int]] = []
        for start, stop in self._pending:
            if stop > end:
                still.append((start, stop))
                continue
            frame = bytes(buf[start - self._base : stop - self._base])
            if verify_crc(frame) and reply_shape_ok(frame[:-2]):
                self.seen[ProtocolKind.MODBUS_RTU].add(frame[0])
        self._pending = still
        # Keep what an unresolved candidate or an unexamined start still needs: a candidate
        # resolves within 260 bytes, so the buffer stays under that plus one chunk.
        keep_from = min([start for start, _ in still] + [self._decided])
        if keep_from > self._base:
            del buf[: keep_from - self._base]
            self._base = keep_from

    @staticmethod
    def _rtu_length(address: int, fc: int, third: int) -> int:
        if not MIN_ADDRESS <= address <= MAX_ADDRESS:
            return 0
        if fc in _RTU_READS:
            return 5 + third if third else 0
        if fc in _RTU_ECHOES:
            return _RTU_ECHO_LEN
        if fc in _RTU_EXCEPTIONS:
            return _RTU_EXCEPTION_LEN
        return 0

    def _feed_ascii(self, data: bytes) -> None:
        for byte in data:
            if byte == 0x3A:  # ':' starts a frame (and abandons any unfinished one)
                self._ascii = bytearray()
            elif self._ascii is None:
                continue
            elif byte == 0x0A:  # LF ends it
                self._ascii_frame(bytes(self._ascii).rstrip(b"\r"))
                self._ascii = None
            elif len(self._ascii) >= _ASCII_MAX_ADU:
                self._ascii = None  # longer than any frame: noise
            else:
                self._ascii.append(byte)

    def _ascii_frame(self, body: bytes) -> None:
        try:
            frame = bytes.fromhex(body.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return
        if len(body) % 2 or not verify_lrc(frame) or not reply_shape_ok(frame[:-1]):
            return
        self.seen[ProtocolKind.MODBUS_ASCII].add(frame[0])


class LineWatcher:
    """Sees every byte a scan reads: looks for a continuous frame and for Modbus replies.

    ``feed`` never raises (it runs inside the line's reads). ``frames`` is the
    :class:`~servomexlib.clients.detect.FrameSniffer`: once a frame is found
    :attr:`broadcast_seen` is set; with ``collect`` (AUTO, or a continuous listen) :attr:`frame`
    then holds it (terminator included) and every byte fed after it, and the sniffer's
    ``scope`` — the cancel scope of the pass in flight — is cancelled. Without ``collect`` (an
    explicit Modbus scan) the frame is only a hint and nothing more is kept. ``replies`` is the
    :class:`ReplySpotter`, fed while ``spot_replies`` is set.
    """

    def __init__(self, *, collect: bool = True) -> None:
        self.replies = ReplySpotter()
        self.spot_replies = True
        self.frames = FrameSniffer(collect=collect)

    @property
    def frame(self) -> bytearray | None:
        """The recognised frame and every byte after it, while collected (else None)."""
        return self.frames.found

    @property
    def broadcast_seen(self) -> bool:
        """A valid continuous frame was seen on the line."""
        return self.frames.seen

    @property
    def scope(self) -> anyio.CancelScope | None:
        """The cancel scope a found frame cancels (the pass in flight)."""
        return self.frames.scope

    @scope.setter
    def scope(self, scope: anyio.CancelScope | None) -> None:
        self.frames.scope = scope

    def feed(self, data: bytes) -> None:
        if self.spot_replies:
            self.replies.feed(data)
        self.frames.feed(data)

    def take_frame(self) -> bytes:
        """The recognised frame and the bytes after it (empty if none); stop collecting."""
        return self.frames.take()
