"""Label words as local task vectors (arXiv 2406.16007) on SmolLM2-135M; writes docs/results/real/label_words_local.md.

    OMP_NUM_THREADS=1 python scripts/real_label_words_local.py run [--executor ray|local] [--workers 2]
    python scripts/real_label_words_local.py render

``run`` computes the cells of the grid scripts/grids/label_words_local.yaml (analyses:
scripts/studies/label_words_local.py) that the store docs/results/real/grids/label_words_local/ lacks:
after a crash, run it again and only the missing cells are computed. ``render`` writes the page and its
figures from the store alone: every number on the page comes from its cells.

What the paper claims (LLaMA-7B, 32 layers) and what is measured here, per claim:

1. Local task vectors (hidden states at the demo answer positions of an ICL prompt, patched into
   the same positions of its twin whose demo answers are random) carry the task, while the global
   (vanilla, Hendel et al.) task vector, patched into a zero-shot prompt, does not on
   categorization tasks. Measured per layer (every ``stride``-th) on knowledge tasks
   (present-past, singular-plural, antonym) and the natural categorization tasks (sentiment,
   animal-plant), each against its degenerate baselines: random-answer demos (the twin unpatched)
   and zero-shot.
2. On knowledge tasks local vectors converge into a global one in later layers: cosine between
   the answer-position states of different demos of one prompt, per layer, beside the same cosine
   across tasks (the null), and cosine between the mean local vector and the global vector.
3. Saliency of the label words for the prediction (S_pq of Wang et al.) peaks mid-depth (layer 14
   of 32).
4. dPCA of label-position states by label and nuisance: nuisance information peaks early and
   fades, label information stays; Mahalanobis distances; label-subspace ablation at an early, a
   middle and a late layer against random subspaces. At the answer position of a task with fixed
   label words the label IS the token there, so the dPCA is also run at the separator position
   (before the label word), where the label is what the model computed from the input.

Tasks whose ICL accuracy at 8 demos is below 0.7 are labelled "model cannot do the task" and
carry no claim.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

import real_common as rc  # noqa: E402
from icl_circuits.core.metrics import Rate, wilson  # noqa: E402
from icl_circuits.core.tasks import get_task  # noqa: E402
from icl_circuits.methods.dpca.analysis import DPCALayerResult  # noqa: E402
from icl_circuits.viz import _style  # noqa: E402
from icl_circuits.viz import dpca as dpca_viz  # noqa: E402

NAME = PAGE = "label_words_local"
KNOWLEDGE = ("present-past", "singular-plural", "antonym")
NATURAL = ("sentiment", "animal-plant")
SOLVED = 0.7  # ICL accuracy at 8 demos a task needs to carry a claim
PAPER_LAYERS = 32  # LLaMA-7B
PAPER_SALIENCY_PEAK = 14


# ----------------------------------------------------------------------------- verdict helpers
def _rate(value: float, n: int) -> Rate:
    return wilson(int(round(value * n)), n)


def best_local(s: dict) -> int:
    """Index (into the sweep's layers) of the best local-vector layer above 0: at layer 0 the answer
    positions hold the answer tokens' embeddings, so patching them there just puts the real answers
    back into the twin (trivially the ICL prompt up to those positions)."""
    loc = s["local"]
    idx = [i for i, l in enumerate(loc.layers) if l > 0]
    return max(idx, key=lambda i: float(loc.values[i]))


def solved(s: dict) -> bool:
    return s["icl"].value >= SOLVED


def degenerate_local(s: dict) -> bool:
    """Random-answer demos already reach ICL accuracy (within 0.05 or inside its Wilson interval)."""
    return s["random"].value >= s["icl"].value - 0.05 or s["icl"].low <= s["random"].value


# ----------------------------------------------------------------------------- figures
def fig_local_global(sweeps: list[dict], L: int) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(sweeps), shared_yaxes=True,
                        subplot_titles=[f"{s['task']}{'' if solved(s) else ' (not solved)'}" for s in sweeps])
    for c, s in enumerate(sweeps, start=1):
        for j, (key, name) in enumerate((("local", "local vectors -> random-answer twin"),
                                         ("vanilla", "global (vanilla) vector -> zero-shot"))):
            r = s[key]
            col = _style.color(j)
            fig.add_trace(_style.band(r.layers, r.low.tolist(), r.high.tolist(), col), row=1, col=c)
            fig.add_trace(go.Scatter(x=r.layers, y=r.values.tolist(), mode="lines+markers", name=name, line=dict(color=col),
                                     legendgroup=key, showlegend=c == 1,
                                     hovertemplate=f"{s['task']} {key}<br>layer %{{x}}: %{{y:.2f}}<extra></extra>"),
                          row=1, col=c)
        for j, (key, name) in enumerate((("icl", "ICL (8 demos)"), ("random", "random-answer demos"), ("zero", "zero-shot"))):
            v = s[key].value
            fig.add_trace(go.Scatter(x=[0, L - 1], y=[v, v], mode="lines", name=name, legendgroup=key, showlegend=c == 1,
                                     line=dict(color=_style.color(2 + j), dash=("dash", "dot", "dashdot")[j], width=1.5),
                                     hovertemplate=f"{s['task']} {name}: {v:.2f}<extra></extra>"), row=1, col=c)
        _style.integer_layer_axis(fig, list(range(0, L, 6)), row=1, col=c)  # ticks every 6th layer
    m = sweeps[0]["local"]
    fig.update_layout(title=f"Local vs global task vectors per layer: smollm2-135m, {sweeps[0]['n_demos']} demos, N={sweeps[0]['n']} per task "
                            f"(metric: first-token accuracy; label accuracy for sentiment/animal-plant); local at {len(m.layers)} layers",
                      yaxis_title="accuracy", template="plotly_white", legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_xaxes(title_text="layer")
    return fig


def fig_convergence(conv: pd.DataFrame, tasks: list[str]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["cosine between demos' answer states (centred)",
                                                        "mean local vector vs global vector (centred)"])
    for i, t in enumerate(tasks):
        g, col = conv[conv.task == t], _style.color(i)
        fig.add_trace(go.Scatter(x=g.layer, y=g["within"], mode="lines", name=f"{t}: within prompt", line=dict(color=col),
                                 legendgroup=t), row=1, col=1)
        fig.add_trace(go.Scatter(x=g.layer, y=g["across tasks"], mode="lines", name=f"{t}: vs other tasks (null)",
                                 line=dict(color=col, dash="dot"), legendgroup=t), row=1, col=1)
        fig.add_trace(go.Scatter(x=g.layer, y=g["local-global own"], mode="lines", name=f"{t}: own global",
                                 line=dict(color=col), legendgroup=t, showlegend=False), row=1, col=2)
        fig.add_trace(go.Scatter(x=g.layer, y=g["local-global other tasks"], mode="lines", name=f"{t}: others' global",
                                 line=dict(color=col, dash="dot"), legendgroup=t, showlegend=False), row=1, col=2)
    fig.update_layout(title="Do local vectors converge? smollm2-135m, answer-position states of held-out ICL prompts "
                            "(solid: within task / own task; dotted: null across tasks)", template="plotly_white")
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="cosine")
    return _style.fit_legend(fig)


def fig_saliency(sal: dict, L: int, n_demos: int) -> go.Figure:
    fig = go.Figure()
    for i, (t, (r, peak, _)) in enumerate(sal.items()):
        y = r.flow("S_pq")
        y = (y / y.max()).tolist()
        fig.add_trace(go.Scatter(x=r.layers, y=y, mode="lines+markers", name=f"{t} (peak {peak})",
                                 line=dict(color=_style.color(i))))
    fig.add_vline(x=PAPER_SALIENCY_PEAK / PAPER_LAYERS * L, line=dict(dash="dash", color="gray"),
                  annotation_text=f"paper's peak at the same depth ({PAPER_SALIENCY_PEAK}/{PAPER_LAYERS})")
    n = next(iter(sal.values()))[0].per_prompt.shape[-1]
    fig.update_layout(title=f"Saliency label words -> query (S_pq, label-word loss) per layer, scaled to its maximum: "
                            f"smollm2-135m, {n_demos} demos, N={n} per task", xaxis_title="layer",
                      yaxis_title="S_pq / max over layers", template="plotly_white")
    return _style.integer_layer_axis(fig, list(range(0, L, 3)))



# ----------------------------------------------------------------------------- page text
def _fmt(x: float) -> str:
    return f"{x:.2f}"


def local_section(sweeps: list[dict], L: int) -> tuple[str, dict]:
    rows, verdict_rows = [], {}
    for s in sweeps:
        loc, van = s["local"], s["vanilla"]
        bl, bv = best_local(s), int(van.values.argmax())
        rows.append([s["task"], rc.cell(s["icl"]), rc.cell(s["random"]), rc.cell(s["zero"]),
                     f"{rc.cell(_rate(float(loc.values[bl]), s['n']))} (l={loc.layers[bl]})",
                     f"{rc.cell(_rate(float(van.values[bv]), s['n_zero']))} (l={van.layers[bv]})",
                     s["n"], s["dropped"],
                     "model cannot do the task" if not solved(s) else
                     "degenerate: random-answer demos already at ICL accuracy" if degenerate_local(s) else "ok"])
        verdict_rows[s["task"]] = (bl, bv)
    tab = rc.table(["task", "ICL", "random-answer demos", "zero-shot", "best local (l > 0)", "best global (vanilla)",
                    "N", "dropped", "status"], rows)
    per_layer = []
    for s in sweeps:
        loc, van = s["local"], s["vanilla"]
        per_layer.append([s["task"], *[f"{float(a):.2f} / {float(van.values[van.layers.index(l)]):.2f}"
                                        for l, a in zip(loc.layers, loc.values)]])
    tab2 = rc.table(["task (local / global)", *[f"l={l}" for l in sweeps[0]["local"].layers]], per_layer)
    return tab + "\n\n" + tab2, verdict_rows



def dpca_tables(runs: dict[str, dict[str, DPCALayerResult]]) -> str:
    """Variance share (p) and full-space Mahalanobis distance (p) per layer, each beside its null's
    95th percentile, for every (task, position)."""
    out = []
    for task, by_pos in runs.items():
        for pos, r in by_pos.items():
            pv, pdist = r.p_values()
            v, v95 = r.variance_table(), r.variance_table(null=0.95)
            d, d95 = r.distance_table("full"), r.distance_table("full", null=0.95)
            nuis = r.factors[0]
            rows = []
            for li, l in enumerate(r.layers):
                row = [l]
                for mi, m in enumerate(r.marginalizations[:2]):
                    row += [f"{v.loc[l, m]:.3f} (p={pv[li, mi]:.2f})", f"{v95.loc[l, m]:.3f}"]
                for fi, f in enumerate(r.factors):
                    row += [f"{d.loc[l, f]:.1f} (p={pdist[li, fi, 0]:.2f})", f"{d95.loc[l, f]:.1f}"]
                rows.append(row)
            head = ["layer", f"{nuis} share", "null95", "label share", "null95", f"{nuis} distance", "null95",
                    "label distance", "null95"]
            out += [f"**{task}, {pos} positions** (samples per condition {r.condition_counts.tolist()}; "
                    f"{int(r.null_total_marginal_variance.shape[0])} null draws)", "", rc.table(head, rows), ""]
    return "\n".join(out)


def _above(values: pd.Series, null95: pd.Series) -> list[int]:
    return [int(l) for l in values.index if values[l] > null95[l]]


def _depth(layer: float, n_layers: int) -> str:
    return f"{layer / n_layers:.0%}"


def page(args, sweeps, conv, sal, dp, abl, abl_layers, seeds, best, links, t, layers) -> str:
    L = args.n_layers
    by = {s["task"]: s for s in sweeps}
    ok = [s for s in sweeps if solved(s)]
    unsolved = [s["task"] for s in sweeps if not solved(s)]
    know = [s for s in ok if s["task"] in KNOWLEDGE]
    nat = [s for s in ok if s["task"] in NATURAL]
    ev = args.seed + 1
    tab, _ = local_section(sweeps, L)
    verdicts = []  # (claim, paper, ours, verdict)

    def sp(task, key, digits=2):
        return rc.spread(seeds[task][key], digits)

    # --- claim 1: local vs global on categorization tasks
    def local_ok(s):  # local vectors restore the ICL answer: some layer's Wilson low above the random baseline
        lo = s["local"].low[best_local(s)]
        return float(lo) > s["random"].value

    def global_fails(s):
        return float(s["vanilla"].values.max()) <= s["zero"].value + 0.05

    cat_lines, cat_v = [], []
    for s in nat:
        bl = s["local"].layers[best_local(s)]
        d = degenerate_local(s)
        cat_lines.append(
            f"- **{s['task']}**: ICL {rc.cell(s['icl'])}, random-answer demos {rc.cell(s['random'])}, zero-shot "
            f"{rc.cell(s['zero'])}; best local (layer > 0) {float(s['local'].values[best_local(s)]):.2f} at layer {bl} "
            f"({_depth(bl, L)} depth); best global {float(s['vanilla'].values.max()):.2f} at layer "
            f"{s['vanilla'].best_layer}. Over seeds {args.seed}, {', '.join(map(str, args.seeds))}: ICL {sp(s['task'], 'icl')}, "
            f"random-answer {sp(s['task'], 'random')}, zero-shot {sp(s['task'], 'zero')}, local at layer {best[s['task']][0]} "
            f"{sp(s['task'], 'local')}, global at layer {best[s['task']][1]} {sp(s['task'], 'vanilla')}."
            + (" **Degenerate baseline**: random-answer demos already reach ICL accuracy, so a local vector that "
               "'works' here shows nothing." if d else "")
            + (" The zero-shot prompt already reaches ICL accuracy (natural label words), so the global vector's "
               "baseline is degenerate too." if s["zero"].value >= s["icl"].value - 0.05 else ""))
        cat_v.append("not testable here" if d else
                     "reproduced" if local_ok(s) and global_fails(s) else
                     "partly" if local_ok(s) or global_fails(s) else "not reproduced")
    if not nat:
        v1 = "not testable here"
        why1 = "no categorization task is solved (ICL < 0.7)"
    elif all(v == "not testable here" for v in cat_v):
        v1, why1 = "not testable here", "random-answer demos already reach ICL accuracy on every solved categorization task"
    else:
        tested = [v for v in cat_v if v != "not testable here"]
        v1 = tested[0] if len(set(tested)) == 1 else "partly"
        why1 = "; ".join(f"{s['task']}: {v}" for s, v in zip(nat, cat_v))
    verdicts.append(("Categorization: global TV ~chance, local TVs work at middle layers",
                     "global ~50%, local works at layers 6-10 of 32 (LLaMA-7B)",
                     "; ".join(f"{s['task']}: local {sp(s['task'], 'local')} vs random-answer {sp(s['task'], 'random')}, "
                               f"global {sp(s['task'], 'vanilla')} vs zero-shot {sp(s['task'], 'zero')}" for s in nat) or "-",
                     f"{v1} ({why1})"))

    # --- knowledge tasks: local carries the task
    kn_lines, kn_v = [], []
    for s in know:
        d = degenerate_local(s)
        gap = s["icl"].value - s["random"].value
        rec = [l for l, v in zip(s["local"].layers, s["local"].values.tolist())
               if gap > 0 and (v - s["random"].value) >= 0.8 * gap]
        kn_lines.append(
            f"- **{s['task']}**: ICL {rc.cell(s['icl'])}, random-answer demos {rc.cell(s['random'])}, zero-shot "
            f"{rc.cell(s['zero'])}; local vectors recover >= 80% of the ICL - random gap at layers "
            f"{', '.join(map(str, rec)) or 'none'} (layer 0 is trivial: the real answer tokens put back; the last layer "
            f"that still recovers it says how long the answer positions carry what the query needs); best global "
            f"(vanilla) {float(s['vanilla'].values.max()):.2f}. Seeds: local "
            f"at layer {best[s['task']][0]} {sp(s['task'], 'local')}, random-answer {sp(s['task'], 'random')}, ICL {sp(s['task'], 'icl')}."
            + (" **Degenerate baseline**: random-answer demos already reach ICL accuracy." if d else ""))
        kn_v.append("not testable here" if d else "reproduced" if local_ok(s) else "not reproduced")

    # --- claim 2: convergence
    kt = [s["task"] for s in know]
    conv_lines, v2 = [], "not testable here"
    if kt:
        g = conv[conv.task.isin(kt)].groupby("layer")[["within", "across tasks", "local-global own",
                                                         "local-global other tasks"]].mean()
        gap = g["within"] - g["across tasks"]
        lg = g["local-global own"] - g["local-global other tasks"]
        lmax = int(gap.idxmax())
        late = [l for l in g.index if l >= L // 3]
        lg_late = float(lg.loc[late].mean())
        geo = gap[lmax] > gap[0] + 0.1 and lmax >= L // 3 and lg_late > 0.1
        transfer = any(float(by[k]["vanilla"].values.max()) >= by[k]["icl"].value - 0.1 for k in kt)
        v2 = ("reproduced" if geo and transfer else "partly" if geo or transfer else "not reproduced")
        conv_lines = [
            f"Mean over the solved knowledge tasks ({', '.join(kt)}): within-prompt cosine minus the across-task null "
            f"{gap[0]:.2f} at layer 0 (token embeddings: answers of one task share form, e.g. '-ed'), largest "
            f"{gap[lmax]:.2f} at layer {lmax} ({_depth(lmax, L)} depth), {gap.iloc[-1]:.2f} at layer {int(g.index[-1])}. "
            f"Cosine of the mean local vector with the task's own global vector minus with other tasks' global vectors, "
            f"mean over layers >= {L // 3}: {lg_late:.2f}. Does the global vector carry the task when patched into a "
            f"zero-shot prompt? best vanilla accuracy: "
            + ", ".join(f"{k} {float(by[k]['vanilla'].values.max()):.2f} (ICL {by[k]['icl'].value:.2f})" for k in kt) + ".",
            "",
            rc.table(["layer", "within", "across tasks (null)", "gap", "local-global own", "local-global others"],
                     [[int(l), _fmt(r["within"]), _fmt(r["across tasks"]), _fmt(r["within"] - r["across tasks"]),
                       _fmt(r["local-global own"]), _fmt(r["local-global other tasks"])]
                      for l, r in g.iterrows() if l % 3 == 0 or l == g.index[-1]]),
        ]
        verdicts.append(("Knowledge tasks: local vectors converge into a global one in later layers",
                         "convergence at layers 12-15 of 32 (LLaMA-7B)",
                         f"cosine gap within-across {gap[0]:.2f} (layer 0) -> {gap[lmax]:.2f} (layer {lmax}); local-global "
                         f"own-others {lg_late:.2f}; global vector accuracy "
                         + ", ".join(f"{k} {sp(k, 'vanilla')}" for k in kt) + " (seed 0 only for cosines)",
                         f"{v2} ({'geometric convergence' if geo else 'no geometric convergence beyond layer 0'}; "
                         f"{'a global vector reaches ICL - 0.1' if transfer else 'the global vector stays below ICL - 0.1: '}"
                         + ("" if transfer else ", ".join(f"{k} {float(by[k]['vanilla'].values.max()):.2f} vs ICL "
                                                           f"{by[k]['icl'].value:.2f}, zero-shot {by[k]['zero'].value:.2f}"
                                                           for k in kt)) + ")"))
    verdicts.insert(1, ("Knowledge tasks: local vectors at the answer positions carry the task",
                        "local vectors work (LLaMA-7B)",
                        "; ".join(f"{s['task']}: local {sp(s['task'], 'local')} vs random-answer {sp(s['task'], 'random')}, "
                                  f"ICL {sp(s['task'], 'icl')}" for s in know) or "-",
                        ("; ".join(f"{s['task']}: {v}" for s, v in zip(know, kn_v))) or "not testable here"))

    # --- claim 3: saliency
    sal_lines, v3 = [], "not testable here"
    if sal:
        peaks = {k: seeds[k]["sal"] for k in sal}
        allp = np.array([p for v in peaks.values() for p in v], dtype=float)
        frac, paper = allp.mean() / L, PAPER_SALIENCY_PEAK / PAPER_LAYERS
        v3 = "reproduced" if abs(frac - paper) <= 0.1 else "partly" if abs(frac - paper) <= 0.2 else "not reproduced"
        sal_lines = [f"- **{k}**: S_pq peaks at layer {r[1]} (S_wp at layer {r[2]}); over seeds: {rc.spread(peaks[k], 1)}"
                     for k, r in sal.items()]
        verdicts.append(("Saliency of label words peaks mid-depth", f"layer {PAPER_SALIENCY_PEAK} of {PAPER_LAYERS} "
                         f"({paper:.0%} depth, LLaMA-7B)", f"S_pq peak layer {allp.mean():.1f} ± {allp.std(ddof=1) if allp.size > 1 else 0:.1f} "
                         f"({frac:.0%} depth; {len(sal)} tasks x {len(args.seeds) + 1} seeds)",
                         f"{v3} (tolerance fixed in advance: within 10% of depth = reproduced, 20% = partly)"))

    # --- claim 4: dPCA
    dp_lines, v4 = [], []
    for task, r in dp.items():
        for pos, res in r.items():
            v = res.variance_table()
            d, d95 = res.distance_table("full"), res.distance_table("full", null=0.95)
            nuis = res.factors[0]
            lab_above, nuis_above = _above(d["label"], d95["label"]), _above(d[nuis], d95[nuis])
            peak = int(d[nuis].idxmax())
            fades = d[nuis].iloc[-1] < 0.5 * d[nuis].max()
            stays = set(res.layers[len(res.layers) // 2:]) <= set(lab_above)
            line = (f"- **{task}, {pos}**: label share of condition-mean variance {v['label'].iloc[0]:.3f} at layer "
                    f"{res.layers[0]} -> {v['label'].iloc[-1]:.3f} at layer {res.layers[-1]}; label clusters further apart "
                    f"than the null's 95th percentile at layers {lab_above or 'none'}; {nuis} clusters at layers "
                    f"{nuis_above or 'none'}, {nuis} distance peaks at layer {peak} and is "
                    f"{'below half its peak' if fades else 'not below half its peak'} at the last layer.")
            if pos == "answer":
                line += (f" **The label variance here is the label token's identity** (the demo answer IS the label word "
                         f"'{get_task(task).label_words[0]}' or '{get_task(task).label_words[1]}'; share "
                         f"{v['label'].iloc[0]:.3f} already at layer {res.layers[0]}): it says nothing about a learned label "
                         "representation.")
            else:
                v4.append((task, stays, fades and peak <= L // 2))
            dp_lines.append(line)
    if v4:
        both = [s and f for _, s, f in v4]
        one = [s or f for _, s, f in v4]
        v4v = "reproduced" if all(both) else "partly" if any(one) else "not reproduced"
        verdicts.append(("dPCA: nuisance information peaks early and fades, label information stays",
                         "string length peaks early and fades; label stays (LLaMA-7B, synthetic tasks)",
                         "; ".join(f"{t}: label stays {'yes' if s else 'no'}, nuisance peaks early and fades "
                                   f"{'yes' if f else 'no'}" for t, s, f in v4) + " (separator positions, seed 0, "
                         f"{args.null_draws} null draws)", f"{v4v} (read at the separator: at the answer position the label "
                         "is the token itself)"))
    abl_lines = []
    for task, rows in abl.items():
        for a in rows:
            abl_lines.append([task, a["layer"], a["k"], _fmt(a["clean"]), _fmt(a["ablated"]),
                              f"{a['rand_mean']:.2f} ± {a['rand_sd']:.2f}", f"{a['p']:.2f}", a["n"]])

    parts = [
        "# Label words as local task vectors (arXiv 2406.16007) on SmolLM2-135M", "",
        "> Defaults (issue 24): claim 4's dPCA was computed with the λ grid before issue 24 (10⁻⁷ … 10⁻¹, "
        "cross-validated), which the grid spec `scripts/grids/label_words_local.yaml` pins (`lambda_logspace`) so that "
        "this page is what its grid computes; the default grid is now 10⁻⁷ … 10¹, and a λ chosen on an edge of it is "
        "flagged. On the toy model the wider grid moved λ on letter-string from 0.1 to 1-10 ([../dpca.md](../dpca.md)); "
        "the study issue will re-run this page with it.", "",
        f"Model: `{args.model_name}` ({L} layers, d_model {args.d_model}). Template `{{x}} -> {{y}}`, "
        f"{args.n_demos} demos. Vectors are extracted from prompts of seed {args.seed} and evaluated on held-out prompts of seed "
        f"{ev}, N={args.prompts} per task; headline numbers are repeated for seeds {', '.join(map(str, args.seeds))} "
        f"(extraction seed s, evaluation s + 1, N={args.seed_prompts}, at the layers chosen on seed {args.seed}). "
        "N is below 50 because the whole script must fit the CPU budget of a shared 2-core machine. Layer l = the input of block l (`blocks.{l}.hook_resid_pre`). Metric: first-token accuracy over the "
        "whole vocabulary (knowledge tasks) or label accuracy (argmax over the two label words, chance 0.50: sentiment, "
        "animal-plant). Every prompt starts with the BOS token `<|endoftext|>` (`task_vector_prompts`' default since "
        "commit 1f21e3a: without it the first prompt token is the attention sink and a zero-shot prompt's query word "
        "is that sink). Cells: value [Wilson 95% interval]; seed spreads: mean ± sd (min-max).", "",
        "- **local** (2406.16007): each held-out ICL prompt's residual at its demo answer positions (first answer token) "
        "at layer l overwrites the same positions of its twin whose demo answers are random outputs of the task "
        "(token-length matched; for sentiment/animal-plant a random one of the two label words); baseline = the twin "
        "unpatched (**random-answer demos**).",
        "- **global** (Hendel et al.): mean final-position residual of dummy-query ICL prompts, REPLACING the "
        "final-position residual of zero-shot prompts at layer l; baseline = **zero-shot**.",
        f"- Local vectors at layers {', '.join(map(str, layers))} (every {args.stride}th layer); global vectors at every "
        "layer (they are cheap: zero-shot prompts are a few tokens).", "",
        "## Verdicts", "",
        rc.table(["claim", "paper (model)", f"ours on SmolLM2-135M", "verdict"], verdicts), "",
        "## Does the model do the tasks?", "",
        f"A task carries a claim only if its ICL accuracy at {args.n_demos} demos is >= {SOLVED} (N={args.prompts}, seed {ev}). "
        + (f"**Model cannot do the task**: {', '.join(unsolved)} (excluded from every claim)." if unsolved else
           "All tasks pass."), "",
        tab, "",
        "## Claim 1: local vs global task vectors", "",
        "Paper (LLaMA-7B): on categorization tasks the global vector stays near chance (~50%) while local vectors work "
        "at middle layers (6-10 of 32); on knowledge tasks both work.", "",
        links.get(f"{NAME}_local_global", ""), "",
        *kn_lines, *cat_lines, "",
        "## Claim 2: do local vectors converge into a global one?", "",
        "Paper: on knowledge tasks local vectors converge into a global one in later layers (12-15 of 32). Here: per layer, "
        "the cosine between the (centred) answer-position states of different demos of one held-out ICL prompt, beside "
        "the same cosine between demos of prompts of two different tasks (the null: what position type and format give); "
        "and the cosine of the mean local vector with the task's own global vector vs other tasks' global vectors. "
        "Centring subtracts, per layer, the mean over all five tasks (answer positions; global vectors); it makes the "
        "across-task cosine negative by construction, so the reading is how the within - across gap grows from its "
        "layer-0 value (token embeddings), not its level.", "",
        links.get(f"{NAME}_convergence", ""), "",
        *conv_lines, "",
        "## Claim 3: saliency peak layer", "",
        f"Paper: saliency peaks at layer {PAPER_SALIENCY_PEAK} of {PAPER_LAYERS}. Here: S_pq (Wang et al.: mean "
        "|sum_h A * dL/dA| from the demo label positions to the final position; loss over the label words, for knowledge "
        f"tasks over every answer token in the batch), {args.saliency_prompts} held-out prompts per task and seed.", "",
        links.get(f"{NAME}_saliency", ""), "",
        *sal_lines, "",
        "## Claim 4: dPCA of label-position states", "",
        f"Solved natural categorization tasks, {args.prompts} prompts of seed {args.seed} (one sample per demo), layers "
        f"{', '.join(map(str, dp[next(iter(dp))]['answer'].layers)) if dp else '-'} (layer 0 is left out: the states there are two "
        "token embeddings, a singular covariance). Nuisance: sentiment: topic (film / food); animal-plant: long word "
        f"(>= 6 letters). dPCA with lambda cross-validated; null: the whole fit repeated for {args.null_draws} draws of "
        "condition labels under the null (`null_factors`: labels permuted per prompt, nuisance shuffled within the "
        f"prompt); p = (1 + #draws >= observed) / {args.null_draws + 1}. Answer positions hold the label word itself; "
        "separator positions (` ->`, just before it) hold what the model computed from the input.", "",
        *dp_lines, "",
        dpca_tables(dp), "",
        *[links.get(f"{NAME}_dpca_{task}_{pos}", "") + "\n" for task in dp for pos in ("answer", "separator")],
        "### Label-subspace ablation", "",
        f"The label subspace of the answer-position fit projected out (coordinate set to the dPCA mean's) at the demo "
        f"answer positions at one layer (early {abl_layers[0]}, middle {abl_layers[1]}, late {abl_layers[2]}), on "
        f"{args.ablation_prompts} held-out prompts (seed {ev}); random: {args.random_subspaces} random subspaces of the same "
        f"dimension (mean ± sd); p = (1 + #random draws with accuracy <= ablated) / {args.random_subspaces + 1} "
        "(one-sided: the label subspace hurts more than random).", "",
        rc.table(["task", "layer", "axes", "clean", "label out", "random out", "p", "N"], abl_lines) if abl_lines else "-", "",
        *[links.get(f"{NAME}_ablation_{task}", "") + "\n" for task in abl],
        "## Toy model vs SmolLM2", "",
        "On toy-icl (docs/results/task_vectors.md) random-answer demos reached ICL accuracy on every knowledge task, so "
        "its local-vector results were degenerate; the vanilla vector failed at every layer >= 1 there as well. "
        "docs/results/dpca.md ran on arbitrary-label tasks (letter-string at chance, number solved).", "",
        "## Limits", "",
        f"Layers every {args.stride}th for the vector sweeps (all layers for cosines and saliency). dPCA and the "
        "ablation ran on seed 0 only (the null draws are their uncertainty). Cell time per part (s, the sum of the "
        f"part's cells' `seconds`, one thread each; every convergence cell reads the states of all {args.n_tasks} tasks, "
        "every ablation cell refits the answer-position dPCA without its null draws): "
        + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + ".",
    ]
    return "\n".join(parts)



# ----------------------------------------------------------------------------- the store
def ablation_summary(r) -> dict:
    """Label accuracy clean, with the label subspace out, with random subspaces out (mean, sd) and the
    one-sided p = (1 + #random draws with accuracy <= ablated) / (1 + draws), of one ablation cell."""
    acc = r.label_correct.mean(1)
    ci = r.conditions
    clean, ablated = float(acc[ci.index("clean")]), float(acc[ci.index("ablated")])
    rand = np.array([float(acc[i]) for i, c in enumerate(ci) if c.startswith("random_")])
    p = (1 + int((rand <= ablated).sum())) / (1 + len(rand))
    return {"result": r, "layer": r.layers[0], "clean": clean, "ablated": ablated, "rand_mean": float(rand.mean()),
            "rand_sd": float(rand.std(ddof=1)) if len(rand) > 1 else 0.0, "p": p, "n": int(r.label_correct.shape[1]),
            "k": int(r.n_axes[0])}


def _family(cell) -> str:
    return cell.analysis.split("@")[0]


def read_store(spec: Path, store: Path) -> dict:
    """Everything the page shows, read from the cells of ``spec`` in ``store`` (nothing is computed
    but the page's own summaries): the same structures the script used to build in memory."""
    from icl_circuits import grid

    cells = rc.spec_cells(PAGE, spec, store)
    st = grid.Store(store)
    at = {(c["cell"].analysis, c["cell"].task): c for c in cells}
    tasks = list(dict.fromkeys(c["cell"].task for c in cells))
    analyses = list(dict.fromkeys(c["cell"].analysis for c in cells))
    of = lambda family: [a for a in analyses if a.split("@")[0] == family]  # noqa: E731
    result = lambda analysis, task: st.result(at[(analysis, task)]["key"])  # noqa: E731
    c0 = cells[0]["cell"]

    sweeps = []
    for task in tasks:
        loc, van = result("local_vectors", task), result("global_vector", task)
        k, n_zero = int(loc.per_prompt.shape[1]), int(van.per_prompt.shape[1])
        sweeps.append({"task": task, "metric": loc.metric, "local": loc, "vanilla": van, "n_demos": c0.n_demos,
                       "icl": _rate(loc.meta["icl"], k), "random": _rate(loc.baseline, k),
                       "zero": _rate(van.baseline, n_zero), "n": k, "n_zero": n_zero, "dropped": loc.meta["n_dropped"]})
    ok = [s for s in sweeps if solved(s)]
    info = sweeps[0]["local"].model_info

    rows = grid.load(store, keys=[c["key"] for c in cells])
    conv = pd.concat([rows[rows.key == at[("convergence", t)]["key"]] for t in tasks], ignore_index=True)[
        ["task", "layer", "within", "across tasks", "local-global own", "local-global other tasks"]]
    conv["layer"] = conv["layer"].astype(int)

    sal = {}
    for s in ok:
        r = result("label_saliency", s["task"])
        sal[s["task"]] = (r, int(r.flow("S_pq").argmax()), int(r.flow("S_wp").argmax()))

    dp = {s["task"]: {r.position_kind: r for r in (result(a, s["task"]) for a in of("dpca"))}
          for s in ok if s["task"] in NATURAL}
    abl_layers = [at[(a, tasks[0])]["cell"].params["layer"] for a in of("ablation")]
    abl = {task: [ablation_summary(result(a, task)) for a in of("ablation")] for task in dp}

    # the headline numbers over seeds: the headline seed's cells, then one extra_seed cell per seed
    seeds = {s["task"]: {"icl": [s["icl"].value], "random": [s["random"].value], "zero": [s["zero"].value],
                         "local": [float(s["local"].values[best_local(s)])], "vanilla": [float(s["vanilla"].values.max())],
                         "sal": [sal[s["task"]][1]] if s["task"] in sal else []} for s in sweeps}
    best = {s["task"]: (s["local"].layers[best_local(s)], s["vanilla"].best_layer) for s in sweeps}
    extra = []
    for a in of("extra_seed"):
        xp = at[(a, tasks[0])]["cell"].params
        extra.append(xp["seed"])
        for s in sweeps:
            task = s["task"]
            if sorted(set(best[task])) != xp["layers"][task]:  # the layers the extra seeds were measured at
                raise SystemExit(f"{a}: params.layers[{task!r}] is {xp['layers'][task]} but the headline seed's cells "
                                 f"choose layers {sorted(set(best[task]))}: set it in {rc.rel_path(spec)} and run again")
            x = rows[rows.key == at[(a, task)]["key"]].set_index(["kind", "layer"], drop=False)
            one = lambda kind: x[x.kind == kind].iloc[0]  # noqa: E731
            for kind in ("icl", "random", "zero"):
                seeds[task][kind].append(_rate(float(one(kind).value), int(one(kind).n)).value)
            seeds[task]["local"].append(float(x.loc[("local", best[task][0]), "value"]))
            seeds[task]["vanilla"].append(float(x.loc[("vanilla", best[task][1]), "value"]))
            if task in sal:
                seeds[task]["sal"].append(int(one("peak S_pq").layer))

    t = {}
    for part, families in (("local vs global", ("local_vectors", "global_vector")), ("convergence", ("convergence",)),
                           ("saliency", ("label_saliency",)), ("dPCA", ("dpca",)), ("ablation", ("ablation",)),
                           ("seeds", ("extra_seed",))):
        t[part] = sum(float(c["meta"]["seconds"]) for c in cells if _family(c["cell"]) in families)
    t["total"] = sum(t.values())

    params = lambda family: at[(of(family)[0], tasks[0])]["cell"].params  # noqa: E731  (the same for every task)
    args = SimpleNamespace(  # what the page says about how it was computed: the spec's settings
        seed=c0.seed, seeds=extra, prompts=c0.n_prompts, n_demos=c0.n_demos, n_tasks=len(tasks),
        seed_prompts=params("extra_seed")["n_prompts"], stride=params("local_vectors")["stride"],
        saliency_prompts=params("label_saliency")["saliency_prompts"], null_draws=params("dpca")["null_draws"],
        random_subspaces=params("ablation")["random_subspaces"], ablation_prompts=params("ablation")["n_prompts"],
        n_layers=info["n_layers"], d_model=info["d_model"], model_name=sweeps[0]["local"].model)
    return dict(cells=cells, args=args, sweeps=sweeps, conv=conv, sal=sal, dp=dp, abl=abl, abl_layers=abl_layers,
                seeds=seeds, best=best, t=t, layers=list(sweeps[0]["local"].layers))


def render(spec: Path, store: Path, out: Path) -> Path:
    """The page and its figures from the store."""
    d = read_store(spec, store)
    args, sweeps, L = d["args"], d["sweeps"], d["args"].n_layers
    figs: dict[str, go.Figure] = {f"{NAME}_local_global": fig_local_global(sweeps, L),
                                  f"{NAME}_convergence": fig_convergence(d["conv"], [s["task"] for s in sweeps])}
    if d["sal"]:
        figs[f"{NAME}_saliency"] = fig_saliency(d["sal"], L, args.n_demos)
    for task, r in d["dp"].items():
        for pos, res in r.items():
            figs[f"{NAME}_dpca_{task}_{pos}"] = dpca_viz.summary(res)
        figs[f"{NAME}_ablation_{task}"] = dpca_viz.ablation([a["result"] for a in d["abl"][task]])
    links = rc.save_figures(figs, out, width=1400, height=560)
    body = page(args, sweeps, d["conv"], d["sal"], d["dp"], d["abl"], d["abl_layers"], d["seeds"], d["best"], links,
                d["t"], d["layers"])
    command = f"python scripts/real_{PAGE}.py render"
    return rc.write_grid_page(out, f"{NAME}.md", body, command, rc.grid_footer(d["cells"], spec, store, command))


def main() -> None:
    args = rc.grid_parser(__doc__, PAGE).parse_args()
    if args.command == "run":
        sys.exit(rc.run_study(PAGE, args))
    print(f"wrote {render(args.spec, args.store, args.out)}", flush=True)


if __name__ == "__main__":
    main()
