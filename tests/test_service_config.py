"""The service configuration (service.md §1 ``config check``, §2): parsing, every rule with its
table path, key and line, ``${VAR}``, canonical ports, the bus load from the planner, the
``config check`` command and the shipped example. Pure functions: no event loop, no port."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.errors import ServomexValidationError
from servomexlib.planner import ReadPlanner, WireModel
from servomexlib.service import (
    AnalyserConfig,
    BusConfig,
    ConfigProblem,
    ListenAddress,
    LocalEcho,
    Rotation,
    ServiceConfig,
    ServiceConfigError,
    SinkConfig,
    SinkType,
    bus_load,
    canonical_port,
    check_report,
    expand_env,
    load_config,
    main_check,
    parse_config,
    parse_listen,
    parse_rotate,
)
from servomexlib.service.problems import LineIndex
from servomexlib.settings import SerialSettings

EXAMPLE = Path(__file__).parent.parent / "examples" / "plant.toml"
ENV = {"STATE_DIRECTORY": "/var/lib/servomex"}


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ServiceConfigError) as info:
        parse_config(toml(text), source="plant.toml", environ=ENV if environ is None else environ)
    assert isinstance(info.value, ServomexValidationError)
    return list(info.value.problems)


def where(problems: list[ConfigProblem]) -> set[tuple[str, int | None]]:
    return {(p.location, p.line) for p in problems}


# ------------------------------------------------------------------------------ valid files

FULL = """\
[service]
name = "lab3"
spool = "lab3.spool.db"
spool_max_mb = 2048
log_level = "info"

[http]
listen = "127.0.0.1:9464"

[[bus]]
port = "sim://lab3-a?mode=modbus_rtu&address=30"
protocol = "modbus_rtu"
baudrate = 19200
timeout = 1.0
local_echo = "off"

[[bus.analyser]]
name = "kiln-inlet"
address = 30
rate_hz = 1.0
channels = ["I1", "I2", "I3"]

[[sink]]
type = "sqlite"
path = "plant.db"

[[sink]]
type = "csv"
path = "plant.csv"
rotate = "1d"

[[sink]]
type = "postgres"
dsn = "${PLANT_PG_DSN}"
table = "samples"

[[sink]]
type = "mqtt"
url = "mqtt://${MQTT_USER}:${MQTT_PASSWORD}@broker.plant:1883"
prefix = "servomex"
qos = 1
"""
FULL_ENV = {
    "PLANT_PG_DSN": "postgresql://svc:pg-secret@db.plant/plant",
    "MQTT_USER": "svc",
    "MQTT_PASSWORD": "mq-secret",
}


def test_every_key_of_the_spec_example_parses_to_the_expected_dataclasses() -> None:
    config = parse_config(FULL, source="lab3.toml", environ=FULL_ENV)
    port = "sim://lab3-a?mode=modbus_rtu&address=30"
    assert config == ServiceConfig(
        name="lab3",
        spool=Path("lab3.spool.db"),
        spool_max_mb=2048.0,
        log_level="info",
        http=ListenAddress("127.0.0.1", 9464),
        source="lab3.toml",
        buses=(
            BusConfig(
                port=port,
                protocol=ProtocolKind.MODBUS_RTU,
                baudrate=19200,
                timeout=1.0,
                local_echo=LocalEcho.OFF,
                table_path="bus[0]",
                analysers=(
                    AnalyserConfig(
                        name="kiln-inlet",
                        address=30,
                        rate_hz=1.0,
                        channels=(ChannelId.I1, ChannelId.I2, ChannelId.I3),
                        table_path="bus[0].analyser[0]",
                    ),
                ),
            ),
        ),
        sinks=(
            SinkConfig(type=SinkType.SQLITE, path=Path("plant.db"), table_path="sink[0]"),
            SinkConfig(
                type=SinkType.CSV,
                path=Path("plant.csv"),
                rotate=Rotation("1d", seconds=86400.0),
                table_path="sink[1]",
            ),
            SinkConfig(
                type=SinkType.POSTGRES,
                dsn="postgresql://svc:pg-secret@db.plant/plant",
                table="samples",
                table_path="sink[2]",
            ),
            SinkConfig(
                type=SinkType.MQTT,
                url="mqtt://svc:mq-secret@broker.plant:1883",
                prefix="servomex",
                qos=1,
                table_path="sink[3]",
            ),
        ),
    )
    assert config.warnings == ()
    assert config.analysers == config.buses[0].analysers


def test_defaults_follow_the_spec() -> None:
    text = """\
    [[bus]]
    port = "sim://?address=7"
    protocol = "MODBUS_RTU"

    [[bus.analyser]]
    name = "a"
    address = 7

    [[sink]]
    type = "postgres"
    dsn = "host=db user=svc"

    [[sink]]
    type = "mqtt"
    url = "mqtts://broker"
    """
    config = parse_config(toml(text), environ={"STATE_DIRECTORY": "/run/st:/other"})
    host = socket.gethostname()
    assert config.name == host
    assert config.spool == Path("/run/st") / f"{host}.spool.db"  # the first entry
    assert (config.spool_max_mb, config.log_level, config.http) == (2048.0, "info", None)
    bus = config.buses[0]
    assert (bus.protocol, bus.baudrate, bus.timeout, bus.local_echo) == (
        ProtocolKind.MODBUS_RTU,
        19200,
        1.0,
        LocalEcho.OFF,
    )
    assert bus.analysers[0] == AnalyserConfig(
        name="a", address=7, rate_hz=1.0, channels=None, table_path="bus[0].analyser[0]"
    )
    assert (config.sinks[0].table, config.sinks[1].prefix, config.sinks[1].qos) == (
        "samples",
        "servomex",
        1,
    )


def test_without_state_directory_the_spool_goes_to_the_user_state_dir() -> None:
    import platformdirs

    text = '[service]\nname = "x"\n[[bus]]\nport = "sim://"\nprotocol = "modbus_rtu"\n'
    text += (
        '[[bus.analyser]]\nname = "a"\naddress = 1\n[[sink]]\ntype = "jsonl"\npath = "a.jsonl"\n'
    )
    config = parse_config(text, environ={})
    assert config.spool == Path(platformdirs.user_state_dir("servomex")) / "x.spool.db"


# ------------------------------------------------------------------------------ ${VAR}


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A}", {"A": ""}, ""),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),  # as in the shell: empty takes the default
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("pa$$word", {}, "pa$word"),
        ("$$${A}", {"A": "x"}, "$x"),
        ("cost: 5 $ or $5", {}, "cost: 5 $ or $5"),
    ],
)
def test_expand_env(text: str, environ: dict[str, str], expected: str) -> None:
    assert expand_env(text, environ) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${NOPE}", "environment variable NOPE is not set"),
        ("$NOPE", "'$NOPE' is not substituted: write '${NOPE}'"),
        ("${A", "'${' is not closed"),
        ("${1A}", "bad substitution '${1A}'"),
    ],
)
def test_expand_env_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ServomexValidationError, match=None) as info:
        expand_env(text, {})
    assert fragment in info.value.message


def test_env_problems_name_table_key_and_line_and_all_are_reported() -> None:
    text = """\
    [service]
    name = "${SITE:-lab}"

    [[bus]]
    port = "sim://"
    protocol = "modbus_rtu"

    [[bus.analyser]]
    name = "a"
    address = 1
    channels = ["I1", "${CH}"]

    [[sink]]
    type = "postgres"
    dsn = "${PLANT_PG_DSN}"
    """
    problems = problems_of(text)
    assert where(problems) == {("bus[0].analyser[0].channels", 11), ("sink[0].dsn", 15)}
    assert "PLANT_PG_DSN is not set" in next(p.message for p in problems if p.line == 15)
    config = parse_config(toml(text), environ={"CH": "I2", "PLANT_PG_DSN": "host=db"})
    assert config.name == "lab"
    assert config.buses[0].analysers[0].channels == (ChannelId.I1, ChannelId.I2)


# ------------------------------------------------------------------------------ broken files

GOOD_BUS = """\
[[bus]]
port = "sim://?address=1"
protocol = "modbus_rtu"

[[bus.analyser]]
name = "a"
address = 1
"""
GOOD_SINK = """\
[[sink]]
type = "sqlite"
path = "p.db"
"""

# (file text, the one expected (location, line), a fragment of the message)
BROKEN: dict[str, tuple[str, tuple[str, int | None], str]] = {
    "unknown key": (
        GOOD_BUS + "adress = 2\n" + GOOD_SINK,
        ("bus[0].analyser[0].adress", 8),
        "unknown key (did you mean 'address'?)",
    ),
    "unknown bus key": (
        GOOD_BUS.replace('protocol = "modbus_rtu"\n', 'protocol = "modbus_rtu"\nbaud = 9600\n')
        + GOOD_SINK,
        ("bus[0].baud", 4),
        "unknown key (did you mean 'baudrate'?)",
    ),
    "unknown table": (
        '[servce]\nname = "x"\n' + GOOD_BUS + GOOD_SINK,
        ("servce", 1),
        "unknown table (did you mean 'service'?)",
    ),
    "address of the wrong type": (
        GOOD_BUS.replace("address = 1\n", 'address = "1"\n') + GOOD_SINK,
        ("bus[0].analyser[0].address", 7),
        "must be an integer, got a string '1'",
    ),
    "bool is not a number": (
        GOOD_BUS + "rate_hz = true\n" + GOOD_SINK,
        ("bus[0].analyser[0].rate_hz", 8),
        "must be a number, got a boolean True",
    ),
    "address 0": (
        GOOD_BUS.replace("address = 1\n", "address = 0\n") + GOOD_SINK,
        ("bus[0].analyser[0].address", 7),
        "0 is out of range 1-247",
    ),
    "rate 0": (
        GOOD_BUS + "rate_hz = 0\n" + GOOD_SINK,
        ("bus[0].analyser[0].rate_hz", 8),
        "must be greater than 0",
    ),
    "address missing": (
        GOOD_BUS.replace("address = 1\n", "") + GOOD_SINK,
        ("bus[0].analyser[0].address", 5),
        "missing (required)",
    ),
    "duplicate names": (
        GOOD_BUS + GOOD_BUS.replace("sim://?", "sim://other?") + GOOD_SINK,
        ("bus[1].analyser[0].name", 13),
        "duplicate analyser name 'a' (first at bus[0].analyser[0])",
    ),
    "duplicate address on a bus": (
        GOOD_BUS + '[[bus.analyser]]\nname = "b"\naddress = 1\n' + GOOD_SINK,
        ("bus[0].analyser[1].address", 10),
        "address 1 is already used by 'a' (bus[0].analyser[0])",
    ),
    "protocol auto": (
        GOOD_BUS.replace('"modbus_rtu"', '"auto"') + GOOD_SINK,
        ("bus[0].protocol", 3),
        "'auto' is refused: a service must not guess",
    ),
    "unknown protocol": (
        GOOD_BUS.replace('"modbus_rtu"', '"modbus_rtv"') + GOOD_SINK,
        ("bus[0].protocol", 3),
        "(did you mean 'modbus_rtu'?)",
    ),
    "continuous bus with two analysers": (
        '[[bus]]\nport = "sim://?mode=continuous"\nprotocol = "continuous"\n'
        '[[bus.analyser]]\nname = "a"\n[[bus.analyser]]\nname = "b"\n' + GOOD_SINK,
        ("bus[0].analyser[1]", 6),
        "a continuous bus carries exactly one analyser",
    ),
    "continuous analyser with an address": (
        '[[bus]]\nport = "sim://?mode=continuous"\nprotocol = "continuous"\n'
        '[[bus.analyser]]\nname = "a"\naddress = 3\n' + GOOD_SINK,
        ("bus[0].analyser[0].address", 6),
        "not allowed on a continuous bus",
    ),
    "two buses on one port spelled differently": (
        GOOD_BUS.replace("sim://?address=1", "sim://?mode=modbus_rtu&address=1")
        + GOOD_BUS.replace("sim://?address=1", "sim://?address=1&mode=modbus_rtu").replace(
            '"a"', '"b"'
        )
        + GOOD_SINK,
        ("bus[1].port", 9),
        "is the same port as bus[0]",
    ),
    "sim line in another mode": (
        GOOD_BUS.replace("sim://?address=1", "sim://?mode=continuous") + GOOD_SINK,
        ("bus[0].port", 2),
        "the simulated line speaks continuous, the bus says protocol = 'modbus_rtu'",
    ),
    "no simulated analyser at the address": (
        GOOD_BUS.replace("address = 1\n", "address = 30\n") + GOOD_SINK,
        ("bus[0].analyser[0].address", 7),
        "no simulated analyser at address 30",
    ),
    "baudrate outside the analyser's range": (
        GOOD_BUS.replace(
            'protocol = "modbus_rtu"\n', 'protocol = "modbus_rtu"\nbaudrate = 115200\n'
        )
        + GOOD_SINK,
        ("bus[0].baudrate", 4),
        "outside the analyser's range 2400-19200",
    ),
    "timeout 0": (
        GOOD_BUS.replace('protocol = "modbus_rtu"\n', 'protocol = "modbus_rtu"\ntimeout = 0\n')
        + GOOD_SINK,
        ("bus[0].timeout", 4),
        "timeout must be a positive number",
    ),
    "local echo as a boolean": (
        GOOD_BUS.replace(
            'protocol = "modbus_rtu"\n', 'protocol = "modbus_rtu"\nlocal_echo = false\n'
        )
        + GOOD_SINK,
        ("bus[0].local_echo", 4),
        "must be a string, got a boolean False",
    ),
    "unknown channel": (
        GOOD_BUS + 'channels = ["I1", "I5"]\n' + GOOD_SINK,
        ("bus[0].analyser[0].channels", 8),
        "unknown channel 'I5'",
    ),
    "unknown port scheme": (
        GOOD_BUS.replace("sim://?address=1", "rfc2217://host:4000") + GOOD_SINK,
        ("bus[0].port", 2),
        "unsupported port scheme 'rfc2217'",
    ),
    "unset variable": (
        GOOD_BUS + '[[sink]]\ntype = "postgres"\ndsn = "${PLANT_PG_DSN}"\n',
        ("sink[0].dsn", 10),
        "environment variable PLANT_PG_DSN is not set",
    ),
    "file sink without a path": (
        GOOD_BUS + '[[sink]]\ntype = "csv"\n',
        ("sink[0].path", 8),
        "missing (required)",
    ),
    "rotate on sqlite": (
        GOOD_BUS + GOOD_SINK + 'rotate = "1d"\n',
        ("sink[0].rotate", 11),
        "only csv, jsonl and parquet sinks rotate",
    ),
    "ambiguous rotation": (
        GOOD_BUS + '[[sink]]\ntype = "csv"\npath = "a.csv"\nrotate = "30m"\n',
        ("sink[0].rotate", 11),
        "ambiguous: write 'min' for minutes or 'MB'",
    ),
    "a key of another sink type": (
        GOOD_BUS + GOOD_SINK + 'dsn = "host=db"\n',
        ("sink[0].dsn", 11),
        "does not apply to a sqlite sink (it takes path)",
    ),
    "mqtt url not mqtt": (
        GOOD_BUS + '[[sink]]\ntype = "mqtt"\nurl = "http://u:pw@broker"\n',
        ("sink[0].url", 10),
        "url must start with mqtt:// or mqtts://, got 'http://u:***@broker'",
    ),
    "qos 3": (
        GOOD_BUS + '[[sink]]\ntype = "mqtt"\nurl = "mqtt://broker"\nqos = 3\n',
        ("sink[0].qos", 11),
        "3 is out of range 0-2",
    ),
    "unknown sink type": (
        GOOD_BUS + '[[sink]]\ntype = "sqlight"\npath = "a.db"\n',
        ("sink[0].type", 9),
        "(did you mean 'sqlite'?)",
    ),
    "two sinks on one file": (
        GOOD_BUS + GOOD_SINK + GOOD_SINK.replace("p.db", "./p.db"),
        ("sink[1].path", 13),
        "is already written by sink[0]",
    ),
    "no bus": (GOOD_SINK, ("bus", None), "no [[bus]]"),
    "bus as a table": (
        '[bus]\nport = "sim://"\n' + GOOD_SINK,
        ("bus", 1),
        "must be an array of tables: write [[bus]]",
    ),
    "no sink": (GOOD_BUS, ("sink", None), "a service that stores nothing"),
    "listen without a port": (
        '[http]\nlisten = "localhost"\n' + GOOD_BUS + GOOD_SINK,
        ("http.listen", 2),
        "'localhost' is not HOST:PORT",
    ),
    "IPv6 listen without brackets": (
        '[http]\nlisten = "::1:9464"\n' + GOOD_BUS + GOOD_SINK,
        ("http.listen", 2),
        "an IPv6 host goes in brackets",
    ),
    "spool_max_mb 0": (
        "[service]\nspool_max_mb = 0\n" + GOOD_BUS + GOOD_SINK,
        ("service.spool_max_mb", 2),
        "must be greater than 0",
    ),
    "log level": (
        '[service]\nlog_level = "warn"\n' + GOOD_BUS + GOOD_SINK,
        ("service.log_level", 2),
        "(did you mean 'warning'?)",
    ),
    "site name with a slash": (
        '[service]\nname = "lab/3"\n' + GOOD_BUS + GOOD_SINK,
        ("service.name", 2),
        "not allowed in an MQTT topic level",
    ),
    "invalid TOML": (
        GOOD_BUS + "rate_hz = = 2\n",
        ("", 8),
        "not valid TOML: Invalid value",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_file_names_table_key_and_line(case: str) -> None:
    text, expected, fragment = BROKEN[case]
    problems = problems_of(text)
    assert where(problems) == {expected}, [str(p) for p in problems]
    assert fragment in problems[0].message
    assert problems[0].source == "plant.toml"


def test_a_bad_header_is_reported_at_the_table() -> None:
    problems = problems_of(GOOD_BUS.replace("[[bus.analyser]]\n", "[[bus.analyzer]]\n") + GOOD_SINK)
    assert where(problems) == {("bus[0].analyzer", 5), ("bus[0]", 1)}
    assert {p.message for p in problems} == {
        "unknown key (did you mean 'analyser'?)",
        "has no [[bus.analyser]]: a bus needs at least one analyser",
    }


MANY = """\
[service]
name = "lab3"
spool_max_mb = -1

[[bus]]
port = "/dev/ttyUSB0"
protocol = "modbus_rtu"
baud = 9600

[[bus.analyser]]
name = "kiln"
address = 0
rate_hz = "fast"

[[bus.analyser]]
name = "kiln"
address = 5
channels = ["I1", "I1"]

[[bus]]
port = "/dev/../dev/ttyUSB0"
protocol = "auto"

[[bus.analyser]]
name = "stack"
address = 9

[[sink]]
type = "postgres"
dsn = "${PLANT_PG_DSN}"
path = "x.db"
"""


def test_all_problems_of_a_file_are_reported_in_file_order() -> None:
    problems = problems_of(MANY)
    expected = [
        ("service.spool_max_mb", 3),
        ("bus[0].baud", 8),
        ("bus[0].analyser[0].address", 12),
        ("bus[0].analyser[0].rate_hz", 13),
        ("bus[0].analyser[1].name", 16),  # although both "kiln" analysers are broken
        ("bus[0].analyser[1].channels", 18),
        ("bus[1].port", 21),  # although bus[1] has a bad protocol too
        ("bus[1].protocol", 22),
        ("sink[0].dsn", 30),  # unset: reported once, not again as a bad DSN
        ("sink[0].path", 31),
    ]
    assert [(p.location, p.line) for p in problems] == expected, [str(p) for p in problems]
    messages = [p.message for p in problems]
    assert messages[4] == "duplicate analyser name 'kiln' (first at bus[0].analyser[0])"
    assert messages[6] == (
        "'/dev/../dev/ttyUSB0' is the same port as bus[0] ('/dev/ttyUSB0'): one bus per port"
    )
    assert messages[9] == "does not apply to a postgres sink (it takes dsn, table)"


def test_problem_text_and_error_text(tmp_path: Path) -> None:
    path = tmp_path / "plant.toml"
    path.write_text(GOOD_BUS.replace("address = 1\n", "address = 0\n") + GOOD_SINK)
    with pytest.raises(ServiceConfigError) as info:
        load_config(path, environ=ENV)
    (problem,) = info.value.problems
    assert str(problem) == f"{path}:7: bus[0].analyser[0].address: 0 is out of range 1-247"
    assert str(info.value) == f"{path}: invalid service configuration, 1 problem:\n  {problem}"
    assert (
        str(ConfigProblem("bus", None, "no [[bus]]", None, "p.toml")) == "p.toml: bus: no [[bus]]"
    )
    assert str(ConfigProblem("", None, "bad", 3, "p.toml")) == "p.toml:3: bad"


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ServiceConfigError) as info:
        load_config(tmp_path / "missing.toml")
    (problem,) = info.value.problems
    assert problem.path == ""
    assert "cannot read the file: No such file or directory" in problem.message


def test_line_index_follows_nested_arrays_and_skips_multiline_strings() -> None:
    text = toml(
        """
        top = 1
        [[bus]]
        port = "a"
        [[bus.analyser]]
        name = "x"
        [[bus]]
        note = '''
        name = "not a key"
        '''
        [[bus.analyser]]
        [[bus.analyser]]
          "name" = "y"
        [bus.extra]
        k = 2
        """
    )
    index = LineIndex(text)
    assert index.line_of("", "top") == 1
    assert index.line_of("bus[0]", "port") == 3
    assert index.line_of("bus[0].analyser[0]", "name") == 5
    assert index.line_of("bus[1]", "note") == 7
    assert index.line_of("bus[1]", "name") == 6  # not in the string: the header's line
    assert index.line_of("bus[1].analyser[0]") == 10
    assert index.line_of("bus[1].analyser[1]", "name") == 12
    assert index.line_of("bus[1].extra", "k") == 14
    assert index.line_of("sink[0]", "type") is None


# ------------------------------------------------------------------------------ ports


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("/dev/ttyUSB0", "/dev/../dev/ttyUSB0"),
        ("/dev/ttyUSB0", "/dev//ttyUSB0"),
        ("/dev/ttyUSB0", " /dev/ttyUSB0 "),
        ("COM3", "com3"),
        ("COM3", "\\\\.\\COM3"),
        ("sim://?a=1&b=2", "sim://?b=2&a=1"),
        ("SIM://?mode=continuous", "sim://?mode=continuous"),
        ("sim://bench?mode=modbus_rtu", "sim://bench?mode=continuous"),  # one named line
        ("tcp://localhost:4001", "tcp://localhost:4001/"),
        ("tcp://LocalHost:4001", "tcp://localhost:4001"),
        ("tcp://[::1]:4001", "tcp://[0:0::1]:4001".replace("0:0::1", "::1")),
        ("modbus-tcp://10.0.0.7", "modbus-tcp://10.0.0.7:502"),
    ],
)
def test_canonical_port_same(a: str, b: str) -> None:
    assert canonical_port(a) == canonical_port(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("/dev/ttyUSB0", "/dev/ttyUSB1"),
        ("sim://?a=1", "sim://?a=2"),
        ("sim://bench", "sim://Bench"),
        ("tcp://localhost:4001", "tcp://localhost:4002"),
        ("COM3", "COM4"),
    ],
)
def test_canonical_port_different(a: str, b: str) -> None:
    assert canonical_port(a) != canonical_port(b)


def test_canonical_port_resolves_an_existing_symlink(tmp_path: Path) -> None:
    device = tmp_path / "ttyUSB0"
    device.touch()
    link = tmp_path / "by-id" / "usb-FTDI_X-if00-port0"
    link.parent.mkdir()
    link.symlink_to(device)
    assert canonical_port(str(link)) == canonical_port(str(device)) == os.path.realpath(device)
    text = (
        GOOD_BUS.replace("sim://?address=1", str(link))
        + GOOD_BUS.replace("sim://?address=1", str(tmp_path / "x" / ".." / "ttyUSB0")).replace(
            '"a"', '"b"'
        )
        + GOOD_SINK
    )
    assert where(problems_of(text)) == {("bus[1].port", 9)}


def test_canonical_port_refuses_a_tcp_url_without_port() -> None:
    with pytest.raises(ServomexValidationError, match="expected tcp://host:port"):
        canonical_port("tcp://host")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ListenAddress("127.0.0.1", 9464)),
        ("0.0.0.0:80", ListenAddress("0.0.0.0", 80)),
        ("[::1]:9464", ListenAddress("::1", 9464)),
        ("localhost:65535", ListenAddress("localhost", 65535)),
    ],
)
def test_parse_listen(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text", ["localhost", ":9464", "host:0", "host:65536", "::1:9464", "a b:1"]
)
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ServomexValidationError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("text", "seconds", "size"),
    [
        ("1d", 86400.0, None),
        ("12h", 43200.0, None),
        ("30min", 1800.0, None),
        ("45s", 45.0, None),
        ("500MB", None, 500_000_000),
        ("1GB", None, 1_000_000_000),
        ("1.5kB", None, 1500),
        ("512MiB", None, 512 * 2**20),
    ],
)
def test_parse_rotate(text: str, seconds: float | None, size: int | None) -> None:
    assert parse_rotate(text) == Rotation(text, seconds=seconds, bytes=size)


@pytest.mark.parametrize("text", ["", "1", "d", "0h", "30m", "1 week", "-1d"])
def test_parse_rotate_refuses(text: str) -> None:
    with pytest.raises(ServomexValidationError):
        parse_rotate(text)


# ------------------------------------------------------------------------------ bus load

# At 19200 baud 8-N-1 a character is 10/19200 s; each transaction also pays the 50 ms silence
# and the 20 ms turnaround of the WireModel. A value-only sweep of I1 I2 I3 is three reads
# (protocol.md §9.3): FC04 (0, 16) — 8 request + 5 + 2×16 response chars — FC02 (0, 24) —
# 8 + 5 + 3 — and the analyser status FC02 (1000, 16) — 8 + 5 + 2.
CHAR_19200 = 10 / 19200
SWEEP_3CH_19200 = 3 * 0.070 + (45 + 16 + 15) * CHAR_19200

TWO_ON_ONE = (
    """\
[[bus]]
port = "/dev/ttyUSB0"
protocol = "modbus_rtu"
baudrate = {baud}

[[bus.analyser]]
name = "a"
address = 1
rate_hz = {rate}
channels = ["I1", "I2", "I3"]

[[bus.analyser]]
name = "b"
address = 2
rate_hz = {rate}
channels = ["I1", "I2", "I3"]
"""
    + GOOD_SINK
)


def test_utilisation_is_the_planners_sweep_cost_times_the_rates() -> None:
    config = parse_config(TWO_ON_ONE.format(baud=19200, rate=1.0), environ=ENV)
    load = bus_load(config.buses[0])
    planner = ReadPlanner(WireModel.from_settings(SerialSettings("/dev/ttyUSB0"), "modbus_rtu"))
    reads = planner.plan(["I1", "I2", "I3"], include_analyser=True, value_only=True)
    assert [(r.function_code, r.address, r.count) for r in load.analysers[0].reads] == [
        (4, 0, 16),
        (2, 0, 24),
        (2, 1000, 16),
    ]
    assert load.analysers[0].reads == reads
    assert load.analysers[0].sweep_cost_s == pytest.approx(planner.cost(reads), abs=1e-12)
    assert load.analysers[0].sweep_cost_s == pytest.approx(SWEEP_3CH_19200, abs=1e-12)
    assert load.utilisation == pytest.approx(2 * SWEEP_3CH_19200, abs=1e-12)  # 0.4992
    assert not load.upper_bound
    assert config.warnings == ()
    report = check_report(config)
    assert "  utilisation: 49.9 %\n" in report
    assert "sweep: FC04 0-15 (16 regs), FC02 0-23 (24 bits), FC02 1000-1015 (status)" in report


def test_an_oversubscribed_bus_is_refused_with_the_highest_rates() -> None:
    # At 2400 baud a character is 1/240 s: the same sweep costs 0.21 + 76/240 = 0.52667 s, so
    # two analysers at 1 Hz need 105.3 % of the line. Alone one could poll at 1/0.52667 =
    # 1.899 Hz, rounded down to "1.8"; next to the other at 1 Hz at (1 - 0.52667)/0.52667 =
    # 0.899 Hz, "0.89".
    cost = 0.21 + 76 / 240
    assert math.floor(100 / cost) == 189
    problems = problems_of(TWO_ON_ONE.format(baud=2400, rate=1.0))
    assert where(problems) == {("bus[0]", 1)}
    message = problems[0].message
    assert message.startswith("bus utilisation 105.3 % exceeds 100 %: modbus_rtu at 2400 baud")
    assert "'a' at most 1.8 Hz alone, 0.89 Hz with the others at their rates" in message
    assert "'b' at most 1.8 Hz alone, 0.89 Hz with the others at their rates" in message


def test_above_80_percent_is_a_warning_and_the_file_loads() -> None:
    # 2 × 0.4 Hz × 0.52667 s = 42.1 %; 2 × 0.8 Hz = 84.3 %.
    assert parse_config(TWO_ON_ONE.format(baud=2400, rate=0.4), environ=ENV).warnings == ()
    config = parse_config(TWO_ON_ONE.format(baud=2400, rate=0.8), source="p", environ=ENV)
    (warning,) = config.warnings
    assert (warning.location, warning.line) == ("bus[0]", 1)
    assert warning.message.startswith("bus utilisation 84.3 % is above 80 %")
    assert f"warning: {warning}" in check_report(config)


def test_without_channels_all_slots_are_costed_as_an_upper_bound() -> None:
    text = GOOD_BUS.replace("sim://?address=1", "/dev/ttyUSB0") + GOOD_SINK
    load = bus_load(parse_config(text, environ=ENV).buses[0])
    (analyser,) = load.analysers
    assert analyser.assumed_all_slots
    assert analyser.channels == tuple(ChannelId)
    assert load.upper_bound
    planner = ReadPlanner(WireModel())
    every = planner.cost(planner.plan(tuple(ChannelId), value_only=True))
    one = planner.cost(planner.plan(("I1",), value_only=True))
    two = planner.cost(planner.plan(("I1", "E2"), value_only=True))
    assert analyser.sweep_cost_s == pytest.approx(every)
    assert one < two <= every  # at 19200 one read bridging I1..E2 is cheapest: as dear as all


def test_a_continuous_bus_reports_broadcast() -> None:
    config = parse_config(
        '[[bus]]\nport = "tcp://gw:4001"\nprotocol = "continuous"\n'
        '[[bus.analyser]]\nname = "stack"\n' + GOOD_SINK,
        environ=ENV,
    )
    load = bus_load(config.buses[0])
    assert load.broadcast
    assert load.utilisation is None
    assert config.buses[0].analysers[0] == AnalyserConfig(
        name="stack", table_path="bus[0].analyser[0]"
    )
    assert "utilisation: broadcast" in check_report(config)


# ------------------------------------------------------------------------------ config check


def test_main_check_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(TWO_ON_ONE.format(baud=19200, rate=1.0))
    out, err = io.StringIO(), io.StringIO()
    assert main_check(path, out, err) == 0
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{path}: valid: 1 bus, 2 analysers, 1 sink"
    assert lines[2] == "bus[0] /dev/ttyUSB0: modbus_rtu, 19200 baud, timeout 1 s, local echo off"
    assert lines[3] == "  a: address 1, 1 Hz, channels I1,I2,I3"
    assert lines[-2] == "  utilisation: 49.9 %"
    assert lines[-1] == "sink[0]: sqlite p.db"


def test_main_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MANY)
    out, err = io.StringIO(), io.StringIO()
    assert main_check(path, out, err) == 2
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[0] == f"error: {path}:3: service.spool_max_mb: must be greater than 0, got -1"
    assert all(line.startswith(f"error: {path}:") for line in lines[:10])
    assert lines[-1] == f"{path}: 10 problems, not valid"


def test_main_check_missing_file_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main_check(tmp_path / "nope.toml", io.StringIO(), err) == 2
    assert "cannot read the file" in err.getvalue()


def test_the_report_never_shows_a_password() -> None:
    config = parse_config(FULL, environ=FULL_ENV)
    report = check_report(config)
    assert "pg-secret" not in report
    assert "mq-secret" not in report
    assert "sink[2]: postgres postgresql://svc@db.plant" in report
    assert "sink[3]: mqtt mqtt://svc:***@broker.plant:1883 servomex" in report
    assert "pg-secret" not in repr(config)
    assert "mq-secret" not in repr(config)


# ------------------------------------------------------------------------------ the example


def test_the_example_plant_is_valid_as_shipped() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.warnings == ()
    assert [len(b.analysers) for b in config.buses] == [2, 3, 1]
    assert [b.protocol for b in config.buses] == [
        ProtocolKind.MODBUS_RTU,
        ProtocolKind.MODBUS_ASCII,
        ProtocolKind.CONTINUOUS_ASCII,
    ]
    assert 30 in {a.address for a in config.analysers}
    assert all(b.port.startswith("sim://") for b in config.buses)
    assert [s.type for s in config.sinks] == [SinkType.SQLITE, SinkType.CSV]
    out = io.StringIO()
    assert main_check(EXAMPLE, out, io.StringIO()) == 0
    assert out.getvalue().count("utilisation:") == 3


def test_the_examples_postgres_sink_works_once_uncommented() -> None:
    text = EXAMPLE.read_text()
    assert '# dsn = "${PLANT_PG_DSN}"' in text
    uncommented = text.replace("# [[sink]]", "[[sink]]").replace("# type", "type")
    uncommented = uncommented.replace("# dsn", "dsn").replace('# table = "', 'table = "')
    problems = problems_of(uncommented, {})
    assert [(p.location, "not set" in p.message) for p in problems] == [("sink[2].dsn", True)]
    config = parse_config(uncommented, environ={"PLANT_PG_DSN": "postgresql://svc@db/plant"})
    assert config.sinks[2].dsn == "postgresql://svc@db/plant"


# ------------------------------------------------------------------------------ round trip


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace(
            "$", "$$"
        )  # basic strings share JSON's escapes
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def to_toml(config: ServiceConfig) -> str:
    """A TOML text for ``config`` (what a user would write), defaults spelled out."""
    out = ["[service]"]
    out += [f"name = {_toml_value(config.name)}", f"spool = {_toml_value(str(config.spool))}"]
    out += [
        f"spool_max_mb = {config.spool_max_mb!r}",
        f"log_level = {_toml_value(config.log_level)}",
    ]
    if config.http is not None:
        out += ["[http]", f"listen = {_toml_value(str(config.http))}"]
    for bus in config.buses:
        out += ["[[bus]]", f"port = {_toml_value(bus.port)}"]
        out += [f"protocol = {_toml_value(bus.protocol.value)}", f"baudrate = {bus.baudrate}"]
        out += [f"timeout = {bus.timeout!r}", f"local_echo = {_toml_value(bus.local_echo.value)}"]
        for a in bus.analysers:
            out += ["[[bus.analyser]]", f"name = {_toml_value(a.name)}"]
            if a.address is not None:
                out += [f"address = {a.address}", f"rate_hz = {a.rate_hz!r}"]
            if a.channels is not None:
                out.append(f"channels = {_toml_value([c.value for c in a.channels])}")
    for sink in config.sinks:
        out += ["[[sink]]", f"type = {_toml_value(sink.type.value)}"]
        for key in ("dsn", "table", "url", "prefix", "qos"):
            value = getattr(sink, key)
            if value is not None:
                out.append(f"{key} = {_toml_value(value)}")
        if sink.path is not None:
            out.append(f"path = {_toml_value(str(sink.path))}")
        if sink.rotate is not None:
            out.append(f"rotate = {_toml_value(sink.rotate.text)}")
    return "\n".join(out) + "\n"


_NAME = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")),
    min_size=1,
    max_size=12,
).filter(
    lambda s: (
        s == s.strip() and not set(s) & set("/+#") and not s.startswith("$") and s.isprintable()
    )
)
_CHANNELS = st.none() | st.lists(
    st.sampled_from(list(ChannelId)), min_size=1, max_size=10, unique=True
).map(tuple)


@st.composite
def service_configs(draw: st.DrawFn) -> ServiceConfig:
    names = iter(draw(st.lists(_NAME, min_size=10, max_size=10, unique=True)))
    site = next(names)
    buses = []
    for b in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(list(ProtocolKind)[1:]))
        analysers: tuple[AnalyserConfig, ...]
        addresses = [1]
        if kind is ProtocolKind.CONTINUOUS_ASCII:
            analysers = (
                AnalyserConfig(
                    name=next(names), channels=draw(_CHANNELS), table_path=f"bus[{b}].analyser[0]"
                ),
            )
        else:
            addresses = draw(st.lists(st.integers(1, 247), min_size=1, max_size=3, unique=True))
            addresses.sort()
            analysers = tuple(
                AnalyserConfig(
                    name=next(names),
                    address=address,
                    rate_hz=draw(st.floats(0.001, 0.1)),
                    channels=draw(_CHANNELS),
                    table_path=f"bus[{b}].analyser[{i}]",
                )
                for i, address in enumerate(addresses)
            )
        baud = draw(st.sampled_from([2400, 4800, 9600, 19200]))
        listed = ",".join(map(str, addresses))
        sim = f"sim://gen-{b}?mode={kind.value}&address={listed}&baud={baud}"
        buses.append(
            BusConfig(
                port=draw(
                    st.sampled_from([f"/dev/ttyUSB{b}", f"tcp://gw{b}:4001", f"COM{b + 1}", sim])
                ),
                protocol=kind,
                analysers=analysers,
                baudrate=baud,
                timeout=draw(st.floats(0.01, 5.0)),
                local_echo=draw(st.sampled_from(list(LocalEcho))),
                table_path=f"bus[{b}]",
            )
        )
    sinks = []
    for s in range(draw(st.integers(1, 4))):
        sink_type = draw(st.sampled_from(list(SinkType)))
        path = f"sink[{s}]"
        sink: SinkConfig
        if sink_type is SinkType.POSTGRES:
            sink = SinkConfig(
                type=sink_type, dsn=f"postgresql://u@db/p{s}", table=f"t{s}", table_path=path
            )
        elif sink_type is SinkType.MQTT:
            sink = SinkConfig(
                type=sink_type,
                url=f"mqtt://broker:{1883 + s}",
                prefix="servomex/" + site,
                qos=draw(st.integers(0, 2)),
                table_path=path,
            )
        else:
            rotate = None
            if sink_type is not SinkType.SQLITE:
                rotate = draw(
                    st.none() | st.sampled_from(["1d", "12h", "30min", "500MB"]).map(parse_rotate)
                )
            sink = SinkConfig(
                type=sink_type,
                path=Path(f"out{s}.{sink_type.value}"),
                rotate=rotate,
                table_path=path,
            )
        sinks.append(sink)
    return ServiceConfig(
        name=site,
        spool=Path("spool.db"),
        buses=tuple(buses),
        sinks=tuple(sinks),
        spool_max_mb=draw(st.floats(0.5, 1e6)),
        log_level=draw(st.sampled_from(["debug", "info", "warning", "error", "critical"])),
        http=draw(
            st.none()
            | st.builds(
                ListenAddress, st.sampled_from(["127.0.0.1", "::1", "h"]), st.integers(1, 65535)
            )
        ),
        source="gen.toml",
    )


@settings(max_examples=60, deadline=None)
@given(service_configs())
def test_any_valid_config_round_trips_through_toml(config: ServiceConfig) -> None:
    # The generator keeps every bus under 80 % (≤ 3 analysers × 0.1 Hz × a sweep of at most
    # 1.75 s: all 10 slots, Modbus ASCII, 2400 baud — 52.5 %) and every timeout under the period.
    assert parse_config(to_toml(config), source="gen.toml", environ={}) == config


def test_the_round_trip_bound_holds() -> None:
    planner = ReadPlanner(WireModel(baudrate=2400, framing=ProtocolKind.MODBUS_ASCII))
    assert planner.cost(planner.plan(tuple(ChannelId), value_only=True)) < 1.75
