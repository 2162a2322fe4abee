"""Child process of the RSS figure: ``python -m benchmarks._rss_child N PATH``.

Writes N samples to a SqliteSink at PATH in batches of 1 000, cycling through 5 000 prebuilt
samples, and prints one JSON line with its peak RSS after warm-up and at the end.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import anyio

from servomexlib.sinks import SqliteSink

from .sinks import BATCH, make_samples

WARM = 10_000


def vm_hwm_kib() -> int:
    """Peak resident set size of this process in KiB (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def main(n: int, path: str) -> None:
    pool = make_samples(5000)
    batches = [pool[i : i + BATCH] for i in range(0, len(pool), BATCH)]
    written = 0
    warm_hwm = 0
    t0 = time.perf_counter()
    async with SqliteSink(path) as sink:
        while written < n:
            await sink.write_many(batches[(written // BATCH) % len(batches)])
            written += BATCH
            if written == WARM:
                warm_hwm = vm_hwm_kib()
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "warm": WARM,
                "hwm_warm_kib": warm_hwm,
                "hwm_end_kib": vm_hwm_kib(),
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "rate": written / seconds,
            }
        )
    )


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]), sys.argv[2])
