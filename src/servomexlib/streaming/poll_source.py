"""What ``record()`` reads from: polled sources and broadcast-frame feeds.

* :class:`PollSource` — anything that returns one batch of samples per call: an ``Analyzer``
  (Modbus: one sweep; continuous: the latest cached frame, sample-and-hold) or a
  ``ServomexManager``. ``record()`` calls it once per tick of its schedule.
* :class:`FrameFeed` — the frame subscription a continuous client offers
  (``ContinuousClient.subscribe_frames``): every broadcast frame once, as it arrives. A
  subscription's queue is bounded: when its consumer falls behind, the oldest items are
  dropped, and ``subscriber_dropped(token)`` says how many, so the recording can count them.
  ``stop_reason`` says why the feed ended, ``label`` names its port in errors.
* :class:`FrameSource` — a PollSource that can also hand out such a feed: an ``Analyzer``,
  whose ``frame_feed()`` is its continuous client (None in Modbus mode).
  ``record(..., each_frame=True)`` follows that feed instead of polling, so the broadcast sets
  the cadence.

These protocols are how the acquisition layer stays below the device layer: ``record()`` and
``StreamingSession`` know these shapes, never the ``Analyzer`` class or its client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..devices.models import Sample

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ..clients.continuous import FrameItem
    from ..errors import ServomexError

__all__ = ["FrameFeed", "FrameSource", "PollSource"]


@runtime_checkable
class PollSource(Protocol):
    """Anything that yields one batch of samples per call (an Analyzer, a ServomexManager)."""

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> Sequence[Sample]: ...


@runtime_checkable
class FrameFeed(Protocol):
    """A receiver that hands out every frame it accepts or rejects (the continuous client)."""

    @property
    def label(self) -> str: ...

    @property
    def stop_reason(self) -> ServomexError | None: ...

    def subscribe_frames(self) -> tuple[MemoryObjectReceiveStream[FrameItem], object]: ...

    def unsubscribe(self, token: object) -> None: ...

    def subscriber_dropped(self, token: object) -> int: ...


@runtime_checkable
class FrameSource(PollSource, Protocol):
    """A PollSource with a broadcast behind it (an Analyzer): ``frame_feed()`` is the feed, or
    None when the source is polled (Modbus)."""

    @property
    def device(self) -> str: ...

    def frame_feed(self) -> FrameFeed | None: ...
