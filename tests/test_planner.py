"""The wire-cost read planner: protocol.md §9.3 table, §5 rows, learning, properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.errors import ServomexValidationError
from servomexlib.planner import (
    PlannedRead,
    ReadFunction,
    ReadPlanner,
    SpanPolicy,
    WireModel,
)
from servomexlib.settings import Parity, SerialSettings, StopBits
from servomexlib.wire.channels import spec_for

RTU, ASCII = ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII
FC02, FC04 = ReadFunction.READ_DISCRETE_INPUTS, ReadFunction.READ_INPUT_REGISTERS
I1, I2, I3, I4 = ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.I4
E1, E2 = ChannelId.E1, ChannelId.E2
FIVE = (I1, I2, I3, E1, E2)
THREE = (I1, E1, E2)
SPLIT5 = ((0, 21), (56, 14))
SPLIT3 = ((0, 7), (56, 14))
BROAD = ((0, 70),)


def spans(reads: tuple[PlannedRead, ...] | list[PlannedRead]) -> tuple[tuple[int, int], ...]:
    return tuple((r.address, r.count) for r in reads)


def fc04(reads: tuple[PlannedRead, ...]) -> list[PlannedRead]:
    return [r for r in reads if r.function_code == FC04]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# protocol.md §9.3, every cell: channels, framing, baud, chosen FC04 reads, cost, "vs" broad cost.
TABLE_9_3 = [
    (FIVE, RTU, 19200, BROAD, 149.7, None),
    (FIVE, RTU, 9600, BROAD, 229.4, None),
    (FIVE, RTU, 4800, SPLIT5, 340.0, 388.8),
    (FIVE, ASCII, 19200, BROAD, 230.4, None),
    (FIVE, ASCII, 9600, SPLIT5, 344.2, 390.8),
    (FIVE, ASCII, 4800, SPLIT5, 548.3, 711.7),
    (THREE, RTU, 19200, BROAD, 149.7, None),
    (THREE, RTU, 9600, SPLIT3, 210.8, 229.4),
    (THREE, RTU, 4800, SPLIT3, 281.7, 388.8),
    (THREE, ASCII, 19200, SPLIT3, 212.9, 230.4),
    (THREE, ASCII, 9600, SPLIT3, 285.8, 390.8),
    (THREE, ASCII, 4800, SPLIT3, 431.7, 711.7),
]


@pytest.mark.parametrize(("channels", "framing", "baud", "reads", "cost_ms", "vs_ms"), TABLE_9_3)
def test_table_9_3(
    channels: tuple[ChannelId, ...],
    framing: ProtocolKind,
    baud: int,
    reads: tuple[tuple[int, int], ...],
    cost_ms: float,
    vs_ms: float | None,
) -> None:
    model = WireModel(baudrate=baud, framing=framing)
    planner = ReadPlanner(model)
    chosen = fc04(planner.plan(channels))
    assert spans(chosen) == reads
    assert ms(planner.cost(chosen)) == cost_ms
    broad = model.transaction_cost(FC04, 70)
    if vs_ms is None:
        assert ms(broad) == cost_ms
    else:
        assert ms(broad) == vs_ms
        assert planner.cost(chosen) < broad


def test_table_9_3_gap_remark() -> None:
    """At 19200 RTU the 56-register gap costs 58 ms against 77 ms for an extra transaction."""
    model = WireModel()
    gap = 56 * 2 * model.char_time_s
    extra = model.silence_s + model.turnaround_s + (8 + 5) * model.char_time_s
    assert round(gap * 1000) == 58
    assert round(extra * 1000) == 77


def test_wire_model_defaults_and_chars() -> None:
    model = WireModel()
    assert (model.baudrate, model.framing, model.bits_per_char) == (19200, RTU, 10)
    assert (model.silence_s, model.turnaround_s) == (0.05, 0.020)
    assert model.char_time_s == pytest.approx(10 / 19200)
    assert model.request_chars() == 8
    assert model.response_chars(FC04, 7) == 5 + 14
    assert model.response_chars(FC02, 80) == 5 + 10
    assert model.response_chars(FC02, 81) == 5 + 11
    ascii_model = WireModel(framing=ASCII)
    assert ascii_model.request_chars() == 17
    assert ascii_model.response_chars(FC04, 70) == 11 + 280
    assert ascii_model.response_chars(FC02, 16) == 11 + 4
    with pytest.raises(ServomexValidationError):
        model.response_chars(3, 1)
    with pytest.raises(ServomexValidationError):
        model.response_chars(FC04, 0)


def test_wire_model_from_settings() -> None:
    settings_ = SerialSettings(
        "/dev/null", baudrate=9600, parity=Parity.EVEN, stopbits=StopBits.ONE
    )
    model = WireModel.from_settings(settings_, "modbus_ascii")
    assert model == WireModel(baudrate=9600, framing=ASCII, bits_per_char=11)
    assert model.char_time_s == pytest.approx(11 / 9600)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"framing": ProtocolKind.CONTINUOUS_ASCII},
        {"framing": ProtocolKind.AUTO},
        {"framing": "bogus"},
        {"baudrate": 0},
        {"baudrate": 9600.0},
        {"bits_per_char": 0},
        {"silence_s": -0.1},
        {"turnaround_s": math.nan},
    ],
)
def test_wire_model_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ServomexValidationError):
        WireModel(**kwargs)  # type: ignore[arg-type]


def test_wire_model_is_frozen() -> None:
    model = WireModel()
    with pytest.raises(AttributeError):
        model.baudrate = 9600  # type: ignore[misc]


# protocol.md §5, the rows that come from the planner (19200 baud RTU, default model).


def test_section5_all_slots() -> None:
    reads = ReadPlanner().plan(list(ChannelId))
    assert [(r.function_code, r.address, r.count) for r in reads] == [
        (4, 0, 70),
        (2, 0, 80),
        (2, 1000, 16),
    ]
    assert reads[0].channels == tuple(ChannelId)
    assert reads[1].channels == tuple(ChannelId)
    assert reads[2].channels == ()
    assert reads[2].is_analyser


def test_section5_five_channels_broad() -> None:
    reads = ReadPlanner().plan([E2, I1, "I2", I3, E1, I1])  # any order, duplicates, strings
    assert [(r.function_code, r.address, r.count) for r in reads] == [
        (4, 0, 70),
        (2, 0, 80),
        (2, 1000, 16),
    ]
    assert reads[0].channels == FIVE
    assert reads[0].bridges_gap
    assert reads[0].offset_of(E1) == 56


def test_section5_only_i1_to_i3() -> None:
    reads = ReadPlanner().plan([I1, I2, I3])
    assert [(r.function_code, r.address, r.count) for r in reads] == [
        (4, 0, 21),
        (2, 0, 24),
        (2, 1000, 16),
    ]
    assert not reads[0].bridges_gap


def test_section5_after_gap_rejections() -> None:
    planner = ReadPlanner()
    first = planner.plan(FIVE)
    assert planner.learn_rejection(first[0]) is True  # FC04 (0, 70) bridged a gap
    assert planner.policy(FC04) is SpanPolicy.GAP_FREE
    assert planner.policy(FC02) is SpanPolicy.COST
    second = planner.plan(FIVE)
    assert spans(second) == ((0, 21), (56, 14), (0, 80), (1000, 16))
    assert planner.learn_rejection(second[2]) is True  # FC02 (0, 80) bridged a gap
    third = planner.plan(FIVE)
    assert [(r.function_code, r.address, r.count) for r in third] == [
        (4, 0, 21),
        (4, 56, 14),
        (2, 0, 24),
        (2, 64, 16),
        (2, 1000, 16),
    ]
    assert third[0].channels == (I1, I2, I3)
    assert third[3].channels == (E1, E2)


def test_section5_single_operations() -> None:
    planner = ReadPlanner()
    assert spans(planner.plan([I1], include_analyser=False)) == ((0, 7), (0, 8))
    assert spans(planner.plan([E2], include_analyser=False)) == ((63, 7), (72, 8))
    assert spans(planner.plan([])) == ((1000, 16),)
    assert planner.plan([], include_analyser=False) == ()


def test_learning_ladder_and_unreadable() -> None:
    planner = ReadPlanner(WireModel(baudrate=4800))
    reads = fc04(planner.plan(FIVE))
    assert spans(reads) == SPLIT5
    # A gap-free multi-block read rejected → per-block straight away (no gap to blame).
    assert planner.learn_rejection(reads[0]) is True
    assert planner.policy(4) is SpanPolicy.PER_BLOCK
    assert spans(fc04(planner.plan(FIVE))) == ((0, 7), (7, 7), (14, 7), (56, 7), (63, 7))
    # Learned state only escalates: a gap-bridging rejection now teaches nothing.
    assert planner.learn_rejection(PlannedRead(4, 0, 70, FIVE, 0.0)) is False
    # A single block rejected → that slot is unreadable, omitted from both spaces.
    single = fc04(planner.plan(FIVE))[1]
    assert single.channels == (I2,)
    assert planner.learn_rejection(single) is True
    assert planner.unreadable == frozenset({I2})
    assert planner.learn_rejection(single) is False
    after = planner.plan(FIVE)
    assert all(I2 not in r.channels for r in after)
    fc02 = [r for r in after if r.function_code == FC02]
    assert spans(fc02) == ((0, 80), (1000, 16))  # FC02 learned nothing: still one broad read
    assert fc02[0].channels == (I1, I3, E1, E2)
    # Nothing to learn from the analyser block or from other function codes.
    assert planner.learn_rejection(planner.analyser_read()) is False
    assert planner.learn_rejection(PlannedRead(1, 0, 1, (), 0.0)) is False
    planner.reset()
    assert planner.policy(FC04) is SpanPolicy.COST
    assert planner.unreadable == frozenset()


def test_policy_rejects_other_codes() -> None:
    with pytest.raises(ServomexValidationError):
        ReadPlanner().policy(3)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_registers": 6}, {"max_registers": 126}, {"max_discretes": 15}, {"max_discretes": 2001}],
)
def test_planner_rejects_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ServomexValidationError):
        ReadPlanner(WireModel(), **kwargs)


def test_planner_rejects_unknown_channel() -> None:
    with pytest.raises(ServomexValidationError):
        ReadPlanner().plan(["X9"])


def test_limits_split_reads() -> None:
    planner = ReadPlanner(max_registers=21, max_discretes=16)
    reads = planner.plan(list(ChannelId), include_analyser=True)
    assert all(r.count <= 21 for r in reads if r.function_code == FC04)
    assert all(r.count <= 16 for r in reads if r.function_code == FC02)
    # 70 registers need at least 4 reads of <= 21; every such partition costs the same.
    assert len(fc04(reads)) == 4
    assert sum(r.count for r in fc04(reads)) == 70


def test_repr_shows_state() -> None:
    planner = ReadPlanner()
    planner.learn_rejection(planner.plan(FIVE)[0])
    assert "fc04=gap_free" in repr(planner)


# --- properties -----------------------------------------------------------------------


def _block(fc: int, channel: ChannelId) -> tuple[int, int]:
    spec = spec_for(channel)
    if fc == FC04:
        return spec.value_register, spec.register_end
    return spec.status_discrete, spec.discrete_end


def _brute_force_cost(model: WireModel, fc: int, channels: list[ChannelId], limit: int) -> float:
    """Cheapest cost over every partition of the sorted blocks into consecutive reads."""
    blocks = sorted(_block(fc, c) for c in channels)
    n = len(blocks)
    best = math.inf
    for cuts in itertools.product((False, True), repeat=n - 1):
        total, start = 0.0, 0
        ok = True
        for i in range(n):
            if i == n - 1 or cuts[i]:
                span = blocks[i][1] - blocks[start][0]
                if span > limit:
                    ok = False
                    break
                total += model.transaction_cost(fc, span)
                start = i + 1
        if ok:
            best = min(best, total)
    return best


models = st.builds(
    WireModel,
    baudrate=st.sampled_from([1200, 2400, 4800, 9600, 19200, 38400, 115200]),
    framing=st.sampled_from([RTU, ASCII]),
    bits_per_char=st.sampled_from([10, 11]),
    silence_s=st.sampled_from([0.0, 0.05]),
    turnaround_s=st.sampled_from([0.0, 0.02, 0.1]),
)
subsets = st.lists(st.sampled_from(list(ChannelId)), min_size=1, max_size=10, unique=True)


@settings(max_examples=300, deadline=None)
@given(
    model=models,
    channels=subsets,
    max_registers=st.integers(7, 125),
    max_discretes=st.integers(16, 2000),
)
def test_plan_properties(
    model: WireModel, channels: list[ChannelId], max_registers: int, max_discretes: int
) -> None:
    planner = ReadPlanner(model, max_registers=max_registers, max_discretes=max_discretes)
    reads = planner.plan(channels)
    assert reads[-1] == planner.analyser_read()
    limits = {FC04: max_registers, FC02: max_discretes}
    seen_fcs = [r.function_code for r in reads[:-1]]
    assert seen_fcs == sorted(seen_fcs, reverse=True)  # FC04 reads first, then FC02
    for fc in (FC04, FC02):
        space = [r for r in reads[:-1] if r.function_code == fc]
        covered = [c for r in space for c in r.channels]
        assert sorted(covered) == sorted(channels)  # each channel exactly once
        for a, b in itertools.pairwise(space):
            assert a.end <= b.address  # ordered, no overlap
        for r in space:
            assert 0 < r.count <= limits[fc]
            start, end = _block(fc, r.channels[0])[0], _block(fc, r.channels[-1])[1]
            assert (r.address, r.end) == (start, end)  # spans exactly its blocks
            assert r.cost_s == pytest.approx(model.transaction_cost(fc, r.count))
        chosen = planner.cost(space)
        per_block = sum(model.transaction_cost(fc, r.block_size) for r in space for _ in r.channels)
        assert chosen <= per_block + 1e-9
        lo = min(_block(fc, c)[0] for c in channels)
        hi = max(_block(fc, c)[1] for c in channels)
        if hi - lo <= limits[fc]:
            assert chosen <= model.transaction_cost(fc, hi - lo) + 1e-9
        assert chosen == pytest.approx(_brute_force_cost(model, fc, channels, limits[fc]))


@settings(max_examples=100, deadline=None)
@given(model=models, channels=subsets)
def test_learned_policies_are_respected(model: WireModel, channels: list[ChannelId]) -> None:
    planner = ReadPlanner(model)
    for fc in (FC04, FC02):
        for r in planner.plan(channels):
            if r.function_code == fc and r.bridges_gap:
                assert planner.learn_rejection(r)
                break
    for r in planner.plan(channels):
        assert not r.bridges_gap
    for fc in (FC04, FC02):
        for r in planner.plan(channels):
            if r.function_code == fc and len(r.channels) > 1:
                assert planner.learn_rejection(r)
                assert planner.policy(fc) is SpanPolicy.PER_BLOCK
                break
    for r in planner.plan(channels):
        assert len(r.channels) <= 1


def test_discretes_always_one_read() -> None:
    """protocol.md §9.3: discrete gaps cost at most a byte per channel → one FC02 read."""
    for framing, baud in itertools.product((RTU, ASCII), (2400, 4800, 9600, 19200)):
        planner = ReadPlanner(WireModel(baudrate=baud, framing=framing))
        for size in range(1, 11):
            for combo in itertools.combinations(list(ChannelId), size):
                reads = [
                    r for r in planner.plan(combo, include_analyser=False) if r.function_code == 2
                ]
                assert len(reads) == 1


# --- value-only spans (issue 12 item 1) --------------------------------------------------


def _span(channel: ChannelId, value_only: bool) -> tuple[int, int]:
    spec = spec_for(channel)
    return spec.value_register, spec.value_register + (2 if value_only else 7)


def _brute_force_spans(
    model: WireModel, spans: list[tuple[int, int]], limit: int, *, gap_free: bool = False
) -> float:
    """Cheapest cost over every partition of the sorted FC04 spans into consecutive reads;
    ``gap_free``: a read may only join spans of adjacent slots (stride 7)."""
    spans = sorted(spans)
    n = len(spans)
    best = math.inf
    for cuts in itertools.product((False, True), repeat=n - 1):
        total, start, ok = 0.0, 0, True
        for i in range(n):
            if i < n - 1 and not cuts[i]:
                if gap_free and spans[i + 1][0] - spans[i][0] != 7:
                    ok = False
                    break
                continue
            count = spans[i][1] - spans[start][0]
            if count > limit:
                ok = False
                break
            total += model.transaction_cost(FC04, count)
            start = i + 1
        if ok:
            best = min(best, total)
    return best


def test_value_only_sweep_drops_the_2400_baud_poll_from_134_to_114_bytes() -> None:
    """The issue's figure: I1 I2 I3 E1 E2 at 2400 baud RTU, whole blocks vs value registers."""
    model = WireModel(baudrate=2400, framing=RTU)
    planner = ReadPlanner(model)

    def chars(reads: tuple[PlannedRead, ...]) -> int:
        return sum(
            model.request_chars() + model.response_chars(r.function_code, r.count) for r in reads
        )

    full = planner.plan(FIVE)
    values = planner.plan(FIVE, value_only=True)
    assert spans(fc04(full)) == SPLIT5
    assert spans(fc04(values)) == ((0, 16), (56, 9))
    assert (chars(full), chars(values)) == (134, 114)
    assert planner.cost(values) < planner.cost(full)
    assert all(r.value_only == frozenset(r.channels) for r in fc04(values))
    assert all(r.value_only == frozenset() for r in values if r.function_code == FC02)


@pytest.mark.parametrize(("framing", "baud"), [(RTU, 19200), (RTU, 9600), (ASCII, 19200)])
def test_value_only_broad_read_at_higher_rates(framing: ProtocolKind, baud: int) -> None:
    planner = ReadPlanner(WireModel(baudrate=baud, framing=framing))
    reads = planner.plan(FIVE, value_only=True)
    assert [(r.function_code, r.address, r.count) for r in reads] == [
        (FC04, 0, 65),
        (FC02, 0, 80),
        (FC02, 1000, 16),
    ]
    assert reads[0].bridges_gap  # over I4-D4, slots nobody asked for


def test_value_only_keeps_the_old_signature_and_mixes_spans() -> None:
    planner = ReadPlanner(WireModel(baudrate=2400))
    assert planner.plan(FIVE) == planner.plan(FIVE, value_only=False)
    assert planner.plan(FIVE, value_only=True) == planner.plan(FIVE, value_only=list(FIVE))
    assert planner.plan(FIVE, value_only=["I1", "E2", "D4"]) == planner.plan(
        FIVE, value_only=[I1, E2]
    )  # strings accepted; channels not requested ignored
    mixed = fc04(planner.plan(FIVE, value_only=[I1, I2]))
    # I3 is read whole (first read of it), I1 and I2 as values: (0, 21) covers them all.
    assert spans(mixed) == ((0, 21), (56, 14))
    assert mixed[0].value_only == {I1, I2}
    assert [mixed[0].items_of(c) for c in mixed[0].channels] == [2, 2, 7]
    assert not mixed[0].bridges_gap
    with pytest.raises(ServomexValidationError):
        planner.plan(FIVE, value_only=["X9"])


def test_value_only_gap_means_an_unrequested_slot() -> None:
    """Passing over a requested slot's name and unit is no gap; passing over a slot that was
    not asked for is, so GAP_FREE keeps its meaning with value-only spans."""
    planner = ReadPlanner(WireModel(baudrate=19200))
    (broad,) = fc04(planner.plan(FIVE, value_only=True))
    assert planner.learn_rejection(broad)
    assert planner.policy(FC04) is SpanPolicy.GAP_FREE
    reads = fc04(planner.plan(FIVE, value_only=True))
    assert spans(reads) == ((0, 16), (56, 9))
    assert not any(r.bridges_gap for r in reads)
    assert planner.learn_rejection(reads[0])  # a gap-free multi-slot read refused
    assert planner.policy(FC04) is SpanPolicy.PER_BLOCK
    reads = fc04(planner.plan(FIVE, value_only=True))
    assert spans(reads) == ((0, 2), (7, 2), (14, 2), (56, 2), (63, 2))
    assert planner.learn_rejection(reads[0])
    assert planner.unreadable == {I1}


def test_model_can_follow_the_line_silence() -> None:
    planner = ReadPlanner(WireModel(baudrate=2400))
    planner.learn_rejection(fc04(planner.plan(FIVE))[0])
    model = planner.model.with_silence(0.09)
    assert planner.model.with_silence(0.05) is planner.model
    before = planner.cost(planner.plan(FIVE))
    planner.model = model
    assert planner.model.silence_s == 0.09
    assert planner.policy(FC04) is SpanPolicy.PER_BLOCK  # what was learned is kept
    reads = planner.plan(FIVE)
    assert len(reads) == 7  # five FC04 blocks, FC02 (0, 80), FC02 (1000, 16)
    assert planner.cost(reads) == pytest.approx(before + 0.04 * 7)  # 40 ms more silence each
    with pytest.raises(ServomexValidationError):
        planner.model = "19200"  # type: ignore[assignment]


values_only = st.one_of(
    st.booleans(), st.lists(st.sampled_from(list(ChannelId)), max_size=10, unique=True)
)


@settings(max_examples=300, deadline=None)
@given(
    model=models,
    channels=subsets,
    value_only=values_only,
    max_registers=st.integers(7, 125),
)
def test_value_only_plan_properties(
    model: WireModel,
    channels: list[ChannelId],
    value_only: bool | list[ChannelId],
    max_registers: int,
) -> None:
    planner = ReadPlanner(model, max_registers=max_registers)
    reads = fc04(planner.plan(channels, value_only=value_only))
    values = set(channels) if value_only is True else set(value_only or ()) & set(channels)
    covered = [c for r in reads for c in r.channels]
    assert sorted(covered) == sorted(channels)  # each requested channel exactly once
    for a, b in itertools.pairwise(reads):
        assert a.end <= b.address
    for r in reads:
        assert r.value_only == values & set(r.channels)
        assert 0 < r.count <= max_registers
        first, last = r.channels[0], r.channels[-1]
        # Spans exactly from the first span's start to the last span's end.
        assert (r.address, r.end) == (
            _span(first, first in values)[0],
            _span(last, last in values)[1],
        )
        assert r.cost_s == pytest.approx(model.transaction_cost(FC04, r.count))
        for c in r.channels:  # every requested register is inside the read
            lo, hi = _span(c, c in values)
            assert r.address <= lo
            assert hi <= r.end
            assert r.items_of(c) == hi - lo
    expected = _brute_force_spans(model, [_span(c, c in values) for c in channels], max_registers)
    assert planner.cost(reads) == pytest.approx(expected)
    # Gap-free: still optimal among the partitions that never touch an unrequested slot.
    gap_free = ReadPlanner(model, max_registers=max_registers)
    gap_free.learn_rejection(PlannedRead(FC04, 0, 70, (I1, E1), 0.0))
    assert gap_free.policy(FC04) is SpanPolicy.GAP_FREE
    reads = fc04(gap_free.plan(channels, value_only=value_only))
    assert not any(r.bridges_gap for r in reads)
    expected = _brute_force_spans(
        model, [_span(c, c in values) for c in channels], max_registers, gap_free=True
    )
    assert gap_free.cost(reads) == pytest.approx(expected)
