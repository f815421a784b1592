"""Write the tutorial notebooks in notebooks/ from the cell lists below (unexecuted).

    python scripts/make_notebooks.py

The test suite executes every notebook (tests/test_notebooks.py); edit the cells here, not the
.ipynb files, so the notebooks stay reviewable as code.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"

SWITCH = (
    "**Using a real model.** Everything here runs on the bundled `toy-icl` model, offline. On a machine "
    "with hub access, `model = ic.load_model(\"gpt2\")` (or any TransformerLens model name, or a local "
    "Hugging Face checkpoint directory) works the same way; use a template the model knows, e.g. "
    "`template=\"{x} -> {y}\"`, and more prompts."
)

SETUP = """import torch
import icl_circuits as ic

torch.set_num_threads(1)
model = ic.load_model("toy-icl")
model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads"""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_quickstart": [
        ("md", "# 01 · Quickstart: load a model, build ICL prompts, look at positions\n\n" + SWITCH),
        ("code", SETUP),
        ("md", "## Tasks\nEvery task has a kind: knowledge (fixed word pairs), algorithmic (a rule), or "
               "categorization (a fixed rule whose label words are drawn per prompt)."),
        ("code", "for name in ic.list_tasks():\n    t = ic.get_task(name)\n    print(f\"{name:<16} {t.kind:<15} {len(t):>5}  {t.sample(2, seed=0)}\")"),
        ("md", "## A PromptBatch holds every position, computed once from the tokenizer's offsets"),
        ("code", "batch = ic.build_prompts(model, \"antonym\", n_prompts=16, n_demos=4, seed=0)\nprint(batch.describe(0))"),
        ("code", "batch.answer_positions[:3], batch.separator_positions[:3], batch.final_positions[:3]"),
        ("md", "Categorization prompts draw their two label words per prompt; `label_token_ids` holds them."),
        ("code", "cat = ic.build_prompts(model, \"number\", n_prompts=4, n_demos=6, seed=1)\nprint(cat.describe(0))\ncat.label_words, cat.label_token_ids"),
        ("md", "## Variants of the same seed share demos and queries"),
        ("code", "for v in [\"icl\", \"zero_shot\", \"dummy_query\", \"shuffled_labels\", \"random_answers\"]:\n"
                 "    b = ic.build_prompts(model, \"antonym\", 1, 3, seed=0, variant=v)\n"
                 "    print(f\"{v:<16}\", repr(b.texts[0]))"),
        ("md", "## Accuracy vs number of demos"),
        ("code", "df = ic.accuracy_by_demos(model, [\"antonym\", \"english-french\", \"number\", \"letter-string\"], demos=[0, 1, 2, 4, 8], n_prompts=48)\n"
                 "df.pivot(index=\"task\", columns=\"n_demos\", values=\"accuracy\").round(2)"),
        ("code", "from icl_circuits.plots.accuracy import accuracy_by_demos\naccuracy_by_demos(df)"),
    ],
    "04_label_words_as_anchors": [
        ("md", "# 04 · Label words as anchors (Wang et al. 2023)\n\n"
               "Saliency I_l = |sum_h A_{l,h} * dL/dA_{l,h}| from one forward and one backward pass; flows "
               "S_wp (text -> label words), S_pq (label words -> final position), S_ww (the rest).\n\n" + SWITCH),
        ("code", SETUP),
        ("code", "from icl_circuits.saliency import saliency_flow\nfrom icl_circuits.anchors import isolate_attention, train_anchor_reweighting\n"
                 "from icl_circuits.plots import saliency as splots\n\n"
                 "batch = ic.build_prompts(model, \"number\", n_prompts=32, n_demos=8, seed=0)\n"
                 "sal = saliency_flow(model, batch, loss=\"label_words\", progress=False)\nsal.to_dataframe().round(4)"),
        ("code", "splots.flows(sal)"),
        ("code", "splots.heatmap(sal, example=0)"),
        ("md", "## Attention isolation\nBlock the label words from attending to the text before them, in the first "
               "layers or the last layers, and compare with blocking as many random positions."),
        ("code", "n = model.cfg.n_layers\niso = isolate_attention(model, batch, [[0], [0, 1], [n - 2, n - 1]], seed=0, progress=False)\n"
                 "iso.to_dataframe().round(3)"),
        ("code", "splots.isolation(iso)"),
        ("md", "## Anchor re-weighting\nA learned scalar per (layer, head, demo) scales the final position's attention "
               "to each label word; the model stays frozen."),
        ("code", "train = ic.build_prompts(model, \"number\", 48, 2, seed=1)\nheld_out = ic.build_prompts(model, \"number\", 48, 2, seed=2)\n"
                 "rw = train_anchor_reweighting(model, train, held_out, epochs=5, seed=0, progress=False)\nsplots.reweighting(rw)"),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main()
