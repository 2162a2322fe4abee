"""A blocking portal that speaks servomexlib's errors (docs/quickstart-sync.md).

The sync facade runs the one async implementation on an event loop in a background thread.
Errors that cross back into the caller's thread arrive unwrapped: an exception group with a
single member becomes that member (repeatedly, for nested single-member groups), so a script
sees the plain ``Servomex*`` error with its cause chain intact. Groups of several errors pass
unchanged. The peeling is :func:`servomexlib.errors.unwrap_group`, shared with record() and the
CLI.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from typing import Any, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..errors import unwrap_group

__all__ = ["SyncPortal", "unwrap_single"]

#: Kept under its old name; the one implementation is :func:`servomexlib.errors.unwrap_group`.
unwrap_single = unwrap_group


@contextmanager
def _unwrapping() -> Iterator[None]:
    leaf: BaseException | None = None
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = unwrap_group(group)
        if leaf is group:
            raise
    if leaf is not None:
        raise leaf


class SyncPortal:
    """An event loop in a background thread; use as a context manager.

    Args:
        backend: ``"asyncio"`` (default) or ``"trio"``.
    """

    def __init__(self, *, backend: str = "asyncio") -> None:
        self._backend = backend
        self._cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None

    def __repr__(self) -> str:
        return f"<SyncPortal backend={self._backend} running={self.running}>"

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def running(self) -> bool:
        return self._portal is not None

    def start(self) -> SyncPortal:
        """Start the loop thread (idempotent)."""
        if self._cm is None:
            cm = start_blocking_portal(backend=self._backend)
            self._portal = cm.__enter__()
            self._cm = cm
        return self

    def close(self) -> None:
        """Stop the loop thread (idempotent)."""
        cm, self._cm, self._portal = self._cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def __enter__(self) -> SyncPortal:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("SyncPortal is not running; use it in a with block or call start()")
        return self._portal

    @overload
    def call[T](self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...
    @overload
    def call[T](self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the loop thread and return its result.

        Raises:
            RuntimeError: the portal is not running.
        """
        portal = self._require()
        with _unwrapping():
            return portal.call(functools.partial(fn, *args, **kwargs))

    def wrap_async_context_manager[T](
        self, cm: AbstractAsyncContextManager[T]
    ) -> AbstractContextManager[T]:
        """A sync context manager entering and exiting ``cm`` in one task of the loop."""
        return _UnwrappingContext(self._require().wrap_async_context_manager(cm))


class _UnwrappingContext[T](AbstractContextManager[T]):
    def __init__(self, inner: AbstractContextManager[T]) -> None:
        self._inner = inner

    def __enter__(self) -> T:
        with _unwrapping():
            return self._inner.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        with _unwrapping():
            return self._inner.__exit__(*exc_info)
