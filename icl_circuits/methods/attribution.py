"""Attribution patching of attention heads (a first-order estimate of every head ablation at
once) and how well an estimate ranks heads like the exact scan (``heads.head_ablation_scan``).

- ``head_attribution``: one forward and one backward pass per minibatch give, for every head,
  ``sum_pos dM/dz(pos) . (z_ablated(pos) - z(pos))`` (Nanda's attribution patching; Syed et al.
  2023), with the same ablations, positions and metrics as the exact scan; ``qk_fix=True`` and
  ``graddrop=True`` are AtP*'s two corrections (Kramar et al. 2024; ``methods.atp_star``).
- ``scan_agreement``: Spearman/Pearson correlations and top-k overlap of two scans of the same
  ablation and metric (a dict), with a warning when the estimate misses the heads that matter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import Metric
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp_of
from icl_circuits.core.runner import final_logits_with_grad, minibatches
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.heads import HeadScanResult, scan_layers, scan_result
from icl_circuits.methods.head_ablation import HeadPositions, check_choice, check_head_positions, every_position, head_means, means_at, scan_metric
from icl_circuits.core.positions import check_batch

__all__ = ["head_attribution", "scan_agreement", "TOP_K_MIN_OVERLAP"]


def _target(mb: PromptBatch, positions: HeadPositions, z: Tensor, how: str, mean: Tensor | None,
            ) -> tuple[Tensor, Tensor]:
    """(z_ablated - z over every position [batch, pos, head, d_head], weight [batch, pos] of the positions ablated)."""
    width = z.shape[1]
    if every_position(positions):
        weight = (torch.arange(width)[None] <= mb.final_positions[:, None]).float()
        return (-z if how == "zero" else means_at({0: mean}, 0, width)[:width].float()[None] - z), weight
    ps = mb.positions(positions)
    valid = torch.ones_like(ps.positions, dtype=torch.bool) if ps.mask is None else ps.mask.bool()
    rows = torch.arange(len(mb))[:, None].expand_as(ps.positions)
    weight = torch.zeros(len(mb), width)
    weight[rows[valid], ps.positions[valid]] = 1.0
    if how == "zero":
        return -z, weight
    target = torch.zeros_like(z)
    m = mean.float() if mean.ndim == 3 else mean.float()[None]  # [n, head, d_head]
    target[rows[valid], ps.positions[valid]] = m[None].expand(len(mb), *m.shape)[valid]
    return target - z, weight


def head_attribution(
    model: HookedModel,
    batch: PromptBatch,
    how: Literal["zero", "mean"] = "zero",
    *,
    metric: "str | Metric" = "logit_diff_to_mean",
    positions: HeadPositions = "all",
    mean_batch: PromptBatch | None = None,
    mean_over: Literal["position", "tokens"] = "position",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    qk_fix: bool = False,
    graddrop: bool = False,
) -> HeadScanResult:
    """Attribution patching: ``effect[l, h, b] ~= sum_pos w_b(pos) dM_b/dz[l](pos, h) . (z_abl - z)(pos, h)``
    (a first-order Taylor expansion of the metric ``M`` around the clean run; ``w``: 1 at the
    positions ablated, every real token for ``positions="all"``, else ``batch.positions(spec)``),
    from one forward and one backward pass per minibatch; ``z_abl`` as in ``head_ablation_scan``.

    Gradients are total derivatives (through every later layer), taken with ``tap_hook``
    (a zero that requires grad added to ``hook_z``), so frozen parameters are fine and no
    parameter ``.grad`` is touched. ``per_prompt`` holds clean + estimated effect. The metric (a
    registry name) must be differentiable: e.g. ``"logit_diff_to_mean"``, ``"logit_diff"``,
    ``"gold_prob"``; rates (``"first_token"``, ``"label"``) have zero gradient and are refused.

    AtP* (Kramar et al. 2024; ``methods.atp_star`` gives the formulas): ``qk_fix=True`` replaces
    the first-order term of every later block's attention pattern, along the direct residual path
    from the ablated head, by the exact softmax of the recomputed queries and keys,
    ``sum_{m>l} [G_m . (A_m(r_m + dz W_O) - A_m(r_m)) - first-order term]``, at the cost of one
    attention-pattern computation per (ablated head, later block); ``graddrop=True`` adds ``L``
    backward passes, pass ``k`` with the gradient through block ``k``'s outputs dropped, and
    returns ``sign(c) * sum_k |c_k| / (L - 1)`` (a magnitude score: rank by ``|effect|``).
    ``method`` is ``"attribution"``, ``"attribution+qk"``, ``"attribution+graddrop"`` or
    ``"attribution+qk+graddrop"``.
    """
    for name, flag in (("qk_fix", qk_fix), ("graddrop", graddrop)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if graddrop and model.cfg.n_layers < 2:
        raise ValueError("graddrop=True needs a model with at least 2 layers (it averages over L - 1 dropped layers)")
    check_batch(batch)
    check_choice(how, ("zero", "mean"), "how")
    check_head_positions(batch, positions)
    m = scan_metric(metric, batch)
    if m.is_rate:
        raise ValueError(f"metric={metric!r} is a rate and has zero gradient; attribution needs a smooth metric "
                         "such as 'logit_diff_to_mean', 'logit_diff' or 'gold_prob'")
    layers = scan_layers(model, layers)
    means = None
    if how == "mean":
        means = head_means(model, batch if mean_batch is None else mean_batch, layers, positions=positions,
                           mean_over=mean_over, width=batch.tokens.shape[1], batch_size=batch_size)
    attr = torch.zeros(len(layers), model.cfg.n_heads, len(batch))
    clean = torch.zeros(len(batch))
    if qk_fix or graddrop:
        from icl_circuits.methods.atp_star import atp_star_minibatch

        key = "graddrop" if graddrop else "qk"
        for rows, mb in minibatches(batch, batch_size):
            def target(l: int, z: Tensor, mb: PromptBatch = mb) -> tuple[Tensor, Tensor]:
                return _target(mb, positions, z, how, None if means is None else means[l])

            c, est = atp_star_minibatch(model, mb, m, layers, target, qk_fix=qk_fix, graddrop=graddrop)
            clean[rows] = c
            attr[:, :, rows] = est[key]
        method = "attribution" + ("+qk" if qk_fix else "") + ("+graddrop" if graddrop else "")
        return scan_result(clean + attr, clean, layers, metric, how, positions, method, batch, model,
                           {"mean_over": mean_over, "qk_fix": qk_fix, "graddrop": graddrop})
    for rows, mb in minibatches(batch, batch_size):
        store: list = []
        taps = [Intervention(Site(l, "z"), "tap", store=store) for l in layers]
        with torch.enable_grad():
            logits = final_logits_with_grad(model, mb, taps).float()
            values = m.from_logits(logits, mb)
            grads = torch.autograd.grad(values.sum(), [tap for _, tap in store])
        clean[rows] = values.detach().cpu()
        for i, (l, (z, _), g) in enumerate(zip(layers, store, grads)):
            z, g = z.float().cpu(), g.float().cpu()
            delta, weight = _target(mb, positions, z, how, None if means is None else means[l])
            attr[i, :, rows] = torch.einsum("bphd,bphd,bp->hb", g, delta, weight)
    return scan_result(clean + attr, clean, layers, metric, how, positions, "attribution", batch, model,
                       {"mean_over": mean_over})


#: ``scan_agreement`` warns when fewer than this fraction of the exact scan's top-k heads (by absolute
#: effect) are among the estimate's top k (with k = 5: when it finds fewer than 3 of the 5 heads that
#: matter most), or when the single head that matters most is not among them.
TOP_K_MIN_OVERLAP = 0.6


@dataclass(frozen=True)
class ScanAgreement(Result):
    """How well an estimate (``approx``) ranks heads like an exact scan (``scan_agreement``).

    spearman, spearman_p, pearson: correlations of the mean effects over every (layer, head);
    top_k, top_k_overlap: ``|top_k(exact) & top_k(approx)| / k`` by absolute effect; missed: heads
    ``[layer, head]`` of the exact top k the estimate misses, most important first;
    top_head_missed, disagree (overlap < min_overlap or top head missed); how, positions, metric
    and ``ablation`` (a phrase): the ablation both scans used. ``agreement["spearman"]`` and
    ``agreement[f"top{k}_overlap"]`` read fields by name, as from a dict (``to_dict()``).
    """

    spearman: float
    spearman_p: float
    pearson: float
    top_k: int
    top_k_overlap: float
    min_overlap: float
    top_head_missed: bool
    disagree: bool
    missed: list
    how: str
    positions: str
    metric: str
    ablation: str
    exact_method: str = ""
    approx_method: str = ""

    def to_dict(self) -> dict:
        """Every field, plus ``top{k}_overlap`` (e.g. ``top5_overlap``), as a JSON-ready dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_info"}
        out[f"top{self.top_k}_overlap"] = self.top_k_overlap
        return out

    def __getitem__(self, key: str):
        d = self.to_dict()
        if key not in d:
            raise KeyError(f"{key!r}: no such field of ScanAgreement (fields: {', '.join(d)})")
        return d[key]

    def to_dataframe(self) -> pd.DataFrame:
        """One row: the agreement numbers and the ablation they belong to (``missed`` as text)."""
        d = self.to_dict()
        d["missed"] = str(d["missed"])
        return pd.DataFrame([d])


def scan_agreement(exact: HeadScanResult, approx: HeadScanResult, k: int = 5, *,
                   min_overlap: float = TOP_K_MIN_OVERLAP) -> ScanAgreement:
    """How well ``approx`` (e.g. attribution) ranks heads like ``exact``, for the ablation both used.

    Returns a ``ScanAgreement``: Spearman and Pearson correlations of the mean effects over every (layer, head), the
    overlap ``|top_k(exact) & top_k(approx)| / k`` of the top-``k`` heads by absolute effect
    (``top{k}_overlap``, also ``top_k_overlap``), the heads of the exact top k that the estimate
    misses (``missed``, [layer, head], most important first), and the ablation the figures belong
    to (``how``, ``positions``, ``metric`` and a phrase, ``ablation``): agreement depends on it (a
    first-order estimate tracks a small perturbation, mean ablation, better than zero ablation).
    ``disagree`` is True, and a ``UserWarning`` says so, when the overlap is below ``min_overlap``
    (default ``TOP_K_MIN_OVERLAP`` = 0.6) or the exact scan's most important head is missed
    (``top_head_missed``). Scans of different ablations, positions or metrics are refused.
    """
    import warnings

    from scipy.stats import pearsonr, spearmanr

    if exact.effect.shape != approx.effect.shape:
        raise ValueError(f"scans have different shapes: {tuple(exact.effect.shape)} vs {tuple(approx.effect.shape)}")
    for attr in ("how", "positions", "metric"):
        if getattr(exact, attr) != getattr(approx, attr):
            raise ValueError(f"scans differ in {attr} ({getattr(exact, attr)!r} vs {getattr(approx, attr)!r}): "
                             "agreement is only meaningful for the same ablation of the same metric")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    a, b = exact.effect.flatten().numpy(), approx.effect.flatten().numpy()
    rho, p = spearmanr(a, b)
    r = pearsonr(a, b)[0] if a.std() > 0 and b.std() > 0 else float("nan")
    k = int(min(k, a.size))
    order_a = np.argsort(-np.abs(a), kind="stable")[:k]
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    overlap = sum(int(i) in top_b for i in order_a) / k
    nh = exact.n_heads
    missed = [[exact.layers[int(i) // nh], int(i) % nh] for i in order_a if int(i) not in top_b]
    ablation = f"{exact.how} ablation, {exact.positions} positions, {exact.metric}"
    top_missed = int(order_a[0]) not in top_b
    out = ScanAgreement(
        spearman=float(rho), spearman_p=float(p), pearson=float(r), top_k=k, top_k_overlap=overlap,
        min_overlap=float(min_overlap), top_head_missed=top_missed, disagree=overlap < min_overlap or top_missed,
        missed=missed, how=exact.how, positions=exact.positions, metric=exact.metric, ablation=ablation,
        exact_method=exact.method, approx_method=approx.method, **stamp_of(exact),
    )
    if out.disagree:
        why = f"top-{k} overlap {overlap:.2f}" + (f" < {min_overlap}" if overlap < min_overlap else "")
        if top_missed:
            why += f", the most important head {missed[0]} is not in its top {k}"
        warnings.warn(f"{approx.method} and the {exact.method} scan disagree on the top {k} heads ({ablation}): "
                      f"{why}; missed (layer, head): {missed}", UserWarning, stacklevel=2)
    return out
