"""``servomex run`` operations: systemd notify, the HTTP endpoints, SIGTERM, the CLI.

The notify test runs on virtual time (the watchdog beats on the loop's clock). The HTTP tests
run on real time because the client talks to the service over a real TCP socket (virtual time
would jump while the loop waits for the socket); their simulated lines have ``realtime=0`` and
every wait is a bounded poll for a condition, never a fixed sleep. The SIGTERM test runs
``python -m servomexlib run`` as a subprocess: signals and process exit are real-time by
nature.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servomexlib.cli import main
from servomexlib.service.config import ServiceConfig, parse_config
from servomexlib.service.config_rules import ListenAddress
from servomexlib.service.notify import Notifier
from servomexlib.service.payload import tick_payload
from servomexlib.service.runner import Service
from servomexlib.sim import lookup_line


def small_plant(tmp_path: Path, *, rate: float, realtime: bool) -> tuple[ServiceConfig, str]:
    name = f"ops{uuid.uuid4().hex[:8]}"
    rt = "" if realtime else "&realtime=0"
    text = f"""
[service]
name = "ops"
spool = "{tmp_path / "spool.db"}"

[[bus]]
port = "sim://{name}?mode=modbus_rtu&address=1,30{rt}"
protocol = "modbus_rtu"
timeout = 0.3

[[bus.analyser]]
name = "a30"
address = 30
rate_hz = {rate}
channels = ["I1", "I2"]

[[bus.analyser]]
name = "a1"
address = 1
rate_hz = {rate}
channels = ["I1", "I2"]

[[sink]]
type = "sqlite"
path = "{tmp_path / "out.db"}"
"""
    return parse_config(text, source="ops.toml"), name


def make_service(config: ServiceConfig, **kw: Any) -> Service:
    kw.setdefault("environ", {})
    return Service(config, handle_signals=False, configure_logs=False, **kw)


# -- notify ---------------------------------------------------------------------------------


def _drain(sock: socket.socket) -> list[str]:
    got: list[str] = []
    while True:
        try:
            got.append(sock.recv(256).decode())
        except BlockingIOError:
            return got


@pytest.mark.anyio
@pytest.mark.virtual_time
@pytest.mark.parametrize("abstract", [False, True])
async def test_notify_ready_watchdog_stopping(tmp_path: Path, abstract: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if abstract:
        name = f"servomex-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env = {"NOTIFY_SOCKET": "@" + name}
    else:
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path)}
    with sock:
        config, _ = small_plant(tmp_path, rate=2.0, realtime=True)
        service = make_service(config, duration=4.0, spool_inline=True, environ=env)
        assert await service.run() == 0
        got = _drain(sock)
    assert got[0] == "WATCHDOG=1" or got[0] == "READY=1"
    assert got.count("READY=1") == 1
    assert got[-1] == "STOPPING=1"
    assert got.count("STOPPING=1") == 1
    beats = got.count("WATCHDOG=1")
    assert 3 <= beats <= 6, got  # one a second over a 4 s run
    # READY came once every analyser was tried: after both analysers' first tick.
    assert got.index("READY=1") < got.index("STOPPING=1")
    assert all(d.tried for d in service.state.devices.values())


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.sent == []


def test_notifier_to_a_missing_socket_logs_and_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    notifier.close()


# -- HTTP -----------------------------------------------------------------------------------


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def wait_for(predicate: Any, seconds: float = 15.0) -> None:
    with anyio.fail_after(seconds):
        while not await predicate():  # noqa: ASYNC110 - polls a remote state over HTTP
            await anyio.sleep(0.05)  # a bounded poll of the service's state


@pytest.mark.anyio
async def test_metrics_match_the_sink(tmp_path: Path) -> None:
    # 0.25 Hz: after a tick is delivered, the next is 4 s away, so a scrape and a look at the
    # sink see the same ticks.
    config, _ = small_plant(tmp_path, rate=0.25, realtime=False)
    service = make_service(config, http=ListenAddress("127.0.0.1", 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run)
        await service.http_started.wait()
        assert service.http_port is not None
        port = service.http_port

        async def delivered() -> bool:
            status, text = await http_get(port, "/metrics")
            m = metrics(text)
            backlog = m.get(("servomex_sink_backlog_rows", (("sink", config.sinks[0].label),)))
            ticks = [m.get(("servomex_ticks_total", (("device", d),))) for d in ("a1", "a30")]
            return status == 200 and backlog == 0 and all(t and t >= 1 for t in ticks)

        await wait_for(delivered)
        _, text = await http_get(port, "/metrics")
        with closing(sqlite3.connect(tmp_path / "out.db")) as db:
            counts = dict(
                db.execute("SELECT device, COUNT(DISTINCT received_at) FROM samples GROUP BY 1")
            )
            values = {
                (d, c): v
                for d, c, v in db.execute(
                    "SELECT device, channel, value FROM samples s WHERE received_at = "
                    "(SELECT MAX(received_at) FROM samples t WHERE t.device = s.device)"
                )
            }
        status, latest = await http_get(port, "/api/latest")
        health_status, health = await http_get(port, "/healthz")
        missing_status, _ = await http_get(port, "/nope")
        service.stop.set()
    m = metrics(text)
    for device in ("a1", "a30"):
        assert m[("servomex_ticks_total", (("device", device),))] == counts[device]
        assert m[("servomex_up", (("device", device),))] == 1.0
    for (device, channel), value in values.items():
        got = [
            v
            for (name, labels), v in m.items()
            if name == "servomex_reading_value"
            and dict(labels)["device"] == device
            and dict(labels)["channel"] == channel
        ]
        assert got == [pytest.approx(value)], (device, channel)
    assert m[("servomex_tick_duration_seconds_count", (("device", "a1"),))] == counts["a1"]
    assert ("servomex_bus_utilisation_ratio", (("bus", "bus[0]"),)) in m
    assert m[("servomex_spool_dropped_rows_total", (("sink", config.sinks[0].label),))] == 0
    import json

    assert status == 200
    body = json.loads(latest)
    assert set(body) == {"a1", "a30"}
    assert body["a30"]["readings"]
    assert body["a30"]["protocol"] == "modbus_rtu"
    assert health_status == 200
    assert health.strip() == "ok"
    assert missing_status == 404


@pytest.mark.anyio
async def test_healthz_503_when_unplugged_200_when_back(tmp_path: Path) -> None:
    config, line_name = small_plant(tmp_path, rate=2.0, realtime=False)
    service = make_service(config, http=ListenAddress("127.0.0.1", 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run)
        await service.http_started.wait()
        port = service.http_port
        assert port is not None

        async def status_is(code: int) -> bool:
            return (await http_get(port, "/healthz"))[0] == code

        await wait_for(lambda: status_is(200))
        line = lookup_line(line_name)
        assert line is not None
        line.vanish()

        async def both_down() -> bool:
            status, why = await http_get(port, "/healthz")
            return status == 503 and "device=a1 " in why and "device=a30 " in why

        await wait_for(both_down)
        _, reasons = await http_get(port, "/healthz")
        _, text = await http_get(port, "/metrics")
        line.reappear()
        await wait_for(lambda: status_is(200))
        service.stop.set()
    assert "device=a1" in reasons
    assert "device=a30" in reasons
    m = metrics(text)
    assert m[("servomex_up", (("device", "a1"),))] == 0.0
    assert m[("servomex_disconnects_total", (("device", "a1"),))] >= 1
    assert service.state.devices["a1"].up


# -- SIGTERM, CLI ---------------------------------------------------------------------------


def test_sigterm_stops_within_2s_and_the_spool_holds_every_tick(tmp_path: Path) -> None:
    config_path = tmp_path / "plant.toml"
    name = f"sig{uuid.uuid4().hex[:8]}"
    config_path.write_text(
        f"""
[service]
name = "sig"
spool = "{tmp_path / "spool.db"}"

[[bus]]
port = "sim://{name}?mode=modbus_rtu&address=1,30"
protocol = "modbus_rtu"

[[bus.analyser]]
name = "a30"
address = 30
rate_hz = 2
channels = ["I1", "I2"]

[[bus.analyser]]
name = "a1"
address = 1
rate_hz = 2
channels = ["I1", "I2"]

[[sink]]
type = "sqlite"
path = "{tmp_path / "out.db"}"
""",
        encoding="utf-8",
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock_path = tmp_path / "n.sock"
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "servomexlib", "run", str(config_path), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with sock:
            while sock.recv(64) != b"READY=1":
                pass
            time.sleep(1.0)  # real time: let the service run a few ticks before the signal
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            stopped_in = time.monotonic() - sent
            rc = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stderr = err.decode()
    assert rc == 0, stderr
    assert stopped_in < 2.0, stopped_in
    with closing(sqlite3.connect(tmp_path / "spool.db")) as db:
        spooled = db.execute("SELECT COUNT(*), SUM(nrows) FROM ticks").fetchone()
        (acked,) = db.execute("SELECT acked FROM sinks").fetchone()
        (head,) = db.execute("SELECT MAX(id) FROM ticks").fetchone()
    with closing(sqlite3.connect(tmp_path / "out.db")) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM samples").fetchone()
    assert spooled[0] >= 4
    assert acked == head
    assert rows == spooled[1]  # everything committed was delivered


def test_cli_run_bad_config_exits_2_like_config_check(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[service]\nnam = "x"\n', encoding="utf-8")
    assert main(["config", "check", str(bad)]) == 2
    check_err = capsys.readouterr().err
    assert main(["run", str(bad), "--once"]) == 2
    assert capsys.readouterr().err == check_err


def test_tick_payload_of_a_failed_tick() -> None:
    from datetime import UTC, datetime

    from servomexlib.devices.models import ProtocolKind, Sample
    from servomexlib.errors import ServomexTimeoutError

    at = datetime(2026, 12, 2, 10, 0, 1, 250000, tzinfo=UTC)
    sample = Sample(
        "kiln", None, None, ProtocolKind.MODBUS_RTU, 1, at, at, None,
        error=ServomexTimeoutError("no reply"),
    )  # fmt: skip
    payload = tick_payload("kiln", 7, [sample])
    assert payload["readings"] == []
    assert payload["error"] == "no reply"
    assert payload["received_at"] == "2026-12-02T10:00:01.250+00:00"
    assert payload["seq"] == 7
    assert payload["analyser"] == {"fault": None, "maintenance": None}
    _ = io  # keep the import used by helpers above
