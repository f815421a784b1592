"""dPCA of label-position states on the bundled toy-icl model; writes docs/results/dpca.md.

    python scripts/toy_dpca.py [--prompts 128] [--seed 0] [--out docs/results/dpca.md]

For the categorization tasks letter-string (nuisance: string length 2-5) and number (nuisance:
parity), 8 demos: per layer, the share of the condition-mean variance in the nuisance, label and
interaction marginalizations (with a label-permutation baseline); the Mahalanobis distance
between label clusters and between nuisance clusters in the full residual stream and in each
factor's own dPCA subspace; and the accuracy at the query when the label or the nuisance
subspace (or random subspaces of the same dimension) is projected out at the demo answer
positions. dPCA is fitted on prompts of seed ``seed``, ablations use held-out prompts
(seed ``seed + 1``). Each task is also fitted with the lambda grid before issue 24 (1e-7 ... 0.1),
and the page lists every number that the wider default grid (1e-7 ... 10) moved.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads BLAS:
    os.environ.setdefault(_var, "1")  # small LAPACK calls (Ledoit-Wolf, Cholesky) are far slower threaded

import numpy as np
import pandas as pd
import torch

from icl_circuits import build_prompts, icl_accuracy, load_model
from icl_circuits.methods.dpca.numpy_dpca import DEFAULT_LAMBDA_GRID, RegularizerOnEdgeWarning
from icl_circuits.methods.dpca.ablation import ablate_subspace
from icl_circuits.methods.dpca.analysis import DPCALayerResult, dpca_by_layer
from icl_circuits.core.metrics import wilson
from icl_circuits.core.results import markdown_table

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("letter-string", "number")
N_DEMOS = 8
N_RANDOM = 3
N_NULL = 10
#: the cross-validation grid before issue 24 (the first 13 values of DEFAULT_LAMBDA_GRID)
OLD_GRID = np.logspace(-7, -1, 13)


def variance_table(r: DPCALayerResult) -> pd.DataFrame:
    pv, _ = r.p_values()
    q95 = r.variance_table(null=0.95)
    rows = []
    for li, l in enumerate(r.layers):
        row = {"layer": l}
        for mi, m in enumerate(r.marginalizations):
            row[m] = f"{float(r.total_marginal_variance[li, mi]):.3f} (p={pv[li, mi]:.2f})"
            row[f"{m} null95"] = float(q95.loc[l, m])
        row["lambda"] = f"{float(r.regularizers[li]):.0e}"
        rows.append(row)
    return pd.DataFrame(rows)


def distance_table(r: DPCALayerResult) -> pd.DataFrame:
    _, pd_ = r.p_values()
    rows = []
    for li, l in enumerate(r.layers):
        row = {"layer": l}
        for fi, f in enumerate(r.factors):
            for s in ("full", f):
                si = r.spaces.index(s)
                tag = "full" if s == "full" else "subspace"
                row[f"{f} {tag}"] = f"{float(r.distances[li, fi, si]):.3f} (p={pd_[li, fi, si]:.2f})"
                row[f"{f} {tag} null95"] = float(r.distance_table(s, null=0.95).loc[l, f])
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_table(model, task: str, r: DPCALayerResult, n_prompts: int, seed: int) -> tuple[pd.DataFrame, list]:
    n = model.cfg.n_layers
    configs = [[l] for l in range(n)] + [list(range(n))]
    rows, raw = [], []
    nuis = r.factors[0]
    held = build_prompts(model, task, n_prompts, N_DEMOS, seed=seed)
    for layers in configs:
        row = {"layers": ",".join(map(str, layers))}
        for m in ("label", nuis):
            a = ablate_subspace(model, held, r, m, layers, n_random=N_RANDOM, seed=seed, progress=False)
            rates = a.rates("label")
            row["clean"] = rates["clean"].value
            ab = rates["ablated"]
            row[f"{m} out (k={max(a.n_axes)})"] = f"{ab.value:.3f} [{ab.low:.2f}, {ab.high:.2f}]"
            row[f"random k={max(a.n_axes)} (vs {m})"] = f"{rates['random'].value:.3f}"
            raw.append((row["layers"], m, rates["clean"], ab, rates["random"]))
        rows.append(row)
    return pd.DataFrame(rows), raw


def _above(obs: pd.Series, null95: pd.Series) -> str:
    layers = [str(l) for l in obs.index if obs[l] > null95[l]]
    return f"layers {', '.join(layers)}" if layers else "no layer"


def describe(r: DPCALayerResult, acc, abl: list) -> str:
    """What the tables show, computed from the numbers: where each measure beats the null's 95th
    percentile, and whether any ablation moves accuracy outside the clean run's 95% interval."""
    v, v95 = r.variance_table(), r.variance_table(null=0.95)
    nuis = r.factors[0]
    d, d95 = r.distance_table("full"), r.distance_table("full", null=0.95)
    worst = max(abl, key=lambda t: abs(t[3].value - t[2].value))
    moved = [f"{m} at layers {ls}" for ls, m, clean, ab, _ in abl if not ab.low <= clean.value <= ab.high]
    chance = acc.low <= 0.5 <= acc.high
    return (
        f"**What this shows.** Label-restricted ICL accuracy is {acc.value:.3f} [{acc.low:.2f}, {acc.high:.2f}]"
        + (" (chance is 0.5: the model does not solve this task in context)" if chance else "") + ". "
        f"The label share of the condition-mean variance exceeds its null 95th percentile at {_above(v['label'], v95['label'])} "
        f"(largest {v['label'].max():.2f} at layer {int(v['label'].idxmax())}, {v['label'].iloc[-1]:.2f} at the last layer), "
        f"the {nuis} share at {_above(v[nuis], v95[nuis])} (largest {v[nuis].max():.2f} at layer {int(v[nuis].idxmax())}, "
        f"{v[nuis].iloc[-1]:.2f} at the last layer). In the full residual stream the label clusters are further apart "
        f"than the null's 95th percentile at {_above(d['label'], d95['label'])}, the {nuis} clusters at "
        f"{_above(d[nuis], d95[nuis])}. The largest change of accuracy by a subspace ablation is "
        f"{worst[3].value - worst[2].value:+.3f} ({worst[1]} subspace at layers {worst[0]}; random subspaces: "
        f"{worst[4].value - worst[2].value:+.3f}); "
        + (f"outside the clean accuracy's 95% interval: {'; '.join(moved)}." if moved else
           "no ablation moves accuracy outside its own 95% interval around the clean value.")
        + _edge_sentence(r)
    )


def _edge_sentence(r: DPCALayerResult) -> str:
    """Where cross-validation chose an end of its grid (``regularizer_on_edge``), said with the grid."""
    edges = r.edge_layers()
    if not edges:
        return f" Cross-validation chose lambda inside its grid at every layer ({_grid(r)})."
    where = ", ".join(f"{l} ({float(r.regularizers[r.layers.index(l)]):.0e}, {e})" for l, e in edges.items())
    return (f" Cross-validation chose an end of its grid ({_grid(r)}) at layer(s) {where}: the held-out error may "
            "keep falling beyond it (at the top: as when the condition means are mostly noise), so the axes and "
            "subspace distances there are fitted at the grid's bound.")


def _grid(r: DPCALayerResult) -> str:
    g = r.meta.get("lambda_grid") or DEFAULT_LAMBDA_GRID.tolist()
    return f"{g[0]:.0e} ... {g[-1]:.0e}, {len(g)} values"


def moved(task: str, old: list[tuple[str, pd.DataFrame]], new: list[tuple[str, pd.DataFrame]]) -> list[list]:
    """Every cell of the page's tables that differs between the fit on the old grid and on the new one."""
    rows = []
    for (name, a), (_, b) in zip(old, new):
        key = a.columns[0]
        for (_, ra), (_, rb) in zip(a.iterrows(), b.iterrows()):
            for c in a.columns[1:]:
                va, vb = (f"{v:.3f}" if isinstance(v, float) else str(v) for v in (ra[c], rb[c]))
                if va != vb:
                    rows.append([task, name, f"{key} {ra[key]}", c, va, vb])
    return rows


def run(model, n_prompts: int, seed: int, out: Path | None, model_name: str = "toy-icl") -> str:
    t0, c0 = time.time(), time.process_time()
    parts = [
        "# dPCA of label-position states (toy-icl)", "",
        f"Generated by `scripts/toy_dpca.py --prompts {n_prompts} --seed {seed}` on {model_name}. "
        f"Residual stream at the input of each block (layer {model.cfg.n_layers} = final residual) at the "
        f"{N_DEMOS} demo answer (label word) positions of {n_prompts} ICL prompts per task (one sample per "
        "demo); condition = (nuisance value, class of the demo's input). dPCA with lambda cross-validated over "
        f"balanced trials (`regularizer='auto'`). Null baseline: the whole analysis repeated {N_NULL} times with "
        "the condition labels redrawn under the null (per prompt: classes relabelled at random, nuisance values "
        "shuffled among the prompt's demos; `dpca.analysis.null_factors`), i.e. the level that noise, overfitting "
        "and the sharing of label words within a prompt reach without any representation of the factor; "
        f"`null95` is the 95th percentile of the draws and p = (1 + #draws >= observed) / {N_NULL + 1}.", "",
    ]
    chance_tasks, changes, kept = [], [], []
    for task in TASKS:
        batch = build_prompts(model, task, n_prompts, N_DEMOS, seed=seed + 1)
        acc = wilson(round(icl_accuracy(model, batch, restrict_to_labels=True) * n_prompts), n_prompts)
        fit_batch = build_prompts(model, task, n_prompts, N_DEMOS, seed=seed)
        r = dpca_by_layer(model, fit_batch, regularizer="auto", n_null=N_NULL, seed=seed, progress=False)
        counts = r.condition_counts.tolist()
        if acc.low <= 0.5 <= acc.high:
            chance_tasks.append(task)
        abl_df, abl_raw = ablation_table(model, task, r, n_prompts, seed + 1)
        with warnings.catch_warnings():  # the old grid's edge is what this comparison is about
            warnings.simplefilter("ignore", RegularizerOnEdgeWarning)
            r_old = dpca_by_layer(model, fit_batch, regularizer="auto", n_null=N_NULL, seed=seed, progress=False,
                                  lambda_grid=OLD_GRID)
        tables = lambda res, abl: [("variance", variance_table(res)), ("distance", distance_table(res)),  # noqa: E731
                                   ("ablation", abl)]
        rows = moved(task, tables(r_old, ablation_table(model, task, r_old, n_prompts, seed + 1)[0]),
                     tables(r, abl_df))
        changes += rows
        kept.append(f"{task}: lambda on the old grid's top edge (1e-01) at layer(s) "
                    f"{', '.join(str(l) for l, e in r_old.edge_layers().items() if e == 'highest') or 'none'}; "
                    f"{len(rows)} table cells moved")
        parts += [
            f"## {task} (nuisance: {r.factors[0]})", "",
            f"ICL accuracy (argmax over the two label words, {N_DEMOS} demos, held-out prompts): {acc}. "
            f"Samples per condition ({r.factors[0]} levels {r.levels[0]} x label 0/1): {counts}.", "",
            "### Share of condition-mean variance per marginalization", "", markdown_table(variance_table(r)), "",
            "### Mean Mahalanobis distance between clusters (Ledoit-Wolf pooled covariance)", "",
            "`full`: all d_model dimensions; `subspace`: the factor's own dPCA encoder projections "
            f"(label: {int(r.n_axes[0, 1])} axis, {r.factors[0]}: {int(r.n_axes[0, 0])} axes).", "",
            markdown_table(distance_table(r)), "",
            "### Accuracy with a subspace projected out at the demo answer positions", "",
            "Label-restricted accuracy at the query on held-out prompts (seed "
            f"{seed + 1}); the subspace coordinate is set to that of the dPCA mean; 95% Wilson interval in "
            f"brackets; random: {N_RANDOM} random subspaces of the same dimension, pooled.", "",
            markdown_table(abl_df), "",
            describe(r, acc, abl_raw), "",
        ]
    change = [
        "## Changed in this version (issue 24)", "",
        "The cross-validation grid of `regularizer='auto'` was 1e-7 ... 1e-1 (13 values) and is now 1e-7 ... 1e+1 "
        "(17 values, the same half-decade steps): cross-validation sat on the old grid's top edge. A lambda on an edge "
        "of the grid is now flagged (`regularizer_on_edge`) and warned about. This run also fitted each task on the "
        f"old grid: {'; '.join(kept)}. Every table cell that moved (old grid -> new grid; the variance shares and the "
        "full-space distances do not depend on lambda, the subspace distances, their nulls and the ablations do):", "",
        markdown_table(pd.DataFrame(changes, columns=["task", "table", "row", "column", "old", "new"]))
        if changes else "No table cell moved.", "",
    ]
    parts[4:4] = change  # after the title and the paragraph saying what was run
    n_abl = 2 * (model.cfg.n_layers + 1)
    parts += [
        "## Caveats", "",
        f"With {N_NULL} null draws the smallest attainable p is {1 / (N_NULL + 1):.2f}, so `p` only ranks the observed "
        "value among the draws. Ablation intervals are Wilson intervals of the ablated accuracy (not a paired "
        f"test against the clean run), and {n_abl} ablations are compared per task, so an isolated excursion "
        "outside the clean value is expected by chance. Distances are measured on the samples the dPCA axes "
        "were fitted to; the null draws refit the axes, so they include that optimism."
        + ("" if not chance_tasks else
           f" On {', '.join(chance_tasks)} the model's in-context accuracy is at chance, so these tables show "
           "how the analysis behaves without a learned label representation, not a replication of "
           "2406.16007 (label information that stays while length information fades)."), "",
    ]
    parts.append(f"Run time: {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU "
                 "(one thread; the machine was shared).")
    text = "\n".join(parts) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "dpca.md")
    p.add_argument("--weights", type=Path, default=None,
                   help="a toy checkpoint directory (config.json + model.safetensors) instead of the bundled one")
    args = p.parse_args()
    torch.set_num_threads(1)
    name = "toy-icl"
    if args.weights is not None:  # e.g. a training run's output, before it is bundled
        import icl_circuits.core.models as models

        models.TOY_WEIGHTS_DIR = args.weights
        name = f"toy-icl ({args.weights})"
    model = load_model("toy-icl")
    print(run(model, args.prompts, args.seed, args.out, name))


if __name__ == "__main__":
    main()
