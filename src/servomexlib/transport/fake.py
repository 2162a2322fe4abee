"""``FakeTransport``: an in-memory transport for tests (docs/simulator.md, "In your own tests").

Nothing here touches the operating system. Sent bytes are recorded in :attr:`FakeTransport.writes`;
a script maps an exact request to its reply, which is queued for ``receive``; ``feed`` and
``emit`` inject bytes as if the analyser had sent them (continuous broadcasts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import anyio
import anyio.abc
import anyio.lowlevel

from .base import ByteStreamTransport

__all__ = ["FakeTransport", "Reply", "ScriptReply"]

type Reply = bytes | Sequence[bytes]
type ScriptReply = Reply | Callable[[bytes], Reply]


def _join(reply: Reply) -> bytes:
    if isinstance(reply, bytes | bytearray | memoryview):
        return bytes(reply)
    return b"".join(bytes(part) for part in reply)


class _FakeStream(anyio.abc.ByteStream):
    """The in-memory byte stream behind a FakeTransport (no task needed, any backend)."""

    def __init__(self, script: Mapping[bytes, ScriptReply] | None) -> None:
        self.script: dict[bytes, ScriptReply] = dict(script or {})
        self.writes: list[bytes] = []
        self.buffer = bytearray()
        self.closed = False
        self._wakeup: anyio.Event | None = None

    def feed(self, data: bytes) -> None:
        if data:
            self.buffer += data
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self.buffer:
            if self.closed:
                raise anyio.EndOfStream
            # Created lazily: an anyio.Event needs a running event loop.
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        return data

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        request = bytes(item)
        self.writes.append(request)
        reply = self.script.get(request)
        if reply is not None:
            self.feed(_join(reply(request) if callable(reply) else reply))
        await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._close()

    async def aclose(self) -> None:
        self._close()
        await anyio.lowlevel.checkpoint()

    def _close(self) -> None:
        self.closed = True
        self._wake()


class FakeTransport(ByteStreamTransport):
    """In-memory :class:`~servomexlib.transport.base.Transport` for tests.

    * ``send(b)`` records ``b`` in :attr:`writes`; when the script has a key exactly equal to
      ``b``, its reply is queued for ``receive``. A reply is bytes, a list of bytes
      (concatenated) or a callable of the request returning either.
    * ``feed(data)`` queues bytes as if the device had sent them; ``emit(frames, interval=…)``
      feeds frames one by one, sleeping ``interval`` before each when it is > 0.
    * ``receive`` waits for data; once closed (``send_eof`` or ``aclose``) and empty it raises
      end of stream (a ServomexConnectionError that is also an ``anyio.EndOfStream``).
    * ``flush_input`` discards nothing and returns None: the fake has no operating-system
      buffer, so bytes fed before a reader starts are delivered (a test scripts exactly what
      arrives). Give ``char_time_s`` to let the continuous receiver judge, by the line rate,
      which of them were waiting before it started.

    Args:
        script: initial request → reply mapping.
        label: the port label used in errors and samples.
        char_time_s: the line rate the fake pretends to have (seconds per character), or None.
    """

    def __init__(
        self,
        script: Mapping[bytes, ScriptReply] | None = None,
        *,
        label: str = "fake://test",
        char_time_s: float | None = None,
    ) -> None:
        self._fake = _FakeStream(script)
        super().__init__(self._fake, label=label, serial_settings=None, char_time_s=char_time_s)

    @property
    def writes(self) -> list[bytes]:
        """Every ``send`` so far, in order (one entry per call)."""
        return self._fake.writes

    @property
    def script(self) -> dict[bytes, ScriptReply]:
        return self._fake.script

    def add_script(self, request: bytes, reply: ScriptReply) -> None:
        """Set (or overwrite) the reply to the exact request ``request``."""
        self._fake.script[bytes(request)] = reply

    def feed(self, data: bytes) -> None:
        """Queue ``data`` for ``receive`` as if the device had sent it."""
        self._fake.feed(bytes(data))

    async def emit(self, frames: Iterable[bytes], *, interval: float = 0.0) -> None:
        """Feed ``frames`` one by one, sleeping ``interval`` before each when it is > 0."""
        for frame in frames:
            if interval > 0:
                await anyio.sleep(interval)
            else:
                await anyio.lowlevel.checkpoint()
            self._fake.feed(bytes(frame))

    async def send_eof(self) -> None:
        """Close the fake: ``receive`` drains what is queued, then reports end of stream."""
        self._fake._close()
        self._closed = True
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Same as :meth:`send_eof`; idempotent. Queued bytes can still be received."""
        self._fake._close()
        self._closed = True
        await anyio.lowlevel.checkpoint()
