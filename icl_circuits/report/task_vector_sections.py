"""Report sections: task vectors compared (vanilla, local, function, learned) and single- vs
multi-position interchange with necessity. The vectors are built here at the report's layers
(``ReportConfig.layers``) and cached for the circuit sections (``ctx.cache["ltv"]``)."""

from __future__ import annotations

import pandas as pd
import torch

from icl_circuits.core.metrics import wilson
from icl_circuits.core.pairs import TaskVectorPrompts
from icl_circuits.methods.function_vectors import function_vector
from icl_circuits.methods.vectors import TaskVector
from icl_circuits.report import verdicts as V
from icl_circuits.report.config import Context, Section
from icl_circuits.report.sections import local_vector_ceiling, unsolved


def function_vector_at(ctx: Context, prompts: TaskVectorPrompts, top_k: int = 10) -> TaskVector:
    """Todd et al.'s function vector (``methods.function_vectors.function_vector``) at the report's
    block layers, its heads chosen by CIE among the early-middle analysed layers only
    (0 < l <= n_layers / 2, every ``fv_layer_stride``-th of them; scanning every head would cost
    ~n_layers x n_heads patched runs), CIE measured on the first ``fv_prompts`` label-shuffled prompts;
    the top ``top_k`` heads (at most as many as were scanned)."""
    m, L = ctx.model, ctx.model.cfg.n_layers
    cand = [l for l in ctx.cfg.block_layers(L) if 0 < l <= max(1, L // 2)] or [0]  # Todd et al.: early-middle heads
    if ctx.cfg.fv_layer_stride > 1:
        cand = cand[1::ctx.cfg.fv_layer_stride] or cand
    k = min(len(prompts.shuffled), ctx.cfg.fv_prompts or len(prompts.shuffled))
    return function_vector(m, prompts.icl, prompts.shuffled.select(torch.arange(k)),
                           top_k=min(top_k, len(cand) * m.cfg.n_heads), layers=cand,
                           vector_layers=ctx.cfg.block_layers(L))


def learned_vectors(ctx: Context):
    """LTVs trained per report layer on zero-shot prompts of the knowledge task (cached)."""
    if "ltv" not in ctx.cache:
        from icl_circuits.core.pairs import has_bos
        from icl_circuits.core.prompts import build_prompts
        from icl_circuits.methods.learned import train_per_layer

        cfg = ctx.cfg
        n = cfg.ltv_prompts or 2 * cfg.prompts(32)
        train = build_prompts(ctx.model, cfg.knowledge_task, n + n // 4, 0, seed=cfg.seed, variant="zero_shot",
                              prepend_bos=has_bos(ctx.model))  # as task_vector_prompts
        layers = cfg.block_layers(ctx.model.cfg.n_layers)[::cfg.ltv_layer_stride]
        ctx.cache["ltv"] = train_per_layer(ctx.model, train, layers, n_val=n // 4,
                                           epochs=cfg.ltv_epochs if not cfg.quick else min(cfg.ltv_epochs, 4),
                                           lr=cfg.ltv_lr, batch_size=8, seed=cfg.seed, progress=False)
    return ctx.cache["ltv"]


def _rows(method: str, sweep) -> list[dict]:
    n = int(sweep.per_prompt.shape[1])
    return [dict(method=method, layer=int(l), accuracy=float(v), low=float(lo), high=float(hi), n=n)
            for l, v, lo, hi in zip(sweep.layers, sweep.values, sweep.low, sweep.high)]


def _flat(method: str, value: float, n: int, layers: list[int]) -> list[dict]:
    w = wilson(round(value * n), n)
    return [dict(method=method, layer=l, accuracy=value, low=float(w.low), high=float(w.high), n=n) for l in layers]


def task_vectors_section(ctx: Context) -> Section:
    from icl_circuits.core.evaluation import score
    from icl_circuits.core.pairs import NoLengthMatchedAnswers, task_vector_prompts
    from icl_circuits.methods.task_vectors import local_task_vectors, vanilla_task_vector
    from icl_circuits.methods.vectors import evaluate_vector
    from icl_circuits.viz import sweeps

    cfg, task, m = ctx.cfg, ctx.cfg.knowledge_task, ctx.model
    L = m.cfg.n_layers
    n = cfg.prompts(32) // (2 if cfg.layer_stride else 1)
    prompts = task_vector_prompts(m, task, n_demos=cfg.n_demos, n_prompts=n, seed=cfg.seed)
    zs = prompts.zero_shot
    vecs = [vanilla_task_vector(m, prompts.dummy_query, cfg.block_layers(L)), function_vector_at(ctx, prompts),
            learned_vectors(ctx)]
    sw = {v.method: evaluate_vector(m, v, zs) for v in vecs}
    ctx.cache["ltv_sweep"] = sw["learned"]
    rows = [r for meth, s in sw.items() for r in _rows(meth, s)]
    layers = sorted({r["layer"] for r in rows})
    acc = lambda b: float(score(m, b, ["first_token"])["first_token"].float().mean())  # noqa: E731
    rows += _flat("zero-shot", acc(zs), len(zs), layers) + _flat("icl", acc(prompts.icl_eval), len(zs), layers)
    try:
        local = local_task_vectors(m, prompts.icl_eval, cfg.block_layers(L), task=task)
        rows += _rows("local", local)
        k = int(local.per_prompt.shape[1])
        rows += _flat("random-answers", float(local.baseline), k, layers)
    except NoLengthMatchedAnswers:
        pass
    df = pd.DataFrame(rows).assign(metric="first_token", task=task, model=cfg.model_name)
    ceiling = local_vector_ceiling(df)
    ref = {r.method: r for r in df.groupby("method").head(1).itertuples()}
    best = {meth: g.loc[g.accuracy.idxmax()] for meth, g in df.groupby("method")
            if meth not in ("zero-shot", "icl", "random-answers")}
    table = pd.DataFrame([dict(method=k, best_layer=int(b.layer), accuracy=b.accuracy, low=b.low, high=b.high)
                          for k, b in best.items()] +
                         [dict(method=k, best_layer=None, accuracy=ref[k].accuracy, low=ref[k].low, high=ref[k].high)
                          for k in ("zero-shot", "icl", "random-answers") if k in ref])
    warnings = unsolved(ctx, task) + ([ceiling] if ceiling else [])
    z, icl = ref["zero-shot"], ref["icl"]
    b0 = V.baseline_at_icl("zero-shot", z.accuracy, z.high, icl.accuracy)
    if b0:
        warnings.append(b0)
    for meth, b in best.items():
        w = V.interval_spans(f"the best {meth} vector (layer {int(b.layer)})", b.low, b.high, z.accuracy, "zero-shot")
        if w:
            warnings.append(w)
    fig = sweeps.sweep(df.replace({"method": {"local": "local (degenerate: random answers reach ICL)"}})
                       if ceiling else df, f"Task vectors on {task} ({cfg.model_name}, first token, N={len(zs)})")
    order = sorted(best, key=lambda k: -best[k].accuracy)
    return Section(
        "task_vectors", "Task vectors per layer: vanilla, local, function, learned",
        f"First-token accuracy on zero-shot prompts of {task} with one vector injected at the input of block l: "
        "vanilla (Hendel et al. 2023; the mean final-position residual of dummy-query ICL prompts replaces the "
        "residual), function vector (Todd et al. 2024; top-10 heads by causal indirect effect among the analysed "
        "layers, added), learned (Yang et al. 2025; trained per layer with the model frozen, added), local "
        "(2406.16007; answer-position states patched into random-answer twins, scored on those). Flat lines: "
        f"zero-shot, ICL and random-answer accuracy. Layers: {', '.join(map(str, layers))}.",
        figures=[fig], table=table, data=df, n_prompts=len(zs), warnings=warnings,
        ours=(f"{task}: zero-shot {z.accuracy:.2f}, " + ", ".join(f"{k} {best[k].accuracy:.2f} (layer {int(best[k].layer)})"
                                                                  for k in order) + f", ICL {icl.accuracy:.2f}."),
        reading=(f"Best vectors, in order: {', '.join(order)}. The best ({order[0]}, {best[order[0]].accuracy:.2f} at "
                 f"layer {int(best[order[0]].layer)}) recovers "
                 f"{(best[order[0]].accuracy - z.accuracy) / max(icl.accuracy - z.accuracy, 1e-9):.0%} of the gap "
                 f"between zero-shot ({z.accuracy:.2f}) and ICL ({icl.accuracy:.2f})"
                 + ("; learned vectors beat extracted ones, as Yang et al. report." if order[0] == "learned" else
                    "; learned vectors do not beat extracted ones here.")),
    )


def interchange_section(ctx: Context) -> Section:
    from icl_circuits.core.pairs import paired_batches
    from icl_circuits.methods.interchange import interchange
    from icl_circuits.methods.necessity import necessity
    from icl_circuits.viz import interchange as iplots

    cfg, m = ctx.cfg, ctx.model
    a, b = cfg.interchange_pair
    layers = cfg.block_layers(m.cfg.n_layers)
    n = cfg.prompts() // 2 if cfg.layer_stride else cfg.prompts(32)
    src, tgt = paired_batches(m, a, b, n_prompts=n, n_demos=cfg.n_demos, seed=cfg.seed)
    sets = ["answer_-1", "query", "answers", "demo_tokens"] if not cfg.layer_stride else ["answer_-1", "demo_tokens"]
    runs = [interchange(m, src, tgt, pos, layers=layers, source_task=a, target_task=b, progress=False)
            for pos in sets]
    nec = [necessity(m, tgt, pos, layers=layers, seed=cfg.seed, progress=False) for pos in ("query", "answer_-1")]
    df = pd.concat([r.to_dataframe() for r in runs])
    tr = df[df.outcome == "transfer"]
    best = {p: g.loc[g.value.idxmax()] for p, g in tr.groupby("position_set", sort=False)}
    table = pd.DataFrame([dict(intervention=f"interchange @ {p}", layer=int(r.layer), value=r.value, low=r.low,
                               high=r.high, measure="max transfer") for p, r in best.items()] +
                         [dict(intervention=f"noise @ {s.position_set or s.method}", layer=int(s.layers[int(s.values.argmin())]),
                               value=float(s.values.min()), low=float(s.low[int(s.values.argmin())]),
                               high=float(s.high[int(s.values.argmin())]), measure=f"min accuracy (clean {s.baseline:.2f})")
                          for s in nec])
    single, multi = best.get("answer_-1"), best.get("demo_tokens")
    warnings = unsolved(ctx, a, b)
    if single is not None and multi is not None:
        w = V.interval_spans("the best all-demo-token transfer", float(multi.low), float(multi.high),
                             float(single.high), "the single-position upper bound")
        if w or float(multi.low) <= float(single.high):
            warnings.append(w or f"all-demo transfer {multi.value:.2f} [{multi.low:.2f}, {multi.high:.2f}] does not "
                            f"clear the single-position upper bound {single.high:.2f}: the distributed template is not "
                            "shown here.")
    q, one = nec
    drop_q = float(q.baseline) - float(q.values.min())
    drop_1 = float(one.baseline) - float(one.values.min())
    return Section(
        "interchange", f"Single- vs multi-position interchange ({a} -> {b}) and necessity",
        f"Residual activations of {a} prompts (averaged per position) overwrite the same roles in {b} prompts at one "
        "layer; transfer = the model now answers the source task on the target's query, preserve = it still answers "
        "the target task (Wilson 95% bands). Necessity (detail figure): Gaussian noise of the residual's own norm at "
        "the query, or at the last demo answer, and the accuracy that remains.",
        figures=[iplots.interchange(runs), iplots.necessity(nec)], table=table, data=df, n_prompts=int(runs[0].n),
        warnings=warnings,
        ours=(f"max transfer: single position (last answer) {single.value:.2f}, all demo tokens {multi.value:.2f} "
              f"[{multi.low:.2f}, {multi.high:.2f}] at layer {int(multi.layer)} of {m.cfg.n_layers}, N={int(runs[0].n)}."
              if single is not None and multi is not None else ""),
        reading=(f"A single position transfers at most {single.value:.2f}; all demo tokens transfer up to "
                 f"{multi.value:.2f} (layer {int(multi.layer)}, {int(multi.layer) / m.cfg.n_layers:.0%} depth). "
                 f"Noise at the query drops accuracy by up to {drop_q:.2f}, at the last demo answer by {drop_1:.2f}: the "
                 + ("query is necessary and a single demo position is not, as Cheng & Zhang report."
                    if drop_q > drop_1 + 0.1 else "two are not separated here.")
                 if single is not None and multi is not None else ""),
    )


