"""Group 3: continuous decode cost, offline and through ``Analyzer.stream()`` over a pty.

* **Offline**: ``servomexlib.decode_frame`` over a corpus of 5-channel frames the simulator
  builds for a live analyser (clock ticking every frame, I1 noisy, the rest steady), best of
  several passes. A second row decodes frames whose every value changes every frame
  (context: no block repeats).
* **Streaming**: a simulator in a *child process* broadcasts back to back at 115 200 baud on a
  pty (frame period = one frame's wire time); this process opens the pty through anyserial at
  115 200 baud, wraps it in a ``ByteStreamTransport`` that knows the line's character time (as
  a ``SerialTransport`` does from its settings; ``SerialSettings`` stops at the analyser's
  19 200), passes it to ``open_continuous``, iterates ``anz.stream()`` and counts frames.
  CPU is ``time.process_time()`` of this process over the measured frames, so it is the
  receiving side only (the simulator's CPU is reported apart).
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime

import anyio
import anyserial

import servomexlib
from servomexlib.sim import Simulator
from servomexlib.transport import ByteStreamTransport
from servomexlib.wire.continuous import parse_frame

from .common import Figure, Settings, child_env, python_exe

__all__ = ["run"]

DECODE_TARGET = 60_000.0  # frames/s
STREAM_TARGET = 2.0  # CPU-s per 10 000 frames
STREAM_BAUD = 115_200


def corpus(n: int, *, noisy_all: bool = False) -> list[bytes]:
    """``n`` 5-channel frames one second apart, as the simulator prints them."""
    sim = Simulator(mode="continuous", realtime=False, seed=7)
    sim.drift("I1", noise=0.002)
    if noisy_all:
        for ch, noise in (("I2", 0.002), ("I3", 0.002), ("E1", 0.05), ("E2", 0.05)):
            sim.drift(ch, noise=noise)
    t0 = sim.now()
    return [sim.model.continuous_frame(t0 + i) for i in range(n)]


def offline_rate(frames: list[bytes], passes: int) -> float:
    """Best frames/s of ``passes`` passes of ``decode_frame`` over ``frames``."""
    decode = servomexlib.decode_frame
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for f in frames:
            decode(f)
        best = min(best, time.perf_counter() - t0)
    return len(frames) / best


def parse_rate(frames: list[bytes], passes: int) -> float:
    now = datetime.now(UTC)
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for f in frames:
            parse_frame(f, received_at=now, monotonic_ns=0)
        best = min(best, time.perf_counter() - t0)
    return len(frames) / best


def _frame_wire_time() -> float:
    frame = Simulator(mode="continuous", realtime=False).frame()
    return len(frame) * 10 / STREAM_BAUD


async def stream_cpu(frames: int, warmup: int) -> tuple[float, float, int, float, float]:
    """(cpu_s, wall_s, dropped, sim_cpu_s, frames_per_s) for ``frames`` streamed frames."""
    period = _frame_wire_time() * 1.02
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [python_exe(), "-m", "benchmarks._simproc", "continuous", str(STREAM_BAUD), str(period)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
        text=True,
    )
    try:
        assert proc.stdout is not None
        path = await anyio.to_thread.run_sync(proc.stdout.readline)
        path = path.strip()
        if not path:
            raise RuntimeError("simulator child process printed no pty path")
        sim_cpu0 = _proc_cpu(proc.pid)
        port = await anyserial.open_serial_port(path, anyserial.SerialConfig(baudrate=STREAM_BAUD))
        line = ByteStreamTransport(port, label=path, char_time_s=10 / STREAM_BAUD)
        anz = await servomexlib.open_continuous(line, frame_period=period)
        async with anz, anz.stream() as samples:
            count = 0
            per_frame = 5
            cpu0 = wall0 = 0.0
            sim_cpu_start = sim_cpu0
            async for _sample in samples:
                count += 1
                if count == warmup * per_frame:
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    sim_cpu_start = _proc_cpu(proc.pid)
                if count == (warmup + frames) * per_frame:
                    break
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            sim_cpu = _proc_cpu(proc.pid) - sim_cpu_start
            dropped = anz.dropped_frames
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return cpu, wall, dropped, sim_cpu, frames / wall


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc), 0.0 if unavailable."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return 0.0


def run(settings: Settings) -> list[Figure]:
    n = 2000 if settings.quick else 10_000
    passes = 3 if settings.quick else 7
    live = corpus(n)
    rate = offline_rate(live, passes)
    figures = [
        Figure(
            "3",
            f"offline decode_frame, live 5-ch frames ({n} x {passes})",
            f"{rate:,.0f} frames/s ({1e6 / rate:.1f} us/frame)",
            f">= {DECODE_TARGET:,.0f} frames/s",
            rate / DECODE_TARGET,
            (">=", 1.0),
            note=f"parse_frame alone (no clock read): {parse_rate(live, passes):,.0f} frames/s",
        )
    ]
    worst = corpus(n, noisy_all=True)
    wrate = offline_rate(worst, passes)
    figures.append(
        Figure(
            "3",
            "context: offline decode, every value changing",
            f"{wrate:,.0f} frames/s ({1e6 / wrate:.1f} us/frame)",
            f"{DECODE_TARGET:,.0f} frames/s",
            wrate / DECODE_TARGET,
            None,
        )
    )
    frames = 120 if settings.quick else 2000
    warmup = 20
    cpu, wall, dropped, sim_cpu, fps = anyio.run(stream_cpu, frames, warmup)
    per10k = cpu / frames * 10_000
    figures.append(
        Figure(
            "3",
            f"stream() over pty at {STREAM_BAUD} baud, CPU per 10 000 frames",
            f"{per10k:.2f} CPU-s ({cpu / frames * 1e6:.0f} us/frame)",
            f"<= {STREAM_TARGET:g} CPU-s",
            per10k / STREAM_TARGET,
            ("<=", 1.0),
            note=(
                f"{frames} frames in {wall:.1f} s ({fps:.1f} frames/s, the line's limit), "
                f"dropped {dropped}; receiving process CPU only; the simulator child used "
                f"{sim_cpu / frames * 10_000:.2f} CPU-s per 10 000 frames"
            ),
        )
    )
    figures.append(wakeup_cost())
    return figures


def wakeup_cost(seconds: float = 2.0) -> Figure:
    """Context: CPU one event-loop wake-up costs here (a bare ``anyio.sleep(0.001)`` loop)."""

    async def loop() -> tuple[float, int]:
        c0, w0, n = time.process_time(), time.perf_counter(), 0
        while time.perf_counter() - w0 < seconds:
            await anyio.sleep(0.001)
            n += 1
        return time.process_time() - c0, n

    cpu, n = anyio.run(loop)
    return Figure(
        "3",
        "context: CPU per event-loop wake-up on this machine",
        f"{cpu / n * 1e6:.0f} us ({n} x anyio.sleep(0.001))",
        "",
        note="the floor under every chunk read: the stream figure is (reads per frame) x this",
    )
