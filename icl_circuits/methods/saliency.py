"""Saliency flow (Wang et al. 2023, "Label Words are Anchors", EMNLP): how much information moves
from the text to the label words and from the label words to the query, layer by layer.

For layer l the saliency matrix is ``I_l = | sum_h A_{l,h} * dL/dA_{l,h} |`` (elementwise;
``A_{l,h}`` is the post-softmax pattern ``blocks.{l}.attn.hook_pattern``, ``[query_pos, key_pos]``)
with L the cross-entropy of the final-position logits against the gold answer token. Three flows
summarize it, with ``p_k`` the demo answer (label word) positions and ``q`` the final position:

- ``S_wp`` = mean of ``I(p_k, j)`` over the pairs ``j < p_k`` (text -> label words);
- ``S_pq`` = mean of ``I(q, p_k)`` over k (label words -> query);
- ``S_ww`` = mean of ``I(i, j)`` over every other pair ``j < i`` (the paper's
  ``C_ww = {(i, j): j < i} - C_wp - C_pq``: the diagonal ``j = i`` is *not* counted).

Each mean pools all pairs of its set (as in the paper), over the real tokens of each prompt
(right padding: positions after the final one are excluded); flows are then averaged over prompts.

Multi-token label words (a BPE tokenizer may split ``" garden"``): the label word is its *first*
token, both as the position ``p_k`` (``batch.positions("answers")``) and as the token scored by L
(``label_candidates``, from ``batch.candidate_tokens``), as first-token accuracy scores answers. Its later tokens are ordinary
text: their pairs count in ``S_ww``.

The gradient pass runs through the runner (``runner.final_logits_with_grad`` with one
``Intervention(Site(l, "pattern"), "apply", fn=gate_pattern_hook(...))`` per layer).
Attention isolation lives in ``anchors.py``, anchor re-weighting in ``reweighting.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import Intervention, Site, gate_pattern_hook
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import final_logits_with_grad, frozen, minibatches
from icl_circuits.core.types import HookedModel

LossKind = Literal["label_words", "full_vocab"]
FLOW_NAMES = ["S_wp", "S_pq", "S_ww"]


# ----------------------------------------------------------------------------- shared helpers


def check_demos(batch: PromptBatch, arg: str = "batch") -> None:
    """Refuse an empty batch or one without demonstrations (no answer positions)."""
    if len(batch) == 0:
        raise ValueError(f"{arg} is empty")
    if batch.n_demos < 1:
        raise ValueError(
            f"{arg} has no demonstrations (n_demos=0, variant={batch.variant!r}): label-word analyses "
            "need the demos' answer positions; build the prompts with n_demos >= 1"
        )


def label_candidates(
    batch: PromptBatch, loss: LossKind = "label_words", label_ids: Tensor | None = None
) -> Int[Tensor, "batch n_labels"] | None:
    """The tokens the loss's softmax runs over, per prompt, or None for the whole vocabulary.

    ``loss="label_words"``: ``label_ids`` if given ([n] shared or [batch, n]); else the prompt's
    label words (``batch.label_token_ids``, categorization tasks); else, for other tasks, the
    distinct first tokens of every answer present in the batch (queries' gold tokens and demo
    answers), shared by all prompts: ``batch.candidate_tokens(fallback="answers")``. A label word of several tokens (BPE) is represented by its
    *first* token, both here and as its position (``batch.answer_positions``, the first token of
    each demo answer): the loss scores ``p(first label token | prompt)``, as first-token accuracy
    does. The candidates of a prompt must be distinct (two label words may not share their first
    token) and contain its gold token.
    """
    if loss == "full_vocab":
        return None
    if loss != "label_words":
        raise ValueError(f"loss must be 'label_words' or 'full_vocab', got {loss!r}")
    if label_ids is not None:
        cand = torch.as_tensor(label_ids, dtype=torch.long)
        cand = cand[None].expand(len(batch), -1) if cand.ndim == 1 else cand
    else:
        cand = batch.candidate_tokens(fallback="answers")
    if cand.ndim != 2 or cand.shape[0] != len(batch) or cand.shape[1] < 2:
        raise ValueError(
            f"loss='label_words' needs at least 2 candidate label tokens per prompt "
            f"(shape [batch={len(batch)}, n>=2]), got shape {tuple(cand.shape)}"
        )
    srt = cand.sort(-1).values
    if bool((srt[:, 1:] == srt[:, :-1]).any()):
        b = int((srt[:, 1:] == srt[:, :-1]).any(-1).nonzero()[0])
        words = batch.label_words[b] if label_ids is None and batch.label_words[b] is not None else cand[b].tolist()
        raise ValueError(
            f"loss='label_words': two label words of prompt {b} share their first token ({words}), which is the "
            "token scored; use loss='full_vocab' or label words that start with different tokens"
        )
    missing = ~(cand == batch.answer_tokens[:, None]).any(-1)
    if missing.any():
        raise ValueError(f"loss='label_words': the gold token of prompt {int(missing.nonzero()[0])} is not a label word")
    return cand


def answer_loss(
    logits: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, "batch"],
    candidates: Int[Tensor, "batch n_labels"] | None = None,
) -> Float[Tensor, "batch"]:
    """Per-prompt cross-entropy of the gold token, softmax over ``candidates`` (or the vocabulary)."""
    if candidates is None:
        return torch.nn.functional.cross_entropy(logits.float(), answer_tokens.to(logits.device), reduction="none")
    cand = candidates.to(logits.device)
    target = (cand == answer_tokens.to(logits.device)[:, None]).float().argmax(-1)
    return torch.nn.functional.cross_entropy(logits.gather(1, cand).float(), target, reduction="none")


def has_bos(batch: PromptBatch) -> Bool[Tensor, "batch"]:
    """Whether each prompt starts with the tokenizer's BOS token."""
    bos = getattr(batch.tokenizer, "bos_token_id", None)
    if bos is None:
        return torch.zeros(len(batch), dtype=torch.bool)
    return batch.tokens[:, 0] == bos


def flow_masks(batch: PromptBatch, *, exclude_bos: bool = False) -> Bool[Tensor, "flow batch pos pos"]:
    """The (query, key) pairs of S_wp, S_pq and S_ww for every prompt (real tokens only).

    ``p_k`` are ``batch.positions("answers")`` (first token of each demo answer), ``q`` is
    ``batch.positions("query")``. ``exclude_bos=True`` drops the pairs whose key is a leading BOS
    token from S_wp and S_ww.
    """
    check_demos(batch)
    b, p = batch.tokens.shape
    ans = batch.positions("answers").positions  # [batch, n_demos]
    query = batch.positions("query").positions  # [batch, 1]
    ar = torch.arange(p)
    real = ar[None] <= query  # [batch, pos]
    lower = (ar[:, None] > ar[None, :])[None] & real[:, :, None] & real[:, None, :]
    if exclude_bos:
        lower &= ~((ar == 0)[None, None, :] & has_bos(batch)[:, None, None])
    rows = torch.arange(b)[:, None]
    is_ans = torch.zeros(b, p, dtype=torch.bool)
    is_ans[rows, ans] = True
    wp = lower & is_ans[:, :, None]
    pq = torch.zeros(b, p, p, dtype=torch.bool)
    pq[rows, query, ans] = True
    return torch.stack([wp, pq, lower & ~wp & ~pq])


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True)
class SaliencyResult(Result):
    """Saliency flows per layer (Wang et al. 2023).

    flows: [flow, layer] mean over prompts of S_wp, S_pq, S_ww (``flow_names``), divided per layer
        by their sum when ``proportions``; low/high: the 95% normal interval of that mean (same
        scaling); per_prompt: [flow, layer, batch] raw (unnormalized) flows.
    head_flows: [flow, layer, head] the same flows of each head's own saliency
        ``|A_{l,h} * dL/dA_{l,h}|`` (``per_head=True``), else None.
    matrices: [example, layer, pos, pos] the saliency matrices I_l of the first prompts (zero beyond
        each prompt's length); example_tokens / example_answer_positions / example_final_positions
        name their rows and columns.
    """

    flows: Float[Tensor, "flow layer"]
    low: Float[Tensor, "flow layer"]
    high: Float[Tensor, "flow layer"]
    per_prompt: Float[Tensor, "flow layer batch"]
    head_flows: Float[Tensor, "flow layer head"] | None
    matrices: Float[Tensor, "example layer pos pos"]
    example_tokens: list[list[str]]
    example_answer_positions: list[list[int]]
    example_final_positions: list[int]
    layers: list[int]
    loss: str
    proportions: bool
    exclude_bos: bool
    task: str
    n_demos: int
    flow_names: list[str] = field(default_factory=lambda: list(FLOW_NAMES))
    meta: dict = field(default_factory=dict)

    def flow(self, name: str) -> Float[Tensor, "layer"]:
        """One flow per layer, by name (``"S_wp"``, ``"S_pq"`` or ``"S_ww"``)."""
        if name not in self.flow_names:
            raise ValueError(f"flow must be one of {', '.join(self.flow_names)}, got {name!r}")
        return self.flows[self.flow_names.index(name)]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, flow): value, low, high, raw (unnormalized mean), task, model, loss."""
        raw = self.per_prompt.mean(-1)
        return pd.DataFrame([
            {"layer": l, "flow": f, "value": float(self.flows[i, j]), "low": float(self.low[i, j]),
             "high": float(self.high[i, j]), "raw": float(raw[i, j]), "proportion": self.proportions,
             "task": self.task, "model": self.model, "loss": self.loss, "n_demos": self.n_demos}
            for j, l in enumerate(self.layers) for i, f in enumerate(self.flow_names)
        ])


# ----------------------------------------------------------------------------- the analysis
def saliency_terms(
    model: HookedModel, batch: PromptBatch, loss: LossKind = "label_words", *,
    label_ids: Int[Tensor, "batch n_labels"] | Int[Tensor, "n_labels"] | None = None,
) -> Float[Tensor, "layer batch head pos pos"]:
    """The signed terms ``A_{l,h} * dL/dA_{l,h}`` of every layer and head for one batch.

    One forward pass (``runner.final_logits_with_grad``) multiplies every layer's pattern by a
    gate of ones (``Intervention(Site(l, "pattern"), "apply", fn=gate_pattern_hook(store))``),
    one backward pass of the loss summed over prompts (each prompt's gradient is its own) returns
    ``A * dL/dA`` for all layers at once. The model's parameters are frozen during the call and
    never receive gradients; hooks are removed also on errors. Saliency is
    ``terms.sum(head).abs()`` (Wang et al.), or ``terms.abs()`` per head.
    """
    check_demos(batch)
    cand = label_candidates(batch, loss, label_ids)
    stores: list[list[Tensor]] = [[] for _ in range(model.cfg.n_layers)]
    gates = [Intervention(Site(l, "pattern"), "apply", fn=gate_pattern_hook(stores[l])) for l in range(model.cfg.n_layers)]
    with frozen(model), torch.enable_grad():
        logits = final_logits_with_grad(model, batch, gates)
        total = answer_loss(logits, batch.answer_tokens, cand).sum()
        gates = [s[-1] for s in stores]
        grads = torch.autograd.grad(total, gates, allow_unused=True)
    return torch.stack([torch.zeros_like(x) if g is None else g.detach() for x, g in zip(gates, grads)]).float()


def _flows(sal: Tensor, masks: Tensor) -> Tensor:
    """Mean of ``sal[..., b, (head), q, k]`` over each mask's pairs -> [flow, layer, (head), batch]."""
    m = masks.to(sal.device, sal.dtype)
    count = m.sum((-1, -2)).clamp_min(1)  # [flow, batch]
    if sal.ndim == 4:  # [layer, batch, q, k]
        return torch.einsum("lbqk,fbqk->flb", sal, m) / count[:, None]
    return torch.einsum("lbhqk,fbqk->flhb", sal, m) / count[:, None, None]


def saliency_flow(
    model: HookedModel,
    batch: PromptBatch,
    loss: LossKind = "label_words",
    *,
    per_head: bool = False,
    proportions: bool = False,
    exclude_bos: bool = False,
    label_ids: Int[Tensor, "batch n_labels"] | Int[Tensor, "n_labels"] | None = None,
    keep_examples: int = 4,
    batch_size: int = 16,
    progress: bool = True,
) -> SaliencyResult:
    """S_wp, S_pq and S_ww per layer (Wang et al. 2023), averaged over the prompts of ``batch``.

    ``I_l = |sum_h A_{l,h} * dL/dA_{l,h}|`` from one forward and one backward pass per minibatch
    (see ``saliency_terms``); L is the cross-entropy of the final-position logits against the
    gold first answer token, with the softmax over the label words (``loss="label_words"``, the
    paper's code; see ``label_candidates`` for non-categorization tasks) or over the whole
    vocabulary (``"full_vocab"``). Flows pool the pairs of each set over real tokens (the
    diagonal excluded, as in the paper; BOS keys counted unless ``exclude_bos``).
    ``proportions=True`` divides the three prompt-averaged flows of a layer by their sum.
    ``per_head=True`` also returns each head's flows. The saliency matrices of the first
    ``keep_examples`` prompts are kept for heatmaps. Memory: one minibatch holds
    ``n_layers * batch_size * n_heads * pos**2`` floats of saliency; lower ``batch_size`` for
    large models.
    """
    check_demos(batch)
    cand_all = label_candidates(batch, loss, label_ids)  # validate once, before any pass
    per, heads, kept = [], [], []
    n_keep = min(keep_examples, len(batch))
    for rows, mb in tqdm(list(minibatches(batch, batch_size)), desc="saliency", disable=not progress):
        lab = None if cand_all is None else cand_all[rows]
        terms = saliency_terms(model, mb, loss, label_ids=lab)
        summed = terms.sum(2).abs()  # [layer, batch, q, k]
        masks = flow_masks(mb, exclude_bos=exclude_bos)
        if per_head:
            heads.append(_flows(terms.abs(), masks).cpu())
        per.append(_flows(summed, masks).cpu())
        if rows.start < n_keep:
            kept.extend(summed[:, i].cpu() for i in range(min(n_keep - rows.start, len(mb))))
    per_prompt = torch.cat(per, -1)  # [flow, layer, batch]
    mean = per_prompt.mean(-1)
    sd = per_prompt.std(-1) if len(batch) > 1 else torch.zeros_like(mean)
    half = 1.96 * sd / len(batch) ** 0.5
    scale = mean.sum(0, keepdim=True).clamp_min(1e-30) if proportions else torch.ones_like(mean[:1])
    head_flows = None
    if per_head:
        hf = torch.cat(heads, -1).mean(-1)  # [flow, layer, head]
        head_flows = hf / hf.sum(0, keepdim=True).clamp_min(1e-30) if proportions else hf
    width = max((int(batch.final_positions[i]) + 1 for i in range(n_keep)), default=0)
    mats = torch.zeros(n_keep, model.cfg.n_layers, width, width)
    for i, m in enumerate(kept):
        n = int(batch.final_positions[i]) + 1
        mats[i, :, :n, :n] = m[:, :n, :n]
    dec = (lambda t: batch.tokenizer.decode([t])) if batch.tokenizer is not None else str
    return SaliencyResult(
        flows=mean / scale, low=(mean - half) / scale, high=(mean + half) / scale, per_prompt=per_prompt,
        head_flows=head_flows, matrices=mats,
        example_tokens=[[dec(int(t)) for t in batch.tokens[i, : int(batch.final_positions[i]) + 1]] for i in range(n_keep)],
        example_answer_positions=[batch.positions("answers").positions[i].tolist() for i in range(n_keep)],
        example_final_positions=[int(batch.final_positions[i]) for i in range(n_keep)],
        layers=list(range(model.cfg.n_layers)), loss=loss, proportions=proportions, exclude_bos=exclude_bos,
        task=batch.task, n_demos=batch.n_demos,
        **stamp(model, batch), meta={"batch_size": batch_size},
    )
