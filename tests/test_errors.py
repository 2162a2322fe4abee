"""The error tree and ErrorContext (api.md §9)."""

from __future__ import annotations

import copy
import pickle
import sys
from types import MappingProxyType

import pytest

from servomexlib import errors
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.errors import (
    ErrorContext,
    ServomexCapabilityError,
    ServomexChecksumError,
    ServomexConfigurationError,
    ServomexConfirmationRequiredError,
    ServomexConnectionError,
    ServomexError,
    ServomexFrameError,
    ServomexIllegalDataAddressError,
    ServomexIllegalFunctionError,
    ServomexModbusError,
    ServomexParseError,
    ServomexProtocolError,
    ServomexProtocolUnsupportedError,
    ServomexSinkDependencyError,
    ServomexSinkError,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexTimeoutError,
    ServomexTransportError,
    ServomexUnsupportedCommandError,
    ServomexValidationError,
)

# --------------------------------------------------------------------------------------------
# str() format


def test_str_of_the_spec_example_is_exact() -> None:
    err = ServomexTimeoutError(
        "no response from slave",
        context=ErrorContext(
            port="/dev/ttyUSB0",
            protocol=ProtocolKind.MODBUS_RTU,
            address=30,
            register=0,
            function_code=0x04,
            elapsed_s=3.1523,
        ),
    )
    assert str(err) == (
        "no response from slave [protocol=modbus_rtu, port=/dev/ttyUSB0, address=30, "
        "register=0, fc=0x04, elapsed_s=3.152]"
    )


def test_str_without_context_has_no_brackets() -> None:
    assert str(ServomexError("plain message")) == "plain message"
    assert str(ServomexError("plain", context=ErrorContext())) == "plain"
    assert str(ServomexError("plain", context=ErrorContext(extra={}))) == "plain"


def test_str_with_every_field_in_order() -> None:
    ctx = ErrorContext(
        port="COM3",
        protocol=ProtocolKind.MODBUS_ASCII,
        address=1,
        channel=ChannelId.E2,
        register=1000,
        function_code=0x2B,
        request=b"\x01\x02",
        response=b":0102\r\n",
        elapsed_s=0.5,
        extra={"op": "read"},
    )
    assert str(ServomexError("boom", context=ctx)) == (
        "boom [protocol=modbus_ascii, port=COM3, address=1, channel=E2, register=1000, "
        "fc=0x2B, elapsed_s=0.500, request=b'\\x01\\x02', response=b':0102\\r\\n', "
        "extra={'op': 'read'}]"
    )


@pytest.mark.parametrize(
    ("ctx", "suffix"),
    [
        (ErrorContext(function_code=8), " [fc=0x08]"),
        (ErrorContext(function_code=0x84), " [fc=0x84]"),
        (ErrorContext(function_code=0xAB), " [fc=0xAB]"),
        (ErrorContext(elapsed_s=0.0), " [elapsed_s=0.000]"),
        (ErrorContext(elapsed_s=12.34567), " [elapsed_s=12.346]"),
        (ErrorContext(address=0), " [address=0]"),
        (ErrorContext(register=0), " [register=0]"),
        (ErrorContext(protocol="continuous"), " [protocol=continuous]"),
        (ErrorContext(channel="I1"), " [channel=I1]"),
        (ErrorContext(response=b""), " [response=b'']"),
        (ErrorContext(extra={"computed": "2A8C"}), " [extra={'computed': '2A8C'}]"),
        (ErrorContext(port="p", extra={"b": 1, "a": 2}), " [port=p, extra={'b': 1, 'a': 2}]"),
    ],
)
def test_str_parts(ctx: ErrorContext, suffix: str) -> None:
    assert str(ServomexError("m", context=ctx)) == "m" + suffix


def test_message_attribute_and_args() -> None:
    err = ServomexParseError("bad N", context=ErrorContext(port="x"))
    assert err.message == "bad N"
    assert err.args == ("bad N",)
    assert ServomexError("m").context == ErrorContext()


# --------------------------------------------------------------------------------------------
# ErrorContext


def test_context_is_frozen_and_slotted() -> None:
    ctx = ErrorContext(port="p")
    assert not hasattr(ctx, "__dict__")
    with pytest.raises(AttributeError):
        ctx.port = "q"  # type: ignore[misc]


def test_merged_replaces_known_fields_and_collects_unknown_keys() -> None:
    base = ErrorContext(port="p", address=1, extra={"a": 1})
    merged = base.merged(address=2, function_code=4, a=10, b=20)
    assert merged.port == "p"
    assert merged.address == 2
    assert merged.function_code == 4
    assert dict(merged.extra) == {"a": 10, "b": 20}
    # The original is untouched.
    assert base.address == 1
    assert base.function_code is None
    assert dict(base.extra) == {"a": 1}


def test_merged_accepts_an_extra_mapping() -> None:
    merged = ErrorContext(extra={"a": 1}).merged(extra={"b": 2}, c=3)
    assert dict(merged.extra) == {"a": 1, "b": 2, "c": 3}
    assert isinstance(merged.extra, MappingProxyType)


def test_extra_is_a_read_only_copy() -> None:
    source = {"a": 1}
    ctx = ErrorContext(extra=source)
    assert isinstance(ctx.extra, MappingProxyType)
    source["a"] = 2
    assert ctx.extra["a"] == 1
    with pytest.raises(TypeError):
        ctx.extra["b"] = 3  # type: ignore[index]


def test_shared_empty_default_cannot_be_mutated() -> None:
    first, second = ErrorContext(), ErrorContext()
    assert isinstance(first.extra, MappingProxyType)
    with pytest.raises(TypeError):
        first.extra["x"] = 1  # type: ignore[index]
    first.merged(x=1)
    assert dict(second.extra) == {}
    assert dict(ErrorContext().extra) == {}
    assert dict(ServomexError("m").context.extra) == {}


# --------------------------------------------------------------------------------------------
# with_context


def _raise_chained() -> ServomexTimeoutError:
    try:
        try:
            raise OSError("inner")
        except OSError as exc:
            raise ServomexTimeoutError("outer", context=ErrorContext(port="p")) from exc
    except ServomexTimeoutError as err:
        return err


def test_with_context_keeps_class_args_cause_context_and_traceback() -> None:
    err = _raise_chained()
    assert err.__traceback__ is not None
    clone = err.with_context(address=7, op="read")
    assert type(clone) is ServomexTimeoutError
    assert clone is not err
    assert clone.args == err.args == ("outer",)
    assert clone.message == "outer"
    assert clone.__cause__ is err.__cause__
    assert isinstance(clone.__cause__, OSError)
    assert clone.__context__ is err.__context__
    assert clone.__suppress_context__ == err.__suppress_context__
    assert clone.__traceback__ is err.__traceback__
    assert clone.context.port == "p"
    assert clone.context.address == 7
    assert dict(clone.context.extra) == {"op": "read"}
    assert str(clone) == "outer [port=p, address=7, extra={'op': 'read'}]"
    # The original is unchanged.
    assert err.context == ErrorContext(port="p")
    assert str(err) == "outer [port=p]"


def test_with_context_on_a_multiply_inheriting_class() -> None:
    err = ServomexSinkDependencyError("install servomexlib[parquet]")
    clone = err.with_context(extra={"extra_name": "parquet"})
    assert type(clone) is ServomexSinkDependencyError
    assert clone.context.extra["extra_name"] == "parquet"


def test_with_context_clone_can_be_raised() -> None:
    err = _raise_chained()
    with pytest.raises(ServomexTimeoutError) as info:
        raise err.with_context(elapsed_s=1.0)
    assert info.value.context.elapsed_s == 1.0


# --------------------------------------------------------------------------------------------
# The tree


TREE: list[tuple[type[ServomexError], type[Exception]]] = [
    (ServomexError, Exception),
    (ServomexConfigurationError, ServomexError),
    (ServomexValidationError, ServomexConfigurationError),
    (ServomexConfirmationRequiredError, ServomexConfigurationError),
    (ServomexSinkDependencyError, ServomexConfigurationError),
    (ServomexTransportError, ServomexError),
    (ServomexTimeoutError, ServomexTransportError),
    (ServomexConnectionError, ServomexTransportError),
    (ServomexProtocolError, ServomexError),
    (ServomexParseError, ServomexProtocolError),
    (ServomexChecksumError, ServomexProtocolError),
    (ServomexFrameError, ServomexProtocolError),
    (ServomexProtocolUnsupportedError, ServomexProtocolError),
    (ServomexModbusError, ServomexProtocolError),
    (ServomexIllegalFunctionError, ServomexModbusError),
    (ServomexIllegalDataAddressError, ServomexModbusError),
    (ServomexCapabilityError, ServomexError),
    (ServomexUnsupportedCommandError, ServomexCapabilityError),
    (ServomexSinkError, ServomexError),
    (ServomexSinkDependencyError, ServomexSinkError),
    (ServomexSinkSchemaError, ServomexSinkError),
    (ServomexSinkWriteError, ServomexSinkError),
]


@pytest.mark.parametrize(("child", "parent"), TREE, ids=lambda c: c.__name__)
def test_hierarchy(child: type[ServomexError], parent: type[Exception]) -> None:
    assert issubclass(child, parent)


@pytest.mark.parametrize(
    ("child", "not_parent"),
    [
        (ServomexProtocolUnsupportedError, ServomexCapabilityError),
        (ServomexTimeoutError, ServomexProtocolError),
        (ServomexModbusError, ServomexTransportError),
        (ServomexValidationError, ServomexProtocolError),
        (ServomexSinkSchemaError, ServomexConfigurationError),
        (ServomexChecksumError, ServomexTransportError),
    ],
)
def test_branches_are_disjoint(child: type[ServomexError], not_parent: type[ServomexError]) -> None:
    assert not issubclass(child, not_parent)


def test_module_exports_exactly_the_tree() -> None:
    # The tree, its context, and the one helper that peels single-member exception groups.
    names = {cls.__name__ for cls, _ in TREE} | {"ErrorContext", "unwrap_group"}
    assert set(errors.__all__) == names
    for name in errors.__all__:
        assert getattr(errors, name) is getattr(sys.modules["servomexlib.errors"], name)


def test_sink_dependency_error_caught_both_ways() -> None:
    with pytest.raises(ServomexConfigurationError):
        raise ServomexSinkDependencyError("missing extra")
    with pytest.raises(ServomexSinkError):
        raise ServomexSinkDependencyError("missing extra")


# --------------------------------------------------------------------------------------------
# Pickling and copying


ALL_ERRORS: list[type[ServomexError]] = sorted({c for c, _ in TREE}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_pickle_round_trip(cls: type[ServomexError]) -> None:
    ctx = ErrorContext(
        port="/dev/ttyUSB0",
        protocol=ProtocolKind.MODBUS_RTU,
        address=30,
        channel=ChannelId.I1,
        register=0,
        function_code=4,
        request=b"\x1e\x04",
        response=None,
        elapsed_s=3.152,
        extra={"exception_code": 3},
    )
    err = cls("failure text", context=ctx)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(err, protocol=proto))
        assert type(back) is cls
        assert back.args == err.args
        assert back.message == err.message
        assert back.context == ctx
        assert isinstance(back.context.extra, MappingProxyType)
        assert str(back) == str(err)


def test_pickle_round_trip_without_context() -> None:
    back = pickle.loads(pickle.dumps(ServomexFrameError("x")))
    assert type(back) is ServomexFrameError
    assert str(back) == "x"
    assert back.context == ErrorContext()


def test_context_copy_and_pickle() -> None:
    ctx = ErrorContext(port="p", extra={"k": [1, 2]})
    assert copy.deepcopy(ctx) == ctx
    assert copy.copy(ctx) == ctx
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    assert pickle.loads(pickle.dumps(ErrorContext())) == ErrorContext()
