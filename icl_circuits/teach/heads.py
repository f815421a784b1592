"""Exercise: a head's ablation effect from two logit differences (notebook 05).

``check_head_ablation_effect`` compares the learner's effect with the package's
(``methods.head_ablation.ablate_heads`` scored by the registry's ``logit_diff_to_mean``, the metric
of ``head_ablation_scan``) and with the common mistakes computed from the same logits: the sign
flipped, the gold logit alone, the best other token instead of the mean, log-probabilities, the
ablated or clean value alone, a ratio, one value per prompt, the other kind of ablation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from icl_circuits.core.checks import check_head
from icl_circuits.core.metrics import get_metric
from icl_circuits.core.positions import check_batch
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.runner import final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.head_ablation import ablate_heads
from icl_circuits.teach.checks import (
    CheckResult, Mistake, check_model, first_mistake, is_placeholder, numeric, ratio_note, same, scalar, verdict,
)

__all__ = ["check_head_ablation_effect"]

METRIC = "logit_diff_to_mean"
RTOL, ATOL = 1e-4, 1e-4  # logits of another batching differ in float32's last bits


def check_head_ablation_effect(
    answer: float | Tensor, model: HookedModel, batch: PromptBatch, layer: int, head: int,
    how: Literal["zero", "mean"] = "mean",
) -> CheckResult:
    """Check the effect of ablating head (``layer``, ``head``) on the logit difference:
    with LD(logits)_i = logit_i[gold_i] - mean_v logit_i[v] (``logit_diff_to_mean``; for a
    categorization task the mean runs over the prompt's other label words),
    ``effect = (1/N) sum_i (LD(ablated)_i - LD(clean)_i)``, negative when the head helps.

    The reference is ``ablate_heads(model, batch, [(layer, head)], how, metric="logit_diff_to_mean")``
    (its ``per_prompt - clean``, averaged): the same number as ``head_ablation_scan(...).effect[layer,
    head]`` up to float32 rounding. Prints the verdict and returns it; raises only when an argument is
    not of its kind (``answer`` not a number, ``model`` not a model, ``batch`` not a PromptBatch, a
    head the model does not have, ``how`` not "zero" or "mean").
    """
    name = "check_head_ablation_effect"
    model = check_model(model)
    check_batch(batch)
    check_head(model, layer, head)
    if how not in ("zero", "mean"):
        raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")
    if is_placeholder(answer):
        return verdict(name, "not_done", f"replace ... with the mean change of the logit difference when L{layer}H{head} "
                                         f"is {how}-ablated: one number.")
    a = numeric(answer, "answer", "the ablation effect (one number)")
    abl = ablate_heads(model, batch, [(layer, head)], how, metric=METRIC)
    want = float((abl.per_prompt - abl.clean).double().mean())
    match = lambda x, v: same(x, v, rtol=RTOL, atol=ATOL)  # noqa: E731
    if match(a, want):
        return verdict(name, "correct", f"ablating L{layer}H{head} ({how}) changes the logit difference by {want:+.3f} "
                                        f"(clean {abl.clean_value:.2f}, ablated {abl.value:.2f}).")
    clean, ablated = final_logits(model, batch).double(), abl.logits.double()
    gold = batch.answer_tokens[:, None]
    other = get_metric("logit_diff").from_logits
    g = lambda lg: lg.gather(1, gold)[:, 0]  # noqa: E731
    lp = lambda lg: lg.log_softmax(-1).gather(1, gold)[:, 0]  # noqa: E731
    ld_abl, ld_clean = abl.per_prompt.double(), abl.clean.double()
    ratio = float(ld_abl.mean() / ld_clean.mean()) if float(ld_clean.mean()) != 0 else None
    mistakes = [
        Mistake(-want, "the sign is flipped: you computed clean - ablated; the effect is ablated - clean (negative "
                       "when the head helps the model)"),
        Mistake(float((g(ablated) - g(clean)).mean()), "you compared the gold logits alone; the logit difference "
                                                       "subtracts the mean logit over the vocabulary from the gold logit"),
        Mistake(float((other(ablated.float(), batch) - other(clean.float(), batch)).double().mean()),
                "you subtracted the best other token's logit (the 'logit_diff' metric); this exercise's logit difference "
                "subtracts the mean logit (logit_diff_to_mean)"),
        Mistake(float((lp(ablated) - lp(clean)).mean()), "you compared log-probabilities; the exercise asks for the "
                                                         "logit difference (gold logit minus the mean logit)"),
        Mistake(ld_abl - ld_clean, f"you have one value per prompt (shape [{len(batch)}]): average them"),
        Mistake(float(ld_abl.mean()), "that is the ablated logit difference itself (the scan's 'values'); the effect "
                                      "is its change from the clean run"),
        Mistake(float(ld_clean.mean()), "that is the clean logit difference; the effect is the ablated one minus it"),
        Mistake(ratio, "that is a ratio ablated / clean; the effect is a difference"),
    ]
    other_how = "zero" if how == "mean" else "mean"
    alt = ablate_heads(model, batch, [(layer, head)], other_how, metric=METRIC)
    mistakes.append(Mistake(float((alt.per_prompt - alt.clean).double().mean()),
                            f"that is the effect of {other_how}-ablation; the exercise {how}-ablates"))
    found = first_mistake(a, mistakes, match)
    if found is None:
        found = (f"your answer has {a.numel()} numbers; the effect is one" if a.numel() != 1
                 else ratio_note(scalar(a), want))
    return verdict(name, "wrong", found + ".")
