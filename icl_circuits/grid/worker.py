"""What runs a grid's cells in any process: :class:`CellRunner` and the unit of work, :class:`Job`.

A worker (the driver itself under ``local``, a Ray actor, a Slurm task) holds one ``CellRunner``:
it limits torch and BLAS to ``threads``, loads a model the first time one of its cells needs it and
keeps it (one model at a time: a cell of another model frees the first), and runs each :class:`Job`:

1. skip it when the store already holds it, verified (another worker finished it);
2. make the cell's temporary folder, build its prompts, run the analysis;
3. write the Result and its rows and rename the folder into place (``Store.commit``);
4. on an exception, record it with its traceback (``failed/<key>.json``) and go on.

An interrupt (``KeyboardInterrupt``) or a killed process leaves at most a temporary folder, which
the next run removes; nothing half-written is ever named by a key.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
import traceback
from typing import Any, Callable

from icl_circuits.grid.registry import Analysis
from icl_circuits.grid.spec import Cell, ModelSpec
from icl_circuits.grid.store import Store

__all__ = ["Job", "Outcome", "CellRunner", "run_jobs", "set_threads"]


@dataclasses.dataclass(frozen=True)
class Job:
    """One cell to run: the cell, its key, its model's identity and the analysis (carried by value,
    so that an analysis registered in a notebook runs in a worker process too)."""

    key: str
    cell: Cell
    identity: dict[str, Any]
    analysis: Analysis
    version: str = ""  # the package version in the key


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of a job: ``status`` "done" (computed and stored), "present" (already in the
    store, or stored by another worker first) or "failed" (``error`` says why); ``seconds`` of work; ``loaded``: whether this job loaded
    its model; ``worker``: host:pid of the process that ran it."""

    key: str
    status: str
    seconds: float
    loaded: bool
    worker: str
    error: str | None = None


def set_threads(threads: int) -> None:
    """Limit torch (intra- and inter-op) and the BLAS/OpenMP pools of this process to ``threads``."""
    import torch
    from threadpoolctl import threadpool_limits

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


class CellRunner:
    """Runs jobs against one store in this process, loading each model once (module docstring).
    ``models`` are already-loaded models by grid label (``ModelSpec.label``), used instead of loading."""

    def __init__(self, store: str | os.PathLike, *, threads: int | None = 1, executor: str = "local",
                 models: dict[str, Any] | None = None) -> None:
        self.store = Store(store).open()
        if threads is not None:
            set_threads(threads)
        self.executor = executor
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._given = dict(models or {})
        self._model: tuple[str, Any] | None = None
        self.loads = 0
        self.load_seconds = 0.0  # of the last load

    def model(self, spec: ModelSpec) -> tuple[Any, bool]:
        """The loaded model of ``spec`` and whether this call loaded it."""
        if spec.label in self._given:
            return self._given[spec.label], False
        if self._model is not None and self._model[0] == spec.label:
            return self._model[1], False
        from icl_circuits.core.models import load_model

        self._model = None  # free the previous model before loading the next
        t0 = time.perf_counter()
        model = load_model(spec.name, **spec.load_kwargs())
        self.load_seconds = time.perf_counter() - t0
        self._model = (spec.label, model)
        self.loads += 1
        return model, True

    def run(self, job: Job) -> Outcome:
        """Run one job (module docstring); exceptions become failure records, interrupts propagate."""
        t0 = time.perf_counter()
        if self.store.is_done(job.key):
            return Outcome(job.key, "present", 0.0, False, self.worker)
        import torch

        info = {"executor": self.executor, "worker": self.worker, "threads": torch.get_num_threads()}
        tmp = self.store.begin(job.key)
        loaded = False
        try:
            model, loaded = self.model(job.cell.model)
            t1 = time.perf_counter()
            result = job.analysis(model, job.cell)
            seconds = time.perf_counter() - t1
            new = self.store.commit(tmp, job.key, job.cell, job.identity, result, {
                **info, "seconds": round(seconds, 4), "model_loaded": loaded,
                "load_seconds": round(self.load_seconds, 4) if loaded else 0.0, "version": job.version})
            return Outcome(job.key, "done" if new else "present", seconds, loaded, self.worker)
        except Exception as err:
            self.store.record_failure(job.key, job.cell, err, traceback.format_exc(), info)
            return Outcome(job.key, "failed", time.perf_counter() - t0, loaded, self.worker,
                           f"{type(err).__name__}: {err}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a commit; a failure's or interrupt's leftovers


def run_jobs(store: str, jobs: list[Job], threads: int, executor: str,
             on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``jobs`` in order in this process with a fresh :class:`CellRunner` (a Slurm task's body)."""
    runner = CellRunner(store, threads=threads, executor=executor)
    out = []
    for job in jobs:
        o = runner.run(job)
        out.append(o)
        if on_outcome is not None:
            on_outcome(o)
    return out
