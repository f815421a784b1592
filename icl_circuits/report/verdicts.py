"""What each report section claims, what the paper found, and when our numbers cannot be read.

Every detector takes plain numbers (so that it can be tested on constructed values) and returns
``None`` when the result is readable, else one sentence saying why it is not; the report prints
those sentences as "Not a finding: ...". ``CLAIMS`` holds, per section, the claim being tested,
its source and the published number that our number stands beside (from docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: a task below this accuracy (its primary metric, with the report's demos) is "not solved"
SOLVED = 0.7
#: a propagation fit with held-out R² below this predicts worse than the mean: not readable
R2_UNREADABLE = 0.0
#: below this (and >= R2_UNREADABLE) the fit explains too little to read its decomposition
R2_WEAK = 0.2


@dataclass(frozen=True)
class Claim:
    """The claim a section tests, its source (paper, short) and the paper's number."""

    claim: str
    source: str
    paper: str


CLAIMS: dict[str, Claim] = {
    "accuracy": Claim(
        "Accuracy rises with the number of demonstrations: the model learns the task in context.",
        "Brown et al. 2020 (GPT-3); every ICL paper's first figure",
        "Hendel et al. 2023, mean over 18 tasks: LLaMA-7B zero-shot 0.13, ICL 0.86; Pythia-2.8B 0.13 / 0.83."),
    "saliency": Claim(
        "Label words are anchors: text flows into the label words in shallow layers (S_wp dominates), "
        "the label words flow into the prediction in deep layers (S_pq dominates).",
        "Wang et al. 2023, EMNLP (arXiv 2305.14160)",
        "GPT2-XL: S_wp > S_pq in shallow layers, S_pq > S_wp in deep layers (their Fig. 2)."),
    "task_vectors": Claim(
        "One vector at one layer carries the task: injected into a zero-shot prompt it recovers much of the "
        "ICL accuracy; learned vectors beat extracted ones.",
        "Hendel et al. 2023; Todd et al. 2024 (FV); Yang et al. 2025 (LTV); 2406.16007 (local)",
        "LLaMA-7B: zero-shot 0.13, task vector 0.78, ICL 0.86 (Hendel); Llama3-8B LTV ~0.76-0.84 vs TV/FV "
        "0.27-0.52 (Yang)."),
    "interchange": Claim(
        "Single-position interventions fail; the task lives in a template distributed over all demo positions. "
        "The query position is necessary, no single demo position is.",
        "Cheng & Zhang 2026 (Single-Position Intervention Fails)",
        "Llama-3.2-3B: single position 0% transfer at every layer; all demo tokens 96% [87, 99] at layer 8 "
        "(~30% depth), N = 50."),
    "heads": Claim(
        "A few heads carry the task vector's effect to the output: ablating the top-k key heads hurts far more "
        "than ablating k random heads.",
        "Yang et al. 2025 (Task Vectors, Learned Not Extracted)",
        "Key heads cluster just after the injection layer and in the final layers; ablating them hurts far more "
        "than random heads (no single number published)."),
    "ov": Claim(
        "The heads' OV circuits carry the vector: their summed OV contributions, added at the final layer, "
        "recover most of the vector's accuracy.",
        "Yang et al. 2025",
        "Most of the LTV's accuracy is recovered from the heads' OV contributions (no single number published)."),
    "propagation": Claim(
        "A vector's effect on the output is a linear map W = U P: early vectors are rotated into the label "
        "subspace, late ones mostly scaled.",
        "Yang et al. 2025",
        "Early layers: tr(U)/d low (rotation); late layers: tr(U)/d near 1 (scaling)."),
    "dpca": Claim(
        "At the label positions, nuisance information (a feature of the demo input) peaks early and fades while "
        "label information stays.",
        "2406.16007 (Label Words as Local Task Vectors), dPCA of Kobak et al. 2016",
        "LLaMA-7B on synthetic categorization: label variance persists through the late layers, nuisance "
        "variance fades (qualitative)."),
}


def task_unsolved(task: str, value: float, low: float, high: float, metric: str, threshold: float = SOLVED,
                  ) -> str | None:
    """The task's accuracy is below ``threshold``: an analysis of how the model solves it reads nothing."""
    if value >= threshold:
        return None
    return (f"{task} is at {metric} {value:.2f} [{low:.2f}, {high:.2f}] < {threshold:.2f}: the model does not solve "
            "this task here, so the mechanism below is not one of a solved task.")


def baseline_at_icl(baseline_name: str, base: float, base_high: float, icl: float) -> str | None:
    """A baseline whose Wilson 95% upper bound reaches the ICL accuracy: nothing is left for ICL to add."""
    if base_high < icl:
        return None
    return (f"{baseline_name} already reaches the ICL accuracy ({base:.2f}, upper bound {base_high:.2f}, vs ICL "
            f"{icl:.2f}): there is no gap for the demos, or for a vector standing in for them, to close.")


def interval_spans(what: str, low: float, high: float, reference: float, reference_name: str) -> str | None:
    """The 95% interval of ``what`` contains ``reference``: the difference is not resolved."""
    if not low <= reference <= high:
        return None
    return (f"the 95% interval of {what} [{low:.2f}, {high:.2f}] contains {reference_name} ({reference:.2f}): "
            "the difference is not resolved at this number of prompts.")


def null_overlaps(what: str, effect: float, null_values: Sequence[float]) -> str | None:
    """The effect is not above every null draw (or the null's upper end): it could be noise."""
    null = [float(v) for v in null_values]
    if not null or effect > max(null):
        return None
    return (f"{what} ({effect:.3f}) does not exceed its null distribution ({min(null):.3f} to {max(null):.3f}, "
            f"{len(null)} draws): indistinguishable from noise.")


def weak_fit_layers(layers: Sequence[int], r2: Sequence[float], threshold: float = R2_WEAK) -> str | None:
    """Layers whose held-out R² is below ``threshold``: their fitted map is not readable."""
    bad = [(l, float(v)) for l, v in zip(layers, r2) if not float(v) >= threshold]
    if not bad:
        return None
    vals = ", ".join(f"{l}: {v:.2f}" for l, v in bad)
    return (f"held-out R² < {threshold} at layer(s) {', '.join(str(l) for l, _ in bad)} ({vals}): the linear map "
            "explains too little of the effect there, so its rotation/scaling at those layers is not a property "
            "of the model (greyed in the figures).")


def label_token_identity(layer: int, label_variance: float, threshold: float = 0.9) -> str | None:
    """Label variance at the label positions already near 1 at the first analysed layer: the positions hold
    the label words' own tokens (fixed label words), so "label information" there is token identity."""
    if label_variance < threshold:
        return None
    return (f"label variance is already {label_variance:.2f} at layer {layer}: the label positions hold the label "
            "words' own tokens, so label information there is the token's identity, not a representation learned "
            "in context (the paper draws arbitrary label words per prompt).")


def verdict_label(warnings: Sequence[str]) -> str:
    """'not a finding' when any detector fired, else 'finding' (the tag of a section's reading)."""
    return "not a finding" if any(warnings) else "finding"
