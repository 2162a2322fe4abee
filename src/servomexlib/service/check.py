"""``servomex config check CONFIG``: validate a service configuration without opening a port.

:func:`main_check` is the whole command (the CLI calls it with stdout and stderr): a valid
file prints :func:`check_report` — per bus its port, protocol, baud rate and analysers, the
read plan of one sweep per analyser (from the planner) and the bus utilisation
``Σ rate_hz × sweep cost`` — then its warnings, and exits 0; an invalid one prints every problem
(``file:line: table.key: message``) on stderr and exits 2. Passwords in DSNs and URLs are
never printed.
"""

from __future__ import annotations

import os
from typing import Final, TextIO

from ..errors import ServomexError
from .bus_load import BusLoad, bus_load, format_plan
from .config import ServiceConfig, load_config
from .problems import ServiceConfigError

__all__ = ["EXIT_INVALID", "EXIT_OK", "check_report", "main_check"]

EXIT_OK: Final = 0
#: The exit code of an invalid file (docs/service.md §1).
EXIT_INVALID: Final = 2


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _utilisation_line(load: BusLoad) -> str:
    used = load.utilisation
    if used is None:
        return "  utilisation: broadcast (the analyser sets its own period)"
    bound = ", an upper bound: channels not given, all 10 slots costed" if load.upper_bound else ""
    return f"  utilisation: {used * 100:.1f} %{bound}"


def check_report(config: ServiceConfig) -> str:
    """What ``servomex config check`` prints for a valid configuration (ends with a newline)."""
    out = [
        f"{config.source}: valid: {_plural(len(config.buses), 'bus')}, "
        f"{_plural(len(config.analysers), 'analyser')}, {_plural(len(config.sinks), 'sink')}",
        f"service {config.name!r}: spool {config.spool} (max {config.spool_max_mb:g} MB), "
        f"log level {config.log_level}, http {config.http or 'off'}",
    ]
    for bus in config.buses:
        load = bus_load(bus)
        out.append(
            f"{bus.table_path} {bus.port}: {bus.protocol.value}, {bus.baudrate} baud, "
            f"timeout {bus.timeout:g} s, local echo {bus.local_echo.value}"
        )
        costs = {a.name: a for a in load.analysers}
        for analyser in bus.analysers:
            channels = (
                ",".join(c.value for c in analyser.channels)
                if analyser.channels is not None
                else "populated (identify)"
            )
            if analyser.address is None:
                out.append(f"  {analyser.name}: broadcast, channels {channels}")
                continue
            planned = costs[analyser.name]
            out.append(
                f"  {analyser.name}: address {analyser.address}, {analyser.rate_hz:g} Hz, "
                f"channels {channels}"
            )
            out.append(
                f"    sweep: {format_plan(planned.reads)} "
                f"≈ {planned.sweep_cost_s * 1000:.1f} ms, {planned.share * 100:.1f} % of the bus"
            )
        out.append(_utilisation_line(load))
    for sink in config.sinks:
        rotate = f" (rotate {sink.rotate.text})" if sink.rotate is not None else ""
        out.append(f"{sink.table_path}: {sink.label}{rotate}")
    out.extend(f"warning: {w}" for w in config.warnings)
    return "\n".join(out) + "\n"


def main_check(path: str | os.PathLike[str], out: TextIO, err: TextIO) -> int:
    """Run ``servomex config check path``: the report on ``out`` and 0, or every problem on
    ``err`` and 2. Never raises for a bad file."""
    try:
        config = load_config(path)
        report = check_report(config)
    except ServiceConfigError as exc:
        for problem in exc.problems:
            err.write(f"error: {problem}\n")
        err.write(f"{exc.source}: {_plural(len(exc.problems), 'problem')}, not valid\n")
        return EXIT_INVALID
    except ServomexError as exc:  # a rule that raised past the loader: still no traceback
        err.write(f"error: {os.fspath(path)}: {exc}\n")
        return EXIT_INVALID
    out.write(report)
    return EXIT_OK
