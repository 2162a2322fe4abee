"""The pure parts of the Modbus line, without I/O: reply times, turnarounds, the learned silence,
fence payloads and reply sizes (docs/protocol.md §9.1, §9.3, §9.4), the continuous stamping
rules (§9.6) and the planner's memo (§10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servomexlib.clients.continuous_stamps import (
    LineRateCheck,
    begins_like_a_frame,
    segment_afters,
    segment_stamps,
)
from servomexlib.clients.modbus_fence import RESERVED_PAYLOADS, PayloadSource
from servomexlib.clients.modbus_learning import (
    LineReplyTimes,
    ReplyTimes,
    SilenceLearner,
    TurnaroundRecord,
    exception_chars,
    reply_chars,
)
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.planner import ReadPlanner, WireModel

RTU, ASCII = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII


def test_no_allowance_until_eight_replies_then_p99_plus_margin_with_a_floor() -> None:
    times = ReplyTimes()
    for _ in range(7):
        times.add(0.020)
    assert times.allowance() is None  # the open-time timeout is used
    times.add(0.020)
    assert times.allowance() == pytest.approx(0.05)  # 20 ms + 20 ms margin < the 50 ms floor
    for _ in range(64):
        times.add(0.080)  # a slower slave: the window forgets the fast replies
    assert times.allowance() == pytest.approx(0.080 + 0.040)  # margin: half the p99
    assert times.percentile(0.5) == pytest.approx(0.080)
    assert len(times) == 64


def test_a_late_reply_doubles_the_wait_and_the_boost_fades() -> None:
    times = ReplyTimes()
    for _ in range(8):
        times.add(0.010)
    assert times.boost_after_late_reply() == pytest.approx(0.1)
    assert times.allowance() == pytest.approx(0.1)
    times.add(0.010)
    assert times.allowance() == pytest.approx(0.1 * 0.95)
    assert times.boosts == 1


def test_line_reply_times_learn_the_excess_and_boost_only_watched_slaves() -> None:
    line = LineReplyTimes(char_time=0.001)
    for _ in range(8):
        line.learn(3, elapsed=0.040, request_chars=8, reply_chars=12)  # 20 ms on the wire
    assert line.of(3).percentile(0.5) == pytest.approx(0.020)
    assert line.learned_wait(3, 8, 12) == pytest.approx(0.020 + 0.050)
    assert line.learned_wait(4, 8, 12) is None
    line.watch(3)
    line.watch(4)
    line.unwatch(4)
    ((address, boost),) = line.late_bytes()
    assert address == 3
    assert boost == pytest.approx(0.1)
    assert line.late_bytes() == []  # the watch ends with the evidence


def test_turnarounds_judge_a_reply_too_early_by_one_character() -> None:
    record = TurnaroundRecord()
    assert not record.is_too_early(0.001, 0.0005)  # nothing measured yet
    record.learn(0.020)
    record.learn(0.030)
    record.learn(None)
    assert (record.fastest, record.slowest) == (0.020, 0.030)
    assert record.is_too_early(0.0194, 0.0005)
    assert not record.is_too_early(0.0196, 0.0005)


def feed(learner: SilenceLearner, answered: bool, extra: float = 0.0) -> bool:
    return learner.observe(learner.silence_s + extra, answered)


def test_the_silence_rises_on_tight_losses_only_when_loose_attempts_get_through() -> None:
    learner = SilenceLearner(0.05)
    for _ in range(8):
        assert not feed(learner, False)
    for _ in range(4):
        feed(learner, False, extra=0.1)  # loose attempts fail as often: random loss
    assert not feed(learner, False)
    assert learner.silence_s == 0.05
    for _ in range(8):
        feed(learner, True, extra=0.1)  # now loose attempts are answered
    assert feed(learner, False)
    assert learner.silence_s == pytest.approx(0.06)
    assert learner.raises == 1
    for _ in range(200):
        feed(learner, True)
    assert learner.silence_s == pytest.approx(0.059)


def test_reply_sizes_per_framing() -> None:
    fc04 = bytes((4, 0, 0, 0, 65))
    fc02 = bytes((2, 0, 0, 0, 80))
    assert reply_chars(RTU, fc04) == 1 + 2 + 130 + 2
    assert reply_chars(RTU, fc02) == 1 + 2 + 10 + 2
    assert reply_chars(ASCII, fc02) == 1 + 2 * (1 + 12 + 1) + 2
    assert reply_chars(RTU, bytes((5, 0, 8, 0xFF, 0))) == 8  # FC05 echoes its request
    assert (exception_chars(RTU), exception_chars(ASCII)) == (5, 11)


def test_fence_payloads_are_fresh_and_never_reserved() -> None:
    source = PayloadSource(start=0xABCD - 0x9E37)  # the next one would be AB CD
    first = source.fresh()
    assert first not in RESERVED_PAYLOADS
    seen = {first} | {source.fresh() for _ in range(63)}
    assert len(seen) == 64  # none repeats within the remembered window
    source = PayloadSource(start=0)
    source.note(((0x9E37) & 0xFFFF).to_bytes(2, "big"))  # a loopback just used it
    assert source.fresh() == ((2 * 0x9E37) & 0xFFFF).to_bytes(2, "big")


def test_continuous_stamps_go_back_by_the_wire_time_of_later_bytes() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    afters = segment_afters([b"a" * 10, b"b" * 5], buffered=3)
    assert afters == [3 + 6, 3]
    stamps = segment_stamps(afters, 20, at, 1_000_000_000, 5_000_000, char_time=0.001)
    assert stamps[0] == (at - timedelta(milliseconds=5), 995_000_000)  # capped: previous read
    assert stamps[1] == (at - timedelta(milliseconds=3), 997_000_000)
    assert segment_stamps(afters, 20, at, 7, 5, char_time=None) == [(at, 7), (at, 7)]


def test_the_line_rate_check_marks_what_was_waiting_at_the_start() -> None:
    check = LineRateCheck(char_time=0.001)
    assert not check.count(100, 0.0)  # no start yet: no check
    check = LineRateCheck(char_time=0.5)  # binary fractions: exact arithmetic
    check.start = 10.0
    assert check.count(500, 60.0)  # 500 bytes in 50 s: at most 100 + 16 were new
    assert check.stale_until == 500 - 116
    assert check.is_old(after=200, length=100)  # began at offset 200 < 384
    assert not check.is_old(after=0, length=100)  # began at offset 400
    assert check.reading_ahead(60.0)
    assert not check.reading_ahead(260.0)


def test_begins_like_a_frame_needs_the_header_separators() -> None:
    header = bytearray(b" " + b"x" * 60)
    for i in (9, 18, 21, 30, 33):
        header[i] = ord(";")
    assert begins_like_a_frame(bytes(header))
    assert not begins_like_a_frame(bytes(header[1:]))


def test_the_planner_memoises_plans_until_what_they_depend_on_changes() -> None:
    planner = ReadPlanner(WireModel(baudrate=19200))
    channels = (ChannelId.I1, ChannelId.I2, ChannelId.E1)
    first = planner.plan(channels, value_only=frozenset(channels))
    assert planner.plan(channels, value_only=frozenset(channels)) is first
    assert planner.plan(channels) != first  # another question, another plan
    planner.model = planner.model.with_silence(0.2)
    second = planner.plan(channels, value_only=frozenset(channels))
    assert second is not first
    assert second[0].cost_s > first[0].cost_s  # costed with the new silence
    assert planner.learn_rejection(second[0])  # exception 02 on a gap-bridging read
    third = planner.plan(channels, value_only=frozenset(channels))
    assert len(third) > len(second)  # re-planned under the learned policy
