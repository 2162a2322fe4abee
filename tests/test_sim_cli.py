"""`servomex simulate`: fast start, address first, clean exit on SIGINT/SIGTERM, tidy."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servomexlib import __version__, decode_frame
from servomexlib.cli import main
from servomexlib.wire.continuous import split_frames

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and ptys")

SERVOMEX = [sys.executable, "-c", "import sys; from servomexlib.cli import main; sys.exit(main())"]
LOOPBACK = bytes.fromhex("01080000ABCD5EAE")


@pytest.fixture(scope="module")
def import_time() -> float:
    """Seconds this machine takes to start Python and import what ``simulate`` runs on.

    The part of the start-up the simulator cannot speed up: a fraction of a second here,
    seconds on a slow CI machine without bytecode caches. "Fast start" is measured on top.
    """
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import anyio, servomexlib.cli, servomexlib.cli.simulate"],
        check=True,
        timeout=60,
    )
    return time.monotonic() - started


def launch(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str, float]:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    started = time.monotonic()
    proc = subprocess.Popen(
        [*SERVOMEX, "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    return proc, first, time.monotonic() - started


def finish(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def read_pty(
    path: str, want: bytes, *, send: bytes = b"", timeout: float = 5.0, count: int = 1
) -> bytes:
    import termios
    import tty

    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        termios.tcflush(fd, termios.TCIOFLUSH)
        if send:
            os.write(fd, send)
        buf = b""
        deadline = time.monotonic() + timeout
        while buf.count(want) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                buf += os.read(fd, 4096)
        return buf
    finally:
        os.close(fd)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_pty_start_address_first_and_clean_exit(
    tmp_path: Path, sig: int, import_time: float
) -> None:
    sentinel = tmp_path / "keep-me"
    sentinel.write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc, path, startup = launch(tmp_path)
    try:
        assert startup < import_time + 1.5  # serving and printed soon after the imports
        assert Path(path).is_symlink()
        assert Path(path).resolve().as_posix().startswith("/dev/")
        assert Path(path).is_relative_to(tmp_path)
        assert read_pty(path, LOOPBACK, send=LOOPBACK).endswith(LOOPBACK)
    finally:
        code = finish(proc, sig)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # only its own dir removed
    assert sentinel.read_text() == "mine"


def test_continuous_over_pty(tmp_path: Path) -> None:
    proc, path, _ = launch(
        tmp_path, "--mode", "continuous", "--frame-period", "0.2", "--terminator", "lf",
        "--channels", "I1,D1,E1,E2", "--names", "Oxygen,O2dry,,", "--values", "20.5,21,4,over",
    )  # fmt: skip
    try:
        buf = read_pty(path, b"\n", timeout=5.0, count=2)
    finally:
        assert finish(proc) == 0
    frames = [f for f in split_frames(buf) if f.startswith(b" ")]
    frame = None
    for raw in frames:
        try:
            frame = decode_frame(raw)
            break
        except Exception:
            continue
    assert frame is not None, buf
    assert [r.channel.value for r in frame.readings] == ["I1", "D1", "E1", "E2"]
    assert [r.value for r in frame.readings] == [20.5, 21.0, 4.0, None]
    assert frame.readings[1].name == "O2dry"


def test_tcp_prints_url_and_serves(tmp_path: Path, import_time: float) -> None:
    proc, url, startup = launch(tmp_path, "--tcp", "127.0.0.1:0", "--address", "1")
    try:
        assert startup < import_time + 1.5
        assert url.startswith("tcp://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(LOOPBACK)
            buf = b""
            while len(buf) < len(LOOPBACK):
                buf += sock.recv(64)
        assert buf == LOOPBACK
    finally:
        assert finish(proc) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--channels", "I1,X9,E1"],
        ["--names", "a,b"],
        ["--values", "1,2,x,4,5"],
        ["--address", "0"],
        ["--tcp", "host:notaport"],
        ["--baud", "-5"],
        ["--channels", "I1,E1"],
    ],
)
def test_bad_options_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *args]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_version_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["simulate", "--mode", "auto"])
