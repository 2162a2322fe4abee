"""The port string grammar (api.md §16.2) and resolve_transport."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from servomexlib.errors import ServomexConnectionError, ServomexValidationError
from servomexlib.settings import SerialSettings
from servomexlib.transport import (
    FakeTransport,
    PortKind,
    SerialTransport,
    TcpTransport,
    parse_port,
    resolve_transport,
)
from servomexlib.transport.timed import TimedReader


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("/dev/ttyUSB0", PortKind.SERIAL),
        ("/dev/serial/by-id/usb-FTDI_FT232R-if00-port0", PortKind.SERIAL),
        ("COM3", PortKind.SERIAL),
        ("com3", PortKind.SERIAL),
        ("\\\\.\\COM12", PortKind.SERIAL),
        ("sim://", PortKind.SIM),
        ("sim://bench?mode=continuous", PortKind.SIM),
        ("SIM://?mode=modbus_rtu&address=30", PortKind.SIM),
        ("tcp://10.0.0.5:4001", PortKind.TCP),
        ("TCP://[::1]:502", PortKind.TCP),
    ],
)
def test_grammar(text: str, kind: PortKind) -> None:
    assert parse_port(text).kind is kind


def test_com_names_are_recognised() -> None:
    assert parse_port("COM3").is_com_name
    assert parse_port("\\\\.\\COM12").is_com_name
    assert not parse_port("/dev/ttyS0").is_com_name


def test_tcp_host_and_port() -> None:
    spec = parse_port("tcp://10.0.0.5:4001")
    assert (spec.host, spec.tcp_port) == ("10.0.0.5", 4001)
    assert parse_port("tcp://[::1]:502").host == "::1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "http://example.com",
        "udp://1.2.3.4:5",
        "rfc2217://host:1",
        "tcp://host",
        "tcp://:4001",
        "tcp://host:0",
        "tcp://host:99999",
        "tcp://host:port",
        "tcp://host:4001/path",
        "tcp://host:4001?x=1",
    ],
)
def test_bad_port_strings_are_validation_errors(text: str) -> None:
    with pytest.raises(ServomexValidationError):
        parse_port(text)


@pytest.mark.anyio
async def test_resolve_returns_a_transport_unchanged() -> None:
    fake = FakeTransport()
    assert await resolve_transport(fake) is fake
    with pytest.raises(ServomexValidationError):
        await resolve_transport(42)  # type: ignore[arg-type]
    with pytest.raises(ServomexValidationError, match="scheme"):
        await resolve_transport("ftp://x")
    with pytest.raises(ServomexValidationError, match="serial_settings"):
        await resolve_transport("/dev/null", {"baudrate": 9600})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_resolve_serial_uses_settings_with_the_given_port() -> None:
    import os
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    try:
        with anyio.fail_after(5):
            t = await resolve_transport(path, SerialSettings(port="ignored", baudrate=9600))
            try:
                assert isinstance(t, SerialTransport)
                assert t.serial_settings == SerialSettings(port=path, baudrate=9600)
            finally:
                await t.aclose()
            t = await resolve_transport(path)
            assert t.serial_settings == SerialSettings(port=path)
            await t.aclose()
    finally:
        os.close(master)


@pytest.mark.anyio
async def test_resolve_tcp() -> None:
    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(0.1)

    with anyio.fail_after(5):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, hold)
            url = f"tcp://127.0.0.1:{port}"
            t = await resolve_transport(url)
            assert isinstance(t, TcpTransport)
            assert t.label == url
            assert t.serial_settings == SerialSettings(port=url)
            await t.aclose()
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_resolve_nonexistent_device_names_it() -> None:
    with pytest.raises(ServomexConnectionError, match="could not open /dev/ttyNOPE0"):
        await resolve_transport("/dev/ttyNOPE0")


@pytest.mark.anyio
async def test_resolve_sim_url() -> None:
    from servomexlib.transport import SimTransport

    url = "sim://?mode=continuous&period=0.05&baud=9600"
    with anyio.fail_after(5):
        t = await resolve_transport(url, SerialSettings(port="ignored"))
        try:
            assert isinstance(t, SimTransport)
            assert t.label == url
            assert t.serial_settings is not None
            assert t.serial_settings.baudrate == 9600  # the simulator's line, not the argument
            data = await TimedReader(t).read_until(b"\n", timeout=2)
            assert data.startswith(b" ")
            assert data.endswith(b";\r\n")
        finally:
            await t.aclose()


@pytest.mark.anyio
async def test_bad_sim_url_is_a_validation_error() -> None:
    with pytest.raises(ServomexValidationError):
        await resolve_transport("sim://?colour=blue")


@pytest.mark.anyio
async def test_a_registered_scheme_is_parsed_and_opened_by_its_opener() -> None:
    from servomexlib.transport import register_scheme
    from servomexlib.transport.schemes import registered_schemes, unregister_scheme

    calls: list[tuple[str, SerialSettings | None]] = []

    async def open_loop(url: str, settings: SerialSettings | None) -> FakeTransport:
        calls.append((url, settings))
        return FakeTransport(label=url)

    with pytest.raises(ServomexValidationError, match="unsupported port scheme 'loop'"):
        parse_port("loop://bench")
    register_scheme("LOOP", open_loop)
    try:
        assert "loop" in registered_schemes()
        spec = parse_port("Loop://bench?x=1")
        assert (spec.kind, spec.scheme) == (PortKind.REGISTERED, "loop")
        settings = SerialSettings(port="ignored", baudrate=9600)
        with anyio.fail_after(2):
            t = await resolve_transport("loop://bench?x=1", settings)
        assert isinstance(t, FakeTransport)
        assert t.label == "loop://bench?x=1"
        assert calls == [("loop://bench?x=1", settings)]  # the settings are passed as given
        # The refusal of an unknown scheme now names the registered one too.
        with pytest.raises(ServomexValidationError, match=r"loop://…"):
            parse_port("ftp://x")
    finally:
        unregister_scheme("loop")
    with pytest.raises(ServomexValidationError, match="unsupported port scheme 'loop'"):
        await resolve_transport("loop://bench")
    assert calls == [("loop://bench?x=1", settings)]  # nothing opened after unregistering


def test_register_scheme_refuses_bad_names_builtins_and_non_callables() -> None:
    from servomexlib.transport import register_scheme

    async def opener(url: str, settings: SerialSettings | None) -> FakeTransport:
        return FakeTransport(label=url)

    for bad in ("", "1abc", "a b", "sim://", 5):
        with pytest.raises(ServomexValidationError, match="port scheme"):
            register_scheme(bad, opener)  # type: ignore[arg-type]
    with pytest.raises(ServomexValidationError, match="built in"):
        register_scheme("tcp", opener)
    with pytest.raises(ServomexValidationError, match="callable"):
        register_scheme("ok", "not a function")  # type: ignore[arg-type]


def test_the_transport_layer_does_not_import_the_simulator() -> None:
    """``sim://`` is registered by the package root; parsing it loads no simulator code, and
    neither does importing the transport layer or the package."""
    import subprocess
    import sys

    code = (
        "import sys, servomexlib.transport.ports as p\n"
        "assert p.parse_port('sim://x?mode=continuous').kind is p.PortKind.SIM\n"
        "print(sorted(m for m in sys.modules if m.startswith('servomexlib.sim')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
