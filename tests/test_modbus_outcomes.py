"""The declarative anymodbus-exception → outcome table (docs/protocol.md §4.14), without I/O.

Each row of the table below is one way an attempt can end and what docs/protocol.md §4.14 and
§9.2-§9.3 say it means: may it be retried, does it leave the line uncertain (fence next), is
the response captured, does a transport error behind it win, which counter moves and which
``Servomex*`` error comes out.
"""

from __future__ import annotations

import anyio
import anymodbus
import pytest

from servomexlib.clients.modbus_outcomes import (
    EXCEPTION_REPLY,
    OUTCOMES,
    UNCERTAIN_TRANSACTIONS,
    classify,
    connection_cause,
    exception_reply_error,
    exhausted_error,
)
from servomexlib.errors import (
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

CTX = ErrorContext(port="fake://bus", address=7, function_code=4, register=0)


def _reply(cls: type[anymodbus.ModbusExceptionResponse], code: int | None = None) -> BaseException:
    return cls(function_code=4, exception_code=code)


# exception, retryable, uncertain, counter, error class (None: reported after the last attempt)
ROWS: list[tuple[BaseException, bool, bool, str | None, type[ServomexError] | None]] = [
    (
        _reply(anymodbus.IllegalFunctionError),
        False,
        False,
        "exceptions",
        ServomexIllegalFunctionError,
    ),
    (
        _reply(anymodbus.IllegalDataAddressError),
        False,
        False,
        "exceptions",
        ServomexIllegalDataAddressError,
    ),
    (_reply(anymodbus.SlaveDeviceBusyError), False, False, "exceptions", ServomexModbusError),
    (
        _reply(anymodbus.ModbusExceptionResponse, 0x0B),
        False,
        False,
        "exceptions",
        ServomexModbusError,
    ),
    (anymodbus.UnexpectedResponseError("fc 03 for 04"), False, True, None, ServomexProtocolError),
    (anymodbus.ConfigurationError("count 0"), False, True, None, ServomexValidationError),
    (anymodbus.CRCError("bad crc"), True, True, "checksum_errors", None),
    (anymodbus.LRCError("bad lrc"), True, True, "checksum_errors", None),
    (anymodbus.FrameError("short frame"), True, True, None, None),
    (anymodbus.FrameTimeoutError("gap"), True, True, None, None),
    (TimeoutError(), True, True, None, None),
    (anymodbus.ConnectionLostError("gone"), False, True, None, ServomexConnectionError),
    (anymodbus.TransportError("EIO"), False, True, None, ServomexConnectionError),
    (anymodbus.BusClosedError("closed"), False, True, None, ServomexConnectionError),
    (anymodbus.ModbusUnsupportedFunctionError("fc 99"), False, True, None, ServomexModbusError),
    (ServomexTimeoutError("read timed out"), False, True, None, ServomexTimeoutError),
]


@pytest.mark.parametrize(
    ("exc", "retryable", "uncertain", "counter", "error"),
    ROWS,
    ids=[type(row[0]).__name__ for row in ROWS],
)
def test_every_way_an_attempt_ends_maps_as_documented(
    exc: BaseException,
    retryable: bool,
    uncertain: bool,
    counter: str | None,
    error: type[ServomexError] | None,
) -> None:
    outcome = classify(exc)
    assert outcome is not None
    assert (outcome.retryable, outcome.uncertain, outcome.counter) == (
        retryable,
        uncertain,
        counter,
    )
    if error is None:
        assert outcome.error is None  # becomes one ServomexTimeoutError after the last attempt
        return
    assert outcome.error is not None
    built = outcome.error(exc, CTX)
    assert type(built) is error
    assert (built.context.port, built.context.address, built.context.register) == (
        "fake://bus",
        7,
        0,
    )


def test_exception_replies_carry_their_code_and_are_replies() -> None:
    outcome = classify(_reply(anymodbus.IllegalDataAddressError))
    assert outcome is EXCEPTION_REPLY
    assert outcome.is_reply
    assert not outcome.uncertain
    built = exception_reply_error(_reply(anymodbus.SlaveDeviceBusyError), CTX)
    assert built.context.extra["exception_code"] == 0x06
    assert type(exception_reply_error(_reply(anymodbus.ModbusExceptionResponse, 1), CTX)) is (
        ServomexIllegalFunctionError
    )


def test_a_bug_is_not_an_outcome() -> None:
    assert classify(KeyError("bug")) is None  # propagates unchanged from the attempt loop
    assert classify(anyio.EndOfStream()) is None


def test_subclasses_stand_before_their_bases() -> None:
    """First match wins, so no row is shadowed by an earlier, broader one."""
    types = [t for t, _ in OUTCOMES]
    for i, earlier in enumerate(types):
        for later in types[i + 1 :]:
            assert not issubclass(later, earlier), (later, earlier)


def test_a_transport_error_behind_an_anymodbus_error_wins() -> None:
    lost = ServomexConnectionError("end of stream on fake://bus")
    wrapped = anymodbus.FrameTimeoutError("mid-frame")
    wrapped.__cause__ = lost
    outcome = classify(wrapped)
    assert outcome is not None
    assert outcome.transport_cause
    assert connection_cause(wrapped) is lost
    assert connection_cause(anymodbus.FrameError("x")) is None


def test_the_error_after_the_last_attempt_says_what_the_last_one_heard() -> None:
    assert exhausted_error(TimeoutError(), CTX).message == "no response from slave"
    message = exhausted_error(anymodbus.CRCError("bad CRC"), CTX).message
    assert message == "no valid response from slave: bad CRC"
    assert isinstance(exhausted_error(None, CTX), ServomexTimeoutError)


def test_the_observer_waits_out_a_late_reply_after_every_unanswered_transaction() -> None:
    T = anymodbus.TransactionOutcome
    assert set(T) - UNCERTAIN_TRANSACTIONS == {
        T.REPLY,  # answered
        T.EXCEPTION_REPLY,  # answered
        T.BROADCAST_SENT,  # nothing answers a broadcast
        T.CONNECTION_ERROR,  # the line is gone
    }
