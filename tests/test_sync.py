"""The sync facade: portal semantics, surface parity with the async API, end to end on sim://."""

from __future__ import annotations

import csv
import inspect
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from servomexlib.devices.analyzer import Analyzer
from servomexlib.devices.models import ChannelId, ErrorPolicy, ProtocolKind, Sample
from servomexlib.errors import (
    ServomexConfirmationRequiredError,
    ServomexProtocolUnsupportedError,
    ServomexTimeoutError,
    ServomexValidationError,
)
from servomexlib.manager import ServomexManager
from servomexlib.sim import Simulator
from servomexlib.sinks import CsvSink
from servomexlib.sync import (
    Servomex,
    SyncAnalyzer,
    SyncPortal,
    record_to_sink,
    sync_csv_sink,
    sync_jsonl_sink,
    sync_sqlite_sink,
)
from servomexlib.sync.manager import SyncManager

CONTINUOUS = "sim://?mode=continuous&period=0.05&realtime=0"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# ---------------------------------------------------------------------------- portal


async def _raise_group(depth: int) -> None:
    exc: Exception = ServomexTimeoutError("deep")
    for _ in range(depth):
        exc = ExceptionGroup("wrapper", [exc])
    raise exc


async def _raise_two() -> None:
    raise ExceptionGroup("two", [ValueError("a"), KeyError("b")])


async def _add(a: int, *, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


def test_portal_calls_and_unwraps(backend: str) -> None:
    portal = SyncPortal(backend=backend)
    states = [portal.running]
    with pytest.raises(RuntimeError, match="not running"):
        portal.call(_add, 1, b=2)
    with portal:
        states.append(portal.running)
        assert portal.call(_add, 1, b=2) == 3
        for depth in (1, 3):
            with pytest.raises(ServomexTimeoutError, match="deep"):
                portal.call(_raise_group, depth)
        with pytest.raises(ExceptionGroup) as info:
            portal.call(_raise_two)
        assert len(info.value.exceptions) == 2
    states.append(portal.running)
    assert states == [False, True, False]


def test_unwrapped_error_keeps_its_cause(backend: str) -> None:
    async def fail_with_cause() -> None:
        inner = ServomexTimeoutError("lost")
        inner.__cause__ = OSError("wire cut")
        raise ExceptionGroup("g", [inner])

    with SyncPortal(backend=backend) as portal, pytest.raises(ServomexTimeoutError) as info:
        portal.call(fail_with_cause)
    assert isinstance(info.value.__cause__, OSError)


# ---------------------------------------------------------------------------- surface parity

SYNC_METHODS = [
    "poll",
    "read_channel",
    "read_all",
    "status",
    "analyser_status",
    "identify",
    "snapshot",
    "poll_samples",
    "start_calibration",
    "stop_calibration",
    "calibration_status",
    "loopback",
    "stream",
]


@pytest.mark.parametrize("name", SYNC_METHODS)
def test_sync_analyzer_mirrors_async_signature(name: str) -> None:
    async_sig = inspect.signature(getattr(Analyzer, name))
    sync_sig = inspect.signature(getattr(SyncAnalyzer, name))
    assert list(async_sig.parameters) == list(sync_sig.parameters)
    for pname, param in async_sig.parameters.items():
        other = sync_sig.parameters[pname]
        assert other.kind == param.kind, pname
        assert other.default == param.default, pname


@pytest.mark.parametrize("name", ["poll", "poll_samples", "execute_each", "remove", "get", "add"])
def test_sync_manager_mirrors_async_signature(name: str) -> None:
    async_sig = inspect.signature(getattr(ServomexManager, name))
    sync_sig = inspect.signature(getattr(SyncManager, name))
    assert list(async_sig.parameters) == list(sync_sig.parameters)
    for pname, param in async_sig.parameters.items():
        assert sync_sig.parameters[pname].default == param.default, pname


def test_properties_mirror() -> None:
    for prop in ("protocol", "capabilities", "info", "dropped_frames", "device"):
        assert isinstance(getattr(Analyzer, prop), property)
        assert isinstance(getattr(SyncAnalyzer, prop), property)
    for prop in ("names", "closed"):
        assert isinstance(getattr(SyncManager, prop), property)


# ---------------------------------------------------------------------------- end to end


@pytest.mark.timeout(30)
def test_servomex_open_continuous_sim(backend: str) -> None:
    with Servomex.open(CONTINUOUS, protocol="continuous", backend=backend) as anz:
        assert anz.protocol is ProtocolKind.CONTINUOUS_ASCII
        assert anz.info is not None
        assert [c.channel for c in anz.info.channels] == [
            ChannelId.I1,
            ChannelId.I2,
            ChannelId.I3,
            ChannelId.E1,
            ChannelId.E2,
        ]
        frame = anz.poll(wait_fresh=True)
        assert frame.channel("I1").value == pytest.approx(20.378)
        assert frame.channel("I3").name == "CO2"
        assert anz.read_channel("I2").value == pytest.approx(0.084)
        assert anz.snapshot().readings
        with pytest.raises(ServomexValidationError):
            anz.read_channel("X9")
        with pytest.raises(ServomexConfirmationRequiredError):
            anz.start_calibration(1)
        with pytest.raises(ServomexProtocolUnsupportedError):
            anz.start_calibration(1, confirm=True)
        got: list[Sample] = []
        with anz.stream() as samples:
            for sample in samples:
                got.append(sample)
                if len(got) >= 10:
                    break
        assert all(s.reading is not None for s in got)
        assert {s.channel for s in got} >= {ChannelId.I1, ChannelId.E2}


@pytest.mark.timeout(30)
def test_servomex_open_modbus_sim_and_shared_portal(backend: str) -> None:
    with SyncPortal(backend=backend) as portal:
        with Servomex.open(
            "sim://?mode=modbus_rtu&address=30&realtime=0",
            protocol="modbus_rtu",
            address=30,
            portal=portal,
        ) as anz:
            assert anz.protocol is ProtocolKind.MODBUS_RTU
            values = {ch: r.value for ch, r in anz.read_all().items()}
            assert values[ChannelId.I1] == pytest.approx(20.378, abs=1e-5)
            assert anz.read_channel("I3").name == "CO\u2082"
            assert anz.loopback(b"\xab\xcd") == b"\xab\xcd"
            assert not anz.calibration_status(1).active
        assert portal.running  # a shared portal stays up


@pytest.mark.timeout(30)
def test_sync_identify_is_cached_until_refresh(backend: str) -> None:
    with SyncPortal(backend=backend) as portal:
        sim = portal.call(_simulator, f"sync-identify-{backend}")
        with Servomex.open(
            f"sim://sync-identify-{backend}", protocol="modbus_rtu", portal=portal
        ) as anz:
            info = anz.info
            assert info is not None
            seen = len(sim.requests)
            assert anz.identify() is info  # the cache: nothing sent
            assert len(sim.requests) == seen
            portal.call(_relabel, sim)
            assert anz.identify() is info
            fresh = anz.identify(refresh=True)
            assert len(sim.requests) == seen + 1  # one FC04 (0, 70)
            assert fresh is not info
            assert anz.info is fresh
            assert fresh.channels[0].name == "O2"


async def _simulator(name: str) -> Simulator:
    return Simulator(mode="modbus_rtu", realtime=False, name=name)


async def _relabel(sim: Simulator) -> None:
    sim.set_name("I1", "O2")


@pytest.mark.timeout(30)
def test_failed_open_closes_own_portal(backend: str) -> None:
    with pytest.raises(ServomexValidationError):
        Servomex.open("sim://?mode=continuous", protocol="continuous", address=0, backend=backend)
    with pytest.raises(ServomexValidationError):
        Servomex.open("nope://x", protocol="continuous", backend=backend)


@pytest.mark.timeout(30)
def test_sync_manager_polls_a_multidrop_sim(backend: str) -> None:
    url = f"sim://sync-bus-{backend}?mode=modbus_rtu&address=1,2&realtime=0"
    with SyncManager(backend=backend) as mgr:
        mgr.add("a", url, address=1)
        mgr.add("b", url, address=2)
        assert list(mgr.names) == ["a", "b"]
        results = mgr.poll()
        assert all(r.ok for r in results.values())
        samples = mgr.poll_samples()
        assert {s.device for s in samples} == {"a", "b"}
        mgr.remove("b")
        assert list(mgr.names) == ["a"]
    assert mgr.closed


# ---------------------------------------------------------------------------- plain sync over ptys


_SIMULATE = "import sys; from servomexlib.cli import main; sys.exit(main(sys.argv[1:]))"


@contextmanager
def simulate(*args: str) -> Iterator[str]:
    """Run `servomex simulate` in a subprocess; yield the pty path it prints first."""
    with subprocess.Popen(
        [sys.executable, "-c", _SIMULATE, "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            path = proc.stdout.readline().strip()
            assert path, "servomex simulate printed nothing"
            yield path
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(60)
def test_plain_sync_scenarios_over_real_ptys() -> None:
    with (
        simulate("--mode", "modbus_rtu", "--address", "1,2", "--seed", "3") as bus,
        simulate("--mode", "continuous", "--frame-period", "0.2") as broadcast,
    ):
        # Modbus multidrop through the sync manager
        with SyncManager(error_policy=ErrorPolicy.RETURN) as mgr:
            mgr.add("a", bus, address=1)
            mgr.add("b", bus, address=2)
            mgr.add("ghost", bus, address=9, timeout=0.2)
            results = mgr.poll()
            assert results["a"].ok
            assert results["b"].ok
            assert isinstance(results["ghost"].error, ServomexTimeoutError)
            frame = results["a"].value
            assert frame is not None
            assert frame.channel("I1").value == pytest.approx(20.378, abs=1e-5)
        # a continuous analyser through Servomex.open
        with Servomex.open(broadcast, protocol="continuous") as anz:
            assert anz.poll(wait_fresh=True).channel("I2").value == pytest.approx(0.084)
        # errors arrive as plain Servomex* exceptions and the with block always closes the port
        with (
            pytest.raises(ServomexTimeoutError),
            Servomex.open(
                bus, protocol="modbus_rtu", address=7, timeout=0.2, identify=False
            ) as dead,
        ):
            dead.poll()
        with (
            pytest.raises(ServomexValidationError),
            Servomex.open(bus, protocol="modbus_rtu", address=1, identify=False) as anz,
        ):
            anz.read_channel("Q7")
        # the port was released both times: an exclusive open succeeds again
        with Servomex.open(bus, protocol="modbus_rtu", address=2, identify=False) as anz:
            assert anz.read_channel("I3").name == "CO\u2082"


@pytest.mark.timeout(30)
def test_record_to_sink_and_sync_sinks(backend: str, tmp_path: Path) -> None:
    with SyncPortal(backend=backend) as portal:
        with Servomex.open(CONTINUOUS, protocol="continuous", portal=portal) as anz:
            csv_path = tmp_path / "rec.csv"
            summary = record_to_sink(
                anz.analyzer, CsvSink(csv_path), rate_hz=10, duration=0.5, portal=portal
            )
            with csv_path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            # 5 ticks of 5 readings; a stalled machine may skip a tick (counted late, not lost)
            assert summary.samples_emitted == len(rows)
            assert len(rows) % 5 == 0
            assert 5 <= len(rows) <= 5 * 5
            assert {r["channel"] for r in rows} == {"I1", "I2", "I3", "E1", "E2"}
            assert float(rows[0]["value"]) == pytest.approx(20.378)
            db = tmp_path / "rec.db"
            with sync_sqlite_sink(db, portal=portal) as sink:
                sink.write_many(anz.poll_samples())
            with sync_jsonl_sink(tmp_path / "rec.jsonl", portal=portal) as sink:
                sink.write_many(anz.poll_samples())
        assert portal.running
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select count(*), min(device) from samples").fetchone()[0] == 5
    lines = (tmp_path / "rec.jsonl").read_text().splitlines()
    assert [json.loads(line)["channel"] for line in lines] == ["I1", "I2", "I3", "E1", "E2"]


class _TickSource:
    """A loop-independent PollSource: one marker sample per call, numbered."""

    def __init__(self) -> None:
        self.calls = 0

    async def poll_samples(
        self, *, names: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[Sample]:
        self.calls += 1
        return [
            Sample(
                device=f"tick{self.calls}",
                channel=None,
                reading=None,
                protocol=ProtocolKind.MODBUS_RTU,
                monotonic_ns=time.monotonic_ns(),
                received_at=datetime.now(UTC),
            )
        ]


@pytest.mark.timeout(30)
def test_record_to_sink_without_a_portal_runs_its_own(backend: str, tmp_path: Path) -> None:
    source = _TickSource()
    path = tmp_path / "ticks.csv"
    summary = record_to_sink(source, CsvSink(path), rate_hz=20, duration=0.25, backend=backend)
    with path.open(newline="") as fh:
        devices = [row["device"] for row in csv.DictReader(fh)]
    assert devices == [f"tick{n}" for n in range(1, source.calls + 1)]
    assert summary.samples_emitted == len(devices) >= 1


def test_sync_sink_owns_its_portal(tmp_path: Path) -> None:
    sink = sync_csv_sink(tmp_path / "own.csv")
    with sink:
        sink.write_many([])
    assert not sink._portal.running
    assert (tmp_path / "own.csv").exists()
