"""Units (protocol.md §7, api.md §1) and SerialSettings (api.md §3)."""

from __future__ import annotations

import enum

import pytest

from servomexlib.errors import ServomexValidationError
from servomexlib.settings import (
    MAX_BAUD,
    MIN_BAUD,
    ByteSize,
    Parity,
    SerialSettings,
    StopBits,
)
from servomexlib.units import Unit, UnitKind, coerce_unit, percent_to_vpm, vpm_to_percent

# --------------------------------------------------------------------------------------------
# Units


def test_unit_enum_values() -> None:
    assert issubclass(Unit, enum.StrEnum)
    assert {u.name: u.value for u in Unit} == {
        "PERCENT": "%",
        "VPM": "vpm",
        "PPM": "ppm",
        "MILLIAMP": "mA",
        "UNKNOWN": "?",
    }
    assert {k.name: k.value for k in UnitKind} == {
        "CONCENTRATION": "concentration",
        "CURRENT": "current",
        "UNKNOWN": "unknown",
    }


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("%", Unit.PERCENT),
        (" % ", Unit.PERCENT),
        ("%\x00\x00\x00", Unit.PERCENT),
        (" % \x00", Unit.PERCENT),
        ("vpm", Unit.VPM),
        ("VPM", Unit.VPM),
        ("Vpm\x00", Unit.VPM),
        ("ppm", Unit.PPM),
        (" PPM", Unit.PPM),
        ("mA", Unit.MILLIAMP),
        (" mA", Unit.MILLIAMP),
        ("ma", Unit.MILLIAMP),
        ("MA", Unit.MILLIAMP),
        (" mA\x00", Unit.MILLIAMP),
        ("ppb", Unit.UNKNOWN),
        ("°C", Unit.UNKNOWN),
        ("% v", Unit.UNKNOWN),
        ("", Unit.UNKNOWN),
        ("   ", Unit.UNKNOWN),
        ("\x00\x00\x00\x00", Unit.UNKNOWN),
        ("?", Unit.UNKNOWN),
        (None, Unit.UNKNOWN),
    ],
)
def test_coerce_unit(text: str | None, unit: Unit) -> None:
    assert coerce_unit(text) is unit


def test_coerce_unit_passes_units_through() -> None:
    for unit in Unit:
        assert coerce_unit(unit) is unit


@pytest.mark.parametrize(
    ("unit", "kind", "pint"),
    [
        (Unit.PERCENT, UnitKind.CONCENTRATION, "percent"),
        (Unit.VPM, UnitKind.CONCENTRATION, "ppm"),
        (Unit.PPM, UnitKind.CONCENTRATION, "ppm"),
        (Unit.MILLIAMP, UnitKind.CURRENT, "milliampere"),
        (Unit.UNKNOWN, UnitKind.UNKNOWN, None),
    ],
)
def test_unit_kind_and_pint(unit: Unit, kind: UnitKind, pint: str | None) -> None:
    assert unit.kind is kind
    assert unit.pint == pint


def test_percent_vpm_helpers() -> None:
    assert percent_to_vpm(1.0) == 10000.0
    assert percent_to_vpm(20.95) == pytest.approx(209500.0)
    assert vpm_to_percent(10000.0) == 1.0
    assert vpm_to_percent(840.0) == pytest.approx(0.084)
    assert vpm_to_percent(percent_to_vpm(0.25)) == pytest.approx(0.25)
    assert percent_to_vpm(0) == 0


# --------------------------------------------------------------------------------------------
# SerialSettings


def test_serial_settings_defaults() -> None:
    s = SerialSettings("/dev/ttyUSB0")
    assert s.port == "/dev/ttyUSB0"
    assert s.baudrate == 19200
    assert s.bytesize is ByteSize.EIGHT
    assert s.parity is Parity.NONE
    assert s.stopbits is StopBits.ONE
    assert s.rtscts is False
    assert s.xonxoff is False
    assert s.exclusive is True
    assert s.bits_per_char == 10
    assert s.char_time_s == pytest.approx(10 / 19200)


def test_baud_constants() -> None:
    assert (MIN_BAUD, MAX_BAUD) == (2400, 19200)


@pytest.mark.parametrize("baud", [2400, 4800, 9600, 19200])
def test_baud_in_range_accepted(baud: int) -> None:
    assert SerialSettings("p", baudrate=baud).baudrate == baud


@pytest.mark.parametrize("baud", [2399, 19201, 115200, 0, -9600, 300])
def test_baud_out_of_range_rejected(baud: int) -> None:
    with pytest.raises(ServomexValidationError) as info:
        SerialSettings("COM3", baudrate=baud)
    assert info.value.context.port == "COM3"
    assert str(baud) in info.value.message


@pytest.mark.parametrize("baud", [9600.0, "9600", True, None])
def test_baud_must_be_an_integer(baud: object) -> None:
    with pytest.raises(ServomexValidationError):
        SerialSettings("p", baudrate=baud)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "bits"),
    [
        ({}, 10),
        ({"parity": Parity.EVEN}, 11),
        ({"parity": Parity.ODD, "stopbits": StopBits.TWO}, 12),
        ({"bytesize": ByteSize.SEVEN, "parity": Parity.EVEN}, 10),
        ({"bytesize": ByteSize.SEVEN}, 9),
        ({"stopbits": StopBits.TWO}, 11),
    ],
)
def test_bits_per_char(kwargs: dict[str, object], bits: int) -> None:
    s = SerialSettings("p", baudrate=9600, **kwargs)  # type: ignore[arg-type]
    assert s.bits_per_char == bits
    assert s.char_time_s == pytest.approx(bits / 9600)


def test_plain_values_are_coerced_to_enums() -> None:
    s = SerialSettings("p", bytesize=7, parity="even", stopbits=2)  # type: ignore[arg-type]
    assert s.bytesize is ByteSize.SEVEN
    assert s.parity is Parity.EVEN
    assert s.stopbits is StopBits.TWO


@pytest.mark.parametrize(
    "kwargs", [{"bytesize": 5}, {"parity": "mark"}, {"stopbits": 3}, {"parity": "N"}]
)
def test_bad_serial_fields_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ServomexValidationError):
        SerialSettings("p", **kwargs)  # type: ignore[arg-type]
