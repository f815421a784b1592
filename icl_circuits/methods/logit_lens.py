"""The logit lens and task alignment (Yang, Cho, Ding & Inoue 2025, METHODS.md section 8): does a
residual state, or a task vector, already point at the answer?

- ``logit_lens``: at each layer l (the input of block l; ``n_layers`` = the final residual),
  decode the final-position residual with the model's own head, ``W_U LN_final(h_l)`` (soft cap
  included, ``runner.unembed_resid``), and score whether the argmax over the candidate tokens is
  the gold first answer token. Candidates: ``batch.candidate_tokens("gold")``, the prompt's label
  words for categorization tasks, else the distinct gold first tokens of the batch, shared by
  every prompt (the task's answer vocabulary as the batch samples it).
- ``vector_logit_lens``: which tokens each layer's vector promotes (top-k of ``W_U LN_final(v_l)``).
- ``task_alignment``: how much of a vector lies in the span of the label unembeddings,
  ``||Q Q^T v|| / ||v||``; ``alignment_chance``: the same for a random isotropic vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_circuits.core.checks import check_layer, check_vector
from icl_circuits.core.metrics import correct, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import read_resid, unembed_resid
from icl_circuits.core.types import HookedModel
from icl_circuits.core.runner.backend import backend_for
from icl_circuits.methods.vectors import TaskVector

__all__ = ["logit_lens", "LogitLensResult", "vector_logit_lens", "VectorLensResult", "task_alignment",
           "alignment_chance"]


@dataclass(frozen=True)
class LogitLensResult(Result):
    """Logit-lens accuracy per layer: argmax over the candidates of ``W_U LN_final(h_l)`` at the final
    position is the gold first answer token.

    accuracy, low, high: [layer] (Wilson 95%); per_prompt: [layer, batch] 0/1; layers (input of
    block l; n_layers = final residual); injected: the TaskVector method applied before reading
    (None: clean run); n_candidates: candidates per prompt.
    """

    accuracy: Float[Tensor, "layer"]
    low: Float[Tensor, "layer"]
    high: Float[Tensor, "layer"]
    per_prompt: Float[Tensor, "layer batch"]
    layers: list[int]
    task: str
    n_candidates: int
    injected: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": self.layers, "accuracy": self.accuracy.tolist(), "low": self.low.tolist(),
                             "high": self.high.tolist(), "n": self.per_prompt.shape[1], "task": self.task,
                             "model": self.model, "injected": self.injected})


def logit_lens(
    model: HookedModel,
    batch: PromptBatch,
    layers: Sequence[int] | None = None,
    vectors: TaskVector | None = None,
    *,
    candidates: Int[Tensor, "batch n_cand"] | None = None,
    batch_size: int = 64,
) -> LogitLensResult:
    """Logit-lens accuracy at each layer's final position (``layers`` default: 0..n_layers).

    With ``vectors``, layer l is read after the vector's own injection there (``h_l + v_l`` for
    mode "add", ``v_l`` for "replace"), so the layers are restricted to the vector's layers: does
    the injected state already decode the answer? Candidates default to
    ``batch.candidate_tokens("gold")`` (module docstring).
    """
    if len(batch) == 0:
        raise ValueError("batch is empty")
    if vectors is not None:
        vectors.check_model(model)
        layers = list(vectors.layers) if layers is None else list(layers)
        missing = [l for l in layers if l not in vectors.layers]
        if missing:
            raise ValueError(f"layers {missing} are not among the task vector's layers {vectors.layers}")
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else [check_layer(model, l, arg="layers") for l in layers]
    cand = batch.candidate_tokens("gold") if candidates is None else torch.as_tensor(candidates)
    if cand.ndim != 2 or cand.shape[0] != len(batch):
        raise ValueError(f"candidates must be [batch={len(batch)}, n_cand], got {tuple(cand.shape)}")
    h = read_resid(model, batch, batch.positions("final").positions, layers, batch_size=batch_size)[:, :, 0]  # [layer, batch, d]
    if vectors is not None:
        v = torch.stack([vectors.at(l) for l in layers])[:, None].to(h.dtype)
        h = h + v if vectors.mode == "add" else v.expand_as(h)
    with torch.no_grad():  # one layer at a time: [batch, d_vocab] logits, not [layer, batch, d_vocab] (Gemma: 262k)
        ok = torch.stack([correct(unembed_resid(model, hl.to(model.cfg.device)).float().cpu(), batch.answer_tokens, cand)
                          for hl in h]).float()
    rates = [wilson(int(r.sum()), r.numel()) for r in ok]
    return LogitLensResult(
        accuracy=ok.mean(1), low=torch.tensor([r.low for r in rates]), high=torch.tensor([r.high for r in rates]),
        per_prompt=ok, layers=layers, task=batch.task,
        n_candidates=int(cand.shape[1]), injected=None if vectors is None else vectors.method,
        **stamp(model, batch),
    )


@dataclass(frozen=True)
class VectorLensResult(Result):
    """The tokens each layer's vector promotes: ``tokens`` / ``logits`` [layer, k] are the top-k
    of ``W_U LN_final(v_l)`` (descending), ``token_strs`` their decoded strings."""

    tokens: Int[Tensor, "layer k"]
    logits: Float[Tensor, "layer k"]
    token_strs: list
    layers: list
    task: str
    method: str
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, rank): columns layer, rank, token, token_str, logit, task, model, method."""
        rows = [{"layer": l, "rank": r, "token": int(self.tokens[i, r]), "token_str": self.token_strs[i][r],
                 "logit": float(self.logits[i, r])}
                for i, l in enumerate(self.layers) for r in range(self.tokens.shape[1])]
        return pd.DataFrame(rows).assign(task=self.task, model=self.model, method=self.method)


def vector_logit_lens(model: HookedModel, tv: TaskVector, k: int = 10) -> VectorLensResult:
    """Which tokens each layer's vector promotes: the top-``k`` of ``W_U LN_final(v_l)``."""
    tv.check_model(model)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    with torch.no_grad():
        logits = unembed_resid(model, tv.vectors.to(model.cfg.device, torch.float32)).float().cpu()
    top = logits.topk(min(k, logits.shape[-1]), dim=-1)
    tok = getattr(model, "tokenizer", None)
    strs = [[tok.decode([t]) if tok is not None else str(t) for t in row] for row in top.indices.tolist()]
    st = stamp(model)
    return VectorLensResult(
        tokens=top.indices, logits=top.values, token_strs=strs, layers=list(tv.layers),
        task=tv.task, method=tv.method, meta={"k": k}, model=st["model"], model_info=st["model_info"],
        provenance={**tv.provenance, **st["provenance"]},  # what the vector was computed on
    )


def _label_basis(model: HookedModel, label_token_ids: Tensor | Sequence[int]) -> Tensor:
    ids = torch.unique(torch.as_tensor(label_token_ids, dtype=torch.long).flatten())
    if ids.numel() == 0:
        raise ValueError("label_token_ids is empty")
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise ValueError(f"label_token_ids must be token ids in [0, {model.cfg.d_vocab - 1}]")
    W_U = backend_for(model).W_U()
    B = W_U[:, ids.to(W_U.device)].double().cpu().numpy()  # [d_model, k]
    return torch.from_numpy(scipy.linalg.orth(B))  # orthonormal basis of the span


def alignment_chance(model: HookedModel, label_token_ids: Tensor | Sequence[int]) -> float:
    """Alignment of a random isotropic vector: about sqrt(rank / d) (the span's share of dimensions)."""
    return float(np.sqrt(_label_basis(model, label_token_ids).shape[1] / model.cfg.d_model))


def task_alignment(
    model: HookedModel, vector: TaskVector | Float[Tensor, "... d_model"], label_token_ids: Tensor | Sequence[int]
) -> Float[Tensor, "..."]:
    """Cosine between a vector and its projection onto span{W_U[:, t] : t in label_token_ids}.

    That cosine equals ``||Q Q^T v|| / ||v||`` (Q an orthonormal basis of the span): 1 when the
    vector lies in the label subspace, 0 when orthogonal to it. A TaskVector gives one value per
    layer. The unembedding columns are used as they are (no centering). ``label_token_ids`` may
    be ``[n]`` or ``[batch, n]`` (the union is taken).
    """
    v = vector.vectors if isinstance(vector, TaskVector) else vector
    check_vector(model, v, arg="vector")
    Q = _label_basis(model, label_token_ids)
    v = v.detach().double().cpu()
    norm = v.norm(dim=-1)
    if (norm == 0).any():
        raise ValueError("vector: the zero vector has no direction to align")
    return ((v @ Q).norm(dim=-1) / norm).float()
