"""The pure parts of the line fence: payloads, the reply matcher, the fence's records (private).

No I/O and no clock: :class:`~servomexlib.clients.modbus_line.ModbusLine` sends the fences and
probes and feeds what it reads to a :class:`FenceMatcher` (docs/protocol.md, §9.3, §9.4).

Theory of operation
-------------------
A fence is FC08 sub-function 0 ("return query data", docs/protocol.md, §4.11) with a fresh
2-byte payload. A serial slave answers in order, so once the echo of *that* payload is in,
nothing the slave was asked before can follow; every byte before it is stale. An exception
reply (``0x88`` from the fenced address with a valid CRC/LRC, e.g. exception 01 from firmware
without FC08) ends the fence too: it is still a reply, so it proves the ordering as well.

*Payloads.* :class:`PayloadSource` counts from a random start (a reconnect does not repeat the
last session's payloads) in steps of an odd constant, so it visits all 65 536 payloads before
repeating, and skips ``AB CD`` (AUTO's probe), ``00 00`` (the loopback default) and every
payload sent on the line recently (the last 64, loopbacks included): an echo can only be the
answer to the fence that asked for it.

*The matcher.* :class:`FenceMatcher` is fed the chunks as they arrive and finds the first
complete reply — the echo byte for byte (upper-cased for ASCII) or a valid exception reply from
the fenced address. It keeps only the tail of the stream that could still begin a reply, and
for timing the arrival of the read that brought the reply's first byte (``began``).
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque

from anymodbus.crc import verify_crc
from anymodbus.lrc import verify_lrc

from ..devices.models import ProtocolKind
from .modbus_learning import ASCII_EXCEPTION_LEN, RTU_EXCEPTION_LEN

__all__ = [
    "FENCE_PREFIX",
    "FenceMatcher",
    "FenceReport",
    "PayloadSource",
    "Suspect",
]

FENCE_PREFIX = b"\x08\x00\x00"  # FC08 sub-function 0 "return query data" (docs/protocol.md, §4.11)
RESERVED_PAYLOADS = frozenset({b"\xab\xcd", b"\x00\x00"})  # AUTO's probe, loopback's default
RECENT_PAYLOADS = 64  # payloads remembered per line, so a fence never reuses a recent one
PAYLOAD_STEP = 0x9E37  # odd: the counter visits all 65536 payloads before repeating


class PayloadSource:
    """Fresh FC08 payloads for one line: never reserved, never one used recently."""

    __slots__ = ("_counter", "_recent")

    def __init__(self, start: int | None = None) -> None:
        self._recent: deque[bytes] = deque(maxlen=RECENT_PAYLOADS)
        # A random start: a new line (a reconnect) does not repeat the last session's payloads.
        self._counter = random.getrandbits(16) if start is None else start & 0xFFFF

    def note(self, payload: bytes) -> None:
        """Remember a payload sent on the line (a loopback's), so no fence reuses it soon."""
        self._recent.append(bytes(payload))

    def fresh(self) -> bytes:
        """The next payload not reserved and not sent recently (remembered as sent)."""
        while True:
            self._counter = (self._counter + PAYLOAD_STEP) & 0xFFFF
            payload = self._counter.to_bytes(2, "big")
            if payload not in RESERVED_PAYLOADS and payload not in self._recent:
                self.note(payload)
                return payload


@dataclasses.dataclass(slots=True)
class Suspect:
    """An address whose reply may still be in flight."""

    since: float  # when it became uncertain (line clock)
    courtesy_failed: bool = False  # ignored a courtesy fence sent for another address


@dataclasses.dataclass(slots=True)
class FenceReport:
    """What :meth:`ModbusLine.settle` did before one transaction."""

    completed: int = 0  # fences answered (echo or exception reply)
    failed: int = 0  # fences none of whose attempts was answered
    attempts: int = 0  # fence requests sent
    short_failed: int = 0  # fence attempts that gave up after a learned (shorter) wait
    own_failed: bool = False  # the transaction's own address is still uncertain


class FenceMatcher:
    """Finds the reply to one fence (or probe) in the bytes that arrive; the rest is stale.

    The reply is the echo of the request (byte for byte, docs/protocol.md, §4.11) or an
    exception reply (function code 0x88) from the fenced address with a valid CRC/LRC. The
    buffer is bounded: only the tail that could still begin a reply is kept.
    """

    def __init__(self, framing: ProtocolKind, address: int, request: bytes) -> None:
        self._ascii = framing is ProtocolKind.MODBUS_ASCII
        self._echo = request.upper() if self._ascii else request
        self._exc_head = b":%02X88" % address if self._ascii else bytes((address, 0x88))
        self._exc_len = ASCII_EXCEPTION_LEN if self._ascii else RTU_EXCEPTION_LEN
        self._keep = max(len(self._echo), self._exc_len) - 1
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._chunks: deque[tuple[float, int]] = deque()  # (arrival, end offset)
        self.received = 0
        self.match_len = 0
        self.echo = False
        self.began: float | None = None

    @property
    def stale(self) -> int:
        """Bytes received that are not the fence's reply."""
        return self.received - self.match_len

    @property
    def timed_alone(self) -> bool:
        """An echo that arrived with nothing before it: its timing is the slave's."""
        return self.echo and not self.stale and self.began is not None

    def feed(self, data: bytes, now: float) -> bool:
        """Add a chunk read at ``now``; True once the reply is complete."""
        self.received += len(data)
        self._chunks.append((now, self.received))
        self._buf += data.upper() if self._ascii else data
        found = self._find(bytes(self._buf))
        if found is not None:
            index, self.match_len, self.echo = found
            start = self._base + index
            for at, end in self._chunks:
                if end > start:
                    self.began = at  # when the read with the reply's first byte returned
                    break
            return True
        excess = len(self._buf) - self._keep
        if excess > 0:
            del self._buf[:excess]
            self._base += excess
            while len(self._chunks) > 1 and self._chunks[0][1] <= self._base:
                self._chunks.popleft()
        return False

    def _find(self, buf: bytes) -> tuple[int, int, bool] | None:
        best: tuple[int, int, bool] | None = None
        i = buf.find(self._echo)
        if i >= 0:
            best = (i, len(self._echo), True)
        j = buf.find(self._exc_head)
        while j >= 0 and (best is None or j < best[0]):
            frame = buf[j : j + self._exc_len]
            if len(frame) < self._exc_len:
                break  # may still complete
            if self._valid_exception(frame):
                return (j, self._exc_len, False)
            j = buf.find(self._exc_head, j + 1)
        return best

    def _valid_exception(self, frame: bytes) -> bool:
        if not self._ascii:
            return verify_crc(frame)
        if frame[-2:] != b"\r\n":
            return False
        try:
            raw = bytes.fromhex(frame[1:-2].decode("ascii"))
        except ValueError:
            return False
        return verify_lrc(raw)
