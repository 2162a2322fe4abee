"""An independent Modbus server for client tests: pymodbus serving the register map of
protocol.md §4 over TCP loopback ("RTU over TCP", no MBAP), in a thread with its own asyncio
loop so the client side can run on asyncio or trio.

The map is written out by hand (struct, literal display-ROM bytes), not with servomexlib's
encoders, so the client is checked against an independent reading of the spec. The server
records every request it receives (time, bytes), can drop its next replies, and can reject
reads that bridge unpopulated slots with exception 02.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
import time
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

#: Channel blocks: slot index (0-9) → (value, 6 name bytes, 4 unit bytes).
#: The measured unit's five channels (HW values), plus D1 so derived-channel copies show.
CHANNELS: dict[int, tuple[float, bytes, bytes]] = {
    0: (20.378, b"O2    ", b"%\x00\x00\x00"),  # I1
    1: (0.084, b"CO    ", b"%\x00\x00\x00"),  # I2
    2: (0.25, b"CO\x82   ", b"%\x00\x00\x00"),  # I3, CO₂ from the display ROM (HW)
    4: (20.95, b"Oxygen", b" % \x00"),  # D1 (unit padding as in protocol.md §4.5)
    8: (4.0, b"||||||", b"mA\x00\x00"),  # E1 unlabelled
    9: (0.0, b"Ext 2 ", b"mA\x00\x00"),  # E2
}
#: Per-channel discretes set: I1 alarm 1, I2 fault, D1 copies I2's fault + alarm 2, E1 invalid.
DISCRETES = {4, 8, 32, 37, 64}
#: Analyser discretes (offsets from 1000): fault, group 2 calibrating on gas 2.
ANALYSER = {0, 10, 11}


def registers(channels: dict[int, tuple[float, bytes, bytes]] = CHANNELS) -> list[int]:
    regs = [0] * 70
    for slot, (value, name, unit) in channels.items():
        raw = struct.pack(">f", value) + name + unit
        regs[slot * 7 : slot * 7 + 7] = list(struct.unpack(">7H", raw))
    return regs


@dataclasses.dataclass
class Received:
    at: float  # time.monotonic() when the server saw the request
    adu: bytes


class ModbusTestServer:
    """pymodbus on 127.0.0.1:<ephemeral> in a background thread."""

    def __init__(
        self,
        *,
        framing: str = "rtu",
        addresses: tuple[int, ...] = (1,),
        reject_gaps: bool = False,
        channels: dict[int, tuple[float, bytes, bytes]] = CHANNELS,
    ) -> None:
        self.framing = framing
        self.addresses = addresses
        self.reject_gaps = reject_gaps
        self.channels = channels
        self.received: list[Received] = []
        self.replies: list[Received] = []
        self.drop_replies = 0  # drop the next n replies (the request was still received)
        self.drop_fc: int | None = None  # only drop replies to this function code
        self.coil_writes: list[tuple[int, bool]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._last_request: tuple[int, int, int] | None = None
        self._error: BaseException | None = None

    # -- pymodbus hooks (run in the server thread) -------------------------------------------

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        now = time.monotonic()
        if not sending:
            self.received.append(Received(now, bytes(data)))
            return data
        address = data[0] if self.framing == "rtu" else int(data[1:3], 16)
        fc = data[1] if self.framing == "rtu" else int(data[3:5], 16)
        if address not in self.addresses:  # a wrong address is silence on a real bus
            return b""
        if self.drop_replies and (self.drop_fc is None or fc == self.drop_fc):
            self.drop_replies -= 1
            return b""
        self.replies.append(Received(now, bytes(data)))
        return data

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self._last_request = (
                int(pdu.function_code),
                int(getattr(pdu, "address", 0)),
                int(getattr(pdu, "count", 0)),
            )
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code == 5 and set_values is not None and self._last_request is not None:
            self.coil_writes.append((self._last_request[1], bool(set_values[0])))
        if not self.reject_gaps or self._last_request is None:
            return None
        fc, first, n = self._last_request
        if fc in (2, 4) and not (fc == 2 and first >= 1000):
            size = 7 if fc == 4 else 8
            for item in range(first, first + n):
                if item // size not in self.channels:
                    return ExcCodes.ILLEGAL_ADDRESS
        return None

    def _device(self, address: int) -> SimDevice:
        di = [i in DISCRETES for i in range(80)]
        analyser = [i in ANALYSER for i in range(16)]
        return SimDevice(
            address,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [
                    SimData(0, values=di, datatype=DataType.BITS),
                    SimData(1000, values=analyser, datatype=DataType.BITS),
                ],
                [SimData(0, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, values=registers(self.channels), datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = ModbusTcpServer(
            [self._device(a) for a in self.addresses] + [self._device(0)],
            framer=FramerType.RTU if self.framing == "rtu" else FramerType.ASCII,
            address=("127.0.0.1", 0),
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
        )
        await server.listen()
        listener: Any = server.transport
        self.port = listener.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._serve()

    def start(self) -> ModbusTestServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"pymodbus server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ModbusTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views ----------------------------------------------------------------------------

    def requests(self) -> list[bytes]:
        return [r.adu for r in self.received]

    def silences(self) -> list[float]:
        """For each request after the first: seconds since the previous reply was sent."""
        gaps: list[float] = []
        for req in self.received[1:]:
            before = [r.at for r in self.replies if r.at <= req.at]
            if before:
                gaps.append(req.at - before[-1])
        return gaps
