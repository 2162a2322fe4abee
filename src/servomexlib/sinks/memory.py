"""A sink that keeps samples in a list: for tests and for small in-process captures."""

from __future__ import annotations

from collections.abc import Sequence

from ..devices.models import Sample
from .base import BaseSink

__all__ = ["InMemorySink"]


class InMemorySink(BaseSink):
    """Keeps every written Sample, in order, in :attr:`samples`; ``close()`` keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[Sample] = []

    def __repr__(self) -> str:
        return f"InMemorySink(samples={len(self.samples)}, open={self.is_open})"

    async def _open(self) -> None:
        pass

    async def _write(self, samples: Sequence[Sample], seqs: list[int] | None = None) -> None:
        self.samples.extend(samples)

    async def _close(self) -> None:
        pass
