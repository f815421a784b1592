"""Necessity tests (Cheng & Zhang 2026, METHODS.md section 5): corrupt a position set of the
residual stream at the input of block ``l`` (Gaussian noise, zero or mean ablation) and measure
the accuracy drop. Published: the query position is necessary, no single demo position is.

Position sets are ``PromptBatch.positions(spec)``; each corruption is an
``Intervention(Site(l), "noise" | "zero" | "mean", ...)``, run by the runner
(``core.runner.sweep_final_logits``: every layer resumed at its block from one cached clean
prefix). Accuracy is the registry's ``first_token`` metric (argmax over the vocabulary at the
final position is the gold answer's first token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.checks import check_layer
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import get_metric, wilson
from icl_circuits.core.positions import check_batch, masked_mean
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import stamp
from icl_circuits.core.runner import read_resid, sweep_final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.sweeps import SweepResult

__all__ = ["NecessityResult", "necessity"]

Corruption = Literal["noise", "zero", "mean"]


@dataclass(frozen=True)
class NecessityResult(SweepResult):
    """Accuracy per layer with a position set corrupted (a ``SweepResult``: values, per_prompt,
    Wilson low/high, baseline = clean accuracy) plus the position names; ``drop = baseline - values``.
    Stamped (``core.results.stamp``) with the model and the batch."""

    positions: list = field(default_factory=list)
    position_set: str = ""

    @property
    def drop(self) -> Float[Tensor, "layer"]:
        return self.baseline - self.values

    def to_dataframe(self) -> pd.DataFrame:
        df = super().to_dataframe()
        df["drop"] = self.drop.tolist()
        df["drop_low"], df["drop_high"] = (self.baseline - self.high).tolist(), (self.baseline - self.low).tolist()
        df["position_set"] = self.position_set
        return df


def necessity(
    model: HookedModel,
    batch: PromptBatch,
    positions: str | Sequence[str] = "query",
    layers: Sequence[int] | None = None,
    how: Corruption = "noise",
    noise_scale: float = 1.0,
    relative: bool = True,
    seed: int = 0,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> NecessityResult:
    """Accuracy (argmax = gold first token) with the residual at the input of block l corrupted at
    ``positions`` (a ``PromptBatch.positions`` spec), for each l in ``layers`` (default 0..n_layers-1).

    ``how="noise"``: h <- h + noise_scale * s * eps, eps ~ N(0, I), with s = ||h|| / sqrt(d_model)
    (``relative=True``: noise_scale 1 is noise as large as the activation) or s = 1
    (``relative=False``: noise_scale is the absolute standard deviation; Cheng & Zhang added
    unscaled Gaussian noise). The noise of layer ``layers[i]`` on the minibatch starting at prompt
    r is drawn with seed ``seed * 1_000_003 + 7919 * i + r``. ``"zero"``: h <- 0. ``"mean"``:
    h <- mean over the batch's prompts of the activation at that position (same column, same
    layer). For multi-token spans of different lengths only the valid entries of the set are
    corrupted and the mean is over the prompts valid in that column (``PositionSet.mask``).
    """
    check_batch(batch)
    if how not in ("noise", "zero", "mean"):
        raise ValueError(f"how must be 'noise', 'zero' or 'mean', got {how!r}")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be non-negative, got {noise_scale!r}")
    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, l, arg="layers") for l in layers]
    if not layers:
        raise ValueError("layers must name at least one layer")
    spec_name = positions if isinstance(positions, str) else "+".join(map(str, positions))
    ps = batch.positions(positions)
    pos, names = ps.positions, ps.names
    means = masked_mean(read_resid(model, batch, pos, layers, batch_size=batch_size), ps.mask)[0] if how == "mean" else None

    def corrupt(layer: int, rows: slice, mb: PromptBatch) -> list[Intervention]:
        i = layers.index(layer)
        m = ps.mask[rows] if ps.ragged else None
        if how == "noise":
            return [Intervention(Site(layer), "noise", positions=pos[rows], scale=noise_scale, relative=relative,
                                 seed=seed * 1_000_003 + 7919 * i + rows.start, mask=m)]
        return [Intervention(Site(layer), how, positions=pos[rows], value=None if means is None else means[i], mask=m)]

    first_token = get_metric("first_token", batch)
    hits, clean = sweep_final_logits(model, batch, corrupt, layers, first_token.from_logits, batch_size=batch_size,
                                     progress=progress, desc=f"necessity {spec_name}")
    rates = [wilson(int(h.sum()), h.numel()) for h in hits]
    return NecessityResult(
        values=hits.float().mean(1), per_prompt=hits.float(), low=torch.tensor([r.low for r in rates]),
        high=torch.tensor([r.high for r in rates]), layers=layers, metric=first_token.name, method=f"necessity:{how}",
        task=batch.task, baseline=float(clean.float().mean()),
        meta={"how": how, "noise_scale": noise_scale, "relative": relative, "seed": seed, "n_demos": batch.n_demos},
        positions=names, position_set=spec_name, **stamp(model, batch),
    )
