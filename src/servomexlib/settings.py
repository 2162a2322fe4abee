"""Serial line settings (docs/protocol.md, §1), a pure value shared by every layer.

Re-exported from :mod:`servomexlib.transport` and the top-level package.
"""

from __future__ import annotations

import dataclasses
import enum

from .errors import ErrorContext, ServomexValidationError

__all__ = ["MAX_BAUD", "MIN_BAUD", "ByteSize", "Parity", "SerialSettings", "StopBits"]

#: The analyser's documented baud range (docs/protocol.md, §1, MAN).
MIN_BAUD = 2400
MAX_BAUD = 19200


class ByteSize(enum.IntEnum):
    SEVEN = 7  # classic Modbus ASCII; whether the 4100 offers it is unknown
    EIGHT = 8  # the analyser's default (HW)


class Parity(enum.StrEnum):
    NONE = "none"
    EVEN = "even"
    ODD = "odd"


class StopBits(enum.IntEnum):
    ONE = 1
    TWO = 2


@dataclasses.dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open a serial line. Defaults are the analyser's: 19200 baud, 8-N-1, no flow control.

    ``baudrate`` must lie in the analyser's range ``MIN_BAUD``–``MAX_BAUD`` (2400–19200); a rate
    outside it raises :class:`ServomexValidationError` here, before any port is touched.
    """

    port: str
    baudrate: int = 19200
    bytesize: ByteSize = ByteSize.EIGHT
    parity: Parity = Parity.NONE
    stopbits: StopBits = StopBits.ONE
    rtscts: bool = False
    xonxoff: bool = False
    exclusive: bool = True

    def __post_init__(self) -> None:
        ctx = ErrorContext(port=self.port)
        if isinstance(self.baudrate, bool) or not isinstance(self.baudrate, int):
            raise ServomexValidationError(
                f"baudrate must be an integer, got {self.baudrate!r}", context=ctx
            )
        if not MIN_BAUD <= self.baudrate <= MAX_BAUD:
            raise ServomexValidationError(
                f"baudrate {self.baudrate} is outside the analyser's range {MIN_BAUD}-{MAX_BAUD}",
                context=ctx,
            )
        try:
            object.__setattr__(self, "bytesize", ByteSize(self.bytesize))
            object.__setattr__(self, "parity", Parity(self.parity))
            object.__setattr__(self, "stopbits", StopBits(self.stopbits))
        except ValueError as exc:
            raise ServomexValidationError(f"bad serial setting: {exc}", context=ctx) from exc

    @property
    def bits_per_char(self) -> int:
        """Start bit + data bits + parity bit + stop bits: 10 for 8-N-1."""
        return (
            1 + int(self.bytesize) + (0 if self.parity is Parity.NONE else 1) + int(self.stopbits)
        )

    @property
    def char_time_s(self) -> float:
        """Seconds one character occupies on the line."""
        return self.bits_per_char / self.baudrate
