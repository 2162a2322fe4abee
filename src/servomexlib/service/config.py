"""The service's TOML configuration: parsed, validated, every problem named (docs/service.md §2).

Theory of operation
-------------------
:func:`load_config` / :func:`parse_config` turn one TOML file into a frozen
:class:`ServiceConfig` — buses with their analysers, sinks, the spool, the optional HTTP
listener — or raise one :class:`~.problems.ServiceConfigError` listing *every* problem, each
with file, table path, key and (best effort) line. Nothing is opened: ``sim://`` URLs are
parsed, device paths only resolved when they exist.

The file is read in four passes:

1. ``tomllib`` parses it (a syntax error is the one problem then reported, with its line);
2. every string value gets its ``${VAR}`` substitutions (:func:`~.config_rules.expand_env`);
3. each table is read by key: unknown keys (with the closest known one suggested), wrong
   types (``bool`` is never a number; an integer is accepted where a float is expected),
   out-of-range values, missing required keys — each a problem, and reading carries on;
4. rules across tables: unique analyser names in the file, unique addresses on a bus, one bus
   per canonical port, distinct file-sink paths, and the load of each Modbus bus from the read
   planner (:mod:`.bus_load`): above 100 % refused, above 80 % a warning
   (:attr:`ServiceConfig.warnings`).

Defaults (docs/service.md §2): ``service.name`` the host name; ``spool`` ``$STATE_DIRECTORY/<name>
.spool.db`` (its first entry) when that variable is set, else in platformdirs' user state
directory; ``spool_max_mb`` 2048; ``log_level`` ``info``; per bus ``baudrate`` 19200,
``timeout`` 1.0 s, ``local_echo`` ``off``; per Modbus analyser ``rate_hz`` 1.0. Modbus analysers
must give their ``address`` and every bus its ``protocol``: those are never guessed. Relative
paths stay relative (to the service's working directory).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from ..devices.models import ChannelId, ProtocolKind, coerce_channel, coerce_protocol
from ..errors import ServomexError
from ..settings import SerialSettings
from ..validation import check_address, check_timeout
from .bus_load import WARN_UTILISATION, bus_load
from .config_model import (
    DEFAULT_MQTT_PREFIX,
    DEFAULT_MQTT_QOS,
    DEFAULT_PG_TABLE,
    DEFAULT_SPOOL_MAX_MB,
    FILE_SINKS,
    LOG_LEVELS,
    ROTATING_SINKS,
    AnalyserConfig,
    BusConfig,
    LocalEcho,
    ServiceConfig,
    SinkConfig,
    SinkType,
)
from .config_rules import (
    ListenAddress,
    canonical_port,
    check_dsn,
    check_mqtt_url,
    check_name,
    check_topic_prefix,
    default_spool_dir,
    parse_listen,
    parse_rotate,
    suggest,
)
from .config_table import TableReader, expand_table, toml_kind
from .problems import ConfigProblem, LineIndex, ProblemLog, ServiceConfigError, toml_error_line

__all__ = [
    "AnalyserConfig",
    "BusConfig",
    "LocalEcho",
    "ServiceConfig",
    "SinkConfig",
    "SinkType",
    "load_config",
    "parse_config",
]


_MODBUS = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)
_ROOT_KEYS = ("service", "http", "bus", "sink")
_SERVICE_KEYS = ("name", "spool", "spool_max_mb", "log_level")
_BUS_KEYS = ("port", "protocol", "baudrate", "timeout", "local_echo", "analyser")
_ANALYSER_KEYS = ("name", "address", "rate_hz", "channels")
_SINK_KEYS: dict[SinkType, tuple[str, ...]] = {
    SinkType.CSV: ("path", "rotate"),
    SinkType.JSONL: ("path", "rotate"),
    SinkType.PARQUET: ("path", "rotate"),
    SinkType.SQLITE: ("path",),
    SinkType.POSTGRES: ("dsn", "table"),
    SinkType.MQTT: ("url", "prefix", "qos"),
}
_ALL_SINK_KEYS = ("type", *sorted({k for keys in _SINK_KEYS.values() for k in keys}))


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] = os.environ
) -> ServiceConfig:
    """Read and validate the configuration file at ``path``.

    Raises:
        ServiceConfigError: the file cannot be read (one problem) or has problems (all).
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ServiceConfigError(
            [ConfigProblem("", None, f"cannot read the file: {reason}", None, source)],
            source=source,
        ) from exc
    return parse_config(text, source=source, environ=environ)


def parse_config(
    text: str, *, source: str = "<string>", environ: Mapping[str, str] = os.environ
) -> ServiceConfig:
    """Validate configuration ``text``; ``source`` names it in problems.

    Raises:
        ServiceConfigError: every problem found (module docstring).
    """
    log = ProblemLog(source, LineIndex(text))
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc).split(" (at line")[0]
        problem = ConfigProblem(
            "", None, f"not valid TOML: {message}", toml_error_line(exc), source
        )
        raise ServiceConfigError([problem], source=source) from None
    data = expand_table(raw, "", log, environ)
    config = _Reader(log, environ).root(data, source)
    if config is None and not log.problems:  # every None above comes with a problem
        log.add("", None, "the configuration could not be read (no rule said why: a bug)")
    log.raise_if_any()
    assert config is not None
    return dataclasses.replace(config, warnings=tuple(log.warnings))


class _Reader:
    """Reads the tables in file order. Uniqueness is checked as each value is read — not on
    the built objects — so a duplicate is reported even next to other problems."""

    def __init__(self, log: ProblemLog, environ: Mapping[str, str]) -> None:
        self.log = log
        self.environ = environ
        self.names: dict[str, str] = {}  # analyser name → table path of its first use
        self.ports: dict[str, tuple[str, str]] = {}  # canonical port → (table path, port)
        self.addresses: dict[int, tuple[str, str]] = {}  # on the current bus → (name, path)

    def unique(self, seen: dict[str, str], value: str, path: str, key: str, what: str) -> None:
        first = seen.setdefault(value, path)
        if first != path:
            self.log.add(path, key, f"duplicate {what} {value!r} (first at {first})")

    def _table(self, data: Mapping[str, object], key: str) -> Mapping[str, object] | None:
        value = data.get(key)
        if value is None or isinstance(value, dict):
            return value
        self.log.add("", key, f"must be a table [{key}], got {toml_kind(value)}")
        return None

    def root(self, data: dict[str, object], source: str) -> ServiceConfig | None:
        lines = self.log.lines
        for key, value in data.items():
            if key not in _ROOT_KEYS:
                what = "table" if isinstance(value, dict | list) else "key"
                line = lines.line_of("", key)
                message = f"unknown {what}{suggest(key, _ROOT_KEYS)}"
                self.log.problems.append(ConfigProblem("", key, message, line, source))
        top = TableReader(self.log, "", data, tuple(data))  # unknown ones reported just above
        service = self._table(data, "service")
        name, spool, max_mb, level = self.service(service or {})
        http = self.http(self._table(data, "http"))
        buses = self.buses(top.tables("bus", "bus"), present="bus" in data)
        sinks = self.sinks(top.tables("sink", "sink"), present="sink" in data)
        self.cross_checks(sinks, spool)
        if name is None or spool is None or max_mb is None or level is None:
            return None
        if None in buses or None in sinks:
            return None
        return ServiceConfig(
            name=name,
            spool=spool,
            spool_max_mb=max_mb,
            log_level=level,
            http=http,
            buses=tuple(b for b in buses if b is not None),
            sinks=tuple(s for s in sinks if s is not None),
            source=source,
        )

    def service(
        self, data: Mapping[str, object]
    ) -> tuple[str | None, Path | None, float | None, str | None]:
        t = TableReader(self.log, "service", data, _SERVICE_KEYS)
        name = t.string("name") if t.has("name") else socket.gethostname()
        if name is not None:
            try:
                check_name(name, "site name")
            except ServomexError as exc:
                default = "" if t.has("name") else " (the host name, the default): set it"
                t.add("name", exc.message + default)
                name = None
        spool: Path | None = None
        if t.has("spool"):
            text = t.string("spool")
            if text is not None and not text.strip():
                t.add("spool", "must not be empty")
            elif text is not None:
                spool = Path(text)
        elif name is not None:
            spool = default_spool_dir(self.environ) / f"{name}.spool.db"
        max_mb = t.number("spool_max_mb") if t.has("spool_max_mb") else DEFAULT_SPOOL_MAX_MB
        if max_mb is not None and max_mb <= 0:
            t.add("spool_max_mb", f"must be greater than 0, got {data['spool_max_mb']!r}")
            max_mb = None
        level = t.string("log_level") if t.has("log_level") else "info"
        if level is not None and level.lower() not in LOG_LEVELS:
            t.add("log_level", f"{level!r} is not a log level{suggest(level, LOG_LEVELS)}")
            level = None
        return name, spool, max_mb, level.lower() if level is not None else None

    def http(self, data: Mapping[str, object] | None) -> ListenAddress | None:
        if data is None:
            return None
        t = TableReader(self.log, "http", data, ("listen",))
        listen = t.string("listen", required=True)
        if listen is None:
            return None
        try:
            return parse_listen(listen)
        except ServomexError as exc:
            t.add("listen", exc.message)
            return None

    # -- buses --------------------------------------------------------------------------

    def buses(
        self, tables: list[dict[str, object]] | None, *, present: bool
    ) -> list[BusConfig | None]:
        if not tables:
            if tables is not None or not present:  # else: malformed, already reported
                self.log.add("bus", None, "no [[bus]]: a service needs at least one bus")
            return []
        return [self.bus(f"bus[{i}]", data) for i, data in enumerate(tables)]

    def bus(self, path: str, data: dict[str, object]) -> BusConfig | None:
        t = TableReader(self.log, path, data, _BUS_KEYS)
        port = t.string("port", required=True)
        if port is not None:
            port = self.port(t, port)
        protocol = self.protocol(t)
        baudrate = t.integer("baudrate") if t.has("baudrate") else 19200
        if baudrate is not None:
            try:
                SerialSettings(port=port or "", baudrate=baudrate)
            except ServomexError as exc:
                t.add("baudrate", exc.message)
                baudrate = None
        timeout = t.number("timeout") if t.has("timeout") else 1.0
        if timeout is not None:
            try:
                timeout = check_timeout(timeout)
            except ServomexError as exc:
                t.add("timeout", exc.message)
                timeout = None
        echo = t.string("local_echo") if t.has("local_echo") else "off"
        local_echo: LocalEcho | None = None
        if echo is not None and echo in tuple(LocalEcho):
            local_echo = LocalEcho(echo)
        elif echo is not None:
            t.add("local_echo", f"must be off, on or auto, got {echo!r}")
        self.addresses = {}
        tables = t.tables("analyser", "bus.analyser")
        if "analyser" not in data or tables == []:
            t.add(None, "has no [[bus.analyser]]: a bus needs at least one analyser")
        analysers = [
            self.analyser(f"{path}.analyser[{i}]", d, protocol) for i, d in enumerate(tables or [])
        ]
        if protocol is ProtocolKind.CONTINUOUS_ASCII:
            for i in range(1, len(analysers)):
                self.log.add(
                    f"{path}.analyser[{i}]",
                    None,
                    f"a continuous bus carries exactly one analyser (a broadcast has no "
                    f"address to tell several apart); this one is number {i + 1}",
                )
        if port is not None and protocol is not None and port.lower().startswith("sim://"):
            self.sim_port(t, port, protocol, baudrate, analysers)
        if (
            port is None
            or protocol is None
            or baudrate is None
            or timeout is None
            or local_echo is None
            or not analysers
            or None in analysers
        ):
            return None
        bus = BusConfig(
            port=port,
            protocol=protocol,
            baudrate=baudrate,
            timeout=timeout,
            local_echo=local_echo,
            table_path=path,
            analysers=tuple(a for a in analysers if a is not None),
        )
        self.utilisation(bus)
        return bus

    def port(self, t: TableReader, port: str) -> str | None:
        from ..transport.ports import parse_port

        try:
            parse_port(port)
            canonical = canonical_port(port)
        except ServomexError as exc:
            t.add("port", exc.message)
            return None
        first_path, first_port = self.ports.setdefault(canonical, (t.path, port))
        if first_path != t.path:
            t.add(
                "port",
                f"{port!r} is the same port as {first_path} ({first_port!r}): one bus per port",
            )
        return port.strip()

    def protocol(self, t: TableReader) -> ProtocolKind | None:
        text = t.string("protocol", required=True)
        if text is None:
            return None
        try:
            protocol = coerce_protocol(text)
        except ServomexError:
            valid = ("modbus_rtu", "modbus_ascii", "continuous")
            t.add("protocol", f"{text!r} is not a protocol{suggest(text, valid)}")
            return None
        if protocol is ProtocolKind.AUTO:
            t.add(
                "protocol",
                "'auto' is refused: a service must not guess a plant analyser's "
                "wire mode (detection probes the bus); name it: modbus_rtu, "
                "modbus_ascii or continuous",
            )
            return None
        return protocol

    def analyser(
        self, path: str, data: dict[str, object], protocol: ProtocolKind | None
    ) -> AnalyserConfig | None:
        t = TableReader(self.log, path, data, _ANALYSER_KEYS)
        ok = True
        name = t.string("name", required=True)
        if name is not None:
            try:
                check_name(name, "analyser name")
                self.unique(self.names, name, path, "name", "analyser name")
            except ServomexError as exc:
                t.add("name", exc.message)
                name = None
        address: int | None = None
        rate: float | None = None
        if protocol is ProtocolKind.CONTINUOUS_ASCII:
            for key in ("address", "rate_hz"):
                if t.has(key):
                    t.add(
                        key,
                        f"not allowed on a continuous bus (the analyser broadcasts "
                        f"{'to no address' if key == 'address' else 'at its own period'})",
                    )
                    ok = False
        else:
            address = t.integer("address", required=protocol in _MODBUS)
            if address is not None:
                try:
                    check_address(address)
                except ServomexError:
                    t.add("address", f"{address} is out of range 1-247")
                    address = None
            if address is not None:
                first = self.addresses.setdefault(address, (name or "?", path))
                if first[1] != path:
                    t.add(
                        "address",
                        f"address {address} is already used by {first[0]!r} "
                        f"({first[1]}) on this bus",
                    )
            rate = t.number("rate_hz") if t.has("rate_hz") else 1.0
            if rate is not None and rate <= 0:
                t.add("rate_hz", f"must be greater than 0, got {data['rate_hz']!r}")
                rate = None
            ok = address is not None and rate is not None
        channels = self.channels(t)
        if name is None or not ok or (t.has("channels") and channels is None):
            return None
        return AnalyserConfig(
            name=name, address=address, rate_hz=rate, channels=channels, table_path=path
        )

    def channels(self, t: TableReader) -> tuple[ChannelId, ...] | None:
        if not t.has("channels") or t.unresolved("channels"):
            return None
        value = t.data["channels"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            t.add("channels", f'must be an array of channel ids ("I1", …), got {value!r}')
            return None
        if not value:
            t.add("channels", "must not be empty (leave it out for the populated slots)")
            return None
        out: list[ChannelId] = []
        for item in value:
            try:
                channel = coerce_channel(item)
            except ServomexError:
                valid = [c.value for c in ChannelId]
                t.add("channels", f"unknown channel {item!r}{suggest(item, valid)}")
                return None
            if channel in out:
                t.add("channels", f"channel {item} is listed twice")
                return None
            out.append(channel)
        return tuple(out)

    def sim_port(
        self,
        t: TableReader,
        port: str,
        protocol: ProtocolKind,
        baudrate: int | None,
        analysers: list[AnalyserConfig | None],
    ) -> None:
        """A ``sim://`` bus must simulate what the file expects: its mode and addresses."""
        from ..sim.url import parse_sim_url  # lazily: the simulator is only needed here

        try:
            _, sim = parse_sim_url(port)
        except ServomexError as exc:
            t.add("port", exc.message)
            return
        if sim.mode is not protocol:
            t.add(
                "port",
                f"the simulated line speaks {sim.mode.value}, the bus says "
                f"protocol = {protocol.value!r}",
            )
            return
        for a in analysers:
            if a is not None and a.address is not None and a.address not in sim.addresses:
                have = ", ".join(str(n) for n in sim.addresses)
                self.log.add(
                    a.table_path,
                    "address",
                    f"no simulated analyser at address "
                    f"{a.address} on {port!r} (it has {have}: add it to address=)",
                )
        if baudrate is not None and sim.pace_baudrate != baudrate:
            self.log.warn(
                t.path,
                "baudrate",
                f"the simulated line runs at {sim.pace_baudrate} "
                f"baud, not {baudrate}: the utilisation is costed at {baudrate}",
            )

    def utilisation(self, bus: BusConfig) -> None:
        load = bus_load(bus)
        used = load.utilisation
        if used is None:
            return
        if used > 1.0:
            self.log.add(bus.table_path, None, load.overload_message())
        elif used > WARN_UTILISATION:
            bound = " (upper bound)" if load.upper_bound else ""
            self.log.warn(
                bus.table_path,
                None,
                f"bus utilisation {used * 100:.1f} %{bound} is "
                f"above {WARN_UTILISATION * 100:.0f} %: little room for retries",
            )
        for a in bus.analysers:
            if a.rate_hz is not None and bus.timeout > 1.0 / a.rate_hz:
                self.log.warn(
                    a.table_path,
                    "rate_hz",
                    f"the bus timeout {bus.timeout:g} s is "
                    f"longer than the period {1.0 / a.rate_hz:g} s: an unanswered "
                    f"poll makes the next ticks late",
                )

    # -- sinks --------------------------------------------------------------------------

    def sinks(
        self, tables: list[dict[str, object]] | None, *, present: bool
    ) -> list[SinkConfig | None]:
        if not tables:
            if tables is not None or not present:  # else: malformed, already reported
                self.log.add(
                    "sink",
                    None,
                    "no [[sink]]: a service that stores nothing loses "
                    "every reading; add a sqlite, csv, … sink",
                )
            return []
        return [self.sink(f"sink[{i}]", data) for i, data in enumerate(tables)]

    def sink(self, path: str, data: dict[str, object]) -> SinkConfig | None:
        t = TableReader(self.log, path, data, _ALL_SINK_KEYS)
        text = t.string("type", required=True)
        if text is None:
            return None
        if text not in tuple(SinkType):
            t.add("type", f"unknown sink type {text!r}{suggest(text, tuple(SinkType))}")
            return None
        kind = SinkType(text)
        for key in data:
            if key != "type" and key in _ALL_SINK_KEYS and key not in _SINK_KEYS[kind]:
                if key == "rotate":
                    t.add(key, "only csv, jsonl and parquet sinks rotate")
                else:
                    t.add(
                        key,
                        f"does not apply to a {kind} sink (it takes {', '.join(_SINK_KEYS[kind])})",
                    )
        if kind in FILE_SINKS:
            file = t.string("path", required=True)
            if file is not None and not file.strip():
                t.add("path", "must not be empty")
                file = None
            rotate = None
            if kind in ROTATING_SINKS and t.has("rotate"):
                rotate = self.rule(t, "rotate", t.string("rotate"), parse_rotate)
                if rotate is None:
                    return None
            if file is None:
                return None
            return SinkConfig(type=kind, path=Path(file), rotate=rotate, table_path=path)
        if kind is SinkType.POSTGRES:
            from ..sinks.base import validate_identifier  # lazily: sinks import anyio

            dsn = self.rule(t, "dsn", t.string("dsn", required=True), check_dsn)
            table = t.string("table") if t.has("table") else DEFAULT_PG_TABLE
            table = self.rule(t, "table", table, lambda s: validate_identifier(s, "table"))
            if dsn is None or table is None:
                return None
            return SinkConfig(type=kind, dsn=dsn, table=table, table_path=path)
        url = self.rule(t, "url", t.string("url", required=True), check_mqtt_url)
        prefix = t.string("prefix") if t.has("prefix") else DEFAULT_MQTT_PREFIX
        prefix = self.rule(t, "prefix", prefix, check_topic_prefix)
        qos = t.integer("qos") if t.has("qos") else DEFAULT_MQTT_QOS
        if qos is not None and qos not in (0, 1, 2):
            t.add("qos", f"{qos} is out of range 0-2")
            qos = None
        if url is None or prefix is None or qos is None:
            return None
        return SinkConfig(type=kind, url=url, prefix=prefix, qos=qos, table_path=path)

    def rule[T](
        self, t: TableReader, key: str, value: str | None, check: Callable[[str], T]
    ) -> T | None:
        if value is None:
            return None
        try:
            return check(value)
        except ServomexError as exc:
            t.add(key, exc.message)
            return None

    # -- across tables ------------------------------------------------------------------

    def cross_checks(self, sinks: list[SinkConfig | None], spool: Path | None) -> None:
        """Two sinks must not write one file, nor a sink the spool."""
        files: dict[str, SinkConfig] = {}
        spool_key = os.path.abspath(spool) if spool is not None else None
        for sink in sinks:
            if sink is None or sink.path is None:
                continue
            key = os.path.abspath(sink.path)
            if key == spool_key:
                self.log.add(sink.table_path, "path", f"{str(sink.path)!r} is the spool file")
            first_sink = files.setdefault(key, sink)
            if first_sink is not sink:
                self.log.add(
                    sink.table_path,
                    "path",
                    f"{str(sink.path)!r} is already written by {first_sink.table_path}",
                )
