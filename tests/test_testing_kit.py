"""`servomexlib.testing`: the public test kit, including the simulator-backed Modbus fakes."""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import anymodbus
import pytest

import servomexlib.testing as kit
from servomexlib import decode_frame
from servomexlib.errors import ServomexValidationError
from servomexlib.transport.fake import FakeTransport as _FakeTransport
from servomexlib.transport.timed import TimedReader

DATA = Path(__file__).parent / "data"

WORKED_FRAME = (
    b" 14-03-24;09:05:30;F ;S1C2S1S1;05;I1;Oxygen;20.950; % ;    ;  ; ; ;"
    b"I2;CO    ; 0.012; % ;    ;F ; ; ;I3;CO2   ; 1.875; % ;    ;  ;C; ;"
    b"E1;||||||;   4.0; mA;    ;  ; ; ;E2;||||||;   0.0; mA;    ;  ; ; ;2A8C;\r\n"
)


def test_exports_are_present_and_documented() -> None:
    for name in kit.__all__:
        obj = getattr(kit, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), name
    assert kit.FakeTransport is _FakeTransport


def test_frame_helpers_reproduce_the_worked_frame() -> None:
    header = ["14-03-24", "09:05:30", "F ", "S1C2S1S1", "05"]
    blocks = [
        ["I1", "Oxygen", "20.950", " % ", "    ", "  ", " ", " "],
        ["I2", "CO    ", " 0.012", " % ", "    ", "F ", " ", " "],
        ["I3", "CO2   ", " 1.875", " % ", "    ", "  ", "C", " "],
        ["E1", "||||||", "   4.0", " mA", "    ", "  ", " ", " "],
        ["E2", "||||||", "   0.0", " mA", "    ", "  ", " ", " "],
    ]
    assert kit.build_continuous_frame(header, blocks) == WORKED_FRAME
    assert kit.build_continuous_frame(header, blocks, terminator=b"\n") == WORKED_FRAME[:-2] + b"\n"
    assert kit.continuous_checksum(WORKED_FRAME[1:-7]) == "2A8C"


@pytest.mark.parametrize("terminator", [b"\r\n", b"\n", b"\r"])
def test_split_continuous_frames(terminator: bytes) -> None:
    capture = (DATA / "continuous_4100_idle_5ch.bin").read_bytes()
    lf_frames = kit.split_continuous_frames(capture)
    assert len(lf_frames) == 6
    rebuilt = terminator.join(lf_frames) + terminator + terminator  # with a blank line
    frames = kit.split_continuous_frames(rebuilt)
    assert frames == lf_frames
    assert all(not f.endswith((b"\r", b"\n")) for f in frames)
    for f in frames:
        decode_frame(f)


def test_load_arrow_script() -> None:
    script = kit.load_arrow_script(
        """
        # loopback at slave 1
        > 01 08 00 00 AB CD 5E AE
        < 01:08:00:00        # split over two lines
        < AB,CD,5E,AE
        > 0102 0000 0008 79CC
        > 01 04 00 00 00 07 B1 C8
        < 01 84 02 C2 C1
        """
    )
    assert script == {
        bytes.fromhex("01080000ABCD5EAE"): bytes.fromhex("01080000ABCD5EAE"),
        bytes.fromhex("010200000008 79CC".replace(" ", "")): b"",
        bytes.fromhex("010400000007B1C8"): bytes.fromhex("0184 02C2 C1".replace(" ", "")),
    }
    for bad in ("< 01 02", "> 0G", "? 01"):
        with pytest.raises(ServomexValidationError):
            kit.load_arrow_script(bad)


@pytest.mark.anyio
async def test_fake_transport_with_an_arrow_script() -> None:
    script = kit.load_arrow_script("> 01 08 00 00 AB CD 5E AE\n< 01 08 00 00 AB CD 5E AE")
    fake = kit.FakeTransport(script)
    with anyio.fail_after(5):
        await fake.send(bytes.fromhex("01080000ABCD5EAE"))
        echo = await TimedReader(fake).read_exact(8, timeout=1.0)
        assert echo == bytes.fromhex("01080000ABCD5EAE")
    await fake.aclose()


def f32(words: tuple[int, ...], i: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", words[i], words[i + 1]))[0])


@pytest.mark.anyio
@pytest.mark.parametrize("framing", [anymodbus.Framing.RTU, anymodbus.Framing.ASCII])
async def test_mock_modbus_transport_serves_the_default_bank(framing: anymodbus.Framing) -> None:
    async with kit.mock_modbus_transport(
        framing=framing, address=30, record_read_ops=True, record_coil_ops=True
    ) as (transport, slave):
        assert transport.serial_settings is not None
        assert transport.serial_settings.baudrate == 19200
        assert isinstance(slave, kit.MockSlave)
        bus = anymodbus.Bus(transport, framing=framing)
        dev = bus.slave(30)
        with anyio.fail_after(5):
            words = await dev.read_input_registers(0, count=70)
            assert f32(words, 0) == pytest.approx(20.378, abs=1e-5)
            raw = struct.pack(">70H", *words)
            assert raw[4:10] == b"Oxygen"
            assert raw[10:14] == b"%\x00\x00\x00"
            assert raw[14 * 2 + 4 : 14 * 2 + 10] == bytes.fromhex("434F82202020")
            assert raw[56 * 2 + 10 : 56 * 2 + 14] == b"mA\x00\x00"
            kit.load_cal_state(slave, 2, calibrating=True, gas2=True)
            status = await dev.read_discrete_inputs(1000, count=16)
            assert [i for i, b in enumerate(status) if b] == [10, 11]
            # the calibration pulse of protocol.md §4.9
            await dev.write_coil(0, on=True)
            assert await dev.read_coils(0, count=1) == (True,)
            await dev.write_coil(0, on=False)
            with pytest.raises(anymodbus.IllegalDataAddressError):
                await dev.read_discrete_inputs(80, count=1)
            with pytest.raises(anymodbus.IllegalDataAddressError):
                await dev.write_coil(5, on=True)
        assert kit.coil_ops(slave) == [
            kit.CoilOp(5, 0, True),
            kit.CoilOp(1, 0, True),
            kit.CoilOp(5, 0, False),
        ]
        assert kit.read_ops(slave)[:3] == [
            kit.ReadOp(4, 0, 70),
            kit.ReadOp(2, 1000, 16),
            kit.ReadOp(1, 0, 1),
        ]
        await bus.aclose()


@pytest.mark.anyio
async def test_mock_ranges_disabled_codes_and_bad_crc() -> None:
    bank = [
        kit.MockChannel("I1", 1.5, b"Gas", b"%", (True, False, False, False, True, False, False, False)),  # noqa: E501
        kit.MockChannel("E1", None, unit=b"mA"),
        kit.MockChannel("E2", 0.0, unit=b"mA"),
    ]  # fmt: skip
    async with kit.mock_modbus_transport(
        channels=bank,
        disabled_function_codes=[8],
        valid_input_ranges=[(0, 7), (56, 70)],
        valid_discrete_ranges=[(0, 8), (64, 80), (1000, 1016)],
    ) as (transport, _slave):
        bus = anymodbus.Bus(transport)
        dev = bus.slave(1)
        with anyio.fail_after(5):
            words = await dev.read_input_registers(0, count=7)
            assert f32(words, 0) == 1.5
            assert struct.pack(">7H", *words)[4:] == b"Gas\x00\x00\x00%\x00\x00\x00"
            assert await dev.read_discrete_inputs(0, count=8) == (
                True, False, False, False, True, False, False, False,
            )  # fmt: skip
            e1 = await dev.read_input_registers(56, count=2)
            assert e1 == (0x7FC0, 0x0000)  # None → NaN
            with pytest.raises(anymodbus.IllegalDataAddressError):
                await dev.read_input_registers(0, count=70)
            with pytest.raises(anymodbus.IllegalDataAddressError):
                await dev.read_discrete_inputs(0, count=80)
            with pytest.raises(anymodbus.IllegalFunctionError):
                await dev.diagnostic_loopback(b"\xab\xcd")
        await transport.send(bytes.fromhex("010400000007B1C9"))  # bad CRC: no reply
        with anyio.move_on_after(0.1):
            await transport.receive()
            pytest.fail("a request with a bad CRC must get no reply")
        await bus.aclose()


def test_mock_channel_and_cal_state_validation() -> None:
    with pytest.raises(ServomexValidationError):
        kit.MockChannel("I1", 1.0, status_bits=(True,))
    with pytest.raises(ServomexValidationError):
        kit.load_cal_state(kit.MockSlave(), 5)
    assert kit.MockChannel("I1", 1.0, b"O2").name == b"O2\x00\x00\x00\x00"
    assert kit.DEFAULT_4100_BANK[2].name == bytes.fromhex("434F82202020")
