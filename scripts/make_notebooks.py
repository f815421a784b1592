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
        ("code", "sweep = ic.demo_sweep(model, [\"antonym\", \"english-french\", \"number\", \"letter-string\"], demos=[0, 1, 2, 4, 8], n_prompts=48)\nacc = ic.accuracy_by_demos(model, sweep)\ndf = acc.to_dataframe()\n"
                 "# one row per task x demos x metric: first_token for every task, label for categorization\n"
                 "df.pivot_table(index=[\"task\", \"metric\"], columns=\"n_demos\", values=\"value\").round(2)"),
        ("code", "import icl_circuits.viz.accuracy\nic.viz.accuracy.accuracy_by_demos(acc)"),
    ],
    "04_label_words_as_anchors": [
        ("md", "# 04 · Label words as anchors (Wang et al. 2023)\n\n"
               "Saliency I_l = |sum_h A_{l,h} * dL/dA_{l,h}| from one forward and one backward pass; flows "
               "S_wp (text -> label words), S_pq (label words -> final position), S_ww (the rest).\n\n" + SWITCH),
        ("code", SETUP),
        ("code", "from icl_circuits.methods.saliency import saliency_flow\nfrom icl_circuits.methods.anchors import isolate_attention\n"
                 "from icl_circuits.methods.reweighting import train_anchor_reweighting\n"
                 "from icl_circuits.viz import anchors as aplots, reweighting as rplots, saliency as splots\n\n"
                 "batch = ic.build_prompts(model, \"number\", n_prompts=32, n_demos=8, seed=0)\n"
                 "sal = saliency_flow(model, batch, loss=\"label_words\", progress=False)\nsal.to_dataframe().round(4)"),
        ("code", "splots.flows(sal)"),
        ("code", "splots.heatmap(sal, example=0)"),
        ("md", "## Attention isolation\nBlock the label words from attending to the text before them, in the first "
               "layers or the last layers, and compare with blocking as many random positions."),
        ("code", "n = model.cfg.n_layers\niso = isolate_attention(model, batch, [[0], [0, 1], [n - 2, n - 1]], seed=0, progress=False)\n"
                 "iso.to_dataframe().round(3)"),
        ("code", "aplots.isolation(iso)"),
        ("md", "## Anchor re-weighting\nA learned scalar per (layer, head, demo) scales the final position's attention "
               "to each label word; the model stays frozen."),
        ("code", "train = ic.build_prompts(model, \"number\", 48, 2, seed=1)\nheld_out = ic.build_prompts(model, \"number\", 48, 2, seed=2)\n"
                 "rw = train_anchor_reweighting(model, train, held_out, epochs=5, seed=0, progress=False)\nrplots.reweighting(rw)"),
    ],
    "05_heads_and_ov_circuits": [
        ("md", "# 05 · Heads and OV circuits\n\nHead ablation scans (exact, batched) next to attribution "
               "patching (one forward + one backward), and the OV-circuit view of a learned task vector "
               "(Yang, Cho, Ding, Inoue 2025): which later heads carry it to the final position.\n\n" + SWITCH),
        ("code", SETUP),
        ("code", "from icl_circuits.methods.attribution import head_attribution, scan_agreement\n"
                 "from icl_circuits.methods.heads import head_ablation_scan\n"
                 "from icl_circuits.viz import heads as hplots\n\n"
                 "batch = ic.build_prompts(model, \"antonym\", 32, 8, seed=0)\n"
                 "exact = head_ablation_scan(model, batch, how=\"mean\", metric=\"logit_diff_to_mean\", progress=False)\n"
                 "approx = head_attribution(model, batch, how=\"mean\", metric=\"logit_diff_to_mean\")\n"
                 "print(scan_agreement(exact, approx))\nhplots.head_scan(exact)"),
        ("code", "hplots.scan_vs_attribution(exact, approx)"),
        ("md", "## A learned task vector and the heads that carry it"),
        ("code", "from icl_circuits.methods.learned import train_task_vector\nfrom icl_circuits.methods.ov_circuits import ov_contributions, reconstruct\n"
                 "from icl_circuits.methods.key_heads import key_head_ablation\nfrom icl_circuits.viz import key_heads as kplots, ov_circuits as oplots\n\n"
                 "train = ic.build_prompts(model, \"antonym\", 96 + 32, 0, seed=0, variant=\"zero_shot\")\n"
                 "ltv = train_task_vector(model, train, layer=1, n_val=32, epochs=4, seed=0, progress=False)\n"
                 "zs = ic.build_prompts(model, \"antonym\", 32, 0, seed=7, variant=\"zero_shot\")\n"
                 "ov = ov_contributions(model, zs, ltv, 1)\nprint(\"identity error\", ov.identity_error())\noplots.ov_heads(ov)"),
        ("code", "oplots.reconstruction(reconstruct(model, zs, ltv, 1))"),
        ("code", "kplots.key_vs_random(key_head_ablation(model, zs, ltv, 1, ks=(1, 2, 4), n_random=5, seed=0, progress=False))"),
    ],
    "02_task_vectors": [
        ("md", "# 02 · Task vectors: vanilla, local, function vectors, learned\n\n"
               "- vanilla (Hendel et al. 2023): the final-position residual of ICL prompts with dummy queries, "
               "patched into zero-shot prompts at one layer;\n- local (2406.16007): answer-position states "
               "patched into a random-answer twin;\n- function vectors (Todd et al. 2024): the summed outputs of "
               "the heads with the largest causal indirect effect, added at one layer;\n- learned (Yang et al. "
               "2025): one vector trained by gradient descent, the model frozen.\n\n" + SWITCH),
        ("code", SETUP),
        ("code", "from icl_circuits.core.pairs import task_vector_prompts\n"
                 "from icl_circuits.methods.task_vectors import vanilla_task_vector, evaluate_task_vector, compare_task_vectors\n"
                 "from icl_circuits.methods.function_vectors import function_vector\n"
                 "from icl_circuits.methods.learned import train_task_vector\nfrom icl_circuits.viz import sweeps\n\n"
                 "p = task_vector_prompts(model, \"english-french\", n_demos=8, n_prompts=16, seed=0, n_eval=48)\n"
                 "tv = vanilla_task_vector(model, p.dummy_query)\n"
                 "res = evaluate_task_vector(model, tv, p.zero_shot, p.icl_eval)\nres.to_dataframe().round(3)"),
        ("code", "fv = function_vector(model, p.icl, p.shuffled, top_k=4)\nfv.meta[\"heads\"]"),
        ("code", "train = ic.build_prompts(model, \"english-french\", 96 + 32, 0, seed=0, variant=\"zero_shot\")\n"
                 "ltv = train_task_vector(model, train, layer=1, n_val=32, epochs=4, seed=0, progress=False)\n"
                 "p16 = task_vector_prompts(model, \"english-french\", n_demos=8, n_prompts=16, seed=0)\n"
                 "table = compare_task_vectors(model, p16, top_k=4, extra=[ltv]).to_dataframe()\n"
                 "table.pivot_table(index=\"layer\", columns=\"method\", values=\"accuracy\").round(2)"),
        ("code", "sweeps.sweep(table)"),
    ],
    "06_dpca_of_label_positions": [
        ("md", "# 06 · dPCA of label-position vectors\n\nDemixed PCA (Kobak et al. 2016) of the residual stream at "
               "the demo answer positions of a categorization task, marginalized by a nuisance feature (the "
               "parity of the number) and by the label class (2406.16007). The bundled model solves `number` in "
               "context (1.00 with 8 demos, see its card); on `letter-string`, which it does not solve, the same "
               "code shows the label marginalization at null level.\n\n" + SWITCH),
        ("code", SETUP),
        ("code", "from icl_circuits.methods.dpca.ablation import ablate_subspace\nfrom icl_circuits.methods.dpca.analysis import dpca_by_layer\n"
                 "from icl_circuits.viz import dpca as dplots\n\n"
                 "batch = ic.build_prompts(model, \"number\", n_prompts=64, n_demos=8, seed=0)\n"
                 "res = dpca_by_layer(model, batch, n_null=2)\nres.variance_table().round(3)"),
        ("code", "dplots.explained_variance(res)"),
        ("code", "dplots.distances(res)"),
        ("code", "dplots.projections(res)"),
        ("code", "held_out = ic.build_prompts(model, \"number\", n_prompts=48, n_demos=8, seed=1)\n"
                 "abl = ablate_subspace(model, held_out, res, \"parity\", layers=[1, 2], n_random=2)\n"
                 "dplots.ablation(abl)"),
    ],
    "03_distributed_templates": [
        ("md", "# 03 · Single- vs multi-position interchange (Cheng & Zhang 2026)\n\nRecord the residual of "
               "task A prompts at a set of positions (averaged per position), overwrite the same positions of "
               "task B prompts, and ask whether the model now answers task A on B's query (transfer), still "
               "answers B (preserve), or neither. Then: necessity tests, and probes that decode the task where "
               "intervening does nothing.\n\n" + SWITCH),
        ("code", SETUP),
        ("code", "from icl_circuits.core.pairs import paired_batches\nfrom icl_circuits.methods.interchange import interchange\nfrom icl_circuits.methods.necessity import necessity\nfrom icl_circuits.methods.probing import probe_by_layer\n"
                 "from icl_circuits.viz import interchange as iplots\n\n"
                 "src, tgt = paired_batches(model, \"antonym\", \"english-french\", n_prompts=24, n_demos=8, seed=0)\n"
                 "runs = [interchange(model, src, tgt, pos, source_task=\"antonym\", target_task=\"english-french\")\n"
                 "        for pos in [\"answer_-1\", \"answers\", \"demo_tokens\"]]\n"
                 "iplots.interchange(runs)"),
        ("code", "batch = ic.build_prompts(model, \"english-french\", 24, 8, seed=1)\n"
                 "nec = [necessity(model, batch, pos, how=\"mean\") for pos in [\"answer_-1\", \"answers\", \"query\"]]\niplots.necessity(nec)"),
        ("code", "tasks = [\"antonym\", \"english-french\", \"english-german\"]  # one batch per task: decode the task identity\n"
                 "probes = probe_by_layer(model, {t: ic.build_prompts(model, t, 24, 8, seed=2) for t in tasks}, \"answer\")\n"
                 "probes.to_dataframe().round(3)"),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src, id=f"cell-{i:02d}") if kind == "md" else new_code_cell(src, id=f"cell-{i:02d}")
                for i, (kind, src) in enumerate(cells)]  # stable ids: a rewrite changes only what changed
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main()
