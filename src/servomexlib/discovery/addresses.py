"""Modbus address lists: ``5``, ``1,2,30``, ``1-247``, ``1-10,30`` (:func:`parse_addresses`) and
back (:func:`format_addresses`). Pure: no I/O.

:func:`check_addresses` is what :func:`~servomexlib.discovery.scan_bus` accepts for its
``addresses``: one address, an iterable of addresses or such a string, refused with a
:class:`~servomexlib.errors.ServomexValidationError` naming the offending item (outside 1-247,
a descending range, an address given twice, nothing at all). Each address is checked by
:func:`servomexlib.validation.check_address`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ErrorContext, ServomexValidationError
from ..validation import MAX_ADDRESS, MIN_ADDRESS, check_address

__all__ = ["check_addresses", "format_addresses", "parse_addresses"]


def parse_addresses(text: str) -> tuple[int, ...]:
    """Parse an address list: ``5``, ``1,2,30``, ``1-247``, ``1-10,30``.

    Returns:
        The addresses, ascending.

    Raises:
        ServomexValidationError: not a number, outside 1-247, a descending range, an address
            given twice, or nothing at all — naming the offending item.
    """
    if not isinstance(text, str) or not text.strip():
        raise ServomexValidationError(
            f"expected Modbus addresses such as 1,2,30 or 1-247, got {text!r}"
        )
    found: list[int] = []
    for item in text.split(","):
        part = item.strip()
        if not part:
            raise ServomexValidationError(f"empty item in address list {text!r}")
        low_text, dash, high_text = part.partition("-")
        low = _address_number(low_text, part)
        high = _address_number(high_text, part) if dash else low
        if high < low:
            raise ServomexValidationError(
                f"address range {part!r} runs backwards: write {high}-{low}"
            )
        found.extend(range(low, high + 1))
    return check_addresses(found, ErrorContext())


def format_addresses(addresses: Iterable[int]) -> str:
    """The inverse of :func:`parse_addresses`: ``1-3,10,30-32`` (ascending, runs as ranges)."""
    values = sorted(set(addresses))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def _address_number(text: str, item: str) -> int:
    word = text.strip()
    if not word.isdigit():
        raise ServomexValidationError(f"not a Modbus address: {item!r} (use 1-247, 1,2,30 or 1-10)")
    value = int(word)
    if not MIN_ADDRESS <= value <= MAX_ADDRESS:
        raise ServomexValidationError(f"Modbus address {value} in {item!r} is outside 1-247")
    return value


def check_addresses(addresses: object, ctx: ErrorContext) -> tuple[int, ...]:
    """An address, an address-list string or an iterable of addresses → ascending tuple."""
    if isinstance(addresses, str):
        try:
            return parse_addresses(addresses)
        except ServomexValidationError as exc:
            raise exc.with_context(port=ctx.port) from None
    if isinstance(addresses, int) and not isinstance(addresses, bool):
        return (check_address(addresses, ctx),)
    if not isinstance(addresses, Iterable):
        raise ServomexValidationError(
            f"addresses must be an address, a list of addresses or a string such as "
            f"'1-247', got {addresses!r}",
            context=ctx,
        )
    values = [check_address(a, ctx) for a in addresses]
    if not values:
        raise ServomexValidationError("no Modbus address to scan", context=ctx)
    seen: set[int] = set()
    for value in values:
        if value in seen:
            raise ServomexValidationError(f"Modbus address {value} is given twice", context=ctx)
        seen.add(value)
    return tuple(sorted(values))
