"""Key heads of an injected task vector (Yang, Cho, Ding and Inoue 2025, METHODS.md section 7):
rank the heads of the blocks after the injection by the direct logit attribution (DLA) of their
share of the vector's effect (``icl_circuits.methods.ov_circuits``: exact change or OV
approximation), then ablate the top-k heads, and k random heads, with the vector injected.

Ablation writes ``hook_z`` of a head (its output before ``W_O``): zeros (``how="zero"``) or its
mean over ``mean_batch`` with the vector injected (``how="mean"``: ``head_ablation.head_means``), at every
position (``ablate_positions="all"``: the mean at each absolute position) or at the positions of a
``PromptBatch.positions`` spec (``"final"``, ``"answers"``...: the mean per column).
Every run goes through the runner as ``Intervention`` specs: the injection at ``Site(layer)``
(``ov_circuits.injection``) and one ``Site(l, "z", h)`` spec per ablated head
(``heads.head_ablation_hooks``).
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

from icl_circuits.core.metrics import correct
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import run_final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.head_ablation import HeadPositions, check_choice, check_head_positions, check_heads, head_ablation_hooks, head_means, positions_label
from icl_circuits.core.positions import check_batch
from icl_circuits.methods.ov_circuits import (
    LNMode, OVResult, PositionSpec, injected_vector, injection, ov_contributions, spec_name,
)
from icl_circuits.methods.vectors import TaskVector

__all__ = ["key_heads", "KeyHeadsResult", "key_head_ablation", "KeyHeadAblationResult"]


@dataclass(frozen=True)
class KeyHeadsResult(Result):
    """Heads ranked by the DLA of their contribution to the injected vector's effect.

    scores: [layer, head] mean DLA over prompts; per_prompt: [layer, head, batch];
    ranking: [[layer, head], ...] best first; source: "ov" | "exact"; by: "signed" | "abs".
    """

    scores: Float[Tensor, "layer head"]
    per_prompt: Float[Tensor, "layer head batch"]
    ranking: list
    layers: list
    injection_layer: int
    source: str
    by: str
    task: str
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        rank = {tuple(lh): r for r, lh in enumerate(self.ranking)}
        H = self.scores.shape[1]
        return pd.DataFrame([{"layer": l, "head": h, "score": float(self.scores[i, h]), "rank": rank[(l, h)],
                              "source": self.source, "task": self.task, "model": self.model}
                             for i, l in enumerate(self.layers) for h in range(H)])


def key_heads(
    model: HookedModel,
    batch: PromptBatch,
    tv: TaskVector | Float[Tensor, "d_model"],
    layer: int | None = None,
    *,
    source: Literal["ov", "exact"] = "ov",
    by: Literal["signed", "abs"] = "signed",
    ov: OVResult | None = None,
    positions: PositionSpec = "final",
    ln: LNMode = "difference",
    batch_size: int = 64,
) -> KeyHeadsResult:
    """Rank the heads of blocks >= ``layer`` by the mean DLA (module docstring) of their OV
    approximation (``source="ov"``) or exact change (``"exact"``) toward the gold label; highest
    first (``by="abs"``: largest |mean DLA| first)."""
    check_choice(source, ("ov", "exact"), "source")
    check_choice(by, ("signed", "abs"), "by")
    _, layer, _ = injected_vector(model, tv, layer)
    if ov is None:
        ov = ov_contributions(model, batch, tv, layer, positions=positions, ln=ln, keep_head_vectors=False,
                              batch_size=batch_size)
    per = ov.ov_dla if source == "ov" else ov.exact_dla
    return KeyHeadsResult(
        scores=per.mean(-1), per_prompt=per, ranking=[list(p) for p in ov.ranking(source, by)], layers=ov.layers,
        injection_layer=ov.injection_layer, source=source, by=by, task=ov.task,
        meta={"ln": ov.ln, "positions": ov.positions}, **stamp(model, batch),
    )


@dataclass(frozen=True)
class KeyHeadAblationResult(Result):
    """Accuracy with the vector injected and the top-k key heads, or k random heads, ablated.

    top: [k] accuracy with the top-k heads ablated; random: [k, draw] with k random heads (drawn
    from every head of blocks >= injection layer); top_per_prompt: [k, batch]; vector_accuracy:
    with the vector and no ablation; no_vector_accuracy: neither.
    """

    top: Float[Tensor, "k"]
    random: Float[Tensor, "k draw"]
    top_per_prompt: Float[Tensor, "k batch"]
    ks: list
    top_heads: list
    random_heads: list
    vector_accuracy: float
    no_vector_accuracy: float
    injection_layer: int
    how: str
    ablate_positions: str
    seed: int
    task: str
    meta: dict = field(default_factory=dict)

    @property
    def top_drop(self) -> Tensor:
        return self.vector_accuracy - self.top

    @property
    def random_drop(self) -> Tensor:
        return self.vector_accuracy - self.random

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for i, k in enumerate(self.ks):
            rows.append({"k": k, "kind": "top", "draw": 0, "accuracy": float(self.top[i]), "drop": float(self.top_drop[i])})
            for j in range(self.random.shape[1]):
                rows.append({"k": k, "kind": "random", "draw": j, "accuracy": float(self.random[i, j]),
                             "drop": float(self.random_drop[i, j])})
        df = pd.DataFrame(rows)
        df["task"], df["model"], df["how"] = self.task, self.model, self.how
        return df


def key_head_ablation(
    model: HookedModel,
    batch: PromptBatch,
    tv: TaskVector | Float[Tensor, "d_model"],
    layer: int | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4),
    how: Literal["zero", "mean"] = "zero",
    ranking: KeyHeadsResult | Sequence[Sequence[int]] | None = None,
    n_random: int = 10,
    seed: int = 0,
    positions: PositionSpec = "final",
    ablate_positions: HeadPositions = "all",
    mean_batch: PromptBatch | None = None,
    restrict_to_labels: bool = False,
    batch_size: int = 64,
    progress: bool = True,
) -> KeyHeadAblationResult:
    """With the vector injected at ``layer`` (at ``positions``), ablate (zero or mean) at
    ``ablate_positions`` ("all" or None: every position; else a ``PromptBatch.positions`` spec such
    as "final" or "answers") the top-k heads of ``ranking`` (default: ``key_heads`` on this batch) and, ``n_random`` times,
    k heads drawn uniformly without replacement from every head of blocks >= ``layer``
    (``numpy.random.default_rng([seed, k])``), for each k in ``ks``. Mean ablation uses the mean
    of hook_z over ``mean_batch`` (default: ``batch``) *with the vector injected*."""
    check_batch(batch)
    check_choice(how, ("zero", "mean"), "how")
    check_head_positions(batch, ablate_positions)
    _, layer, _ = injected_vector(model, tv, layer)
    pool = [(l, h) for l in range(layer, model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one number of heads to ablate")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(pool):
            raise ValueError(f"ks: each k must be an integer in [1, {len(pool)}] (heads in blocks >= {layer}), got {k!r}")
    if n_random < 1:
        raise ValueError(f"n_random must be a positive integer, got {n_random!r}")
    if ranking is None:
        ranking = key_heads(model, batch, tv, layer, positions=positions, batch_size=batch_size)
    order = check_heads(model, ranking.ranking if isinstance(ranking, KeyHeadsResult) else ranking, allow_empty=False,
                        arg="ranking")
    if len(order) < max(ks):
        raise ValueError(f"ranking has {len(order)} heads, fewer than k={max(ks)}")
    cand = batch.candidate_tokens() if restrict_to_labels else None
    if restrict_to_labels and cand is None:
        raise ValueError(f"restrict_to_labels=True but task {batch.task!r} has no label words")
    inject = injection(model, tv, layer, positions)
    means = None
    if how == "mean":
        means = head_means(model, batch if mean_batch is None else mean_batch, range(layer, model.cfg.n_layers),
                           positions=ablate_positions, width=batch.tokens.shape[1], make_hooks=inject,
                           batch_size=batch_size)

    def acc(heads: Sequence[tuple[int, int]] | None) -> Tensor:
        make = inject if heads is None else head_ablation_hooks(heads, how, means, ablate_positions, inject)
        return correct(run_final_logits(model, batch, make, batch_size=batch_size), batch.answer_tokens, cand).float()

    no_vec = correct(run_final_logits(model, batch, batch_size=batch_size), batch.answer_tokens, cand).float()
    with_vec = acc(None)
    top, top_pp, rand, rand_heads = [], [], [], []
    bar = tqdm(total=len(ks) * (1 + n_random), disable=not progress, desc="key heads vs random")
    for k in ks:
        pp = acc(order[:k])
        top.append(pp.mean()), top_pp.append(pp)
        rng = np.random.default_rng([seed, int(k)])
        draws, accs = [], []
        bar.update()
        for _ in range(n_random):
            pick = [pool[i] for i in sorted(rng.choice(len(pool), size=int(k), replace=False))]
            draws.append([list(p) for p in pick])
            accs.append(acc(pick).mean())
            bar.update()
        rand.append(torch.stack(accs)), rand_heads.append(draws)
    bar.close()
    return KeyHeadAblationResult(
        top=torch.stack(top), random=torch.stack(rand), top_per_prompt=torch.stack(top_pp), ks=[int(k) for k in ks],
        top_heads=[list(p) for p in order[: max(ks)]], random_heads=rand_heads, vector_accuracy=float(with_vec.mean()),
        no_vector_accuracy=float(no_vec.mean()), injection_layer=layer, how=how, ablate_positions=positions_label(ablate_positions),
        seed=seed, task=batch.task, **stamp(model, batch),
        meta={"n": len(batch), "restrict_to_labels": restrict_to_labels, "positions": spec_name(positions)},
    )
