"""Start an autocalibration of one group and follow it to the end (Modbus only).

Starting a calibration changes the analyser's state, so the library refuses unless
``confirm=True`` is passed — and this script asks you first (or pass ``--yes``).

Usage: ``python examples/calibration.py [PORT] [--group 1] [--address 1] [--yes]``.
PORT defaults to a simulated analyser whose calibration phases last 2 s each.
"""

from __future__ import annotations

import argparse

import anyio

from servomexlib import CalPhase, ServomexConfirmationRequiredError, open_device

DEFAULT_PORT = "sim://?mode=modbus_rtu&scenario=calibration&realtime=0"


async def calibrate(port: str, *, group: int, address: int, confirmed: bool) -> None:
    async with await open_device(port, protocol="modbus_rtu", address=address) as anz:
        try:
            await anz.start_calibration(group)  # no confirm: refused before any byte is sent
        except ServomexConfirmationRequiredError as exc:
            print(f"refused without confirm: {exc.message}")
        if not confirmed:
            print("not confirmed; nothing was changed")
            return
        await anz.start_calibration(group, confirm=True)
        print(f"calibration of group {group} started")
        last: CalPhase | None = None
        with anyio.fail_after(120):
            while True:
                progress = await anz.calibration_status(group)
                if progress.phase is not last:
                    print(f"group {group}: {progress.phase.value}")
                    last = progress.phase
                if not progress.active:
                    break
                await anyio.sleep(0.25)
        print("calibration finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", default=DEFAULT_PORT)
    parser.add_argument("--group", type=int, default=1)
    parser.add_argument("--address", type=int, default=1)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    args = parser.parse_args()
    confirmed = args.yes or input(
        f"Start autocalibration of group {args.group} on {args.port}? [y/N] "
    ).strip().lower() in ("y", "yes")
    anyio.run(
        lambda: calibrate(args.port, group=args.group, address=args.address, confirmed=confirmed)
    )


if __name__ == "__main__":
    main()
