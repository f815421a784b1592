"""Timing shared by the bench scripts (imported from their own directory)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def best_of(fn: Callable[[], T], repeats: int, cpu_time: bool = False) -> tuple[float, T]:
    """The shortest of ``repeats`` timed calls of ``fn`` in seconds (wall clock, or with ``cpu_time`` the
    process CPU clock, for a busy machine) and the last call's result."""
    clock = time.process_time if cpu_time else time.perf_counter
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out
