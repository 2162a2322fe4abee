"""The values a service configuration becomes (docs/service.md §2): frozen, validated by
:mod:`.config` (these classes do not re-check their fields).

Every table of the file has its class: :class:`ServiceConfig` (``[service]``, ``[http]`` and the
lists below), :class:`BusConfig` (``[[bus]]``), :class:`AnalyserConfig` (``[[bus.analyser]]``),
:class:`SinkConfig` (``[[sink]]``). Each remembers its ``table_path`` (``bus[1].analyser[0]``)
so that the service's own messages can point back into the file.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Final

from ..devices.models import ChannelId, ProtocolKind
from ..settings import SerialSettings
from .config_rules import ListenAddress, Rotation, canonical_port, redact_url
from .problems import ConfigProblem

__all__ = [
    "DEFAULT_MQTT_PREFIX",
    "DEFAULT_MQTT_QOS",
    "DEFAULT_PG_TABLE",
    "DEFAULT_SPOOL_MAX_MB",
    "FILE_SINKS",
    "LOG_LEVELS",
    "ROTATING_SINKS",
    "AnalyserConfig",
    "BusConfig",
    "LocalEcho",
    "ServiceConfig",
    "SinkConfig",
    "SinkType",
]


class LocalEcho(enum.StrEnum):
    """Whether the line echoes what the host sends (a 2-wire RS485 adapter may)."""

    OFF = "off"
    ON = "on"
    AUTO = "auto"


class SinkType(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    SQLITE = "sqlite"
    PARQUET = "parquet"
    POSTGRES = "postgres"
    MQTT = "mqtt"


#: Sinks that write a file (``path``), and those of them that rotate (``rotate``).
FILE_SINKS: Final = frozenset({SinkType.CSV, SinkType.JSONL, SinkType.SQLITE, SinkType.PARQUET})
ROTATING_SINKS: Final = frozenset({SinkType.CSV, SinkType.JSONL, SinkType.PARQUET})
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
DEFAULT_SPOOL_MAX_MB: Final = 2048.0
DEFAULT_PG_TABLE: Final = "samples"
DEFAULT_MQTT_PREFIX: Final = "servomex"
DEFAULT_MQTT_QOS: Final = 1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AnalyserConfig:
    """One analyser: ``address`` and ``rate_hz`` are None on a continuous bus; ``channels``
    None means the populated slots ``identify()`` finds."""

    name: str
    address: int | None = None
    rate_hz: float | None = None
    channels: tuple[ChannelId, ...] | None = None
    table_path: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """One port (one ``ServomexManager`` port) and the analysers that share it."""

    port: str
    protocol: ProtocolKind
    analysers: tuple[AnalyserConfig, ...]
    baudrate: int = 19200
    timeout: float = 1.0
    local_echo: LocalEcho = LocalEcho.OFF
    table_path: str = ""

    @property
    def canonical_port(self) -> str:
        """The port in the spelling two buses are compared by (:func:`canonical_port`)."""
        return canonical_port(self.port)

    @property
    def serial_settings(self) -> SerialSettings:
        """How the line is opened: ``baudrate``, 8-N-1."""
        return SerialSettings(port=self.port, baudrate=self.baudrate)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig:
    """One sink; only the keys of its type are set (the others are None). ``dsn`` and
    ``url`` may hold passwords: they are left out of ``repr``; :attr:`label` is log-safe."""

    type: SinkType
    path: Path | None = None
    rotate: Rotation | None = None
    dsn: str | None = dataclasses.field(default=None, repr=False)
    table: str | None = None
    url: str | None = dataclasses.field(default=None, repr=False)
    prefix: str | None = None
    qos: int | None = None
    table_path: str = ""

    @property
    def label(self) -> str:
        """``sqlite plant.db``, ``postgres postgresql://u@host/db public.samples``, ``mqtt
        mqtt://broker:1883 servomex`` — never a password."""
        if self.path is not None:
            return f"{self.type.value} {self.path}"
        if self.type is SinkType.POSTGRES and self.dsn is not None:
            from ..sinks.postgres import PostgresConfig  # lazily: sinks import anyio

            target = PostgresConfig(dsn=self.dsn, table=self.table or DEFAULT_PG_TABLE).target()
            return f"postgres {target}"
        return f"{self.type.value} {redact_url(self.url or '')} {self.prefix}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """A whole validated service configuration (docs/service.md §2)."""

    name: str
    spool: Path
    buses: tuple[BusConfig, ...]
    sinks: tuple[SinkConfig, ...]
    spool_max_mb: float = DEFAULT_SPOOL_MAX_MB
    log_level: str = "info"
    http: ListenAddress | None = None
    source: str = "<string>"
    warnings: tuple[ConfigProblem, ...] = ()

    @property
    def analysers(self) -> tuple[AnalyserConfig, ...]:
        """Every analyser of every bus, in file order."""
        return tuple(a for bus in self.buses for a in bus.analysers)
