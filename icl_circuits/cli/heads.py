"""``icl-circuits heads`` (head ablation scan and attribution patching) and ``ov`` (OV circuits of a task
vector: per-head decomposition, reconstruction at the final layer, key heads vs random heads)."""

from __future__ import annotations

import time

import click

from icl_circuits.cli import common
from icl_circuits.cli.common import (
    check_label_words,
    cli,
    demos_option,
    emit_json,
    int_list,
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


@cli.command("heads")
@model_option
@threads_option
@task_option(preset="knowledge_task", fallback="antonym")
@demos_option(8, minimum=0)
@prompts_option(32)
@click.option("--how", default="zero", show_default=True, type=click.Choice(["zero", "mean"]), help="Ablation.")
@click.option("--metric", default="logit_diff_to_mean", show_default=True,
              type=click.Choice(["logit_diff_to_mean", "logit_diff", "gold_prob", "accuracy"]),
              help="Scan metric (core.metrics; attribution uses logit_diff_to_mean when this is accuracy).")
@click.option("--positions", default="all", show_default=True, type=click.Choice(["all", "final"]), help="Positions ablated.")
@seed_option()
@json_option()
@out_option()
def heads_cmd(model: str, task: str, n_demos: int, n_prompts: int, how: str, metric: str, positions: str, seed: int,
              as_json: bool, out: str | None) -> None:
    """Ablate each attention head alone (exact, batched) and estimate it by attribution patching.

    --out also writes DIR/attribution.json(+.safetensors)."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.attribution import head_attribution, scan_agreement
    from icl_circuits.methods.heads import head_ablation_scan

    m = common.load(model)
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        scan = head_ablation_scan(m, batch, how, metric=metric, positions=positions, progress=False)
        t_scan = time.time() - t0
        attr_metric = "logit_diff_to_mean" if metric == "accuracy" else metric
        exact_for_attr = scan if attr_metric == metric else head_ablation_scan(
            m, batch, how, metric=attr_metric, positions=positions, progress=False)
        t1 = time.time()
        attr = head_attribution(m, batch, how, metric=attr_metric, positions=positions)
        t_attr = time.time() - t1
    except ValueError as err:
        raise click.UsageError(str(err))
    import dataclasses
    import warnings

    with warnings.catch_warnings():  # said on stdout below, next to the numbers
        warnings.simplefilter("ignore", UserWarning)
        agree = scan_agreement(exact_for_attr, attr).to_dict()
    attr = dataclasses.replace(attr, meta={**attr.meta, "agreement": agree})
    click.echo(f"Head ablation ({how}, {positions} positions) of {model}, task {task} ({n_prompts} prompts x "
               f"{n_demos} demos, seed {seed}); clean {metric} {float(scan.clean.mean()):.3f}; "
               f"scan {t_scan:.1f}s, attribution {t_attr:.2f}s")
    df = scan.to_dataframe()[["layer", "head", "value", "effect"]]
    df["attribution"] = attr.to_dataframe()["effect"].values
    if attr_metric != metric:
        df["exact_" + attr_metric] = exact_for_attr.to_dataframe()["effect"].values
    click.echo(df.round(4).to_string(index=False))
    k = agree["top_k"]
    click.echo(f"attribution vs exact ({agree['ablation']}): Spearman {agree['spearman']:.3f}, "
               f"Pearson {agree['pearson']:.3f}, top-{k} overlap {agree['top_k_overlap']:.2f}")
    if agree["disagree"]:
        click.echo(f"WARNING: attribution and the exact scan disagree on the top {k} heads ({agree['ablation']}): "
                   f"overlap {agree['top_k_overlap']:.2f} (warns below {agree['min_overlap']} or when the most "
                   f"important head is missed); the exact scan's heads it misses (layer, head): {agree['missed']}. "
                   "Rank heads by the exact scan.")
    if out:
        from icl_circuits.viz.heads import head_scan, scan_vs_attribution

        figs = [head_scan(scan), head_scan(attr), scan_vs_attribution(exact_for_attr, attr)]
        write_out(out, {"figure.html": figs}, results={"result": scan, "attribution": attr})
    if as_json:
        emit_json({"model": model, "task": task, "how": how, "metric": metric, "positions": positions, "seed": seed,
                   "n_prompts": n_prompts, "n_demos": n_demos, "clean": float(scan.clean.mean()),
                   "layers": scan.layers, "scan_effect": scan.effect.tolist(), "scan_value": scan.values.tolist(),
                   "attribution_metric": attr_metric, "attribution_effect": attr.effect.tolist(),
                   "exact_effect_for_attribution": exact_for_attr.effect.tolist(),
                   "spearman": agree["spearman"], "pearson": agree["pearson"], "agreement": agree,
                   "seconds": {"scan": t_scan, "attribution": t_attr}})


def _only_for_ltv(ctx: click.Context, vector: str) -> None:
    """Refuse the LTV training options with ``--vector vanilla`` (they would be silently ignored)."""
    from click.core import ParameterSource

    given = [f"--{n.replace('n_', '').replace('_', '-')}" for n in ("epochs", "lr", "n_train", "n_val")
             if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]
    if vector != "ltv" and given:
        raise click.UsageError(f"{', '.join(given)}: used only with --vector ltv (training a vector); "
                               "a vanilla vector is read off the dummy-query prompts")


@cli.command("ov", short_help="OV circuits and key heads of a task vector (Yang et al. 2025).")
@model_option
@threads_option
@task_option(preset="knowledge_task", fallback="antonym")
@click.option("--vector", default="ltv", show_default=True, type=click.Choice(["ltv", "vanilla"]),
              help="ltv (a learned task vector trained on zero-shot prompts and added, as Yang et al. decompose) or "
                   "vanilla (Hendel et al.: mean final residual of dummy-query ICL prompts, replaces the residual; "
                   "no training).")
@click.option("--layer", default=None, type=click.IntRange(min=0),
              help="Injection layer (input of block LAYER), in [0, n_layers - 1]; default n_layers // 2.")
@demos_option(8)
@prompts_option(32)
@click.option("--positions", default="final", show_default=True,
              help="Where the vector is injected (a PromptBatch.positions spec).")
@click.option("--ln", default="difference", show_default=True, type=click.Choice(["difference", "frozen"]),
              help="OV approximation through block LN: LN(h + d) - LN(h), or linearised with the clean scale.")
@click.option("--source", default="ov", show_default=True, type=click.Choice(["ov", "exact"]),
              help="Key heads ranked by the DLA of their OV approximation or of their exact change.")
@click.option("--by", default="signed", show_default=True, type=click.Choice(["signed", "abs"]),
              help="Rank by mean DLA (signed) or by |mean DLA|.")
@click.option("--ks", default="1,2,4", show_default=True, callback=int_list, help="Numbers of key heads ablated.")
@click.option("--how", default="zero", show_default=True, type=click.Choice(["zero", "mean"]), help="Head ablation.")
@click.option("--n-random", default=10, show_default=True, type=click.IntRange(min=1),
              help="Draws of k random heads (blocks >= LAYER) per k.")
@click.option("--ablate-positions", default="all", show_default=True,
              help="Positions where heads are ablated: 'all' or a PromptBatch.positions spec ('final', ...).")
@click.option("--restrict-to-labels", is_flag=True,
              help="Accuracy as the argmax over the label words (categorization tasks), not the vocabulary.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1), help="LTV training epochs (--vector ltv).")
@preset_option("--lr", preset="ltv_lr", fallback=5e-3, type=click.FloatRange(min=0, min_open=True),
               help="LTV learning rate (--vector ltv; AdamW). As for `icl-circuits ltv --lr`.")
@click.option("--train", "n_train", default=128, show_default=True, type=click.IntRange(min=1),
              help="LTV training prompts (--vector ltv).")
@click.option("--val", "n_val", default=32, show_default=True, type=click.IntRange(min=0),
              help="LTV validation prompts (--vector ltv).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@seed_option()
@json_option()
@out_option()
@click.pass_context
def ov_cmd(ctx: click.Context, model: str, task: str, vector: str, layer: int | None, n_demos: int, n_prompts: int,
           positions: str, ln: str, source: str, by: str, ks: list[int], how: str, n_random: int,
           ablate_positions: str, restrict_to_labels: bool, epochs: int, lr: float, n_train: int, n_val: int,
           batch_size: int, seed: int, as_json: bool, out: str | None) -> None:
    """OV circuits of a task vector (Yang et al. 2025): each head's share of the vector's effect on the
    final residual (exact and OV approximation, as DLA), its reconstruction at the final layer, and
    the top-k key heads ablated vs k random heads.

    A vanilla vector is read from --prompts dummy-query prompts of --demos demos (seed), and injected into
    --prompts zero-shot prompts (seed + 1); an LTV is trained on --train + --val zero-shot prompts (seed).
    --seed also draws the LTV's initialisation and the random heads. --out also writes
    DIR/reconstruction, key_heads, ablation and vector (.json + .safetensors)."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.key_heads import key_head_ablation, key_heads
    from icl_circuits.methods.ov_circuits import ov_contributions, reconstruct

    _only_for_ltv(ctx, vector)
    if restrict_to_labels:
        check_label_words(task, "--restrict-to-labels")
    if any(k < 1 for k in ks):
        raise click.BadParameter(f"expected positive numbers of heads, got {ks}", param_hint="--ks")
    m = common.load(model)
    L, H = m.cfg.n_layers, m.cfg.n_heads
    layer = L // 2 if layer is None else layer
    if layer >= L:
        raise click.BadParameter(f"expected a layer in [0, {L - 1}] for a model with {L} layers, got {layer}",
                                 param_hint="--layer")
    pool = (L - layer) * H
    if max(ks) > pool:
        raise click.BadParameter(f"at most {pool} heads sit in blocks >= layer {layer}, got k={max(ks)}", param_hint="--ks")
    from icl_circuits.core.pairs import has_bos

    bos = has_bos(m)  # every prompt starts with the BOS where there is one (as task_vector_prompts and the report)
    t0 = time.time()
    try:
        if vector == "vanilla":
            from icl_circuits.methods.task_vectors import vanilla_task_vector

            dummy = build_prompts(m, task, n_prompts, n_demos, seed=seed, variant="dummy_query", prepend_bos=bos)
            tv = vanilla_task_vector(m, dummy, [layer], batch_size=batch_size)
        else:
            from icl_circuits.methods.learned import train_task_vector

            train = build_prompts(m, task, n_train + n_val, 0, seed=seed, variant="zero_shot", prepend_bos=bos)
            tv = train_task_vector(m, train, layer, n_val=n_val, epochs=epochs, lr=lr, seed=seed, progress=False)
        zs = build_prompts(m, task, n_prompts, 0, seed=seed + 1, variant="zero_shot", prepend_bos=bos)
        ov = ov_contributions(m, zs, tv, layer, positions=positions, ln=ln, keep_head_vectors=False,
                              batch_size=batch_size)
        rec = reconstruct(m, zs, tv, layer, ov=ov, restrict_to_labels=restrict_to_labels, batch_size=batch_size)
        kh = key_heads(m, zs, tv, layer, source=source, by=by, ov=ov)
        ab = key_head_ablation(m, zs, tv, layer, ks=ks, how=how, ranking=kh, n_random=n_random, seed=seed,
                               positions=positions, ablate_positions=ablate_positions,
                               restrict_to_labels=restrict_to_labels, batch_size=batch_size, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    norm = float(tv.at(layer).norm())
    click.echo(f"OV circuits of a {vector} task vector (|theta| {norm:.2f}, {tv.mode}) at layer {layer} of {model}, task "
               f"{task} ({n_prompts} zero-shot prompts, seed {seed + 1}; vector seed {seed}; {time.time() - t0:.1f}s); "
               f"decomposition identity max error {ov.identity_error():.1e}")
    click.echo(f"reconstruction at the final residual ({'label words' if restrict_to_labels else 'vocabulary'} argmax):")
    click.echo(rec.to_dataframe()[["condition", "accuracy", "low", "high", "recovered"]].round(3).to_string(index=False))
    click.echo(f"key heads ({source} DLA, {by}): " + ", ".join(f"L{l}H{h}" for l, h in kh.ranking[:max(ks)]))
    click.echo(f"ablation ({how}, at {ab.ablate_positions}) with the vector: accuracy {ab.vector_accuracy:.3f} "
               f"(without the vector {ab.no_vector_accuracy:.3f})")
    for i, k in enumerate(ab.ks):
        rd = ab.random_drop[i]
        click.echo(f"  k={k}: drop {float(ab.top_drop[i]):.3f} (key heads) vs {float(rd.mean()):.3f} "
                   f"[{float(rd.min()):.3f}, {float(rd.max()):.3f}] ({n_random} random draws)")
    if ab.vector_accuracy <= ab.no_vector_accuracy:
        click.echo(f"NOTE: the vector does not raise accuracy ({ab.vector_accuracy:.3f} with it, {ab.no_vector_accuracy:.3f} "
                   "without): there is no task effect for its heads to carry, so the ablation is not readable; "
                   "try another --layer or --vector.")
    if out:
        from icl_circuits.viz.key_heads import key_heads as key_fig
        from icl_circuits.viz.key_heads import key_vs_random
        from icl_circuits.viz.ov_circuits import ov_heads, reconstruction

        write_out(out, {"figure.html": [ov_heads(ov), reconstruction(rec), key_fig(kh), key_vs_random(ab)]},
                  results={"result": ov, "reconstruction": rec, "key_heads": kh, "ablation": ab, "vector": tv})
    if as_json:
        emit_json({"model": model, "task": task, "vector": vector, "mode": tv.mode, "layer": layer, "theta_norm": norm,
                   "seed": seed, "eval_seed": seed + 1, "n_prompts": n_prompts, "n_demos": n_demos,
                   "positions": positions, "ln": ln, "identity_error": ov.identity_error(),
                   "heads": {"layers": ov.layers, "exact_dla": ov.exact_dla.mean(-1).tolist(),
                             "ov_dla": ov.ov_dla.mean(-1).tolist(), "cosine": ov.cosine.mean(-1).tolist()},
                   "direct_dla": float(ov.direct_dla.mean()), "mlp_dla": ov.mlp_dla.mean(-1).tolist(),
                   "reconstruction": {c: {"accuracy": float(rec.values[i]), "low": float(rec.low[i]),
                                          "high": float(rec.high[i]), "recovered": rec.recovered[i]}
                                      for i, c in enumerate(rec.conditions)},
                   "key_heads": {"source": source, "by": by, "ranking": kh.ranking, "scores": kh.scores.tolist()},
                   "ablation": {"how": how, "ablate_positions": ab.ablate_positions, "ks": ab.ks, "n_random": n_random,
                                "top_heads": ab.top_heads, "vector_accuracy": ab.vector_accuracy,
                                "no_vector_accuracy": ab.no_vector_accuracy, "top": ab.top.tolist(),
                                "random": ab.random.tolist(), "random_heads": ab.random_heads}})
