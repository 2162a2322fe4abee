"""One configuration object for the simulator: :class:`SimConfig`.

Theory of operation
-------------------
Everything a simulated line can be told when it is built — by ``Simulator(...)`` keyword
arguments, by a ``sim://`` query, by ``servomex simulate`` options — is one field of the frozen
:class:`SimConfig`, and every field is checked by one rule (:data:`_CHECKS`), whichever way it
came in. ``Simulator(**kwargs)`` builds a ``SimConfig`` from its keyword arguments (their names
are the field names); :meth:`SimConfig.from_query` parses ``sim://`` query options (strings)
into the same fields, so a URL and the keyword arguments it stands for give equal configs:

======================  ===========================  ==========================================
``sim://`` key          field                        meaning
======================  ===========================  ==========================================
``mode``                ``mode``                     continuous / modbus_rtu / modbus_ascii
``address``             ``addresses``                1-247; a comma list: one analyser each
``channels`` ``names``  ``channels``                 slots, and comma lists aligned with them
``units`` ``values``
``baud``                ``baudrate`` (``serial``)    the line rate bytes are paced at
``period``              ``frame_period``             seconds between continuous frames
``terminator``          ``terminator``               crlf / lf / cr
``latency_ms``          ``latency_s``                reply turnaround ``MIN-MAX`` (ms → s)
``drop``                ``silence_drop``             the measured silence rule on/off
``drop_until_ms``       ``silence_drop_until_s``     the harsh silence rule (ms → s)
``reject_gaps``         ``reject_gaps``              exception 02 for reads touching a gap
``realtime``            ``realtime``                 pacing, turnaround and drops on/off
``seed``                ``seed``                     seeds every random choice
``scenario``            ``scenario``                 a preset applied after building
``clock``               ``clock``                    the analyser clock at creation (ISO)
======================  ===========================  ==========================================

``name`` (the URL's host part), ``serial`` and ``line_clock`` have no query key. A ``baud``
that ``SerialSettings`` can hold (2400-19200) is also the line settings' rate; any other rate
paces the line while the settings keep 19200. A bad value raises
:class:`~servomexlib.errors.ServomexValidationError` — naming the field for keyword arguments,
``bad sim:// key=value: why`` (with the URL as the port) for a query.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..devices.models import ChannelId, ProtocolKind, coerce_channel
from ..errors import ErrorContext, ServomexError, ServomexValidationError
from ..settings import MAX_BAUD, MIN_BAUD, SerialSettings
from ..validation import check_address
from .channels import DEFAULT_4100D_CHANNELS, SimChannel, check_channel_list
from .model import check_mode
from .presets import PRESETS, default_channel

if TYPE_CHECKING:
    from .line import SimLine
    from .simulator import Simulator

__all__ = ["QUERY_KEYS", "SimConfig", "coerce_channels", "spec_from_options"]

#: The ``sim://`` query keys, in documentation order.
QUERY_KEYS = (
    "mode",
    "address",
    "channels",
    "names",
    "units",
    "values",
    "baud",
    "period",
    "terminator",
    "latency_ms",
    "drop",
    "drop_until_ms",
    "reject_gaps",
    "realtime",
    "seed",
    "scenario",
    "clock",
)
_TERMINATORS = {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_OVER_RANGE = {"over", "nan", "+", "++++++", "none"}
_DEFAULT_SLOTS = ("I1", "I2", "I3", "E1", "E2")


def _invalid(message: str) -> ServomexValidationError:
    return ServomexValidationError(message, context=ErrorContext(protocol="sim"))


# --------------------------------------------------------------------------------------------
# One rule per field


def coerce_channels(channels: Iterable[SimChannel | ChannelId | str]) -> tuple[SimChannel, ...]:
    """Channel configs from configs or slot ids (a bare id gets that slot's default config)."""
    items = [c if isinstance(c, SimChannel) else default_channel(c) for c in channels]
    return tuple(check_channel_list(items))


def _name(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or "/" in value):
        raise _invalid(f"simulator name must be a non-empty word, got {value!r}")
    return value


def _addresses(value: object) -> tuple[int, ...]:
    items = tuple(value) if isinstance(value, tuple | list) else (value,)
    ctx = ErrorContext(protocol="sim")
    addresses = tuple(check_address(a, ctx) for a in items)
    if not addresses:
        raise _invalid("a simulated line needs at least one address")
    if len(set(addresses)) != len(addresses):
        raise _invalid(f"duplicate address in {list(addresses)}")
    return addresses


def _serial(value: object) -> SerialSettings | None:
    if value is not None and not isinstance(value, SerialSettings):
        raise _invalid(f"serial must be SerialSettings, got {value!r}")
    return value


def _seconds_or_none(what: str) -> Callable[[object], float | None]:
    def check(value: object) -> float | None:
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _invalid(f"{what} must be None or seconds >= 0, got {value!r}")
        return float(value)

    return check


def _frame_period(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _invalid(f"frame_period must be >= 0, got {value!r}")
    return float(value)


def _terminator(value: object) -> bytes:
    if value not in _TERMINATORS.values():
        raise _invalid(f"terminator must be CR LF, LF or CR, got {value!r}")
    assert isinstance(value, bytes)
    return bytes(value)


def check_latency(value: object) -> tuple[float, float]:
    """``(min, max)`` reply turnaround in seconds, from a pair or one number."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            lo = hi = float(value)
        else:
            assert isinstance(value, Iterable)
            pair = [float(v) for v in value]
            if len(pair) != 2:
                raise ValueError
            lo, hi = pair
    except (AssertionError, TypeError, ValueError):
        raise _invalid(f"latency_s must be (min, max), got {value!r}") from None
    if not (math.isfinite(hi) and 0.0 <= lo <= hi):
        raise _invalid(f"latency_s must satisfy 0 <= min <= max, got {value!r}")
    return lo, hi


def _baudrate(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise _invalid(f"baudrate must be a positive integer, got {value!r}")
    return value


def _seed(value: object) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise _invalid(f"seed must be an integer, got {value!r}") from None


def _clock(value: object) -> datetime | None:
    if value is not None and not isinstance(value, datetime):
        raise _invalid(f"clock must be a datetime or None, got {value!r}")
    return value


def _scenario(value: object) -> str | None:
    if value is not None and value not in PRESETS:
        raise _invalid(f"unknown scenario {value!r}; presets: {', '.join(PRESETS)}")
    return None if value is None else str(value)


def _line_clock(value: object) -> Callable[[], float] | None:
    if value is not None and not callable(value):
        raise _invalid(f"line_clock must be callable, got {value!r}")
    return value


_CHECKS: dict[str, Callable[[Any], object]] = {
    "mode": check_mode,
    "addresses": _addresses,
    "channels": coerce_channels,
    "name": _name,
    "serial": _serial,
    "frame_period": _frame_period,
    "terminator": _terminator,
    "latency_s": check_latency,
    "silence_drop": bool,
    "silence_drop_until_s": _seconds_or_none("silence_drop_until_s"),
    "reject_gaps": bool,
    "realtime": bool,
    "seed": _seed,
    "clock": _clock,
    "baudrate": _baudrate,
    "scenario": _scenario,
    "line_clock": _line_clock,
}


# --------------------------------------------------------------------------------------------
# The configuration


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """How a simulated line is built: one field per knob (``Simulator``'s keyword arguments).

    Every field is validated and normalised on construction (``latency_s=0.02`` becomes
    ``(0.02, 0.02)``, channel ids become their default :class:`SimChannel`). ``addresses``
    holds one address per analyser on the line; a :class:`Simulator`'s own config has one.

    Raises:
        ServomexValidationError: any bad field.
    """

    mode: ProtocolKind = ProtocolKind.MODBUS_RTU
    addresses: tuple[int, ...] = (1,)
    channels: tuple[SimChannel, ...] = DEFAULT_4100D_CHANNELS
    name: str | None = None
    serial: SerialSettings | None = None
    frame_period: float = 2.0
    terminator: bytes = b"\r\n"
    latency_s: tuple[float, float] = (0.015, 0.030)
    silence_drop: bool = True
    silence_drop_until_s: float | None = None
    reject_gaps: bool = False
    realtime: bool = True
    seed: int = 0
    clock: datetime | None = None
    baudrate: int | None = None
    scenario: str | None = None
    line_clock: Callable[[], float] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key, check in _CHECKS.items():
            object.__setattr__(self, key, check(getattr(self, key)))

    # ---------------------------------------------------------------- derived

    @property
    def label(self) -> str:
        """``sim://<name>``, or ``sim://`` for an unnamed line."""
        return f"sim://{self.name}" if self.name else "sim://"

    @property
    def serial_settings(self) -> SerialSettings:
        """The line settings: ``serial``, or 19200 8-N-1 on port :attr:`label`."""
        return self.serial if self.serial is not None else SerialSettings(port=self.label)

    @property
    def pace_baudrate(self) -> int:
        """The rate bytes are paced at: ``baudrate``, else the settings' rate."""
        return self.baudrate if self.baudrate is not None else self.serial_settings.baudrate

    @property
    def char_time(self) -> float:
        """Seconds one character occupies when paced (10 bits per character for 8-N-1)."""
        return self.serial_settings.bits_per_char / self.pace_baudrate

    # ---------------------------------------------------------------- building

    def simulators(self) -> list[Simulator]:
        """One :class:`Simulator` per address (seeds ``seed``, ``seed + 1``, …), each on a line
        of its own, with ``scenario`` applied."""
        from .simulator import Simulator

        sims = []
        for i, address in enumerate(self.addresses):
            one = dataclasses.replace(self, addresses=(address,), seed=self.seed + i, name=None)
            sims.append(Simulator.from_config(one))
        return sims

    def build(self) -> SimLine:
        """A new line carrying :meth:`simulators`, registered as ``sim://<name>`` if named."""
        from .line import SimLine

        return SimLine(*self.simulators(), name=self.name)

    # ---------------------------------------------------------------- sim:// queries

    @classmethod
    def from_query(
        cls, options: Mapping[str, str], *, url: str | None = None, name: str | None = None
    ) -> SimConfig:
        """The config a ``sim://`` query stands for (every value a string).

        ``url`` names the port in errors and is the line settings' port (default: the
        label of ``name``).

        Raises:
            ServomexValidationError: unknown key or bad value, naming both.
        """
        unknown = sorted(set(options) - set(QUERY_KEYS))
        if unknown:
            raise ServomexValidationError(
                f"unknown sim:// option(s) {', '.join(unknown)}; known: {', '.join(QUERY_KEYS)}",
                context=ErrorContext(port=url),
            )
        fields: dict[str, Any] = {"name": name}
        for key in QUERY_KEYS:
            if key in options and key not in ("channels", "names", "units", "values"):
                fields.update(_parse(key, options[key], url))
        if any(k in options for k in ("channels", "names", "units", "values")):
            fields["channels"] = _parse_channels(options, url)
        baud: int | None = fields.get("baudrate")
        port = url or (f"sim://{name}" if name else "sim://")
        in_range = baud is not None and MIN_BAUD <= baud <= MAX_BAUD
        fields["serial"] = SerialSettings(
            port=port, baudrate=baud if baud is not None and in_range else 19200
        )
        try:
            return cls(**fields)
        except ServomexValidationError as exc:  # a combination no single key explains
            raise ServomexValidationError(
                f"bad sim:// options: {exc.message}", context=ErrorContext(port=url)
            ) from None


def spec_from_options(options: Mapping[str, str], *, url: str | None = None) -> SimConfig:
    """:meth:`SimConfig.from_query` for query-style options (the CLI's ``servomex simulate``)."""
    return SimConfig.from_query(options, url=url)


# --------------------------------------------------------------------------------------------
# Query values


def _bad(key: str, value: str, why: str, url: str | None) -> ServomexValidationError:
    return ServomexValidationError(
        f"bad sim:// {key}={value!r}: {why}", context=ErrorContext(port=url)
    )


def _bool(key: str, value: str, url: str | None) -> bool:
    v = value.strip().casefold()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _bad(key, value, "expected 1 or 0", url)


def _int(key: str, value: str, url: str | None) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise _bad(key, value, "expected an integer", url) from None


def _float(key: str, value: str, url: str | None) -> float:
    try:
        result = float(value.strip())
    except ValueError:
        raise _bad(key, value, "expected a number", url) from None
    if not math.isfinite(result):
        raise _bad(key, value, "expected a finite number", url)
    return result


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _latency(value: str, url: str | None) -> tuple[float, float]:
    parts = value.split("-")
    if len(parts) not in (1, 2):
        raise _bad("latency_ms", value, "expected MIN-MAX or one number", url)
    ms = [_float("latency_ms", p, url) for p in parts]
    lo, hi = ms[0], ms[-1]
    if not 0 <= lo <= hi:
        raise _bad("latency_ms", value, "need 0 <= MIN <= MAX", url)
    return lo / 1000.0, hi / 1000.0


def _typed(key: str, value: str, url: str | None) -> tuple[str, object]:
    """The field a query key sets and its typed (not yet checked) value."""
    text = value.strip()
    if key == "mode":
        try:
            mode = ProtocolKind(text)
        except ValueError:
            mode = ProtocolKind.AUTO
        if mode is ProtocolKind.AUTO:
            raise _bad(key, value, "continuous, modbus_rtu or modbus_ascii", url)
        return "mode", mode
    if key == "address":
        return "addresses", tuple(_int(key, a, url) for a in _items(value))
    if key == "baud":
        return "baudrate", _int(key, value, url)
    if key == "period":
        return "frame_period", _float(key, value, url)
    if key == "terminator":
        term = _TERMINATORS.get(text.casefold())
        if term is None:
            raise _bad(key, value, "crlf, lf or cr", url)
        return "terminator", term
    if key == "latency_ms":
        return "latency_s", _latency(value, url)
    if key == "drop_until_ms":
        return "silence_drop_until_s", _float(key, value, url) / 1000.0
    if key == "seed":
        return "seed", _int(key, value, url)
    if key == "clock":
        try:
            return "clock", datetime.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            raise _bad(key, value, "expected an ISO datetime", url) from None
    if key == "scenario":
        return "scenario", text
    field = {"drop": "silence_drop"}.get(key, key)  # drop, reject_gaps, realtime
    return field, _bool(key, value, url)


def _parse(key: str, value: str, url: str | None) -> dict[str, object]:
    field, typed = _typed(key, value, url)
    try:
        return {field: _CHECKS[field](typed)}
    except ServomexValidationError as exc:
        raise _bad(key, value, exc.message, url) from None


def _parse_channels(options: Mapping[str, str], url: str | None) -> tuple[SimChannel, ...]:
    ids: list[ChannelId] = [ChannelId(c) for c in _DEFAULT_SLOTS]
    raw = options.get("channels", "")
    if "channels" in options:
        try:
            ids = [coerce_channel(c) for c in _items(raw)]
        except ServomexError as exc:
            raise _bad("channels", raw, exc.message, url) from None
    configs = [default_channel(c) for c in ids]
    for key in ("names", "units", "values"):
        if key not in options:
            continue
        items = _items(options[key])
        if len(items) != len(ids):
            raise _bad(key, options[key], f"expected {len(ids)} comma-separated items", url)
        for i, item in enumerate(items):
            configs[i] = _apply_item(configs[i], key, item, url)
    try:
        return coerce_channels(configs)
    except ServomexValidationError as exc:
        raise _bad("channels", raw, exc.message, url) from None


def _apply_item(config: SimChannel, key: str, item: str, url: str | None) -> SimChannel:
    try:
        if key == "names":
            return dataclasses.replace(
                config, name=item or None, name_bytes=None, continuous_name=None
            )
        if not item:
            return config
        if key == "units":
            return dataclasses.replace(config, unit=item, decimals=None)
        if item.casefold() in _OVER_RANGE:
            return dataclasses.replace(config, value=None)
        return dataclasses.replace(config, value=_float("values", item, url))
    except ServomexValidationError as exc:
        if exc.message.startswith("bad sim://"):
            raise
        raise _bad(key, item, exc.message, url) from None
