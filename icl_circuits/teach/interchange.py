"""Exercise: a transfer rate from an interchange's predictions (notebook 03, Cheng & Zhang 2026).

``check_transfer_rate`` compares the learner's rate with ``InterchangeResult.rate("transfer")`` and
with the common mistakes computed from the same predictions: the preserve or neither rate, every
prompt counted (not only the valid ones), the clean run, a count, a percentage, another layer.
"""

from __future__ import annotations

from torch import Tensor

from icl_circuits.methods.interchange import InterchangeResult
from icl_circuits.teach.checks import (
    CheckResult, Mistake, first_mistake, is_placeholder, numeric, ratio_note, same, scalar, verdict,
)

__all__ = ["check_transfer_rate"]


def check_transfer_rate(answer: float | Tensor, run: InterchangeResult, layer: int) -> CheckResult:
    """Check a transfer rate: with p_i the prediction at the final position of target prompt i after the
    interchange at ``layer``, t_i the first token of A(query_i) (``run.transfer_tokens``) and V the
    valid prompts (``run.valid``: A and B give different first tokens),
    ``transfer = |{i in V : p_i = t_i}| / |V|``.

    The reference is ``run.rate("transfer")`` at ``layer``. Prints the verdict and returns it; raises
    only when ``run`` is not an ``InterchangeResult``, ``layer`` is not one of its layers or
    ``answer`` is not a number.
    """
    name = "check_transfer_rate"
    if not isinstance(run, InterchangeResult):
        raise TypeError(f"run must be an InterchangeResult (interchange(...)), got {type(run).__name__}")
    if isinstance(layer, bool) or layer not in run.layers:
        raise ValueError(f"layer must be one of the run's layers {run.layers}, got {layer!r}")
    if is_placeholder(answer):
        return verdict(name, "not_done", f"replace ... with the transfer rate at layer {layer}: one number in [0, 1].")
    a = numeric(answer, "answer", "a rate (one number in [0, 1])")
    i = run.layers.index(layer)
    pred, ta, tb, valid = run.predictions[i], run.transfer_tokens, run.preserve_tokens, run.valid
    want = float(run.rate("transfer")[i])
    match = lambda x, v: same(x, v, rtol=1e-6, atol=1e-9)  # noqa: E731  (ratios of small integers)
    if match(a, want):
        k = int(((pred == ta) & valid).sum())
        return verdict(name, "correct", f"transfer = {k}/{run.n} = {want:.3f} at layer {layer} "
                                        f"({run.position_set}), as run.rate('transfer') says.")
    hits = (pred == ta) & valid
    mistakes = [
        Mistake(float(((pred == tb) & valid).sum()) / run.n,
                "that is the preserve rate (prediction = B(query), run.preserve_tokens); transfer compares the "
                "prediction with A(query): run.transfer_tokens"),
        Mistake(float(((pred != ta) & (pred != tb) & valid).sum()) / run.n,
                "that is the neither rate; transfer compares the prediction with A(query): run.transfer_tokens"),
        Mistake(float((pred == ta).double().mean()),
                f"you scored all {len(valid)} prompts; only the {run.n} valid ones count (run.valid: prompts whose "
                "A(query) and B(query) differ), in the numerator and in the denominator"),
        Mistake(float(hits.sum()) / len(valid),
                f"you divided by all {len(valid)} prompts; the denominator is the {run.n} valid ones (run.valid)"),
        Mistake(float(((run.clean_predictions == ta) & valid).sum()) / run.n,
                "you scored the clean run (run.clean_predictions), without the intervention; use run.predictions "
                f"at the row of layer {layer}"),
        Mistake(float(hits.sum()), f"that is the count of transfers; the rate divides it by the {run.n} valid prompts"),
        Mistake(100 * want, "that is a percentage; a rate is a fraction in [0, 1]"),
        Mistake(float(run.rate("transfer").mean()), "you averaged over every layer; the rate is one layer's"),
    ]
    for j, l in enumerate(run.layers):
        if j != i:
            mistakes.append(Mistake(float(run.rate("transfer")[j]),
                                    f"that is the rate at layer {l}: row {j} of run.predictions; layer {layer} is "
                                    f"row {i} (run.layers.index({layer}))"))
    found = first_mistake(a, mistakes, match)
    if found is None:
        if a.numel() == len(valid):
            found = "you have one value per prompt: the rate is the mean of the hits over the valid prompts"
        elif a.numel() != 1:
            found = f"your answer has {a.numel()} numbers; a rate is one number"
        else:
            found = ratio_note(scalar(a), want)
    return verdict(name, "wrong", found + ".")
