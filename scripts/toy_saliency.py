"""Label words as anchors on the bundled model: saliency flow, attention isolation, re-weighting.

    python scripts/toy_saliency.py [--prompts 64] [--demos 8] [--seed 0]

Writes the markdown tables to docs/results/saliency.md (and prints them). Every number comes from
this script, with fixed seeds; it runs in about a minute on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from icl_circuits import build_prompts, load_model
from icl_circuits.methods.anchors import isolate_attention
from icl_circuits.core.results import markdown_table
from icl_circuits.methods.reweighting import train_anchor_reweighting
from icl_circuits.methods.saliency import saliency_flow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["number", "letter-string", "point", "antonym"]
REWEIGHT_TASK = "number"


def flows_section(model: Any, n_prompts: int, n_demos: int, seed: int) -> tuple[str, dict]:
    rows, peaks = [], {}
    for task in TASKS:
        batch = build_prompts(model, task, n_prompts, n_demos, seed=seed)
        res = saliency_flow(model, batch, "label_words", progress=False)
        prop = res.flows / res.flows.sum(0, keepdim=True)
        for j, l in enumerate(res.layers):
            rows.append({"task": task, "layer": l, "S_wp": float(res.flows[0, j]), "S_pq": float(res.flows[1, j]),
                         "S_ww": float(res.flows[2, j]), "share wp": float(prop[0, j]), "share pq": float(prop[1, j]),
                         "share ww": float(prop[2, j])})
        peaks[task] = (res.layers[int(prop[0].argmax())], res.layers[int(prop[1].argmax())])
    df = pd.DataFrame(rows)
    text = ["## Saliency flow (label-word loss, mean over prompts)", "",
            f"{n_prompts} prompts x {n_demos} demos per task, seed {seed}. Raw flows are means of "
            "|sum_h A * dL/dA| over each set of pairs; shares divide each layer's three flows by their sum. "
            "For antonym (no label words) the loss's softmax runs over every answer token present in the batch.",
            "", markdown_table(df, 4), ""]
    return "\n".join(text), peaks


def isolation_section(model: Any, n_prompts: int, n_demos: int, seed: int) -> tuple[str, pd.DataFrame]:
    n = model.cfg.n_layers
    half = max(1, n // 2)
    ranges = [[0], [n - 1], list(range(half)), list(range(n - half, n))]
    frames = []
    for task in TASKS:
        batch = build_prompts(model, task, n_prompts, n_demos, seed=seed)
        for mode in ("label_from_text", "query_from_label"):
            df = isolate_attention(model, batch, ranges, mode, seed=seed, progress=False).to_dataframe()
            frames.append(df.assign(task=task))
    df = pd.concat(frames)
    table = df[["task", "mode", "layers", "target", "baseline_accuracy", "accuracy", "loyalty", "loyalty_low",
                "loyalty_high", "word_loyalty"]]
    text = ["## Attention isolation", "",
            f"{n_prompts} prompts x {n_demos} demos per task. `label_from_text`: the label words (demo answer "
            "positions) cannot attend to the text before them (BOS and themselves kept); `query_from_label`: the "
            "final position cannot attend to the label words. `random`: as many random non-label positions "
            "(seeded). Loyalty: prediction unchanged from the un-isolated run (Wilson 95% interval); word loyalty: "
            "Jaccard overlap of the top-5 tokens.", "", markdown_table(table), ""]
    return "\n".join(text), df


def reweighting_section(model: Any, seed: int) -> tuple[str, pd.DataFrame]:
    frames = []
    for k in (1, 2):
        train = build_prompts(model, REWEIGHT_TASK, 128, k, seed=seed + 100)
        held = build_prompts(model, REWEIGHT_TASK, 128, k, seed=seed + 200)
        res = train_anchor_reweighting(model, train, held, lr=0.01, epochs=10, batch_size=16, seed=seed, progress=False)
        frames.append(res.to_dataframe().assign(n_demos=k, beta_abs_mean=float(res.beta.abs().mean())))
    df = pd.concat(frames)[["task", "n_demos", "stage", "accuracy", "low", "high", "eval_loss", "train_loss", "beta_abs_mean"]]
    text = ["## Anchor re-weighting", "",
            f"Task {REWEIGHT_TASK}; beta[layer, head, demo] scales the final position's attention to each label word "
            "by exp(beta) (no renormalization), trained with Adam (lr 0.01, 10 epochs, batch 16) on 128 prompts, the "
            "model frozen; accuracy (argmax over the prompt's two label words) on 128 held-out prompts.", "",
            markdown_table(df), ""]
    return "\n".join(text), df


def main(model: Any = None, out: Path | None = ROOT / "docs" / "results" / "saliency.md", argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--demos", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = model if model is not None else load_model("toy-icl")
    flows_md, peaks = flows_section(model, args.prompts, args.demos, args.seed)
    iso_md, iso = isolation_section(model, args.prompts, args.demos, args.seed)
    rw_md, rw = reweighting_section(model, args.seed)

    n = model.cfg.n_layers
    lab = iso[(iso["mode"] == "label_from_text") & (iso.target == "label")]
    first, last = lab[lab.layers == "0"].loyalty.mean(), lab[lab.layers == str(n - 1)].loyalty.mean()
    summary = [
        "## Summary", "",
        "- Layer where the S_wp share peaks / where the S_pq share peaks: "
        + "; ".join(f"{t}: {a} / {b}" for t, (a, b) in peaks.items()) + ".",
        f"- Isolating the label words from the text in layer 0 leaves a mean loyalty of {first:.3f} over the four "
        f"tasks, in the last layer (layer {n - 1}) {last:.3f}.",
        "- Re-weighting ({}): ".format(REWEIGHT_TASK) + "; ".join(
            f"{int(k)} demo(s) {g[g.stage == 'before'].accuracy.iloc[0]:.3f} -> {g[g.stage == 'after'].accuracy.iloc[0]:.3f}"
            for k, g in rw.groupby("n_demos")) + ".",
        "",
    ]
    doc = "\n".join([f"# Label words as anchors on {model.cfg.model_name}", "",
                     "Produced by `scripts/toy_saliency.py` (Wang et al. 2023, METHODS.md section 1).", "",
                     *summary, flows_md, iso_md, rw_md,
                     f"_Run time {time.perf_counter() - t0:.0f} s on one CPU thread._", ""])
    print(doc)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc)
    return doc


if __name__ == "__main__":
    main()
