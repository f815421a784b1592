"""Anchor re-weighting (Wang et al. 2023, "Label Words are Anchors"): a learnable
``beta[l, h, i]`` per layer, head and demo scales the final position's attention to demo i's
label word, ``A(q, p_i) <- exp(beta) * A(q, p_i)`` (``blocks.{l}.attn.hook_pattern``; like the
paper, the row is *not* renormalized), trained with Adam on the training prompts while the model
stays frozen.

``p_i`` is the first token of demo i's answer (``batch.positions("answers")``), ``q`` the final
position (``batch.positions("query")``). The scaling is an
``Intervention(Site(l, "pattern"), "scale_attention", ...)`` per layer; training runs through
``runner.final_logits_with_grad``, evaluation through ``runner.run_final_logits``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import correct, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import final_logits_with_grad, frozen, run_final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.saliency import LossKind, answer_loss, check_demos, label_candidates


def reweighting_interventions(batch: PromptBatch, beta: Float[Tensor, "layer head demo"]) -> list[Intervention]:
    """Specs scaling ``A_{l,h}(q, p_i)`` by ``exp(beta[l, h, i])`` in every layer (no renormalization):
    ``q`` = ``batch.positions("query")``, ``p_i`` = column i of ``batch.positions("answers")``."""
    query, keys = batch.positions("query").positions, batch.positions("answers").positions
    return [Intervention(Site(l, "pattern"), "scale_attention", positions=query, keys=keys, value=beta[l].exp())
            for l in range(beta.shape[0])]


def reweighted_logits(
    model: HookedModel, batch: PromptBatch, beta: Float[Tensor, "layer head demo"], *, batch_size: int = 64
) -> Float[Tensor, "batch d_vocab"]:
    """Final-position logits with the anchor re-weighting ``beta`` applied (no gradients)."""
    _check_beta(model, batch, beta)
    beta = beta.detach()
    return run_final_logits(model, batch, lambda rows, mb: reweighting_interventions(mb, beta), batch_size=batch_size)


def _check_beta(model: HookedModel, batch: PromptBatch, beta: Tensor) -> None:
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
             "train_loss": getattr(self, f"train_loss_{s}"), "task": self.task, "model": self.model,
             "n_demos": self.n_demos, "n": int(self.correct_before.numel())}
            for s in ("before", "after")
        ])


def train_anchor_reweighting(
    model: HookedModel,
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

    def loss_and_acc(batch: PromptBatch, cand: Tensor | None) -> tuple[float, Tensor]:
        # one forward gives both the held-out loss and the per-prompt correctness
        logits = reweighted_logits(model, batch, beta, batch_size=64)
        ok = correct(logits, batch.answer_tokens, eval_cand_metric).float()
        return float(answer_loss(logits, batch.answer_tokens, cand).mean()), ok

    train_before, (eval_before, ok_before) = mean_loss(train_batch, train_cand), loss_and_acc(eval_batch, eval_cand)
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
                logits = final_logits_with_grad(model, mb, reweighting_interventions(mb, beta))
                lab = None if train_cand is None else train_cand[idx]
                l = answer_loss(logits, mb.answer_tokens, lab).mean()
                opt.zero_grad()
                l.backward()
                opt.step()
                total, n = total + float(l.detach()) * len(idx), n + len(idx)
            epoch_losses.append(total / n)
    beta = beta.detach()
    train_after, (eval_after, ok_after) = mean_loss(train_batch, train_cand), loss_and_acc(eval_batch, eval_cand)
    rb, ra = wilson(int(ok_before.sum()), len(ok_before)), wilson(int(ok_after.sum()), len(ok_after))
    return ReweightResult(
        beta=beta.cpu(), epoch_losses=torch.tensor(epoch_losses, dtype=torch.float32),
        correct_before=ok_before, correct_after=ok_after,
        accuracy_before=rb.value, accuracy_before_low=rb.low, accuracy_before_high=rb.high,
        accuracy_after=ra.value, accuracy_after_low=ra.low, accuracy_after_high=ra.high,
        train_loss_before=train_before, train_loss_after=train_after,
        eval_loss_before=eval_before, eval_loss_after=eval_after,
        task=train_batch.task, n_demos=train_batch.n_demos, loss=loss,
        restrict_to_labels=restrict, lr=lr, epochs=epochs, seed=seed,
        **stamp(model, train_batch), meta={"n_train": len(train_batch), "n_eval": len(eval_batch),
              "eval_seed": eval_batch.seed, "batch_size": batch_size, "renormalized": False},
    )
