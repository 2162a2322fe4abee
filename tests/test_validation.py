"""The shared argument checks of servomexlib.validation (values layer)."""

from __future__ import annotations

import math

import pytest

from servomexlib.errors import ErrorContext, ServomexValidationError
from servomexlib.validation import (
    MAX_ADDRESS,
    MIN_ADDRESS,
    check_address,
    check_non_negative,
    check_positive,
    check_timeout,
)

CTX = ErrorContext(port="/dev/ttyUSB0", address=30)


@pytest.mark.parametrize("address", [1, 2, 30, 246, 247])
def test_address_accepted(address: int) -> None:
    assert check_address(address) == address
    assert (MIN_ADDRESS, MAX_ADDRESS) == (1, 247)


@pytest.mark.parametrize("address", [0, 248, -1, 1000, True, False, 1.0, "1", None])
def test_address_refused_names_the_range(address: object) -> None:
    with pytest.raises(ServomexValidationError, match="1-247") as info:
        check_address(address, CTX)
    assert repr(address) in info.value.message
    assert info.value.context.port == "/dev/ttyUSB0"
    assert "port=/dev/ttyUSB0" in str(info.value)


def test_address_without_context() -> None:
    with pytest.raises(ServomexValidationError) as info:
        check_address(0)
    assert info.value.context.is_empty()


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0.25, 0.25), (1e-9, 1e-9)])
def test_timeout_accepted_as_float(value: float, expected: float) -> None:
    result = check_timeout(value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    "value", [0, 0.0, -1, math.inf, -math.inf, math.nan, True, "1", None, [1.0]]
)
def test_timeout_refused(value: object) -> None:
    with pytest.raises(ServomexValidationError, match="timeout must be a positive number") as e:
        check_timeout(value, CTX)
    assert "or None" not in e.value.message
    assert e.value.context is CTX


def test_timeout_optional_passes_none_and_says_so() -> None:
    assert check_timeout(None, optional=True) is None
    assert check_timeout(2, optional=True) == 2.0
    with pytest.raises(ServomexValidationError, match="seconds or None, got 0"):
        check_timeout(0, optional=True)


def test_timeout_names_the_argument() -> None:
    with pytest.raises(ServomexValidationError, match=r"^probe_timeout must be .*got -0\.5"):
        check_timeout(-0.5, what="probe_timeout")


def test_positive() -> None:
    assert check_positive("rate_hz", 10) == 10.0
    assert check_positive("rate_hz", None, optional=True) is None
    for bad in (0, -3, math.nan, math.inf, True, "10", None):
        with pytest.raises(ServomexValidationError, match="rate_hz must be a positive number"):
            check_positive("rate_hz", bad, CTX)
    with pytest.raises(ServomexValidationError, match="positive number or None, got 0"):
        check_positive("frame_period", 0, optional=True)


def test_non_negative() -> None:
    assert check_non_negative("silence_s", 0) == 0.0
    assert check_non_negative("silence_s", 0.05) == 0.05
    for bad in (-0.001, math.nan, math.inf, True, None, "0"):
        with pytest.raises(ServomexValidationError, match="silence_s must be a non-negative") as e:
            check_non_negative("silence_s", bad, CTX)
        assert e.value.context.address == 30


def test_serial_settings() -> None:
    from servomexlib.settings import SerialSettings
    from servomexlib.validation import check_serial_settings

    check_serial_settings(None)
    check_serial_settings(SerialSettings(port="/dev/ttyUSB0"))
    with pytest.raises(ServomexValidationError, match="SerialSettings or None, got dict") as e:
        check_serial_settings({"baudrate": 9600}, CTX)
    assert e.value.context is CTX
