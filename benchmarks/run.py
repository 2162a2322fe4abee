"""The benchmark command: ``python -m benchmarks [--quick] [--only GROUPS] [--strict]``.

Runs the groups in order (cheap ones first), prints one table of figures with their bound or
target, the ratio and PASS/FAIL, and exits 0 (``--strict``: 1 when a figure fails).

Groups: 1 poll, 2 manager, 3 decode, 4 recorder, 5 sinks, 6 import, 7 recovery, 8 service.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from .common import Figure, Settings, print_table

GROUPS = {
    "6": ("import", "benchmarks.imports"),
    "3": ("decode", "benchmarks.decode"),
    "4": ("recorder", "benchmarks.recorder"),
    "1": ("poll", "benchmarks.poll"),
    "2": ("manager", "benchmarks.manager"),
    "5": ("sinks", "benchmarks.sinks"),
    "7": ("recovery", "benchmarks.recovery"),
    "8": ("service", "benchmarks.service"),
}
ORDER = ("6", "3", "4", "1", "7", "2", "5", "8")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = ", ".join(f"{k}={v[0]}" for k, v in sorted(GROUPS.items()))
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small samples: a ~1 minute smoke run")
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated groups to run, by number or name ({names}); default all",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when any figure fails")
    return p.parse_args(argv)


def _selected(only: str) -> list[str]:
    if not only:
        return list(ORDER)
    wanted = set()
    for item in only.split(","):
        item = item.strip().lower()
        for key, (name, _) in GROUPS.items():
            if item in (key, name):
                wanted.add(key)
                break
        else:
            raise SystemExit(f"unknown group {item!r}")
    return [k for k in ORDER if k in wanted]


def main(argv: list[str] | None = None) -> int:
    import importlib

    args = _parse(argv)
    settings = Settings(quick=args.quick)
    figures: list[Figure] = []
    started = time.perf_counter()
    print(
        f"servomexlib benchmarks ({'quick' if args.quick else 'full'}) on "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {_load()}",
        flush=True,
    )
    for key in _selected(args.only):
        name, module = GROUPS[key]
        t0 = time.perf_counter()
        print(f"  group {key} ({name}) ...", end="", flush=True)
        try:
            rows = importlib.import_module(module).run(settings)
        except Exception as exc:
            traceback.print_exc()
            rows = [Figure(key, f"{name} group", f"error: {exc!r}"[:80], "", status="ERROR")]
        figures.extend(rows)
        print(f" {time.perf_counter() - t0:.0f} s", flush=True)
    figures.sort(key=lambda f: f.group)
    print()
    print_table(figures)
    failed = [f for f in figures if f.result in ("FAIL", "ERROR")]
    print(
        f"\n{len(figures)} figures, {sum(f.result == 'PASS' for f in figures)} pass, "
        f"{len(failed)} fail/error, {time.perf_counter() - started:.0f} s total"
    )
    return 1 if args.strict and failed else 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
