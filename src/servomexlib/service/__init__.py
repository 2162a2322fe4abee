"""The acquisition service behind ``servomex run`` (docs/service.md): its configuration layer.

One TOML file describes the buses, the analysers and the sinks; :func:`load_config` reads and
validates it into a frozen :class:`ServiceConfig` or raises :class:`ServiceConfigError` with
every problem found; :func:`main_check` is ``servomex config check``. Nothing here opens a port.
"""

from __future__ import annotations

from .bus_load import AnalyserLoad, BusLoad, bus_load, format_plan
from .check import check_report, main_check
from .config import (
    AnalyserConfig,
    BusConfig,
    LocalEcho,
    ServiceConfig,
    SinkConfig,
    SinkType,
    load_config,
    parse_config,
)
from .config_rules import (
    ListenAddress,
    Rotation,
    canonical_port,
    expand_env,
    parse_listen,
    parse_rotate,
)
from .problems import ConfigProblem, ServiceConfigError

__all__ = [
    "AnalyserConfig",
    "AnalyserLoad",
    "BusConfig",
    "BusLoad",
    "ConfigProblem",
    "ListenAddress",
    "LocalEcho",
    "Rotation",
    "ServiceConfig",
    "ServiceConfigError",
    "SinkConfig",
    "SinkType",
    "bus_load",
    "canonical_port",
    "check_report",
    "expand_env",
    "format_plan",
    "load_config",
    "main_check",
    "parse_config",
    "parse_listen",
    "parse_rotate",
]
