"""``icl-circuits task-vectors``, ``ltv`` and ``propagation``: task vectors (vanilla, local, function, learned)
and how a learned one propagates to the final residual."""

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
    model_option,
    out_option,
    preset_option,
    prompts_option,
    seed_option,
    task_option,
    threads_option,
    write_out,
)


def _ltv_layers(value: str, n_layers: int) -> list[int]:
    if value.strip().lower() == "all":
        return list(range(n_layers + 1))
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or any(not 0 <= v <= n_layers for v in out):
        raise click.BadParameter(f"expected 'all' or comma-separated layers in [0, {n_layers}], got {value!r}",
                                 param_hint="--layer")
    return out


def _ltv_options(f):
    for opt in reversed([
        model_option,
        threads_option,
        task_option(preset="knowledge_task", fallback="antonym"),
        click.option("--layer", "layer_spec", default="all", show_default=True,
                     help="Injection layer(s): 'all' (0..n_layers, one LTV trained per layer) or e.g. 1,2."),
        click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1)),
        click.option("--train", "n_train", default=128, show_default=True, type=click.IntRange(min=1), help="Training prompts."),
        click.option("--val", "n_val", default=32, show_default=True, type=click.IntRange(min=0), help="Validation prompts."),
        click.option("--with-demos", default=0, show_default=True, type=click.IntRange(min=0), help="Demos in the prompts (0: zero-shot)."),
        preset_option("--lr", preset="ltv_lr", fallback=5e-3, type=click.FloatRange(min=0, min_open=True),
                      help="AdamW learning rate. SmolLM2's final-position residual has norm 120-220: at 5e-3 "
                           "the vector moves nothing (this command's other defaults, present-past, layer 15: test "
                           "accuracy 0.00 at 5e-3, 0.98 at 0.1)."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1)),
        click.option("--eval-prompts", "n_eval", default=64, show_default=True, type=click.IntRange(min=1)),
        seed_option(),
        json_option(),
        out_option(),
    ]):
        f = opt(f)
    return f


def _prompts(m: Any, task: str, n: int, with_demos: int, seed: int):
    """The LTV commands' prompts: zero-shot (``with_demos`` 0) starting with the tokenizer's BOS where it has
    one (``core.pairs.has_bos``: else the query word is the attention sink and a vector barely moves the
    answer, as on SmolLM2; the report builds its LTV prompts the same way), else ICL prompts."""
    from icl_circuits.core.pairs import has_bos
    from icl_circuits.core.prompts import build_prompts

    if with_demos == 0:
        return build_prompts(m, task, n, 0, seed=seed, variant="zero_shot", prepend_bos=has_bos(m))
    return build_prompts(m, task, n, with_demos, seed=seed, variant="icl")


def _train_ltv(m: Any, task: str, layer_spec: str, epochs: int, n_train: int, n_val: int, with_demos: int, seed: int,
               lr: float, batch_size: int):
    from icl_circuits.methods.learned import train_per_layer

    layers = _ltv_layers(layer_spec, m.cfg.n_layers)
    try:
        batch = _prompts(m, task, n_train + n_val, with_demos, seed)
        return train_per_layer(m, batch, layers, epochs=epochs, n_val=n_val, seed=seed, lr=lr, batch_size=batch_size,
                               progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))


@cli.command("ltv")
@_ltv_options
def ltv_cmd(model: str, task: str, layer_spec: str, epochs: int, n_train: int, n_val: int, with_demos: int,
            lr: float, batch_size: int, n_eval: int, seed: int, as_json: bool, out: str | None) -> None:
    """Train learned task vectors (one per layer) and their accuracy on fresh prompts.

    Trained on --train + --val prompts (seed), tested on --eval-prompts fresh ones (seed + 1). --out also
    writes DIR/sweep.json(+.safetensors), the test accuracy per layer."""
    from icl_circuits.methods.vectors import evaluate_vector

    m = common.load(model)
    t0 = time.time()
    tv = _train_ltv(m, task, layer_spec, epochs, n_train, n_val, with_demos, seed, lr, batch_size)
    try:
        ev = _prompts(m, task, n_eval, with_demos, seed + 1)
    except ValueError as err:
        raise click.UsageError(str(err))
    sweep = evaluate_vector(m, tv, ev)
    click.echo(f"Learned task vectors of {model}, task {task} ({with_demos} demos, {n_eval} test prompts, "
               f"seed {seed}, {time.time() - t0:.1f}s); accuracy without a vector {sweep.baseline:.3f}")
    click.echo(f"{'layer':>5} {'val acc':>8} {'test acc':>9} {'95% CI':>15} {'epochs':>6} {'norm':>7}")
    per = tv.meta["per_layer"]
    for i, l in enumerate(tv.layers):
        pm = per[str(l)]
        click.echo(f"{l:>5} {pm['val_accuracy_best']:>8.3f} {float(sweep.values[i]):>9.3f} "
                   f"[{float(sweep.low[i]):.2f}, {float(sweep.high[i]):.2f}] {pm['epochs_run']:>6} {pm['norm'][0]:>7.2f}")
    if out:
        from icl_circuits.viz.propagation import layer_curves

        write_out(out, {"figure.html": layer_curves([sweep])}, results={"result": tv, "sweep": sweep})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "with_demos": with_demos, "n_eval": n_eval,
                   "baseline": sweep.baseline, "layers": tv.layers,
                   "accuracy": {str(l): float(v) for l, v in zip(tv.layers, sweep.values)},
                   "val_accuracy": {str(l): per[str(l)]["val_accuracy_best"] for l in tv.layers}})


@cli.command("propagation")
@_ltv_options
@click.option("--vectors", "n_vectors", default=256, show_default=True, type=click.IntRange(min=2),
              help="Random vectors for fitting each layer's linear map.")
@click.option("--fit-prompts", "n_fit", default=16, show_default=True, type=click.IntRange(min=1))
def propagation_cmd(model: str, task: str, layer_spec: str, epochs: int, n_train: int, n_val: int, with_demos: int,
                    lr: float, batch_size: int, n_eval: int, seed: int, as_json: bool, out: str | None, n_vectors: int,
                    n_fit: int) -> None:
    """Train LTVs per layer, then fit the linear map to the final residual: rotation vs scaling,
    logit lens, task alignment, accuracy of the reconstructed vector W theta.

    --out also writes DIR/ltv.json(+.safetensors), the trained vectors."""
    from icl_circuits.methods.propagation import propagation_by_layer

    m = common.load(model)
    t0 = time.time()
    tv = _train_ltv(m, task, layer_spec, epochs, n_train, n_val, with_demos, seed, lr, batch_size)
    try:
        fit = _prompts(m, task, n_fit, with_demos, seed)
        ev = _prompts(m, task, n_eval, with_demos, seed + 1)
        res = propagation_by_layer(m, fit, ev, tv, n_vectors=n_vectors, seed=seed, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    df = res.to_dataframe().set_index("layer")
    cols = ["r2", "rotation_cos", "cos_theta_wtheta", "gain", "stretch_cv", "alignment_theta", "alignment_wtheta",
            "lens_injected", "acc_injected", "acc_reconstructed"]
    click.echo(f"Propagation of learned task vectors in {model}, task {task} (seed {seed}, {time.time() - t0:.1f}s); "
               f"no-vector accuracy {res.baseline:.3f}, alignment of a random vector ~{res.alignment_chance:.2f}")
    click.echo(df[cols].round(3).to_string())
    if out:
        from icl_circuits.viz.propagation import propagation_summary

        write_out(out, {"figure.html": propagation_summary(res)}, results={"result": res, "ltv": tv})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "baseline": res.baseline,
                   "alignment_chance": res.alignment_chance, "layers": res.layers,
                   "by_layer": {str(l): {c: float(df.loc[l, c]) for c in cols} for l in res.layers}})


@cli.command("task-vectors")
@model_option
@threads_option
@task_option(preset="knowledge_task", fallback="antonym")
@demos_option(8)
@prompts_option(32)
@click.option("--top-k", "top_k", default=10, show_default=True, type=click.IntRange(min=1), help="Heads in the function vector.")
@click.option("--metric", default="auto", show_default=True, type=click.Choice(["auto", "accuracy", "label_accuracy"]),
              help="auto: label_accuracy for categorization tasks, else accuracy.")
@seed_option()
@click.option("--methods", default="vanilla,local,function", show_default=True,
              help="Comma-separated methods to compare (vanilla, local, function).")
@json_option()
@out_option()
def task_vectors_cmd(model: str, task: str, n_demos: int, n_prompts: int, top_k: int, metric: str, seed: int,
                     methods: str, as_json: bool, out: str | None) -> None:
    """Vanilla vs local vs function vectors per layer, on held-out prompts.

    The vectors are extracted from --prompts ICL prompts of --demos demos (seed) and evaluated on --prompts
    held-out prompts (seed + 1)."""
    import warnings

    from icl_circuits.core.pairs import task_vector_prompts
    from icl_circuits.methods.task_vectors import METHODS, compare_task_vectors

    chosen = [v.strip() for v in methods.split(",") if v.strip()]
    if not chosen or any(v not in METHODS for v in chosen):
        raise click.BadParameter(f"expected comma-separated names among {', '.join(METHODS)}, got {methods!r}",
                                 param_hint="--methods")
    m = common.load(model)
    t0 = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a skipped method is reported below
            prompts = task_vector_prompts(m, task, n_demos, n_prompts, seed)
            df = compare_task_vectors(m, prompts, top_k=top_k, metric=metric, methods=chosen).to_dataframe()
    except ValueError as err:
        raise click.UsageError(str(err))
    table = df.pivot(index="layer", columns="method", values="accuracy")
    click.echo(f"Task vectors of {model}, task {task} ({df.metric.iloc[0]}; {n_prompts} prompts x {n_demos} demos, "
               f"seed {seed}, evaluation seed {df.attrs['eval_seed']}, {time.time() - t0:.1f}s)")
    click.echo(table.round(3).to_string())
    if df.attrs["fv_heads"] is not None:
        click.echo(f"function-vector heads (layer, head): {df.attrs['fv_heads']}")
    for meth, why in df.attrs["skipped"].items():
        click.echo(f"skipped {meth}: {why}")
    summary = {"model": model, "task": task, "metric": str(df.metric.iloc[0]), "seed": seed, "n_prompts": n_prompts,
               "n_demos": n_demos, **{k: v for k, v in df.attrs.items() if k not in ("seed", "n_demos", "n_prompts")},
               "per_layer": {meth: {str(int(r.layer)): {"accuracy": r.accuracy, "low": r.low, "high": r.high}
                                    for r in g.itertuples()} for meth, g in df.groupby("method", sort=False)}}
    if out:
        from icl_circuits.viz.sweeps import sweep

        write_out(out, {"figure.html": sweep(df)}, summary=summary)
    if as_json:
        emit_json(summary)
