"""The servomexlib error tree and the context every error carries.

Every failure the library reports is a :class:`ServomexError`. Third-party and operating-system
errors are translated into this tree at the one boundary that met them (transport, client or
sink) and chained with ``raise … from exc`` so the original cause is never lost.

Each error carries an :class:`ErrorContext` naming where it happened (port, protocol, slave
address, channel, register, function code, raw request/response, time spent). ``str(err)``
appends the non-empty parts in a fixed order so that a log line says everything at once::

    no response from slave [protocol=modbus_rtu, port=/dev/ttyUSB0, address=30, register=0,
    fc=0x04, elapsed_s=3.152]

Task groups report a failure as an exception group even when one task failed.
:func:`unwrap_group` is the one place that peels single-member groups back to the error itself
(record(), the sync portal and the CLI all use it); groups of several errors are real news and
stay as they are.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Self

__all__ = [
    "ErrorContext",
    "ServomexCapabilityError",
    "ServomexChecksumError",
    "ServomexConfigurationError",
    "ServomexConfirmationRequiredError",
    "ServomexConnectionError",
    "ServomexError",
    "ServomexFrameError",
    "ServomexIllegalDataAddressError",
    "ServomexIllegalFunctionError",
    "ServomexModbusError",
    "ServomexParseError",
    "ServomexProtocolError",
    "ServomexProtocolUnsupportedError",
    "ServomexSinkDependencyError",
    "ServomexSinkError",
    "ServomexSinkSchemaError",
    "ServomexSinkWriteError",
    "ServomexTimeoutError",
    "ServomexTransportError",
    "ServomexUnsupportedCommandError",
    "ServomexValidationError",
    "unwrap_group",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorContext:
    """Where an error happened. Every field is optional; ``extra`` holds anything else.

    ``extra`` accepts any mapping and is stored as a read-only copy, so neither the caller's
    dict nor the shared empty default can be mutated through a context.
    """

    port: str | None = None
    protocol: Any = None
    address: int | None = None
    channel: Any = None
    register: int | None = None
    function_code: int | None = None
    request: bytes | None = None
    response: bytes | None = None
    elapsed_s: float | None = None
    extra: Mapping[str, Any] = _EMPTY

    def __post_init__(self) -> None:
        if self.extra is not _EMPTY:
            # An empty mapping becomes the shared read-only default (keeps pickles small).
            frozen = MappingProxyType(dict(self.extra)) if self.extra else _EMPTY
            object.__setattr__(self, "extra", frozen)

    def __reduce__(self) -> tuple[Any, ...]:
        # A MappingProxyType cannot be pickled or deep-copied: rebuild from a plain dict.
        values = tuple(getattr(self, name) for name in _POSITIONAL)
        return (_rebuild_context, (values, dict(self.extra)))

    def merged(self, **kw: Any) -> ErrorContext:
        """Return a new context: known fields replaced, unknown keys merged into ``extra``."""
        known: dict[str, Any] = {}
        extra = dict(self.extra)
        for key, value in kw.items():
            if key == "extra":
                extra.update(value)
            elif key in _FIELD_NAMES:
                known[key] = value
            else:
                extra[key] = value
        return dataclasses.replace(self, **known, extra=extra)

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in _FIELD_NAMES) and not self.extra

    def describe(self) -> str:
        """The bracketed part of ``str(err)`` without brackets; empty when nothing is set."""
        parts: list[str] = []

        def show(value: Any) -> str:
            return str(value.value) if isinstance(value, enum.Enum) else str(value)

        if self.protocol is not None:
            parts.append(f"protocol={show(self.protocol)}")
        if self.port is not None:
            parts.append(f"port={self.port}")
        if self.address is not None:
            parts.append(f"address={self.address}")
        if self.channel is not None:
            parts.append(f"channel={show(self.channel)}")
        if self.register is not None:
            parts.append(f"register={self.register}")
        if self.function_code is not None:
            parts.append(f"fc=0x{self.function_code:02X}")
        if self.elapsed_s is not None:
            parts.append(f"elapsed_s={self.elapsed_s:.3f}")
        if self.request is not None:
            parts.append(f"request={self.request!r}")
        if self.response is not None:
            parts.append(f"response={self.response!r}")
        if self.extra:
            parts.append(f"extra={dict(self.extra)!r}")
        return ", ".join(parts)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ErrorContext)) - {"extra"}
_POSITIONAL = tuple(f.name for f in dataclasses.fields(ErrorContext) if f.name != "extra")


def _rebuild_context(values: tuple[Any, ...], extra: dict[str, Any]) -> ErrorContext:
    return ErrorContext(**dict(zip(_POSITIONAL, values, strict=True)), extra=extra)


_EMPTY_CONTEXT = ErrorContext()


class ServomexError(Exception):
    """Base of every error raised by servomexlib."""

    def __init__(self, message: str, *, context: ErrorContext | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context = context if context is not None else _EMPTY_CONTEXT

    def __str__(self) -> str:
        detail = self.context.describe()
        return f"{self.message} [{detail}]" if detail else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context), self.__dict__)

    def with_context(self, **kw: Any) -> Self:
        """A copy of this error (same class, args, cause and traceback) with a merged context."""
        clone = copy.copy(self)
        clone.context = self.context.merged(**kw)
        clone.__cause__ = self.__cause__
        clone.__context__ = self.__context__
        clone.__suppress_context__ = self.__suppress_context__
        clone.__traceback__ = self.__traceback__
        return clone


def _rebuild(cls: type[ServomexError], message: str, context: ErrorContext) -> ServomexError:
    err = cls.__new__(cls)
    ServomexError.__init__(err, message, context=context)
    return err


class ServomexConfigurationError(ServomexError):
    """The call or the configuration is wrong; nothing was sent."""


class ServomexValidationError(ServomexConfigurationError):
    """A bad argument detected before any I/O (unknown channel, bad group, no snapshot, …)."""


class ServomexConfirmationRequiredError(ServomexConfigurationError):
    """A STATEFUL operation was called without ``confirm=True``."""


class ServomexTransportError(ServomexError):
    """Bytes could not be moved."""


class ServomexTimeoutError(ServomexTransportError):
    """A read or write timed out, or a Modbus slave gave no valid reply after the retries."""


class ServomexConnectionError(ServomexTransportError):
    """The port could not be opened, was closed, reached end of stream, or nothing answered."""


class ServomexProtocolError(ServomexError):
    """Bytes arrived but do not form a valid message."""


class ServomexParseError(ServomexProtocolError):
    """A field could not be decoded (unknown channel id, non-integer channel count)."""


class ServomexChecksumError(ServomexProtocolError):
    """A continuous frame's checksum is not hex or does not match the bytes."""


class ServomexFrameError(ServomexProtocolError):
    """A continuous frame has the wrong shape (start byte, final ';', field count)."""


class ServomexProtocolUnsupportedError(ServomexProtocolError):
    """The active wire mode cannot do this (e.g. calibration in continuous mode)."""


class ServomexModbusError(ServomexProtocolError):
    """A Modbus exception reply or an engine-level Modbus failure."""


class ServomexIllegalFunctionError(ServomexModbusError):
    """Modbus exception 01: the slave does not support the function code."""


class ServomexIllegalDataAddressError(ServomexModbusError):
    """Modbus exception 02: the address range is outside the slave's map."""


class ServomexCapabilityError(ServomexError):
    """Defined for applications; the core raises ServomexProtocolUnsupportedError instead."""


class ServomexUnsupportedCommandError(ServomexCapabilityError):
    """Defined for applications; not raised by the core."""


class ServomexSinkError(ServomexError):
    """A sink failed to store samples."""


class ServomexSinkDependencyError(ServomexSinkError, ServomexConfigurationError):
    """An optional back end is not installed; the message names the extra to install."""


class ServomexSinkSchemaError(ServomexSinkError):
    """The target's columns or header do not match the sample schema."""


class ServomexSinkWriteError(ServomexSinkError):
    """Writing a batch failed; the batch was rolled back where the format allows it."""


def unwrap_group(exc: BaseException) -> BaseException:
    """The error inside ``exc`` once single-member exception groups are peeled off.

    Peels repeatedly (a group holding a group holding one error gives that error). A bare
    error is returned as is; at the first level holding several members, that group is
    returned unchanged. The error returned is the very object that was raised, so its
    traceback, ``__cause__`` and ``__context__`` are intact.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
