"""Executors: how a grid's pending jobs reach workers. Each takes the jobs and a callback that the
driver's progress display receives every :class:`~icl_circuits.grid.worker.Outcome` through.

- :func:`run_local`: serial, in this process (notebooks, tests, debugging). Models given by the
  caller are used as they are.
- :func:`run_ray`: a pool of Ray actors, each a :class:`~icl_circuits.grid.worker.CellRunner` with
  ``num_cpus=threads`` (and ``num_gpus`` when asked): a local cluster (``ray.init(num_cpus=workers *
  threads)``) or an existing one (``address``). Jobs are handed out one at a time: a free actor takes
  the next job of the model it holds, else a job of the model with the most jobs left per actor
  holding it, so each actor loads each model at most once in the usual case. An actor whose process
  dies is restarted by Ray and its job retried (``max_restarts`` / ``max_task_retries``); a job that
  still cannot run is recorded as failed.
- :func:`run_submitit`: one submitit job per model (a Slurm job array; ``cluster="local"`` runs them
  as local processes, as the tests do), each running its model's jobs in order.

With Ray or Slurm on several machines the store must be on a filesystem every worker sees.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Any, Callable

from icl_circuits.grid.registry import by_value_modules
from icl_circuits.grid.store import Store
from icl_circuits.grid.worker import CellRunner, Job, Outcome, run_jobs

__all__ = ["run_local", "run_ray", "run_submitit", "EXECUTORS"]

EXECUTORS = ("local", "ray", "submitit")
OnOutcome = Callable[[Outcome], None]


def run_local(store: str, jobs: list[Job], *, on_outcome: OnOutcome, threads: int | None = 1,
              models: dict[str, Any] | None = None, on_start: Callable[[Job], None] | None = None) -> dict[str, Any]:
    """Run ``jobs`` one after another in this process."""
    runner = CellRunner(store, threads=threads, executor="local", models=models)
    for job in jobs:
        if on_start is not None:
            on_start(job)
        on_outcome(runner.run(job))
    return {"loads": runner.loads}


class _RayWorker:
    """A Ray actor's body: one CellRunner for the actor's life. An actor given no GPU hides the GPUs
    (Ray leaves them visible to it, and load_model would put every such actor's model on GPU 0)."""

    def __init__(self, store: str, threads: int, gpus: float = 0.0) -> None:
        if not gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # read when CUDA initialises, at the first model load
        self.runner = CellRunner(store, threads=threads, executor="ray")

    def run(self, job: Job) -> Outcome:
        return self.runner.run(job)


def _next_job(pending: dict[str, collections.deque], holding: dict[str, int], held: str | None) -> Job | None:
    """The next job for an actor holding model ``held`` (None: nothing loaded): a job of ``held`` while
    any is left; else one of the model with the most jobs left per actor holding it, counting only
    models that no actor holds or that have at least two jobs waiting per holder (taking the last job
    or two of a model another actor is on would cost a model load to save at most one cell's time)."""
    if held is not None and pending.get(held):
        return pending[held].popleft()
    left = [(len(q) / (holding.get(m, 0) + 1), m) for m, q in pending.items()
            if q and (not holding.get(m) or len(q) >= 2 * holding[m])]
    if not left:
        return None
    return pending[max(left)[1]].popleft()


def run_ray(store: str, jobs: list[Job], *, on_outcome: OnOutcome, workers: int = 2, threads: int = 1,
            gpus_per_worker: float = 0.0, address: str | None = None, dashboard: bool = False,
            max_retries: int = 2, say: Callable[[str], None] = print,
            on_start: Callable[[Job], None] | None = None) -> dict[str, Any]:
    """Run ``jobs`` on ``workers`` Ray actors (module docstring). Starts a local Ray cluster unless
    Ray is already initialised or ``address`` names one; a cluster started here is shut down at the end."""
    try:
        import ray
        from ray.exceptions import RayActorError, WorkerCrashedError
    except ImportError:
        raise ImportError("the ray executor needs Ray: pip install 'icl-circuits[ray]' (or pip install 'ray[default]')") from None
    started = False
    if not ray.is_initialized():
        # address="local": start a cluster here even when RAY_ADDRESS or a `ray start` cluster is around
        kwargs: dict[str, Any] = {"address": address} if address else {"address": "local", "num_cpus": workers * threads}
        ctx = ray.init(**kwargs, include_dashboard=dashboard, logging_level="ERROR", log_to_driver=False,
                       configure_logging=True)
        started = True
        url = getattr(ctx, "dashboard_url", None)
        if dashboard and url:
            say(f"Ray dashboard: http://{url}")
    for mod in by_value_modules([j.analysis for j in jobs]):
        ray.cloudpickle.register_pickle_by_value(mod)
    actor_cls = ray.remote(_RayWorker).options(num_cpus=threads, num_gpus=gpus_per_worker,
                                               max_restarts=max_retries, max_task_retries=max_retries)
    new_actor = lambda: actor_cls.remote(str(store), threads, gpus_per_worker)  # noqa: E731
    actors = [new_actor() for _ in range(max(1, min(workers, len(jobs))))]
    pending: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    for job in jobs:
        pending[job.cell.model.label].append(job)
    held: list[str | None] = [None] * len(actors)
    attempts: collections.Counter = collections.Counter()
    in_flight: dict[Any, tuple[int, Job]] = {}
    loads = 0

    def dispatch(i: int) -> None:
        busy = {j for j, _ in in_flight.values()}  # an idle actor holds a model but is not working on it
        holding = collections.Counter(held[j] for j in busy if j != i and held[j] is not None)
        job = _next_job(pending, holding, held[i])
        if job is None:
            return
        held[i] = job.cell.model.label
        if on_start is not None:
            on_start(job)
        in_flight[actors[i].run.remote(job)] = (i, job)

    try:
        while in_flight or any(pending.values()):
            if not in_flight:  # every actor idle (at the start, or a requeued job): give each one work
                for i in range(len(actors)):
                    dispatch(i)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                i, job = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as err:
                    # the actor died past Ray's own restarts and retries: a fresh actor takes its place, and
                    # only the job it was running counts an attempt
                    ray.kill(actors[i])
                    actors[i], held[i] = new_actor(), None
                    attempts[job.key] += 1
                    if attempts[job.key] <= max_retries:
                        pending[job.cell.model.label].appendleft(job)
                        dispatch(i)
                        continue
                    outcome = Outcome(job.key, "failed", 0.0, False, "ray", f"worker died {attempts[job.key]} times: {err}")
                    Store(store).record_failure(job.key, job.cell, outcome.error or "", "", {"executor": "ray"})
                loads += int(outcome.loaded)
                on_outcome(outcome)
                dispatch(i)
    finally:  # also on Ctrl-C: killing the actors stops their cells (their temporary folders are removed)
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    return {"loads": loads, "workers": len(actors)}


def run_submitit(store: str, jobs: list[Job], *, on_outcome: OnOutcome, threads: int = 1, folder: str | None = None,
                 cluster: str | None = None, slurm: dict[str, Any] | None = None, poll: float = 1.0,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``jobs`` as one submitit job per model (a job array on Slurm). ``cluster``: None picks
    Slurm when ``sbatch`` is there, else local processes; ``slurm``: extra executor parameters
    (``slurm_partition``, ``timeout_min``, ``gpus_per_node``...)."""
    try:
        import submitit
    except ImportError:
        raise ImportError("the submitit executor needs submitit: pip install 'icl-circuits[slurm]'") from None
    import cloudpickle

    for mod in by_value_modules([j.analysis for j in jobs]):
        cloudpickle.register_pickle_by_value(mod)
    groups: dict[str, list[Job]] = collections.defaultdict(list)
    for job in jobs:
        groups[job.cell.model.label].append(job)
    ex = submitit.AutoExecutor(folder=folder or str(Path(store) / "submitit"), cluster=cluster)
    ex.update_parameters(**{"cpus_per_task": threads, "timeout_min": 24 * 60, **(slurm or {})})
    batches = list(groups.values())
    handles = ex.map_array(run_jobs, [str(store)] * len(batches), batches, [threads] * len(batches),
                           ["submitit"] * len(batches))
    say(f"submitit: {len(handles)} job(s) on {ex.cluster}: {', '.join(str(h.job_id) for h in handles)}")
    st, loads, reported = Store(store), 0, set()

    def report(o: Outcome) -> None:
        if o.key not in reported:
            reported.add(o.key)
            on_outcome(o)

    try:
        while not all(h.done() for h in handles):  # cells as they land in the store, while the jobs run
            for job in jobs:
                if job.key not in reported and st.cell_dir(job.key).is_dir() and st.is_done(job.key):
                    meta = st.meta(job.key)
                    report(Outcome(job.key, "done", float(meta.get("seconds", 0.0)), bool(meta.get("model_loaded")),
                                   str(meta.get("worker", "submitit"))))
            time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C stops the jobs too (scancel on Slurm), not only this driver
        for h in handles:
            h.cancel(check=False)
        raise
    for h, batch in zip(handles, batches):
        try:
            outs = h.result()
        except Exception as err:  # the job itself died (submitit's FailedJobError, UncompletedJobError)
            outs = []
            for j in batch:
                if st.is_done(j.key):
                    continue
                o = Outcome(j.key, "failed", 0.0, False, "submitit", f"job {h.job_id} failed: {err}")
                st.record_failure(j.key, j.cell, o.error or "", "", {"executor": "submitit"})
                outs.append(o)
        for o in outs:
            loads += int(o.loaded)
            report(o)
    return {"loads": loads, "jobs": len(handles)}
