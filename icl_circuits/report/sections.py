"""The first sections of the HTML report (accuracy, saliency) and what the later ones share: the
task accuracy behind every "task not solved" warning (``task_accuracy``, ``unsolved``) and the
degeneracy detectors of single sections (``local_vector_ceiling``, ``propagation_fit_warnings``,
``dpca_chance_warning``, ``dpca_regularizer_caveat``). The task-vector and interchange sections are in
``task_vector_sections``, the circuit sections in ``circuit_sections``; ``suite.SECTIONS`` orders them.

Each section computes with the public API and returns a ``Section``: the claim it tests (with the
paper's number, ``verdicts.CLAIMS``) beside ours, one main figure (detail after it), a short
summary table, the full data as a CSV download, a reading generated from the numbers, and
"Not a finding" warnings when the numbers cannot carry the claim (``verdicts``).
"""

from __future__ import annotations

import pandas as pd

from icl_circuits.core.task_filters import representable_tasks
from icl_circuits.core.metrics import auto_metric
from icl_circuits.core.tasks import list_tasks
from icl_circuits.methods.accuracy import accuracy_by_demos, demo_sweep
from icl_circuits.report import verdicts as V
from icl_circuits.report.config import Context, Section
from icl_circuits.report.verdicts import R2_UNREADABLE, R2_WEAK  # noqa: F401  (re-exported)
from icl_circuits.viz import accuracy as accuracy_plots


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


def dpca_regularizer_caveat(layers, regularizers, edges, grid) -> str | None:
    """Layers whose cross-validated dPCA lambda is an end of its grid (``edges[i]``: "lowest" / "highest" /
    None per layer; ``DPCALayerResult.regularizer_on_edge``): a caveat on their axes and subspace distances."""
    flagged = [(l, float(lam), e) for l, lam, e in zip(layers, regularizers, edges) if e]
    if not flagged:
        return None
    parts = []
    for edge, word, why in (("highest", "top", "a larger lambda (as when the condition means are mostly trial noise)"),
                            ("lowest", "bottom", "a smaller lambda (no ridge needed)")):
        at = [f"{l}" for l, _, e in flagged if e == edge]
        if at:
            lam = next(v for _, v, e in flagged if e == edge)
            parts.append(f"at the {word} of its grid (lambda = {lam:.3g}) at layer(s) {', '.join(at)}, where the held-out "
                         f"error may keep falling for {why}")
    return (f"cross-validation chose the ridge {'; and '.join(parts)} (grid {float(grid[0]):.3g} ... {float(grid[-1]):.3g}): "
            "the dPCA axes and the distances in their subspaces are fitted at the grid's bound there; the variance "
            "shares per marginalization do not depend on lambda.")


def primary_metric(task: str) -> str:
    """label accuracy for categorization tasks (label words), first-token accuracy otherwise."""
    return auto_metric(task)


def task_accuracy(ctx: Context, task: str, n_demos: int | None = None) -> dict:
    """The task's primary-metric accuracy with the report's demos (cached; reused from the accuracy section)."""
    cfg = ctx.cfg
    k = cfg.n_demos if n_demos is None else n_demos
    key = ("acc", task, k)
    if key not in ctx.cache:
        metric = primary_metric(task)
        row = accuracy_by_demos(ctx.model, demo_sweep(ctx.model, task, [k], cfg.prompts(), seed=cfg.seed),
                                metrics=[metric]).to_dataframe().iloc[0]
        ctx.cache[key] = dict(metric=metric, value=float(row.value), low=float(row.low), high=float(row.high),
                              n=int(row.n))
    return ctx.cache[key]


def unsolved(ctx: Context, *tasks: str) -> list[str]:
    """``verdicts.task_unsolved`` for each task (at the report's demos)."""
    out = []
    for t in tasks:
        a = task_accuracy(ctx, t)
        w = V.task_unsolved(t, a["value"], a["low"], a["high"], a["metric"])
        if w:
            out.append(w)
    return out


def accuracy_section(ctx: Context) -> Section:
    cfg = ctx.cfg
    if cfg.accuracy_tasks:
        tasks = list(cfg.accuracy_tasks)
    elif cfg.quick:
        tasks = [cfg.knowledge_task, cfg.category_task, "uppercase"]
    else:
        tasks = representable_tasks(ctx.model)
    unreadable = [t for t in list_tasks() if t not in tasks] if not (cfg.quick or cfg.accuracy_tasks) else []
    demos = list(cfg.accuracy_demos)
    metrics = ["first_token", "exact_match"]
    n = cfg.prompts(cfg.accuracy_prompts)
    frames = [accuracy_by_demos(ctx.model, demo_sweep(ctx.model, t, demos, n, seed=cfg.seed),
                                metrics=metrics + (["label"] if primary_metric(t) == "label" else [])).to_dataframe()
              for t in tasks]
    df = pd.concat(frames, ignore_index=True)
    kmax = max(demos)
    for r in df[(df.n_demos == kmax) & (df.metric == df.task.map(primary_metric))].itertuples():
        ctx.cache[("acc", r.task, kmax)] = dict(metric=r.metric, value=float(r.value), low=float(r.low),
                                                high=float(r.high), n=int(r.n))
    ft = df[df.metric == "first_token"].pivot(index="task", columns="n_demos", values="value").loc[tasks]
    em = df[df.metric == "exact_match"].pivot(index="task", columns="n_demos", values="value").loc[tasks]
    table = pd.DataFrame({"task": tasks, **{f"first token k={k}": ft[k].values for k in demos},
                          f"whole answer k={kmax}": em[kmax].values})
    warnings, solved = [], []
    for t in tasks:
        a = ctx.cache[("acc", t, kmax)]
        w = V.task_unsolved(t, a["value"], a["low"], a["high"], a["metric"])
        (warnings.append(w) if w else solved.append(t))
        zero = df[(df.task == t) & (df.n_demos == min(demos)) & (df.metric == a["metric"])].iloc[0]
        b = V.baseline_at_icl(f"{t} with {min(demos)} demos", float(zero.value), float(zero.high), a["value"])
        if b:
            warnings.append(b)
    mean_ft = float(ft[kmax].mean())
    mean_zero = float(ft[min(demos)].mean())
    gap = float((ft[kmax] - em[kmax]).abs().max())
    return Section(
        "accuracy", "ICL accuracy vs number of demos (first token and whole answer)",
        "Top-1 accuracy of the first answer token over the whole vocabulary on fresh prompts (Wilson 95% bands), "
        "and whole-answer exact match (greedy decoding until the template's joiner) in the detail figure. On "
        "categorization tasks zero-shot accuracy by this metric is near 0, not the label-word chance 1/C: nothing "
        "names the classes without demos (label-word accuracy is the `label` metric, in the CSV)."
        + (f" Not shown: {', '.join(unreadable)}, whose words this model's tokenizer maps to its unknown token."
           if unreadable else ""),
        figures=[accuracy_plots.accuracy_by_demos(df, f"First-token accuracy of {cfg.model_name} "
                                                  f"(N={n} per point)", metric="first_token"),
                 accuracy_plots.accuracy_by_demos(df, f"Whole-answer exact match of {cfg.model_name} "
                                                  f"(N={n} per point)", metric="exact_match")],
        table=table, data=df, n_prompts=int(df.n.max()), warnings=warnings,
        ours=f"mean first-token accuracy over {len(tasks)} tasks: zero-shot {mean_zero:.2f}, {kmax} demos {mean_ft:.2f}.",
        reading=(f"With {kmax} demos the model solves {len(solved)} of {len(tasks)} tasks at >= {V.SOLVED} "
                 f"({', '.join(solved) or 'none'}); mean first-token accuracy rises from {mean_zero:.2f} to "
                 f"{mean_ft:.2f}. First-token and whole-answer scores differ by at most {gap:.2f} at k={kmax}, so the "
                 "first-token metric the later sections use " + ("tracks whole answers here." if gap <= 0.1 else
                                                                 "overstates whole answers on some tasks.")),
    )


def saliency_section(ctx: Context) -> Section:
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.saliency import saliency_flow
    from icl_circuits.viz import saliency as splots

    cfg, task = ctx.cfg, ctx.cfg.knowledge_task
    batch = build_prompts(ctx.model, task, cfg.prompts(32) // (2 if cfg.layer_stride else 1), cfg.n_demos,
                          seed=cfg.seed)
    res = saliency_flow(ctx.model, batch, loss="full_vocab", progress=False)
    df = res.to_dataframe()
    names = list(res.flow_names)
    wp, pq = res.flows[names.index("S_wp")], res.flows[names.index("S_pq")]
    L = len(res.layers)
    half = L // 2
    shallow = int((wp[:half] > pq[:half]).sum())
    deep = int((pq[half:] > wp[half:]).sum())
    table = pd.DataFrame({"layers": [f"{res.layers[0]}-{res.layers[half - 1]}", f"{res.layers[half]}-{res.layers[-1]}"],
                          "mean S_wp": [float(wp[:half].mean()), float(wp[half:].mean())],
                          "mean S_pq": [float(pq[:half].mean()), float(pq[half:].mean())],
                          "layers where the paper's flow dominates": [f"{shallow}/{half} (S_wp)", f"{deep}/{L - half} (S_pq)"]})
    lo, hi = res.low, res.high
    resolved = int(((lo[names.index("S_pq")] > hi[names.index("S_wp")]) | (lo[names.index("S_wp")] > hi[names.index("S_pq")])).sum())
    warnings = unsolved(ctx, task)
    if resolved == 0:
        warnings.append("the 95% intervals of S_wp and S_pq overlap at every layer: which flow dominates is not resolved.")
    return Section(
        "saliency", "Saliency flow: label words as anchors (Wang et al. 2023)",
        f"Saliency I_l = |sum_h A_(l,h) * dL/dA_(l,h)| from one forward and one backward pass on {len(batch)} prompts "
        f"of {task} ({cfg.n_demos} demos), loss = cross-entropy of the gold first answer token over the vocabulary. "
        "S_wp: text to label words; S_pq: label words to the final position; S_ww: all other pairs.",
        figures=[splots.flows(res), splots.heatmap(res, example=0)], table=table, data=df,
        n_prompts=int(res.per_prompt.shape[-1]), warnings=warnings,
        ours=f"S_wp > S_pq in {shallow}/{half} shallow layers; S_pq > S_wp in {deep}/{L - half} deep layers ({task}).",
        reading=(f"The paper's pattern {'holds' if shallow > half / 2 and deep > (L - half) / 2 else 'does not hold'} "
                 f"here: text-to-label flow dominates {shallow} of {half} shallow layers and label-to-query flow "
                 f"{deep} of {L - half} deep layers; the flows' intervals separate at {resolved} of {L} layers."),
    )

