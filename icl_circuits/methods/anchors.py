"""Label words as anchors (Wang et al. 2023): attention isolation and anchor re-weighting.

A label word of several tokens (BPE) is its *first* token, as in ``saliency``: that position is
isolated or re-weighted, and its gold token is the first one.

- ``isolate_attention``: block, in a range of layers, either the label words (demo answer
  positions) from attending to the text before them (``"label_from_text"``) or the final position
  from attending to the label words (``"query_from_label"``), by setting those pre-softmax scores
  to -inf (``blocks.{l}.attn.hook_attn_scores``). Compared with blocking as many random non-label
  positions (seeded). Published: isolating label words in the first layers hurts far more than
  in the last ones.
- ``train_anchor_reweighting``: a learnable ``beta[l, h, i]`` per layer, head and demo scales the
  final position's attention to demo i's label word, ``A(q, p_i) <- exp(beta) * A(q, p_i)``
  (``blocks.{l}.attn.hook_pattern``; like the paper, the row is *not* renormalized), trained with
  Adam on the training prompts while the model stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import attn_scores_name, block_attention_hook, check_layer, pattern_name, scale_pattern_hook
from icl_circuits.core.runner import run_final_logits
from icl_circuits.core.metrics import correct, wilson
from icl_circuits.core.models import model_info
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result
from icl_circuits.core.runner import frozen
from icl_circuits.methods.saliency import LossKind, answer_loss, check_demos, final_logits_with_grad, has_bos, label_candidates

IsolationMode = Literal["label_from_text", "query_from_label"]
TARGETS = ["label", "random"]


# ----------------------------------------------------------------------------- isolation
def _label_from_text(batch: PromptBatch, rows_pos: Tensor, keep_bos: bool) -> Bool[Tensor, "batch pos pos"]:
    """Block each position in ``rows_pos`` [batch, n] from every earlier key (itself kept; BOS kept
    when ``keep_bos`` and the prompt starts with one)."""
    b, p = batch.tokens.shape
    ar = torch.arange(p)
    earlier = ar[None, None, :] < rows_pos[:, :, None]  # [batch, n, key]
    if keep_bos:
        earlier &= ~((ar == 0)[None, None, :] & has_bos(batch)[:, None, None])
    blocked = torch.zeros(b, p, p, dtype=torch.bool)
    rows = torch.arange(b)[:, None].expand_as(rows_pos)
    blocked[rows, rows_pos] = earlier
    return blocked


def _query_from(batch: PromptBatch, keys: Tensor) -> Bool[Tensor, "batch pos pos"]:
    """Block the final position from attending to ``keys`` [batch, n]."""
    b, p = batch.tokens.shape
    blocked = torch.zeros(b, p, p, dtype=torch.bool)
    blocked[torch.arange(b)[:, None], batch.final_positions[:, None], keys] = True
    return blocked


def _random_positions(batch: PromptBatch, n: int, seed: int) -> Tensor:
    """``n`` random positions per prompt, none of them a token of a label word (every token of a
    multi-token one), the final position or a leading BOS (position 0 is never drawn: it has no
    earlier text to be isolated from)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(len(batch)):
        fin = int(batch.final_positions[b])
        label = {p for s, e in batch.answer_spans[b].tolist() for p in range(s, e)}
        pool = sorted(set(range(1, fin)) - label)
        if len(pool) < n:
            raise ValueError(f"prompt {b} has only {len(pool)} non-label positions, fewer than the {n} to isolate")
        pick = torch.randperm(len(pool), generator=g)[:n]
        out.append(torch.tensor(pool)[pick].sort().values)
    return torch.stack(out)


def isolation_mask(
    batch: PromptBatch, mode: IsolationMode = "label_from_text", target: str = "label", *,
    keep_bos: bool = True, seed: int = 0,
) -> Bool[Tensor, "batch pos pos"]:
    """Which (query, key) attention scores ``isolate_attention`` sets to -inf for each prompt.

    ``target="label"`` isolates the label words (demo answer positions); ``"random"`` as many
    random non-label positions (seeded; never the final position or BOS).
    """
    check_demos(batch)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    pos = batch.answer_positions if target == "label" else _random_positions(batch, batch.n_demos, seed)
    if mode == "label_from_text":
        return _label_from_text(batch, pos, keep_bos)
    if mode == "query_from_label":
        return _query_from(batch, pos)
    raise ValueError(f"mode must be 'label_from_text' or 'query_from_label', got {mode!r}")


@dataclass(frozen=True)
class IsolationResult(Result):
    """Accuracy and loyalty under attention isolation, per layer range and target.

    accuracy / loyalty: [range, target] with Wilson 95% low/high; ``loyalty`` (label loyalty) is the
    fraction of prompts whose prediction equals the un-isolated run's; word_loyalty: mean Jaccard
    overlap of the top-``top_k`` tokens with the un-isolated run's. correct / loyal: [range,
    target, batch] per prompt (0/1). targets: "label" (the label words) and "random" (as many
    random non-label positions); baseline_accuracy: the un-isolated accuracy.
    """

    accuracy: Float[Tensor, "range target"]
    accuracy_low: Float[Tensor, "range target"]
    accuracy_high: Float[Tensor, "range target"]
    loyalty: Float[Tensor, "range target"]
    loyalty_low: Float[Tensor, "range target"]
    loyalty_high: Float[Tensor, "range target"]
    word_loyalty: Float[Tensor, "range target"]
    correct: Float[Tensor, "range target batch"]
    loyal: Float[Tensor, "range target batch"]
    baseline_accuracy: float
    layer_ranges: list[list[int]]
    targets: list[str]
    mode: str
    task: str
    model_name: str
    n_demos: int
    keep_bos: bool
    restrict_to_labels: bool
    top_k: int
    seed: int
    meta: dict = field(default_factory=dict)

    @property
    def range_names(self) -> list[str]:
        """``"0-1"`` for layers [0, 1], ``"none"`` for an empty range."""
        return [_range_name(r) for r in self.layer_ranges]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer range, target)."""
        return pd.DataFrame([
            {"layers": name, "target": t, "accuracy": float(self.accuracy[i, j]),
             "accuracy_low": float(self.accuracy_low[i, j]), "accuracy_high": float(self.accuracy_high[i, j]),
             "loyalty": float(self.loyalty[i, j]), "loyalty_low": float(self.loyalty_low[i, j]),
             "loyalty_high": float(self.loyalty_high[i, j]), "word_loyalty": float(self.word_loyalty[i, j]),
             "baseline_accuracy": self.baseline_accuracy, "mode": self.mode, "task": self.task,
             "model": self.model_name, "n": int(self.correct.shape[-1])}
            for i, name in enumerate(self.range_names) for j, t in enumerate(self.targets)
        ])


def _range_name(r: Sequence[int]) -> str:
    r = list(r)
    if not r:
        return "none"
    if r == list(range(r[0], r[-1] + 1)):
        return f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0])
    return ",".join(map(str, r))


def _ranges(model: Any, layers: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    items = list(layers)
    if not items or not isinstance(items[0], (list, tuple, range)):
        items = [items]
    out = []
    for r in items:
        if not isinstance(r, (list, tuple, range)):
            raise ValueError(f"layers must be a list of layers or a list of layer lists, got {layers!r}")
        out.append([check_layer(model, l, allow_final=False, arg="layers") for l in r])
    return out


def _top_k_jaccard(a: Tensor, b: Tensor, k: int) -> Tensor:
    ta, tb = a.topk(k, -1).indices, b.topk(k, -1).indices
    inter = (ta[:, :, None] == tb[:, None, :]).any(-1).sum(-1).float()
    return inter / (2 * k - inter)


def isolate_attention(
    model: Any,
    batch: PromptBatch,
    layers: Sequence[int] | Sequence[Sequence[int]],
    mode: IsolationMode = "label_from_text",
    *,
    control: bool = True,
    keep_bos: bool = True,
    restrict_to_labels: bool = False,
    top_k: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> IsolationResult:
    """Attention isolation (Wang et al. 2023) in one or several layer ranges.

    ``layers`` is one range (``[0, 1]``) or a list of ranges (``[[0, 1], [2, 3]]``). In every layer
    of a range, the pre-softmax scores of the blocked pairs are set to -inf
    (``blocks.{l}.attn.hook_attn_scores``), per prompt:
    ``"label_from_text"`` blocks each label word (demo answer position) from every earlier key,
    keeping itself and, with ``keep_bos`` (default), a leading BOS token (so the row keeps the
    attention sink most models rely on and only the *text* is cut off; the paper's GPT-2 prompts
    had no BOS); ``"query_from_label"`` blocks the final position from the label words.
    ``control=True`` repeats it with as many random non-label positions (``seed``).
    Reports accuracy (argmax over the vocabulary, or the label words with
    ``restrict_to_labels``), label loyalty (same prediction as the un-isolated run) and word
    loyalty (Jaccard overlap of the top-``top_k`` vocabulary tokens).
    """
    check_demos(batch)
    ranges = _ranges(model, layers)
    targets = ["label", "random"] if control else ["label"]
    masks = {t: isolation_mask(batch, mode, t, keep_bos=keep_bos, seed=seed) for t in targets}
    cand = None
    if restrict_to_labels:
        if batch.label_token_ids is None:
            raise ValueError(f"restrict_to_labels=True but task {batch.task!r} has no label words")
        cand = batch.label_token_ids

    def pred(logits: Tensor) -> Tensor:
        if cand is None:
            return logits.argmax(-1)
        return cand.gather(1, logits.gather(1, cand).argmax(-1, keepdim=True))[:, 0]

    base = run_final_logits(model, batch, batch_size=batch_size)
    base_pred = pred(base)
    ok, loyal, word = [], [], []
    todo = [(r, t) for r in ranges for t in targets]
    for r, t in tqdm(todo, desc="isolation", disable=not progress):
        m = masks[t]
        make = lambda rows, mb, r=r, m=m: [(attn_scores_name(l), block_attention_hook(m[rows])) for l in r]  # noqa: E731
        logits = run_final_logits(model, batch, make, batch_size=batch_size)
        ok.append(correct(logits, batch.answer_tokens, cand).float())
        loyal.append((pred(logits) == base_pred).float())
        word.append(_top_k_jaccard(logits, base, top_k).mean())
    shape = (len(ranges), len(targets))
    ok_t, loyal_t = torch.stack(ok).reshape(*shape, -1), torch.stack(loyal).reshape(*shape, -1)
    rate = lambda x: [wilson(int(v.sum()), v.numel()) for v in x.reshape(-1, x.shape[-1])]  # noqa: E731
    acc_r, loy_r = rate(ok_t), rate(loyal_t)
    col = lambda rs, a: torch.tensor([getattr(x, a) for x in rs]).reshape(shape)  # noqa: E731
    return IsolationResult(
        model_info=model_info(model),
        accuracy=col(acc_r, "value"), accuracy_low=col(acc_r, "low"), accuracy_high=col(acc_r, "high"),
        loyalty=col(loy_r, "value"), loyalty_low=col(loy_r, "low"), loyalty_high=col(loy_r, "high"),
        word_loyalty=torch.stack(word).reshape(shape), correct=ok_t, loyal=loyal_t,
        baseline_accuracy=float(correct(base, batch.answer_tokens, cand).float().mean()),
        layer_ranges=ranges, targets=targets, mode=mode, task=batch.task, model_name=str(model.cfg.model_name),
        n_demos=batch.n_demos, keep_bos=keep_bos, restrict_to_labels=restrict_to_labels, top_k=top_k, seed=seed,
        meta={"n_prompts": len(batch), "variant": batch.variant, "prompt_seed": batch.seed},
    )


# ----------------------------------------------------------------------------- re-weighting
def reweighting_hooks(batch: PromptBatch, beta: Float[Tensor, "layer head demo"]) -> list:
    """Hooks scaling ``A_{l,h}(q, p_i)`` by ``exp(beta[l, h, i])`` in every layer (no renormalization)."""
    return [
        (pattern_name(l), scale_pattern_hook(batch.final_positions, batch.answer_positions, beta[l].exp()))
        for l in range(beta.shape[0])
    ]


def reweighted_logits(
    model: Any, batch: PromptBatch, beta: Float[Tensor, "layer head demo"], *, batch_size: int = 64
) -> Float[Tensor, "batch d_vocab"]:
    """Final-position logits with the anchor re-weighting ``beta`` applied (no gradients)."""
    _check_beta(model, batch, beta)
    beta = beta.detach()
    return run_final_logits(model, batch, lambda rows, mb: reweighting_hooks(mb, beta), batch_size=batch_size)


def _check_beta(model: Any, batch: PromptBatch, beta: Tensor) -> None:
    want = (model.cfg.n_layers, model.cfg.n_heads, batch.n_demos)
    if tuple(beta.shape) != want:
        raise ValueError(f"beta must have shape [n_layers, n_heads, n_demos] = {list(want)}, got {list(beta.shape)}")


@dataclass(frozen=True)
class ReweightResult(Result):
    """Anchor re-weighting (Wang et al. 2023): learned beta and accuracy before / after.

    beta: [layer, head, demo]; epoch_losses: [epoch] mean training loss during each epoch;
    correct_before / correct_after: [batch] per held-out prompt (0/1); accuracies with Wilson 95%
    intervals; train/eval losses (mean cross-entropy) before and after training.
    """

    beta: Float[Tensor, "layer head demo"]
    epoch_losses: Float[Tensor, "epoch"]
    correct_before: Float[Tensor, "batch"]
    correct_after: Float[Tensor, "batch"]
    accuracy_before: float
    accuracy_before_low: float
    accuracy_before_high: float
    accuracy_after: float
    accuracy_after_low: float
    accuracy_after_high: float
    train_loss_before: float
    train_loss_after: float
    eval_loss_before: float
    eval_loss_after: float
    task: str
    model_name: str
    n_demos: int
    loss: str
    restrict_to_labels: bool
    lr: float
    epochs: int
    seed: int
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        """Two rows (before / after re-weighting) on the held-out prompts."""
        return pd.DataFrame([
            {"stage": s, "accuracy": getattr(self, f"accuracy_{s}"), "low": getattr(self, f"accuracy_{s}_low"),
             "high": getattr(self, f"accuracy_{s}_high"), "eval_loss": getattr(self, f"eval_loss_{s}"),
             "train_loss": getattr(self, f"train_loss_{s}"), "task": self.task, "model": self.model_name,
             "n_demos": self.n_demos, "n": int(self.correct_before.numel())}
            for s in ("before", "after")
        ])


def train_anchor_reweighting(
    model: Any,
    train_batch: PromptBatch,
    eval_batch: PromptBatch,
    *,
    lr: float = 0.01,
    epochs: int = 10,
    batch_size: int = 16,
    loss: LossKind = "label_words",
    restrict_to_labels: bool | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ReweightResult:
    """Learn ``beta[l, h, i]`` (init 0, the identity) scaling ``A_{l,h}(q, p_i)`` by ``exp(beta)``.

    Adam on the mean cross-entropy of the training prompts (softmax over the label words or the
    vocabulary, as in ``saliency_flow``), minibatches shuffled each epoch with ``seed``; the model's
    parameters stay frozen. Both batches must have the same number of demos (beta has one column
    per demo). Accuracy on ``eval_batch`` is the argmax over the label words when
    ``restrict_to_labels`` (default: when the task has label words), else over the vocabulary.
    """
    check_demos(train_batch, "train_batch")
    check_demos(eval_batch, "eval_batch")
    if train_batch.n_demos != eval_batch.n_demos:
        raise ValueError(
            f"train_batch has {train_batch.n_demos} demos but eval_batch has {eval_batch.n_demos}; "
            "beta has one weight per demo, so both need the same n_demos"
        )
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    restrict = eval_batch.label_token_ids is not None if restrict_to_labels is None else restrict_to_labels
    if restrict and eval_batch.label_token_ids is None:
        raise ValueError(f"restrict_to_labels=True but task {eval_batch.task!r} has no label words")
    eval_cand_metric = eval_batch.label_token_ids if restrict else None
    train_cand = label_candidates(train_batch, loss)
    eval_cand = label_candidates(eval_batch, loss)

    beta = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, train_batch.n_demos, device=model.cfg.device)

    def mean_loss(batch: PromptBatch, cand: Tensor | None) -> float:
        logits = reweighted_logits(model, batch, beta, batch_size=64)
        return float(answer_loss(logits, batch.answer_tokens, cand).mean())

    def acc(batch: PromptBatch) -> Tensor:
        return correct(reweighted_logits(model, batch, beta), batch.answer_tokens, eval_cand_metric).float()

    train_before, eval_before, ok_before = mean_loss(train_batch, train_cand), mean_loss(eval_batch, eval_cand), acc(eval_batch)
    beta.requires_grad_(True)
    opt = torch.optim.Adam([beta], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    epoch_losses = []
    with frozen(model), torch.enable_grad():
        for _ in tqdm(range(epochs), desc="re-weighting", disable=not progress):
            order = torch.randperm(len(train_batch), generator=gen)
            total, n = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                mb = train_batch.select(idx)
                with model.hooks(fwd_hooks=reweighting_hooks(mb, beta)):
                    logits = final_logits_with_grad(model, mb)
                lab = None if train_cand is None else train_cand[idx]
                l = answer_loss(logits, mb.answer_tokens, lab).mean()
                opt.zero_grad()
                l.backward()
                opt.step()
                total, n = total + float(l.detach()) * len(idx), n + len(idx)
            epoch_losses.append(total / n)
    beta = beta.detach()
    train_after, eval_after, ok_after = mean_loss(train_batch, train_cand), mean_loss(eval_batch, eval_cand), acc(eval_batch)
    rb, ra = wilson(int(ok_before.sum()), len(ok_before)), wilson(int(ok_after.sum()), len(ok_after))
    return ReweightResult(
        model_info=model_info(model),
        beta=beta.cpu(), epoch_losses=torch.tensor(epoch_losses, dtype=torch.float32),
        correct_before=ok_before, correct_after=ok_after,
        accuracy_before=rb.value, accuracy_before_low=rb.low, accuracy_before_high=rb.high,
        accuracy_after=ra.value, accuracy_after_low=ra.low, accuracy_after_high=ra.high,
        train_loss_before=train_before, train_loss_after=train_after,
        eval_loss_before=eval_before, eval_loss_after=eval_after,
        task=train_batch.task, model_name=str(model.cfg.model_name), n_demos=train_batch.n_demos, loss=loss,
        restrict_to_labels=restrict, lr=lr, epochs=epochs, seed=seed,
        meta={"n_train": len(train_batch), "n_eval": len(eval_batch), "batch_size": batch_size, "renormalized": False},
    )
