"""Function vectors (Todd et al. 2024, METHODS.md section 4).

- ``mean_head_outputs``: a_bar[l, h], the mean over ICL prompts of head h of block l's output
  before W_O (``blocks.{l}.attn.hook_z``) at the final position;
- ``head_cie``: each head's causal indirect effect on label-shuffled prompts,
  CIE(l, h) = P(gold | corrupted, z_{l,h} <- a_bar_{l,h}) - P(gold | corrupted);
- ``function_vector``: FV = sum over the top-K heads by mean CIE of a_bar[l, h] @ W_O[l, h]
  (``fv_from_heads``), a ``TaskVector`` of mode "add" (``vectors.evaluate_vector`` adds it at
  the final position of zero-shot prompts, one layer at a time); ``layers=`` restricts the heads
  scanned to those blocks, ``vector_layers=`` the layers the vector is returned for.

Layer l means the input of block l (``blocks.{l}.hook_resid_pre``; l = n_layers: the final residual).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.checks import check_layer, check_layers
from icl_circuits.core.interventions import Intervention, Site, z_name
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import TOKENS_PER_FORWARD, Entry, cache_resid, minibatches, read_activations, run_staggered, unembed_rows
from icl_circuits.core.types import HookedModel
from icl_circuits.core.runner.backend import backend_for
from icl_circuits.methods.vectors import TaskVector

__all__ = ["mean_head_outputs", "HeadCIEResult", "head_cie", "function_vector", "fv_from_heads"]



def mean_head_outputs(model: HookedModel, batch: PromptBatch, *, batch_size: int = 64) -> Float[Tensor, "layer head d_head"]:
    """a_bar[l, h] = mean over prompts of ``blocks.{l}.attn.hook_z`` at the final position (input to W_O)."""
    if len(batch) == 0:
        raise ValueError("batch is empty")
    names = [z_name(l) for l in range(model.cfg.n_layers)]
    acts = read_activations(model, batch, names, batch.positions("final").positions, batch_size=batch_size)
    return torch.stack([acts[n][:, 0].float().mean(0) for n in names])


@dataclass(frozen=True)
class HeadCIEResult(Result):
    """Causal indirect effect of each head: values [layer, head] (mean over prompts),
    per_prompt [layer, head, batch], baseline = mean P(gold | corrupted)."""

    values: Float[Tensor, "layer head"]
    per_prompt: Float[Tensor, "layer head batch"]
    layers: list[int]
    baseline: float
    task: str
    metric: str = "gold_prob"
    meta: dict = field(default_factory=dict)

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` (layer, head) pairs of largest mean CIE."""
        n = self.values.numel()
        if not 1 <= k <= n:
            raise ValueError(f"top_k must be in [1, {n}] (layers x heads), got {k}")
        idx = self.values.flatten().argsort(descending=True)[:k]
        H = self.values.shape[1]
        return [(self.layers[int(i) // H], int(i) % H) for i in idx]

    def to_dataframe(self) -> pd.DataFrame:
        L, H = self.values.shape
        se = self.per_prompt.std(-1) / max(self.per_prompt.shape[-1], 1) ** 0.5
        return pd.DataFrame({
            "layer": np.repeat(self.layers, H), "head": np.tile(np.arange(H), L),
            "cie": self.values.flatten().tolist(), "se": se.flatten().tolist(),
            "task": self.task, "model": self.model,
        })


@torch.no_grad()
def head_cie(
    model: HookedModel, clean_batch: PromptBatch, corrupted_batch: PromptBatch,
    mean_z: Float[Tensor, "layer head d_head"] | None = None, layers: Sequence[int] | None = None, *,
    batch_size: int = 32, tokens_per_forward: int = TOKENS_PER_FORWARD, progress: bool = False,
) -> HeadCIEResult:
    """Todd et al.: CIE(l, h) = P(gold | corrupted, z_{l,h} <- a_bar_{l,h}) - P(gold | corrupted).

    At each corrupted prompt's final position, head h of block l outputs its mean over clean
    prompts (``mean_z``, default ``mean_head_outputs(model, clean_batch)``); gold is the corrupted
    prompt's answer token (label-shuffled prompts keep the query). Batched over heads: every
    (layer, head) patch is a copy of the corrupted sub-batch in one staggered forward
    (``runner.run_staggered``), each copy resuming at its layer from the cached corrupted residual
    with one ``Intervention(Site(l, "z", h), "replace")``.
    """
    if len(corrupted_batch) == 0:
        raise ValueError("corrupted_batch is empty")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    mean_z = mean_head_outputs(model, clean_batch) if mean_z is None else mean_z
    if tuple(mean_z.shape) != (L, H, model.cfg.d_head):
        raise ValueError(f"mean_z must have shape [n_layers={L}, n_heads={H}, d_head={model.cfg.d_head}], got {tuple(mean_z.shape)}")
    layers = check_layers(model, layers, allow_final=False)
    pos = corrupted_batch.positions("final").positions
    cells = [(l, h) for l in layers for h in range(H)]
    out = torch.zeros(len(layers), H, len(corrupted_batch))
    base_all = []
    bar = tqdm(total=len(cells) * len(corrupted_batch), desc="head CIE", disable=not progress)
    for rows, mb in minibatches(corrupted_batch, batch_size):
        cached, base_logits, _ = cache_resid(model, mb.tokens, layers, mb.final_positions)
        gold = mb.answer_tokens
        p0 = base_logits.softmax(-1)[torch.arange(len(mb)), gold]
        base_all.append(p0)
        per = max(1, tokens_per_forward // (len(mb) * mb.tokens.shape[1]))
        finals = []
        for c in range(0, len(cells), per):
            ents = [Entry(l, cached[l], mb.final_positions,
                          [Intervention(Site(l, "z", h), "replace", positions=pos[rows],
                                        value=mean_z[l, h].to(cached[l].dtype))])
                    for l, h in cells[c : c + per]]
            finals.append(run_staggered(model, ents, unembed=False))
            bar.update(len(ents) * len(mb))
        probs = unembed_rows(model, torch.cat(finals)).softmax(-1)
        probs = probs.reshape(len(cells), len(mb), -1)[:, torch.arange(len(mb)), gold]  # [cell, batch]
        out[:, :, rows] = (probs - p0).reshape(len(layers), H, len(mb))
    bar.close()
    return HeadCIEResult(values=out.mean(-1), per_prompt=out, layers=layers,
                         baseline=float(torch.cat(base_all).mean()), task=corrupted_batch.task,
                         **stamp(model, corrupted_batch),
                         meta={"clean_variant": clean_batch.variant, "corrupted_variant": corrupted_batch.variant,
                               "n_prompts": len(corrupted_batch), "n_demos": corrupted_batch.n_demos})


def fv_from_heads(model: HookedModel, mean_z: Float[Tensor, "layer head d_head"],
                  heads: Sequence[tuple[int, int]]) -> Float[Tensor, "d_model"]:
    """sum over (l, h) in ``heads`` of mean_z[l, h] @ W_O[l, h] (no output bias): each head's output as it
    enters the residual. Where a block normalises its attention output (Gemma's post-attention RMSNorm,
    ``Backend.attn_out_gain``), the term is multiplied by the norm's gain at the layer's mean head
    outputs ``mean_z[l]``."""
    fv = torch.zeros(model.cfg.d_model)
    be = backend_for(model)
    gains = {l: be.attn_out_gain(l, mean_z[l]) for l in {l for l, _ in heads}}  # once per layer
    for l, h in heads:
        W_O = be.W_O(l)[h]  # [d_head, d_model]
        term = mean_z[l, h].to(W_O.dtype).to(W_O.device) @ W_O
        fv += (term if gains[l] is None else term * gains[l].to(term)).float().cpu()
    return fv


def function_vector(
    model: HookedModel, clean: PromptBatch, corrupted: PromptBatch, *, top_k: int = 10,
    layers: Sequence[int] | None = None, layer: int | None = None, vector_layers: Sequence[int] | None = None,
    batch_size: int = 32, progress: bool = False,
) -> TaskVector:
    """Todd et al.: FV = sum over the top-K heads by mean CIE of a_bar[l, h] @ W_O[l, h] ([d_model]).

    a_bar from the ICL prompts ``clean`` (``mean_head_outputs``), CIE on ``corrupted``, their
    label-shuffled twins (``build_prompts(..., variant="shuffled_labels")`` with the same seed:
    same demos and queries, labels permuted). ``layers``: the blocks whose heads are scanned and
    ranked (``head_cie(..., layers=)``; default every block, n_layers x n_heads patched runs), so
    ``top_k`` is at most ``len(layers) * n_heads``. Returns a TaskVector of mode "add" holding the FV
    for every layer 0..n_layers (or only ``layer``, or the layers ``vector_layers``), to be added at
    the final position; ``meta`` holds the clean batch's provenance, the heads, their CIE, the CIE
    matrix (rows: ``cie_layers``), ``cie_prompts`` (the corrupted prompts) and ``default_layer`` =
    round(n_layers / 3) (Todd et al. add it at about a third of the depth).
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    layers = check_layers(model, layers, allow_final=False)
    n_heads = len(layers) * H
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_heads:
        raise ValueError(f"top_k must be an integer in [1, {n_heads}] (layers x heads), got {top_k!r}")
    if layer is not None and vector_layers is not None:
        raise ValueError("give layer or vector_layers, not both")
    if layer is not None:
        check_layer(model, layer, arg="layer")
    out_layers = [layer] if layer is not None else check_layers(model, vector_layers, arg="vector_layers")
    for arg, b in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(b, PromptBatch):
            raise TypeError(f"{arg} must be a PromptBatch (build_prompts), got {type(b).__name__}")
        if len(b) == 0:
            raise ValueError(f"{arg} is empty")
    mean_z = mean_head_outputs(model, clean, batch_size=batch_size)
    cie = head_cie(model, clean, corrupted, mean_z, layers, batch_size=batch_size, progress=progress)
    heads = cie.top(top_k)
    fv = fv_from_heads(model, mean_z, heads)
    meta = {"n_demos": clean.n_demos, "n_prompts": len(clean), "seed": clean.seed, "variant": clean.variant,
            "template": [clean.template.example, clean.template.joiner, clean.template.prefix],
            "heads": [list(h) for h in heads], "head_cie": [float(cie.values[layers.index(l), h]) for l, h in heads],
            "cie": cie.values.tolist(), "cie_layers": cie.layers, "cie_prompts": len(corrupted),
            "corrupted_baseline": cie.baseline, "top_k": top_k,
            "default_layer": round(L / 3)}
    return TaskVector(fv[None].repeat(len(out_layers), 1), out_layers, "add", "function", clean.task,
                      meta=meta, **stamp(model, clean))
