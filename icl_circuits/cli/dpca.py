"""``icl-circuits dpca``: dPCA of label-position states per layer (methods/dpca)."""

from __future__ import annotations

import time
from typing import Any

import click

from icl_circuits.cli import common
from icl_circuits.cli.common import (
    cli,
    demos_option,
    emit_json,
    json_option,
    layer_list,
    layers_option,
    model_option,
    out_option,
    prompts_option,
    seed_option,
    task_option,
    threads_option,
    write_out,
)


def default_layers(task: str, position: str, n_layers: int) -> list[int]:
    """The layers ``dpca`` analyses by default: ``0..n_layers``, without layer 0 (the token embeddings) unless
    ``position`` is ``answer`` and ``task`` draws its label words per prompt. Elsewhere layer 0 holds one
    token per class (a fixed label word, or the same separator in every prompt): no within-class variance,
    a singular covariance (the report leaves layer 0 out for the same reason)."""
    from icl_circuits.core.tasks import get_task

    drawn = position == "answer" and not getattr(get_task(task), "fixed_labels", True)
    return list(range(0 if drawn else 1, n_layers + 1))


@cli.command("dpca")
@model_option
@threads_option
@task_option(preset="category_task", fallback="letter-string")
@demos_option(8)
@prompts_option(128)
@click.option("--position", default="answer", show_default=True,
              type=click.Choice(["answer", "separator", "delimiter", "final"]), help="Where states are read.")
@layers_option(show_default="every layer; layer 0 only where its states vary, see above")
@click.option("--components", "n_components", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--regularizer", default="auto", show_default=True, help="'auto' (cross-validated), 'none' or a float lambda.")
@click.option("--n-null", "n_null", default=20, show_default=True, type=click.IntRange(min=0),
              help="Null draws (condition labels redrawn, whole fit repeated) for the p-values; 20 lets p reach "
                   "1/21 < 0.05. Fitting time grows about (1 + N)-fold; 0 skips the null.")
@seed_option()
@json_option()
@out_option()
def dpca_cmd(model: str, task: str, n_demos: int, n_prompts: int, position: str, layers: str | None, n_components: int,
             regularizer: str, n_null: int, seed: int, as_json: bool, out: str | None) -> None:
    """dPCA of label-position states per layer: variance per marginalization, cluster distances.

    --task is a categorization task (letter-string, number, point, animal-plant, ...). --layers: 0..n_layers
    by default, but layer 0 (the token embeddings) only at answer positions of tasks that draw their label
    words per prompt: elsewhere every state of a class is the same token there, with no variance to
    decompose."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.dpca.analysis import dpca_by_layer
    from icl_circuits.methods.dpca.states import categorization_task

    if regularizer.lower() in ("auto", "none"):
        reg: Any = None if regularizer.lower() == "none" else "auto"
    else:
        try:
            reg = float(regularizer)
        except ValueError:
            raise click.BadParameter(f"expected 'auto', 'none' or a float, got {regularizer!r}", param_hint="--regularizer")
    chosen = layer_list(layers)
    m = common.load(model)
    t0 = time.time()
    try:
        categorization_task(task, "dpca")  # refused before any prompt is drawn
        if chosen is None:
            chosen = default_layers(task, position, m.cfg.n_layers)
            if chosen[0] > 0:
                click.echo(f"layer 0 left out (--layers to ask for it): its states are token embeddings, the same "
                           f"token for every state of a class at the {position} positions of {task}")
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        res = dpca_by_layer(m, batch, chosen, n_components=n_components, regularizer=reg, position=position,
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
