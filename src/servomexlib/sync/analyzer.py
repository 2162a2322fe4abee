"""Blocking wrappers over :class:`~servomexlib.devices.analyzer.Analyzer` (docs/quickstart-sync.md).

Every method has the async method's name and parameters and simply runs it on the portal's
event loop; nothing here re-implements protocol logic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Self

from ..devices.models import (
    AnalyserStatus,
    CalibrationProgress,
    Capability,
    ChannelId,
    ChannelStatus,
    DeviceInfo,
    Frame,
    ProtocolKind,
    Reading,
    Sample,
    StreamMode,
)
from ..settings import SerialSettings
from .portal import SyncPortal

if TYPE_CHECKING:
    from ..devices.analyzer import Analyzer
    from ..streaming.stream_session import StreamingSession
    from ..transport.base import Transport

__all__ = ["Servomex", "SyncAnalyzer", "SyncStreamingSession"]


class SyncStreamingSession:
    """A ``with`` block over an async StreamingSession, iterated with a plain ``for``."""

    def __init__(self, session: StreamingSession, portal: SyncPortal) -> None:
        self._session = session
        self._portal = portal
        self._cm: AbstractContextManager[Any] | None = None

    @property
    def mode(self) -> StreamMode:
        return self._session.mode

    def __enter__(self) -> Self:
        cm = self._portal.wrap_async_context_manager(self._session)
        cm.__enter__()
        self._cm = cm
        return self

    def __exit__(self, *exc_info: Any) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(*exc_info)
        else:
            self.close()

    def close(self) -> None:
        """Stop the session (idempotent)."""
        self._portal.call(self._session.aclose)

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        try:
            return self._portal.call(self._session.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None


class SyncAnalyzer:
    """A blocking analyser for scripts and notebooks; open it with :meth:`open`."""

    def __init__(
        self,
        analyzer: Analyzer,
        portal: SyncPortal,
        *,
        context: AbstractContextManager[Any] | None = None,
        owns_portal: bool = False,
    ) -> None:
        self._anz = analyzer
        self._portal = portal
        self._context = context
        self._owns_portal = owns_portal

    def __repr__(self) -> str:
        return f"<SyncAnalyzer {self._anz!r}>"

    @classmethod
    def open(
        cls,
        port: str | Transport,
        *,
        protocol: ProtocolKind | str = ProtocolKind.AUTO,
        address: int = 1,
        serial_settings: SerialSettings | None = None,
        timeout: float = 1.0,
        identify: bool = True,
        frame_period: float | None = None,
        backend: str = "asyncio",
        portal: SyncPortal | None = None,
    ) -> SyncAnalyzer:
        """Open and enter an analyser; use the result in a ``with`` block.

        Arguments are those of :func:`servomexlib.open_device`, plus ``backend`` for a new
        portal or ``portal`` to share one (e.g. with an in-process simulator). A portal created
        here is closed on exit, and also when opening fails.
        """
        from ..devices.factory import open_device

        owns = portal is None
        active = portal if portal is not None else SyncPortal(backend=backend).start()
        try:
            analyzer = active.call(
                open_device,
                port,
                protocol=protocol,
                address=address,
                serial_settings=serial_settings,
                timeout=timeout,
                identify=identify,
                frame_period=frame_period,
            )
            context = active.wrap_async_context_manager(analyzer)
            context.__enter__()
        except BaseException:
            if owns:
                active.close()
            raise
        return cls(analyzer, active, context=context, owns_portal=owns)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Exit the analyser (closing its port) and stop an owned portal. Idempotent."""
        context, self._context = self._context, None
        try:
            if context is not None:
                context.__exit__(None, None, None)
        finally:
            if self._owns_portal:
                self._owns_portal = False
                self._portal.close()

    @property
    def analyzer(self) -> Analyzer:
        """The async Analyzer underneath (use it only on the portal's loop)."""
        return self._anz

    @property
    def portal(self) -> SyncPortal:
        return self._portal

    @property
    def device(self) -> str:
        return self._anz.device

    @property
    def protocol(self) -> ProtocolKind:
        return self._anz.protocol

    @property
    def capabilities(self) -> Capability:
        return self._anz.capabilities

    @property
    def info(self) -> DeviceInfo | None:
        return self._anz.info

    @property
    def dropped_frames(self) -> int:
        return self._anz.dropped_frames

    def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        return self._portal.call(self._anz.poll, wait_fresh=wait_fresh, timeout=timeout)

    def read_channel(self, ch: ChannelId | str, *, timeout: float | None = None) -> Reading:
        return self._portal.call(self._anz.read_channel, ch, timeout=timeout)

    def read_all(self, *, timeout: float | None = None) -> dict[ChannelId, Reading]:
        return self._portal.call(self._anz.read_all, timeout=timeout)

    def status(self, ch: ChannelId | str, *, timeout: float | None = None) -> ChannelStatus:
        return self._portal.call(self._anz.status, ch, timeout=timeout)

    def analyser_status(self, *, timeout: float | None = None) -> AnalyserStatus:
        return self._portal.call(self._anz.analyser_status, timeout=timeout)

    def identify(self, *, refresh: bool = False, timeout: float | None = None) -> DeviceInfo:
        """Cached after the first call; ``refresh=True`` re-reads the device.

        (docs/protocol.md, §5, the bullet on ``identify()``)
        """
        return self._portal.call(self._anz.identify, refresh=refresh, timeout=timeout)

    def snapshot(self) -> Frame:
        frame: Frame = self._portal.call(_run_sync, self._anz.snapshot)
        return frame

    def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[Sample]:
        return self._portal.call(self._anz.poll_samples, names=names, timeout=timeout)

    def start_calibration(
        self, group: int, *, confirm: bool = False, timeout: float | None = None
    ) -> None:
        self._portal.call(self._anz.start_calibration, group, confirm=confirm, timeout=timeout)

    def stop_calibration(self, *, confirm: bool = False, timeout: float | None = None) -> None:
        self._portal.call(self._anz.stop_calibration, confirm=confirm, timeout=timeout)

    def calibration_status(
        self, group: int = 1, *, timeout: float | None = None
    ) -> CalibrationProgress:
        return self._portal.call(self._anz.calibration_status, group, timeout=timeout)

    def loopback(self, payload: bytes = b"\x00\x00", *, timeout: float | None = None) -> bytes:
        return self._portal.call(self._anz.loopback, payload, timeout=timeout)

    def stream(
        self, *, mode: StreamMode | None = None, rate_hz: float | None = None
    ) -> SyncStreamingSession:
        """A blocking streaming session; use it in a ``with`` block and iterate it."""
        session = self._portal.call(_run_sync, self._anz.stream, mode=mode, rate_hz=rate_hz)
        return SyncStreamingSession(session, self._portal)


async def _run_sync[T](fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a synchronous Analyzer method inside the loop thread (it touches loop state)."""
    return fn(*args, **kwargs)


class Servomex:
    """Entry point of the sync facade: ``with Servomex.open("/dev/ttyUSB0") as anz: ...``."""

    open = SyncAnalyzer.open
