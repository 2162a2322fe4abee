"""``SimConfig``: one configuration for ``Simulator(...)``, ``sim://`` queries and the CLI."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from servomexlib.devices.models import ProtocolKind
from servomexlib.errors import ServomexValidationError
from servomexlib.settings import SerialSettings
from servomexlib.sim import SimChannel, SimConfig, Simulator, default_channel, parse_sim_url
from servomexlib.sim.config import QUERY_KEYS

URL = (
    "sim://bench?mode=continuous&address=7&channels=I1,I2,E1&names=O2,,&units=,,mA"
    "&values=20.5,over,4&baud=9600&period=0.5&terminator=lf&latency_ms=5-10&drop=0"
    "&drop_until_ms=80&reject_gaps=1&realtime=0&seed=42&scenario=alarm"
    "&clock=2024-03-14T09:05:30"
)
CHANNELS = (
    dataclasses.replace(default_channel("I1"), name="O2", value=20.5, continuous_name=None),
    dataclasses.replace(default_channel("I2"), value=None, name=None, name_bytes=None),
    dataclasses.replace(default_channel("E1"), value=4.0),
)
KEYWORDS: dict[str, Any] = {
    "mode": "continuous",
    "channels": CHANNELS,
    "frame_period": 0.5,
    "terminator": b"\n",
    "latency_s": (0.005, 0.010),
    "silence_drop": False,
    "silence_drop_until_s": 0.08,
    "reject_gaps": True,
    "realtime": False,
    "seed": 42,
    "clock": datetime(2024, 3, 14, 9, 5, 30),
    "baudrate": 9600,
}


def test_the_url_and_the_keyword_arguments_it_stands_for_agree() -> None:
    keys = {key for key, _ in parse_qsl(urlsplit(URL).query)}
    assert keys == set(QUERY_KEYS)  # every query key is exercised
    name, from_url = parse_sim_url(URL)
    expected = SimConfig(
        addresses=(7,),
        name="bench",
        serial=SerialSettings(port=URL, baudrate=9600),
        scenario="alarm",
        **{**KEYWORDS, "mode": ProtocolKind.CONTINUOUS_ASCII},
    )
    assert name == "bench"
    assert from_url == expected
    sim = Simulator(address=7, serial=SerialSettings(port=URL, baudrate=9600), **KEYWORDS)
    assert sim.config == dataclasses.replace(expected, name=None, scenario=None)
    # What the simulator exposes is its config's.
    assert (sim.frame_period, sim.terminator, sim.latency_s) == (0.5, b"\n", (0.005, 0.010))
    assert (sim.silence_drop, sim.silence_drop_until_s, sim.realtime) == (False, 0.08, False)
    assert sim.baudrate == 9600
    assert sim.char_time == pytest.approx(10 / 9600)
    assert [c.name for c in sim.channels] == ["O2", None, None]
    assert [c.value for c in sim.channels] == [20.5, None, 4.0]


def test_simulator_keywords_are_the_config_fields() -> None:
    keywords = set(inspect.signature(Simulator).parameters)
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    assert keywords == (fields - {"addresses", "scenario"}) | {"address"}


def test_a_config_normalises_what_the_keywords_accept() -> None:
    config = SimConfig(latency_s=0.02, channels=("I1", "I2", "E1"), seed=3)  # type: ignore[arg-type]
    assert config.latency_s == (0.02, 0.02)
    assert all(isinstance(c, SimChannel) for c in config.channels)
    assert config == SimConfig(latency_s=(0.02, 0.02), channels=config.channels, seed=3)
    assert config.serial_settings == SerialSettings(port="sim://")
    assert config.char_time == pytest.approx(10 / 19200)
    fast = SimConfig(baudrate=115200)
    assert (fast.serial_settings.baudrate, fast.pace_baudrate) == (19200, 115200)


def test_building_puts_one_analyser_per_address_on_one_line() -> None:
    _, config = parse_sim_url("sim://?address=1,2,30&realtime=0&seed=5&scenario=fault")
    line = config.build()
    assert [s.address for s in line.simulators] == [1, 2, 30]
    assert [s.seed for s in line.simulators] == [5, 6, 7]
    assert all(s.line is line for s in line.simulators)
    assert all(s.config.scenario == "fault" for s in line.simulators)
    assert all(s.model.analyser_status(s.now()).fault for s in line.simulators)
    with pytest.raises(ServomexValidationError, match="one analyser"):
        Simulator.from_config(config)
    (one,) = dataclasses.replace(config, addresses=(9,)).simulators()
    assert one.address == 9


# (keyword arguments, the equivalent sim:// query): both refused.
BAD = [
    ({"address": 248}, "address=248"),
    ({"address": 0}, "address=0"),
    ({"frame_period": -1}, "period=-1"),
    ({"latency_s": (0.03, 0.01)}, "latency_ms=30-10"),
    ({"silence_drop_until_s": -0.001}, "drop_until_ms=-1"),
    ({"baudrate": 0}, "baud=0"),
    ({"terminator": b"\r\r"}, "terminator=crcr"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"channels": ("I1", "E1")}, "channels=I1,E1"),
    ({"mode": "auto"}, "mode=auto"),
]


@pytest.mark.parametrize(("kwargs", "query"), BAD)
def test_bad_values_are_refused_both_ways(kwargs: dict[str, Any], query: str) -> None:
    with pytest.raises(ServomexValidationError):
        Simulator(**kwargs)
    url = f"sim://?{query}"
    with pytest.raises(ServomexValidationError) as info:
        parse_sim_url(url)
    key, _, value = query.partition("=")
    assert f"bad sim:// {key}={value!r}" in info.value.message
    assert info.value.context.port == url


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scenario": "nope"},
        {"line_clock": 1.0},
        {"serial": "COM1"},
        {"name": "a/b"},
        {"addresses": ()},
        {"addresses": (1, 1)},
        {"clock": "yesterday"},
    ],
)
def test_bad_fields_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ServomexValidationError):
        SimConfig(**kwargs)


def test_unknown_query_keys_are_named() -> None:
    with pytest.raises(ServomexValidationError, match="colour") as info:
        SimConfig.from_query({"colour": "blue"}, url="sim://?colour=blue")
    assert info.value.context.port == "sim://?colour=blue"
