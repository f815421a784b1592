"""Analyses the grid tests register (imported by path with ``import_analyses``, so that the executors
pickle them by value and Ray / submitit workers run them without importing this file).

- ``slow_accuracy``: ``accuracy`` after ``sleep`` seconds (an interrupt lands mid-cell);
- ``fragile``: raises for the task named in ``fail_task``, else ``accuracy``;
- ``die_on``: kills its own worker process on every cell of ``task``;
- ``die_once``: the first cell to run (per ``marker`` file) kills its own worker process with SIGKILL
  while the cell's temporary folder exists; every other run is ``accuracy``.
"""

import os
import signal
import time
from pathlib import Path

from icl_circuits.grid import get_analysis, register_analysis


def _accuracy(model, batches):
    return get_analysis("accuracy").run(model, batches)


def slow_accuracy(model, batches, *, sleep: float = 0.3):
    time.sleep(sleep)
    return _accuracy(model, batches)


def fragile(model, batches, *, fail_task: str = "antonym"):
    if batches["icl"].task == fail_task:
        raise RuntimeError(f"fragile fails on {fail_task} by design")
    return _accuracy(model, batches)


def die_on(model, batches, *, task: str):
    if batches["icl"].task == task:
        os.kill(os.getpid(), signal.SIGKILL)
    return _accuracy(model, batches)


def die_once(model, batches, *, marker: str):
    m = Path(marker)
    if not m.exists():
        m.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return _accuracy(model, batches)


for _name, _fn in (("slow_accuracy", slow_accuracy), ("fragile", fragile), ("die_once", die_once), ("die_on", die_on)):
    register_analysis(_name, _fn, replace=True)
