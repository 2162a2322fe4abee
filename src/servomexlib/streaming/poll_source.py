"""What ``record()`` reads from: polled sources and broadcast-frame feeds (api.md §7).

* :class:`PollSource` — anything that returns one batch of samples per call: an ``Analyzer``
  (Modbus: one sweep; continuous: the latest cached frame, sample-and-hold) or a
  ``ServomexManager``. ``record()`` calls it once per tick of its schedule.
* :class:`FrameFeed` — the frame subscription a continuous client offers
  (``ContinuousClient.subscribe_frames``): every broadcast frame once, as it arrives.
  ``record(..., each_frame=True)`` follows it through the Analyzer's ``client`` instead of
  polling, so the broadcast sets the cadence. A subscription's queue is bounded: when its
  consumer falls behind, the oldest items are dropped, and ``subscriber_dropped(token)`` says
  how many, so the recording can count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..devices.models import Sample

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ..clients.continuous import FrameItem

__all__ = ["FrameFeed", "PollSource"]


@runtime_checkable
class PollSource(Protocol):
    """Anything that yields one batch of samples per call (an Analyzer, a ServomexManager)."""

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> Sequence[Sample]: ...


@runtime_checkable
class FrameFeed(Protocol):
    """A receiver that hands out every frame it accepts or rejects (the continuous client)."""

    def subscribe_frames(self) -> tuple[MemoryObjectReceiveStream[FrameItem], object]: ...

    def unsubscribe(self, token: object) -> None: ...

    def subscriber_dropped(self, token: object) -> int: ...
