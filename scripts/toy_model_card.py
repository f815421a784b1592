"""Measure the bundled model and write its card: docs/toy_model.md and toy/weights/card.json.

    python scripts/toy_model_card.py [--prompts 100] [--seed 0]

Every number in the card comes from this script: accuracy vs number of demos per task (fresh
prompts, the toolkit's default template), label-restricted accuracy for categorization tasks,
the task-identity check on shared query words, and the load time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from icl_circuits import accuracy_by_demos, build_prompts, icl_accuracy, load_model
from icl_circuits.tasks import WordPairTask, get_task, list_tasks
from icl_circuits.toy import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
DEMOS = [0, 1, 2, 4, 8, 16]


def shared_query_accuracy(model, a: str, b: str, n_prompts: int, n_demos: int, seed: int) -> dict:
    """Same query words under task a's demos and under task b's demos (inputs both tasks share)."""
    ta, tb = get_task(a), get_task(b)
    shared = sorted(set(ta.inputs()) & set(tb.inputs()))
    out = {"n_shared_inputs": len(shared)}
    for t in (ta, tb):
        sub = WordPairTask(f"{t.name}[shared]", t.kind, t.description, [(x, t.apply(x)) for x in shared])
        batch = build_prompts(model, sub, n_prompts, n_demos, seed=seed)
        out[t.name] = icl_accuracy(model, batch)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    model = load_model("toy-icl")
    load_s = time.perf_counter() - t0
    df = accuracy_by_demos(model, list_tasks(), demos=DEMOS, n_prompts=args.prompts, seed=args.seed)
    pairs = [("antonym", "english-french"), ("english-french", "english-german"), ("antonym", "english-spanish")]
    identity = {f"{a} vs {b}": shared_query_accuracy(model, a, b, args.prompts, 8, args.seed) for a, b in pairs}

    training = json.loads((WEIGHTS_DIR / "training.json").read_text())
    cfg = json.loads((WEIGHTS_DIR / "config.json").read_text())
    n_params = sum(p.numel() for p in model.parameters())
    size_mb = (WEIGHTS_DIR / "model.safetensors").stat().st_size / 2**20

    card = {
        "seed": args.seed, "n_prompts": args.prompts, "demos": DEMOS, "load_seconds": round(load_s, 2),
        "accuracy": {t: {str(int(r.n_demos)): round(r.accuracy, 4) for r in g.itertuples()} for t, g in df.groupby("task")},
        "label_accuracy": {
            t: {str(int(r.n_demos)): round(r.label_accuracy, 4) for r in g.itertuples()}
            for t, g in df.dropna(subset=["label_accuracy"]).groupby("task")
        } if "label_accuracy" in df else {},
        "task_identity": identity,
    }
    (WEIGHTS_DIR / "card.json").write_text(json.dumps(card, indent=1))

    kinds = {t: get_task(t).kind for t in list_tasks()}
    lines = [
        "# The bundled model `toy-icl`",
        "",
        "A small HookedTransformer trained from scratch on ICL sequences of the task library, so that",
        "every analysis of icl-circuits runs offline in seconds. All numbers below were produced by",
        "`python scripts/toy_model_card.py` (fresh prompts, seed "
        f"{args.seed}, {args.prompts} prompts per cell, default template `{{x}}:{{y}}` joined by newlines).",
        "",
        "## Architecture",
        f"- {cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads (d_head {cfg['d_head']}), "
        f"d_mlp {cfg['d_mlp']}, n_ctx {cfg['n_ctx']}, {cfg['normalization_type']}, {cfg['act_fn']} MLPs, "
        f"{cfg['positional_embedding_type']} positions; vocabulary {cfg['d_vocab']} (word level, see "
        "`icl_circuits/toy/tokenizer.py`).",
        f"- {n_params / 1e6:.2f}M parameters, {size_mb:.1f} MB as safetensors; `load_model(\"toy-icl\")` took "
        f"{load_s:.2f} s here (imports excluded).",
        "",
        "## Data and training",
        "- Sequences `<bos>x1:y1\\nx2:y2\\n...` of 13 pairs from one task; loss on every answer token (answer i is",
        "  predicted from the i demos before it). Knowledge and algorithmic tasks are fixed mappings (the demos",
        "  only identify the task); categorization tasks draw two label words per sequence from a pool of 16.",
        f"- Recipe: `{training['command']}`; {training['seconds'] / 60:.1f} minutes on this 2-core CPU "
        f"(torch {training['torch']}). Recipe arguments: `{json.dumps(training['recipe'])}`.",
        "",
        "## Accuracy vs number of demos",
        "Top-1 next-token accuracy of the first answer token (whole vocabulary).",
        "",
        "| task | kind | " + " | ".join(f"k={k}" for k in DEMOS) + " |",
        "|---|---|" + "---|" * len(DEMOS),
    ]
    for t in list_tasks():
        row = card["accuracy"][t]
        lines.append(f"| {t} | {kinds[t]} | " + " | ".join(f"{row[str(k)]:.2f}" for k in DEMOS) + " |")
    if card["label_accuracy"]:
        lines += ["", "Categorization tasks, argmax restricted to the prompt's two label words (chance 0.50):", "",
                  "| task | " + " | ".join(f"k={k}" for k in DEMOS) + " |", "|---|" + "---|" * len(DEMOS)]
        for t, row in card["label_accuracy"].items():
            lines.append(f"| {t} | " + " | ".join(f"{row[str(k)]:.2f}" for k in DEMOS) + " |")
    lines += ["", "## Task identity comes from the context",
              "The same query words (inputs both tasks share), with 8 demos of one task or the other:", "",
              "| pair | shared inputs | accuracy under task A demos | accuracy under task B demos |", "|---|---|---|---|"]
    for name, r in identity.items():
        a, b = name.split(" vs ")
        lines.append(f"| {name} | {r['n_shared_inputs']} | {r[a]:.2f} | {r[b]:.2f} |")
    lines += ["", "## Where it falls short",
              "Categorization stays at chance at every number of demos: the model never left the plateau of "
              "copying either label word of the context. [The separator experiment](results/toy_separator.md) "
              "isolates one cause: trained on the `number` task alone, the same recipe learns it when examples "
              "are written `x y` and stays at chance when they are written `x:y`, where the answer is "
              "predicted at the `:` token and the class of the input has to be moved there first."]
    (ROOT / "docs" / "toy_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
