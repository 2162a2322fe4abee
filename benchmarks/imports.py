"""Group 6: ``import servomexlib`` time.

Each trial is a fresh interpreter that times ``import servomexlib`` itself with
``time.perf_counter()`` (interpreter start-up excluded); the figure is the best of N trials, the
median is shown beside it. A context row times the first use of the I/O layer
(``servomexlib.open_device``, which imports anyio, anyserial and the transports).
"""

from __future__ import annotations

import statistics
import subprocess

from .common import Figure, Settings, child_env, python_exe

__all__ = ["run"]

TARGET_MS = 100.0
_SNIPPET = (
    "import time; t = time.perf_counter(); import servomexlib{extra}; "
    "print((time.perf_counter() - t) * 1000)"
)


def _trials(extra: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        res = subprocess.run(
            [python_exe(), "-c", _SNIPPET.format(extra=extra)],
            env=child_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(float(res.stdout.strip()))
    return out


def run(settings: Settings) -> list[Figure]:
    n = 5 if settings.quick else 15
    plain = _trials("", n)
    io = _trials("; servomexlib.open_device; servomexlib.ServomexManager", n)
    best = min(plain)
    return [
        Figure(
            "6",
            f"import servomexlib (best of {n} fresh interpreters)",
            f"{best:.1f} ms (median {statistics.median(plain):.1f})",
            f"<= {TARGET_MS:g} ms",
            best / TARGET_MS,
            ("<=", 1.0),
        ),
        Figure(
            "6",
            "context: import + first use of open_device and ServomexManager",
            f"{min(io):.1f} ms (median {statistics.median(io):.1f})",
            f"{TARGET_MS:g} ms",
            min(io) / TARGET_MS,
            None,
        ),
    ]
