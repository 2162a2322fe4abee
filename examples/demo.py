"""The main job against the built-in simulator: open an analyser, identify it, read and stream.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py``). Replace the URL with
``/dev/ttyUSB0``, ``COM3`` or ``tcp://host:port`` to read a real analyser.
"""

from __future__ import annotations

import anyio

from servomexlib import ProtocolKind, open_device

PORT = "sim://?mode=continuous&period=0.5"


async def main() -> None:
    async with await open_device(PORT, protocol=ProtocolKind.CONTINUOUS_ASCII) as anz:
        info = anz.info
        assert info is not None
        print(f"device: {info.model} protocol={info.protocol.value} port={PORT}")
        for ch in info.channels:
            print(f"  {ch.channel.value:<3} {ch.name or '(unlabelled)':<12} {ch.unit.value}")
        frame = await anz.poll(wait_fresh=True)
        print(f"frame @ {frame.received_at.isoformat()} fault={frame.analyser.fault}")
        for r in frame.readings:
            print(
                f"  {r.channel.value:<3} {r.name or '(unlabelled)':<12} {r:>10.3f} {r.unit.value}"
            )
        print("streaming 3 frames:")
        async with anz.stream() as samples:
            seen = 0
            async for sample in samples:
                if sample.reading is not None:
                    print(f"  {sample.channel} {sample.value} {sample.unit}")
                seen += 1
                if seen >= 3 * len(frame.readings):
                    break


if __name__ == "__main__":
    anyio.run(main)
