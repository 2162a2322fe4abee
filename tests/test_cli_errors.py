"""How every `servomex` command ends when something goes wrong (api.md §13; issue 11 items 10, 12).

One `error: …` line on stderr, exit 1 (or 2 where §13 says so), never a traceback: for ports
that are no serial port (/dev/null, a regular file, a directory), a TCP peer that accepts but
never answers, a busy `simulate --tcp` port, an exception group, and — as the last safety net —
an error nobody expected. The line speaks CLI (flags, context in words); raw bytes and extras
only with `--verbose`. A closed stdout (`| head`) ends a command quietly with exit 0.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import run
from servomexlib.cli import SUBCOMMANDS, build_parser
from servomexlib.cli.common import (
    cli_wording,
    context_words,
    describe_error,
    is_broken_pipe,
    report_failure,
)
from servomexlib.errors import (
    ErrorContext,
    ServomexConnectionError,
    ServomexSinkSchemaError,
    ServomexTimeoutError,
)

SERVOMEX = Path(sys.executable).with_name("servomex")

#: Every command that opens a device port, with what it needs besides the port.
DEVICE_COMMANDS: list[list[str]] = [
    ["read"],
    ["stream", "--count", "1"],
    ["watch", "--count", "1"],
    ["capture", "--duration", "0.1"],  # --out is added per test (in tmp_path)
    ["diag", "tap", "--count", "1"],
    ["diag", "jitter", "--count", "2"],
    ["diag", "loopback"],
]
#: Fast failure: AUTO listens max(timeout, 2 x frame period) per step.
FAST = ["--timeout", "0.05", "--frame-period", "0.02"]


def device_argv(command: list[str], port: str, tmp_path: Path, *extra: str) -> list[str]:
    argv = [*command, port, *extra]
    if command[0] == "capture":
        argv += ["--out", str(tmp_path / "never.csv")]
    return argv


def assert_one_error_line(code: int, err: str, *, codes: tuple[int, ...] = (1,)) -> None:
    assert code in codes, err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err  # exactly one line
    assert "Traceback" not in err


@pytest.fixture
def regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-port.txt"
    path.write_text("hello\n")
    return path


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port whose listener accepts connections (the kernel completes the handshake into
    the backlog) and never sends a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        host, port = sock.getsockname()
        yield f"tcp://{host}:{port}"


# ---------------------------------------------------------------------------- bad ports


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("kind", ["/dev/null", "regular file", "directory"])
def test_device_commands_on_a_path_that_is_no_serial_port(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    regular_file: Path,
    command: list[str],
    kind: str,
) -> None:
    port = {"/dev/null": "/dev/null", "regular file": str(regular_file), "directory": "/tmp"}[kind]
    for protocol in (["--protocol", "modbus_rtu"], []):  # a framing given, and AUTO
        code, lines, err = run(capsys, *device_argv(command, port, tmp_path, *protocol, *FAST))
        assert_one_error_line(code, err)
        assert lines == []  # nothing at all on stdout
    assert not (tmp_path / "never.csv").exists()  # capture creates no file for a dead port


@pytest.mark.parametrize("kind", ["/dev/null", "regular file", "directory"])
def test_discover_and_decode_on_a_path_that_is_no_serial_port(
    capsys: pytest.CaptureFixture[str], regular_file: Path, kind: str
) -> None:
    port = {"/dev/null": "/dev/null", "regular file": str(regular_file), "directory": "/tmp"}[kind]
    code, lines, err = run(capsys, "discover", port, *FAST)
    assert "Traceback" not in err
    if err:  # an error nobody expected still gives one line
        assert_one_error_line(code, err)
    else:  # the port is reported as holding no device (api.md §13: exit 2 when none found)
        assert code == 2
        assert lines[0].startswith(f"{port}: no device (")
    code, lines, err = run(capsys, "decode", "--fixture", port)
    if kind == "regular file":  # readable: reported as a frame that does not decode
        assert code == 0
        assert any("  parse error: " in line for line in lines)
    else:
        assert_one_error_line(code, err)


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_device_commands_on_a_tcp_peer_that_never_answers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, silent_listener: str, command: list[str]
) -> None:
    argv = device_argv(command, silent_listener, tmp_path, "--protocol", "modbus_rtu", *FAST)
    code, lines, err = run(capsys, *argv)
    assert_one_error_line(code, err)
    assert lines == []
    # The context in words, not as key=value pairs; no raw bytes without --verbose.
    assert f"port {silent_listener}" in err
    assert "address 1" in err
    assert "after 3 attempts" in err
    assert "request" not in err
    assert "extra=" not in err


def test_auto_on_a_tcp_peer_that_never_answers(
    capsys: pytest.CaptureFixture[str], silent_listener: str
) -> None:
    code, _, err = run(capsys, "read", silent_listener, *FAST)
    assert_one_error_line(code, err)
    assert err.startswith(f"error: no recognised protocol on {silent_listener}")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX sockets semantics")
def test_simulate_on_a_busy_tcp_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        code, lines, err = run(capsys, "simulate", "--tcp", f"127.0.0.1:{port}")
    assert_one_error_line(code, err)
    assert lines == []  # no address line for a server that never started
    assert "in use" in err.lower()


# ---------------------------------------------------------------------------- safety net


def test_an_unexpected_error_is_one_line_and_verbose_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import servomexlib.cli.read as read_cmd

    async def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(read_cmd, "_read", broken)
    code, _, err = run(capsys, "read", "sim://")
    assert_one_error_line(code, err)
    assert err == "error: unexpected RuntimeError: a bug (run with --verbose for details)\n"
    code, _, err = run(capsys, "read", "sim://", "--verbose")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("error: unexpected RuntimeError: a bug\n")
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: unexpected RuntimeError: a bug"
    ]


def test_a_sync_handler_error_is_caught_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import servomexlib.cli.decode as decode_cmd

    def broken(data: bytes, args: argparse.Namespace) -> int:
        raise KeyError("frames")

    monkeypatch.setattr(decode_cmd, "_decode", broken)
    code, _, err = run(capsys, "decode", "--hex", "0a")
    assert_one_error_line(code, err)
    assert err.startswith("error: unexpected KeyError: 'frames'")


def test_exception_groups_report_the_first_servomex_leaf(
    capsys: pytest.CaptureFixture[str],
) -> None:
    timeout = ServomexTimeoutError(
        "no response from slave",
        context=ErrorContext(port="/dev/ttyUSB0", address=30, function_code=4, register=0),
    )
    group = ExceptionGroup("outer", [ValueError("noise"), ExceptionGroup("inner", [timeout])])
    assert report_failure(group) == 1
    assert capsys.readouterr().err == (
        "error: no response from slave (port /dev/ttyUSB0, address 30, FC04 register 0)\n"
    )


def test_error_wording_speaks_cli() -> None:
    err = ServomexSinkSchemaError(
        "existing file x.csv has a different CSV header; refusing to append: pass "
        "overwrite=True to replace it, or choose another path",
        context=ErrorContext(extra={"path": "x.csv"}),
    )
    # The flag, not the keyword argument; the file the message names is not repeated.
    assert describe_error(err) == (
        "existing file x.csv has a different CSV header; refusing to append: pass "
        "--overwrite to replace it, or choose another path"
    )
    assert cli_wording("pass overwrite=True") == "pass --overwrite"
    ctx = ErrorContext(
        port="COM3",
        protocol="modbus_rtu",
        address=30,
        channel="I2",
        function_code=2,
        register=8,
        request=b"\x1e\x02",
        response=b"",
        elapsed_s=3.1519,
        extra={"attempts": 3, "op": "read"},
    )
    assert context_words(ctx) == "port COM3, address 30, channel I2, FC02 input 8, after 3 attempts"
    assert context_words(ctx, verbose=True) == (
        "protocol modbus_rtu, port COM3, address 30, channel I2, FC02 input 8, after 3 attempts, "
        "3.152 s, request 1e 02, response (nothing), op read"
    )
    assert context_words(ErrorContext(port="COM3"), "could not open COM3: busy") == ""
    lost = ServomexConnectionError("could not open COM3: busy", context=ErrorContext(port="COM3"))
    assert describe_error(lost) == "could not open COM3: busy"


def test_every_subcommand_takes_verbose() -> None:
    parser = build_parser()
    needs: dict[str, list[str]] = {
        "capture": ["--out", "x.csv"],
        "plot": ["x.csv"],
        "config": ["check", "plant.toml"],
        "run": ["plant.toml"],
    }
    for name in SUBCOMMANDS:
        if name == "diag":
            continue
        args = parser.parse_args([name, *needs.get(name, []), "--verbose"])
        assert args.verbose is True, name
        assert parser.parse_args([name, *needs.get(name, [])]).verbose is False, name
    from servomexlib.cli import alias_parser

    for alias in ("read", "stream", "discover", "decode", "capture", "diag"):
        argv = {"capture": ["--out", "x.csv"], "diag": ["plan"]}.get(alias, [])
        assert alias_parser(alias).parse_args([*argv, "--verbose"]).verbose is True, alias
    for diagnostic in ("loopback", "tap", "jitter", "plan"):
        assert parser.parse_args(["diag", diagnostic, "-v"]).verbose is True
        assert parser.parse_args(["diag", "--verbose", diagnostic]).verbose is True
        assert parser.parse_args(["diag", diagnostic]).verbose is False


# ---------------------------------------------------------------------------- closed stdout


def test_broken_pipe_is_recognised_alone_and_in_groups() -> None:
    assert is_broken_pipe(BrokenPipeError())
    assert is_broken_pipe(ExceptionGroup("g", [BrokenPipeError()]))
    assert not is_broken_pipe(ExceptionGroup("g", [BrokenPipeError(), ValueError()]))
    assert not is_broken_pipe(OSError("other"))


def head_one(argv: list[str]) -> tuple[str, int, str]:
    """Run ``servomex argv | head -1`` with a real pipe whose reader leaves after one line;
    returns that line, the exit code and stderr."""
    proc = subprocess.Popen(
        [str(SERVOMEX), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does after its line
        code = proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return first, code, err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_stream_into_a_closed_pipe_ends_quietly() -> None:
    first, code, err = head_one(["stream", "sim://?realtime=0", "--rate", "20", "--count", "0"])
    assert first.startswith("I1 ")
    assert (code, err) == (0, "")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_a_sync_command_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # decode prints its whole report at once: far more than a pipe buffer holds.
    live = Path(__file__).parent / "data" / "continuous_4100_live_5ch.bin"
    big = tmp_path / "big.bin"
    big.write_bytes(live.read_bytes() * 100)
    first, code, err = head_one(["decode", "--fixture", str(big)])
    assert first.startswith("frame 1: ")
    assert (code, err) == (0, "")
