"""The declared row schema, sample_to_row, and the hand-written CSV/JSON line encoders."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import servomexlib.sinks as sinks
from servomexlib.devices.models import (
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    Reading,
    Sample,
    ValueState,
)
from servomexlib.errors import ErrorContext, ServomexChecksumError
from servomexlib.sinks import COLUMNS as LIB_COLUMNS
from servomexlib.sinks import SCHEMA, ColumnType, sample_to_row, sample_to_values
from servomexlib.sinks.csv import csv_text
from servomexlib.sinks.jsonl import json_text
from servomexlib.sinks.schema import LEGACY_COLUMNS as LIB_LEGACY_COLUMNS
from servomexlib.sinks.schema import batch_columns
from servomexlib.units import Unit
from sink_samples import COLUMNS, LEGACY_COLUMNS, expected_row, make_samples

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _reading_sample(value: float | None = 0.012, state: ValueState = ValueState.OK) -> Sample:
    reading = Reading(
        channel=ChannelId.I2,
        kind=ChannelKind.TRANSDUCER,
        name="CO",
        value=value,
        unit=Unit.PERCENT,
        status=ChannelStatus(fault=False, calibrating=True, alarms=(False, True, False, False)),
        protocol=ProtocolKind.MODBUS_RTU,
        received_at=RECEIVED,
        monotonic_ns=42,
        raw=b"\x00" * 14,
        value_state=state,
    )
    return Sample(
        device="north",
        channel=ChannelId.I2,
        reading=reading,
        protocol=ProtocolKind.MODBUS_RTU,
        monotonic_ns=42,
        received_at=RECEIVED,
        requested_at=RECEIVED,
        latency_s=0.0315,
        metadata={"ignored": True},
    )


def test_schema_declares_the_22_columns_of_the_spec_in_order() -> None:
    assert list(LIB_COLUMNS) == COLUMNS
    assert len(COLUMNS) == 22
    assert LIB_LEGACY_COLUMNS == tuple(COLUMNS[:21]) == tuple(LEGACY_COLUMNS)
    types = {c.name: c.type for c in SCHEMA}
    assert types["value"] is ColumnType.FLOAT
    assert types["latency_s"] is ColumnType.FLOAT
    assert types["monotonic_ns"] is ColumnType.INT
    for name in COLUMNS[6:15]:
        assert types[name] is ColumnType.BOOL
    for name in ("device", "channel", "kind", "name", "unit", "protocol", "received_at"):
        assert types[name] is ColumnType.TEXT
    assert [types[n] for n in ("requested_at", "error", "value_state")] == [ColumnType.TEXT] * 3
    assert all(c.nullable for c in SCHEMA if c.name == "value_state")
    assert ColumnType.BOOL.sqlite == "INTEGER"
    assert ColumnType.FLOAT.postgres == "double precision"


def test_sample_to_row_of_a_reading() -> None:
    row = sample_to_row(_reading_sample())
    assert list(row) == COLUMNS
    assert row == {
        "device": "north",
        "channel": "I2",
        "kind": "transducer",
        "name": "CO",
        "value": 0.012,
        "unit": "%",
        "ok": False,
        "fault": False,
        "maintenance": False,
        "calibrating": True,
        "warming_up": False,
        "alarm1": False,
        "alarm2": True,
        "alarm3": False,
        "alarm4": False,
        "protocol": "modbus_rtu",
        "monotonic_ns": 42,
        "received_at": "2026-01-02T03:04:05.678901+00:00",
        "requested_at": "2026-01-02T03:04:05.678901+00:00",
        "latency_s": 0.0315,
        "error": None,
        "value_state": "ok",
    }


def test_sample_to_row_of_an_error_sample() -> None:
    error = ServomexChecksumError("bad checksum", context=ErrorContext(port="/dev/ttyS0"))
    sample = Sample(
        device="d",
        channel=None,
        reading=None,
        protocol=ProtocolKind.CONTINUOUS_ASCII,
        monotonic_ns=7,
        received_at=RECEIVED,
        error=error,
    )
    row = sample_to_row(sample)
    for name in [*COLUMNS[1:15], "value_state"]:
        assert row[name] is None, name
    assert row["error"] == "bad checksum [port=/dev/ttyS0]" == str(error)
    assert row["protocol"] == "continuous"
    assert row["requested_at"] is None
    assert row["latency_s"] is None


def _good_status_sample(value: float | None, state: ValueState) -> Sample:
    reading = Reading(
        ChannelId.I1,
        ChannelKind.TRANSDUCER,
        "Oxygen",
        value,
        Unit.PERCENT,
        ChannelStatus(),
        ProtocolKind.CONTINUOUS_ASCII,
        RECEIVED,
        1,
        b"",
        state,
    )
    return Sample("d", ChannelId.I1, reading, ProtocolKind.CONTINUOUS_ASCII, 1, RECEIVED)


def test_ok_column_needs_a_good_status_and_a_value() -> None:
    # Issue 11 item 6: an over-range reading used to be stored as value empty, ok=1.
    cases = [
        (20.95, ValueState.OK, True, "ok"),
        (None, ValueState.OVER_RANGE, False, "over_range"),
        (None, ValueState.INVALID, False, "invalid"),
    ]
    for value, state, ok, text in cases:
        row = sample_to_row(_good_status_sample(value, state))
        assert (row["value"], row["ok"], row["value_state"]) == (value, ok, text)
        assert row["fault"] is False
    # The status still counts when there is a value.
    assert sample_to_row(_reading_sample())["ok"] is False  # alarm 2
    over = sample_to_row(_reading_sample(None, ValueState.OVER_RANGE))
    assert sample_to_row(_reading_sample(None, ValueState.INVALID))["value_state"] == "invalid"
    assert (over["value"], over["ok"], over["value_state"]) == (None, False, "over_range")


def test_row_values_for_a_batch_mixing_states() -> None:
    samples = [
        _good_status_sample(1.5, ValueState.OK),
        _good_status_sample(None, ValueState.OVER_RANGE),
        _good_status_sample(None, ValueState.INVALID),
    ]
    columns = dict(zip(COLUMNS, batch_columns(samples), strict=True))
    assert columns["ok"] == [True, False, False]
    assert columns["value_state"] == ["ok", "over_range", "invalid"]
    csv_lines = csv_text(batch_columns(samples)).splitlines()
    assert [line.rsplit(",", 1)[1] for line in csv_lines] == ["ok", "over_range", "invalid"]
    assert [line.split(",")[6] for line in csv_lines] == ["1", "0", "0"]
    json_rows = [json.loads(line) for line in json_text(batch_columns(samples)).splitlines()]
    assert [(r["value"], r["ok"], r["value_state"]) for r in json_rows] == [
        (1.5, True, "ok"),
        (None, False, "over_range"),
        (None, False, "invalid"),
    ]


def test_rows_hold_native_types_only() -> None:
    for sample in make_samples(500):
        for value in sample_to_row(sample).values():
            assert type(value) in (str, int, float, bool, type(None))


def test_sample_to_row_matches_the_spec_for_varied_samples() -> None:
    for sample in make_samples(3000):
        row = sample_to_row(sample)
        assert row == expected_row(sample)
        assert sample_to_values(sample) == tuple(row.values())


def test_package_exports_are_documented() -> None:
    for name in sinks.__all__:
        obj = getattr(sinks, name)
        if name in ("COLUMNS", "SCHEMA", "IDENTIFIER_RE"):
            continue
        assert getattr(obj, "__doc__", None), name


# -- the hand-written encoders equal the standard library's ----------------------------------

_text = st.one_of(st.none(), st.text(max_size=20), st.sampled_from([",", '"', "\r", "\n", " a"]))
_flag = st.one_of(st.none(), st.booleans())
_float = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def _rows(draw: st.DrawFn) -> tuple[Any, ...]:
    return (
        draw(st.text(max_size=20)),  # device
        draw(st.one_of(st.none(), st.sampled_from([c.value for c in ChannelId]))),
        draw(st.one_of(st.none(), st.sampled_from([k.value for k in ChannelKind]))),
        draw(_text),  # name
        draw(_float),  # value
        draw(st.one_of(st.none(), st.sampled_from([u.value for u in Unit]))),
        *(draw(_flag) for _ in range(9)),
        draw(st.sampled_from([p.value for p in ProtocolKind])),
        draw(st.integers(min_value=0, max_value=2**63 - 1)),
        RECEIVED.isoformat(),
        draw(st.one_of(st.none(), st.just(RECEIVED.isoformat()))),
        draw(_float),  # latency_s
        draw(_text),  # error
        draw(st.one_of(st.none(), st.sampled_from([v.value for v in ValueState]))),
    )


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


# Batches: independent rows, or copies of one row (every column then holds one repeated value,
# the encoders' constant-column path), or a mix.
_batches = st.one_of(
    st.lists(_rows(), min_size=1, max_size=6),
    st.builds(lambda row, n: [row] * n, _rows(), st.integers(1, 4)),
    st.builds(lambda row, rows: [row, *rows, row], _rows(), st.lists(_rows(), max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(_batches)
def test_csv_text_equals_the_csv_module(rows: list[tuple[Any, ...]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([int(v) if isinstance(v, bool) else v for v in row])
    assert csv_text(_columns(rows)) == buffer.getvalue()


@settings(max_examples=300, deadline=None)
@given(_batches)
def test_json_text_equals_json_dumps(rows: list[tuple[Any, ...]]) -> None:
    expected = "".join(
        json.dumps(dict(zip(COLUMNS, row, strict=True)), ensure_ascii=False) + "\n" for row in rows
    )
    assert json_text(_columns(rows)) == expected


def test_numbers_that_compare_equal_keep_their_own_text() -> None:
    # 0.0 == -0.0: a column of both is not a "repeated" column, each row keeps its sign.
    rows = [list(sample_to_values(_reading_sample())) for _ in range(2)]
    rows[1][4] = -0.0
    rows[0][4] = 0.0
    columns = _columns([tuple(r) for r in rows])
    assert csv_text(columns).splitlines()[1].split(",")[4] == "-0.0"
    assert '"value": -0.0' in json_text(columns).splitlines()[1]


def test_batch_columns_equal_the_rows_of_sample_to_values() -> None:
    samples = make_samples(40)
    columns = batch_columns(samples)
    assert len(columns) == 22
    assert [tuple(row) for row in zip(*columns, strict=True)] == [
        sample_to_values(s) for s in samples
    ]


def test_json_text_of_non_finite_numbers() -> None:
    row = list(sample_to_values(_reading_sample()))
    row[4] = math.inf
    row[19] = math.nan
    line = json_text(_columns([tuple(row)]))
    assert '"value": Infinity' in line
    assert '"latency_s": NaN' in line
