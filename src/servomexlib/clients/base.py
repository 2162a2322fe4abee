"""The interface the :class:`~servomexlib.devices.analyzer.Analyzer` drives (private).

One client exists per wire semantics: :mod:`.continuous` (a background receiver over an
unsolicited broadcast) and :mod:`.modbus` (request/response). The Analyzer is protocol-neutral:
it runs the pre-I/O gates (confirm → capability → validation), serialises calls with its session
lock and then delegates to the client through this protocol. Clients therefore never check
``confirm`` and may assume their arguments were validated (channel ids are ``ChannelId``, cal
groups are 1–4, loopback payloads are 2 bytes).

Timeouts: ``timeout=None`` means the client's open-time default. For Modbus it is the
per-transaction response timeout of every transaction (and retry) of the call; for continuous it
bounds the wait for the first/next frame (docs/protocol.md, §9.6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import anyio.abc
    from anyio.streams.memory import MemoryObjectReceiveStream

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
    )
    from ..errors import ServomexError
    from ..planner import ReadPlanner
    from ..transport.base import Transport
    from .continuous import ContinuousStatistics, FrameItem
    from .modbus import ModbusStatistics

__all__ = ["AnalyzerClient", "BroadcastClient", "ControlClient"]


@runtime_checkable
class AnalyzerClient(Protocol):
    """What every client offers. Implemented by ``ContinuousClient`` and ``ModbusClient``.

    Attributes:
        protocol: the concrete wire mode (never AUTO).
        capabilities: continuous = READ_CHANNELS | READ_STATUS | IDENTIFY; Modbus = all five.
        transport: the byte transport the client reads/writes; the client's ``aclose`` closes it.
        address: the Modbus slave address; 0 for continuous.
    """

    protocol: ProtocolKind
    capabilities: Capability
    transport: Transport
    address: int

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start background work in the Analyzer's task group (continuous: the receiver).

        Modbus: a no-op. Must return promptly once the background task is running.
        """
        ...

    async def aclose(self) -> None:
        """Stop background work and close the transport. Idempotent; never raises for an
        already-closed transport."""
        ...

    async def poll(self, *, wait_fresh: bool = False, timeout: float | None = None) -> Frame:
        """A whole frame. Continuous: the cached latest frame, or the next one when none is
        cached or ``wait_fresh``. Modbus: one sweep (``wait_fresh`` ignored)."""
        ...

    async def read_channel(self, ch: ChannelId, *, timeout: float | None = None) -> Reading:
        """One channel. Raises ServomexValidationError when a continuous frame lacks it."""
        ...

    async def status(self, ch: ChannelId, *, timeout: float | None = None) -> ChannelStatus: ...

    async def analyser_status(self, *, timeout: float | None = None) -> AnalyserStatus: ...

    async def identify(self, *, timeout: float | None = None) -> DeviceInfo:
        """I/O on every call (continuous: the latest or first frame)."""
        ...

    def statistics(self) -> ContinuousStatistics | ModbusStatistics:
        """The client's counters, a snapshot (no I/O)."""
        ...


@runtime_checkable
class BroadcastClient(AnalyzerClient, Protocol):
    """The extra surface of a client over an unsolicited broadcast (continuous only).

    The Analyzer checks for it once, when it is built over a continuous client, and then calls
    these members directly (``snapshot``, ``dropped_frames``, ``stream``, ``frame_feed``).
    """

    @property
    def label(self) -> str:
        """The transport's label (for errors about the frame stream)."""
        ...

    @property
    def latest_frame(self) -> Frame | None:
        """The newest frame the receiver accepted, or None (no I/O)."""
        ...

    @property
    def dropped_frames(self) -> int:
        """Lines rejected by parse/checksum plus splitter overflows."""
        ...

    @property
    def stop_reason(self) -> ServomexError | None:
        """Why the receiver stopped, once it has."""
        ...

    def subscribe(self, device: str = "") -> tuple[MemoryObjectReceiveStream[Sample], object]:
        """A bounded queue of every frame's Samples (and error Samples); returns it and a token."""
        ...

    def subscribe_frames(self) -> tuple[MemoryObjectReceiveStream[FrameItem], object]:
        """A bounded queue of every frame (or rejected line) once; returns it and a token."""
        ...

    def unsubscribe(self, token: object) -> None: ...

    def subscriber_dropped(self, token: object) -> int:
        """Items dropped so far from the token's full queue (oldest first)."""
        ...


@runtime_checkable
class ControlClient(AnalyzerClient, Protocol):
    """The extra surface of a client with AUTOCAL | LOOPBACK (Modbus only).

    The Analyzer calls these only after its gates passed, so ``group`` is 1–4 and ``payload``
    is exactly 2 bytes. ``read_planner`` is the client's ``ReadPlanner`` (docs/protocol.md, §10).
    """

    read_planner: ReadPlanner

    async def start_calibration(self, group: int, *, timeout: float | None = None) -> None: ...

    async def stop_calibration(self, *, timeout: float | None = None) -> None: ...

    async def calibration_status(
        self, group: int, *, timeout: float | None = None
    ) -> CalibrationProgress: ...

    async def loopback(self, payload: bytes, *, timeout: float | None = None) -> bytes: ...
