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


def parse_only(args) -> None:
    """With ``BENCH_PARSE_ONLY=1`` in the environment, print the parsed arguments as JSON and exit 0
    (``scripts/gpu_check.sh --dry-run`` checks every bench command line this way without running it)."""
    import json
    import os
    import sys

    if os.environ.get("BENCH_PARSE_ONLY"):
        print(json.dumps({k: v for k, v in vars(args).items()}, default=str))
        sys.exit(0)
