"""Ablation of a dPCA subspace in the residual stream (METHODS.md section 9, last item).

``ablate_subspace`` projects a marginalization's decoder subspace (from ``dpca_by_layer``'s
``DPCALayerResult`` or one ``numpy_dpca.DPCAResult``) out of the residual stream at chosen
positions (``batch.positions(spec)``) and layers, and measures the accuracy at the query against
random subspaces of the same dimension. The projection is an
``Intervention(Site(l), "project_out", value=basis, centre=mean)`` per layer, run by
``runner.run_final_logits`` resumed from the cached clean prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.checks import check_layer
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import Rate, correct, get_metric, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import MakeHooks, read_resid, run_final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.dpca.analysis import DPCALayerResult
from icl_circuits.methods.dpca.numpy_dpca import DPCAResult

__all__ = ["SubspaceAblationResult", "ablate_subspace", "subspace_ablation_hooks"]

#: The registry metrics a subspace ablation records (``correct`` and ``label_correct``).
METRICS = ("first_token", "label")

@dataclass(frozen=True)
class SubspaceAblationResult(Result):
    """Accuracy at the query with a subspace projected out of the residual stream.

    correct, label_correct: [condition, batch] 1.0 where the argmax over the whole vocabulary
    (resp. over the prompt's label words; the same as ``correct`` for tasks without label words) is
    the gold token. conditions: "clean", "ablated", "random_0", ... (random subspaces of the same
    dimension per layer). n_axes: the subspace dimension at each layer of ``layers``.
    """

    correct: Float[Tensor, "condition batch"]
    label_correct: Float[Tensor, "condition batch"]
    conditions: list[str]
    marginalization: str
    layers: list[int]
    n_axes: list[int]
    positions: str
    centre: bool
    task: str
    n_demos: int
    seed: int
    meta: dict = field(default_factory=dict)

    def rates(self, metric: str = "label") -> dict[str, Rate]:
        """Wilson-interval rates of ``metric`` (``"first_token"``: ``correct``; ``"label"``:
        ``label_correct``; or an alias of either) for "clean", "ablated" and "random" (all random
        draws pooled)."""
        name = get_metric(metric).name
        if name not in METRICS:
            raise ValueError(f"metric must be 'first_token' or 'label', got {metric!r}")
        c = self.correct if name == "first_token" else self.label_correct
        out = {}
        for name in ("clean", "ablated"):
            row = c[self.conditions.index(name)]
            out[name] = wilson(int(row.sum()), row.numel())
        rand = c[[i for i, n in enumerate(self.conditions) if n.startswith("random_")]]
        if rand.numel():
            out["random"] = wilson(int(rand.sum()), rand.numel())
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy: metric, condition (clean / ablated / random pooled), value, low, high, n."""
        rows = [{"metric": m, "condition": k, "value": r.value, "low": r.low, "high": r.high, "n": r.n,
                 "marginalization": self.marginalization, "layers": ",".join(map(str, self.layers)),
                 "positions": self.positions, "task": self.task, "model": self.model}
                for m in METRICS for k, r in self.rates(m).items()]
        return pd.DataFrame(rows)


def subspace_ablation_hooks(
    model: HookedModel, positions: Int[Tensor, "batch n"], bases: dict[int, tuple[Tensor, Tensor | None]]
) -> MakeHooks:
    """``make_hooks`` for ``run_final_logits``/``read_activations``: at every layer l of ``bases``
    (input of block l; ``n_layers``: the final residual), at ``positions``,
    ``h <- h - Q Q^T (h - centre)`` with ``Q`` an orthonormal basis of ``bases[l][0]`` ([d_model, k])
    and ``centre = bases[l][1]`` (None: plain projection): one
    ``Intervention(Site(l, "resid_pre"), "project_out", value=B, centre=c)`` per layer."""
    for l, (B, _) in bases.items():
        check_layer(model, l, arg="bases")
        if B.ndim != 2 or B.shape[0] != model.cfg.d_model:
            raise ValueError(f"basis for layer {l} must have shape [d_model={model.cfg.d_model}, k], "
                             f"got {tuple(B.shape)}")
    return lambda rows, mb: [Intervention(Site(l, "resid_pre"), "project_out", positions=positions[rows], value=B,
                                          centre=c)
                             for l, (B, c) in bases.items() if B.shape[1] > 0]


def _ablation_bases(model: HookedModel, fit: DPCALayerResult | DPCAResult, marginalization: str, layers: list[int],
                    n_axes: int | None, centre: bool) -> dict[int, tuple[Tensor, Tensor | None]]:
    out = {}
    for l in layers:
        if isinstance(fit, DPCALayerResult):
            B, c = fit.axes(l, marginalization), fit.means[fit.layers.index(l)]
        elif isinstance(fit, DPCAResult):
            if marginalization not in fit.decoders:
                raise ValueError(f"marginalization must be one of {fit.marginalization_names}, got {marginalization!r}")
            B, c = torch.tensor(fit.decoders[marginalization]), torch.tensor(fit.mean)
        else:
            raise TypeError(f"dpca must be a DPCALayerResult or a DPCAResult, got {type(fit).__name__}")
        if B.shape[0] != model.cfg.d_model:
            raise ValueError(f"the dPCA axes have width {B.shape[0]} but the model's d_model is {model.cfg.d_model}")
        out[l] = (B[:, :n_axes].float(), c.float() if centre else None)
    return out


def ablate_subspace(
    model: HookedModel, batch: PromptBatch, dpca: DPCALayerResult | DPCAResult, marginalization: str,
    layers: Sequence[int], positions: str | Sequence[str] | None = None, *, n_axes: int | None = None,
    n_random: int = 5, centre: bool = True, seed: int | None = None, batch_size: int = 64, progress: bool = True,
) -> SubspaceAblationResult:
    """Project ``marginalization``'s dPCA decoder subspace out of the residual stream and measure
    the accuracy at the query, against ``n_random`` random subspaces of the same dimension.

    At the input of every block l in ``layers`` (all hooked in the same run), at
    ``batch.positions(positions)`` (any single-token spec, e.g. "answers", "separators",
    "answer_-1", "query"; default: where the states were read, else "answer"):
    ``h <- h - Q Q^T (h - m)`` with ``Q`` the first ``n_axes`` (default all) decoder axes of layer
    l's fit (one ``DPCAResult``: the same axes at every layer) and ``m`` the dPCA mean
    (``centre=True``: the subspace coordinate is set to that of the mean condition, a mean-ablation
    restricted to the subspace; ``centre=False``: set to zero). Random controls: Gaussian bases
    from ``numpy.random.default_rng([seed, r, l])`` (``seed`` default: the batch's seed), same
    centre. Use prompts drawn with a seed other than the fit's to measure on held-out prompts.
    """
    layers = [check_layer(model, l, arg="layers") for l in layers]
    if n_axes is not None and (isinstance(n_axes, bool) or not isinstance(n_axes, int) or n_axes < 1):
        raise ValueError(f"n_axes must be None or an int >= 1, got {n_axes!r}")
    if not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random must be an int >= 0, got {n_random!r}")
    positions = positions or (dpca.position_kind if isinstance(dpca, DPCALayerResult) else "answer")
    ps = batch.positions(positions)
    if ps.ragged:
        raise ValueError(f"positions {positions!r} has columns some prompts lack (multi-token spans of different "
                         "lengths); the projection needs one position per column in every prompt, e.g. 'answers'")
    seed = batch.seed if seed is None else seed
    bases = _ablation_bases(model, dpca, marginalization, layers, n_axes, centre)
    pos = ps.positions
    cand = batch.label_token_ids
    d = model.cfg.d_model

    start = min(layers) if layers and min(layers) < model.cfg.n_layers else None
    prefix = None if start is None else read_resid(model, batch, None, [start], batch_size=batch_size)[0]

    def run(b: dict) -> tuple[Tensor, Tensor]:  # clean prefix reused: resume at the first hooked block
        logits = run_final_logits(model, batch, subspace_ablation_hooks(model, pos, b) if b else None,
                                  batch_size=batch_size, start_at_layer=start, resid=prefix)
        ok = correct(logits, batch.answer_tokens).float()
        return ok, (ok if cand is None else correct(logits, batch.answer_tokens, cand).float())

    conds = ["clean", "ablated", *[f"random_{r}" for r in range(n_random)]]
    runs = [{}, bases]
    for r in range(n_random):
        runs.append({l: (torch.tensor(np.random.default_rng([seed, r, l]).normal(size=(d, B.shape[1])),
                                      dtype=torch.float32), c) for l, (B, c) in bases.items()})
    res = [run(b) for b in tqdm(runs, desc="subspace ablation", disable=not progress)]
    return SubspaceAblationResult(
        correct=torch.stack([a for a, _ in res]), label_correct=torch.stack([b for _, b in res]),
        conditions=conds, marginalization=marginalization, layers=layers,
        n_axes=[int(bases[l][0].shape[1]) for l in layers],
        positions=positions if isinstance(positions, str) else "+".join(positions), centre=centre,
        task=batch.task, n_demos=batch.n_demos, seed=seed,
        **stamp(model, batch), meta={"n_random": n_random, "random_seed": seed},
    )
