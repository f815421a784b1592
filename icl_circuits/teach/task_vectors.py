"""Exercise: a vanilla task vector by hand (notebook 02, Hendel et al. 2023).

``check_vanilla_task_vector`` compares the learner's vector with the package's
``methods.task_vectors.vanilla_task_vector`` and with the common mistakes, computed from the same
residual stream (``core.runner.read_resid``): every position averaged, one vector per prompt, the
neighbouring layer, the last padded position, the token before the final one, a sum.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.checks import check_layer
from icl_circuits.core.positions import check_batch
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.runner import read_resid
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.task_vectors import vanilla_task_vector
from icl_circuits.teach.checks import (
    CheckResult, Mistake, check_model, first_mistake, is_placeholder, numeric, same, verdict,
)

__all__ = ["check_vanilla_task_vector"]

RTOL, ATOL = 1e-4, 1e-5  # float32 residuals summed in another order differ in the last bits


def check_vanilla_task_vector(
    answer: Float[Tensor, "d_model"], model: HookedModel, batch: PromptBatch, layer: int,
) -> CheckResult:
    """Check a vanilla task vector: theta_l = (1/N) sum_i h_l(x_i)[q_i], the residual stream at the input
    of block ``layer`` (``blocks.{layer}.hook_resid_pre``) at each prompt's final position q_i
    (``batch.final_positions``), averaged over the N prompts of ``batch`` (dummy-query ICL prompts).

    The reference is ``vanilla_task_vector(model, batch, [layer])``; mistakes are computed from the
    same residuals. Prints the verdict and returns it; raises only when an argument is not of its kind
    (``answer`` not a tensor, ``model`` not a model, ``batch`` not a PromptBatch, ``layer`` out of range).
    """
    name = "check_vanilla_task_vector"
    model = check_model(model)
    check_batch(batch)
    layer = check_layer(model, layer)
    n, d = len(batch), model.cfg.d_model
    if is_placeholder(answer):
        return verdict(name, "not_done", f"replace ... with the task vector at layer {layer}: one vector of "
                                         f"shape [d_model={d}].")
    a = numeric(answer, "answer", f"a task vector of shape [d_model={d}]")
    want = vanilla_task_vector(model, batch, [layer]).at(layer).double()
    atol = ATOL * float(want.abs().max())
    match = lambda x, v: same(x, v, rtol=RTOL, atol=atol)  # noqa: E731
    if match(a, want):
        return verdict(name, "correct", f"theta_{layer} (norm {float(want.norm()):.3g}) equals "
                                        f"vanilla_task_vector(model, batch)[layer {layer}].")
    near = [l for l in (layer - 1, layer + 1) if 0 <= l <= model.cfg.n_layers]
    r = read_resid(model, batch, None, [layer, *near]).double()  # [layer, batch, pos, d]
    rows = torch.arange(n)
    final = batch.final_positions
    real = (torch.arange(r.shape[2])[None] <= final[:, None]).double()  # [batch, pos]
    at = r[0]
    mistakes = [
        Mistake(at[rows, final], f"you have one vector per prompt (shape [{n}, {d}]): average them over the "
                                 "prompts (dim 0)"),
        Mistake(at[rows, final].sum(0), f"you summed over the {n} prompts: theta is their mean"),
        Mistake((at * real[..., None]).sum(1).div(real.sum(1, keepdim=True)).mean(0),
                "you averaged over every position of the prompt; theta is read at the final position only "
                "(batch.final_positions: the dummy query's last token)"),
        Mistake(at.mean((0, 1)), "you averaged over every position, padding included; theta is read at the final "
                                 "position only (batch.final_positions)"),
        Mistake(at.mean(0), f"you averaged over the prompts but kept every position (shape [pos, {d}]): "
                            "select each prompt's final position first"),
        Mistake(at[:, -1].mean(0), "you read position -1, which is padding in the prompts shorter than the batch: "
                                   "use batch.final_positions"),
        Mistake(at[rows, final - 1].mean(0), "you read the token before the final one (the query's input); theta "
                                             "is read at the final position"),
    ]
    for i, l in enumerate(near, start=1):
        how = ("the output of block {l}, i.e. layer {l1}".format(l=layer, l1=layer + 1) if l > layer else
               "the input of block {l0}".format(l0=l))
        mistakes.append(Mistake(r[i][rows, final].mean(0),
                                f"that is the vector of layer {l} ({how}); 'layer {layer}' means the input of "
                                f"block {layer} (blocks.{layer}.hook_resid_pre)"))
    found = first_mistake(a, mistakes, match)
    if found is None:
        if a.shape != (d,):
            found = f"your answer has shape {tuple(a.shape)}; a task vector has shape [d_model={d}]"
        else:
            cos = float(torch.nn.functional.cosine_similarity(a, want, dim=0))
            found = (f"your vector has the right shape but not the right values (cosine {cos:.3f} with theta_{layer}, "
                     f"norm {float(a.norm()):.3g} against {float(want.norm()):.3g})")
    return verdict(name, "wrong", found + ".")
