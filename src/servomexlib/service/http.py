"""The service's health endpoints over HTTP/1.1 (docs/service.md §5): ``GET /metrics``,
``GET /healthz``, ``GET /api/latest``.

Theory of operation
-------------------
A minimal server on an anyio TCP listener bound exactly to the configured host and port (no
web framework, no wildcard unless the file says ``0.0.0.0``). Each connection is one request:
the request head is read up to 8 KiB within 5 s, only ``GET`` (and ``HEAD``) of the three paths
are answered, and the answer is sent with ``Connection: close``. A slow, oversized or
malformed request gets its 4xx answer (or is dropped) without disturbing acquisition: every
connection is its own task, bounded in time, and the handlers only read the service state.

The answers come from an :class:`Endpoints` object: :meth:`Endpoints.respond` maps a path to
``(status, content type, body)``; the runner provides one over its
:class:`~servomexlib.service.health.ServiceState`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc

from ..errors import ErrorContext, ServomexConnectionError
from .config_rules import ListenAddress

__all__ = ["HEAD_LIMIT", "REQUEST_TIMEOUT_S", "Responder", "Response", "serve_http"]

_log = logging.getLogger("servomexlib.service.http")

HEAD_LIMIT: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

#: ``(status, content type, body)``
Response = tuple[int, str, bytes]
#: Answers one GET path.
Responder = Callable[[str], Awaitable[Response]]


def _render(status: int, content_type: str, body: bytes, *, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


def _plain(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", (text + "\n").encode("utf-8")


async def _read_head(stream: anyio.abc.ByteStream) -> bytes | None:
    """The request head (through the blank line), or None when it exceeds the limit."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > HEAD_LIMIT:
            return None
        try:
            chunk = await stream.receive(4096)
        except anyio.EndOfStream:
            break
        data += chunk
    return data


async def _handle(stream: anyio.abc.ByteStream, respond: Responder) -> None:
    async with stream:
        head_only = False
        with anyio.move_on_after(REQUEST_TIMEOUT_S) as scope:
            head = await _read_head(stream)
        if scope.cancelled_caught:
            response = _plain(408, "request timeout")
        elif head is None:
            response = _plain(431, "request head too large")
        else:
            request_line = head.split(b"\n", 1)[0].strip().decode("latin-1", "replace")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                response = _plain(400, "bad request")
            elif parts[0] not in ("GET", "HEAD"):
                response = _plain(405, f"method {parts[0]} not allowed")
            else:
                head_only = parts[0] == "HEAD"
                path = parts[1].split("?", 1)[0]
                try:
                    response = await respond(path)
                except Exception as exc:  # a bug in a handler: answer, log, keep serving
                    _log.exception("event=http_handler_failed path=%s", path)
                    response = _plain(500, f"internal error: {type(exc).__name__}")
        with anyio.move_on_after(REQUEST_TIMEOUT_S):
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await stream.send(_render(*response, head=head_only))  # the client may be gone


async def serve_http(
    listen: ListenAddress,
    respond: Responder,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port (useful with 0).

    Raises:
        ServomexConnectionError: the address cannot be bound (in use, not local …).
    """
    try:
        listener = await anyio.create_tcp_listener(
            local_host=listen.host, local_port=listen.port, reuse_port=False
        )
    except OSError as exc:
        raise ServomexConnectionError(
            f"could not listen on http://{listen}: {exc.strerror or exc}",
            context=ErrorContext(port=str(listen)),
        ) from exc
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        _log.info("event=http_listening address=%s port=%d", listen.host, port)
        task_status.started(port)

        async def handler(stream: anyio.abc.SocketStream) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await _handle(stream, respond)

        await listener.serve(handler)
