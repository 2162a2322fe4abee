"""PostgreSQL binary COPY encoding of a batch (the fast path of :class:`PostgresSink`).

The payload is PostgreSQL's binary COPY format: an 11-byte signature, two 32-bit header words,
then per row a 16-bit field count and per field a 32-bit length (-1 for NULL) and the value in
the type's binary "send" form — ``text`` as UTF-8, ``float8`` and ``int8`` big-endian, ``boolean``
one byte — and a 16-bit -1 trailer. It is the same data asyncpg's ``copy_records_to_table``
sends for those column types, built a column at a time with C loops instead of row by row
(:func:`~.schema.join_rows`): a column holding one value in every row is encoded once, text
once per distinct value, numbers with a precompiled :class:`struct.Struct`.

It is only valid when every column written has exactly the declared type of the schema
(text, float8, bool, int8); the sink checks that at ``open()`` and otherwise lets asyncpg
encode for the table's real types.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any, Final

from .schema import ColumnType, cells_by_value, join_rows, repeated

__all__ = ["PG_TYPE_NAMES", "copy_payload"]

#: ``information_schema.columns.udt_name`` of each declared column type.
PG_TYPE_NAMES: Final = {
    ColumnType.TEXT: "text",
    ColumnType.FLOAT: "float8",
    ColumnType.BOOL: "bool",
    ColumnType.INT: "int8",
}

_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no extension
_TRAILER: Final = b"\xff\xff"
_NULL: Final = b"\xff\xff\xff\xff"
_BOOL: Final = {True: b"\x00\x00\x00\x01\x01", False: b"\x00\x00\x00\x01\x00", None: _NULL}
_FLOAT8: Final = struct.Struct("!id").pack
_INT8: Final = struct.Struct("!iq").pack
_LENGTH: Final = struct.Struct("!i").pack


def _text(value: str | None) -> bytes:
    if value is None:
        return _NULL
    data = value.encode("utf-8")
    return _LENGTH(len(data)) + data


def _texts(column: list[Any]) -> list[bytes]:
    return cells_by_value(column, _text)


def _packed(pack: Callable[[int, Any], bytes]) -> Callable[[list[Any]], list[bytes]]:
    def encode(column: list[Any]) -> list[bytes]:
        if None in column:
            return [_NULL if v is None else pack(8, v) for v in column]
        return list(map(pack, repeat(8, len(column)), column))

    return encode


def _booleans(column: list[Any]) -> list[bytes]:
    return list(map(_BOOL.__getitem__, column))


_ENCODERS: Final[dict[ColumnType, Callable[[list[Any]], list[bytes]]]] = {
    ColumnType.TEXT: _texts,
    ColumnType.FLOAT: _packed(_FLOAT8),
    ColumnType.INT: _packed(_INT8),
    ColumnType.BOOL: _booleans,
}


def copy_payload(columns: Sequence[list[Any]], types: Sequence[ColumnType]) -> bytes:
    """The binary COPY data of the rows given as ``columns`` of the declared ``types``.

    Raises:
        struct.error, UnicodeEncodeError: a value cannot be encoded as its column type.
    """
    n = len(columns[0])
    pieces: list[bytes | list[bytes]] = [struct.pack("!h", len(columns))]
    for column, kind in zip(columns, types, strict=True):
        encode = _ENCODERS[kind]
        pieces.append(encode(column[:1])[0] if repeated(column) else encode(column))
    return _HEADER + join_rows(pieces, n, b"") + _TRAILER
