"""The pure simulator model: byte-exact replies (protocol.md §4 worked ADUs), frames, scenarios."""

from __future__ import annotations

import math
import struct
from datetime import datetime

import pytest

from servomexlib import decode_frame
from servomexlib.devices.models import ChannelId, ProtocolKind
from servomexlib.errors import ServomexValidationError
from servomexlib.sim import DEFAULT_4100D_CHANNELS, AnalyserModel, CoilAction, SimChannel
from servomexlib.sim.model import (
    AsciiRequestSplitter,
    RtuRequestSplitter,
    ascii_adu,
    corrupt_adu,
    rtu_adu,
)
from servomexlib.wire.channels import CHANNEL_TABLE, decode_status_bits, spec_for
from servomexlib.wire.registers import decode_channel_block

CLOCK = datetime(2024, 3, 14, 9, 5, 30)


def model(channels: object = DEFAULT_4100D_CHANNELS, **kw: object) -> AnalyserModel:
    return AnalyserModel(channels, clock_origin=CLOCK, now=0.0, **kw)  # type: ignore[arg-type]


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "").replace(" ", ""))


def rtu_reply(m: AnalyserModel, request_rtu: str, now: float = 0.0) -> bytes:
    req = h(request_rtu)
    return rtu_adu(req[0], m.handle_pdu(req[1:-2], now))


def ascii_reply(m: AnalyserModel, request_ascii: bytes, now: float = 0.0) -> bytes:
    body = bytes.fromhex(request_ascii[1:-2].decode())
    return ascii_adu(body[0], m.handle_pdu(body[1:-1], now))


WORKED_O2: list[SimChannel | str] = [
    SimChannel("I1", name="Oxygen", unit="%", value=20.95),
    "I2",
    "E1",
]


def worked_model(**kw: object) -> AnalyserModel:
    chans = [c if isinstance(c, SimChannel) else SimChannel(c) for c in WORKED_O2]
    return model(chans, **kw)


# ---------------------------------------------------------------------------- worked ADUs


def test_fc04_worked_reply_rtu_and_ascii() -> None:
    """protocol.md §4.5: FC04 PDU 0 ×7 for 20.95 / Oxygen / ` % \\0`."""
    m = worked_model()
    assert rtu_reply(m, "01 04 00 00 00 07 B1 C8") == h(
        "01 04 0E 41 A7 99 9A 4F 78 79 67 65 6E 20 25 20 00 66 5E"
    )
    assert ascii_reply(m, b":010400000007F4\r\n") == b":01040E41A7999A4F787967656E20252000F3\r\n"


def test_co2_name_bytes_and_float_words() -> None:
    """CO₂ = 43 4F 82 20 20 20 over Modbus; 0.25 = 3E 80 00 00 (§4.5)."""
    m = model()
    spec = spec_for(ChannelId.I3)
    words = m.input_registers(0.0)[spec.value_register : spec.register_end]
    raw = struct.pack(">7H", *words)
    assert raw[:4] == h("3E 80 00 00")
    assert raw[4:10] == h("43 4F 82 20 20 20")
    assert raw[10:] == b" % \x00"
    reading = decode_channel_block(
        ChannelId.I3,
        words,
        decode_status_bits(ChannelId.I3.kind, [False] * 8),
        received_at=CLOCK,
        monotonic_ns=0,
    )
    assert reading.name == "CO₂"
    assert reading.value == 0.25


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (20.950, "41 A7 99 9A"),
        (20.378, "41 A3 06 25"),
        (0.084, "3D AC 08 31"),
        (0.25, "3E 80 00 00"),
        (4.0, "40 80 00 00"),
        (None, "7F C0 00 00"),
    ],
)
def test_float_byte_order(value: float | None, wire: str) -> None:
    m = worked_model()
    m.set_value("I1", value, now=0.0)
    reply = rtu_reply(m, "01 04 00 00 00 02 71 CB")
    assert reply[3:7] == h(wire)


def test_fc02_worked_reply_channel_discretes() -> None:
    """§4.7: I1 alarm 1, I2 fault, E1 invalid → 10 01 00 00 00 00 00 00 01 00."""
    m = model()
    m.set_alarm("I1", 1)
    m.set_fault("I2")
    m.set_invalid("E1")
    assert rtu_reply(m, "01 02 00 00 00 50 78 36") == h(
        "01 02 0A 10 01 00 00 00 00 00 00 01 00 D4 E0"
    )


def test_fc02_worked_reply_analyser_status() -> None:
    """§4.8: analyser fault + group 2 calibrating on gas 2 → 01 0C; all clear → 00 00."""
    m = model()
    assert rtu_reply(m, "01 02 03 E8 00 10 F9 B6") == h("01 02 02 00 00 B9 B8")
    m.set_analyser(fault=True)
    m.configure_calibration(2, channels=["I2"], gas1_s=10, gas2_s=10)
    m.write_coil(1, True, now=0.0)
    assert rtu_reply(m, "01 02 03 E8 00 10 F9 B6", now=15.0) == h("01 02 02 01 0C B8 2D")
    assert ascii_reply(m, b":010203E8001002\r\n", now=15.0) == b":010202010CEE\r\n"


@pytest.mark.parametrize(
    ("request_rtu", "reply_rtu"),
    [
        ("01 05 00 00 FF 00 8C 3A", "01 05 00 00 FF 00 8C 3A"),
        ("01 01 00 00 00 01 FD CA", "01 01 01 01 90 48"),
        ("01 05 00 00 00 00 CD CA", "01 05 00 00 00 00 CD CA"),
        ("01 05 00 08 FF 00 0D F8", "01 05 00 08 FF 00 0D F8"),
        ("01 05 00 08 00 00 4C 08", "01 05 00 08 00 00 4C 08"),
        ("01 08 00 00 AB CD 5E AE", "01 08 00 00 AB CD 5E AE"),
    ],
)
def test_coil_and_loopback_worked_replies(request_rtu: str, reply_rtu: str) -> None:
    """§4.9/§4.10/§4.11: FC05 echoes, FC01 read-back of a set coil, FC08 echo — applied in order."""
    m = model()
    m.write_coil(0, True, now=0.0)  # so the FC01 read-back sees the set coil
    m.write_coil(0, False, now=0.0)
    if request_rtu.startswith("01 01"):
        m.write_coil(0, True, now=0.0)
    assert rtu_reply(m, request_rtu) == h(reply_rtu)


@pytest.mark.parametrize(
    ("request_ascii", "addr"),
    [
        (b":1E080000ABCD62\r\n", 30),
        (b":1E040000004698\r\n", 30),
        (b":1E020000005090\r\n", 30),
        (b":1E0203E80010E5\r\n", 30),
        (b":1E0203F00008E5\r\n", 30),
        (b":1E050000FF00DE\r\n", 30),
        (b":1E0100000001E0\r\n", 30),
    ],
)
def test_worked_ascii_requests_are_understood(request_ascii: bytes, addr: int) -> None:
    """§4.11 request ADUs (slave 30) split cleanly and get a normal reply."""
    splitter = AsciiRequestSplitter()
    (req,) = splitter.feed(request_ascii, 0.0, 0.0)
    assert req.valid
    assert req.address == addr
    m = model(address=30)
    reply = m.handle_pdu(req.pdu, 0.0)
    assert reply[0] == req.pdu[0]  # no exception bit


@pytest.mark.parametrize(
    "request_rtu",
    [
        "1E 08 00 00 AB CD 5C C1",
        "1E 04 00 00 00 46 73 97",
        "1E 02 00 00 00 50 7A 59",
        "1E 02 03 E8 00 10 FB D9",
        "1E 02 03 F0 00 08 7B D4",
        "1E 04 00 00 00 07 B3 A7",
        "1E 02 00 00 00 08 7B A3",
        "1E 05 00 00 FF 00 8E 55",
        "1E 01 00 00 00 01 FF A5",
        "1E 05 00 08 00 00 4E 67",
    ],
)
def test_worked_rtu_requests_are_understood(request_rtu: str) -> None:
    splitter = RtuRequestSplitter(gap_s=0.015)
    (req,) = splitter.feed(h(request_rtu), 0.0, 0.0)
    assert req.valid
    assert req.address == 30
    assert model(address=30).handle_pdu(req.pdu, 0.0)[0] == req.pdu[0]


def test_exception_02_worked_reply() -> None:
    """§4.11: FC04 exception 02 at slave 1 is 01 84 02 C2 C1 / :01840279."""
    m = model()
    assert rtu_adu(1, m.handle_pdu(h("04 00 00 00 47"), 0.0)) == h("01 84 02 C2 C1")
    assert ascii_adu(1, m.handle_pdu(h("04 00 46 00 01"), 0.0)) == b":01840279\r\n"


# ---------------------------------------------------------------------------- the map


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("04 00 00 00 46", None),  # 0-69
        ("04 00 45 00 01", None),
        ("04 00 46 00 01", 2),  # register 70
        ("02 00 00 00 50", None),
        ("02 00 4F 00 01", None),
        ("02 00 50 00 01", 2),  # discrete 80
        ("02 03 E7 00 01", 2),  # 999
        ("02 03 E8 00 10", None),
        ("02 03 F7 00 01", None),  # 1015
        ("02 03 F8 00 01", 2),  # 1016
        ("02 00 00 03 F8", 2),  # bridges 80-999
        ("01 00 00 00 04", None),
        ("01 00 08 00 01", None),
        ("01 00 00 00 09", 2),  # includes coils 4-7
        ("01 00 04 00 01", 2),
        ("05 00 04 FF 00", 2),
        ("05 00 09 FF 00", 2),
        ("03 00 00 00 01", 1),
        ("06 00 00 00 01", 1),
        ("0F 00 00 00 01 01 01", 1),
        ("11", 1),
        ("08 00 01 00 00", 1),  # FC08 sub 1
        ("04 00 00 00 00", 3),  # count 0
        ("05 00 00 12 34", 3),  # bad coil value
    ],
)
def test_map_bounds_and_exceptions(pdu: str, code: int | None) -> None:
    reply = model().handle_pdu(h(pdu), 0.0)
    if code is None:
        assert reply[0] == h(pdu)[0]
    else:
        assert reply == bytes((h(pdu)[0] | 0x80, code))


def test_unpopulated_slots_are_zero_and_reject_gaps() -> None:
    m = model()  # I1 I2 I3 E1 E2
    words = m.input_registers(0.0)
    i4, d1 = spec_for(ChannelId.I4), spec_for(ChannelId.D1)
    assert words[i4.value_register : d1.register_end] == [0] * 14
    e1 = spec_for(ChannelId.E1)
    raw = struct.pack(">7H", *words[e1.value_register : e1.register_end])
    assert raw == b"\x00\x00\x00\x00" + b" " * 6 + b" mA\x00"  # unlabelled but populated
    strict = model(reject_gaps=True)
    assert strict.handle_pdu(h("04 00 00 00 46"), 0.0) == b"\x84\x02"  # bridges I4-D4
    assert strict.handle_pdu(h("04 00 00 00 15"), 0.0)[0] == 0x04  # I1-I3
    assert strict.handle_pdu(h("04 00 38 00 0E"), 0.0)[0] == 0x04  # E1-E2
    assert strict.handle_pdu(h("04 00 15 00 07"), 0.0) == b"\x84\x02"  # I4 alone
    assert strict.handle_pdu(h("02 00 00 00 50"), 0.0) == b"\x82\x02"
    assert strict.handle_pdu(h("02 00 00 00 18"), 0.0)[0] == 0x02
    assert strict.handle_pdu(h("02 03 E8 00 10"), 0.0)[0] == 0x02


def test_every_register_matches_the_channel_table() -> None:
    chans = [
        SimChannel(s.channel, name=f"N{s.channel.value}", value=i + 0.5)
        for i, s in enumerate(CHANNEL_TABLE[:7])
    ]
    m = model(chans)
    words = m.input_registers(0.0)
    for i, spec in enumerate(CHANNEL_TABLE[:7]):
        block = words[spec.value_register : spec.register_end]
        reading = decode_channel_block(
            spec.channel,
            block,
            decode_status_bits(spec.kind, [False] * 8),
            received_at=CLOCK,
            monotonic_ns=0,
        )
        assert reading.value == i + 0.5
        assert reading.name == f"N{spec.channel.value}"


# ---------------------------------------------------------------------------- status rules


def test_derived_channels_copy_parent_bits_and_e_invalid() -> None:
    chans = [
        SimChannel("I1"),
        SimChannel("I2"),
        SimChannel("D1"),
        SimChannel("D2", parent="I1"),
        SimChannel("E1"),
    ]
    m = model(chans)
    m.set_fault("I1")
    m.set_maintenance("I2")
    m.warm_up(10.0, ["I1"], now=0.0)
    m.set_alarm("D1", 4)
    m.set_invalid("E1")
    d1, d2, e1 = m.status("D1", 1.0), m.status("D2", 1.0), m.status("E1", 1.0)
    assert (d1.fault, d1.maintenance, d1.warming_up, d1.alarms) == (
        True,
        False,
        True,
        (False, False, False, True),
    )
    assert (d2.fault, d2.warming_up) == (True, True)
    assert e1.fault
    assert not e1.maintenance
    assert m.status("I1", 11.0).warming_up is False
    with pytest.raises(ServomexValidationError):
        m.set_fault("D1")
    with pytest.raises(ServomexValidationError):
        m.set_invalid("I1")
    with pytest.raises(ServomexValidationError):
        m.set_maintenance("E1")
    assert m.analyser_status(0.0).fault  # a transducer fault raises the analyser fault


def test_calibration_cycle_follows_time_and_coils() -> None:
    m = model()
    m.configure_calibration(1, channels=["I1"], gas1_s=5.0, gas2_s=3.0)
    m.write_coil(0, True, now=100.0)
    entry = m.coil_log[-1]
    assert (entry.coil, entry.on, entry.action, entry.group) == (0, True, CoilAction.START, 1)

    def bits(t: float) -> int:
        return m.handle_pdu(h("02 03 F0 00 08"), t)[2]

    assert bits(101.0) == 0b01  # group 1 calibrating, gas 1
    assert m.status("I1", 101.0).calibrating
    assert not m.status("I2", 101.0).calibrating
    assert bits(106.0) == 0b11  # gas 2
    assert bits(108.5) == 0  # back to sampling
    m.write_coil(0, False, now=109.0)
    m.write_coil(0, True, now=110.0)
    assert bits(111.0) == 0b01
    assert m.write_coil(0, True, now=111.0).action is CoilAction.NONE  # no edge: no action
    assert m.write_coil(8, True, now=112.0).action is CoilAction.STOP
    assert bits(112.5) == 0
    frame = decode_frame(m.continuous_frame(112.5))
    assert not frame.analyser.cal_groups[0].calibrating


def test_worked_continuous_frame_is_reproduced() -> None:
    """protocol.md §3.6 byte for byte, built from scenario calls."""
    chans = [
        SimChannel("I1", name="Oxygen", value=20.95),
        SimChannel("I2", name="CO", value=0.012),
        SimChannel("I3", name="CO₂", value=1.875),
        SimChannel("E1", value=4.0),
        SimChannel("E2", value=0.0),
    ]
    m = model(chans)
    m.set_fault("I2")
    m.configure_calibration(2, channels=["I3"], gas1_s=10.0, gas2_s=10.0)
    m.write_coil(1, True, now=-12.0)
    expected = (
        b" 14-03-24;09:05:30;F ;S1C2S1S1;05;I1;Oxygen;20.950; % ;    ;  ; ; ;"
        b"I2;CO    ; 0.012; % ;    ;F ; ; ;I3;CO2   ; 1.875; % ;    ;  ;C; ;"
        b"E1;||||||;   4.0; mA;    ;  ; ; ;E2;||||||;   0.0; mA;    ;  ; ; ;2A8C;\r\n"
    )
    assert m.continuous_frame(0.0) == expected


def test_drift_noise_clock_and_seed() -> None:
    m = model(seed=7)
    m.drift("I1", rate_per_s=-0.5, target=18.0, now=0.0)
    assert m.value("I1", 2.0) == pytest.approx(20.378 - 1.0)
    assert m.value("I1", 100.0) == 18.0
    a, b = model(seed=3), model(seed=3)
    for x in (a, b):
        x.drift("I2", noise=0.01, now=0.0)
    assert [a.value("I2", t) for t in range(5)] == [b.value("I2", t) for t in range(5)]
    assert m.clock(61.7) == datetime(2024, 3, 14, 9, 6, 31)
    m.set_clock(datetime(2020, 10, 6, 2, 54, 12), now=10.0)
    assert m.clock(12.0) == datetime(2020, 10, 6, 2, 54, 14)
    m.over_range("I2", now=0.0)
    assert m.value("I2", 0.0) is None
    assert b"++++++" in m.continuous_frame(0.0)
    assert math.isnan(struct.unpack(">f", rtu_reply(m, "01 04 00 07 00 02 01 C9")[3:7])[0])


def test_model_validation() -> None:
    with pytest.raises(ServomexValidationError):
        model([SimChannel("I1"), SimChannel("E1")])  # fewer than 3
    with pytest.raises(ServomexValidationError):
        model([SimChannel("I1"), SimChannel("I1"), SimChannel("E1")])
    with pytest.raises(ServomexValidationError):
        model(address=0)
    with pytest.raises(ServomexValidationError):
        model(mode=ProtocolKind.AUTO)
    with pytest.raises(ServomexValidationError):
        SimChannel("X9")
    with pytest.raises(ServomexValidationError):
        SimChannel("I1", name="TooLongName")
    with pytest.raises(ServomexValidationError):
        SimChannel("I1", name_bytes=b"1234567")
    with pytest.raises(ServomexValidationError):
        SimChannel("D1", parent="E1")
    with pytest.raises(ServomexValidationError):
        SimChannel("I1", unit="ppmv")
    with pytest.raises(ServomexValidationError):
        model().set_alarm("I1", 5)
    with pytest.raises(ServomexValidationError):
        model().set_value("I4", 1.0, now=0.0)  # not simulated
    assert SimChannel("I3", name="CO₂").continuous_label == "CO2"
    assert SimChannel("E1").unit_field == " mA"
    assert SimChannel("I1", unit="vpm").unit_field == "vpm"
    assert SimChannel("E1").resolved_decimals == 1


# ---------------------------------------------------------------------------- splitters


def test_rtu_splitter_lengths_bad_crc_gap_and_unknown_fc() -> None:
    s = RtuRequestSplitter(gap_s=0.01)
    req = h("01 04 00 00 00 46 71 F8")
    out = s.feed(req[:3], 0.0, 0.0) + s.feed(req[3:], 0.001, 0.0)
    assert [r.adu for r in out] == [req]
    assert out[0].valid
    bad = bytearray(req)
    bad[-1] ^= 1
    (r,) = s.feed(bytes(bad), 1.0, 0.0)
    assert not r.valid
    assert s.feed(req[:4], 2.0, 0.0) == []
    (r,) = s.feed(req, 3.0, 0.0)  # the stale half was discarded by the gap rule
    assert r.adu == req
    fc11 = rtu_adu(1, b"\x11")
    (r,) = s.feed(fc11, 4.0, 0.0)
    assert r.valid
    assert r.pdu == b"\x11"
    fc15 = rtu_adu(1, h("0F 00 00 00 09 02 FF 01"))
    (r,) = s.feed(fc15, 5.0, 0.0)
    assert r.valid
    assert r.adu == fc15


def test_ascii_splitter_garbage_restart_and_bad_lrc() -> None:
    s = AsciiRequestSplitter()
    out = s.feed(b"noise:01:010400000007F4\r\n", 0.0, 0.0)
    assert len(out) == 1
    assert out[0].valid
    assert out[0].pdu == h("04 00 00 00 07")
    (r,) = s.feed(b":010400000007F5\r\n", 0.0, 0.0)
    assert not r.valid
    (r,) = s.feed(b":01040000000\r\n", 0.0, 0.0)
    assert not r.valid
    (r,) = s.feed(b":010400000007f4\n", 0.0, 0.0)  # lower case and LF only
    assert r.valid


def test_corrupt_adu_breaks_the_check() -> None:
    rtu = rtu_adu(1, h("08 00 00 AB CD"))
    assert corrupt_adu(rtu, ProtocolKind.MODBUS_RTU) != rtu
    (r,) = RtuRequestSplitter(0.01).feed(corrupt_adu(rtu, ProtocolKind.MODBUS_RTU), 0, 0)
    assert not r.valid
    asc = ascii_adu(1, h("08 00 00 AB CD"))
    (r,) = AsciiRequestSplitter().feed(corrupt_adu(asc, ProtocolKind.MODBUS_ASCII), 0, 0)
    assert not r.valid
