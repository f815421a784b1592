"""Run a grid into a store: :func:`run_grid` (``icl-circuits grid run``) and :func:`grid_status`.

The driver never computes science. It

1. checks the grid (every analysis registered) and hashes each model's identity once;
2. keys every cell and records the grid in the store (``specs/``);
3. sorts the cells: verified in the store (skipped: a rerun computes only what is missing), damaged
   (removed, then recomputed), failed before (skipped unless ``retry_failed``), pending;
4. hands the pending ones to the executor and shows progress: a tqdm bar of cells done / failed /
   running with its ETA (in a terminal or a notebook), one line per finished cell with ``verbose``;
5. removes temporary folders left by killed workers, and returns a :class:`RunSummary`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import time
from typing import Any, Callable

from tqdm.auto import tqdm

from icl_circuits.grid.executors import EXECUTORS, run_local, run_ray, run_submitit
from icl_circuits.grid.identity import model_identity
from icl_circuits.grid.registry import get_analysis
from icl_circuits.grid.spec import Cell, Grid
from icl_circuits.grid.store import CellStatus, Store
from icl_circuits.grid.worker import Job, Outcome

__all__ = ["run_grid", "grid_status", "plan", "RunSummary"]


def package_version() -> str:
    """The installed icl-circuits version (part of every cell's key)."""
    try:
        return importlib.metadata.version("icl-circuits")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        from icl_circuits import __version__

        return __version__


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run did: ``total`` cells in the grid; ``computed`` now; ``present`` (already in the store,
    skipped); ``failed`` (now, or before and not retried: ``failed_keys``); ``recomputed_corrupt``
    (damaged cells found and recomputed); ``model_loads``; ``seconds`` of wall time; ``executor``."""

    total: int
    computed: int
    present: int
    failed: int
    failed_keys: list[str]
    recomputed_corrupt: int
    model_loads: int
    seconds: float
    executor: str
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.interrupted

    def line(self) -> str:
        if self.computed == 0 and self.failed == 0 and not self.interrupted:
            return f"nothing to do: all {self.total} cells are in the store"
        return (f"{self.computed} computed, {self.present} already in the store, {self.failed} failed"
                f"{f', {self.recomputed_corrupt} damaged cells recomputed' if self.recomputed_corrupt else ''}"
                f" ({self.total} cells, {self.model_loads} model loads, {self.seconds:.1f} s, {self.executor})"
                f"{'; interrupted: rerun to compute the rest' if self.interrupted else ''}")


def plan(grid: Grid) -> list[Job]:
    """Every cell of ``grid`` as a job: its key (model identities hashed once), analysis resolved."""
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an icl_circuits.grid.Grid, got {type(grid).__name__}")
    analyses = {a: get_analysis(a) for a in grid.analyses}
    identities = {m.label: model_identity(m) for m in grid.models}
    version = package_version()
    jobs, seen = [], set()
    for cell in grid.cells():
        ident = identities[cell.model.label]
        key = cell.key(ident, version)
        if key in seen:  # pragma: no cover - distinct axes give distinct keys
            continue
        seen.add(key)
        jobs.append(Job(key, cell, ident, analyses[cell.analysis], version))
    return jobs


class _Progress:
    """The bar and the counts of one run."""

    def __init__(self, total: int, name: str, show: bool, verbose: bool, say: Callable[[str], None]) -> None:
        self.bar = tqdm(total=total, desc=name, unit="cell", disable=not show, dynamic_ncols=True)
        self.verbose, self.say = verbose, say
        self.counts = {"done": 0, "present": 0, "failed": 0}
        self.running = 0
        self.failed: list[str] = []
        self.cells: dict[str, Cell] = {}

    def start(self, job: Job) -> None:
        self.running += 1
        self.cells[job.key] = job.cell
        self._postfix()

    def __call__(self, o: Outcome) -> None:
        self.running = max(0, self.running - 1)
        self.counts[o.status] += 1
        if o.status == "failed":
            self.failed.append(o.key)
        self.bar.update(1)
        self._postfix()
        if self.verbose:
            cell = self.cells.get(o.key)
            what = cell.label if cell is not None else o.key
            extra = f": {o.error}" if o.error else ""
            self.bar.write(f"{o.status:<7} {what} [{o.key}] {o.seconds:.2f} s on {o.worker}{extra}")

    def _postfix(self) -> None:
        self.bar.set_postfix(done=self.counts["done"] + self.counts["present"], failed=self.counts["failed"],
                             running=self.running, refresh=False)


def run_grid(grid: Grid | str | os.PathLike, store: str | os.PathLike, executor: str = "local", *,
             workers: int = 2, threads: int = 1, retry_failed: bool = False, progress: bool = True,
             verbose: bool = False, models: dict[str, Any] | None = None, address: str | None = None,
             gpus_per_worker: float = 0.0, dashboard: bool = False, max_retries: int = 2, cluster: str | None = None,
             slurm: dict[str, Any] | None = None, say: Callable[[str], None] = print) -> RunSummary:
    """Run every cell of ``grid`` (a Grid or a spec file) that ``store`` does not hold yet (module docstring).

    ``executor``: "local" (this process, whose torch and BLAS threads are set to ``threads``; ``models``
    maps a grid model label to an already-loaded model),
    "ray" (``workers`` actors with ``threads`` threads and ``gpus_per_worker`` GPUs each; a local cluster,
    or ``address``; ``dashboard`` starts Ray's dashboard and prints its link; a worker that dies is
    restarted and its cell retried up to ``max_retries`` times, then the cell is recorded as failed) or "submitit" (one job per
    model; ``cluster`` None picks Slurm when present, "local" runs local processes; ``slurm`` passes
    executor parameters). Cells that raise are recorded and the rest go on; ``retry_failed`` reruns
    cells recorded as failed. A KeyboardInterrupt stops the run (the cells finished so far stay)
    and is raised again after the store is tidied."""
    if isinstance(grid, (str, os.PathLike)):
        grid = Grid.from_file(grid)
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    for name, v in (("workers", workers), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if models is not None and executor != "local":
        raise ValueError("models (already-loaded models) can only be used with executor='local'")
    t0 = time.perf_counter()
    jobs = plan(grid)
    st = Store(store).open()
    with st.driver_lock():
        return _drive(grid, jobs, st, executor, t0, workers=workers, threads=threads, retry_failed=retry_failed,
                      progress=progress, verbose=verbose, models=models, address=address,
                      gpus_per_worker=gpus_per_worker, dashboard=dashboard, max_retries=max_retries, cluster=cluster,
                      slurm=slurm, say=say)


def _drive(grid: Grid, jobs: list[Job], st: Store, executor: str, t0: float, *, workers: int, threads: int,
           retry_failed: bool, progress: bool, verbose: bool, models: dict[str, Any] | None, address: str | None,
           gpus_per_worker: float, dashboard: bool, max_retries: int, cluster: str | None,
           slurm: dict[str, Any] | None, say: Callable[[str], None]) -> RunSummary:
    """Steps 2-5 of the module docstring, with the store's driver lock held."""
    st.write_spec(grid, [j.key for j in jobs])
    st.clean_temporary()
    present = set(st.done_keys())
    todo, n_present, corrupt, old_failed = [], 0, 0, []
    for job in jobs:
        if job.key in present:
            if st.verify(job.key) is None:
                n_present += 1
                continue
            st.discard(job.key)
            corrupt += 1
        elif st.failure(job.key) is not None and not retry_failed:
            old_failed.append(job.key)
            continue
        todo.append(job)
    prog = _Progress(len(todo), grid.name, progress and bool(todo), verbose, say)
    stats: dict[str, Any] = {}
    interrupted = False
    try:
        if todo and executor == "local":
            stats = run_local(str(st.root), todo, on_outcome=prog, threads=threads, models=models, on_start=prog.start)
        elif todo and executor == "ray":
            stats = run_ray(str(st.root), todo, on_outcome=prog, workers=workers, threads=threads,
                            gpus_per_worker=gpus_per_worker, address=address, dashboard=dashboard,
                            max_retries=max_retries, say=say, on_start=prog.start)
        elif todo:
            stats = run_submitit(str(st.root), todo, on_outcome=prog, threads=threads, cluster=cluster, slurm=slurm,
                                 say=say)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        prog.bar.close()
        st.clean_temporary()
        summary = RunSummary(
            total=len(jobs), computed=prog.counts["done"], present=n_present + prog.counts["present"],
            failed=prog.counts["failed"] + len(old_failed), failed_keys=prog.failed + old_failed,
            recomputed_corrupt=corrupt, model_loads=int(stats.get("loads", 0)), seconds=time.perf_counter() - t0,
            executor=executor, interrupted=interrupted)
        if interrupted:
            say(summary.line())
    return summary


def grid_status(store: str | os.PathLike, grid: Grid | str | os.PathLike | None = None) -> CellStatus:
    """Done / failed / missing / damaged cells of ``store``: of ``grid`` when given, else of every grid
    run on it."""
    keys = None
    if grid is not None:
        keys = [j.key for j in plan(grid if isinstance(grid, Grid) else Grid.from_file(grid))]
    return Store(store).status(keys)
