"""The analyser scenario methods of :class:`~servomexlib.sim.Simulator` (docs/simulator.md).

Each one changes the :class:`~servomexlib.sim.model.AnalyserModel` at the simulator's current
line time (:meth:`now`) and takes effect at the next continuous frame or Modbus reply. They are
synchronous and work outside an event loop too (before the line is first used inside a loop,
line time is host time; see :mod:`servomexlib.sim.clock`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ..devices.models import ChannelId
from ..errors import ServomexValidationError
from .model import AnalyserModel

__all__ = ["AnalyserScenario"]


class AnalyserScenario:
    """Mixin: scenario control of ``self.model`` at ``self.now()``."""

    model: AnalyserModel

    def now(self) -> float:
        raise NotImplementedError

    def set_value(self, ch: ChannelId | str, v: float | None) -> None:
        """Set a channel's value; None → over-range."""
        self.model.set_value(ch, v, now=self.now())

    def over_range(self, ch: ChannelId | str) -> None:
        self.model.over_range(ch, now=self.now())

    def drift(
        self,
        ch: ChannelId | str,
        *,
        rate_per_s: float = 0.0,
        noise: float = 0.0,
        target: float | None = None,
    ) -> None:
        self.model.drift(ch, rate_per_s=rate_per_s, noise=noise, target=target, now=self.now())

    def set_name(
        self,
        ch: ChannelId | str,
        name: str | None,
        *,
        name_bytes: bytes | None = None,
        continuous_name: str | None = None,
    ) -> None:
        self.model.set_name(ch, name, name_bytes=name_bytes, continuous_name=continuous_name)

    def set_fault(self, ch: ChannelId | str, on: bool = True) -> None:
        self.model.set_fault(ch, on)

    def set_maintenance(self, ch: ChannelId | str, on: bool = True) -> None:
        self.model.set_maintenance(ch, on)

    def set_alarm(self, ch: ChannelId | str, n: int, on: bool = True) -> None:
        self.model.set_alarm(ch, n, on)

    def set_invalid(self, ch: ChannelId | str, on: bool = True) -> None:
        self.model.set_invalid(ch, on)

    def set_analyser(self, *, fault: bool | None = None, maintenance: bool | None = None) -> None:
        self.model.set_analyser(fault=fault, maintenance=maintenance)

    def warm_up(self, seconds: float, channels: Iterable[ChannelId | str] | None = None) -> None:
        self.model.warm_up(seconds, channels, now=self.now())

    def configure_calibration(
        self,
        group: int,
        *,
        channels: Iterable[ChannelId | str],
        gas1_s: float = 30.0,
        gas2_s: float = 30.0,
    ) -> None:
        self.model.configure_calibration(group, channels=channels, gas1_s=gas1_s, gas2_s=gas2_s)

    def start_calibration(self, group: int) -> bool:
        """Start cal group ``group`` now, as a coil edge would; False if already running."""
        if group not in (1, 2, 3, 4):
            raise ServomexValidationError(f"calibration group must be 1-4, got {group!r}")
        return self.model.start_calibration(group, now=self.now())

    def stop_calibration(self) -> None:
        self.model.stop_calibration()

    def set_clock(self, dt: datetime) -> None:
        self.model.set_clock(dt, now=self.now())
