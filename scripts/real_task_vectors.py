"""Task vectors compared on SmolLM2-135M: vanilla (Hendel et al. 2023), function vectors (Todd et al.
2024) and learned task vectors (Yang et al. 2025), beside the papers' claims.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/real_task_vectors.py --seed 0 --seeds 1 2

Writes docs/results/real/task_vectors.md and docs/results/real/figures/task_vectors_*.png. Toy
counterparts: scripts/toy_compare_vectors.py (docs/results/vectors_compared.md), scripts/toy_ltv.py
(docs/results/ltv.md), scripts/toy_task_vectors.py (docs/results/task_vectors.md).

Prompts (``core.pairs.task_vector_prompts``, template ``{x} -> {y}``, 8 demos): every prompt starts
with ``<|endoftext|>`` (SmolLM2's pretraining document separator, its BOS in ``load_model``);
without it a zero-shot prompt ``x ->`` starts with its query word, the attention sink, and no
vector transfers (measured and shown on the page). Extraction prompts use ``--seed``, evaluation
prompts (N zero-shot, and the same queries with 8 demos for the ICL line) ``--seed`` + 1.

- vanilla: the final-position residual of N dummy-query ICL prompts, averaged, REPLACES the
  final-position residual of the zero-shot prompts at the input of block l, every layer 0..30.
- function vector: top-10 heads by causal indirect effect (CIE, ``head_cie``: the head's mean
  output over ICL prompts patched into label-shuffled prompts, gain in P(gold)), every head of every
  layer, averaged over the solved tasks (Todd et al. select their heads by the effect averaged over
  tasks; ``--cie-prompts`` prompts per task); per task FV = sum over those heads of the task's mean
  head output through W_O, ADDED at the final position, every layer.
- learned (LTV): one vector per layer (``--ltv-layers``) trained on zero-shot prompts whose queries
  are not among the evaluation queries (AdamW lr 0.1, batch 16, weight decay 0.01, up to 8 epochs,
  early stopping on 16 validation prompts with unseen queries), ADDED at the final position.
- LTV scenarios (first solved task): one layer at the final position; three layers at once; the
  first token (BOS) only, and BOS + final; the zero-shot LTV added to 2- and 8-demo ICL prompts;
  an LTV trained on 2-demo prompts.
Seeds ``--seeds``: new extraction and evaluation prompts; heads and LTV layer from the headline seed.
A task carries claims only if its 8-demo ICL accuracy (first token, N prompts) is >= 0.7.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_common import cell, parser, save_figures, setup, spread, table, write_page  # noqa: E402

NAME = "task_vectors"
TASKS = ("present-past", "singular-plural", "first-letter", "uppercase", "antonym")
DEMOS, SOLVED, TOP_K = 8, 0.7, 10
LTV = dict(lr=0.1, batch_size=16, epochs=6, patience=2, n_val=16, weight_decay=0.01)
N_TRAIN_POOL = 160


def rate_of(ok) -> Any:
    from icl_circuits.core.metrics import wilson

    return wilson(int(ok.sum()), int(ok.numel()))


def batch_rate(model, batch) -> Any:
    from icl_circuits.core.runner import final_logits

    return rate_of((final_logits(model, batch).argmax(-1).cpu() == batch.answer_tokens).float())


def ltv_training_prompts(model, task: str, seed: int, exclude: set[str], n_demos: int = 0):
    """Zero-shot (or ``n_demos``) prompts for LTV training whose queries are not in ``exclude``."""
    from icl_circuits import build_prompts

    pool = build_prompts(model, task, N_TRAIN_POOL, n_demos, seed=seed, variant="zero_shot" if n_demos == 0 else "icl",
                         prepend_bos=True)
    keep = [i for i, q in enumerate(pool.queries) if q not in exclude][:96]  # 80 train + 16 validation
    return pool.select(keep)


def cie_heads(model, prompts: dict, n: int) -> tuple[Any, list[tuple[int, int]], dict]:
    """Head CIE averaged over tasks (``n`` prompts each, every layer); top-10 heads."""
    import torch

    from icl_circuits.methods.function_vectors import head_cie, mean_head_outputs

    per_task = {}
    for task, p in prompts.items():
        mz = mean_head_outputs(model, p.icl)
        per_task[task] = head_cie(model, p.icl, p.shuffled.select(range(n)), mz)
    mean = torch.stack([c.values for c in per_task.values()]).mean(0)
    idx = mean.flatten().argsort(descending=True)[:TOP_K]
    H = mean.shape[1]
    heads = [(int(i) // H, int(i) % H) for i in idx]
    return mean, heads, {t: c.values for t, c in per_task.items()}


def fv_vector(model, icl, heads) -> Any:
    from icl_circuits.core.results import stamp
    from icl_circuits.methods.function_vectors import fv_from_heads, mean_head_outputs
    from icl_circuits.methods.vectors import TaskVector

    L = model.cfg.n_layers
    fv = fv_from_heads(model, mean_head_outputs(model, icl), heads)
    return TaskVector(fv[None].repeat(L + 1, 1), list(range(L + 1)), "add", "function", icl.task,
                      meta={"heads": [list(h) for h in heads], "seed": icl.seed}, **stamp(model, icl))


def _with_grad(fn):
    """``fn`` run with autograd on (``setup`` switches it off for the whole script)."""
    import torch

    def run(*a, **k):
        with torch.enable_grad():
            return fn(*a, **k)
    return run


def compute(args: Any, state: Path) -> dict[str, Any]:
    import torch

    from icl_circuits import build_prompts
    from icl_circuits.core.pairs import task_vector_prompts
    from icl_circuits.methods.learned import joint_accuracy, train_per_layer, train_task_vector
    from icl_circuits.methods.task_vectors import compare_task_vectors, vanilla_task_vector
    from icl_circuits.methods.vectors import evaluate_vector

    t0 = time.perf_counter()
    model = setup(args.threads)  # gradients off; LTV training switches them on for itself (learned.train_task_vector)
    train_per_layer, train_task_vector = _with_grad(train_per_layer), _with_grad(train_task_vector)
    L = model.cfg.n_layers
    st: dict[str, Any] = torch.load(state, weights_only=False) if state.exists() and not args.fresh else {}
    st.update(n_layers=L, seconds=t0, tasks=list(args.tasks), n=args.prompts)
    times = st.setdefault("times", {})
    save = lambda: torch.save(st, state)  # noqa: E731
    n, s = args.prompts, args.seed

    def tick(key: str, start: float) -> None:
        times[key] = time.perf_counter() - start
        st["elapsed"] = sum(times.values())
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {times[key]:.0f} s", flush=True)
        save()

    # ---- ICL gate and the start-token check
    t = time.perf_counter()
    prompts = {task: task_vector_prompts(model, task, DEMOS, n, seed=s, n_eval=n) for task in args.tasks}
    if "gate" not in st:
        st["gate"] = {task: {"icl": batch_rate(model, p.icl_eval), "zero": batch_rate(model, p.zero_shot)}
                      for task, p in prompts.items()}
        tick("gate", t)
    st["solved_all"] = [task for task in args.tasks if st["gate"][task]["icl"].value >= SOLVED]
    solved = st["solved"] = st["solved_all"][: args.max_tasks]
    main = solved[0]
    if "no_bos" not in st:  # the regression: the same measurement without a start token
        t = time.perf_counter()
        p0 = task_vector_prompts(model, main, DEMOS, n, seed=s, n_eval=n, prepend_bos=False)
        tv = vanilla_task_vector(model, p0.dummy_query)
        st["no_bos"] = {"vanilla": evaluate_vector(model, tv, p0.zero_shot),
                        "icl": batch_rate(model, p0.icl_eval), "zero": batch_rate(model, p0.zero_shot)}
        tick("no_bos", t)

    # ---- function-vector heads (CIE averaged over the solved tasks)
    if "cie" not in st:
        t = time.perf_counter()
        mean, heads, per_task = cie_heads(model, {k: prompts[k] for k in solved}, args.cie_prompts)
        st["cie"] = {"mean": mean, "heads": heads, "per_task": per_task}
        tick("cie", t)
    heads = st["cie"]["heads"]

    # ---- per task: vanilla, FV and LTV per layer (headline seed)
    ltv_layers = list(args.ltv_layers)
    st["ltv_layers"] = ltv_layers
    cmp = st.setdefault("compare", {})
    for task in solved:
        if task in cmp:
            continue
        t = time.perf_counter()
        p = prompts[task]
        train = ltv_training_prompts(model, task, s + 100, set(p.zero_shot.queries))
        ltv = train_per_layer(model, train, ltv_layers, seed=s, progress=False, **LTV)
        fv = fv_vector(model, p.icl, heads)
        res = compare_task_vectors(model, p, methods=["vanilla"], extra=[fv, ltv])
        cmp[task] = {"df": res.to_dataframe(), "ltv_meta": ltv.meta, "n_train": len(train), "ltv": ltv}
        tick(f"compare {task}", t)

    # ---- LTV scenarios (main task)
    sc = st.setdefault("scenarios", {})
    p = prompts[main]
    df = cmp[main]["df"]
    learned = df[df.method == "learned"].set_index("layer").accuracy
    best = int(learned.idxmax())
    st["best_ltv_layer"] = best
    exclude = set(p.zero_shot.queries)
    train = ltv_training_prompts(model, main, s + 100, exclude)
    lt = cmp[main]["ltv"]  # the per-layer LTV of the comparison at its best layer: zero-shot, final position
    final_tv = dataclasses.replace(lt, vectors=lt.at(best)[None], layers=[best], meta=lt.meta["per_layer"][str(best)])
    if "final" not in sc:
        sc["final"] = joint_accuracy(model, final_tv, p.zero_shot)
    if "layers" not in sc:
        t = time.perf_counter()
        joint = [l for l in (L // 5, 2 * L // 5, 3 * L // 5)]
        tv = train_task_vector(model, train, layers=joint, seed=s, progress=False, **LTV)
        sc["layers"] = {"layers": joint, "rate": joint_accuracy(model, tv, p.zero_shot), "norm": tv.meta["norm"],
                        "val": tv.meta["val_accuracy_best"]}
        tick("scenario layers", t)
    if "with_icl" not in sc:
        t = time.perf_counter()
        tv = final_tv
        out = {}
        for k in (2, DEMOS):
            icl = build_prompts(model, main, n, k, seed=s + 1, prepend_bos=True)
            shuf = build_prompts(model, main, n, k, seed=s + 1, variant="shuffled_labels", prepend_bos=True)
            for label, b in ((f"{k} demos", icl), (f"{k} demos, labels shuffled", shuf)):
                r = evaluate_vector(model, tv, b, layers=[best])
                out[label] = {"without": batch_rate(model, b), "with": rate_of(r.per_prompt[0])}
        sc["with_icl"] = out
        tick("scenario with ICL", t)
    if "trained_icl" not in sc:  # trained on 2-demo prompts, at the final position or at the demo separators only
        t = time.perf_counter()
        tr2 = ltv_training_prompts(model, main, s + 100, exclude, n_demos=2)
        ev2 = build_prompts(model, main, n, 2, seed=s + 1, prepend_bos=True)
        out = {"without": batch_rate(model, ev2)}
        for pos in args.icl_positions:
            tv = train_task_vector(model, tr2, best, position=pos, seed=s, progress=False, **LTV)
            out[pos] = {"with": joint_accuracy(model, tv, ev2), "norm": tv.meta["norm"][0],
                        "zero_shot_with": joint_accuracy(model, tv, p.zero_shot) if pos == "final" else None}
        sc["trained_icl"] = out
        tick("scenario trained on 2-demo prompts", t)

    # ---- seeds: vanilla (every layer), FV (heads of the headline seed), LTV at the best layer
    seeds = st.setdefault("seeds", {})
    for seed in args.seeds:
        for task in solved[: args.seed_tasks]:
            key = f"{seed}/{task}"
            if key in seeds:
                continue
            t = time.perf_counter()
            ps = task_vector_prompts(model, task, DEMOS, n, seed=seed, n_eval=n)
            lt = int(cmp[task]["df"].query("method == 'learned'").set_index("layer").accuracy.idxmax())
            tr = ltv_training_prompts(model, task, seed + 100, set(ps.zero_shot.queries))
            ltv = train_per_layer(model, tr, [lt], seed=seed, progress=False, **LTV)
            res = compare_task_vectors(model, ps, methods=["vanilla"], extra=[fv_vector(model, ps.icl, heads), ltv])
            seeds[key] = res.to_dataframe()
            tick(f"seed {key}", t)
    st["done"] = True
    save()
    return st


def compute_seeds(args: Any, state: Path) -> None:
    """The extra seeds in their own process and state file (``<state>_seeds.pt``): heads and solved tasks
    from the headline run's state (its head scan must be done); LTVs at every ``--ltv-layers`` layer."""
    import torch

    from icl_circuits.core.pairs import task_vector_prompts
    from icl_circuits.methods.learned import train_per_layer
    from icl_circuits.methods.task_vectors import compare_task_vectors

    model = setup(args.threads)
    train = _with_grad(train_per_layer)
    head_st = torch.load(state, weights_only=False)
    heads, solved = head_st["cie"]["heads"], head_st["solved"]
    path = seeds_path(state)
    ss: dict[str, Any] = torch.load(path, weights_only=False) if path.exists() else {"seeds": {}, "times": {}}
    for seed in args.seeds:
        for task in solved[: args.seed_tasks]:
            key = f"{seed}/{task}"
            if key in ss["seeds"]:
                continue
            t = time.perf_counter()
            ps = task_vector_prompts(model, task, DEMOS, args.prompts, seed=seed, n_eval=args.prompts)
            tr = ltv_training_prompts(model, task, seed + 100, set(ps.zero_shot.queries))
            ltv = train(model, tr, list(args.ltv_layers), seed=seed, progress=False, **LTV)
            res = compare_task_vectors(model, ps, methods=["vanilla"], extra=[fv_vector(model, ps.icl, heads), ltv])
            ss["seeds"][key] = res.to_dataframe()
            ss["times"][f"seed {key}"] = time.perf_counter() - t
            torch.save(ss, path)
            print(f"[{time.strftime('%H:%M:%S')}] seed {key}: {ss['times'][f'seed {key}']:.0f} s", flush=True)


def seeds_path(state: Path) -> Path:
    return state.with_name(state.stem + "_seeds.pt")


def figures(args: Any, st: dict[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    from icl_circuits.viz.sweeps import sweep

    figs = {}
    for task in st["solved"]:
        if task not in st.get("compare", {}):
            continue
        df = st["compare"][task]["df"]
        figs[f"{NAME}_{task}"] = sweep(df[df.method != "random-answers"], title=(
            f"Task vectors per layer — SmolLM2-135M, {task}, first-token accuracy on {st['n']} zero-shot prompts "
            f"(seed {args.seed + 1}); vanilla replaces, function and learned vectors are added at the final position"))
    if "cie" in st:
        mean = st["cie"]["mean"].numpy()
        fig = go.Figure(go.Heatmap(z=mean, x=list(range(mean.shape[1])), y=list(range(mean.shape[0])),
                                   colorscale="RdBu", zmid=0, colorbar=dict(title="mean CIE")))
        hl, hh = zip(*st["cie"]["heads"])
        fig.add_trace(go.Scatter(x=list(hh), y=list(hl), mode="markers", name=f"top-{TOP_K} heads",
                                 marker=dict(symbol="x", color="black", size=10)))
        fig.update_layout(title=(f"Function-vector heads: causal indirect effect on P(gold), averaged over "
                                 f"{len(st['solved'])} tasks x {args.cie_prompts} label-shuffled prompts — SmolLM2-135M"),
                          xaxis_title="head", yaxis_title="layer", template="plotly_white")
        figs[f"{NAME}_cie"] = fig
    return figs


def _best(df, method: str) -> tuple[int, float, float, float, int]:
    g = df[df.method == method].set_index("layer")
    l = int(g.accuracy.idxmax())
    r = g.loc[l]
    return l, float(r.accuracy), float(r.low), float(r.high), int(r.n)


def _at(df, method: str, layer: int) -> float:
    g = df[df.method == method].set_index("layer")
    return float(g.accuracy.loc[layer]) if layer in g.index else float("nan")


def _ref(df, method: str) -> Any:
    r = df[df.method == method].iloc[0]
    return r


def verdicts(args: Any, st: dict[str, Any]) -> list[str]:
    """The claims, the paper's numbers, ours and a verdict by rules fixed before the run:
    a vector "transfers" on a task when its Wilson lower bound exceeds the zero-shot upper bound;
    "near ICL" when its accuracy is at least 0.8 x the ICL accuracy (Hendel's 0.78 / 0.86 = 0.91)."""
    L, solved, cmp, sc = st["n_layers"], st["solved"], st.get("compare", {}), st.get("scenarios", {})
    tasks = [t for t in solved if t in cmp]
    if not tasks:
        return ["## Verdicts", "", "Not testable: no solved task was measured.", ""]
    fv_layer = round(L / 3)
    rows = []

    def above(df, method, layer=None):
        g = df[df.method == method].set_index("layer")
        r = g.loc[layer] if layer is not None else g.loc[g.accuracy.idxmax()]
        return float(r.low) > float(_ref(df, "zero-shot").high), float(r.accuracy)

    def summary(method, layer=None):
        n_tr, n_near, accs, icls, zs = 0, 0, [], [], []
        for t in tasks:
            df = cmp[t]["df"]
            tr, acc = above(df, method, layer)
            icl = float(_ref(df, "icl").accuracy)
            n_tr += tr
            n_near += acc >= 0.8 * icl
            accs.append(acc); icls.append(icl); zs.append(float(_ref(df, "zero-shot").accuracy))
        return n_tr, n_near, float(np.mean(accs)), float(np.mean(icls)), float(np.mean(zs))

    k = len(tasks)
    tr, near, acc, icl, z = summary("vanilla")
    lv = [_best(cmp[t]["df"], "vanilla")[0] for t in tasks]
    verdict = ("reproduced" if near >= k - 1 and k >= 3 else "partly" if tr >= 1 else "not reproduced")
    rows.append(["Vanilla task vector (replace at the final position) recovers most of ICL from zero-shot",
                 "LLaMA-7B, 18 tasks: zero-shot 0.13, TV 0.78, ICL 0.86",
                 f"mean over {k} tasks: zero-shot {z:.2f}, best-layer TV {acc:.2f}, ICL {icl:.2f}; transfers on {tr}/{k}, "
                 f"near ICL on {near}/{k}; best layers {lv} of {L}", verdict])
    tr, near, acc, icl, z = summary("function", fv_layer)
    verdict = "reproduced" if tr >= k - 1 and k >= 3 else "partly" if tr >= 1 else "not reproduced"
    trb, _, accb, _, _ = summary("function")
    rows.append([f"Function vector (top-{TOP_K} CIE heads, added at ~L/3) triggers the task in zero-shot prompts",
                 "GPT-J and others (Todd et al.); Llama3-8B FV 27-52% per layer (Yang et al.)",
                 f"at l={fv_layer}: mean {acc:.2f} (zero-shot {z:.2f}, ICL {icl:.2f}), transfers on {tr}/{k}; best layer: "
                 f"mean {accb:.2f}, transfers on {trb}/{k}", verdict])
    cells = better = 0
    for t in tasks:
        df = cmp[t]["df"]
        for l in st["ltv_layers"]:
            cells += 1
            better += _at(df, "learned", l) >= max(_at(df, "vanilla", l), _at(df, "function", l))
    tr, near, acc, icl, z = summary("learned")
    acc_v = summary("vanilla")[2]
    verdict = ("reproduced" if better == cells and acc >= acc_v else "partly" if better >= cells / 2
               else "not reproduced")
    rows.append(["LTVs beat vanilla TVs and FVs at every layer",
                 "Llama3-8B: LTV ~76-84% vs 27-52%",
                 f"LTV >= both at {better}/{cells} (task, layer) cells (layers {st['ltv_layers']}); best-layer LTV mean "
                 f"{acc:.2f} vs best-layer vanilla {acc_v:.2f} (LTVs only at {len(st['ltv_layers'])} layers, not at the "
                 f"vanilla's best), near ICL on {near}/{k}", verdict])
    if sc:
        main = solved[0]
        zdf = cmp[main]["df"]
        zhi = float(_ref(zdf, "zero-shot").high)
        ti = sc.get("trained_icl")
        works = bool(ti and "separators" in ti and ti["separators"]["with"].low > ti["without"].high)
        lay = sc.get("layers")
        wi = sc.get("with_icl", {})
        helped = [name for name, r in wi.items() if r["with"].value >= r["without"].value]
        parts = []
        if ti:
            parts.append(f"at the demo separators of 2-demo prompts {cell(ti['separators']['with'])} vs "
                         f"{cell(ti['without'])} without")
        if lay:
            parts.append(f"layers {lay['layers']} at once {cell(lay['rate'])}")
        parts.append(f"with ICL prompts: not hurt on {len(helped)}/{len(wi)} prompt sets")
        if ti and "final" in ti:
            parts.append(f"trained on 2-demo prompts (final): {cell(ti['final']['with'])}")
        ok = works + bool(lay and lay["rate"].low > zhi) + (len(helped) == len(wi) and len(wi) > 0)
        verdict = "reproduced" if ok == 3 else "partly" if ok >= 1 else "not reproduced"
        rows.append(["LTVs also work at other positions, at several layers at once and with ICL prompts",
                     "Llama models (Yang et al.): qualitative", f"{main}: " + "; ".join(parts), verdict])
    return ["## Verdicts", "",
            "Rules fixed before the run: a vector *transfers* on a task when its Wilson lower bound exceeds the "
            "zero-shot upper bound; *near ICL* when its accuracy is >= 0.8 x the task's ICL accuracy. "
            "Best layers are chosen on the evaluation prompts (optimistic by a little; the seed table shows the "
            "same layers on new prompts).", "",
            table(["claim", "paper (model)", "SmolLM2-135M (seed %d, N = %d)" % (args.seed, st["n"]), "verdict"], rows), ""]


def page(args: Any, st: dict[str, Any], links: dict[str, str]) -> str:
    L, n, solved, gate = st["n_layers"], st["n"], st["solved"], st["gate"]
    cmp, sc, seeds = st.get("compare", {}), st.get("scenarios", {}), st.get("seeds", {})
    fv_layer = round(L / 3)
    link = lambda k: links.get(f"{NAME}_{k}", "")  # noqa: E731
    c3 = lambda v, lo, hi: f"{v:.2f} [{lo:.2f}, {hi:.2f}]"  # noqa: E731
    md = ["# Task vectors compared (Hendel, Todd, Yang) on SmolLM2-135M", ""]
    if not st.get("done"):
        md += ["**Partial run**: the measurements stopped before the end; sections without data say so.", ""]
    md += [
        "Papers: Hendel et al. 2023, *In-Context Learning Creates Task Vectors* (vanilla task vector: the "
        "final-position residual of dummy-query ICL prompts replaces that of a zero-shot prompt; LLaMA-7B, mean "
        "over 18 tasks: zero-shot 0.13, task vector 0.78, ICL 0.86); Todd et al. 2024, *Function Vectors* (the sum "
        "of the mean outputs of the top-10 heads by causal indirect effect, added at ~L/3); Yang, Cho, Ding & Inoue "
        "2025, *Task Vectors, Learned Not Extracted* (a vector trained by gradient descent, added; LTVs beat "
        "vanilla TVs and FVs at every layer, e.g. Llama3-8B ~76-84% vs 27-52%, and work at several positions, "
        "several layers and together with ICL prompts).", "",
        f"Model: SmolLM2-135M-Instruct ({L} layers; layer l = the input of block l, {L} = the final residual). "
        f"Template `{{x}} -> {{y}}`, {DEMOS} demos, N = {n} extraction prompts (seed {args.seed}) and N = {n} "
        f"evaluation prompts (seed {args.seed + 1}); metric: first-token accuracy over the whole vocabulary; "
        "cells: value [Wilson 95% interval]. How each vector is made: see the script's docstring.", "",
        "## Why SmolLM2 gave 0.00 before: the query word was the attention sink", "",
    ]
    nb = st.get("no_bos")
    if nb is not None:
        main = solved[0]
        v = nb["vanilla"]
        best_nb = int(v.values.argmax())
        l_main, a_main, lo_m, hi_m, _ = _best(cmp[main]["df"], "vanilla") if main in cmp else (None, np.nan, np.nan, np.nan, 0)
        md += [
            "SmolLM2's tokenizer adds no BOS, so a zero-shot prompt `look ->` was two tokens and its query word was "
            "position 0. In Llama-family models position 0 is an attention sink: later positions attend to it "
            "heavily but read almost nothing from it. Built that way, no vector can make the model answer: on "
            f"{main} (N = {n}) the vanilla task vector gave at best {float(v.values[best_nb]):.2f} (layer "
            f"{v.layers[best_nb]}) with ICL at {cell(nb['icl'])}. With `<|endoftext|>` (the document separator "
            f"SmolLM2 was pretrained with) first, the same measurement gives {c3(a_main, lo_m, hi_m)} at layer "
            f"{l_main}. (`<|im_start|>`, the chat BOS of the Instruct GGUF, gave 0.08 at best in a 24-prompt probe; "
            "learned vectors at layer 15 reached 0.00 without BOS and 0.97 with it, 80 training prompts, lr 0.1.) "
            "`load_model('smollm2-135m')` now names `<|endoftext|>` as the BOS and `task_vector_prompts` prepends "
            "it (`tests/methods/test_real_task_vectors.py`). The report's LTVs (lr 2e-2, 3 epochs on 24 prompts: "
            "~9 Adam steps, norm <= 4 against a final-position residual of norm ~100-200) were also too small to "
            f"act; here lr {LTV['lr']:g}, batch {LTV['batch_size']}, up to {LTV['epochs']} epochs.", "",
        ]
    md += ["## Which tasks the model solves (gate: 8-demo ICL >= 0.7)", "",
           table(["task", "zero-shot", f"ICL ({DEMOS} demos)", "carries claims"],
                 [[t, cell(gate[t]["zero"]), cell(gate[t]["icl"]), "yes" if t in solved else
                   f"solved, not measured (budget: the first {len(solved)} solved tasks)" if t in st.get("solved_all", [])
                   else "no: model cannot do the task"] for t in st["tasks"]]), ""]
    # ---- per-layer comparison
    rows = []
    for task in solved:
        if task not in cmp:
            rows.append([task] + ["not measured (run stopped)"] * 6)
            continue
        df = cmp[task]["df"]
        z = df[df.method == "zero-shot"].iloc[0]
        i = df[df.method == "icl"].iloc[0]
        bv, bf, bl = _best(df, "vanilla"), _best(df, "function"), _best(df, "learned")
        g = df[df.method == "function"].set_index("layer").loc[fv_layer]
        rows.append([task, f"{z.accuracy:.2f}", c3(i.accuracy, i.low, i.high),
                     f"{c3(*bv[1:4])} (l={bv[0]})", c3(g.accuracy, g.low, g.high),
                     f"{c3(*bf[1:4])} (l={bf[0]})", f"{c3(*bl[1:4])} (l={bl[0]})"])
    md += ["## Vanilla vs function vs learned, per layer", "",
           f"Vanilla and function vectors at every layer 0..{L}; LTVs at layers {st.get('ltv_layers')} (one vector "
           "trained per layer, on zero-shot prompts whose queries are not evaluated). Best layer per method "
           f"(chosen on these evaluation prompts, so slightly optimistic), and the FV at l = {fv_layer} (~L/3, Todd "
           "et al.'s choice):", "",
           table(["task", "zero-shot", "ICL", "best vanilla", f"FV at l={fv_layer}", "best FV", "best LTV"], rows), ""]
    for task in solved:
        if link(task):
            md += [f"### {task}", "", link(task), ""]
    # LTV vs others at the LTV layers
    rows = []
    for task in solved:
        if task not in cmp:
            continue
        df = cmp[task]["df"]
        for l in st["ltv_layers"]:
            rows.append([task, l, f"{_at(df, 'vanilla', l):.2f}", f"{_at(df, 'function', l):.2f}",
                         f"{_at(df, 'learned', l):.2f}"])
    if rows:
        md += ["LTV beside vanilla and FV at the LTV layers:", "",
               table(["task", "layer", "vanilla", "FV", "LTV"], rows), ""]
        beats = [(r[0], r[1]) for r in rows if float(r[4]) >= max(float(r[2]), float(r[3]))]
        md += [f"The LTV is at least as good as both extracted vectors at {len(beats)} of {len(rows)} (task, layer) "
               "cells.", ""]
    if "cie" in st:
        md += ["### Function-vector heads", "",
               f"Top-{TOP_K} heads by CIE averaged over the solved tasks ({args.cie_prompts} label-shuffled prompts "
               f"per task): {', '.join(f'L{l}H{h}' for l, h in st['cie']['heads'])}.", "", link("cie"), ""]
    # ---- scenarios
    md += ["## LTV scenarios (first solved task)", ""]
    if sc:
        best = st["best_ltv_layer"]
        rws = []
        rws.append([f"one layer ({best}), final position (the comparison's LTV)", "zero-shot",
                    cell(sc["final"]) if "final" in sc else "", ""])
        if "layers" in sc:
            r = sc["layers"]
            rws.append([f"layers {r['layers']} at once, final", "zero-shot", cell(r["rate"]),
                        ", ".join(f"{x:.1f}" for x in r["norm"])])
        for name, r in sc.get("with_icl", {}).items():
            rws.append([f"zero-shot LTV at layer {best}, final", f"{name}: without {cell(r['without'])}", cell(r["with"]), ""])
        if "trained_icl" in sc:
            r = sc["trained_icl"]
            for pos, label in (("final", "the final position"), ("separators", "the two demo separators only")):
                if pos not in r:
                    continue
                rws.append([f"trained on 2-demo prompts, layer {best}, at {label}", f"2 demos: without {cell(r['without'])}",
                            cell(r[pos]["with"]), f"{r[pos]['norm']:.1f}"])
            if "final" in r:
                rws.append(["the same (final) vector", "zero-shot", cell(r["final"]["zero_shot_with"]), ""])
        md += [f"Main task {solved[0]}; N = {n} evaluation prompts (seed {args.seed + 1}).", "",
               table(["LTV", "prompts", "accuracy with the LTV", "norm"], rws), ""]
    else:
        md += ["Not measured (run stopped).", ""]
    # ---- seeds
    if seeds:
        rows = []
        for task in solved[: args.seed_tasks]:
            if task not in cmp:
                continue
            df0 = cmp[task]["df"]
            lv, lf, lt = _best(df0, "vanilla")[0], _best(df0, "function")[0], _best(df0, "learned")[0]
            vals = {m: [_at(df0, m, l)] for m, l in (("vanilla", lv), ("function", lf), ("learned", lt))}
            icl = [float(df0[df0.method == "icl"].accuracy.iloc[0])]
            for seed in args.seeds:
                d = seeds.get(f"{seed}/{task}")
                if d is None:
                    continue
                for m, l in (("vanilla", lv), ("function", lf), ("learned", lt)):
                    vals[m].append(_at(d, m, l))
                icl.append(float(d[d.method == "icl"].accuracy.iloc[0]))
            rows.append([task, spread(icl), f"l={lv}: {spread(vals['vanilla'])}", f"l={lf}: {spread(vals['function'])}",
                         f"l={lt}: {spread(vals['learned'])}"])
        md += ["## Headline numbers over seeds", "",
               f"Seeds {args.seed} (headline) and {', '.join(map(str, args.seeds))}: new extraction, training and "
               "evaluation prompts; the layer of each method and the FV heads are the headline seed's.", "",
               table(["task", "ICL", "vanilla", "function vector", "LTV"], rows), ""]
    md += verdicts(args, st)
    hl = [l for l, _ in st["cie"]["heads"]] if "cie" in st else [0]
    md += ["## Toy model vs SmolLM2", "",
           "On toy-icl (docs/results/vectors_compared.md, docs/results/task_vectors.md) the vanilla vector gives "
           "0.00 at every layer >= 1 while function and learned vectors reach 1.00 from layer 1: there the vanilla "
           "failure is real (the toy's zero-shot prompts already carry a BOS). On SmolLM2 the vanilla vector works, "
           "but only in a narrow band of late layers (the table's best layers), where the toy has no room for one; "
           f"the function vector's heads sit in layers {min(hl)}-{max(hl)} of {L}, so adding it at ~L/3 (before them) "
           "is not where it works best (tables above).", ""]
    md += ["## Run time", "", table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in st.get("times", {}).items()]), ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--ltv-layers", type=int, nargs="+", default=[6, 15, 24], help="layers of the per-layer LTVs")
    p.add_argument("--cie-prompts", type=int, default=2, help="label-shuffled prompts per task in the head scan")
    p.add_argument("--seed-tasks", type=int, default=2, help="solved tasks measured on the extra seeds")
    p.add_argument("--max-tasks", type=int, default=4, help="solved tasks the vectors are measured on")
    p.add_argument("--icl-positions", nargs="+", default=["separators"], choices=["final", "separators"],
                   help="positions of the LTVs trained on 2-demo prompts")
    p.add_argument("--state", type=Path, default=None)
    p.add_argument("--fresh", action="store_true", help="ignore a saved state")
    p.add_argument("--page-only", action="store_true")
    p.add_argument("--seeds-only", action="store_true",
                   help="measure only the extra seeds, in a second process, once the head scan of the headline run is saved")
    args = p.parse_args(argv)
    import torch

    state = args.state or Path(f"/tmp/{NAME}_seed{args.seed}_n{args.prompts}_l{'-'.join(map(str, args.ltv_layers))}_c{args.cie_prompts}.pt")
    if args.seeds_only:
        compute_seeds(args, state)
        return
    st = torch.load(state, weights_only=False) if args.page_only else compute(args, state)
    if seeds_path(state).exists():  # the extra seeds measured in their own process (--seeds-only)
        ss = torch.load(seeds_path(state), weights_only=False)
        st["seeds"] = {**st.get("seeds", {}), **ss["seeds"]}
        st["times"] = {**st.get("times", {}), **ss["times"]}
        st["elapsed"] = sum(st["times"].values())
    links = save_figures(figures(args, st), args.out)
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python scripts/real_task_vectors.py --seed {args.seed} --seeds "
               f"{' '.join(map(str, args.seeds))} --prompts {args.prompts} --ltv-layers {' '.join(map(str, args.ltv_layers))} "
               f"--cie-prompts {args.cie_prompts} --seed-tasks {args.seed_tasks} --max-tasks {args.max_tasks} "
               f"--icl-positions {' '.join(args.icl_positions)}")
    path = write_page(args.out, f"{NAME}.md", page(args, st, links), command, time.perf_counter() - st.get("elapsed", 0.0))
    print("wrote", path)


if __name__ == "__main__":
    main()
