"""How every ``servomex`` subcommand ends: errors, exit codes, a closed stdout (docs/cli.md).

:func:`run_async` runs a subcommand on a fresh event loop. A ``ServomexError`` or ``OSError``
(alone or inside exception groups) prints exactly one ``error: …`` line on stderr and exits 1,
never a traceback (:func:`report_failure`). The line speaks CLI: the library's keyword arguments
become flags (``pass --overwrite``, :func:`cli_wording`) and the error's context is given in
words (``(port /dev/ttyUSB0, address 30, FC04 register 0, after 3 attempts)``,
:func:`context_words`); raw request/response bytes, context extras and the chain of causes only
with ``--verbose``. Anything unexpected is the last safety net: one ``error: unexpected …`` line
with a hint to run with ``--verbose``, which adds the traceback. A closed stdout (``| head``:
EPIPE) ends the command quietly with exit 0 after pointing stdout at the null device, so
Python's final flush cannot complain (:func:`silence_stdout`). Ctrl-C exits with the code the
subcommand chose (:data:`EXIT_INTERRUPTED` unless it says otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable

import anyio

from ..errors import ErrorContext, ServomexConnectionError, ServomexError, unwrap_group

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "cli_wording",
    "connection_lost",
    "context_words",
    "describe_error",
    "first_leaf",
    "is_broken_pipe",
    "report_failure",
    "run_async",
    "silence_stdout",
    "verbose_of",
]

EXIT_OK = 0
EXIT_ERROR = 1
#: Exit code of a command stopped by Ctrl-C before it finished (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def first_leaf(exc: BaseException) -> BaseException | None:
    """The first ServomexError leaf of ``exc`` (depth first), else the first OSError leaf, else
    None (an unexpected error)."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, ServomexError):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, OSError):
            return leaf
    return None


def _interrupted(exc: BaseException) -> bool:
    leaves = list(_leaves(exc))
    # Outside the event loop the backend's cancellation class is unknown: match by name.
    return bool(leaves) and all(
        isinstance(leaf, KeyboardInterrupt)
        or type(leaf).__name__ == "CancelledError"
        or type(leaf).__name__ == "Cancelled"
        for leaf in leaves
    )


def is_broken_pipe(exc: BaseException) -> bool:
    """True when ``exc`` is (or a group holds only) a write to a closed pipe (EPIPE)."""
    leaves = list(_leaves(exc))
    return bool(leaves) and all(
        isinstance(leaf, BrokenPipeError)
        or (isinstance(leaf, OSError) and leaf.errno == errno.EPIPE)
        for leaf in leaves
    )


def silence_stdout() -> None:
    """Point stdout at the null device after the reader went away (``| head``).

    Python flushes ``sys.stdout`` once more at exit; with the pipe closed that flush fails
    again and prints "Exception ignored … BrokenPipeError". Redirecting the file descriptor
    (as the ``signal`` module documentation recommends for SIGPIPE) makes that flush, and any
    later print, go nowhere.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a real file (captured by a test harness): nothing will flush to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


#: Library wording (Python keyword arguments) → the CLI flag that does the same.
_FLAG_WORDING: tuple[tuple[str, str], ...] = (("overwrite=True", "--overwrite"),)
_NOUNS = {1: "coil", 2: "input", 3: "register", 4: "register", 5: "coil"}


def cli_wording(message: str) -> str:
    """``message`` with the library's keyword arguments replaced by the matching CLI flags."""
    for library, flag in _FLAG_WORDING:
        message = message.replace(library, flag)
    return message


def _word(value: object) -> object:
    """An enum member as its value (``modbus_rtu``, ``I1``); anything else as it is."""
    return value.value if isinstance(value, enum.Enum) else value


def _hex(data: bytes) -> str:
    return data.hex(" ") if data else "(nothing)"


def context_words(context: ErrorContext, message: str = "", *, verbose: bool = False) -> str:
    """The parts of ``context`` in words, for a CLI user: ``port /dev/ttyUSB0, address 30,
    channel I1, FC04 register 0, after 3 attempts``. A port or file the message already names
    is not repeated. ``verbose`` adds the protocol, the time spent, the raw request and
    response bytes and every other extra."""
    parts: list[str] = []
    extra = dict(context.extra)
    if verbose and context.protocol is not None:
        protocol = context.protocol
        parts.append(f"protocol {_word(protocol)}")
    if context.port is not None and str(context.port) not in message:
        parts.append(f"port {context.port}")
    path = extra.pop("path", None)
    if path is not None and str(path) not in message:
        parts.append(f"file {path}")
    if context.address is not None:
        parts.append(f"address {context.address}")
    if context.channel is not None:
        channel = context.channel
        parts.append(f"channel {_word(channel)}")
    fc = context.function_code
    if fc is not None:
        where = f"FC{fc:02d}"
        noun = _NOUNS.get(fc)
        if noun is not None and context.register is not None:
            where += f" {noun} {context.register}"
        parts.append(where)
    elif context.register is not None:
        parts.append(f"register {context.register}")
    attempts = extra.pop("attempts", None)
    if isinstance(attempts, int) and attempts > 1:
        parts.append(f"after {attempts} attempts")
    if verbose:
        if context.elapsed_s is not None:
            parts.append(f"{context.elapsed_s:.3f} s")
        if context.request is not None:
            parts.append(f"request {_hex(context.request)}")
        if context.response is not None:
            parts.append(f"response {_hex(context.response)}")
        parts.extend(f"{key} {value}" for key, value in extra.items())
    return ", ".join(parts)


def describe_error(exc: BaseException, *, verbose: bool = False) -> str:
    """The text of the ``error:`` line for ``exc`` (a ServomexError, an OSError, or anything).

    A ServomexError gives its message in CLI wording and its context in words
    (:func:`context_words`); raw bytes and extras only with ``verbose``.
    """
    if isinstance(exc, ServomexError):
        words = context_words(exc.context, exc.message, verbose=verbose)
        text = cli_wording(exc.message)
        return f"{text} ({words})" if words else text
    if isinstance(exc, OSError):
        return str(exc)
    leaves = list(_leaves(exc))
    if leaves and leaves[0] is not exc:
        return describe_error(leaves[0], verbose=verbose)
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"unexpected {name}: {exc}" if str(exc) else f"unexpected {name}"


def _causes(exc: BaseException) -> list[str]:
    lines: list[str] = []
    seen = {id(exc)}
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause)
        lines.append(f"  caused by {type(cause).__name__}" + (f": {text}" if text else ""))
        cause = cause.__cause__
    return lines


def report_failure(exc: BaseException, *, verbose: bool = False) -> int:
    """Print the one ``error:`` line for ``exc`` on stderr and return the exit code.

    * a closed stdout (EPIPE) → nothing printed, stdout silenced, 0;
    * a ServomexError or OSError (alone or inside exception groups) → ``error: …``, 1; with
      ``verbose`` the causes follow, one per line;
    * anything else → ``error: unexpected …`` and a hint to run with ``--verbose``, 1; with
      ``verbose`` the traceback comes first.
    """
    if is_broken_pipe(exc):
        silence_stdout()
        return EXIT_OK
    leaf = first_leaf(exc)
    lines: list[str] = []
    if leaf is None:
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
            lines.append(f"error: {describe_error(exc)}")
        else:
            lines.append(f"error: {describe_error(exc)} (run with --verbose for details)")
    else:
        lines.append(f"error: {describe_error(leaf, verbose=verbose)}")
        if verbose:
            lines += _causes(leaf)
    with contextlib.suppress(OSError, ValueError):
        print("\n".join(lines), file=sys.stderr, flush=True)
    return EXIT_ERROR


def verbose_of(args: argparse.Namespace) -> bool:
    """The ``--verbose`` flag of ``args`` (False when the parser has none)."""
    return bool(getattr(args, "verbose", False))


def run_async(
    fn: Callable[[argparse.Namespace], Awaitable[int]],
    args: argparse.Namespace,
    *,
    interrupted: int = EXIT_INTERRUPTED,
) -> int:
    """Run ``fn(args)`` on a fresh event loop and map its outcome to an exit code.

    Returns ``fn``'s code; ``interrupted`` on Ctrl-C; otherwise what :func:`report_failure`
    returns (one ``error:`` line and 1; 0 for a closed stdout).
    """
    try:
        return anyio.run(fn, args)
    except KeyboardInterrupt:
        return interrupted
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, BaseExceptionGroup) and _interrupted(exc):
            return interrupted
        return report_failure(exc, verbose=verbose_of(args))


def connection_lost(exc: BaseException) -> ServomexConnectionError | None:
    """The ServomexConnectionError in ``exc`` (bare, or the only leaf of nested exception
    groups), or None."""
    leaf = unwrap_group(exc)
    return leaf if isinstance(leaf, ServomexConnectionError) else None
