"""Attention-head ablation: ablate any set of heads, scan every head exactly.

- ``ablate_heads`` and the ablation specs themselves live in ``methods.head_ablation``.
- ``head_ablation_scan``: the effect of ablating each head alone, exactly. Heads are batched per
  forward through the runner's prefix reuse: the clean residual at the input of block ``l`` is
  cached once (``runner.cache_resid``) and one staggered forward (``runner.run_staggered``)
  resumes at block ``l`` with ``C`` entries (one copy of the minibatch per head of that layer),
  entry ``c`` carrying the ``Intervention`` that ablates head ``c``.
- Attribution patching (``head_attribution``) and ``scan_agreement`` live in
  ``methods.attribution``.

Every ablation is a list of ``Intervention(Site(l, "z", h), "zero" | "mean", positions=...)``
specs (``head_ablation_interventions``), run by ``core.runner``.

Metrics (per prompt, on the final-position logits) come from the registry
(``core.metrics.get_metric``); any ``final_logits`` metric works: ``"first_token"``
(alias ``"accuracy"``), ``"label"``, ``"gold_prob"``, ``"logit_diff"`` (gold minus the best other
candidate) and ``"logit_diff_to_mean"`` (gold logit minus the mean logit of the prompt's other
label words for categorization tasks, minus the mean logit over the whole vocabulary otherwise:
the smooth margin of docs/results/heads.md, the same direction as the direct logit attribution
in ``circuits``). Results carry the metric's registry name (an alias is recorded as its metric).

Positions: ``positions="all"`` (or None) ablates every position; any other value is a
``PromptBatch.positions`` spec (``"final"``/``"query"``, ``"answers"``, ``"answer_-1"``...).

Mean ablation: see ``methods.head_ablation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.metrics import Metric, get_metric, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import (
    Entry, cache_resid, minibatches, run_final_logits, run_staggered,
)
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.head_ablation import HeadPositions, check_choice, check_head_positions, head_ablation_interventions, head_ablation_hooks, head_means, positions_label, scan_metric
from icl_circuits.core.positions import check_batch


# ----------------------------------------------------------------------------- checks and metrics


# ----------------------------------------------------------------------------- mean activations


# ----------------------------------------------------------------------------- ablation specs


# ----------------------------------------------------------------------------- one ablation


# ----------------------------------------------------------------------------- scans
@dataclass(frozen=True)
class HeadScanResult(Result):
    """The metric with each head ablated alone (exactly, or estimated by attribution patching).

    values: [layer, head] mean metric under ablation; effect: [layer, head] mean of
    (ablated - clean); per_prompt: [layer, head, batch] metric under ablation; clean: [batch];
    low/high: Wilson 95% interval (accuracy) or mean +- 1.96 standard errors of the effect (other
    metrics); method: "exact" | "attribution".
    """

    values: Float[Tensor, "layer head"]
    effect: Float[Tensor, "layer head"]
    per_prompt: Float[Tensor, "layer head batch"]
    clean: Float[Tensor, "batch"]
    low: Float[Tensor, "layer head"]
    high: Float[Tensor, "layer head"]
    layers: list
    metric: str
    how: str
    positions: str
    method: str
    task: str
    meta: dict = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for i, l in enumerate(self.layers):
            for h in range(self.n_heads):
                rows.append({"layer": l, "head": h, "value": float(self.values[i, h]),
                             "effect": float(self.effect[i, h]), "low": float(self.low[i, h]),
                             "high": float(self.high[i, h]), "clean": float(self.clean.mean()),
                             "metric": self.metric, "how": self.how, "positions": self.positions,
                             "method": self.method, "task": self.task, "model": self.model})
        return pd.DataFrame(rows)

    def top(self, k: int = 5, *, largest_drop: bool = True) -> list[tuple[int, int]]:
        """The ``k`` heads whose ablation lowers the metric most (or raises it, ``largest_drop=False``)."""
        flat = self.effect.flatten()
        order = flat.argsort(descending=not largest_drop)[:k]
        return [(self.layers[int(i) // self.n_heads], int(i) % self.n_heads) for i in order]


def scan_result(per_prompt: Tensor, clean: Tensor, layers: list[int], metric: "str | Metric", how: str,
                 positions: HeadPositions, method: str, batch: PromptBatch, model: HookedModel,
                 meta: dict) -> HeadScanResult:
    """Rates (``Metric.is_rate``): Wilson 95% intervals; other metrics: mean +- 1.96 standard errors of the effect."""
    n = per_prompt.shape[-1]
    values = per_prompt.mean(-1)
    effect = (per_prompt - clean).mean(-1)
    if get_metric(metric).is_rate:
        rates = [[wilson(int(round(float(v.sum()))), n) for v in row] for row in per_prompt]
        low = torch.tensor([[r.low for r in row] for row in rates])
        high = torch.tensor([[r.high for r in row] for row in rates])
    else:
        sem = (per_prompt - clean).std(-1) / n**0.5 if n > 1 else torch.zeros_like(values)
        low, high = values - 1.96 * sem, values + 1.96 * sem
    return HeadScanResult(
        values=values, effect=effect, per_prompt=per_prompt, clean=clean, low=low, high=high, layers=layers,
        metric=get_metric(metric).name, how=how, positions=positions_label(positions),
        method=method, task=batch.task,
        **stamp(model, batch), meta=meta,
    )


def scan_layers(model: HookedModel, layers: Sequence[int] | None) -> list[int]:
    n = model.cfg.n_layers
    out = list(range(n)) if layers is None else list(layers)
    if not out:
        raise ValueError("layers is empty: give at least one layer to scan")
    for l in out:
        if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or not 0 <= l < n:
            raise ValueError(f"layers: each layer must be an integer in [0, {n - 1}], got {l!r}")
    return [int(l) for l in out]


def head_ablation_scan(
    model: HookedModel,
    batch: PromptBatch,
    how: Literal["zero", "mean"] = "zero",
    *,
    metric: "str | Metric" = "first_token",
    positions: HeadPositions = "all",
    mean_batch: PromptBatch | None = None,
    mean_over: Literal["position", "tokens"] = "position",
    layers: Sequence[int] | None = None,
    heads_per_forward: int | None = None,
    batched: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> HeadScanResult:
    """Exact effect on ``metric`` of ablating each head alone: ``per_prompt[l, h, b]`` is the
    metric (a registry name) of prompt ``b`` with ``z[l, h]`` zero- or mean-ablated at ``positions``
    (``"all"``/None, or a ``PromptBatch.positions`` spec); ``effect = mean_b(per_prompt - clean)``.

    ``batched=True``: per minibatch of prompts, one clean forward caches the residual at the input
    of every scanned layer (``runner.cache_resid``); for layer ``l``, ``heads_per_forward`` copies
    of the minibatch (default: every head of the layer) resume at block ``l`` in one staggered
    forward (``runner.run_staggered``), copy ``c`` carrying the ``Intervention`` that ablates head
    ``c``. ``batched=False``: one full forward per head (the naive reference; the same numbers up to
    float32 rounding, since the two run other shapes and so possibly other kernels).
    """
    check_batch(batch)
    check_choice(how, ("zero", "mean"), "how")
    check_head_positions(batch, positions)
    m = scan_metric(metric, batch)
    layers = scan_layers(model, layers)
    n_heads = model.cfg.n_heads
    hpf = n_heads if heads_per_forward is None else int(heads_per_forward)
    if hpf < 1:
        raise ValueError(f"heads_per_forward must be a positive integer, got {heads_per_forward!r}")
    means = None
    if how == "mean":
        means = head_means(model, batch if mean_batch is None else mean_batch, layers, positions=positions,
                           mean_over=mean_over, width=batch.tokens.shape[1], batch_size=batch_size)
    per_prompt = torch.zeros(len(layers), n_heads, len(batch))
    if not batched:
        clean = m.from_logits(run_final_logits(model, batch, batch_size=batch_size), batch)
        bar = tqdm(total=len(layers) * n_heads, disable=not progress, desc="head scan (naive)")
        for i, l in enumerate(layers):
            for h in range(n_heads):
                logits = run_final_logits(model, batch, head_ablation_hooks([(l, h)], how, means, positions),
                                          batch_size=batch_size)
                per_prompt[i, h] = m.from_logits(logits, batch)
                bar.update()
        bar.close()
        return scan_result(per_prompt, clean, layers, metric, how, positions, "exact", batch, model,
                            {"batched": False, "mean_over": mean_over})

    clean = torch.zeros(len(batch))
    n_mb = -(-len(batch) // batch_size)
    bar = tqdm(total=n_mb * len(layers), disable=not progress, desc="head scan")
    groups = [list(range(s, min(s + hpf, n_heads))) for s in range(0, n_heads, hpf)]
    for rows, mb in minibatches(batch, batch_size):
        cached, logits, _ = cache_resid(model, mb.tokens, layers, mb.final_positions)
        clean[rows] = m.from_logits(logits, mb)
        for i, l in enumerate(layers):
            for group in groups:
                entries = [Entry(l, cached[l], mb.final_positions,
                                 head_ablation_interventions(mb, [(l, h)], how, means, positions), tokens=mb.tokens)
                           for h in group]
                lg = run_staggered(model, entries).view(len(group), len(mb), -1)
                for j, h in enumerate(group):
                    per_prompt[i, h, rows] = m.from_logits(lg[j], mb)
            bar.update()
    bar.close()
    return scan_result(per_prompt, clean, layers, metric, how, positions, "exact", batch, model,
                        {"batched": True, "heads_per_forward": hpf, "mean_over": mean_over})
