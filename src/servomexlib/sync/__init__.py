"""The sync facade: blocking wrappers over the async API for scripts and notebooks (api.md §12).

``with Servomex.open("sim://?mode=continuous", protocol="continuous") as anz:
print(anz.poll())``. Every call runs the async implementation on an event loop in a background
thread (:class:`SyncPortal`); errors arrive as the plain ``Servomex*`` exceptions.
"""

from __future__ import annotations

from .analyzer import Servomex, SyncAnalyzer, SyncStreamingSession
from .portal import SyncPortal

__all__ = ["Servomex", "SyncAnalyzer", "SyncPortal", "SyncStreamingSession"]
