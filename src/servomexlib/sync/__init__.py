"""The sync facade: blocking wrappers over the async API for scripts and notebooks.

Usage: docs/quickstart-sync.md.

``with Servomex.open("sim://?mode=continuous", protocol="continuous") as anz:
print(anz.poll())``. Every call runs the async implementation on an event loop in a background
thread (:class:`SyncPortal`); errors arrive as the plain ``Servomex*`` exceptions.
"""

from __future__ import annotations

from .analyzer import Servomex, SyncAnalyzer, SyncStreamingSession
from .manager import SyncManager
from .portal import SyncPortal
from .sinks import SyncSink, record_to_sink, sync_csv_sink, sync_jsonl_sink, sync_sqlite_sink

__all__ = [
    "Servomex",
    "SyncAnalyzer",
    "SyncManager",
    "SyncPortal",
    "SyncSink",
    "SyncStreamingSession",
    "record_to_sink",
    "sync_csv_sink",
    "sync_jsonl_sink",
    "sync_sqlite_sink",
]
