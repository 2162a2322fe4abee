"""Blocking wrapper over :class:`~servomexlib.manager.ServomexManager` (docs/quickstart-sync.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from ..devices.models import ErrorPolicy, Frame, ProtocolKind, Sample
from ..manager import DeviceResult, ServomexManager
from ..settings import SerialSettings
from .portal import SyncPortal

if TYPE_CHECKING:
    from ..devices.analyzer import Analyzer
    from ..transport.base import Transport

__all__ = ["SyncManager"]


class SyncManager:
    """A ServomexManager for scripts: use it in a ``with`` block, which closes it.

    Same behaviour as the async manager: each analyser it builds is identified before its
    first sweep, so ``poll``/``poll_samples`` report only populated slots.

    Args:
        error_policy: as for ServomexManager.
        backend: event-loop backend of a portal created here.
        portal: share an existing portal instead (it is not closed here).
    """

    def __init__(
        self,
        *,
        error_policy: ErrorPolicy = ErrorPolicy.RAISE,
        backend: str = "asyncio",
        portal: SyncPortal | None = None,
    ) -> None:
        self._owns_portal = portal is None
        self._portal = portal if portal is not None else SyncPortal(backend=backend).start()
        self._manager = ServomexManager(error_policy=error_policy)

    def __repr__(self) -> str:
        return f"<SyncManager {self._manager!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def manager(self) -> ServomexManager:
        return self._manager

    @property
    def names(self) -> tuple[str, ...]:
        return self._manager.names

    @property
    def closed(self) -> bool:
        return self._manager.closed

    def close(self) -> None:
        """Close the manager (its ports) and an owned portal. Idempotent."""
        try:
            if self._portal.running:
                self._portal.call(self._manager.close)
        finally:
            if self._owns_portal:
                self._owns_portal = False
                self._portal.close()

    def add(
        self,
        name: str,
        source: str | Transport | Analyzer,
        *,
        protocol: ProtocolKind | str = ProtocolKind.MODBUS_RTU,
        address: int = 1,
        serial_settings: SerialSettings | None = None,
        timeout: float = 1.0,
    ) -> Analyzer:
        return self._portal.call(
            self._manager.add,
            name,
            source,
            protocol=protocol,
            address=address,
            serial_settings=serial_settings,
            timeout=timeout,
        )

    def remove(self, name: str) -> None:
        self._portal.call(self._manager.remove, name)

    def get(self, name: str) -> Analyzer:
        return self._manager.get(name)

    def poll(
        self, names: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> Mapping[str, DeviceResult[Frame]]:
        return self._portal.call(self._manager.poll, names, timeout=timeout)

    def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[Sample]:
        return self._portal.call(self._manager.poll_samples, names=names, timeout=timeout)

    def execute_each[T](
        self, op: Callable[[Analyzer], Awaitable[T]], names: Sequence[str] | None = None
    ) -> dict[str, DeviceResult[T]]:
        return self._portal.call(self._manager.execute_each, op, names)
