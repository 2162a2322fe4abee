"""Channel slots of the simulated analyser: :class:`SimChannel` and the measured 4100D's set.

A :class:`SimChannel` is configuration, not state: which slot, its display name (raw display-ROM
bytes for Modbus, an ASCII fold for continuous frames), unit field, initial value, decimals,
the transducer a derived channel copies its status from and its calibration group. The
analyser model (:mod:`servomexlib.sim.model`) turns a list of them into live channel state;
:func:`check_channel_list` is the one rule for such a list (3-7 slots, each at most once), used
by the model and by :class:`~servomexlib.sim.config.SimConfig`.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Iterable, Sequence

from ..devices.models import ChannelId, ChannelKind, coerce_channel
from ..errors import ErrorContext, ServomexValidationError
from ..units import Unit
from ..wire.channels import CAL_GROUPS
from ..wire.charset import encode_display

__all__ = [
    "CONTINUOUS_ORDER",
    "DEFAULT_4100D_CHANNELS",
    "SimChannel",
    "check_channel_list",
    "sim_error",
]

#: Slot order of continuous frames: I1..I4, D1..D4, E1, E2.
CONTINUOUS_ORDER = {cid: i for i, cid in enumerate(ChannelId)}


def sim_error(message: str) -> ServomexValidationError:
    """A validation error from the simulator (``protocol="sim"`` in its context)."""
    return ServomexValidationError(message, context=ErrorContext(protocol="sim"))


# --------------------------------------------------------------------------------------------
# Channel configuration


def _unit_text(unit: str | Unit | None, kind: ChannelKind) -> str:
    if unit is None:
        return "mA" if kind is ChannelKind.EXTERNAL_INPUT else "%"
    text = str(unit.value if isinstance(unit, Unit) else unit).strip(" \x00")
    if len(text) > 3:
        raise sim_error(f"unit {unit!r} is longer than the 3-character unit field")
    return text


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class SimChannel:
    """Configuration of one simulated channel slot.

    Args:
        channel: the slot (``ChannelId`` or its exact wire id, e.g. ``"I1"``).
        name: display name (``"Oxygen"``, ``"CO₂"``); None or empty → unlabelled slot
            (``||||||`` in continuous frames, six spaces in the Modbus name registers).
        unit: unit text (``"%"``, ``"vpm"``, ``"ppm"``, ``"mA"``) or a :class:`Unit`; None →
            ``mA`` for external inputs, ``%`` otherwise. Shown in a 3-character field
            (``" % "``, ``" mA"``, ``"vpm"``).
        value: initial value; None → over-range.
        decimals: digits after the point in continuous frames; None → 1 for mA, else 3.
        name_bytes: raw display-ROM name for the Modbus registers (≤ 6 bytes, space padded),
            e.g. ``b"CO\\x82   "``; default: ``name`` through the display charset.
        continuous_name: ASCII name for continuous frames; default: ``name`` folded to ASCII
            (``CO₂`` → ``CO2``).
        parent: the transducer a derived channel copies status bits 0-3 from
            (default D\\ *n* → I\\ *n*); only meaningful for D-channels.
        cal_group: the autocalibration group (1-4) the channel belongs to, if any.

    Raises:
        ServomexValidationError: unknown channel id, bad unit/name length, bad group.
    """

    channel: ChannelId
    name: str | None
    unit: str
    value: float | None
    decimals: int | None
    name_bytes: bytes | None
    continuous_name: str | None
    parent: ChannelId | None
    cal_group: int | None

    def __init__(
        self,
        channel: ChannelId | str,
        *,
        name: str | None = None,
        unit: str | Unit | None = None,
        value: float | None = 0.0,
        decimals: int | None = None,
        name_bytes: bytes | None = None,
        continuous_name: str | None = None,
        parent: ChannelId | str | None = None,
        cal_group: int | None = None,
    ) -> None:
        cid = coerce_channel(channel)
        name = name or None
        if decimals is not None and not 0 <= decimals <= 5:
            raise sim_error(f"decimals must be 0-5, got {decimals!r}")
        if name_bytes is not None:
            name_bytes = bytes(name_bytes)
            if len(name_bytes) > 6:
                raise sim_error(f"name_bytes is {len(name_bytes)} bytes; the name field holds 6")
        if continuous_name is not None and len(continuous_name) > 6:
            raise sim_error(f"continuous_name {continuous_name!r} exceeds 6 characters")
        if name is not None and name_bytes is None and len(name) > 6:
            raise sim_error(f"name {name!r} exceeds the 6-character name field")
        parent_id = None if parent is None else coerce_channel(parent)
        if parent_id is not None and parent_id.kind is not ChannelKind.TRANSDUCER:
            raise sim_error(f"parent of {cid.value} must be a transducer, got {parent_id}")
        if cal_group is not None and cal_group not in CAL_GROUPS:
            raise sim_error(f"cal_group must be 1-4, got {cal_group!r}")
        fields = {
            "channel": cid,
            "name": name,
            "unit": _unit_text(unit, cid.kind),
            "value": None if value is None else float(value),
            "decimals": decimals,
            "name_bytes": name_bytes,
            "continuous_name": continuous_name,
            "parent": parent_id,
            "cal_group": cal_group,
        }
        for key, item in fields.items():
            object.__setattr__(self, key, item)

    @property
    def kind(self) -> ChannelKind:
        return self.channel.kind

    @property
    def unit_field(self) -> str:
        """The 3-character unit field as sent in continuous mode: ``" % "``, ``" mA"``."""
        text = str(self.unit)
        return text if len(text) >= 3 else (" " + text).ljust(3)

    @property
    def unit_bytes(self) -> bytes:
        """The 4 bytes of the Modbus unit registers: the unit field plus a NUL."""
        return encode_display(self.unit_field) + b"\x00"

    @property
    def modbus_name(self) -> bytes:
        """The 6 display-ROM bytes of the Modbus name registers."""
        if self.name_bytes is not None:
            return self.name_bytes.ljust(6, b" ")
        if self.name is None:
            return b" " * 6
        return encode_display(self.name)[:6].ljust(6, b" ")

    @property
    def continuous_label(self) -> str | None:
        """The name as sent in continuous frames (plain ASCII), or None if unlabelled."""
        if self.continuous_name is not None:
            return self.continuous_name or None
        if self.name is None:
            return None
        folded = unicodedata.normalize("NFKC", self.name)
        return folded.encode("ascii", "replace").decode("ascii")[:6]

    @property
    def resolved_decimals(self) -> int:
        if self.decimals is not None:
            return self.decimals
        return 1 if str(self.unit).casefold() == "ma" else 3

    @property
    def resolved_parent(self) -> ChannelId | None:
        if self.kind is not ChannelKind.DERIVED:
            return None
        if self.parent is not None:
            return self.parent
        return ChannelId("I" + self.channel.value[1])


#: The measured 4100D (docs/protocol.md, §3.10): I1 Oxygen, I2 CO, I3 CO₂ (display-ROM name
#: ``43 4F 82 20 20 20`` over Modbus, ``CO2`` in continuous mode), E1/E2 unlabelled mA inputs.
#: Calibration groups (LIB): one per transducer.
DEFAULT_4100D_CHANNELS: tuple[SimChannel, ...] = (
    SimChannel(ChannelId.I1, name="Oxygen", unit="%", value=20.378, cal_group=1),
    SimChannel(ChannelId.I2, name="CO", unit="%", value=0.084, cal_group=2),
    SimChannel(
        ChannelId.I3,
        name="CO₂",
        unit="%",
        value=0.250,
        name_bytes=b"CO\x82   ",
        continuous_name="CO2",
        cal_group=3,
    ),
    SimChannel(ChannelId.E1, unit="mA", value=0.0),
    SimChannel(ChannelId.E2, unit="mA", value=0.0),
)


def check_channel_list(channels: Iterable[object]) -> list[SimChannel]:
    """The channel configs of one analyser, in continuous order.

    Raises:
        ServomexValidationError: an item that is not a :class:`SimChannel`, a slot given twice,
            fewer than 3 or more than 7 channels.
    """
    configs: list[SimChannel] = []
    for c in channels:
        if not isinstance(c, SimChannel):
            raise sim_error(f"channels must be SimChannel objects, got {c!r}")
        configs.append(c)
    ids = [c.channel for c in configs]
    if len(set(ids)) != len(ids):
        raise sim_error(f"duplicate channel in {[i.value for i in ids]}")
    if not 3 <= len(configs) <= 7:
        raise sim_error(f"the analyser has 3-7 channels, got {len(configs)}")
    configs.sort(key=lambda c: CONTINUOUS_ORDER[c.channel])
    return configs


def describe_channels(channels: Sequence[SimChannel]) -> str:
    """Short text for logs and the CLI banner: ``I1 Oxygen 20.378 %, …``."""
    parts = []
    for c in channels:
        name = c.name if c.name is not None else "(unlabelled)"
        parts.append(f"{c.channel.value} {name} {c.value} {c.unit}")
    return ", ".join(parts)
