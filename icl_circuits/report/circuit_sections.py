"""Report sections on the circuits of learned task vectors (Yang et al. 2025): key heads vs random
heads, OV reconstruction, linear propagation; and dPCA of label positions (2406.16007)."""

from __future__ import annotations

import pandas as pd

from icl_circuits.report import verdicts as V
from icl_circuits.report.config import Context, Section
from icl_circuits.report.sections import (
    dpca_chance_warning, dpca_regularizer_caveat, propagation_fit_warnings, task_accuracy, unsolved,
)
from icl_circuits.report.task_vector_sections import learned_vectors


def _zero_shot(ctx: Context, n: int, seed_offset: int = 1):
    from icl_circuits.core.pairs import has_bos
    from icl_circuits.core.prompts import build_prompts

    return build_prompts(ctx.model, ctx.cfg.knowledge_task, n, 0, seed=ctx.cfg.seed + seed_offset, variant="zero_shot",
                         prepend_bos=has_bos(ctx.model))  # as the LTVs' training prompts


def injection_layer(ctx: Context) -> int:
    """The LTV layer the head analyses decompose: the best one (zero-shot accuracy with the vector)
    among the report's layers in the first two thirds of the model (heads must follow it)."""
    from icl_circuits.methods.vectors import evaluate_vector

    ltv = learned_vectors(ctx)
    sweep = ctx.cache.get("ltv_sweep")
    if sweep is None:
        sweep = ctx.cache["ltv_sweep"] = evaluate_vector(ctx.model, ltv, _zero_shot(ctx, ctx.cfg.prompts(32)))
    L = ctx.model.cfg.n_layers
    ok = [(float(v), l) for l, v in zip(sweep.layers, sweep.values) if 0 < l <= max(1, 2 * L // 3)]
    return max(ok)[1] if ok else sweep.layers[0]


def _heads_and_ablation(ctx: Context):
    if "key_heads" not in ctx.cache:
        from icl_circuits.methods.key_heads import key_head_ablation, key_heads
        from icl_circuits.methods.ov_circuits import ov_contributions, reconstruct

        m, cfg = ctx.model, ctx.cfg
        ltv, layer = learned_vectors(ctx), injection_layer(ctx)
        zs = _zero_shot(ctx, cfg.prompts() if cfg.layer_stride else cfg.prompts(32))
        ov = ov_contributions(m, zs, ltv, layer, keep_head_vectors=False)
        rec = reconstruct(m, zs, ltv, layer, ov=ov)
        kh = key_heads(m, zs, ltv, layer, ov=ov)
        pool = (m.cfg.n_layers - layer) * m.cfg.n_heads
        ks = [k for k in cfg.key_head_ks if k <= pool]
        ab = key_head_ablation(m, zs, ltv, layer, ks=ks, ranking=kh, n_random=10, seed=cfg.seed, progress=False)
        ctx.cache["key_heads"] = (layer, zs, ov, rec, kh, ab)
    return ctx.cache["key_heads"]


def _no_effect(ab) -> str | None:
    if ab.vector_accuracy > ab.no_vector_accuracy:
        return None
    return (f"the vector does not raise accuracy ({ab.vector_accuracy:.2f} with it, {ab.no_vector_accuracy:.2f} "
            "without): there is no task effect for heads to carry.")


def heads_section(ctx: Context) -> Section:
    from icl_circuits.viz import key_heads as kplots

    cfg = ctx.cfg
    layer, zs, ov, rec, kh, ab = _heads_and_ablation(ctx)
    rows = [dict(k=k, key_heads=", ".join(f"L{l}H{h}" for l, h in kh.ranking[:k]), key_drop=float(ab.top_drop[i]),
                 random_drop_mean=float(ab.random_drop[i].mean()), random_drop_max=float(ab.random_drop[i].max()))
            for i, k in enumerate(ab.ks)]
    table = pd.DataFrame(rows)
    warnings = unsolved(ctx, cfg.knowledge_task) + [w for w in [_no_effect(ab)] if w]
    last = len(ab.ks) - 1
    w = V.null_overlaps(f"the accuracy drop from ablating the top {ab.ks[last]} key heads",
                        float(ab.top_drop[last]), ab.random_drop[last].tolist())
    if w:
        warnings.append(w)
    figs = [kplots.key_vs_random(ab), kplots.key_heads(kh)]
    text = (f"A learned task vector for {cfg.knowledge_task} is added at layer {layer} (its best layer in the first "
            f"two thirds) to {len(zs)} zero-shot prompts. Heads after it are ranked by the direct logit attribution of "
            "their OV contribution to the gold token (key heads); the top-k are zero-ablated at every position, and "
            "compared with k heads drawn at random from the same blocks (10 draws).")
    if cfg.exact_head_scan:
        from icl_circuits.core.prompts import build_prompts
        from icl_circuits.methods.attribution import head_attribution
        from icl_circuits.methods.heads import head_ablation_scan
        from icl_circuits.viz import heads as cplots

        batch = build_prompts(ctx.model, cfg.knowledge_task, cfg.prompts(32), cfg.n_demos, seed=cfg.seed)
        exact = head_ablation_scan(ctx.model, batch, how="mean", metric="logit_diff_to_mean", progress=False)
        approx = head_attribution(ctx.model, batch, how="mean", metric="logit_diff_to_mean")
        figs.append(cplots.scan_vs_attribution(exact, approx))
        text += (" Detail: on ICL prompts, every head mean-ablated alone (exact scan) against attribution patching's "
                 "first-order estimate of the same.")
    i = last
    return Section(
        "heads", "Key heads vs random heads (Yang et al. 2025)", text, figures=figs, table=table,
        data=ab.to_dataframe(), n_prompts=len(zs), warnings=warnings,
        ours=(f"top-{ab.ks[i]} key heads: accuracy drop {float(ab.top_drop[i]):.2f}; {ab.ks[i]} random heads: "
              f"{float(ab.random_drop[i].mean()):.2f} on average (max {float(ab.random_drop[i].max()):.2f}); "
              f"vector accuracy {ab.vector_accuracy:.2f}, without it {ab.no_vector_accuracy:.2f}."),
        reading=(f"The top key heads are {', '.join(f'L{l}H{h}' for l, h in kh.ranking[:4])}. Ablating the top "
                 f"{ab.ks[i]} costs {float(ab.top_drop[i]):.2f} accuracy, "
                 + (f"more than every random draw (max {float(ab.random_drop[i].max()):.2f}): the vector's effect runs "
                    "through a few heads." if float(ab.top_drop[i]) > float(ab.random_drop[i].max()) else
                    f"not more than random heads (up to {float(ab.random_drop[i].max()):.2f}): no key heads stand out.")),
    )


def ov_section(ctx: Context) -> Section:
    from icl_circuits.viz import ov_circuits as oplots

    cfg = ctx.cfg
    layer, zs, ov, rec, kh, ab = _heads_and_ablation(ctx)
    df = rec.to_dataframe()
    table = df[["condition", "accuracy", "low", "high", "recovered"]]
    vals = dict(zip(rec.conditions, zip(rec.values.tolist(), rec.low.tolist(), rec.high.tolist(), rec.recovered)))
    ov_name = next((c for c in rec.conditions if "(OV)" in c), rec.conditions[0])
    none_name = next((c for c in rec.conditions if "no vector" in c.lower() or c.lower().startswith("none")), None)
    warnings = [w for w in [_no_effect(ab)] if w]
    if none_name is not None:
        v, lo, hi, _ = vals[ov_name]
        w = V.interval_spans(f"'{ov_name}'", lo, hi, vals[none_name][0], "the accuracy without a vector")
        if w:
            warnings.append(w)
    rv = vals[ov_name][3]
    return Section(
        "ov", "OV reconstruction of a learned task vector (Yang et al. 2025)",
        f"The effect of the vector added at layer {layer}, decomposed into every later head's contribution at the "
        "final position: exactly (the change of the head's output) and through its OV circuit (attention to the "
        "injected position times the vector's image under LN, W_V, W_O). Each sum is added directly to the final "
        f"residual of {len(zs)} zero-shot prompts of {cfg.knowledge_task}; 'recovered' = (accuracy - no vector) / "
        "(vector at its layer - no vector). Decomposition identity error "
        f"{ov.identity_error():.1e}.",
        figures=[oplots.reconstruction(rec), oplots.ov_heads(ov)], table=table, data=df, n_prompts=len(zs),
        warnings=warnings,
        ours=f"'{ov_name}' recovers {rv:.0%} of the vector's gain ({vals[ov_name][0]:.2f} accuracy)."
        if rv == rv else "",
        reading=(f"Adding the heads' OV contributions at the final layer gives {vals[ov_name][0]:.2f} accuracy "
                 f"[{vals[ov_name][1]:.2f}, {vals[ov_name][2]:.2f}], {rv:.0%} of what the vector achieves at layer "
                 f"{layer}: the OV circuits " + ("carry most of it." if rv >= 0.5 else "carry less than half of it; "
                                                 "MLPs or the direct path matter here.")) if rv == rv else
                (f"The vector at layer {layer} leaves accuracy where it is without it ({ab.vector_accuracy:.2f} vs "
                 f"{ab.no_vector_accuracy:.2f}), so there is no gain for the heads' contributions to recover."),
    )


def propagation_section(ctx: Context) -> Section:
    from icl_circuits.methods.propagation import propagation_by_layer
    from icl_circuits.viz import propagation as pplots

    cfg = ctx.cfg
    ltv = learned_vectors(ctx)
    fit = _zero_shot(ctx, cfg.prompts(16), seed_offset=0)
    ev = _zero_shot(ctx, 32 if cfg.layer_stride else 64)
    res = propagation_by_layer(ctx.model, fit, ev, ltv, n_vectors=64 if cfg.quick else cfg.propagation_vectors,
                               seed=cfg.seed, progress=False)
    full = res.to_dataframe()
    r2 = res.r2.tolist()
    ok = [i for i, v in enumerate(r2) if v >= V.R2_WEAK]
    table = pd.DataFrame({"layer": res.layers, "R² (held out)": r2, "tr(U)/d": res.rotation_cos.tolist(),
                          "fit": ["unreadable (R² < 0)" if not v >= V.R2_UNREADABLE else f"weak (R² < {V.R2_WEAK})"
                                  if v < V.R2_WEAK else "ok" for v in r2],
                          "ridge": ["-" if v is None else f"{v:.2g}" for v in res.ridge]})
    warnings = unsolved(ctx, cfg.knowledge_task) + propagation_fit_warnings(res.layers, r2)
    if ok:
        early, late = ok[: max(1, len(ok) // 2)], ok[max(1, len(ok) // 2):] or ok[-1:]
        ce = sum(float(res.rotation_cos[i]) for i in early) / len(early)
        cl = sum(float(res.rotation_cos[i]) for i in late) / len(late)
        reading = (f"Among the {len(ok)} layers with a readable fit (R² >= {V.R2_WEAK}), tr(U)/d averages {ce:.2f} in "
                   f"the earlier half and {cl:.2f} in the later half: " +
                   ("later vectors are scaled more and rotated less, as Yang et al. report." if cl > ce else
                    "the paper's rotation-then-scaling pattern does not appear."))
        ours = f"tr(U)/d early {ce:.2f}, late {cl:.2f} (readable layers only)."
    else:
        reading, ours = "No layer has a readable fit; nothing can be said about rotation vs scaling.", ""
    return Section(
        "propagation", "Linear propagation of learned task vectors: rotation vs scaling",
        "A linear map W from a vector injected at layer l to its effect on the final residual, fitted by ridge "
        f"regression on {res.meta.get('n_vectors', cfg.propagation_vectors)} random vectors (the ridge chosen by "
        "5-fold cross-validation on the fit vectors; a quarter of the random vectors held out for R²), and its polar "
        "decomposition W = U P (U a rotation, P a stretch). tr(U)/d near 1: W mostly scales; "
        "lower: the vector is rotated on its way to the output. Fits with held-out R² < 0.2 are greyed.",
        figures=[pplots.rotation_scaling(res), pplots.propagation_summary(res)], table=table, data=full,
        n_prompts=int(res.n_eval), warnings=warnings, ours=ours, reading=reading,
    )


def dpca_section(ctx: Context) -> Section:
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.core.tasks import get_task
    from icl_circuits.methods.dpca.analysis import dpca_by_layer
    from icl_circuits.viz import dpca as dplots

    cfg, task = ctx.cfg, ctx.cfg.category_task
    batch = build_prompts(ctx.model, task, cfg.prompts(64) // (2 if cfg.layer_stride else 1), cfg.n_demos, seed=cfg.seed)
    # layer 0 left out: token embeddings, where fixed label words have no within-class variance (singular covariance)
    layers = [l for l in cfg.layers(ctx.model.cfg.n_layers) if l > 0][::cfg.dpca_layer_stride]
    res = dpca_by_layer(ctx.model, batch, layers, n_null=cfg.dpca_n_null, seed=cfg.seed, progress=False)
    acc = task_accuracy(ctx, task)
    chance = 1.0 / int(get_task(task).n_classes)
    warnings = [w for w in [dpca_chance_warning(task, acc["value"], acc["low"], acc["high"], chance, cfg.n_demos),
                            V.task_unsolved(task, acc["value"], acc["low"], acc["high"], "label accuracy")] if w]
    var, null95 = res.variance_table(), res.variance_table(null=0.95)
    label = "label" if "label" in var.columns else var.columns[1]
    nuis = var.columns[0]
    above = [l for l in var.index if var.loc[l, label] > null95.loc[l, label]]
    peak = int(var[label].idxmax())
    nulls = res.null_total_marginal_variance[:, res.layers.index(peak), res.marginalizations.index(label)].tolist()
    w = V.null_overlaps(f"label variance at its peak layer {peak}", float(var.loc[peak, label]), nulls)
    if w:
        warnings.append(w)
    w = V.label_token_identity(int(var.index[0]), float(var[label].iloc[0]))
    if w:
        warnings.append(w)
    lams, edges = res.regularizers.tolist(), res.regularizer_on_edge or [None] * len(res.layers)
    table = pd.DataFrame({"layer": var.index, f"{nuis} variance": var[nuis].values, "label variance": var[label].values,
                          "label null 95%": null95[label].values,
                          "lambda (CV)": [f"{v:.3g}" + (f" ({e} of grid)" if e else "") for v, e in zip(lams, edges)]})
    caveat = dpca_regularizer_caveat(res.layers, lams, edges, res.meta.get("lambda_grid", [float("nan")]))
    tag = f": {res.model}, task {res.task}, {res.position_kind} positions, {res.n_demos} demos, N={len(batch)}"
    first, last = var.index[0], var.index[-1]
    return Section(
        "dpca", f"dPCA of label-position vectors ({task})",
        "Demixed PCA (Kobak et al. 2016) of the residual stream at the demo answer positions (layers >= 1: at "
        "layer 0, the token embeddings, fixed label words have no within-class variance), marginalized by a "
        "nuisance feature of the demo input and by the label class. Variance per marginalization per layer, with "
        f"the 95th percentile of {cfg.dpca_n_null} null draws (condition labels redrawn within each prompt, whole fit "
        f"repeated) drawn in the figure. In-context label accuracy on this task with {cfg.n_demos} demos: "
        f"{acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}], chance {chance:.3f}.",
        figures=[dplots.explained_variance(res, title=f"dPCA variance per marginalization{tag}"),
                 dplots.distances(res, title=f"Mahalanobis distance between clusters{tag}")],
        table=table, data=res.variance_table().reset_index(), warnings=warnings,
        n_prompts=int(res.sample_factors.shape[1]) // max(int(res.n_demos), 1),
        ours=(f"{task}: label variance above its null at {len(above)}/{len(var)} layers (peak at layer {peak}); "
              f"{nuis} variance {var.loc[first, nuis]:.3f} at layer {first} -> {var.loc[last, nuis]:.3f} at {last}."),
        reading=(f"Label information is above the null at layers {', '.join(map(str, above)) or 'none'}; {nuis} "
                 f"variance goes from {var.loc[first, nuis]:.3f} to {var.loc[last, nuis]:.3f} and label variance from "
                 f"{var.loc[first, label]:.3f} to {var.loc[last, label]:.3f}: "
                 + ("label information persists while the nuisance fades, as 2406.16007 report."
                    if var.loc[last, label] > null95.loc[last, label] and var.loc[last, nuis] < var[nuis].max()
                    else "the paper's pattern does not appear here.")
                 + (f" Caveat: {caveat}" if caveat else "")),
    )
