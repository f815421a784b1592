"""``icl-circuits saliency``, ``isolation`` and ``reweight``: label words as anchors (Wang et al. 2023): saliency
flow, attention isolation, anchor re-weighting."""

from __future__ import annotations

import time

import click

from icl_circuits.cli import common
from icl_circuits.cli.common import (
    check_label_words,
    cli,
    demos_option,
    emit_json,
    json_option,
    layers_option,
    model_option,
    out_option,
    prompts_option,
    seed_option,
    task_option,
    threads_option,
    write_out,
)


@cli.command("saliency")
@model_option
@threads_option
@task_option(preset="category_task", fallback="number")
@demos_option(8)
@prompts_option(64)
@click.option("--loss", default="label_words", show_default=True, type=click.Choice(["label_words", "full_vocab"]),
              help="Softmax of the loss over the label words (a task with label words) or the whole vocabulary.")
@click.option("--proportions", is_flag=True, help="Report each layer's flows as fractions of their sum.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@seed_option()
@json_option()
@out_option()
def saliency_cmd(model: str, task: str, n_demos: int, n_prompts: int, loss: str, proportions: bool,
                 batch_size: int, seed: int, as_json: bool, out: str | None) -> None:
    """Saliency flow (label words as anchors): S_wp, S_pq, S_ww per layer.

    --out also writes DIR/heatmap.html."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.saliency import saliency_flow

    m = common.load(model)
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        res = saliency_flow(m, batch, loss, proportions=proportions, batch_size=batch_size, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"saliency flow of {model}, task {task} ({n_prompts} prompts x {n_demos} demos, loss {loss}, "
               f"seed {seed}, {time.time() - t0:.1f}s)")
    table = res.to_dataframe().pivot(index="layer", columns="flow", values="value")[res.flow_names]
    click.echo(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if out:
        from icl_circuits.viz.saliency import flows, heatmap

        write_out(out, {"figure.html": flows(res), "heatmap.html": heatmap(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "n_prompts": n_prompts, "n_demos": n_demos,
                   "loss": loss, "proportions": proportions, "layers": res.layers,
                   **{name: res.flow(name).tolist() for name in res.flow_names}})


def _layer_ranges(value: str) -> list[list[int]] | None:
    """``--layers`` of ``isolation``: ``"each"`` -> None (every layer alone, once the model is known);
    ``"0-1,2-3"`` -> ``[[0, 1], [2, 3]]``; ``"0,3"`` -> ``[[0], [3]]``; else a usage error."""
    if value.strip().lower() == "each":
        return None
    out = []
    for part in (p.strip() for p in value.split(",")):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi if hi else lo)
        except ValueError:
            a, b = -1, -1
        if not part or a < 0 or b < a:
            raise click.BadParameter(f"expected 'each' or comma-separated layers or inclusive spans like 0-1,2-3, "
                                     f"got {value!r}", param_hint="--layers")
        out.append(list(range(a, b + 1)))
    return out


@cli.command("isolation", short_help="Attention isolation of the label words per layer range (Wang et al. 2023).")
@model_option
@threads_option
@task_option(preset="category_task", fallback="number")
@demos_option(8)
@prompts_option(64)
@click.option("--mode", default="label_from_text", show_default=True, type=click.Choice(["label_from_text", "query_from_label"]),
              help="Block the label words from the text before them, or the final position from the label words.")
@layers_option("each", dest="layer_spec")
@click.option("--positions", default="answers", show_default=True,
              help="The label-word positions (a PromptBatch.positions spec; default: first token of each demo answer).")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also isolate as many random non-label positions (seeded).")
@click.option("--keep-bos/--no-keep-bos", default=True, show_default=True,
              help="label_from_text: keep the label words' attention to a leading BOS (the attention sink).")
@click.option("--restrict-to-labels", is_flag=True, help="Accuracy and loyalty over the label words, not the vocabulary.")
@click.option("--top-k", "top_k", default=5, show_default=True, type=click.IntRange(min=1),
              help="Top tokens compared by word loyalty (Jaccard).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@seed_option()
@json_option()
@out_option()
def isolation_cmd(model: str, task: str, n_demos: int, n_prompts: int, mode: str, layer_spec: str, positions: str,
                  control: bool, keep_bos: bool, restrict_to_labels: bool, top_k: int, batch_size: int, seed: int,
                  as_json: bool, out: str | None) -> None:
    """Attention isolation (Wang et al. 2023): accuracy and label loyalty with the label words cut off
    (pre-softmax scores set to -inf) in each layer range, next to random positions cut off.

    --layers names the layer ranges, each isolated separately: comma-separated layers or inclusive spans
    (0-1,2-3); 'each': every layer alone."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.anchors import isolate_attention

    if restrict_to_labels:
        check_label_words(task, "--restrict-to-labels")
    ranges = _layer_ranges(layer_spec)
    m = common.load(model)
    n_layers = m.cfg.n_layers
    if ranges is None:
        ranges = [[layer] for layer in range(n_layers)]
    if any(layer >= n_layers for r in ranges for layer in r):
        raise click.BadParameter(f"layers must lie in [0, {n_layers - 1}] for a model with {n_layers} layers, "
                                 f"got {layer_spec!r}", param_hint="--layers")
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        res = isolate_attention(m, batch, ranges, mode, control=control, keep_bos=keep_bos,
                                restrict_to_labels=restrict_to_labels, top_k=top_k, seed=seed, positions=positions,
                                batch_size=batch_size, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"attention isolation ({mode}) of {model}, task {task} ({n_prompts} prompts x {n_demos} demos, seed {seed}, "
               f"{time.time() - t0:.1f}s); accuracy without isolation {res.baseline_accuracy:.3f} "
               f"(argmax over {'the label words' if restrict_to_labels else 'the vocabulary'})")
    df = res.to_dataframe()[["layers", "target", "accuracy", "accuracy_low", "accuracy_high", "loyalty", "word_loyalty"]]
    click.echo(df.round(3).to_string(index=False))
    if out:
        from icl_circuits.viz.anchors import isolation

        write_out(out, {"figure.html": isolation(res)}, results={"result": res})
    if as_json:
        keys = ("accuracy", "accuracy_low", "accuracy_high", "loyalty", "loyalty_low", "loyalty_high", "word_loyalty")
        emit_json({"model": model, "task": task, "mode": mode, "seed": seed, "n_prompts": n_prompts, "n_demos": n_demos,
                   "positions": positions, "keep_bos": keep_bos, "restrict_to_labels": restrict_to_labels,
                   "top_k": top_k, "baseline_accuracy": res.baseline_accuracy, "ranges": res.range_names,
                   "layer_ranges": res.layer_ranges,
                   "targets": {t: {k: getattr(res, k)[:, j].tolist() for k in keys} for j, t in enumerate(res.targets)}})


@cli.command("reweight", short_help="Anchor re-weighting: learned attention to the label words (Wang et al. 2023).")
@model_option
@threads_option
@task_option(preset="category_task", fallback="number")
@demos_option(4)
@prompts_option(64, dest="n_train")
@click.option("--eval-prompts", "n_eval", default=64, show_default=True, type=click.IntRange(min=1),
              help="Held-out prompts (seed + 1) for the accuracy before / after.")
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--loss", default="label_words", show_default=True, type=click.Choice(["label_words", "full_vocab"]),
              help="Softmax of the training loss over the label words or the whole vocabulary.")
@click.option("--accuracy-over", default="auto", show_default=True, type=click.Choice(["auto", "labels", "vocab"]),
              help="Held-out accuracy: argmax over the label words or the vocabulary (auto: labels when the task has them).")
@seed_option()
@json_option()
@out_option()
def reweight_cmd(model: str, task: str, n_demos: int, n_train: int, n_eval: int, lr: float, epochs: int,
                 batch_size: int, loss: str, accuracy_over: str, seed: int, as_json: bool, out: str | None) -> None:
    """Anchor re-weighting (Wang et al. 2023): learn exp(beta) scaling the final position's attention to
    each demo's label word (model frozen); held-out accuracy before and after.

    beta has one weight per layer, head and demo (--demos). It is trained on --prompts prompts (seed; the
    minibatch order too) and evaluated on --eval-prompts held-out ones (seed + 1)."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.reweighting import train_anchor_reweighting

    restrict = {"auto": None, "labels": True, "vocab": False}[accuracy_over]
    if restrict:
        check_label_words(task, "--accuracy-over")
    m = common.load(model)
    t0 = time.time()
    try:
        train = build_prompts(m, task, n_train, n_demos, seed=seed)
        ev = build_prompts(m, task, n_eval, n_demos, seed=seed + 1)
        res = train_anchor_reweighting(m, train, ev, lr=lr, epochs=epochs, batch_size=batch_size, loss=loss,
                                       restrict_to_labels=restrict, seed=seed, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"anchor re-weighting of {model}, task {task} ({n_train} training / {n_eval} held-out prompts x {n_demos} "
               f"demos, {epochs} epochs, lr {lr}, loss {loss}, seed {seed}, {time.time() - t0:.1f}s); accuracy over "
               f"{'the label words' if res.restrict_to_labels else 'the vocabulary'}")
    click.echo(res.to_dataframe()[["stage", "accuracy", "low", "high", "eval_loss", "train_loss"]].round(3).to_string(index=False))
    if out:
        from icl_circuits.viz.reweighting import reweighting

        write_out(out, {"figure.html": reweighting(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "eval_seed": seed + 1, "n_demos": n_demos,
                   "n_train": n_train, "n_eval": n_eval, "lr": lr, "epochs": epochs, "loss": loss,
                   "restrict_to_labels": res.restrict_to_labels,
                   **{f"{k}_{s}": getattr(res, f"{k}_{s}") for s in ("before", "after")
                      for k in ("accuracy", "train_loss", "eval_loss")},
                   **{f"accuracy_{s}_{b}": getattr(res, f"accuracy_{s}_{b}") for s in ("before", "after") for b in ("low", "high")},
                   "epoch_losses": res.epoch_losses.tolist(), "beta": res.beta.tolist()})
