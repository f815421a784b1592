"""Exercise: the S_wp flow of one prompt by hand, from its saliency matrix (notebook 04, Wang et al. 2023).

``check_s_wp`` compares the learner's number with the package's own flow of that prompt
(``SaliencyResult.per_prompt``) and with the common mistakes computed from the same matrix: every
pair j < i averaged, the diagonal included, per-label means averaged, a sum, columns read instead of
rows, the other flows, another layer.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.methods.saliency import SaliencyResult
from icl_circuits.teach.checks import (
    CheckResult, Mistake, first_mistake, is_placeholder, numeric, ratio_note, same, scalar, verdict,
)

__all__ = ["check_s_wp", "s_wp_pairs"]

RTOL = 1e-4  # the package pools the pairs with an einsum in float32; a loop or a mask sums in another order


def s_wp_pairs(matrix: Float[Tensor, "pos pos"], answers: list[int], *, diagonal: bool = False) -> Tensor:
    """The entries I(p_k, j), j < p_k (``diagonal``: j <= p_k), of one saliency matrix, pooled over k."""
    return torch.cat([matrix[p, : p + int(diagonal)] for p in answers])


def check_s_wp(answer: float | Tensor, saliency: SaliencyResult, layer: int, example: int = 0) -> CheckResult:
    """Check S_wp of one prompt at one layer: with I = ``saliency.matrices[example, layer]`` (rows: the
    attending position i, columns: the attended position j) and p_k the label word (demo answer)
    positions ``saliency.example_answer_positions[example]``,
    ``S_wp = mean of I(p_k, j) over all pairs (k, j) with j < p_k`` (the pairs pooled, then one mean).

    The reference is the package's flow of that prompt, ``saliency.per_prompt[0, layer, example]``.
    Prints the verdict and returns it; raises only when ``saliency`` is not a ``SaliencyResult``,
    ``layer`` / ``example`` are out of range, or ``answer`` is not a number.
    """
    name = "check_s_wp"
    if not isinstance(saliency, SaliencyResult):
        raise TypeError(f"saliency must be a SaliencyResult (saliency_flow(...)), got {type(saliency).__name__}")
    if isinstance(layer, bool) or layer not in saliency.layers:
        raise ValueError(f"layer must be one of the result's layers {saliency.layers}, got {layer!r}")
    n_ex = saliency.matrices.shape[0]
    if isinstance(example, bool) or not isinstance(example, int) or not 0 <= example < n_ex:
        raise ValueError(f"example must be an integer in [0, {n_ex - 1}] (the prompts whose matrices were kept), "
                         f"got {example!r}")
    if is_placeholder(answer):
        return verdict(name, "not_done", f"replace ... with S_wp of prompt {example} at layer {layer}: one number.")
    a = numeric(answer, "answer", "S_wp (one number)")
    li = saliency.layers.index(layer)
    f = saliency.flow_names
    want = float(saliency.per_prompt[f.index("S_wp"), li, example])
    match = lambda x, v: same(x, v, rtol=RTOL, atol=1e-12)  # noqa: E731
    if match(a, want):
        return verdict(name, "correct", f"S_wp = {want:.4g} for prompt {example} at layer {layer}, the package's "
                                        "saliency_flow for that prompt.")
    q = saliency.example_final_positions[example]
    I = saliency.matrices[example, li, : q + 1, : q + 1].double()
    ans = saliency.example_answer_positions[example]
    pairs = s_wp_pairs(I, ans)
    lower = torch.tril(torch.ones_like(I, dtype=torch.bool), -1)
    per_label = torch.stack([I[p, :p].mean() for p in ans])
    after = torch.cat([I[p + 1:, p] for p in ans])
    mistakes = [
        Mistake(I[lower].mean(), "you averaged over all pairs (i, j) with j < i; S_wp averages only over the pairs "
                                 "whose row is a label word p_k and whose column is earlier text j < p_k"),
        Mistake(I.mean(), "you averaged over the whole matrix; S_wp averages only over the (label word p_k, earlier "
                          "text j < p_k) pairs"),
        Mistake(s_wp_pairs(I, ans, diagonal=True).mean(),
                "you included j = p_k, the diagonal (a label word attending to itself); S_wp counts only j < p_k"),
        Mistake(per_label.mean(), "you averaged each label word's row first and then averaged those means; S_wp "
                                  "pools all (p_k, j) pairs into one mean (a later label word has more earlier tokens, "
                                  "so it weighs more)"),
        Mistake(per_label, "you have one number per label word; S_wp pools all their pairs into one mean"),
        Mistake(pairs.sum(), f"you summed the {len(pairs)} pairs; S_wp is their mean"),
        Mistake(after.mean(), "you read column p_k (later tokens attending to the label word); S_wp reads row p_k: "
                              "the label word attending to the text before it"),
        Mistake(I[q, ans].mean(), "that is S_pq (row q: the final position attending to the label words); S_wp is "
                                  "the label words' rows, j < p_k"),
        Mistake(float(saliency.per_prompt[f.index("S_ww"), li, example]), "that is S_ww (all the other pairs)"),
        Mistake(s_wp_pairs(I, ans)[torch.cat([torch.arange(p) for p in ans]) != 0].mean() if saliency.exclude_bos is False
                else None,
                "you left out the first token (key 0, <bos>); the flows count it unless exclude_bos=True"),
        Mistake(torch.cat([I[:p, p] for p in ans]).mean(),
                "you read the entries above the diagonal (column p_k, rows j < p_k), which a causal model leaves at 0; "
                "rows are the attending position: S_wp reads row p_k"),
    ]
    for j, l in enumerate(saliency.layers):
        if j != li:
            mistakes.append(Mistake(float(saliency.per_prompt[f.index("S_wp"), j, example]),
                                    f"that is S_wp at layer {l}; the matrix of layer {layer} is "
                                    f"saliency.matrices[{example}, {li}]"))
    found = first_mistake(a, mistakes, match)
    if found is None:
        found = (f"your answer has {a.numel()} numbers; S_wp is one" if a.numel() != 1 else ratio_note(scalar(a), want))
    return verdict(name, "wrong", found + ".")
