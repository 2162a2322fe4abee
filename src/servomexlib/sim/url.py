"""``sim://[name][?query]`` port strings (api.md §16.2) and the options they share with the CLI.

``connect_url("sim://?mode=modbus_ascii&address=30")`` builds a private simulated line and
returns a stream attached to it; ``sim://bench?…`` builds the line the first time the name is
seen in this process and attaches every later open of ``sim://bench`` to that same line (its
query is then validated but not applied again — the line already exists).

Query keys: ``mode`` (continuous / modbus_rtu / modbus_ascii; default modbus_rtu), ``address``
(default 1; a comma list puts one analyser per address on the line), ``channels`` (default
``I1,I2,I3,E1,E2``), ``names``, ``units``, ``values`` (comma lists aligned with ``channels``;
an empty item means unlabelled for names and the slot default for units and values; a value of
``over`` or ``nan`` means over-range), ``baud`` (19200), ``period`` (2.0 s), ``terminator``
(crlf / lf / cr), ``latency_ms`` (``15-30`` or one number), ``drop`` (1/0: silence rule),
``drop_until_ms`` (the harsh silence rule: every request after less silence than this is lost),
``reject_gaps`` (0/1), ``realtime`` (1/0), ``seed`` (0), ``scenario`` (a preset), ``clock``
(ISO datetime for the analyser clock).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

import anyio.abc

from ..devices.models import ChannelId, ProtocolKind, coerce_channel
from ..errors import ErrorContext, ServomexError, ServomexValidationError
from ..settings import MAX_BAUD, MIN_BAUD, SerialSettings
from .model import SimChannel
from .presets import PRESETS, apply_preset, default_channel
from .serve import SimLine, Simulator, lookup_line

__all__ = ["QUERY_KEYS", "SimConnection", "SimSpec", "connect_url", "parse_sim_url"]

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


@dataclasses.dataclass(frozen=True, slots=True)
class SimConnection:
    """What :func:`connect_url` returns: the host end of the line and how the line is set."""

    stream: anyio.abc.ByteStream
    serial_settings: SerialSettings
    line: SimLine


@dataclasses.dataclass(frozen=True, slots=True)
class SimSpec:
    """Everything a ``sim://`` query (or ``servomex simulate``) can say about a line."""

    mode: ProtocolKind = ProtocolKind.MODBUS_RTU
    addresses: tuple[int, ...] = (1,)
    channels: tuple[SimChannel, ...] = ()
    baud: int = 19200
    period: float = 2.0
    terminator: bytes = b"\r\n"
    latency_s: tuple[float, float] = (0.015, 0.030)
    drop: bool = True
    drop_until_s: float | None = None
    reject_gaps: bool = False
    realtime: bool = True
    seed: int = 0
    scenario: str | None = None
    clock: datetime | None = None

    def build(self, *, name: str | None = None, label: str | None = None) -> SimLine:
        """Create the simulators (one per address) on one new line.

        A ``baud`` outside 2400-19200 paces the line at that rate while the line's
        ``SerialSettings`` keep 19200 (they cannot hold it).
        """
        port = label or (f"sim://{name}" if name else "sim://")
        in_range = MIN_BAUD <= self.baud <= MAX_BAUD
        serial = SerialSettings(port=port, baudrate=self.baud if in_range else 19200)
        sims = []
        for i, address in enumerate(self.addresses):
            sim = Simulator(
                mode=self.mode,
                address=address,
                channels=self.channels or _default_channels(),
                serial=serial,
                frame_period=self.period,
                terminator=self.terminator,
                latency_s=self.latency_s,
                silence_drop=self.drop,
                silence_drop_until_s=self.drop_until_s,
                reject_gaps=self.reject_gaps,
                realtime=self.realtime,
                seed=self.seed + i,
                clock=self.clock,
                baudrate=None if in_range else self.baud,
            )
            if self.scenario is not None:
                apply_preset(sim, self.scenario)
            sims.append(sim)
        return SimLine(*sims, name=name)


def _default_channels() -> tuple[SimChannel, ...]:
    return tuple(default_channel(c) for c in ("I1", "I2", "I3", "E1", "E2"))


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


def spec_from_options(options: Mapping[str, str], *, url: str | None = None) -> SimSpec:
    """Validate query-style options (every value a string) into a :class:`SimSpec`.

    Raises:
        ServomexValidationError: unknown key or bad value.
    """
    unknown = sorted(set(options) - set(QUERY_KEYS))
    if unknown:
        raise ServomexValidationError(
            f"unknown sim:// option(s) {', '.join(unknown)}; known: {', '.join(QUERY_KEYS)}",
            context=ErrorContext(port=url),
        )
    kw: dict[str, object] = {}
    if "mode" in options:
        try:
            mode = ProtocolKind(options["mode"].strip())
        except ValueError:
            mode = ProtocolKind.AUTO
        if mode is ProtocolKind.AUTO:
            raise _bad("mode", options["mode"], "continuous, modbus_rtu or modbus_ascii", url)
        kw["mode"] = mode
    if "address" in options:
        addresses = tuple(_int("address", a, url) for a in _items(options["address"]))
        if any(not 1 <= a <= 247 for a in addresses):
            raise _bad("address", options["address"], "addresses are 1-247", url)
        if len(set(addresses)) != len(addresses):
            raise _bad("address", options["address"], "duplicate address", url)
        kw["addresses"] = addresses
    ids: list[ChannelId] = [ChannelId(c) for c in ("I1", "I2", "I3", "E1", "E2")]
    if "channels" in options:
        try:
            ids = [coerce_channel(c) for c in _items(options["channels"])]
        except ServomexError as exc:
            raise _bad("channels", options["channels"], exc.message, url) from None
    configs = [default_channel(c) for c in ids]
    for key in ("names", "units", "values"):
        if key not in options:
            continue
        items = _items(options[key])
        if len(items) != len(ids):
            raise _bad(key, options[key], f"expected {len(ids)} comma-separated items", url)
        for i, item in enumerate(items):
            configs[i] = _apply_item(configs[i], key, item, url)
    if "channels" in options or any(k in options for k in ("names", "units", "values")):
        kw["channels"] = tuple(configs)
    if "baud" in options:
        baud = _int("baud", options["baud"], url)
        if baud <= 0:
            raise _bad("baud", options["baud"], "must be positive", url)
        kw["baud"] = baud
    if "period" in options:
        period = _float("period", options["period"], url)
        if period < 0:
            raise _bad("period", options["period"], "must be >= 0", url)
        kw["period"] = period
    if "terminator" in options:
        term = _TERMINATORS.get(options["terminator"].strip().casefold())
        if term is None:
            raise _bad("terminator", options["terminator"], "crlf, lf or cr", url)
        kw["terminator"] = term
    if "latency_ms" in options:
        kw["latency_s"] = _latency(options["latency_ms"], url)
    if "drop" in options:
        kw["drop"] = _bool("drop", options["drop"], url)
    if "drop_until_ms" in options:
        until = _float("drop_until_ms", options["drop_until_ms"], url)
        if until < 0:
            raise _bad("drop_until_ms", options["drop_until_ms"], "must be >= 0", url)
        kw["drop_until_s"] = until / 1000.0
    if "reject_gaps" in options:
        kw["reject_gaps"] = _bool("reject_gaps", options["reject_gaps"], url)
    if "realtime" in options:
        kw["realtime"] = _bool("realtime", options["realtime"], url)
    if "seed" in options:
        kw["seed"] = _int("seed", options["seed"], url)
    if "scenario" in options:
        scenario = options["scenario"].strip()
        if scenario not in PRESETS:
            raise _bad("scenario", scenario, f"presets: {', '.join(PRESETS)}", url)
        kw["scenario"] = scenario
    if "clock" in options:
        try:
            clock = datetime.fromisoformat(options["clock"].strip())
        except ValueError:
            raise _bad("clock", options["clock"], "expected an ISO datetime", url) from None
        kw["clock"] = clock.replace(tzinfo=None)
    spec = SimSpec(**kw)  # type: ignore[arg-type]
    if not 3 <= len(spec.channels or ids) <= 7:
        raise _bad("channels", options.get("channels", ""), "the analyser has 3-7 channels", url)
    return spec


def _latency(value: str, url: str | None) -> tuple[float, float]:
    parts = value.split("-")
    if len(parts) == 1:
        lo = hi = _float("latency_ms", parts[0], url)
    elif len(parts) == 2:
        lo, hi = (_float("latency_ms", p, url) for p in parts)
    else:
        raise _bad("latency_ms", value, "expected MIN-MAX or one number", url)
    if not 0 <= lo <= hi:
        raise _bad("latency_ms", value, "need 0 <= MIN <= MAX", url)
    return lo / 1000.0, hi / 1000.0


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


def parse_sim_url(url: str) -> tuple[str | None, SimSpec]:
    """Split a ``sim://`` URL into its name (None if unnamed) and validated spec.

    Raises:
        ServomexValidationError: not a ``sim://`` URL, a path, a repeated key, bad values.
    """
    if not isinstance(url, str):
        raise ServomexValidationError(f"port must be a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme.casefold() != "sim" or not url.casefold().startswith("sim://"):
        raise ServomexValidationError(
            f"not a simulator URL: {url!r} (expected sim://[name][?query])",
            context=ErrorContext(port=url),
        )
    if parts.path not in ("", "/") or parts.fragment:
        raise ServomexValidationError(
            f"sim:// URLs take a name and a query only: {url!r}", context=ErrorContext(port=url)
        )
    name = parts.netloc or None
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in options:
            raise ServomexValidationError(
                f"sim:// option {key!r} given twice", context=ErrorContext(port=url)
            )
        options[key] = value
    return name, spec_from_options(options, url=url)


def connect_url(url: str) -> SimConnection:
    """Attach to the simulated line a ``sim://`` URL names, creating it if needed.

    Unnamed URLs get a private line per call; ``sim://name`` shares one line per process.

    Raises:
        ServomexValidationError: bad URL, unknown key or bad value.
        ServomexConnectionError: the named device has vanished.
    """
    name, spec = parse_sim_url(url)
    line = lookup_line(name) if name is not None else None
    if line is None:
        line = spec.build(name=name, label=url)
    return SimConnection(stream=line.open_stream(), serial_settings=line.serial_settings, line=line)
