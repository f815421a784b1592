"""Benchmark: one experiment grid run by the ``local`` executor (one process) and by ``ray`` (a pool of
actors), into two fresh stores, in one run.

The grid (``icl_circuits.grid.Grid``): 2 models x 2 tasks x 2 analyses x 2 seeds = 16 cells by default,
``smollm2-135m`` and ``gemma3-270m`` (``--models``), ``antonym`` and ``country-capital``, the built-in
analyses ``accuracy`` (first token) and ``task_vector`` (layers ``--layers``), seeds 0 and 1,
``--prompts`` prompts of ``--demos`` demos per cell (32 x 8: cells of a few seconds on one thread).
``--quick``: ``toy-icl`` twice (weights as trained, and processed: ``{name: toy-icl, processing: true}``),
16 prompts, layers 0 2 4, to check the script works in seconds (its cells are too small for the
target: Ray's fixed costs dominate them).

What is measured:

1. ``t_load(m)``: one ``load_model`` of each model in this process first (warm caches; also warms
   the OS file cache so that neither run pays a cold load).
2. ``local``: ``ic.grid.run(grid, store_a, "local", threads=T)``; wall ``W_local``.
3. Ray's start: ``ray.init(address="local", num_cpus=workers * T, include_dashboard=False)``, timed alone as
   ``t_start``; ``run_grid`` then reuses this cluster (it starts none of its own). Then
   ``t_actor``: ``n`` probe actors asked for at once and waited on until each has imported torch and
   ``icl_circuits.grid.worker`` (what each grid worker does first), then killed.
4. ``ray``: ``ic.grid.run(grid, store_b, "ray", workers=n, threads=T)``; wall ``W_ray``. It includes
   starting the ``n`` actor processes (imports of torch and icl_circuits) and their model loads.
5. Both stores are read back with ``ic.grid.load``, joined on the cell columns (``CELL_COLUMNS``) plus
   the row's place within its cell, and compared: max |diff| of ``value`` (and of every numeric
   column); every row must match.

Reported (the formulae):

    ratio              = W_local / W_ray                         (the target: >= 1.6x with 2 workers)
    ratio_with_start   = W_local / (t_start + W_ray)             (a cold `--executor ray` run pays this)
    overhead_E / cell  = (W_E * n_E - sum_c s_c - sum_loads t_load(m)) / C      for E = local (n = 1), ray
    ray scheduling overhead / cell = overhead_ray - overhead_local
    ... less the actors' start     = overhead_ray - n * t_actor / C - overhead_local

where ``C`` is the number of cells, ``s_c`` a cell's ``seconds`` in its ``cell.json`` (building its
prompts and running its analysis: no model load, no store write), the loads are those of that run
(``model_loaded`` in ``cell.json``; ``RunSummary.model_loads`` is checked against them) priced at the
``t_load`` of step 1, and ``n_E`` the executor's workers. ``overhead_E`` is each worker's time not
spent computing cells or loading models, per cell: store writes, planning, job hand-out and result
transfer, and under Ray the actors' start and the idle tail (a worker waiting while the other
finishes). ``overhead_local`` is the part both executors pay (store writes, planning), so the
difference is what Ray adds. The actors start once per run (in parallel), so the second form, the
cost per cell handed out, is what a longer grid would pay. It is an estimate: the probes are not the
grid's actors (which may start a little faster after them), and on a busy machine their start times
vary by seconds, enough to make it negative. ``compute_inflation = sum s_c (ray) / sum s_c
(local)`` says how much slower each cell ran with two workers sharing the machine (memory bandwidth,
the driver and Ray's own processes on the same 2 cores); it is in the ratio, not in the overhead.

Model loads per worker are counted from each cell's ``cell.json`` (``worker``: host:pid,
``model_loaded``); the scheduler's aim is at most one load per worker per model.

Wall clock only: run it on an otherwise idle machine (a busy one makes the ratio meaningless; there
is no ``--cpu-time`` here, the point being parallel wall time). The last line printed is one JSON
object with every timing, count and ratio.

    cd bench && python bench_grid.py [--quick] [--models smollm2-135m gemma3-270m] [--workers 2] [--threads 1]
                                     [--prompts 32] [--demos 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import parse_only  # bench/timing.py, next to this script

REAL_MODELS = ["smollm2-135m", "gemma3-270m"]
QUICK_MODELS = ["toy-icl", '{"name": "toy-icl", "processing": true}']


def model_arg(text: str) -> Any:
    """A ``--models`` entry: a load_model name, or a JSON mapping ``{"name": ..., "processing": ...}``."""
    return json.loads(text) if text.lstrip().startswith("{") else text


def store_cells(store: str) -> list[dict[str, Any]]:
    """Every cell's ``cell.json`` of ``store``."""
    from icl_circuits.grid import Store

    st = Store(store)
    return [st.meta(k) for k in st.done_keys()]


def run_stats(metas: list[dict[str, Any]], t_load: dict[str, float]) -> dict[str, Any]:
    """Per-worker cells, loads (by model) and busy seconds (cells + loads priced at ``t_load``)."""
    from icl_circuits.grid import ModelSpec

    workers: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: {"cells": 0, "cell_s": 0.0, "loads": collections.Counter(), "load_s": 0.0})
    for m in metas:
        w = workers[m["worker"]]
        label = ModelSpec.of(m["cell"]["model"]).label
        w["cells"] += 1
        w["cell_s"] += float(m["seconds"])
        if m["model_loaded"]:
            w["loads"][label] += 1
            w["load_s"] += t_load[label]
    out = {k: {**v, "loads": dict(v["loads"]), "busy_s": v["cell_s"] + v["load_s"]} for k, v in workers.items()}
    return {"workers": out, "cell_s": sum(v["cell_s"] for v in out.values()),
            "load_s": sum(v["load_s"] for v in out.values()),
            "loads": sum(sum(v["loads"].values()) for v in out.values()),
            "max_loads_per_worker_per_model": max((n for v in out.values() for n in v["loads"].values()), default=0)}


class _Probe:
    """An actor that imports what a grid worker imports (torch, icl_circuits.grid.worker), then answers."""

    def ready(self) -> int:
        import icl_circuits.grid.worker  # noqa: F401
        import torch  # noqa: F401

        return os.getpid()


def actor_start(ray: Any, workers: int, threads: int) -> float:
    """Seconds from asking for ``workers`` actors like a grid's workers, all at once, to the last one's
    first answer (then they are killed)."""
    t0 = time.perf_counter()
    probes = [ray.remote(_Probe).options(num_cpus=threads).remote() for _ in range(workers)]
    ray.get([p.ready.remote() for p in probes])
    seconds = time.perf_counter() - t0
    for p in probes:
        ray.kill(p)
    return seconds


def compare(store_a: str, store_b: str) -> dict[str, Any]:
    """Join both stores' rows on the cell columns and the row's place in its cell; max |diff|."""
    import numpy as np
    import pandas as pd

    from icl_circuits.grid import CELL_COLUMNS, load

    a, b = load(store_a), load(store_b)
    for df in (a, b):
        df["row"] = df.groupby("key").cumcount()
    on = CELL_COLUMNS + ["row"]
    ja, jb = a.assign(**{c: a[c].astype(str) for c in on}), b.assign(**{c: b[c].astype(str) for c in on})
    m = ja.merge(jb, on=on, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = int((m["_merge"] == "both").sum())
    both = m[m["_merge"] == "both"]
    numeric = [c for c in a.columns if c not in on and c in b.columns and pd.api.types.is_numeric_dtype(a[c])
               and not pd.api.types.is_bool_dtype(a[c])]

    def maxdiff(c: str) -> float:
        x, y = both[f"{c}_a"].to_numpy(float), both[f"{c}_b"].to_numpy(float)
        same_nan = np.isnan(x) & np.isnan(y)
        d = np.abs(x - y)
        d[same_nan] = 0.0
        return float(np.nan_to_num(d, nan=np.inf).max()) if len(d) else 0.0

    diffs = {c: maxdiff(c) for c in numeric}
    return {"rows_a": len(a), "rows_b": len(b), "rows_matched": matched,
            "max_abs_diff_value": diffs.get("value", float("nan")),
            "max_abs_diff_numeric": max(diffs.values(), default=0.0), "numeric_columns": numeric}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy-icl twice, 16 prompts: checks the script runs")
    ap.add_argument("--models", nargs="+", type=model_arg, default=None,
                    help="load_model names or JSON mappings {\"name\": ..., \"processing\": ...} "
                         f"(default {' '.join(REAL_MODELS)}; --quick: toy-icl, and toy-icl processed)")
    ap.add_argument("--tasks", nargs="+", default=["antonym", "country-capital"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--prompts", type=int, default=None, help="prompts per cell (default 32; quick 16)")
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--layers", nargs="+", type=int, default=None,
                    help="task_vector layers (default 2 5 8 11; quick 0 2 4)")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker, local run too (default 1)")
    ap.add_argument("--keep", default=None, help="write the two stores to DIR/local and DIR/ray and keep them "
                                                "(DIR must not exist; default: temporary, removed)")
    args = ap.parse_args(argv)
    parse_only(args)

    import ray

    from icl_circuits import load_model
    from icl_circuits.grid import Grid, Store, run_grid
    from icl_circuits.grid.worker import set_threads

    set_threads(args.threads)
    models = args.models or ([model_arg(m) for m in QUICK_MODELS] if args.quick else REAL_MODELS)
    n_prompts = args.prompts or (16 if args.quick else 32)
    layers = args.layers or ([0, 2, 4] if args.quick else [2, 5, 8, 11])
    grid = Grid(models=models, tasks=args.tasks, analyses=["accuracy", "task_vector"], seeds=args.seeds,
                n_demos=[args.demos], n_prompts=n_prompts, name="bench-grid",
                params={"accuracy": {"metrics": ["first_token"]}, "task_vector": {"layers": layers}})
    specs = list(grid.models)
    C = len(grid)
    print(f"grid: {len(specs)} models x {len(grid.tasks)} tasks x 2 analyses x {len(grid.seeds)} seeds = {C} cells, "
          f"{n_prompts} prompts x {args.demos} demos; task_vector layers {layers}; {args.workers} Ray workers x "
          f"{args.threads} thread(s); {os.cpu_count()} CPUs")

    # ---- 1. one load of each model here: its price, and warm caches for both runs
    t_load: dict[str, float] = {}
    for spec in specs:
        t0 = time.perf_counter()
        model = load_model(spec.name, **spec.load_kwargs())
        t_load[spec.label] = time.perf_counter() - t0
        del model
        gc.collect()
    print("model load (warm, here): " + ", ".join(f"{k} {v:.2f} s" for k, v in t_load.items()))

    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=False)
        cleanup = None
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-grid-"))
        cleanup = root
    store_local, store_ray = str(root / "local"), str(root / "ray")
    failures = []
    try:
        # ---- 2. local: this process, one thread
        s_local = run_grid(grid, store_local, "local", threads=args.threads, progress=False)
        w_local = s_local.seconds
        failures += [(store_local, k) for k in s_local.failed_keys]

        # ---- 3. Ray's cluster, started (and timed) alone; run_grid reuses it
        t0 = time.perf_counter()
        # address="local": a fresh cluster on this machine even where RAY_ADDRESS or a `ray start` names one
        ray.init(address="local", num_cpus=args.workers * args.threads, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        t_start = time.perf_counter() - t0
        try:
            t_actor = actor_start(ray, min(args.workers, C), args.threads)
            # ---- 4. ray: workers x threads
            s_ray = run_grid(grid, store_ray, "ray", workers=args.workers, threads=args.threads, progress=False)
        finally:
            ray.shutdown()
        w_ray = s_ray.seconds
        failures += [(store_ray, k) for k in s_ray.failed_keys]

        local = run_stats(store_cells(store_local), t_load)
        rays = run_stats(store_cells(store_ray), t_load)
        n_ray = min(args.workers, C)
        over_local = (w_local * 1 - local["cell_s"] - local["load_s"]) / C
        over_ray = (w_ray * n_ray - rays["cell_s"] - rays["load_s"]) / C
        over_ray_run = over_ray - n_ray * t_actor / C  # less the actors' start
        # ---- 5. the same numbers in both stores
        cmp = compare(store_local, store_ray) if not failures else {}
    finally:
        for store, key in failures:
            f = Store(store).failure(key) or {}
            print(f"FAILED {Path(store).name} {key}: {f.get('error')}")
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)

    ratio, ratio_start = w_local / w_ray, w_local / (t_start + w_ray)
    inflation = rays["cell_s"] / local["cell_s"] if local["cell_s"] else float("nan")
    print(f"local (1 process, {args.threads} thread(s)): {w_local:.2f} s wall; cells {local['cell_s']:.2f} s, "
          f"{local['loads']} model loads ({local['load_s']:.2f} s); overhead {1e3 * over_local:.0f} ms/cell")
    print(f"ray ({n_ray} workers x {args.threads} thread(s)): {w_ray:.2f} s wall (cluster start {t_start:.2f} s "
          f"not included); cells {rays['cell_s']:.2f} s ({inflation:.2f}x local's: shared cores), "
          f"{rays['loads']} model loads ({rays['load_s']:.2f} s); overhead {1e3 * over_ray:.0f} ms/cell, "
          f"{1e3 * over_ray_run:.0f} ms/cell less the actors' start (estimated by {n_ray} probe actors: "
          f"{t_actor:.2f} s)")
    for w, v in sorted(rays["workers"].items()):
        loads = ", ".join(f"{m} x{n}" for m, n in v["loads"].items()) or "none"
        print(f"  worker {w}: {v['cells']} cells, busy {v['busy_s']:.2f} s of {w_ray:.2f} s; loads: {loads}")
    one_load = rays["max_loads_per_worker_per_model"] <= 1
    print(f"model loads: local {s_local.model_loads} (cell.json {local['loads']}), ray {s_ray.model_loads} "
          f"(cell.json {rays['loads']}); at most one per worker per model: {'yes' if one_load else 'NO'}")
    target = "" if not args.quick else " (quick: cells too small for the target)"
    print(f"ratio local / ray: {ratio:.2f}x (target >= 1.6x{target}); with Ray's cluster start "
          f"({t_start:.2f} s): {ratio_start:.2f}x; Ray's scheduling overhead "
          f"{1e3 * (over_ray - over_local):.0f} ms/cell over local's {1e3 * over_local:.0f} ms/cell "
          f"({1e3 * (over_ray_run - over_local):.0f} ms/cell less the actors' start)")
    if cmp:
        print(f"same numbers: {cmp['rows_matched']} of {cmp['rows_a']} / {cmp['rows_b']} rows joined; max |diff| "
              f"value {cmp['max_abs_diff_value']:.2e}, any numeric column {cmp['max_abs_diff_numeric']:.2e}")

    def run_json(s, st, wall, over):
        return {"wall_s": wall, "cell_s": st["cell_s"], "loads": s.model_loads, "loads_cell_json": st["loads"],
                "load_s": st["load_s"], "overhead_ms_per_cell": 1e3 * over, "computed": s.computed,
                "failed": s.failed, "workers": st["workers"]}

    out = {
        "bench": "grid", "mode": "quick" if args.quick else "default", "cpus": os.cpu_count(),
        "models": [m.label for m in specs], "tasks": list(grid.tasks), "analyses": list(grid.analyses),
        "seeds": list(grid.seeds), "n_prompts": n_prompts, "n_demos": args.demos, "layers": layers, "cells": C,
        "workers": n_ray, "threads": args.threads, "model_load_s": t_load,
        "local": run_json(s_local, local, w_local, over_local),
        "ray": {**run_json(s_ray, rays, w_ray, over_ray), "cluster_start_s": t_start,
                "wall_with_start_s": t_start + w_ray, "actor_start_s": t_actor,
                "overhead_ms_per_cell_less_actor_start": 1e3 * over_ray_run},
        "ratio": ratio, "ratio_with_start": ratio_start, "target_ratio": 1.6, "target_met": ratio >= 1.6,
        "scheduling_overhead_ms_per_cell": 1e3 * (over_ray - over_local),
        "scheduling_overhead_ms_per_cell_less_actor_start": 1e3 * (over_ray_run - over_local),
        "compute_inflation": inflation,
        "one_load_per_worker_per_model": one_load, "compare": cmp, "failed": len(failures),
    }
    print(json.dumps(out))
    if failures or (cmp and cmp["rows_matched"] != max(cmp["rows_a"], cmp["rows_b"])):
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
