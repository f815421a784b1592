"""Six guided lessons: each reproduces one claim of the literature live, on the explorer's model.

A ``Lesson`` says what a paper claimed and measured (``paper_number``, from METHODS.md), asks the
class to predict before running, and says what to look for in the figure. Its ``run`` calls the
project's own methods on ``explorer.model`` (no hooks, no second implementation), builds the figure
with an ``ic.viz`` builder from the Result, and writes ``measured`` from that Result: the numbers
on this model, with N, seed and the method's interval where it gives one. ``run_lesson`` keeps each
run once per explorer (``Explorer.memo``), so a second click is instant.

Designed for, and tested on, the bundled ``toy-icl`` (each run well under a second at one thread,
with 16-32 prompts); on another model a lesson runs when the explorer lists one of its tasks.
Every random choice takes ``SEED``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import plotly.graph_objects as go
from torch import Tensor

from icl_circuits.core.pairs import paired_batches, task_vector_prompts
from icl_circuits.core.prompts import build_prompts
from icl_circuits.explorer.inputs import ExplorerInputError
from icl_circuits.explorer.session import Explorer
from icl_circuits.methods.anchors import isolate_attention
from icl_circuits.methods.attribution import head_attribution, scan_agreement
from icl_circuits.methods.dpca.analysis import dpca_by_layer
from icl_circuits.methods.heads import head_ablation_scan
from icl_circuits.methods.interchange import InterchangeResult, interchange
from icl_circuits.methods.saliency import saliency_flow
from icl_circuits.methods.task_vectors import compare_task_vectors
from icl_circuits.viz import anchors as anchor_plots
from icl_circuits.viz import dpca as dpca_plots
from icl_circuits.viz import heads as head_plots
from icl_circuits.viz import interchange as interchange_plots
from icl_circuits.viz import saliency as saliency_plots
from icl_circuits.viz import sweeps as sweep_plots

__all__ = ["Lesson", "LessonRun", "LESSONS", "SEED", "edge_layers", "lesson", "run_lesson"]

#: The seed of every prompt draw and random control of the lessons.
SEED = 0
N_DEMOS = 8


@dataclass(frozen=True)
class LessonRun:
    """One run of a lesson: the figure (an ``ic.viz`` builder's, from ``result``), the numbers
    measured on this model (written from ``result``), and the Result (a tuple where the lesson
    compares several)."""

    figure: go.Figure
    measured: str
    result: Any


@dataclass(frozen=True)
class Lesson:
    """A guided lesson: one seed claim, the paper's number, a question to predict, and a live run."""

    key: str
    title: str
    paper: str
    claim: str
    paper_number: str
    predict: str
    look_for: str
    run: Callable[[Explorer], LessonRun]


# ----------------------------------------------------------------------------- helpers
def _task(ex: Explorer, key: str, preferred: Sequence[str]) -> str:
    """The first of ``preferred`` that the explorer's model can represent, else a clear refusal."""
    for t in preferred:
        if t in ex.tasks:
            return t
    raise ExplorerInputError(f"lesson {key!r} needs one of the tasks {', '.join(preferred)}; "
                             f"model {ex.name} cannot represent any of them")


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _span(layers: Sequence[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def edge_layers(n_layers: int) -> tuple[list[int], list[int]]:
    """The first and last k layers (k = round(n_layers / 10), at least 2, at most half the model):
    Wang et al. isolate 5 of GPT2-XL's 48 layers; on the 4-layer toy one layer is not enough."""
    k = max(1, min(max(2, round(n_layers / 10)), n_layers // 2))
    return list(range(k)), list(range(n_layers - k, n_layers))


# ----------------------------------------------------------------------------- 1. saliency flows
def _saliency(ex: Explorer) -> LessonRun:
    task = _task(ex, "anchors-saliency", ("number", "letter-string", "point", "antonym"))
    batch = build_prompts(ex.model, task, 32, N_DEMOS, seed=SEED)
    res = saliency_flow(ex.model, batch, loss="label_words", keep_examples=1, progress=False)
    last = len(res.layers) - 1

    def at(flow: str, i: int) -> str:
        j = res.flow_names.index(flow)
        return f"{float(res.flows[j, i]):.2e} [{float(res.low[j, i]):.2e}, {float(res.high[j, i]):.2e}]"

    wp_peak, pq_peak = int(res.flow("S_wp").argmax()), int(res.flow("S_pq").argmax())
    above = int((res.flow("S_pq") > res.flow("S_ww")).sum())
    measured = (f"{task}, N = {len(batch)} prompts x {batch.n_demos} demos, seed {SEED}; mean |A dL/dA| (loss "
                f"over the label words) over prompts [95% interval]. S_wp (text -> label words) peaks at layer "
                f"{res.layers[wp_peak]}: {at('S_wp', wp_peak)}; at layer {res.layers[last]}: {at('S_wp', last)}. "
                f"S_pq (label words -> final position) peaks at layer {res.layers[pq_peak]}: {at('S_pq', pq_peak)}; "
                f"at layer {res.layers[0]}: {at('S_pq', 0)}. S_pq > S_ww in {above} of {len(res.layers)} layers.")
    return LessonRun(saliency_plots.flows(res), measured, res)


# ----------------------------------------------------------------------------- 2. attention isolation
def _isolation(ex: Explorer) -> LessonRun:
    task = _task(ex, "anchors-isolation", ("number", "letter-string", "point", "antonym"))
    batch = build_prompts(ex.model, task, 32, N_DEMOS, seed=SEED)
    first, last = edge_layers(ex.n_layers)
    res = isolate_attention(ex.model, batch, [first, last], seed=SEED, progress=False)

    def cell(i: int, target: str) -> str:
        j = res.targets.index(target)
        return _interval(float(res.accuracy[i, j]), float(res.accuracy_low[i, j]), float(res.accuracy_high[i, j]))

    measured = (f"{task}, N = {len(batch)} prompts x {batch.n_demos} demos, seed {SEED}; first-token accuracy "
                f"[Wilson 95%]. No isolation: {res.baseline_accuracy:.2f}. Label words cut off from the text in "
                f"layers {_span(first)}: {cell(0, 'label')} (as many random positions: {cell(0, 'random')}); "
                f"in layers {_span(last)}: {cell(1, 'label')} (random: {cell(1, 'random')}).")
    return LessonRun(anchor_plots.isolation(res), measured, res)


# ----------------------------------------------------------------------------- 3. distributed templates
PAIRS = (("antonym", "english-french"), ("present-past", "uppercase"), ("english-french", "english-german"))


def _interchange(ex: Explorer) -> LessonRun:
    pair = next((p for p in PAIRS if p[0] in ex.tasks and p[1] in ex.tasks), None)
    if pair is None:
        raise ExplorerInputError(f"lesson 'distributed-template' needs one of the task pairs {PAIRS}; "
                                 f"model {ex.name} cannot represent both tasks of any")
    src, tgt = paired_batches(ex.model, *pair, n_prompts=24, n_demos=N_DEMOS, seed=SEED)
    runs = tuple(interchange(ex.model, src, tgt, spec, source_task=pair[0], target_task=pair[1], progress=False)
                 for spec in ("answer_-1", "demo_tokens"))

    def best(r: InterchangeResult) -> str:
        rate = r.rate("transfer")
        i = int(rate.argmax())
        where = "at every layer" if bool((rate == rate[i]).all()) else f"at layer {r.layers[i]}"
        return f"{_interval(float(r.rates[0, i]), float(r.low[0, i]), float(r.high[0, i]))} {where}"

    single, every = runs
    measured = (f"{pair[0]} -> {pair[1]}, N = {every.n} target prompts x {every.n_demos} demos, seed {SEED} "
                f"(source: the mean of {len(src)} {pair[0]} prompts); first-token transfer rate [Wilson 95%]. "
                f"Last demo answer only: highest transfer {best(single)}. All demo tokens: highest transfer "
                f"{best(every)}.")
    return LessonRun(interchange_plots.interchange(list(runs)), measured, runs)


# ----------------------------------------------------------------------------- 4. task vectors
def _task_vectors(ex: Explorer) -> LessonRun:
    task = _task(ex, "task-vectors", ("english-french", "antonym", "present-past", "country-capital"))
    prompts = task_vector_prompts(ex.model, task, n_demos=N_DEMOS, n_prompts=16, seed=SEED, n_eval=32)
    top_k = max(1, min(10, ex.n_layers * ex.n_heads // 4))
    res = compare_task_vectors(ex.model, prompts, top_k=top_k, methods=("vanilla", "function"))
    df = res.to_dataframe()

    zero = float(df[df.method == "zero-shot"].accuracy.iloc[0])

    def row(method: str, per_layer: bool = True) -> str:
        g = df[df.method == method]
        r = g.loc[g.accuracy.idxmax()]
        if not per_layer:
            return _interval(r.accuracy, r.low, r.high)
        above = int((g.accuracy > zero).sum())
        return (f"best {_interval(r.accuracy, r.low, r.high)} at layer {int(r.layer)}, above zero-shot at "
                f"{above} of {len(g)} layers")

    measured = (f"{task}: vectors from {len(prompts.dummy_query)} prompts (seed {SEED}), evaluated on N = "
                f"{len(prompts.zero_shot)} held-out zero-shot prompts (seed {prompts.zero_shot.seed}); {res.metric} "
                f"accuracy [Wilson 95%]. Zero-shot {row('zero-shot', False)}; ICL ({N_DEMOS} demos) "
                f"{row('icl', False)}. Vanilla task vector (replacing the final position): {row('vanilla')}. "
                f"Function vector (top {top_k} heads, added): {row('function')}.")
    return LessonRun(sweep_plots.sweep(df), measured, res)


# ----------------------------------------------------------------------------- 5. heads
def _heads(ex: Explorer) -> LessonRun:
    task = _task(ex, "heads-attribution", ("antonym", "english-french", "present-past"))
    batch = build_prompts(ex.model, task, 16, N_DEMOS, seed=SEED)
    exact = head_ablation_scan(ex.model, batch, how="mean", metric="logit_diff_to_mean", progress=False)
    approx = head_attribution(ex.model, batch, how="mean", metric="logit_diff_to_mean")
    with warnings.catch_warnings():  # a disagreement is reported in ``measured``
        warnings.simplefilter("ignore", UserWarning)
        agree = scan_agreement(exact, approx)
    i = int(exact.effect.abs().flatten().argmax())
    l, h = divmod(i, exact.n_heads)
    e, a = float(exact.effect[l, h]), float(approx.effect[l, h])
    measured = (f"{task}, N = {len(batch)} prompts x {batch.n_demos} demos, seed {SEED}; each of "
                f"{exact.effect.numel()} heads mean-ablated alone, metric {exact.metric} (clean "
                f"{float(exact.clean.mean()):.2f}). Ranking agreement: Spearman {agree.spearman:.2f}, top-"
                f"{agree.top_k} overlap {agree.top_k_overlap:.2f}. Largest exact effect L{exact.layers[l]}H{h}: "
                f"{e:+.2f} [{float(exact.low[l, h] - exact.clean.mean()):+.2f}, "
                f"{float(exact.high[l, h] - exact.clean.mean()):+.2f}]; attribution estimates {a:+.2f}"
                + (f" ({abs(e / a):.1f}x smaller)." if a != 0 and abs(a) < abs(e) else "."))
    return LessonRun(head_plots.scan_vs_attribution(exact, approx), measured, (exact, approx, agree))


# ----------------------------------------------------------------------------- 6. dPCA
def _dpca(ex: Explorer) -> LessonRun:
    task = _task(ex, "dpca", ("number", "letter-string", "point"))
    batch = build_prompts(ex.model, task, 32, N_DEMOS, seed=SEED)
    res = dpca_by_layer(ex.model, batch, n_null=0, seed=SEED, progress=False)
    share: Tensor = res.total_marginal_variance  # [layer, marginalization]
    nuisance, label = res.marginalizations[0], res.marginalizations[1]
    lo = int(share[:, 0].argmin())
    hi = int(share[:, 1].argmax())
    measured = (f"{task}, N = {len(batch)} prompts x {batch.n_demos} demos ({res.projections.shape[-1]} answer "
                f"positions), seed {SEED}; share of the condition-mean variance. Nuisance ({nuisance}): "
                f"{float(share[0, 0]):.2f} at layer {res.layers[0]}, lowest {float(share[lo, 0]):.2f} at layer "
                f"{res.layers[lo]}. Label: {float(share[0, 1]):.2f} at layer {res.layers[0]}, highest "
                f"{float(share[hi, 1]):.2f} at layer {res.layers[hi]}. No null draws here (each refits every "
                "layer; dpca_by_layer(n_null=20) gives them).")
    return LessonRun(dpca_plots.explained_variance(res), measured, res)


# ----------------------------------------------------------------------------- the lessons
LESSONS: tuple[Lesson, ...] = (
    Lesson(
        key="anchors-saliency", title="Label words are anchors: where information flows",
        paper="Wang et al. 2023, Label words are anchors (EMNLP)",
        claim=("Information flows from the demo text into the label words in shallow layers (S_wp), and from the "
               "label words into the final position in deep layers (S_pq)."),
        paper_number=("GPT2-XL (48 layers): S_wp dominates in the shallow layers and S_pq in the deep layers "
                      "(METHODS.md records the shape of the curves, not a number or N)."),
        predict="Which flow should be largest in the first layers, and which in the last ones?",
        look_for=("The blue S_wp line should be high in the first layers and fall to about 0 in the last "
                  "(where only the final position reaches the loss); compare S_pq with S_ww where their 95% bands "
                  "do not overlap."),
        run=_saliency,
    ),
    Lesson(
        key="anchors-isolation", title="Label words are anchors: cut them off",
        paper="Wang et al. 2023, Label words are anchors (EMNLP)",
        claim=("Blocking the label words from attending to the text before them hurts in the first layers and "
               "barely matters in the last ones; blocking as many random positions is the control."),
        paper_number=("GPT2-XL: isolating the label words in the first 5 of 48 layers hurts far more than in the "
                      "last 5 (METHODS.md gives the layers, not the accuracies)."),
        predict="Which hurts more: isolating the label words in the first layers or in the last ones?",
        look_for=("Compare the label bars with the random-position bars in each layer range, and the first "
                  "range with the last; intervals are Wilson 95% over prompts."),
        run=_isolation,
    ),
    Lesson(
        key="distributed-template", title="Single-position intervention fails",
        paper="Cheng & Zhang 2026, Single-Position Intervention Fails: Distributed Output Templates Drive ICL",
        claim=("Overwriting one demo position with another task's activations never transfers the task; "
               "overwriting all demo tokens does, at early-to-middle layers."),
        paper_number=("Llama-3.2-3B (28 layers), N = 50: single position 0% transfer at every layer; all demo "
                      "tokens 96% [87, 99] at layer 8 (~30% depth)."),
        predict="Will patching only the last demo answer make the model do the source task? And all demo tokens?",
        look_for=("Solid lines are transfer, dashed preserve, dotted neither. The single position should stay at "
                  "0 transfer (preserve near 1) at every layer; all demo tokens should transfer at early layers "
                  "and stop where the query position already holds the task."),
        run=_interchange,
    ),
    Lesson(
        key="task-vectors", title="Task vectors: the task in one vector",
        paper="Hendel et al. 2023, In-Context Learning Creates Task Vectors",
        claim=("The final-position residual of ICL prompts (dummy queries), patched into zero-shot prompts at "
               "one layer, makes the model do the task; a function vector (Todd et al.) is the comparison."),
        paper_number=("Mean over 18 tasks: LLaMA-7B zero-shot 0.13, task vector 0.78, ICL 0.86; Pythia-2.8B "
                      "0.13 / 0.72 / 0.83."),
        predict="At which layer should replacing the final position's residual by the task vector work best?",
        look_for=("The dashed lines are zero-shot and ICL. A task vector works where its line rises above "
                  "zero-shot toward ICL. On toy-icl the vanilla vector does not (it replaces the query-specific "
                  "state the final position already holds), while the added function vector does."),
        run=_task_vectors,
    ),
    Lesson(
        key="heads-attribution", title="Which heads matter: exact ablation vs attribution patching",
        paper="Kramar et al. 2024, AtP* (after Nanda 2023, attribution patching)",
        claim=("Attribution patching (one forward and one backward pass) ranks heads like the exact ablation "
               "scan, but can badly underestimate heads whose attention saturates."),
        paper_number=("METHODS.md gives no published number for this claim: the linear estimate through the "
                      "softmax can be ~0 or of the wrong sign where a patch changes which key a query attends to."),
        predict="Will the one-pass estimate find the same important heads? Will it get their size right?",
        look_for=("Points on the dotted diagonal are heads the estimate gets right; the title gives the rank "
                  "agreement. Look at how far the most important heads sit from the diagonal."),
        run=_heads,
    ),
    Lesson(
        key="dpca", title="dPCA of the label positions",
        paper="Label Words as Local Task Vectors (arXiv 2406.16007), with dPCA (Kobak et al. 2016)",
        claim=("At the demo answer positions a nuisance feature of the input is present early and fades, while "
               "the label information grows and stays."),
        paper_number=("LLaMA-7B, string length as the nuisance: length information peaks early and fades, label "
                      "information stays (METHODS.md records the shape, not a number or N)."),
        predict="In which layers should the nuisance feature's share of the variance be largest?",
        look_for=("Solid lines are each marginalization's share of the condition-mean variance per layer: the "
                  "nuisance line should fall after the first layers while the label line rises and stays."),
        run=_dpca,
    ),
)


def lesson(key: str) -> Lesson:
    """The lesson named ``key``; an unknown key raises ``ExplorerInputError`` (a ValueError) naming it
    and the choices."""
    for item in LESSONS:
        if item.key == key:
            return item
    raise ExplorerInputError(f"unknown lesson {str(key)[:60]!r}; choose one of {', '.join(l.key for l in LESSONS)}")


def run_lesson(explorer: Explorer, key: str) -> LessonRun:
    """Run lesson ``key`` on the explorer's model once (``explorer.memo(("lesson", key), ...)``);
    later calls return the same ``LessonRun``. A method's refusal (``ValueError``: a model or task it
    cannot use) becomes ``ExplorerInputError`` naming the lesson."""
    item = lesson(key)

    def compute() -> LessonRun:
        try:
            return item.run(explorer)
        except ExplorerInputError:
            raise
        except ValueError as e:
            raise ExplorerInputError(f"lesson {key!r}: {e}") from None
    return explorer.memo(("lesson", key), compute)
