"""The incremental splitter for continuous streams (protocol.md §3.7)."""

from __future__ import annotations

import random

import pytest

import servomexlib
from helpers import (
    IDLE_CAPTURE,
    LIVE_CAPTURE,
    WORKED_FRAME,
    capture_frames,
    decode_frames,
    parse,
    split,
)
from servomexlib.devices.models import Frame
from servomexlib.errors import ServomexProtocolError
from servomexlib.wire.continuous import MAX_SEGMENT, FrameSplitter, frame_length, split_frames

REAL = capture_frames(IDLE_CAPTURE) + capture_frames(LIVE_CAPTURE)
WORKED = WORKED_FRAME[:-2]


def feed_all(splitter: FrameSplitter, data: bytes, chunk: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out += splitter.feed(data[i : i + chunk])
        assert splitter.buffered <= splitter.max_segment
    return out


@pytest.mark.parametrize(
    "terminators",
    [
        [b"\r\n"] * 3,
        [b"\n"] * 3,
        [b"\r"] * 3,
        [b"\r\n", b"\n", b"\r"],
        [b"\r", b"\r\n", b"\n"],
        [b"\n\r", b"\r\r", b"\n\n"],
    ],
    ids=["crlf", "lf", "cr", "mixed1", "mixed2", "doubled"],
)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 205, 10_000])
def test_terminators(terminators: list[bytes], chunk: int) -> None:
    frames = REAL[:3]
    data = b"".join(f + t for f, t in zip(frames, terminators, strict=True))
    splitter = FrameSplitter()
    assert feed_all(splitter, data, chunk) + splitter.flush() == frames
    assert splitter.stats().segments == 3
    assert splitter.stats().recovered == 0


def test_blank_and_space_only_lines_are_dropped() -> None:
    data = b"\n\r\n   \r\n" + REAL[0] + b"\n \n\r\r\n\n" + REAL[1] + b"\r\n     \r"
    splitter = FrameSplitter()
    assert splitter.feed(data) == [REAL[0], REAL[1]]
    assert splitter.flush() == []
    stats = splitter.stats()
    assert stats.segments == 2
    # Only the spaces of the space-only lines were content, and they are counted as garbage.
    assert stats.garbage_bytes == 3 + 1 + 5
    assert split_frames(b"\n\n  \r\n") == []


def test_non_frame_lines_are_handed_to_the_parser() -> None:
    data = b"hello\n" + REAL[0] + b"\nworld;;\r\n"
    segments = split(data, None)
    assert segments == [b"hello", REAL[0], b"world;;"]
    with pytest.raises(ServomexProtocolError):
        parse(segments[0])


def test_frame_glued_to_noise_is_recovered() -> None:
    noise_before, noise_after = b"\x00\xff junk ;05;", b"\x7f;2A1D;tail"
    splitter = FrameSplitter()
    out = splitter.feed(noise_before + REAL[0] + noise_after + b"\n" + REAL[1] + b"\n")
    assert out == [REAL[0], REAL[1]]
    stats = splitter.stats()
    assert stats.recovered == 1
    assert stats.garbage_bytes == len(noise_before) + len(noise_after)


def test_two_frames_on_one_line_give_the_first() -> None:
    # Without a terminator between them only one frame can be cut out of the line.
    out = split(REAL[0] + REAL[1] + b"\n", None)
    assert out == [REAL[0]]


def test_bounded_buffer_and_overflow() -> None:
    splitter = FrameSplitter()
    assert splitter.max_segment == MAX_SEGMENT
    junk = bytes(range(0x20, 0x7F)) * 100  # no CR/LF, 9500 bytes
    for i in range(0, len(junk), 100):
        assert splitter.feed(junk[i : i + 100]) == []
        assert splitter.buffered <= MAX_SEGMENT
    stats = splitter.stats()
    assert stats.overflows == 1
    assert stats.buffered == 0
    assert stats.garbage_bytes == len(junk)
    # Bytes up to the next terminator are discarded, even a frame glued to the junk.
    assert splitter.feed(REAL[0] + b"\n") == []
    assert splitter.stats().garbage_bytes == len(junk) + len(REAL[0])
    # Then it is back in step.
    assert splitter.feed(REAL[1] + b"\r\n" + REAL[2]) == [REAL[1]]
    assert splitter.flush() == [REAL[2]]
    assert splitter.stats().overflows == 1


def test_overflow_exactly_at_the_bound() -> None:
    splitter = FrameSplitter(max_segment=frame_length(5))
    at_bound = b"x" * frame_length(5)
    assert splitter.feed(at_bound) == []
    assert splitter.buffered == frame_length(5)
    assert splitter.feed(b"\n") == [at_bound]
    assert splitter.feed(at_bound + b"y") == []
    assert splitter.buffered == 0
    assert splitter.stats().overflows == 1
    assert splitter.feed(b"\n" + REAL[0] + b"\n") == [REAL[0]]


def test_max_segment_minimum() -> None:
    FrameSplitter(max_segment=frame_length(1))
    with pytest.raises(ValueError, match="max_segment"):
        FrameSplitter(max_segment=frame_length(1) - 1)


def test_flush() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(REAL[0][:100]) == []
    assert splitter.buffered == 100
    assert splitter.feed(REAL[0][100:]) == []
    assert splitter.flush() == [REAL[0]]
    assert splitter.buffered == 0
    assert splitter.flush() == []
    # Flushing while discarding an overflowed line yields nothing.
    splitter.feed(b"z" * (MAX_SEGMENT + 1))
    assert splitter.flush() == []
    assert splitter.feed(REAL[1] + b"\n") == [REAL[1]]
    # A pending space-only fragment is dropped.
    splitter.feed(b"   ")
    assert splitter.flush() == []


def test_reset() -> None:
    splitter = FrameSplitter()
    splitter.feed(b"partial frame")
    splitter.reset()
    assert splitter.buffered == 0
    assert splitter.feed(REAL[0] + b"\n") == [REAL[0]]


def test_split_frames_helpers() -> None:
    data = b"".join(f + b"\r\n" for f in REAL)
    assert split_frames(data) == REAL
    assert servomexlib.split_frames(data) == REAL
    assert split_frames(REAL[0]) == [REAL[0]]  # no terminator at all
    assert split_frames(b"") == []


def test_one_mebibyte_of_noise_then_the_twelve_real_frames(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(20201006)
    noise = rng.randbytes(1 << 20)
    data = noise + b"".join(f + b"\n" for f in REAL)
    splitter = FrameSplitter()
    segments: list[bytes] = []
    chunk = 4096
    max_seen = 0
    for i in range(0, len(data), chunk):
        segments += splitter.feed(data[i : i + chunk])
        max_seen = max(max_seen, splitter.buffered)
        assert splitter.buffered <= splitter.max_segment
    segments += splitter.flush()
    frames: list[Frame] = []
    rejected_bytes = 0
    for segment in segments:
        try:
            frames.append(parse(segment))
        except ServomexProtocolError:
            rejected_bytes += len(segment)
    assert [f.raw for f in frames] == REAL
    assert frames == [parse(f) for f in REAL]
    stats = splitter.stats()
    dropped = stats.garbage_bytes + rejected_bytes
    assert stats.garbage_bytes > 0
    assert dropped > 0
    # Every noise byte is accounted for: dropped by the splitter, rejected by the parser, or a
    # terminator (the splitter consumes CR/LF without counting them).
    terminators = noise.count(b"\r") + noise.count(b"\n")
    assert dropped + terminators >= len(noise)
    with capsys.disabled():
        print(
            f"\n1 MiB noise + 12 frames: {len(frames)} frames, splitter garbage_bytes="
            f"{stats.garbage_bytes}, overflows={stats.overflows}, recovered={stats.recovered}, "
            f"segments={stats.segments}, parser-rejected bytes={rejected_bytes}, "
            f"max buffered={max_seen}/{splitter.max_segment}"
        )


def test_noise_with_few_terminators_overflows_but_stays_bounded() -> None:
    rng = random.Random(7)
    # Printable noise without CR/LF except rarely: many overflows.
    noise = bytes(rng.choice(b"0123456789;:- ABCDEF|") for _ in range(200_000))
    noise = noise[:100_000] + b"\n" + noise[100_000:]
    data = noise + b"\n" + b"".join(f + b"\r\n" for f in REAL)
    splitter = FrameSplitter()
    segments = feed_all(splitter, data, 997) + splitter.flush()
    assert decode_frames(b"\n".join(segments)) == [parse(f) for f in REAL]
    assert splitter.stats().overflows >= 2
    assert splitter.stats().garbage_bytes >= len(noise) - 2 * MAX_SEGMENT
