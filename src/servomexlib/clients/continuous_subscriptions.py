"""The continuous receiver's subscriptions: bounded queues of samples and frames (private).

Theory of operation
-------------------
The receiver never waits for a subscriber (one task serves the cache, every waiter and every
subscriber), and a subscriber that stops reading must not make the process grow without end.
Each subscription is therefore a :class:`~servomexlib.clients.queue.LatestQueue`: at most
``SUBSCRIBER_QUEUE_SAMPLES`` samples (100 000: about 11 hours of a 5-channel broadcast every
2 s, some 30 MB) per sample subscriber, at most ``FRAME_QUEUE_FRAMES`` items (20 000 frames:
the same 11 hours) per frame subscriber. When a queue is full the **oldest** item is dropped
to make room for the new one — the newest data is kept — and counted: per subscription
(:meth:`Subscriptions.dropped`, which ``record(each_frame=True)`` adds to
``summary.samples_late``) and in total (:attr:`Subscriptions.overflowed`, reported as
``statistics().subscriber_overflows``). Each overflow episode logs one WARNING under
``servomexlib.continuous``.

A good frame goes to every sample subscriber as one
:class:`~servomexlib.devices.models.Sample` per reading (built once per device label) and to
every frame subscriber as the :class:`~servomexlib.devices.models.Frame` itself; a rejected
line goes to sample subscribers as an error Sample and to frame subscribers as a
:class:`FrameRejection`. A subscriber that closed its end without unsubscribing is forgotten.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..devices.models import Frame, ProtocolKind, Sample
from ..errors import ServomexError
from .queue import LatestQueue

__all__ = ["FrameItem", "FrameRejection", "Subscriptions"]

_log = logging.getLogger("servomexlib.continuous")


@dataclasses.dataclass(frozen=True, slots=True)
class FrameRejection:
    """A line the receiver rejected (parse or checksum failure, over-long line).

    What a frame subscriber gets instead of a :class:`~servomexlib.devices.models.Frame`;
    ``received_at`` / ``monotonic_ns`` are when the line was rejected.
    """

    error: ServomexError
    received_at: datetime
    monotonic_ns: int

    def as_sample(self, device: str = "") -> Sample:
        """The error Sample ``stream()`` delivers for this line (``channel=None``)."""
        return Sample(
            device=device,
            channel=None,
            reading=None,
            protocol=ProtocolKind.CONTINUOUS_ASCII,
            monotonic_ns=self.monotonic_ns,
            received_at=self.received_at,
            error=self.error,
        )


type FrameItem = Frame | FrameRejection
"""What ``ContinuousClient.subscribe_frames`` delivers: each frame, or a rejected line."""

_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)


@dataclasses.dataclass(slots=True, eq=False)
class _Subscriber:
    queue: LatestQueue[Sample]
    device: str


@dataclasses.dataclass(slots=True, eq=False)
class _FrameSubscriber:
    queue: LatestQueue[FrameItem]


class Subscriptions:
    """Every subscription of one receiver (module docstring).

    Args:
        label: the port, for the queues' overflow warnings.
        sample_queue: most samples one sample subscription holds.
        frame_queue: most items one frame subscription holds.
    """

    def __init__(self, label: str, sample_queue: int, frame_queue: int) -> None:
        self._label = label
        self._sample_queue = sample_queue
        self._frame_queue = frame_queue
        self._samples: list[_Subscriber] = []
        self._frames: list[_FrameSubscriber] = []
        #: Items dropped from full subscriber queues, all subscriptions.
        self.overflowed = 0

    def __len__(self) -> int:
        return len(self._samples) + len(self._frames)

    def add_samples(self, device: str) -> tuple[MemoryObjectReceiveStream[Sample], object]:
        """A new sample subscription labelled ``device``: (queue, token)."""
        queue = LatestQueue[Sample](
            self._sample_queue, what=f"subscriber {device!r} on {self._label}", logger=_log
        )
        sub = _Subscriber(queue, device)
        self._samples.append(sub)
        return queue.receive, sub

    def add_frames(self) -> tuple[MemoryObjectReceiveStream[FrameItem], object]:
        """A new frame subscription: (queue, token)."""
        queue = LatestQueue[FrameItem](
            self._frame_queue, what=f"frame subscriber on {self._label}", logger=_log
        )
        sub = _FrameSubscriber(queue)
        self._frames.append(sub)
        return queue.receive, sub

    @staticmethod
    def dropped(token: object) -> int:
        """Items the subscription ``token`` lost to a full queue (0 for unknown tokens)."""
        if isinstance(token, _Subscriber | _FrameSubscriber):
            return token.queue.dropped
        return 0

    def remove(self, token: object) -> None:
        """End the subscription ``token`` (samples or frames); idempotent."""
        if isinstance(token, _Subscriber):
            if token in self._samples:
                self._samples.remove(token)
            token.queue.close()
        elif isinstance(token, _FrameSubscriber):
            if token in self._frames:
                self._frames.remove(token)
            token.queue.close()

    def close_all(self) -> None:
        """End every subscription (the receiver stopped)."""
        for sub in self._samples:
            sub.queue.close()
        self._samples.clear()
        for frame_sub in self._frames:
            frame_sub.queue.close()
        self._frames.clear()

    def publish(self, frame: Frame) -> None:
        """Hand a good frame to every subscriber."""
        by_device: dict[str, list[Sample]] = {}
        for sub in list(self._samples):
            samples = by_device.get(sub.device)
            if samples is None:
                samples = by_device[sub.device] = frame.as_samples(sub.device)
            self._deliver(sub, samples)
        self._hand_over(frame)

    def reject(self, rejection: FrameRejection) -> None:
        """Hand a rejected line to every subscriber."""
        for sub in list(self._samples):
            self._deliver(sub, [rejection.as_sample(sub.device)])
        self._hand_over(rejection)

    def _hand_over(self, item: FrameItem) -> None:
        for sub in list(self._frames):
            try:
                self.overflowed += sub.queue.put(item)
            except _GONE:
                self.remove(sub)

    def _deliver(self, sub: _Subscriber, samples: list[Sample]) -> None:
        try:
            for sample in samples:
                self.overflowed += sub.queue.put(sample)
        except _GONE:
            # The subscriber closed its end without unsubscribing: forget it.
            self.remove(sub)
