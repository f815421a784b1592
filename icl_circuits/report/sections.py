"""The sections of the HTML report, in order. Each computes with the public API and explains."""

from __future__ import annotations

import pandas as pd

from icl_circuits.methods.accuracy import accuracy_by_demos, demo_sweep
from icl_circuits.viz import accuracy as accuracy_plots
from icl_circuits.report.suite import Context, Section, section
from icl_circuits.core.task_filters import representable_tasks
from icl_circuits.core.tasks import list_tasks

#: a propagation fit with held-out R² below this predicts worse than the mean: not readable
R2_UNREADABLE = 0.0
#: below this (and >= R2_UNREADABLE) the fit explains little: read with care
R2_WEAK = 0.2


def local_vector_ceiling(df: pd.DataFrame) -> str | None:
    """Why the local-task-vector comparison is degenerate, or None.

    Local vectors are patched into random-answer twins, so they can only show a gain over the
    random-answer baseline. When that baseline's Wilson 95% interval already reaches the ICL
    accuracy (``compare_task_vectors`` rows "random-answers" and "icl"), there is no gap to close.
    """
    ref = {m: g.iloc[0] for m, g in df.groupby("method") if m in ("icl", "random-answers")}
    if len(ref) < 2 or "local" not in set(df.method):
        return None
    icl, rnd = ref["icl"], ref["random-answers"]
    if float(rnd.high) >= float(icl.accuracy):
        return (f"random-answer demos already reach the ICL accuracy (random answers {float(rnd.accuracy):.3f} "
                f"[{float(rnd.low):.3f}, {float(rnd.high):.3f}] vs ICL {float(icl.accuracy):.3f}): the model does not "
                "need correct demo answers here, so the local-vector comparison is degenerate and its curve says "
                "nothing about local task vectors.")
    return None


def propagation_fit_warnings(layers, r2) -> list[str]:
    """Layers whose held-out fit R² makes the polar decomposition W = UP unreadable (< 0) or weak (< 0.2)."""
    r2 = [float(v) for v in r2]
    bad = [l for l, v in zip(layers, r2) if not v >= R2_UNREADABLE]
    weak = [l for l, v in zip(layers, r2) if R2_UNREADABLE <= v < R2_WEAK]
    out = []
    if bad:
        vals = ", ".join(f"{l}: {v:.2f}" for l, v in zip(layers, r2) if l in bad)
        out.append(f"held-out R² < 0 at layer(s) {', '.join(map(str, bad))} ({vals}): the linear map predicts worse "
                   "than the mean there, so its rotation/scaling (tr(U)/d, gain, eigenvalue spread) at those layers is "
                   "not a property of the model (greyed in the figures).")
    if weak:
        out.append(f"held-out R² below {R2_WEAK} at layer(s) {', '.join(map(str, weak))}: the map explains little of "
                   "the propagated effect; read its decomposition there with care.")
    return out


def dpca_chance_warning(task: str, value: float, low: float, high: float, chance: float, n_demos: int) -> str | None:
    """The dPCA task is not learned in context when its label accuracy's Wilson 95% interval reaches chance."""
    if low <= chance:
        return (f"in-context label accuracy on {task} with {n_demos} demos is {value:.3f} [{low:.3f}, {high:.3f}], not "
                f"above chance ({chance:.3f}): the model has not learned this task in context, so this dPCA shows no "
                "learned label representation (label structure here is what the prompt words carry, not a solution).")
    return None


@section("accuracy")
def accuracy_section(ctx: Context) -> Section:
    cfg = ctx.cfg
    tasks = representable_tasks(ctx.model) if not cfg.quick else [cfg.knowledge_task, cfg.category_task, "uppercase"]
    unreadable = [t for t in list_tasks() if t not in tasks] if not cfg.quick else []
    df = accuracy_by_demos(ctx.model, demo_sweep(ctx.model, tasks, [0, 1, 2, 4, 8], cfg.prompts(), seed=cfg.seed)).to_dataframe()
    wide = df[df.metric == "first_token"].pivot(index="task", columns="n_demos", values="value").loc[tasks].reset_index()
    wide.columns = [str(c) if c == "task" else f"k={c}" for c in wide.columns]
    return Section(
        "accuracy", "ICL accuracy vs number of demos",
        "Top-1 accuracy of the first answer token over the whole vocabulary on fresh prompts, with Wilson 95% "
        "intervals. On categorization tasks zero-shot accuracy by this metric is near 0, not the label-word chance "
        "1/C: their label words are drawn per prompt, so without demos nothing names the classes, and the model "
        "ranks every vocabulary token (label-word accuracy, chance 1/C, is the `label` metric of "
        "`icl-circuits evaluate`)."
        + (f" Not shown: {', '.join(unreadable)}, whose words this model's tokenizer maps to its unknown token."
           if unreadable else ""),
        figures=[accuracy_plots.accuracy_by_demos(df, f"ICL accuracy of {cfg.model_name}")],
        table=wide, n_prompts=int(df.n.max()),
    )


@section("saliency")
def saliency_section(ctx: Context) -> Section:
    from icl_circuits.viz import saliency as splots
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.saliency import saliency_flow

    cfg = ctx.cfg
    batch = build_prompts(ctx.model, cfg.knowledge_task, cfg.prompts(32), cfg.n_demos, seed=cfg.seed)
    res = saliency_flow(ctx.model, batch, loss="full_vocab", progress=False)
    df = res.to_dataframe()
    return Section(
        "saliency", "Saliency flow: label words as anchors (Wang et al. 2023)",
        f"Saliency I_l = |sum_h A_(l,h) * dL/dA_(l,h)| from one forward and one backward pass on "
        f"{len(batch)} prompts of {cfg.knowledge_task} ({cfg.n_demos} demos), loss = cross-entropy of the gold "
        "first answer token over the vocabulary. S_wp: text to label words; S_pq: label words to the final "
        "position; S_ww: all other pairs. On GPT2-XL the paper found S_wp dominating shallow layers and S_pq "
        "deep layers.",
        figures=[splots.flows(res), splots.heatmap(res, example=0)],
        table=df if len(df) <= 60 else None, data=df if len(df) > 60 else None, n_prompts=int(res.per_prompt.shape[-1]),
    )


@section("task_vectors")
def task_vectors_section(ctx: Context) -> Section:
    from icl_circuits.methods.learned import train_per_layer
    from icl_circuits.viz import sweeps
    from icl_circuits.core.pairs import task_vector_prompts
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.task_vectors import compare_task_vectors

    cfg, task = ctx.cfg, ctx.cfg.knowledge_task
    n = cfg.prompts(32)
    train = build_prompts(ctx.model, task, n * 2 + n // 2, 0, seed=cfg.seed, variant="zero_shot")
    ltv = train_per_layer(ctx.model, train, n_val=n // 2, epochs=4 if cfg.quick else 8, lr=2e-2,
                          batch_size=8, seed=cfg.seed, progress=False)
    ctx.cache["ltv"] = ltv
    prompts = task_vector_prompts(ctx.model, task, n_demos=cfg.n_demos, n_prompts=n, seed=cfg.seed)
    df = compare_task_vectors(ctx.model, prompts, top_k=min(10, ctx.model.cfg.n_layers * ctx.model.cfg.n_heads),
                              extra=[ltv]).to_dataframe()
    wide = df.pivot_table(index="layer", columns="method", values="accuracy").reset_index()
    ceiling = local_vector_ceiling(df)
    return Section(
        "task_vectors", "Task vectors per layer: vanilla, local, function, learned",
        f"Accuracy on zero-shot prompts of {task} with one vector injected at the input of each block: vanilla "
        "(Hendel et al. 2023; replaces the final-position residual), function vector (Todd et al. 2024; top heads "
        "by causal indirect effect, added), learned (Yang et al. 2025; trained per layer with the model frozen, "
        "added), local (2406.16007; answer-position states patched into random-answer twins). Flat reference lines: "
        "zero-shot, ICL and random-answer accuracy.",
        figures=[sweeps.sweep(df.replace({"method": {"local": "local (degenerate: random answers reach ICL)"}})
                              if ceiling else df, f"Task vectors on {task} ({cfg.model_name})")], table=wide,
        n_prompts=int(df.n.max()), warnings=[ceiling] if ceiling else [],
    )


@section("interchange")
def interchange_section(ctx: Context) -> Section:
    from icl_circuits.core.pairs import paired_batches
    from icl_circuits.methods.interchange import interchange
    from icl_circuits.viz import interchange as iplots

    cfg = ctx.cfg
    a, b = cfg.interchange_pair
    src, tgt = paired_batches(ctx.model, a, b, n_prompts=cfg.prompts(32), n_demos=cfg.n_demos, seed=cfg.seed)
    runs = [interchange(ctx.model, src, tgt, pos, source_task=a, target_task=b, progress=False)
            for pos in ["answer_0", "answer_-1", "answers", "demo_tokens", "query"]]
    df = pd.concat([r.to_dataframe() for r in runs])
    return Section(
        "interchange", f"Single- vs multi-position interchange ({a} -> {b})",
        f"Residual activations of {a} prompts (averaged per position) overwrite the same roles in {b} prompts at one "
        "layer; transfer = the model now answers the source task on the target's query, preserve = it still answers "
        "the target task (Cheng & Zhang 2026). Wilson 95% bands. The published finding: single positions transfer "
        "nothing, the whole set of demo positions transfers the task in early layers.",
        figures=[iplots.interchange(runs)], table=_transfer_pivot(df), data=df, n_prompts=int(runs[0].n),
    )


def _transfer_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Transfer rate per layer (rows) and position set (columns): the compact view of the tidy frame."""
    t = df[df.outcome == "transfer"].pivot_table(index="layer", columns="position_set", values="value", sort=False)
    t.columns = [f"transfer @ {c}" for c in t.columns]
    return t.reset_index()


@section("heads")
def heads_section(ctx: Context) -> Section:
    from icl_circuits.methods.attribution import head_attribution, scan_agreement
    from icl_circuits.methods.heads import head_ablation_scan
    from icl_circuits.viz import heads as cplots
    from icl_circuits.core.prompts import build_prompts

    cfg = ctx.cfg
    batch = build_prompts(ctx.model, cfg.knowledge_task, cfg.prompts(32), cfg.n_demos, seed=cfg.seed)
    exact = head_ablation_scan(ctx.model, batch, how="mean", metric="logit_diff_to_mean", progress=False)
    approx = head_attribution(ctx.model, batch, how="mean", metric="logit_diff_to_mean")
    import warnings

    with warnings.catch_warnings():  # stated in the text below
        warnings.simplefilter("ignore", UserWarning)
        agree = scan_agreement(exact, approx)
    k = agree["top_k"]
    verdict = (f" They disagree on the top {k} heads (the estimate misses {agree['missed']}, most important "
               "first): rank heads by the exact scan." if agree["disagree"] else "")
    return Section(
        "heads", "Head ablation: exact scan and attribution patching",
        f"Effect on the gold logit difference of mean-ablating each head alone ({cfg.knowledge_task}, "
        f"{cfg.n_demos} demos), computed exactly (heads batched per forward, clean prefix reused) and by "
        f"attribution patching (one forward and one backward pass). Agreement for mean ablation at every position "
        f"({agree['ablation']}): Spearman {agree['spearman']:.2f}, top-{k} overlap {agree['top_k_overlap']:.2f}."
        f"{verdict} Agreement depends on the ablation: attribution is a first-order estimate, so it tracks mean "
        "ablation (a small change) better than zero ablation (`icl-circuits heads`' default), where it can miss "
        "the heads that matter most.",
        figures=[cplots.head_scan(exact), cplots.scan_vs_attribution(exact, approx)],
        n_prompts=int(exact.clean.shape[0]),
    )


@section("propagation")
def propagation_section(ctx: Context) -> Section:
    from icl_circuits.viz import propagation as pplots
    from icl_circuits.methods.propagation import propagation_by_layer

    cfg = ctx.cfg
    ltv = ctx.cache.get("ltv")
    if ltv is None:
        from icl_circuits.core.prompts import build_prompts
        from icl_circuits.methods.learned import train_per_layer

        train = build_prompts(ctx.model, cfg.knowledge_task, 32 + 8, 0, seed=cfg.seed, variant="zero_shot")
        ltv = train_per_layer(ctx.model, train, n_val=8, epochs=3, lr=2e-2, seed=cfg.seed, progress=False)
    from icl_circuits.core.prompts import build_prompts

    fit = build_prompts(ctx.model, cfg.knowledge_task, cfg.prompts(16), 0, seed=cfg.seed, variant="zero_shot")
    ev = build_prompts(ctx.model, cfg.knowledge_task, 64, 0, seed=cfg.seed + 1, variant="zero_shot")
    res = propagation_by_layer(ctx.model, fit, ev, ltv, n_vectors=64 if cfg.quick else 160, seed=cfg.seed,
                               progress=False)
    return Section(
        "propagation", "Linear propagation of learned task vectors: rotation vs scaling",
        "A linear map W from a vector injected at layer l to its effect on the final residual, fitted by least "
        "squares, and its polar decomposition W = U P (U a rotation, P a stretch). tr(U)/d near 1 means W mostly "
        "scales; lower values mean the vector is rotated on its way to the output (Yang et al. 2025: early vectors "
        "are rotated into the label subspace, late ones mostly scaled).",
        figures=[pplots.rotation_scaling(res), pplots.propagation_summary(res)],
        table=res.to_dataframe().assign(fit=["unreadable (R² < 0)" if not v >= R2_UNREADABLE else
                                             f"weak (R² < {R2_WEAK})" if v < R2_WEAK else "ok" for v in res.r2.tolist()]),
        n_prompts=int(res.n_eval), warnings=propagation_fit_warnings(res.layers, res.r2.tolist()),
    )


@section("dpca")
def dpca_section(ctx: Context) -> Section:
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.dpca.analysis import dpca_by_layer
    from icl_circuits.viz import dpca as dplots
    from icl_circuits.core.tasks import get_task

    cfg = ctx.cfg
    batch = build_prompts(ctx.model, cfg.category_task, cfg.prompts(64), cfg.n_demos, seed=cfg.seed)
    res = dpca_by_layer(ctx.model, batch, n_null=cfg.dpca_n_null, seed=cfg.seed, progress=False)
    acc = accuracy_by_demos(ctx.model, demo_sweep(ctx.model, cfg.category_task, [cfg.n_demos], cfg.prompts(64), seed=cfg.seed),
                           metrics=["label"]).to_dataframe().iloc[0]
    chance = 1.0 / int(get_task(cfg.category_task).n_classes)
    at_chance = dpca_chance_warning(cfg.category_task, float(acc.value), float(acc.low), float(acc.high), chance,
                                    cfg.n_demos)
    tag = (f": {res.model_name}, task {res.task}, {res.position_kind} positions, {res.n_demos} demos"
           + (f"<br><sup>task at chance (label accuracy {float(acc.value):.2f}, chance {chance:.2f}): "
              "no learned label representation</sup>"
              if at_chance else ""))
    return Section(
        "dpca", f"dPCA of label-position vectors ({cfg.category_task})",
        "Demixed PCA (Kobak et al. 2016) of the residual stream at the demo answer positions, marginalized by a "
        "nuisance feature of the demo input and by the label class (2406.16007: nuisance information peaks early "
        "and fades, label information stays). Variance explained per marginalization and Mahalanobis distances "
        f"between clusters, per layer; the 95th percentile of {cfg.dpca_n_null} null draws (condition labels "
        "redrawn within each prompt, whole fit repeated) is dashed in the variance figure and dash-dotted in the "
        f"distance figure. In-context label accuracy on this task with {cfg.n_demos} demos: {float(acc.value):.3f} "
        f"[{float(acc.low):.3f}, {float(acc.high):.3f}], chance {chance:.3f}.",
        figures=[dplots.explained_variance(res, title=f"dPCA variance per marginalization{tag}"),
                 dplots.distances(res, title=f"Mahalanobis distance between clusters{tag}")],
        table=res.variance_table(),
        warnings=[at_chance] if at_chance else [],
        n_prompts=int(res.sample_factors.shape[1]) // max(int(res.n_demos), 1),
    )
