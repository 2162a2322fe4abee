"""How each way a Modbus attempt can end becomes an outcome and an error: one table (private).

Pure: no I/O. The attempt loop of :class:`~servomexlib.clients.modbus_attempts.Transactions`
runs one anymodbus ``Slave`` call, and when it raises looks the exception up in
:data:`OUTCOMES` instead of a chain of ``except`` clauses. Errors are translated here and
nowhere else (docs/protocol.md, §4.14).

Theory of operation
-------------------
Each row of :data:`OUTCOMES` names an exception type and what it means, first match wins (so
subclasses stand before their bases):

* ``retryable`` — another attempt may follow (for the idempotent function codes FC01-04 and
  FC08 only; FC05 is never retried, docs/protocol.md, §9.2): no reply, a CRC/LRC error, a
  malformed frame. After the last attempt they become one ``ServomexTimeoutError`` ("no
  response from slave" when the last attempt heard nothing, else "no valid response from
  slave: …").
* ``uncertain`` — a reply to the attempt may still be on its way, so the line fences the
  address before its next transaction (docs/protocol.md, §9.3). Everything but an exception
  reply: that *is* the slave's answer.
* ``captures_response`` — the bytes received for the attempt go into the error's context.
* ``transport_cause`` — when the transport's own ``ServomexConnectionError`` is behind the
  anymodbus error (end of stream mid-frame, a closed port), that error is raised instead.
* ``counter`` — the client counter the outcome adds one to.
* ``error`` — how the ``Servomex*`` error is built from the exception and the context (None
  for retryable outcomes: they are reported after the last attempt).

An exception reply (``is_reply``) is a reply like any other for timing and the too-early rule;
its code picks the error class from :data:`EXCEPTION_ERRORS`: 01 →
``ServomexIllegalFunctionError``, 02 → ``ServomexIllegalDataAddressError``, any other →
``ServomexModbusError``. An exception the table does not name (a bug) propagates unchanged.

:data:`UNCERTAIN_TRANSACTIONS` is the same rule for anymodbus's transaction observer: the
transaction outcomes after which the line waits out a late reply before the next attempt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import anymodbus

from ..errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexError,
    ServomexIllegalDataAddressError,
    ServomexIllegalFunctionError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexValidationError,
)

__all__ = [
    "EXCEPTION_ERRORS",
    "EXCEPTION_REPLY",
    "OUTCOMES",
    "UNCERTAIN_TRANSACTIONS",
    "EarlyReplyError",
    "Outcome",
    "classify",
    "connection_cause",
    "context_fields",
    "describe",
    "exception_reply_error",
    "exhausted_error",
]

type ErrorBuilder = Callable[[BaseException, ErrorContext], ServomexError]


class EarlyReplyError(Exception):
    """A reply that began too soon after its request to answer it (never raised to users)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What one way of ending an attempt means (module docstring)."""

    name: str
    retryable: bool
    uncertain: bool = True
    captures_response: bool = True
    transport_cause: bool = False
    counter: str | None = None
    is_reply: bool = False
    error: ErrorBuilder | None = None


def context_fields(ctx: ErrorContext) -> dict[str, Any]:
    """A context's set fields as keywords for ``with_context`` (keeps the error's own extras)."""
    out: dict[str, Any] = {
        f.name: getattr(ctx, f.name)
        for f in dataclasses.fields(ctx)
        if f.name != "extra" and getattr(ctx, f.name) is not None
    }
    if ctx.extra:
        out["extra"] = dict(ctx.extra)
    return out


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    return str(exc) or type(exc).__name__


#: Exception code → error class; codes not listed are ``ServomexModbusError``.
EXCEPTION_ERRORS: dict[int, type[ServomexModbusError]] = {
    0x01: ServomexIllegalFunctionError,
    0x02: ServomexIllegalDataAddressError,
}


def exception_reply_error(exc: BaseException, ctx: ErrorContext) -> ServomexError:
    """docs/protocol.md, §4.14: 01 → IllegalFunction, 02 → IllegalDataAddress, else ModbusError;
    the code goes into ``extra["exception_code"]``."""
    code = exc.exception_code if isinstance(exc, anymodbus.ModbusExceptionResponse) else None
    cls = ServomexModbusError if code is None else EXCEPTION_ERRORS.get(code, ServomexModbusError)
    return cls(describe(exc), context=ctx.merged(exception_code=code))


def _message(cls: type[ServomexError]) -> ErrorBuilder:
    def build(exc: BaseException, ctx: ErrorContext) -> ServomexError:
        return cls(describe(exc), context=ctx)

    return build


def _own(exc: BaseException, ctx: ErrorContext) -> ServomexError:
    assert isinstance(exc, ServomexError)
    return exc.with_context(**context_fields(ctx))


EXCEPTION_REPLY = Outcome(
    "exception reply",
    retryable=False,
    uncertain=False,
    counter="exceptions",
    is_reply=True,
    error=exception_reply_error,
)
_NO_VALID_REPLY = Outcome("no valid reply", retryable=True, transport_cause=True)
_LOST = Outcome(
    "connection lost",
    retryable=False,
    transport_cause=True,
    error=_message(ServomexConnectionError),
)

#: Exception type → outcome, first match wins (docs/protocol.md, §4.14).
OUTCOMES: tuple[tuple[type[BaseException], Outcome], ...] = (
    (anymodbus.ModbusExceptionResponse, EXCEPTION_REPLY),
    (
        anymodbus.UnexpectedResponseError,
        Outcome("mismatched reply", retryable=False, error=_message(ServomexProtocolError)),
    ),
    (
        anymodbus.ConfigurationError,
        Outcome(
            "bad request",
            retryable=False,
            captures_response=False,
            error=_message(ServomexValidationError),
        ),
    ),
    (
        anymodbus.ChecksumError,
        Outcome("checksum error", retryable=True, transport_cause=True, counter="checksum_errors"),
    ),
    (anymodbus.ProtocolError, _NO_VALID_REPLY),
    (anymodbus.FrameTimeoutError, _NO_VALID_REPLY),
    (TimeoutError, _NO_VALID_REPLY),
    (anymodbus.ConnectionLostError, _LOST),
    (anymodbus.BusClosedError, _LOST),
    (
        anymodbus.ModbusError,
        Outcome("Modbus engine error", retryable=False, error=_message(ServomexModbusError)),
    ),
    (ServomexError, Outcome("library error", retryable=False, error=_own)),
)

_BY_TYPE: dict[type[BaseException], Outcome | None] = {}


def classify(exc: BaseException) -> Outcome | None:
    """The outcome of an attempt that raised ``exc``; None for an exception the table does not
    name (it propagates unchanged)."""
    cls = type(exc)
    try:
        return _BY_TYPE[cls]
    except KeyError:
        pass
    found = next((outcome for base, outcome in OUTCOMES if issubclass(cls, base)), None)
    _BY_TYPE[cls] = found
    return found


def connection_cause(exc: BaseException) -> ServomexConnectionError | None:
    """The transport's connection error behind an anymodbus error (EOF mid-frame, closed)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ServomexConnectionError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def exhausted_error(last: BaseException | None, ctx: ErrorContext) -> ServomexTimeoutError:
    """The error after the last attempt of a retryable outcome."""
    message = (
        "no response from slave"
        if isinstance(last, TimeoutError)
        else f"no valid response from slave: {describe(last)}"
    )
    return ServomexTimeoutError(message, context=ctx)


#: anymodbus transaction outcomes after which a late reply may still arrive.
UNCERTAIN_TRANSACTIONS = frozenset(
    {
        anymodbus.TransactionOutcome.TIMEOUT,
        anymodbus.TransactionOutcome.CHECKSUM_ERROR,
        anymodbus.TransactionOutcome.UNEXPECTED_RESPONSE,
        anymodbus.TransactionOutcome.FRAME_ERROR,
        anymodbus.TransactionOutcome.CANCELLED,
        anymodbus.TransactionOutcome.ERROR,
    }
)
