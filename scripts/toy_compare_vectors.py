"""LTV vs function vector vs vanilla (and local) task vectors per layer on toy-icl, one table per task.

    python scripts/toy_compare_vectors.py      # writes docs/results/vectors_compared.md

All vectors are evaluated by the same function (``vectors.evaluate_vector`` through
``task_vectors.compare_task_vectors``) on the same zero-shot prompts (seed 1).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from icl_circuits import build_prompts, load_model
from icl_circuits.core.pairs import task_vector_prompts
from icl_circuits.methods.learned import train_per_layer
from icl_circuits.methods.task_vectors import compare_task_vectors

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "vectors_compared.md"
TASKS = ["antonym", "english-french", "country-capital"]


def markdown(df) -> str:
    """A pandas table (index = layer) as a markdown table."""
    head = "| layer | " + " | ".join(map(str, df.columns)) + " |"
    rows = [f"| {i} | " + " | ".join("" if v != v else f"{v:.2f}" for v in r) + " |" for i, r in zip(df.index, df.values)]
    return "\n".join([head, "|---" * (len(df.columns) + 1) + "|", *rows])


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = load_model("toy-icl")
    lines = ["# Task vectors compared per layer on toy-icl", "",
             "Produced by `scripts/toy_compare_vectors.py`. Accuracy of the first answer token on 64 zero-shot "
             "prompts (seed 1) with one vector injected at the input of block `layer` (4 = the final residual): "
             "vanilla (Hendel et al., replaces the final-position residual; 32 dummy-query prompts, 8 demos), "
             "function vector (Todd et al., top-10 heads by CIE, added), learned (Yang et al., trained per layer on "
             "128 + 32 zero-shot prompts, AdamW lr 2e-2, 10 epochs max, added), local (answer-position states "
             "patched into random-answer twins). Reference rows: zero-shot, ICL (8 demos), random answers.", ""]
    for task in TASKS:
        train = build_prompts(model, task, 128 + 32, 0, seed=0, variant="zero_shot")
        ltv = train_per_layer(model, train, n_val=32, epochs=10, lr=2e-2, batch_size=8, seed=0, progress=False)
        prompts = task_vector_prompts(model, task, n_demos=8, n_prompts=32, seed=0, n_eval=64)
        df = compare_task_vectors(model, prompts, top_k=10, extra=[ltv]).to_dataframe()
        wide = df.pivot_table(index="layer", columns="method", values="accuracy")
        lines += [f"## {task}", "", markdown(wide), ""]
    lines.append(f"_Run time {time.perf_counter() - t0:.0f} s on one CPU thread._")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
