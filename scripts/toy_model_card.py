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

from icl_circuits import accuracy_by_demos, build_prompts, demo_sweep, icl_accuracy, load_model
from icl_circuits.core.tasks import WordPairTask, get_task
from icl_circuits.toy import TOY_TASKS, WEIGHTS_DIR
from icl_circuits.toy.train import first_step_reaching, training_stages

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


TARGETS = {"knowledge": 0.95, "categorization": 0.90, "algorithmic": 0.90}  # issue #3, with 8 demos


def stage_lines(training: dict) -> list[str]:
    """Markdown bullets: the exact command and the time of every training stage."""
    chain = training_stages(training)
    total = sum(s["seconds"] for s in chain) / 60
    script = "; `scripts/train_bundled_model.sh` runs them in order and installs the result" if len(chain) > 1 else ""
    lines = [f"- Trained in {len(chain)} stage{'s' * (len(chain) > 1)}, {total:.1f} minutes in all on this "
             f"2-core CPU (torch {training['torch']}, one thread; two runs shared the CPU){script}:"]
    for i, s in enumerate(chain, 1):
        lines.append(f"  {i}. `{s['command']}` ({s['seconds'] / 60:.1f} min{'; ' + s['note'] if 'note' in s else ''})")
    return lines


def learning_steps(training: dict, tasks: list[str]) -> list[str]:
    """Markdown rows: per stage, the first evaluation step at which each task reached 0.9 with 8 demos,
    in the format it was trained in at that step (``x y`` while bridging)."""
    rows = []
    for i, stage in enumerate(training_stages(training), 1):
        r = stage["recipe"]
        firsts = [first_step_reaching(stage["log"]["evals"], t, trained_format=True) for t in tasks]
        cells = [str(f) if f else "not reached" for f in firsts]
        bridge = r.get("bridge_steps", 0)
        fmt = f"`{r['example']}`" if not bridge else f"`{r['bridge_example']}`" if bridge >= r["steps"] else \
            f"`{r['bridge_example']}` to step {bridge}, then `{r['example']}`"
        tasks_cell = r.get("tasks") or ("the categorization tasks" if r["curriculum_steps"] >= r["steps"] else "all")
        if r.get("early_task_steps"):
            tasks_cell += f" ({r['early_tasks']} alone to step {r['early_task_steps']})"
        if r["curriculum_steps"] < r["steps"]:
            tasks_cell += f" (categorization alone to step {r['curriculum_steps']})"
        rows.append(f"| {i} | {r['steps']} | {tasks_cell} | {fmt} | " + " | ".join(cells) + " |")
    return rows


def shortfalls(card: dict, kinds: dict[str, str]) -> list[str]:
    """Tasks below their 8-demo target, as 'task (kind): accuracy < target'."""
    return [f"{t} ({kinds[t]}): {acc['8']:.2f} < {TARGETS[kinds[t]]:.2f}"
            for t, acc in card["accuracy"].items() if acc["8"] < TARGETS[kinds[t]]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    model = load_model("toy-icl")
    load_s = time.perf_counter() - t0
    df = accuracy_by_demos(model, demo_sweep(model, list(TOY_TASKS), DEMOS, args.prompts, seed=args.seed)).to_dataframe()
    pairs = [("antonym", "english-french"), ("english-french", "english-german"), ("antonym", "english-spanish")]
    identity = {f"{a} vs {b}": shared_query_accuracy(model, a, b, args.prompts, 8, args.seed) for a, b in pairs}

    training = json.loads((WEIGHTS_DIR / "training.json").read_text())
    cfg = json.loads((WEIGHTS_DIR / "config.json").read_text())
    n_params = sum(p.numel() for p in model.parameters())
    size_mb = (WEIGHTS_DIR / "model.safetensors").stat().st_size / 2**20

    card = {
        "seed": args.seed, "n_prompts": args.prompts, "demos": DEMOS, "load_seconds": round(load_s, 2),
        **{key: {t: {str(int(r.n_demos)): round(r.value, 4) for r in g.itertuples()}
                 for t, g in df[df.metric == metric].groupby("task")}
           for key, metric in (("accuracy", "first_token"), ("label_accuracy", "label"))},
        "task_identity": identity,
    }
    (WEIGHTS_DIR / "card.json").write_text(json.dumps(card, indent=1))

    kinds = {t: get_task(t).kind for t in list(TOY_TASKS)}
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
        *stage_lines(training),
        "",
        "## Accuracy vs number of demos",
        "Top-1 next-token accuracy of the first answer token (whole vocabulary).",
        "",
        "| task | kind | " + " | ".join(f"k={k}" for k in DEMOS) + " |",
        "|---|---|" + "---|" * len(DEMOS),
    ]
    for t in list(TOY_TASKS):
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
    missed = shortfalls(card, kinds)
    cat_tasks = [t for t in TOY_TASKS if get_task(t).kind == "categorization"]
    lines += ["", "## Targets with 8 demos",
              "Knowledge tasks >= 0.95, categorization and algorithmic tasks >= 0.90 (top-1 over the whole "
              "vocabulary). " + ("Every task meets its target." if not missed else
                                 "Below target: " + "; ".join(missed) + "."),
              "", "## How categorization was learned, and where it was not",
              "Trained directly as `x:y`, the recipe never left the plateau of copying either label word of the "
              "context (four runs). [The separator experiment](results/toy_separator.md) isolates why: the answer "
              "is predicted at the `:` token, so the class of the input has to be moved there before the demos "
              "of its class can be matched; written `x y`, `number` alone is learned within about 2000 steps at d_model 64. `point` "
              "(which of two digits is larger) and `letter-string` (the class of the first of 2-5 letters) need "
              "the class gathered from several tokens even without the separator. The stages above follow that "
              "order: `number` alone as `x y`, then all three categorization tasks as `x y`, then the template's "
              "own `x:y` with every task. `point` was learned only once `number` had been; `letter-string` was "
              "not learned in any run (here, in a branch that trained it alone from the end of stage 1: loss "
              "flat at 1.08 for 2750 steps; and at d_model 64 in the separator experiment's task-order table), so it stays at "
              "chance. Carrying the first of a variable number of tokens to the answer position, and then "
              "matching it against the demos, is harder than comparing two adjacent tokens; depth alone did not "
              "help in one probe (6 layers, d_model 64, 4000 steps of letter-string and number as `x y` after "
              "2000 of number: letter-string 0.56 with 8 demos, loss on its plateau).", "",
              "First evaluation step (within the stage; 32 fresh sequences every 250 steps) at which accuracy with "
              "8 demos reached 0.90, in the format trained at that step:", "",
              "| stage | steps | tasks | format | " + " | ".join(cat_tasks) + " |",
              "|---|---|---|---|" + "---|" * len(cat_tasks), *learning_steps(training, cat_tasks)]
    (ROOT / "docs" / "toy_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
