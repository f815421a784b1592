"""Running a model on a PromptBatch: final-position logits, ICL accuracy, accuracy vs demos."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .metrics import correct, wilson
from .prompts import PromptBatch, Template, build_prompts


def unembed_resid(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits from a final residual stream: ``ln_final`` (when the model has one), then ``unembed``."""
    shape = resid.shape
    x = resid.reshape(1, -1, shape[-1])
    ln = getattr(model, "ln_final", None)
    if ln is not None:
        x = ln(x)
    return model.unembed(x).reshape(*shape[:-1], -1)


@contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter (restored on exit, also on errors)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def gather_positions(
    x: Float[Tensor, "batch pos ..."], positions: Int[Tensor, "batch n"]
) -> Float[Tensor, "batch n ..."]:
    """``x[b, positions[b, j]]`` for every prompt b and column j."""
    idx = positions.to(x.device).reshape(*positions.shape, *([1] * (x.ndim - 2)))
    return x.gather(1, idx.expand(*positions.shape, *x.shape[2:]))


def minibatches(batch: PromptBatch, batch_size: int) -> Iterator[tuple[slice, PromptBatch]]:
    """Consecutive sub-batches of at most ``batch_size`` prompts, padding trimmed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(batch), batch_size):
        sl = slice(start, min(start + batch_size, len(batch)))
        yield sl, batch.select(sl)


@torch.no_grad()
def final_logits(model: Any, batch: PromptBatch, batch_size: int = 64) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's final position (only that position is unembedded)."""
    out = []
    for _, mb in minibatches(batch, batch_size):
        tokens = mb.tokens.to(model.cfg.device)
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        last = gather_positions(resid, mb.final_positions[:, None])[:, 0]
        out.append(unembed_resid(model, last).float().cpu())
    return torch.cat(out)


def icl_accuracy(model: Any, batch: PromptBatch, *, restrict_to_labels: bool = False, batch_size: int = 64) -> float:
    """Fraction of prompts whose top next-token prediction at the final position is the gold token.

    ``restrict_to_labels=True`` takes the argmax over the prompt's label words only
    (categorization tasks; chance is then 1 / number of classes).
    """
    if len(batch) == 0:
        raise ValueError("batch is empty")
    cand = None
    if restrict_to_labels:
        if batch.label_token_ids is None:
            raise ValueError(f"restrict_to_labels=True but task {batch.task!r} has no label words")
        cand = batch.label_token_ids
    return float(correct(final_logits(model, batch, batch_size), batch.answer_tokens, cand).float().mean())


def accuracy_by_demos(
    model: Any,
    tasks: str | Sequence[str],
    demos: Sequence[int] = (0, 1, 2, 4, 8),
    n_prompts: int = 64,
    seed: int = 0,
    template: Template | str | None = None,
) -> pd.DataFrame:
    """Tidy table of ICL accuracy per task and number of demos, with Wilson 95% intervals.

    Columns: task, n_demos, accuracy, low, high, n, and for categorization tasks
    label_accuracy (argmax restricted to the prompt's label words).
    """
    rows = []
    for task in [tasks] if isinstance(tasks, str) else list(tasks):
        for k in demos:
            batch = build_prompts(model, task, n_prompts, k, template=template, seed=seed)
            logits = final_logits(model, batch)
            ok = correct(logits, batch.answer_tokens)
            r = wilson(int(ok.sum()), len(ok))
            row = {"task": batch.task, "n_demos": k, "accuracy": r.value, "low": r.low, "high": r.high, "n": r.n}
            if batch.label_token_ids is not None:
                row["label_accuracy"] = float(correct(logits, batch.answer_tokens, batch.label_token_ids).float().mean())
            rows.append(row)
    return pd.DataFrame(rows)
