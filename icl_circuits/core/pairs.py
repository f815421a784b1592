"""Paired and twin prompt builders: prompts of two tasks whose answers can be told apart.

``task_answer_tokens``: the first token another task would answer on each prompt's query;
``paired_batches``: source prompts of task A and target prompts of task B for interchange.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from icl_circuits.core.positions import _check_batch
from icl_circuits.core.prompts import PromptBatch, TokenizationBoundaryError, _render, _token_span, _tokenize, build_prompts
from icl_circuits.core.tasks import CategorizationTask, Task, get_task

__all__ = ["task_answer_tokens", "paired_batches"]


def _as_task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def task_answer_tokens(batch: PromptBatch, task: Task | str) -> Int[Tensor, "batch"]:
    """First token of ``task`` applied to each prompt's query, rendered as that prompt's answer
    (same template and demos, so the token is exactly what the model would have to produce);
    ``-1`` where the task is undefined on the query. Categorization tasks use the prompt's own
    label binding (``batch.label_words``); a prompt without one (or with another number of
    classes) gets ``-1``."""
    _check_batch(batch)
    task = _as_task(task)
    if batch.tokenizer is None:
        raise ValueError("batch has no tokenizer; build it with build_prompts")
    out = []
    for i, q in enumerate(batch.queries):
        words = batch.label_words[i]
        if isinstance(task, CategorizationTask):
            y = task.apply(q, words) if words is not None and len(words) == task.n_classes else None
        else:
            y = task.apply(q)
        if y is None:
            out.append(-1)
            continue
        r = _render(batch.template, batch.demos[i], (q, y))
        ids, offsets = _tokenize(batch.tokenizer, r.text)
        try:
            out.append(ids[_token_span(offsets, r.text, *r.answer_chars[-1], "answer")[0]])
        except TokenizationBoundaryError:
            out.append(-1)
    return torch.tensor(out, dtype=torch.long)


def paired_batches(
    model: Any, source: Task | str, target: Task | str, n_prompts: int, n_demos: int, *,
    seed: int = 0, template: Any = None, oversample: int = 6,
) -> tuple[PromptBatch, PromptBatch]:
    """Source prompts of task A (seed ``seed + 1``) and target prompts of task B (seed ``seed``)
    whose query is in A's domain with a first answer token different from B's, so every target
    prompt can tell transfer from preserve. Target prompts are drawn from a pool of
    ``oversample * n_prompts`` and the first ``n_prompts`` that qualify are kept."""
    src = build_prompts(model, source, n_prompts, n_demos, template=template, seed=seed + 1)
    pool = build_prompts(model, target, n_prompts * oversample, n_demos, template=template, seed=seed)
    ta = task_answer_tokens(pool, source)
    ok = ((ta >= 0) & (ta != pool.answer_tokens)).nonzero()[:, 0]
    if len(ok) < n_prompts:
        raise ValueError(
            f"only {len(ok)} of {len(pool)} prompts of target task {pool.task!r} have a query on which "
            f"source task {src.task!r} is defined with a different answer; n_prompts={n_prompts} is too many "
            "(or the two tasks' domains do not overlap)"
        )
    return src, pool.select(ok[:n_prompts])
