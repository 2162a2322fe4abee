"""Default channel slots and the named scenarios of ``sim://?scenario=`` and the CLI.

A preset is a function applied to a freshly built :class:`~servomexlib.sim.Simulator`; it only
calls the simulator's public scenario methods, so anything a preset does a test can do too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..devices.models import ChannelId, ChannelKind, ProtocolKind, coerce_channel
from ..errors import ServomexValidationError
from .channels import DEFAULT_4100D_CHANNELS, SimChannel

if TYPE_CHECKING:
    from .simulator import Simulator

__all__ = [
    "CALIBRATION_PRESET_GAS1_S",
    "CALIBRATION_PRESET_GAS2_S",
    "PRESETS",
    "apply_preset",
    "default_channel",
]

_DEFAULTS = {c.channel: c for c in DEFAULT_4100D_CHANNELS}

#: Phase lengths of the ``calibration`` preset: short, so a test sees the whole cycle.
CALIBRATION_PRESET_GAS1_S = 2.0
CALIBRATION_PRESET_GAS2_S = 2.0


def default_channel(channel: ChannelId | str) -> SimChannel:
    """The simulator's default config for one slot.

    I1-I3 and E1-E2 are the measured 4100D's (:data:`DEFAULT_4100D_CHANNELS`); I4 and the
    derived channels D1-D4 (which the measured unit does not have) are unlabelled ``%``
    channels reading 0.0; a derived channel copies the status bits of the transducer with its
    number.
    """
    cid = coerce_channel(channel)
    known = _DEFAULTS.get(cid)
    if known is not None:
        return known
    if cid.kind is ChannelKind.EXTERNAL_INPUT:
        return SimChannel(cid, unit="mA", value=0.0)
    return SimChannel(cid, unit="%", value=0.0)


def _transducers(sim: Simulator) -> list[ChannelId]:
    return [c.channel for c in sim.channels if c.kind is ChannelKind.TRANSDUCER]


def _idle(sim: Simulator) -> None:
    """The measured unit at rest: nothing changes."""


def _drift(sim: Simulator) -> None:
    """Every transducer drifts slowly with a little noise; the first falls towards a target."""
    for i, cid in enumerate(_transducers(sim)):
        if i == 0:
            sim.drift(cid, rate_per_s=-0.001, noise=0.002, target=20.0)
        else:
            sim.drift(cid, rate_per_s=0.0005 * i, noise=0.001)


def _fault(sim: Simulator) -> None:
    """The second transducer (or the first) is faulty, which raises the analyser fault flag."""
    trans = _transducers(sim)
    if trans:
        sim.set_fault(trans[1] if len(trans) > 1 else trans[0])
    sim.set_analyser(fault=True)


def _alarm(sim: Simulator) -> None:
    """Alarm 1 on the first transducer, alarm 2 on the last channel."""
    trans = _transducers(sim)
    if trans:
        sim.set_alarm(trans[0], 1)
    sim.set_alarm(sim.channels[-1].channel, 2)


def _warmup(sim: Simulator) -> None:
    """Every transducer warms up for 60 s after start."""
    if _transducers(sim):
        sim.warm_up(60.0)


def _calibration(sim: Simulator) -> None:
    """Cal group g = transducer number g, with 2 s per gas phase. In continuous mode (where no
    coil can start it) group 1 starts at once; in Modbus mode the coils start it."""
    for g, cid in enumerate(_transducers(sim)[:4], start=1):
        sim.configure_calibration(
            g, channels=[cid], gas1_s=CALIBRATION_PRESET_GAS1_S, gas2_s=CALIBRATION_PRESET_GAS2_S
        )
    if sim.mode is ProtocolKind.CONTINUOUS_ASCII and _transducers(sim):
        sim.start_calibration(1)


def _overrange(sim: Simulator) -> None:
    """The second transducer (or the first) is over range."""
    trans = _transducers(sim)
    if trans:
        sim.over_range(trans[1] if len(trans) > 1 else trans[0])


def _unlabelled(sim: Simulator) -> None:
    """Every slot unlabelled (``||||||`` / blank name registers)."""
    for config in sim.channels:
        sim.set_name(config.channel, None)


#: Preset name → function applied to a new simulator.
PRESETS: dict[str, Callable[[Simulator], None]] = {
    "idle": _idle,
    "drift": _drift,
    "fault": _fault,
    "alarm": _alarm,
    "warmup": _warmup,
    "calibration": _calibration,
    "overrange": _overrange,
    "unlabelled": _unlabelled,
}


def apply_preset(sim: Simulator, name: str) -> None:
    """Apply preset ``name`` to ``sim``.

    Raises:
        ServomexValidationError: unknown preset name.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ServomexValidationError(f"unknown scenario {name!r}; presets: {known}") from None
    preset(sim)
