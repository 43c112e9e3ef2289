"""Wall-clock timing shared by the benchmark sections."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_call(fn: Callable[[], object], *, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
