"""The service's log lines: stderr, one line per event, ``key=value`` (docs/service.md §1).

Every line is ``ts=<ISO 8601 UTC> level=<level> <event fields>``: the service's own messages
are already ``event=… key=value`` text (``event=tick_error device=kiln-inlet error='…'``); a
message from elsewhere in the library that is not is quoted as ``msg="…"``. A traceback, when
a bug is logged, is folded into the same line (``exc="…"``) so one event stays one line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

__all__ = ["KeyValueFormatter", "configure_logging"]

_HANDLER_NAME: Final = "servomex-run"
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… event=…`` on one line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = record.getMessage()
        body = message if message.startswith("event=") else f"msg={_quote(message)}"
        line = f"ts={ts} level={record.levelname.lower()} {body}"
        if record.exc_info:
            line += f" exc={_quote(self.formatException(record.exc_info))}"
        return line


def configure_logging(level: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
    """Send the ``servomexlib`` loggers to ``stream`` (stderr) at ``level`` (``quiet``:
    warnings and above). Calling it again replaces the handler it installed."""
    logger = logging.getLogger("servomexlib")
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(KeyValueFormatter())
    logger.addHandler(handler)
    chosen = _LEVELS.get(level.lower(), logging.INFO)
    logger.setLevel(max(chosen, logging.WARNING) if quiet else chosen)
