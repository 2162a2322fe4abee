"""``servomex decode`` / ``servomex-decode``: explain continuous frames offline (docs/cli.md).

Input is exactly one of ``--hex HEX…`` (digits optionally separated by spaces, ``:`` or
``,``; even length), ``--fixture PATH`` (a capture file) or raw bytes on stdin. The bytes are
split into frames (docs/protocol.md, §3.8) and each is reported::

    frame 1: b' 06-10-20;09:17:58;  ;S1S1S1S1;05;I1;Oxygen;…;2A36;'
      checksum: valid (0x2A36)
      protocol: continuous
      analyser: clock=2020-10-06T09:17:58 fault=False maintenance=False
      channels (5):
        I1  Oxygen           20.379 %    ok=True

(``frame:`` when there is only one frame; a blank line between reports; ``no frames found``
when there is none). A frame that does not decode gets ``  parse error: …`` instead of the
protocol/analyser/channels lines. Bad ``--hex`` → ``error: --hex: …``, exit 2; otherwise exit 0,
even for bad checksums. ``--format json`` prints one JSON document per frame.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from typing import Any

from ..devices.models import Frame
from ..errors import ServomexError
from ..wire.continuous import checksum, parse_frame, split_frames
from .common import emit_json, format_reading_line, frame_json, load_fixture, run_async

__all__ = ["ChecksumCheck", "check_checksum", "parse_hex", "register", "run"]

_SEPARATORS = re.compile(r"[\s:,]+")
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")


def register(subparsers: Any) -> None:
    """Add the ``decode`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "decode",
        help="decode continuous frames from hex, a capture file or stdin",
        description=(
            "Decode continuous frames offline: from --hex, from a capture (--fixture) or from "
            "raw bytes on stdin. Reports the checksum and every field."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--hex", nargs="+", metavar="HEX", help="frame bytes in hex (spaces, ':' or ',' allowed)"
    )
    source.add_argument("--fixture", metavar="PATH", help="a capture file")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json (one JSON document per frame)",
    )
    p.set_defaults(handler=run)


def parse_hex(parts: list[str]) -> bytes:
    """Join ``parts`` and decode them as hex (separators: whitespace, ``:``, ``,``).

    Raises:
        ValueError: a non-hex character or an odd number of digits.
    """
    digits = _SEPARATORS.sub("", "".join(parts))
    if not digits:
        raise ValueError("no hex digits given")
    bad = sorted({c for c in digits if ord(c) > 127 or ord(c) not in _HEX_DIGITS})
    if bad:
        raise ValueError(f"not hex: {''.join(bad)!r}")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


class ChecksumCheck:
    """Outcome of checking a frame's checksum field without parsing anything else."""

    __slots__ = ("message", "valid", "value")

    def __init__(self, valid: bool, value: int | None, message: str) -> None:
        self.valid = valid
        self.value = value
        self.message = message

    def __str__(self) -> str:
        if self.valid:
            return f"valid (0x{self.value:04X})"
        return f"INVALID ({self.message})"


def check_checksum(raw: bytes) -> ChecksumCheck:
    """Check the checksum field of one frame (terminator optional), docs/protocol.md, §3.6."""
    frame = raw.rstrip(b"\r\n")
    if not frame or frame[0] != 0x20:
        return ChecksumCheck(False, None, "frame does not start with a space; no checksum field")
    if len(frame) < 6 or frame[-1] != 0x3B:
        return ChecksumCheck(False, None, "no checksum field at the end of the frame")
    field = frame[-5:-1]
    computed = checksum(frame[1:-5])
    if not _HEX_DIGITS.issuperset(field):
        return ChecksumCheck(
            False, None, f"checksum field {field!r} is not hex; computed 0x{computed:04X}"
        )
    expected = int(field, 16)
    if expected != computed:
        return ChecksumCheck(
            False, expected, f"frame says 0x{expected:04X}, computed 0x{computed:04X}"
        )
    return ChecksumCheck(True, expected, "")


def _report(raw: bytes, title: str) -> list[str]:
    lines = [f"{title} {raw!r}", f"  checksum: {check_checksum(raw)}"]
    try:
        frame = parse_frame(raw, received_at=datetime.now(UTC), monotonic_ns=0)
    except ServomexError as exc:
        lines.append(f"  parse error: {exc.message}")
        return lines
    clock = frame.analyser.clock.isoformat() if frame.analyser.clock is not None else "unset"
    lines += [
        f"  protocol: {frame.protocol.value}",
        f"  analyser: clock={clock} fault={frame.analyser.fault} "
        f"maintenance={frame.analyser.maintenance}",
        f"  channels ({len(frame.readings)}):",
        *(format_reading_line(r, indent=4) for r in frame.readings),
    ]
    return lines


def _document(raw: bytes, index: int) -> dict[str, Any]:
    check = check_checksum(raw)
    doc: dict[str, Any] = {
        "index": index,
        "raw": raw.decode("latin-1"),
        "checksum": {
            "valid": check.valid,
            "value": None if check.value is None else f"0x{check.value:04X}",
            "error": None if check.valid else check.message,
        },
    }
    frame: Frame | None = None
    try:
        frame = parse_frame(raw, received_at=datetime.now(UTC), monotonic_ns=0)
    except ServomexError as exc:
        doc["error"] = exc.message
    if frame is not None:
        body = frame_json(frame)
        del body["received_at"], body["requested_at"], body["latency_s"]
        doc.update(error=None, **body)
    return doc


def run(args: argparse.Namespace) -> int:
    """Handler of ``servomex decode``."""
    if args.hex is not None:
        try:
            data = parse_hex(args.hex)
        except ValueError as exc:
            print(f"error: --hex: {exc}", file=sys.stderr)
            return 2
        return _decode(data, args)
    if args.fixture is not None:

        async def from_fixture(args: argparse.Namespace) -> int:
            return _decode(b"".join(load_fixture(args.fixture)), args)

        return run_async(from_fixture, args)
    if sys.stdin is None or sys.stdin.isatty():
        print(
            "error: give --hex HEX…, --fixture PATH or pipe a capture into stdin",
            file=sys.stderr,
        )
        return 2
    return _decode(sys.stdin.buffer.read(), args)


def _decode(data: bytes, args: argparse.Namespace) -> int:
    frames = split_frames(data)
    if args.format == "json":
        for i, raw in enumerate(frames, start=1):
            emit_json(_document(raw, i))
        return 0
    if not frames:
        print("no frames found")
        return 0
    reports = []
    for i, raw in enumerate(frames, start=1):
        title = "frame:" if len(frames) == 1 else f"frame {i}:"
        reports.append("\n".join(_report(raw, title)))
    print("\n\n".join(reports), flush=True)
    return 0
