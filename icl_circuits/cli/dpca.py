"""``icl-circuits dpca``: dPCA of label-position states per layer (methods/dpca)."""

from __future__ import annotations

import time
from typing import Any

import click

from icl_circuits.cli import common
from icl_circuits.cli.common import (
    OUT_DIR,
    check_task,
    cli,
    emit_json,
    model_option,
    threads_option,
    write_out,
)


@cli.command("dpca")
@model_option
@threads_option
@click.option("--task", default="letter-string", show_default=True, help="A categorization task (letter-string, number, point).")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=128, show_default=True, type=click.IntRange(min=1), help="Number of prompts.")
@click.option("--position", default="answer", show_default=True,
              type=click.Choice(["answer", "separator", "delimiter", "final"]), help="Where states are read.")
@click.option("--components", "n_components", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--regularizer", default="auto", show_default=True, help="'auto' (cross-validated), 'none' or a float lambda.")
@click.option("--n-null", "n_null", default=20, show_default=True, type=click.IntRange(min=0),
              help="Null draws (condition labels redrawn, whole fit repeated) for the p-values; 20 lets p reach "
                   "1/21 < 0.05. Fitting time grows about (1 + N)-fold; 0 skips the null.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer numbers.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json(+.safetensors) and DIR/figure.html.")
def dpca_cmd(model: str, task: str, n_demos: int, n_prompts: int, position: str, n_components: int,
             regularizer: str, n_null: int, seed: int, as_json: bool, out: str | None) -> None:
    """dPCA of label-position states per layer: variance per marginalization, cluster distances."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.dpca.analysis import dpca_by_layer
    from icl_circuits.methods.dpca.states import categorization_task

    check_task(task)
    if regularizer.lower() in ("auto", "none"):
        reg: Any = None if regularizer.lower() == "none" else "auto"
    else:
        try:
            reg = float(regularizer)
        except ValueError:
            raise click.BadParameter(f"expected 'auto', 'none' or a float, got {regularizer!r}", param_hint="--regularizer")
    m = common.load(model)
    t0 = time.time()
    try:
        categorization_task(task, "dpca")  # refused before any prompt is drawn
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        res = dpca_by_layer(m, batch, n_components=n_components, regularizer=reg, position=position,
                            n_null=n_null, seed=seed, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"dPCA of {model}, task {task}, {position} positions ({n_prompts} prompts x {n_demos} demos, "
               f"seed {seed}, {n_null} null draws, {time.time() - t0:.1f}s)")
    click.echo("fraction of condition-mean variance per marginalization:")
    click.echo(res.variance_table().round(3).to_string())
    own = {f: f if f in res.marginalizations else "dpca" for f in res.factors}
    dist = res.distance_table("full").add_suffix(" (full)")
    for f in res.factors:
        dist[f"{f} ({own[f]} subspace)"] = res.distance_table(own[f])[f]
    click.echo("mean Mahalanobis distance between clusters:")
    click.echo(dist.round(3).to_string())
    if out:
        from icl_circuits.viz.dpca import summary

        write_out(out, {"figure.html": summary(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "task": task, "position": position, "seed": seed, "n_prompts": n_prompts,
                   "n_demos": n_demos, "n_null": n_null, "marginalizations": res.marginalizations, "factors": res.factors,
                   "layers": res.summary()})
