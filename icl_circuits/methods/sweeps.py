"""Metric-per-layer results and the layer sweep that produces them.

- ``SweepResult``: a metric per layer (mean over prompts, per-prompt values, 95% interval).
- ``layer_sweep``: apply one intervention at every layer (e.g. inject a task vector at block l)
  and measure a metric per layer: a metric over the runner's one sweep
  (``runner.sweep_final_logits``: the unpatched prefix run once, the run patched at layer l
  resumed at block l from the cached residual, several layers per staggered forward).
- ``prompt_metric`` / ``is_rate``: metrics by registry name (``core.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.interventions import HookList
from icl_circuits.core.metrics import get_metric, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, Stamp, stamp
from icl_circuits.core.runner import TOKENS_PER_FORWARD, sweep_final_logits
from icl_circuits.core.types import HookedModel

__all__ = ["SweepResult", "accuracy_sweep", "layer_sweep", "prompt_metric", "is_rate", "sweep_from_per_prompt"]


@dataclass(frozen=True)
class SweepResult(Result):
    """A metric of one intervention applied at each layer.

    values: [layer] mean metric; per_prompt: [layer, batch]; low/high: Wilson 95% interval
    (rates) or mean +- 1.96 standard errors; layers; metric (its registry name); method; task;
    baseline: the metric without intervention (e.g. zero-shot accuracy), for reference lines in
    figures. ``model``, ``model_info`` and ``provenance`` come from ``Result`` (``stamp``).
    """

    values: Float[Tensor, "layer"]
    per_prompt: Float[Tensor, "layer batch"]
    low: Float[Tensor, "layer"]
    high: Float[Tensor, "layer"]
    layers: list[int]
    metric: str
    method: str
    task: str
    baseline: float | None = None
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({
            "layer": self.layers, "value": self.values.tolist(), "low": self.low.tolist(),
            "high": self.high.tolist(), "metric": self.metric, "method": self.method,
            "task": self.task, "model": self.model, "baseline": self.baseline,
        })

    @property
    def best_layer(self) -> int:
        return self.layers[int(self.values.argmax())]


def accuracy_sweep(
    per_prompt: Float[Tensor, "layer batch"], layers: Sequence[int], *, method: str, task: str, stamped: Stamp,
    metric: str = "first_token", baseline: float | None = None, meta: dict | None = None,
) -> SweepResult:
    """Per-prompt hits of a rate ``metric`` (0/1) per layer as a SweepResult: values[i] = mean of
    row i, with its Wilson 95% interval. ``stamped``: the result's ``stamp(model, batch)``."""
    rates = [wilson(int(row.sum()), row.numel()) for row in per_prompt]
    return SweepResult(
        values=per_prompt.float().mean(1), per_prompt=per_prompt.float(),
        low=torch.tensor([r.low for r in rates]), high=torch.tensor([r.high for r in rates]),
        layers=list(layers), metric=metric, method=method, task=task, baseline=baseline, meta=meta or {},
        **stamped,
    )


#: ``make_hooks_for_layer(layer, rows, sub_batch) -> [(hook_name, fn)]``
MakeLayerHooks = Callable[[int, slice, PromptBatch], HookList]


#: A per-prompt metric: ``metric(final_logits [batch, d_vocab], batch) -> [batch]``.
PromptMetric = Callable[[Tensor, PromptBatch], Tensor]


def prompt_metric(metric: str | PromptMetric, batch: PromptBatch) -> tuple[str, PromptMetric]:
    """Resolve a metric into ``(name, fn(logits, batch) -> [batch])``: a name (or alias, or
    ``"auto"``) is looked up in the registry (``core.metrics.get_metric``; any ``final_logits``
    metric: ``"first_token"``, ``"label"``, ``"gold_prob"``, ``"logit_diff"``...) and gives its
    registry name. A callable is used as is, named by its ``__name__``.
    """
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    m = get_metric(metric, batch, source="final_logits")
    return m.name, m.from_logits


def is_rate(metric: str) -> bool:
    """Whether ``metric`` names a registered rate (0/1 per prompt); custom names are not."""
    try:
        return get_metric(metric).is_rate
    except ValueError:
        return False


def sweep_from_per_prompt(
    per_prompt: Float[Tensor, "layer batch"], layers: Sequence[int], metric: str, *, method: str, task: str,
    stamped: Stamp, baseline: float | None = None, meta: dict | None = None,
) -> SweepResult:
    """A SweepResult of per-prompt values per layer: values[i] = mean of row i, with its Wilson
    95% interval for rates (0/1 per prompt), else mean +- 1.96 standard errors. ``stamped``: the
    result's ``stamp(model, batch)``."""
    if is_rate(metric):
        return accuracy_sweep(per_prompt, layers, method=method, task=task, stamped=stamped, metric=metric,
                              baseline=baseline, meta=meta)
    pp = per_prompt.float()
    mean = pp.mean(1)
    se = pp.std(1) / pp.shape[1] ** 0.5 if pp.shape[1] > 1 else torch.full_like(mean, float("nan"))
    return SweepResult(values=mean, per_prompt=pp, low=mean - 1.96 * se, high=mean + 1.96 * se, layers=list(layers),
                       metric=metric, method=method, task=task, baseline=baseline,
                       meta={"interval": "normal", **(meta or {})}, **stamped)


@torch.no_grad()
def layer_sweep(
    model: HookedModel,
    batch: PromptBatch,
    make_hooks_for_layer: MakeLayerHooks,
    layers: Sequence[int] | None = None,
    metric: str | PromptMetric = "first_token",
    *,
    layers_per_forward: int | None = None,
    batch_size: int = 64,
    tokens_per_forward: int = TOKENS_PER_FORWARD,
    method: str = "intervention",
    meta: dict | None = None,
    progress: bool = False,
) -> SweepResult:
    """A metric of ``batch`` under the intervention ``make_hooks_for_layer(l, rows, sub_batch)``, per layer.

    values[i] = mean over prompts of metric(final-position logits with the hooks of layers[i]).

    Layer l (0..n_layers) names the intervention, whose hooks must live in block l or later
    (``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_z``...; for l = n_layers,
    ``blocks.{n_layers-1}.hook_resid_post``). Prefix reuse: one unpatched forward caches the
    residual at the input of every block (and gives ``baseline``, the unpatched metric); the run
    for layer l resumes at block l (block n_layers-1 for l = n_layers). Several layers share one
    staggered forward (``run_staggered``): ``layers_per_forward`` of them (default: as many as
    fit in ``tokens_per_forward`` token positions), each a copy of the sub-batch whose hooks touch
    its own rows only; ``make_hooks_for_layer`` builds hooks for one copy, exactly as for a run of
    the sub-batch alone. ``metric``: see ``prompt_metric``. Returns a SweepResult ([layer]).
    """
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else list(layers)  # checked by the sweep
    name, fn = prompt_metric(metric, batch)
    per_prompt, clean = sweep_final_logits(
        model, batch, make_hooks_for_layer, layers, lambda logits, mb: fn(logits, mb).float(), batch_size=batch_size,
        layers_per_forward=layers_per_forward, tokens_per_forward=tokens_per_forward, progress=progress,
        desc="layer sweep")
    baseline = float(clean.mean())
    return sweep_from_per_prompt(per_prompt, layers, name, method=method, task=batch.task, stamped=stamp(model, batch),
                                 baseline=baseline,
                                 meta={"variant": batch.variant, "n_demos": batch.n_demos, **(meta or {})})
