"""Argument checks shared by every layer: slave addresses, timeouts and other numbers.

These are value-layer helpers (they import only :mod:`servomexlib.errors` and
:mod:`servomexlib.settings`): each check either returns the accepted value or raises
:class:`~servomexlib.errors.ServomexValidationError` before any I/O, with the caller's
:class:`~servomexlib.errors.ErrorContext` attached so the message names the port, protocol or
address it was about.

The rules, stated once:

* a Modbus slave address is an ``int`` 1-247 (``bool`` is refused although it is an ``int``;
  0 is the broadcast address, which the library never addresses);
* a timeout (or any other duration) is a finite number of seconds greater than zero; where the
  caller allows it, ``None`` means "no deadline" / "use the default" and passes through;
* a "positive" number is a finite number greater than zero, a "non-negative" one is finite and
  at least zero;
* ``serial_settings`` is a :class:`~servomexlib.settings.SerialSettings` or None.

``bool`` is refused for every number: ``True`` would otherwise pass as ``1``. Numbers are
returned as ``float`` (an ``int`` timeout of ``2`` comes back as ``2.0``); the address as ``int``.
"""

from __future__ import annotations

import math
from typing import Literal, overload

from .errors import ErrorContext, ServomexValidationError
from .settings import SerialSettings

__all__ = [
    "MAX_ADDRESS",
    "MIN_ADDRESS",
    "check_address",
    "check_non_negative",
    "check_positive",
    "check_serial_settings",
    "check_timeout",
]

MIN_ADDRESS = 1
MAX_ADDRESS = 247


def _real(value: object) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number (or a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_address(address: object, ctx: ErrorContext | None = None) -> int:
    """A Modbus slave address: an ``int`` 1-247 (``bool`` refused).

    Raises:
        ServomexValidationError: ``"Modbus slave address must be an integer 1-247, got …"``.
    """
    if (
        isinstance(address, bool)
        or not isinstance(address, int)
        or not MIN_ADDRESS <= address <= MAX_ADDRESS
    ):
        raise ServomexValidationError(
            f"Modbus slave address must be an integer {MIN_ADDRESS}-{MAX_ADDRESS}, got {address!r}",
            context=ctx,
        )
    return address


@overload
def check_timeout(
    timeout: object,
    ctx: ErrorContext | None = None,
    *,
    what: str = "timeout",
    optional: Literal[False] = False,
) -> float: ...


@overload
def check_timeout(
    timeout: object,
    ctx: ErrorContext | None = None,
    *,
    what: str = "timeout",
    optional: bool,
) -> float | None: ...


def check_timeout(
    timeout: object,
    ctx: ErrorContext | None = None,
    *,
    what: str = "timeout",
    optional: bool = False,
) -> float | None:
    """A duration in seconds: finite and > 0; ``None`` passes when ``optional``.

    ``what`` names the argument in the message (``"probe_timeout"``, ``"frame_period"``).

    Raises:
        ServomexValidationError: ``"<what> must be a positive number of seconds[ or None],
        got …"``.
    """
    if timeout is None and optional:
        return None
    number = _real(timeout)
    if number is None or number <= 0:
        allowed = " or None" if optional else ""
        raise ServomexValidationError(
            f"{what} must be a positive number of seconds{allowed}, got {timeout!r}",
            context=ctx,
        )
    return number


@overload
def check_positive(
    name: str,
    value: object,
    ctx: ErrorContext | None = None,
    *,
    optional: Literal[False] = False,
) -> float: ...


@overload
def check_positive(
    name: str, value: object, ctx: ErrorContext | None = None, *, optional: bool
) -> float | None: ...


def check_positive(
    name: str, value: object, ctx: ErrorContext | None = None, *, optional: bool = False
) -> float | None:
    """A finite number > 0 (not a bool); ``None`` passes when ``optional``.

    Raises:
        ServomexValidationError: ``"<name> must be a positive number[ or None], got …"``.
    """
    if value is None and optional:
        return None
    number = _real(value)
    if number is None or number <= 0:
        allowed = " or None" if optional else ""
        raise ServomexValidationError(
            f"{name} must be a positive number{allowed}, got {value!r}", context=ctx
        )
    return number


def check_non_negative(name: str, value: object, ctx: ErrorContext | None = None) -> float:
    """A finite number >= 0 (not a bool).

    Raises:
        ServomexValidationError: ``"<name> must be a non-negative number, got …"``.
    """
    number = _real(value)
    if number is None or number < 0:
        raise ServomexValidationError(
            f"{name} must be a non-negative number, got {value!r}", context=ctx
        )
    return number


def check_serial_settings(settings: object, ctx: ErrorContext | None = None) -> None:
    """``serial_settings`` is a :class:`~servomexlib.settings.SerialSettings` or None.

    Raises:
        ServomexValidationError: ``"serial_settings must be a SerialSettings or None, got …"``.
    """
    if settings is not None and not isinstance(settings, SerialSettings):
        raise ServomexValidationError(
            f"serial_settings must be a SerialSettings or None, got {type(settings).__name__}",
            context=ctx,
        )
