"""The systemd notify protocol, written directly on the datagram socket (docs/service.md §1).

Theory of operation
-------------------
A unit with ``Type=notify`` starts the service with ``NOTIFY_SOCKET`` set to an ``AF_UNIX``
datagram socket: a path, or an abstract name written ``@name`` (the ``@`` stands for the
leading NUL byte). The service sends one datagram per state change: ``READY=1`` once every
analyser has been tried (systemd then considers the start complete), ``WATCHDOG=1`` every
second while the scheduler runs (``WatchdogSec=10`` restarts a service that stops sending), and
``STOPPING=1`` when a stop begins. No library is needed: each message is one ``sendto``.

Without ``NOTIFY_SOCKET`` every call is a no-op. A send that fails (the manager went away, the
socket is full) is logged once and never raised: notification must not stop acquisition. The
socket is non-blocking, so a send never waits on the event loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

_log = logging.getLogger("servomexlib.service.notify")


class Notifier:
    """Sends systemd notifications to ``NOTIFY_SOCKET`` (from ``environ``), or does nothing."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        target = environ.get("NOTIFY_SOCKET", "")
        self.target = target
        self.address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        self.sent: list[str] = []  # what was sent, for logs and tests
        if not target:
            return
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
            _log.warning("event=notify_unavailable reason='no AF_UNIX sockets here'")
            return
        self.address = "\0" + target[1:] if target.startswith("@") else target
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sock = sock

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> bool:
        """Send one datagram (e.g. ``"READY=1"``); True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8"), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _log.warning(
                    "event=notify_failed socket=%r message=%s error=%r",
                    self.target, message, str(exc),
                )  # fmt: skip
            return False
        self.sent.append(message)
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
