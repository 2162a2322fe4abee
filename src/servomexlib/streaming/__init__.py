"""Acquisition: streaming sessions (and, later, ``record()`` and poll sources)."""

from __future__ import annotations

from .stream_session import Producer, StreamingSession

__all__ = ["Producer", "StreamingSession"]
