"""Serving a simulated line to other programs: pseudo-terminals and TCP (docs/simulator.md).

Theory of operation
-------------------
A :class:`LineServers` belongs to one :class:`~servomexlib.sim.line.SimLine` and owns the
task group that ``async with line`` (or ``async with sim``) opens: every server started by
:meth:`LineServers.serve_pty` / :meth:`LineServers.serve_tcp` is a task in it, started with
``tg.start`` so that a failure to listen is raised by the call that asked for it. Each server
bridges the operating system's end to an ordinary in-process stream of the line: a pty's
master side is read and written without blocking, a TCP connection is pumped both ways; so a
served host sees exactly what an in-process host sees. Serving pins the line to the host
clock (the other end runs on real time; see :mod:`servomexlib.sim.clock`).

Vanish and return: when the line's device vanishes, TCP connections are closed and the
listener stops; pty links are removed. When it reappears, TCP listens on the same port again
(retrying every 0.5 s while someone else holds it) and each pty link points at a fresh
``/dev/pts/N`` under the same stable path. Leaving ``async with`` stops every server and
removes the links and the temporary directory holding them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ..errors import ErrorContext, ServomexConfigurationError, ServomexConnectionError

if TYPE_CHECKING:
    from .line import SimLine, SimStream

__all__ = ["LineServers", "TcpAddress"]

_log = logging.getLogger("servomexlib.sim")


class TcpAddress(NamedTuple):
    """Where :meth:`Simulator.serve_tcp` listens; unpacks as ``(host, port)``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class LineServers:
    """The pty and TCP servers of one line (see the module docstring)."""

    def __init__(self, line: SimLine) -> None:
        self._line = line
        self._tg: anyio.abc.TaskGroup | None = None
        self._tmpdir: str | None = None
        self._links: list[str] = []
        self._pty_count = 0

    @property
    def label(self) -> str:
        return self._line.label

    def open_stream(self) -> SimStream:
        return self._line.open_stream()

    async def _wait_vanished(self, vanished: bool) -> None:
        await self._line.wait_vanished(vanished)

    async def __aenter__(self) -> None:
        if self._tg is not None:
            raise ServomexConfigurationError(f"{self.label} is already running")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg

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
        """Start a TCP server on the line (see :meth:`SimLine.serve_tcp`)."""
        tg = self._require_running()
        self._line.clock.pin_to_host()
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
        """Start a pty server on the line (see :meth:`SimLine.serve_pty`)."""
        tg = self._require_running()
        if sys.platform == "win32" or not hasattr(os, "openpty"):
            raise ServomexConfigurationError(
                "pseudo-terminals are not available on this platform; serve over TCP instead"
            )
        self._line.clock.pin_to_host()
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
                tg.start_soon(_pump, conn, stream, tg.cancel_scope)
                tg.start_soon(_pump, stream, conn, tg.cancel_scope)

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


async def _pump(
    source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, done: anyio.CancelScope
) -> None:
    """Copy ``source`` to ``sink`` until either end fails or closes; then end the bridge."""
    with contextlib.suppress(
        anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
    ):
        while True:
            await sink.send(await source.receive())
    done.cancel()


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
