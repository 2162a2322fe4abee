"""Measurement units reported by the analyser (docs/protocol.md, §7).

Percent is the 4000-series' main concentration unit; external inputs report mA. The library
never converts values on its own: :func:`percent_to_vpm` and :func:`vpm_to_percent` are there
for callers who want to.
"""

from __future__ import annotations

import enum

__all__ = ["Unit", "UnitKind", "coerce_unit", "percent_to_vpm", "vpm_to_percent"]


class UnitKind(enum.StrEnum):
    """The physical quantity a unit measures."""

    CONCENTRATION = "concentration"
    CURRENT = "current"
    UNKNOWN = "unknown"


class Unit(enum.StrEnum):
    """A measurement unit as reported by the analyser; the value is its usual symbol."""

    PERCENT = "%"  # main 4000-series concentration unit (MAN)
    VPM = "vpm"  # volume parts per million
    PPM = "ppm"
    MILLIAMP = "mA"  # external 4-20 mA inputs E1/E2 (HW)
    UNKNOWN = "?"  # anything the table does not know; never an error

    @property
    def kind(self) -> UnitKind:
        return _KIND[self]

    @property
    def pint(self) -> str | None:
        """The unit's name in pint's registry, or None for UNKNOWN."""
        return _PINT[self]


_KIND = {
    Unit.PERCENT: UnitKind.CONCENTRATION,
    Unit.VPM: UnitKind.CONCENTRATION,
    Unit.PPM: UnitKind.CONCENTRATION,
    Unit.MILLIAMP: UnitKind.CURRENT,
    Unit.UNKNOWN: UnitKind.UNKNOWN,
}
_PINT: dict[Unit, str | None] = {
    Unit.PERCENT: "percent",
    Unit.VPM: "ppm",
    Unit.PPM: "ppm",
    Unit.MILLIAMP: "milliampere",
    Unit.UNKNOWN: None,
}
# Wire text after trimming and casefolding → Unit.
_BY_TEXT = {"%": Unit.PERCENT, "vpm": Unit.VPM, "ppm": Unit.PPM, "ma": Unit.MILLIAMP}


def coerce_unit(text: str | Unit | None) -> Unit:
    """Map unit text as sent by the analyser to a :class:`Unit`.

    Trailing NULs and surrounding spaces are removed and case is ignored
    (``" % "``, ``"%\\0\\0"``, ``" mA"``, ``"MA"``). Unknown or empty text gives
    ``Unit.UNKNOWN``; this function never raises.
    """
    if isinstance(text, Unit):
        return text
    if text is None:
        return Unit.UNKNOWN
    key = text.strip(" \t\x00").casefold()
    return _BY_TEXT.get(key, Unit.UNKNOWN)


def percent_to_vpm(percent: float) -> float:
    """1 % = 10 000 vpm."""
    return percent * 10000.0


def vpm_to_percent(vpm: float) -> float:
    """10 000 vpm = 1 %."""
    return vpm / 10000.0
