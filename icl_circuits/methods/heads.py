"""Attention-head ablation: ablate any set of heads, scan every head exactly.

- ``ablate_heads``: zero- or mean-ablate a list of heads (``blocks.{l}.attn.hook_z``, the head's
  output before ``W_O``) at every position or at ``positions`` (a ``PromptBatch.positions`` spec),
  and return the final logits.
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
(``core.metrics.get_metric``); any ``final_logits`` metric works: ``"accuracy"``
(= ``first_token``), ``"label"``, ``"gold_prob"``, ``"logit_diff"`` (gold minus the best other
candidate) and ``"logit_diff_to_mean"`` (gold logit minus the mean logit of the prompt's other
label words for categorization tasks, minus the mean logit over the whole vocabulary otherwise:
the smooth margin of docs/results/heads.md, the same direction as the direct logit attribution
in ``circuits``). Results carry the metric name as given.

Positions: ``positions="all"`` (or None) ablates every position; any other value is a
``PromptBatch.positions`` spec (``"final"``/``"query"``, ``"answers"``, ``"answer_-1"``...).

Mean ablation (``how="mean"``) writes the mean of ``hook_z`` over ``mean_batch`` (default: the
batch itself). With a positions spec it is, per column of ``mean_batch.positions(spec)``, the mean
over the prompts valid there (``"final"``: one column, the mean over the prompts' final positions,
``[head, d_head]``). With ``positions="all"`` it is, by default (``mean_over="position"``), the
mean at each absolute position over the prompts that have a real token there (right padding:
positions ``0..final``); positions past the longest prompt of ``mean_batch`` get the mean over
every real token, which is also what ``mean_over="tokens"`` uses at every position. So
mean-ablating a one-prompt batch with its own mean changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import Intervention, Site, check_head, z_name
from icl_circuits.core.metrics import Metric, get_metric, wilson
from icl_circuits.core.models import model_info
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, provenance
from icl_circuits.core.runner import (
    Entry, MakeHooks, cache_resid, minibatches, read_activations, run_final_logits, run_staggered,
)
from icl_circuits.core.types import HookedModel

#: Every position (``"all"`` or None), or a ``PromptBatch.positions`` spec (``"final"``, ``"answers"``...).
HeadPositions = str | Sequence[str] | None


# ----------------------------------------------------------------------------- checks and metrics
def check_batch(batch: PromptBatch, arg: str = "batch") -> None:
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"{arg} must be a PromptBatch, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{arg} is empty")


def check_choice(value: Any, choices: Sequence[str], arg: str) -> str:
    if value not in choices:
        raise ValueError(f"{arg} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def every_position(positions: HeadPositions) -> bool:
    """Whether ``positions`` means every position (``"all"`` or None)."""
    return positions is None or (isinstance(positions, str) and positions == "all")


def check_head_positions(batch: PromptBatch, positions: HeadPositions) -> None:
    """Raise a ``ValueError`` naming ``positions`` unless it is "all"/None or a spec of ``batch``."""
    if every_position(positions):
        return
    try:
        batch.positions(positions)
    except (ValueError, TypeError) as err:
        raise ValueError(f"positions must be 'all' (every position) or a PromptBatch.positions spec "
                         f"('final', 'answers', 'answer_-1'...), got {positions!r}: {err}") from err


def scan_metric(metric: "str | Metric", batch: PromptBatch) -> Metric:
    """The registry's metric called ``metric``, checked to be scored on final-position logits of one batch."""
    m = get_metric(metric, batch)
    if m.source != "final_logits":
        raise ValueError(f"metric must be scored on final-position logits (e.g. 'accuracy', 'logit_diff_to_mean', "
                         f"'gold_prob'); {m.name!r} is computed from {m.source}")
    return m


def check_heads(model: HookedModel, heads: Sequence[Sequence[int]], *, allow_empty: bool = True,
                arg: str = "heads") -> list[tuple[int, int]]:
    """Validate a list of ``(layer, head)`` pairs; returns them as tuples (duplicates removed)."""
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise ValueError(f"{arg} must be a list of (layer, head) pairs, got {heads!r}")
    out = []
    for i, lh in enumerate(heads):
        if not hasattr(lh, "__len__") or len(lh) != 2:
            raise ValueError(f"{arg}[{i}] must be a (layer, head) pair, got {lh!r}")
        l, h = (int(v) if isinstance(v, (np.integer, torch.Tensor)) else v for v in lh)
        check_head(model, l, h, arg=f"{arg}[{i}] head")
        out.append((l, h))
    if not out and not allow_empty:
        raise ValueError(f"{arg} is empty: give at least one (layer, head) pair")
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- mean activations
def head_means(
    model: HookedModel,
    mean_batch: PromptBatch,
    layers: Sequence[int],
    *,
    positions: HeadPositions = "all",
    mean_over: Literal["position", "tokens"] = "position",
    width: int | None = None,
    make_hooks: MakeHooks | None = None,
    batch_size: int = 64,
) -> dict[int, Tensor]:
    """Mean of ``hook_z`` per layer under the hooks ``make_hooks`` (e.g. an injected task vector):
    ``[width, head, d_head]`` for ``positions="all"``; for a positions spec, ``[n, head, d_head]``
    (column j: the mean over the prompts valid at ``mean_batch.positions(spec)`` column j), squeezed
    to ``[head, d_head]`` when the spec has one column (``"final"``). See the module docstring."""
    check_batch(mean_batch, "mean_batch")
    check_choice(mean_over, ("position", "tokens"), "mean_over")
    layers = sorted(set(layers))
    if not layers:
        return {}
    names = [z_name(l) for l in layers]
    if not every_position(positions):
        check_head_positions(mean_batch, positions)
        ps = mean_batch.positions(positions)
        acts = read_activations(model, mean_batch, names, ps.positions, batch_size=batch_size, make_hooks=make_hooks)
        out = {}
        for l in layers:
            z = acts[z_name(l)].float()  # [batch, n, head, d_head]
            if ps.mask is None or bool(ps.mask.all()):
                m = z.mean(0)
            else:
                w = ps.mask.float()[..., None, None]
                m = (z * w).sum(0) / w.sum(0).clamp(min=1)
            out[l] = m[0] if m.shape[0] == 1 else m
        return out
    acts = read_activations(model, mean_batch, names, None, batch_size=batch_size, make_hooks=make_hooks)
    pos = mean_batch.tokens.shape[1]
    width = max(pos, width or 0)
    real = (torch.arange(pos)[None] <= mean_batch.final_positions[:, None]).float()  # [batch, pos]
    out = {}
    for l in layers:
        z = acts[z_name(l)].float() * real[..., None, None]
        token_mean = z.sum((0, 1)) / real.sum()
        if mean_over == "tokens":
            out[l] = token_mean[None].expand(width, -1, -1).clone()
        else:
            per_pos = z.sum(0) / real.sum(0)[:, None, None]
            out[l] = torch.cat([per_pos, token_mean[None].expand(width - pos, -1, -1)])
    return out


def means_at(means: dict[int, Tensor] | None, layer: int, width: int) -> Tensor | None:
    if means is None:
        return None
    m = means[layer]
    if m.ndim == 3 and m.shape[0] < width:  # a batch wider than the one the means were computed on
        m = torch.cat([m, m[-1:].expand(width - m.shape[0], -1, -1)])
    return m


# ----------------------------------------------------------------------------- ablation specs
def head_ablation_interventions(
    batch: PromptBatch,
    heads: Sequence[tuple[int, int]],
    how: Literal["zero", "mean"] = "zero",
    means: dict[int, Tensor] | None = None,
    positions: HeadPositions = "all",
) -> list[Intervention]:
    """The specs that ablate every head in ``heads`` on ``batch`` (a minibatch: its own width):
    ``Intervention(Site(l, "z", h), "zero" | "mean", positions=batch.positions(positions))``;
    ``means`` as returned by ``head_means`` (``how="mean"``) with the same ``positions``."""
    if how not in ("zero", "mean"):
        raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")
    if how == "mean" and means is None:
        raise ValueError("how='mean' needs the head means (argument means; see head_means)")
    width = batch.tokens.shape[1]
    ps = None if every_position(positions) else batch.positions(positions)
    out = []
    for l, h in heads:
        value = None
        if how == "mean":
            value = means_at(means, l, width)[:width, h] if ps is None else means[l][..., h, :]
        # every position: "zero", or "replace" with the per-position mean (a spec's "mean" needs positions)
        op = how if ps is not None or how == "zero" else "replace"
        out.append(Intervention(Site(l, "z", h), op, positions=None if ps is None else ps.positions, value=value,
                                mask=None if ps is None or ps.mask is None or bool(ps.mask.all()) else ps.mask))
    return out


def head_ablation_hooks(heads: Sequence[tuple[int, int]], how: str, means: dict | None, positions: HeadPositions,
                        extra: MakeHooks | None = None) -> MakeHooks:
    """``make_hooks(rows, sub_batch)`` for ``runner.run_final_logits``: the ``extra`` hooks (e.g. an
    injected task vector) followed by ``head_ablation_interventions`` of each minibatch."""

    def make(rows: slice, mb: PromptBatch):
        hooks = list(extra(rows, mb)) if extra is not None else []
        return hooks + head_ablation_interventions(mb, heads, how, means, positions)

    return make


# ----------------------------------------------------------------------------- one ablation
@dataclass(frozen=True)
class AblationResult(Result):
    """Final logits with a set of heads ablated.

    logits: [batch, d_vocab] under ablation; per_prompt: [batch] the metric under ablation;
    clean: [batch] the metric without ablation (same extra hooks); heads: [[layer, head], ...].
    """

    logits: Float[Tensor, "batch d_vocab"]
    per_prompt: Float[Tensor, "batch"]
    clean: Float[Tensor, "batch"]
    heads: list
    how: str
    positions: str
    metric: str
    task: str
    model_name: str
    meta: dict = field(default_factory=dict)

    @property
    def value(self) -> float:
        return float(self.per_prompt.mean())

    @property
    def clean_value(self) -> float:
        return float(self.clean.mean())

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"prompt": range(len(self.per_prompt)), "ablated": self.per_prompt.tolist(),
                             "clean": self.clean.tolist(), "metric": self.metric, "how": self.how,
                             "positions": self.positions, "n_heads": len(self.heads), "task": self.task,
                             "model": self.model_name})




def positions_label(positions: HeadPositions) -> str:
    """How a result names its positions: ``"all"``, or the spec (a list joined by ``+``)."""
    if every_position(positions):
        return "all"
    return positions if isinstance(positions, str) else "+".join(positions)


def ablate_heads(
    model: HookedModel,
    batch: PromptBatch,
    heads: Sequence[Sequence[int]],
    how: Literal["zero", "mean"] = "zero",
    *,
    mean_batch: PromptBatch | None = None,
    positions: HeadPositions = "all",
    mean_over: Literal["position", "tokens"] = "position",
    metric: "str | Metric" = "accuracy",
    extra_hooks: MakeHooks | None = None,
    batch_size: int = 64,
) -> AblationResult:
    """Final logits of ``batch`` with every head in ``heads`` (``[(layer, head), ...]``) ablated
    together at ``positions`` (``"all"``/None, or a ``PromptBatch.positions`` spec such as ``"final"``).

    ``how="zero"`` sets ``z[l, h] = 0``; ``how="mean"`` sets it to its mean over ``mean_batch``
    (default: ``batch``) computed under the same ``extra_hooks`` (see the module docstring).
    ``extra_hooks(rows, sub_batch) -> [Intervention | (name, fn)]`` are applied to every run (e.g.
    an injected task vector). ``metric``: a registry name (``core.metrics``). An empty ``heads``
    list is allowed: the clean run.
    """
    check_batch(batch)
    check_choice(how, ("zero", "mean"), "how")
    check_head_positions(batch, positions)
    m = scan_metric(metric, batch)
    hs = check_heads(model, heads)
    means = None
    if how == "mean" and hs:
        mb = batch if mean_batch is None else mean_batch
        means = head_means(model, mb, [l for l, _ in hs], positions=positions, mean_over=mean_over,
                           width=batch.tokens.shape[1], make_hooks=extra_hooks, batch_size=batch_size)
    clean_logits = run_final_logits(model, batch, extra_hooks, batch_size=batch_size)
    logits = run_final_logits(model, batch, head_ablation_hooks(hs, how, means, positions, extra_hooks),
                              batch_size=batch_size)
    name = metric if isinstance(metric, str) else m.name
    return AblationResult(
        model_info=model_info(model),
        logits=logits, per_prompt=m.from_logits(logits, batch), clean=m.from_logits(clean_logits, batch),
        heads=[list(p) for p in hs], how=how, positions=positions_label(positions), metric=name, task=batch.task,
        model_name=str(model.cfg.model_name), meta={**provenance(model, batch), "mean_over": mean_over},
    )


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
    model_name: str
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
                             "method": self.method, "task": self.task, "model": self.model_name})
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
        model_info=model_info(model),
        values=values, effect=effect, per_prompt=per_prompt, clean=clean, low=low, high=high, layers=layers,
        metric=metric if isinstance(metric, str) else metric.name, how=how, positions=positions_label(positions),
        method=method, task=batch.task, model_name=str(model.cfg.model_name),
        meta={**provenance(model, batch), **meta},
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
    metric: "str | Metric" = "accuracy",
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
    ``c``. ``batched=False``: one full forward per head (the naive reference; same numbers).
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
