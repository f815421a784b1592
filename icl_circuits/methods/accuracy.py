"""Accuracy against the number of demonstrations: the first question of any ICL study.

``demo_sweep`` builds one ``PromptBatch`` per task x number of demos; ``accuracy_by_demos``
scores them with any registered metrics (``core.metrics``) and returns an ``AccuracyResult``:
per cell the mean over prompts with its 95% interval (Wilson for rates, Student t for means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.evaluation import score
from icl_circuits.core.metrics import summarize
from icl_circuits.core.prompts import PromptBatch, Template, build_prompts
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.types import HookedModel

__all__ = ["AccuracyResult", "accuracy_by_demos", "demo_sweep"]

COLUMNS = ["task", "n_demos", "metric", "value", "low", "high", "interval", "n", "template"]


def demo_sweep(
    model: HookedModel,
    tasks: str | Sequence[str],
    demos: Sequence[int] = (0, 1, 2, 4, 8),
    n_prompts: int = 64,
    *,
    seed: int = 0,
    template: Template | str | None = None,
) -> list[PromptBatch]:
    """One batch per task x number of demos (tasks outer, demos inner), each ``build_prompts(model,
    task, n_prompts, k, template=template, seed=seed)``: the same queries in every cell of a task."""
    task_list = [tasks] if isinstance(tasks, str) else list(tasks)
    if not task_list:
        raise ValueError("tasks is empty")
    demos = list(demos)
    if not demos or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in demos):
        raise ValueError(f"demos must be non-negative integers, got {demos!r}")
    return [build_prompts(model, t, n_prompts, k, template=template, seed=seed) for t in task_list for k in demos]


@dataclass(frozen=True)
class AccuracyResult(Result):
    """A metric per (task, n_demos) cell.

    value, low, high: [cell] mean over prompts and its 95% interval; task, n_demos, metric,
    interval ("wilson" for rates, "t" for means), n (prompts) and template (the example format):
    one entry per cell.
    """

    value: Float[Tensor, "cell"]
    low: Float[Tensor, "cell"]
    high: Float[Tensor, "cell"]
    task: list[str]
    n_demos: list[int]
    metric: list[str]
    interval: list[str]
    n: list[int]
    template: list[str]

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table: one row per task x n_demos x metric (columns ``COLUMNS``)."""
        return pd.DataFrame({
            "task": self.task, "n_demos": self.n_demos, "metric": self.metric, "value": self.value.tolist(),
            "low": self.low.tolist(), "high": self.high.tolist(), "interval": self.interval, "n": self.n,
            "template": self.template,
        }, columns=COLUMNS)


def accuracy_by_demos(
    model: HookedModel,
    batches: PromptBatch | Sequence[PromptBatch],
    metrics: str | Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> AccuracyResult:
    """Score every batch (e.g. from ``demo_sweep``) with ``metrics``: per batch and metric, the mean
    over prompts (accuracy for rates, the mean for ``answer_logprob``...) with its 95% interval.

    ``metrics`` default: ``first_token``, plus ``label`` for tasks with label words. A metric asked
    for explicitly that does not apply to a batch (``label`` without label words) raises
    ``ValueError``.
    """
    batches = [batches] if isinstance(batches, PromptBatch) else list(batches)
    if not batches:
        raise ValueError("batches is empty")
    for i, b in enumerate(batches):
        if not isinstance(b, PromptBatch):
            raise TypeError(f"batches[{i}] must be a PromptBatch, got {type(b).__name__}")
    cols: dict[str, list] = {k: [] for k in COLUMNS}
    for batch in tqdm(batches, desc="accuracy by demos", disable=not progress):
        wanted = metrics if metrics is not None else (
            ["first_token", "label"] if batch.label_token_ids is not None else ["first_token"])
        values = score(model, batch, wanted, batch_size=batch_size, max_new_tokens=max_new_tokens)
        for name, v in values.items():
            s = summarize(v, name)
            for k, x in zip(COLUMNS, (batch.task, batch.n_demos, name, s.value, s.low, s.high, s.interval, s.n,
                                      batch.template.example)):
                cols[k].append(x)
    t = lambda k: torch.tensor(cols[k], dtype=torch.float64)  # noqa: E731
    return AccuracyResult(
        value=t("value"), low=t("low"), high=t("high"), task=cols["task"], n_demos=[int(k) for k in cols["n_demos"]],
        metric=cols["metric"], interval=cols["interval"], n=[int(k) for k in cols["n"]], template=cols["template"],
        **stamp(model, seed=batches[0].seed, tasks=sorted({b.task for b in batches}),
                n_demos=sorted({b.n_demos for b in batches}), n_batches=len(batches),
                single_token=_one_or_all([b.single_token for b in batches])),
    )


def _one_or_all(values: list) -> Any:
    """The value all batches share, else the list of them (one per batch)."""
    return values[0] if len(set(values)) == 1 else values
