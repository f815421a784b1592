"""Ablating attention heads: zero or mean ablation of any set of heads, as ``Intervention`` specs.

- ``ablate_heads``: zero- or mean-ablate a list of heads (``blocks.{l}.attn.hook_z``, the head's
  output before ``W_O``) at every position or at ``positions`` (a ``PromptBatch.positions`` spec),
  and return the final logits (an ``AblationResult``).
- ``head_ablation_interventions``: the specs, ``Intervention(Site(l, "z", h), "zero" | "mean",
  positions=...)``, that every head analysis (scans, key heads, attribution) runs.
- ``head_means``: the mean activations mean ablation writes.

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

Metrics come from the registry (``core.metrics``); see ``methods.heads`` for the scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.checks import check_head
from icl_circuits.core.interventions import Intervention, Site, z_name
from icl_circuits.core.metrics import Metric, get_metric
from icl_circuits.core.positions import check_batch
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import (
    MakeHooks, read_activations, run_final_logits,
)
from icl_circuits.core.types import HookedModel

#: Every position (``"all"`` or None), or a ``PromptBatch.positions`` spec (``"final"``, ``"answers"``...).
HeadPositions = str | Sequence[str] | None



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
    return get_metric(metric, batch, source="final_logits")


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
                             "model": self.model})


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
    metric: "str | Metric" = "first_token",
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
    return AblationResult(
        logits=logits, per_prompt=m.from_logits(logits, batch), clean=m.from_logits(clean_logits, batch),
        heads=[list(p) for p in hs], how=how, positions=positions_label(positions), metric=m.name, task=batch.task,
        **stamp(model, batch), meta={"mean_over": mean_over},
    )
