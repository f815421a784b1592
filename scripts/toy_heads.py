"""Attention heads of the bundled model: ablation scans, attribution patching, the heads that carry a
task vector (OV decomposition, key heads vs random heads, reconstruction at the final layer).

    python scripts/toy_heads.py [--prompts 64] [--demos 8] [--seed 0] [--layer 1]

Writes the markdown tables to docs/results/heads.md (and prints them). Every number comes from this
script, with fixed seeds. The task vector is a learned one (``icl_circuits.methods.learned``) trained at
``--layer``; if that fails, the mean difference between the final-position residuals of ICL and
zero-shot prompts at that layer. Without the toy weights, a random model of the same shape is used
(and the page says so).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from icl_circuits import build_prompts
from icl_circuits.methods.key_heads import key_head_ablation, key_heads
from icl_circuits.methods.ov_circuits import ov_contributions, reconstruct
from icl_circuits.methods.attribution import head_attribution, scan_agreement
from icl_circuits.methods.heads import head_ablation_scan
from icl_circuits.core.runner import read_resid
from icl_circuits.core.results import markdown_table
from icl_circuits.toy import toy_or_untrained
from icl_circuits.methods.vectors import TaskVector

ROOT = Path(__file__).resolve().parents[1]
SCAN_TASKS = ["antonym", "english-french", "number"]
VECTOR_TASKS = ["antonym", "english-french"]


def scan_section(model: Any, n: int, k: int, seed: int) -> str:
    out = ["## Head ablation scans (ICL prompts)", "",
           f"{n} prompts x {k} demos per task, seed {seed}. Each head of each layer is ablated alone at every "
           "position (zero: z = 0; mean: z = its mean over the same prompts at that position). Cells: accuracy "
           "with the head ablated minus clean accuracy (argmax over the vocabulary). Attribution patching "
           "(one forward + one backward) is compared with the exact scan on logit_diff_to_mean (gold logit minus the mean logit of the other label words, or of the vocabulary; Spearman over the heads).", ""]
    rows = []
    for task in SCAN_TASKS:
        batch = build_prompts(model, task, n, k, seed=seed)
        for how in ("zero", "mean"):
            acc = head_ablation_scan(model, batch, how, metric="first_token", progress=False)
            ld = head_ablation_scan(model, batch, how, metric="logit_diff_to_mean", progress=False)
            at = head_attribution(model, batch, how, metric="logit_diff_to_mean")
            ag = scan_agreement(ld, at)
            grid = pd.DataFrame(acc.effect.numpy(), columns=[f"H{h}" for h in range(acc.n_heads)])
            grid.insert(0, "layer", [f"L{l}" for l in acc.layers])
            top = ", ".join(f"L{l}H{h}" for l, h in acc.top(3))
            out += [f"### {task}, {how} ablation: clean accuracy {float(acc.clean.mean()):.3f}; largest drops: {top}",
                    "", markdown_table(grid), ""]
            rows.append({"task": task, "how": how, "clean accuracy": float(acc.clean.mean()),
                         "worst head": top.split(",")[0], "worst drop": float(-acc.effect.min()),
                         "mean drop": float(-acc.effect.mean()), "Spearman attribution vs exact": ag["spearman"],
                         "Pearson": ag["pearson"]})
    return "\n".join(out[:4] + ["### Summary", "", markdown_table(pd.DataFrame(rows)), ""] + out[4:])


def task_vector(model: Any, task: str, layer: int, n: int, k: int, seed: int) -> TaskVector:
    try:
        from icl_circuits.methods.learned import train_task_vector

        train = build_prompts(model, task, 256 + 64, 0, seed=seed, variant="zero_shot")
        return train_task_vector(model, train, layer, n_val=64, seed=seed, progress=False)
    except Exception as err:  # noqa: BLE001 - fall back to the mean difference, and say so
        print(f"learned task vector unavailable ({type(err).__name__}: {err}); using the ICL - zero-shot mean difference")
    icl = build_prompts(model, task, n, k, seed=seed + 7)
    zs = build_prompts(model, task, n, 0, seed=seed + 7, variant="zero_shot")
    diff = (read_resid(model, icl, icl.positions("final").positions, [layer])[0, :, 0]
            - read_resid(model, zs, zs.positions("final").positions, [layer])[0, :, 0]).mean(0)
    return TaskVector(diff[None], [layer], "add", "mean-difference", task, model=str(model.cfg.model_name))


def vector_section(model: Any, n: int, k: int, seed: int, layer: int) -> str:
    out = ["## Heads that carry a task vector (Yang et al. 2025)", "",
           f"The vector is injected (added) at the input of block {layer}, final position, of {n} zero-shot prompts "
           f"(seed {seed + 1}, not the training prompts). OV approximation: A'[q, q] * (LN1(h + theta) - LN1(h)) @ W_V @ "
           "W_O with the clean residual h at each block's input (LN difference) and the attention pattern of the run "
           "with the vector. DLA: final LN linearised with its scale in the run with the vector, direction "
           "W_U[gold] - mean W_U. Ablation of key heads (top-k by OV DLA) vs k random heads of blocks >= the "
           "injection layer (10 draws, seed 0), at every position, with the vector injected.", ""]
    for task in VECTOR_TASKS:
        t0 = time.time()
        tv = task_vector(model, task, layer, n, k, seed)
        zs = build_prompts(model, task, n, 0, seed=seed + 1, variant="zero_shot")
        ov = ov_contributions(model, zs, tv, layer)
        kh = key_heads(model, zs, tv, layer, ov=ov)
        rec = reconstruct(model, zs, tv, layer, ov=ov)
        rel = ov.ov_relative_error()
        rel_frozen = ov_contributions(model, zs, tv, layer, ln="frozen").ov_relative_error()
        out += [f"### {task}: {tv.method} vector at layer {layer} (|theta| = {float(tv.at(layer).norm()):.2f})", "",
                f"Decomposition identity max error {ov.identity_error():.1e}; OV vs exact relative error per layer "
                + ", ".join(f"L{l} {float(e):.3f}" for l, e in zip(ov.layers, rel))
                + " (frozen LN scale instead of the LN difference: "
                + ", ".join(f"L{l} {float(e):.3f}" for l, e in zip(ov.layers, rel_frozen)) + ")"
                + f"; top key heads: {', '.join(f'L{l}H{h}' for l, h in kh.ranking[:4])}.", ""]
        df = ov.to_dataframe()[["layer", "head", "exact_dla", "ov_dla", "cosine", "exact_norm", "ov_norm"]]
        df["layer"], df["head"] = df["layer"].astype(str), df["head"].astype(str)
        out += ["Per head (means over prompts):", "", markdown_table(df), "",
                f"Direct path DLA {float(ov.direct_dla.mean()):.3f}; MLP DLA per layer "
                + ", ".join(f"L{l} {float(v):.3f}" for l, v in zip(ov.layers, ov.mlp_dla.mean(1))) + ".", "",
                "Reconstruction at the final residual:", "",
                markdown_table(rec.to_dataframe()[["condition", "accuracy", "low", "high", "recovered"]]), ""]
        for how in ("zero", "mean"):
            ab = key_head_ablation(model, zs, tv, layer, ks=[1, 2, 4], how=how, ranking=kh, n_random=10, seed=0,
                                   progress=False)
            rows = [{"k": kk, "top-k heads": ", ".join(f"L{l}H{h}" for l, h in ab.top_heads[:kk]),
                     "drop (key heads)": float(ab.top_drop[i]), "drop (random, mean)": float(ab.random_drop[i].mean()),
                     "random sd": float(ab.random_drop[i].std()), "random min": float(ab.random_drop[i].min()),
                     "random max": float(ab.random_drop[i].max())} for i, kk in enumerate(ab.ks)]
            out += [f"Key vs random heads, {how} ablation (accuracy {ab.vector_accuracy:.3f} with the vector, "
                    f"{ab.no_vector_accuracy:.3f} without):", "", markdown_table(pd.DataFrame(rows)), ""]
        print(f"{task}: {time.time() - t0:.1f}s")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "heads.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    model, trained = toy_or_untrained()
    head = ["# Attention heads of toy-icl", "",
            "Written by `scripts/toy_heads.py` "
            f"(`--prompts {args.prompts} --demos {args.demos} --seed {args.seed} --layer {args.layer}`)."]
    if not trained:
        head += ["", "**The toy weights were not available: these numbers come from a RANDOM model of the same "
                 "shape and say nothing about ICL.**"]
    parts = ["\n".join(head), scan_section(model, args.prompts, args.demos, args.seed),
             vector_section(model, args.prompts, args.demos, args.seed, args.layer)]
    text = "\n\n".join(parts) + f"\n\nRun time: {time.time() - t0:.0f} s on one CPU thread.\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
