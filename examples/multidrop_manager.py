"""Poll several analysers sharing one RS485 bus with ServomexManager.

Usage: ``python examples/multidrop_manager.py [PORT] [--addresses 1,2,3] [--polls N]``.
PORT defaults to a simulated Modbus RTU bus with one analyser per address; on real hardware
give the bus's serial port (all analysers in the same Modbus mode, distinct addresses).

The manager identifies each analyser just before its first poll, so every poll covers only
the channels that analyser has (empty ``||||||`` slots are not reported); an analyser that
does not answer is reported as an error for that poll and identified again on the next.
"""

from __future__ import annotations

import argparse

import anyio

from servomexlib import ServomexManager

DEFAULT_ADDRESSES = "1,2,3"


def default_port(addresses: str) -> str:
    return f"sim://?mode=modbus_rtu&address={addresses}&realtime=0"


async def poll_bus(port: str, addresses: list[int], polls: int) -> None:
    async with ServomexManager() as manager:
        for address in addresses:
            await manager.add(f"anz{address}", port, protocol="modbus_rtu", address=address)
        for n in range(1, polls + 1):
            results = await manager.poll()
            for name, result in results.items():
                if result.ok and result.value is not None:
                    o2 = result.value.channel("I1")
                    print(f"poll {n} {name}: I1={o2.value} {o2.unit.value} ok={o2.status.ok}")
                else:
                    print(f"poll {n} {name}: error {result.error}")
        for name in manager.names:
            info = manager.get(name).info  # cached by the first poll's identify
            if info is not None:
                print(f"{name}: channels {' '.join(c.channel.value for c in info.channels)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", default=None)
    parser.add_argument("--addresses", default=DEFAULT_ADDRESSES)
    parser.add_argument("--polls", type=int, default=2)
    args = parser.parse_args()
    addresses = [int(a) for a in args.addresses.split(",")]
    port = args.port or default_port(args.addresses)
    anyio.run(poll_bus, port, addresses, args.polls)


if __name__ == "__main__":
    main()
