"""``icl-circuits grid``: run a grid spec into a store, and say what a store holds.

    icl-circuits grid run examples/grids/quick.yaml --store runs/quick [--executor local|ray|submitit]
    icl-circuits grid status runs/quick [--spec SPEC]
    icl-circuits grid analyses

``run`` exits with status 1 when a cell failed (``status`` lists it; ``--retry-failed`` reruns it)
and 130 on Ctrl-C (the finished cells stay; run again to compute the rest).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from icl_circuits.cli.common import cli, emit_json, json_option, threads_option


@cli.group("grid")
def grid_group() -> None:
    """Experiment grids: models x tasks x analyses x seeds, resumable, on one process, Ray or Slurm."""


def _slurm_params(_ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE (e.g. slurm_partition=gpu), got {v!r}", param=param)
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _imports(_ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from icl_circuits.grid.registry import import_analyses

    for name in values:  # modules or .py files that register analyses (icl_circuits.grid.register_analysis)
        try:
            import_analyses(name)
        except Exception as err:
            raise click.BadParameter(f"cannot import {name!r}: {type(err).__name__}: {err}", param=param)
    return values


@grid_group.command("run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--store", required=True, type=click.Path(file_okay=False), help="The store folder (made if absent).")
@click.option("--executor", type=click.Choice(["local", "ray", "submitit"]), default="local", show_default=True,
              help="local: this process; ray: Ray actors; submitit: one Slurm job per model (local processes "
                   "without Slurm).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Ray actors.")
@click.option("--address", default=None, help="An existing Ray cluster (default: start a local one).")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="GPUs per Ray actor (e.g. 1 on a multi-GPU node, 0.5 to share one).")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Start Ray's dashboard with a local cluster and print its link.")
@click.option("--cluster", default=None, type=click.Choice(["slurm", "local", "debug"]),
              help="submitit's cluster (default: Slurm when sbatch is there, else local processes).")
@click.option("--slurm", "slurm", multiple=True, callback=_slurm_params, metavar="KEY=VALUE",
              help="A submitit executor parameter, e.g. slurm_partition=gpu or timeout_min=120 (repeatable).")
@click.option("--import", "imports", multiple=True, callback=_imports, metavar="MODULE", expose_value=False,
              is_eager=True, help="Import MODULE (a module name or a .py file) first: it registers analyses of its "
                                  "own (repeatable).")
@click.option("--retry-failed", is_flag=True, help="Rerun cells recorded as failed.")
@click.option("--verbose", "-v", is_flag=True, help="One line per finished cell.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="The progress bar.")
@threads_option
@json_option()
def grid_run(spec: str, store: str, executor: str, workers: int, address: str | None, gpus_per_worker: float,
             dashboard: bool, cluster: str | None, slurm: dict[str, Any], retry_failed: bool, verbose: bool,
             progress: bool, as_json: bool) -> None:
    """Run every cell of the grid SPEC (a .yaml or .toml file) that the store does not hold yet.

    A cell whose result is stored is never recomputed: after a crash or Ctrl-C, or with one more seed,
    only the missing cells run. --threads is per worker (torch and BLAS threads of each actor or task)."""
    import torch

    from icl_circuits.grid import GridSpecError, run_grid
    from icl_circuits.grid.store import GridStoreError

    try:
        summary = run_grid(spec, store, executor, workers=workers, threads=torch.get_num_threads(),
                           retry_failed=retry_failed, progress=progress and not as_json, verbose=verbose,
                           address=address, gpus_per_worker=gpus_per_worker, dashboard=dashboard, cluster=cluster,
                           slurm=slurm, say=lambda s: click.echo(s, err=True))
    except (GridSpecError, GridStoreError, ValueError, ImportError) as err:
        raise click.ClickException(str(err))
    except KeyboardInterrupt:
        click.echo("interrupted; the finished cells are stored: run the same command again to compute the rest",
                   err=True)
        sys.exit(130)
    click.echo(summary.line(), err=as_json)
    if summary.failed:
        click.echo(f"{summary.failed} cell(s) failed: `icl-circuits grid status {store}` lists them; "
                   "--retry-failed reruns them", err=True)
    if as_json:
        emit_json({k: v for k, v in summary.__dict__.items()})
    if summary.failed:
        sys.exit(1)


@grid_group.command("status")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--spec", default=None, type=click.Path(dir_okay=False), help="Only this grid's cells.")
@threads_option
@json_option()
def grid_status_cmd(store: str, spec: str | None, as_json: bool) -> None:
    """Done / failed / missing / damaged cells of STORE (of every grid run on it, or of --spec)."""
    from icl_circuits.grid import GridSpecError, Store, grid_status
    from icl_circuits.grid.store import GridStoreError

    try:
        st = grid_status(store, spec)
    except (GridSpecError, GridStoreError) as err:
        raise click.ClickException(str(err))
    failures = {k: (Store(store).failure(k) or {}) for k in st.failed}
    if as_json:
        emit_json({"done": len(st.done), "failed": len(st.failed), "missing": len(st.missing),
                   "corrupt": len(st.corrupt), "failed_cells": {k: f.get("error") for k, f in failures.items()},
                   "corrupt_cells": st.corrupt})
        return
    click.echo(f"{len(st.done)} done, {len(st.failed)} failed, {len(st.missing)} missing, {len(st.corrupt)} damaged "
               f"({st.total} cells)")
    for k, f in failures.items():
        cell = f.get("cell") or {}
        click.echo(f"failed  {k}  {cell.get('model', {}).get('name')} {cell.get('task')} {cell.get('analysis')} "
                   f"seed={cell.get('seed')}: {f.get('error')}")
    for k in st.corrupt:
        click.echo(f"damaged {k}  (recomputed by the next run)")


@grid_group.command("analyses")
@threads_option
def grid_analyses() -> None:
    """The analyses a grid can name, with what each computes."""
    from icl_circuits.grid import get_analysis, list_analyses

    for name in list_analyses():
        click.echo(f"{name:<14} {get_analysis(name).doc.splitlines()[0] if get_analysis(name).doc else ''}")
