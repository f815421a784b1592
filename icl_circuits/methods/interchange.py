"""Multi-position interchange and necessity tests (Cheng & Zhang 2026, METHODS.md section 5).

*Interchange*: record the residual stream of task-A (source) prompts at the input of block ``l``
(``blocks.{l}.hook_resid_pre``) at a set of positions, average it per position over the source
prompts, write it over the same positions (matched by role) of every task-B (target) prompt and
read the prediction at the target's final position. The prediction is scored as *transfer*
(first token of A(query)), *preserve* (first token of B(query), the gold token) or *neither*.

*Necessity*: corrupt a position set (Gaussian noise, zero or mean ablation) at block ``l`` and
measure the accuracy drop. Published: the query position is necessary, no single demo position
is; a single demo position transfers nothing while all demo tokens together transfer the task.

Position sets are ``PromptBatch.positions(spec)`` (``icl_circuits.core.positions``); paired
source/target batches come from ``icl_circuits.core.pairs.paired_batches``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import ablate_hook, check_layer, noise_hook, replace_hook, resid_name
from icl_circuits.core.runner import read_resid, run_final_logits
from icl_circuits.core.metrics import wilson
from icl_circuits.core.models import model_info
from icl_circuits.core.pairs import _as_task, task_answer_tokens
from icl_circuits.core.positions import _check_batch, masked_mean
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result
from icl_circuits.core.tasks import Task
from icl_circuits.methods.vectors import SweepResult

OUTCOMES = ("transfer", "preserve", "neither")
Control = Literal["none", "norm_matched_noise", "shuffled_positions"]
_CACHE_BYTES = 2**30  # prefix reuse when the cached residuals fit in 1 GiB


# ----------------------------------------------------------------------------- shared machinery
def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    out = [check_layer(model, l, arg="layers") for l in layers]
    if not out:
        raise ValueError("layers must name at least one layer")
    return out


def _layer_sweep(model, batch, layers, hook_for, reduce, *, batch_size: int, progress: bool, desc: str) -> Tensor:
    """``reduce(final logits)`` with ``hook_for(i, rows)`` at ``resid_name(layers[i])``, per layer.
    The clean residual at block l is cached once so each patched run resumes at block l."""
    n = model.cfg.n_layers
    early = [l for l in layers if l < n]
    size = len(early) * len(batch) * batch.tokens.shape[1] * model.cfg.d_model * 4
    cached = read_resid(model, batch, None, early, batch_size=batch_size) if early and size <= _CACHE_BYTES else None
    out = []
    for i, l in enumerate(tqdm(layers, desc=desc, disable=not progress)):
        make = lambda rows, mb, i=i, l=l: [(resid_name(model, l), hook_for(i, rows))]  # noqa: E731
        if l < n and cached is not None:
            logits = run_final_logits(model, batch, make, batch_size=batch_size, start_at_layer=l,
                                      resid=cached[early.index(l)])
        else:
            logits = run_final_logits(model, batch, make, batch_size=batch_size)
        out.append(reduce(logits))
    return torch.stack(out)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def _rates(hits: Bool[Tensor, "layer batch"], valid: Bool[Tensor, "batch"]) -> tuple[list, Tensor]:
    n = int(valid.sum())
    ks = (hits & valid).sum(-1)
    return [wilson(int(k), n) for k in ks.reshape(-1)], ks


# ----------------------------------------------------------------------------- interchange
@dataclass(frozen=True)
class InterchangeResult(Result):
    """Transfer / preserve / neither rates per layer of one interchange.

    rates, low, high, counts: [outcome=3, layer] (outcomes ``OUTCOMES``; Wilson 95% intervals over
    the ``valid`` prompts); predictions: [layer, batch] argmax token at the target's final position;
    clean_predictions: [batch] without intervention; transfer_tokens / preserve_tokens: [batch]
    first tokens of A(query) / B(query) (-1: undefined); valid: [batch] prompts that are scored.
    ``transfer`` and ``preserve`` are not exclusive when A(query) and B(query) share their first
    token (only possible with ``exclude_ambiguous=False``); ``neither`` is "not transfer and not
    preserve". baseline: the three rates of the clean target run. logits: [layer, batch, d_vocab]
    (only with ``return_logits=True``).
    """

    rates: Float[Tensor, "outcome layer"]
    low: Float[Tensor, "outcome layer"]
    high: Float[Tensor, "outcome layer"]
    counts: Int[Tensor, "outcome layer"]
    predictions: Int[Tensor, "layer batch"]
    clean_predictions: Int[Tensor, "batch"]
    transfer_tokens: Int[Tensor, "batch"]
    preserve_tokens: Int[Tensor, "batch"]
    valid: Bool[Tensor, "batch"]
    layers: list[int]
    positions: list[str]
    position_set: str
    source_task: str
    target_task: str
    model_name: str
    n_demos: int
    per_prompt_source: bool = False
    control: str = "none"
    baseline: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    logits: Tensor | None = None

    def rate(self, outcome: str = "transfer") -> Float[Tensor, "layer"]:
        """The rate of one outcome per layer."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        return self.rates[OUTCOMES.index(outcome)]

    @property
    def n(self) -> int:
        return int(self.valid.sum())

    def to_dataframe(self) -> pd.DataFrame:
        rows = [
            {"layer": l, "outcome": o, "value": float(self.rates[j, i]), "low": float(self.low[j, i]),
             "high": float(self.high[j, i]), "k": int(self.counts[j, i]), "n": self.n,
             "clean": self.baseline.get(o), "position_set": self.position_set, "source_task": self.source_task,
             "target_task": self.target_task, "control": self.control, "model": self.model_name}
            for j, o in enumerate(OUTCOMES) for i, l in enumerate(self.layers)
        ]
        return pd.DataFrame(rows)


def _spec_name(spec: str | Sequence[str]) -> str:
    return spec if isinstance(spec, str) else "+".join(map(str, spec))


def interchange(
    model: Any,
    source_batch: PromptBatch,
    target_batch: PromptBatch,
    positions: str | Sequence[str] = "answers",
    layers: Sequence[int] | None = None,
    source_task: Task | str | None = None,
    target_task: Task | str | None = None,
    *,
    per_prompt_source: bool = False,
    control: Control = "none",
    exclude_ambiguous: bool = True,
    return_logits: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> InterchangeResult:
    """Cheng & Zhang's interchange at each layer in ``layers`` (default 0..n_layers-1; block inputs).

    v_l[j] = mean over source prompts s of resid_l[s, pos_s[s, j]] (``per_prompt_source=True``:
    source prompt i's own value, paired with target prompt i); then every target prompt t runs with
    resid_l[t, pos_t[t, j]] <- v_l[j] for all columns j of the position set, and its prediction
    argmax logits[t, final_t] is scored against A(query_t) (``source_task``, default the source
    batch's task) and B(query_t) (``target_task``, default the target's gold answer tokens).

    Prompts where A is undefined on the query, or (``exclude_ambiguous``) where A and B give the
    same first token, are not scored (``valid``). Controls (``control``): ``"norm_matched_noise"``
    replaces every source vector by a random direction (seeded) of the same norm;
    ``"shuffled_positions"`` assigns the source columns to a derangement of the target columns.
    For a third-task control pass another task's batch as ``source_batch`` and the task of interest
    as ``source_task`` (or use ``interchange_controls``).

    Multi-token spans of different lengths (``PositionSet.mask``): columns are matched by role name,
    the mean v_l[j] is over the source prompts that have column j, and resid_l[t, pos_t[t, j]] is
    written only where target t has column j and some source prompt had it (per prompt: where
    both prompt i's have it); ``meta["written_fraction"]`` is the share of target entries written.
    """
    _check_batch(source_batch, "source_batch")
    _check_batch(target_batch, "target_batch")
    if source_batch.n_demos != target_batch.n_demos:
        raise ValueError(f"source and target batches must have the same number of demos, got "
                         f"{source_batch.n_demos} and {target_batch.n_demos}")
    if source_batch.template != target_batch.template:
        raise ValueError(f"source and target batches must use the same template, got "
                         f"{source_batch.template} and {target_batch.template}")
    if per_prompt_source and len(source_batch) != len(target_batch):
        raise ValueError(f"per_prompt_source=True pairs source prompt i with target prompt i: the batches "
                         f"must be the same size, got {len(source_batch)} and {len(target_batch)}")
    if control not in ("none", "norm_matched_noise", "shuffled_positions"):
        raise ValueError(f"control must be 'none', 'norm_matched_noise' or 'shuffled_positions', got {control!r}")
    layers = _layers(model, layers)
    src, tgt = source_batch.positions(positions), target_batch.positions(positions)
    names = tgt.names

    values = read_resid(model, source_batch, src.positions, layers, batch_size=batch_size)  # [layer, src, n, d]
    src_ok = src.mask
    if src.names != names:  # spans of different longest length in the two batches: match columns by role
        cols = [src.names.index(n) if n in src.names else -1 for n in names]
        idx = torch.tensor([max(c, 0) for c in cols], dtype=torch.long)
        values, src_ok = values[:, :, idx], src.mask[:, idx] & torch.tensor([c >= 0 for c in cols])
    if per_prompt_source:
        has_src = src_ok
    else:
        mean, has = masked_mean(values, src_ok)
        values, has_src = mean[:, None], has[None]
    if control == "norm_matched_noise":
        g = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
        values = g / g.norm(dim=-1, keepdim=True) * values.norm(dim=-1, keepdim=True)
    elif control == "shuffled_positions":
        if len(names) < 2:
            raise ValueError("control='shuffled_positions' needs a position set of at least 2 positions")
        perm = torch.as_tensor(_derangement(len(names), np.random.default_rng(seed)))
        values, has_src = values[:, :, perm], has_src[:, perm]
    written = tgt.mask & has_src  # [target, n]: where a target position receives a source value
    if not written.any():
        raise ValueError(f"positions {_spec_name(positions)!r}: no target position has a source value "
                         "(the source prompts have no token in any column the target prompts have)")
    write_mask = None if written.all() else written

    a_task = source_task if source_task is not None else source_batch.task
    ta = task_answer_tokens(target_batch, a_task)
    tb = target_batch.answer_tokens.clone() if target_task is None else task_answer_tokens(target_batch, target_task)
    valid = (ta >= 0) & (tb >= 0)
    if exclude_ambiguous:
        valid &= ta != tb
    if not valid.any():
        raise ValueError(
            f"no target prompt can be scored: source task {_as_task(a_task).name!r} is undefined on every query "
            "or gives the same first token as the target task (use paired_batches, or exclude_ambiguous=False)"
        )

    def hook_for(i: int, rows: slice):
        v = values[i][rows] if per_prompt_source else values[i, 0]
        return replace_hook(tgt.positions[rows], v, mask=None if write_mask is None else write_mask[rows])

    kept: list[Tensor] = []

    def reduce(logits: Tensor) -> Tensor:
        if return_logits:
            kept.append(logits)
        return logits.argmax(-1)

    preds = _layer_sweep(model, target_batch, layers, hook_for, reduce, batch_size=batch_size, progress=progress,
                         desc=f"interchange {_spec_name(positions)}")
    clean = run_final_logits(model, target_batch, batch_size=batch_size).argmax(-1)

    def outcome_hits(p: Tensor) -> Tensor:
        t, s = p == ta, p == tb
        return torch.stack([t, s, ~(t | s)])

    stats, counts = _rates(outcome_hits(preds), valid)
    clean_stats, _ = _rates(outcome_hits(clean[None])[:, 0], valid)
    shape = (len(OUTCOMES), len(layers))
    return InterchangeResult(
        model_info=model_info(model),
        rates=torch.tensor([r.value for r in stats]).reshape(shape),
        low=torch.tensor([r.low for r in stats]).reshape(shape),
        high=torch.tensor([r.high for r in stats]).reshape(shape),
        counts=counts.long(), predictions=preds.long(), clean_predictions=clean.long(),
        transfer_tokens=ta, preserve_tokens=tb, valid=valid, layers=layers, positions=names,
        position_set=_spec_name(positions), source_task=_as_task(a_task).name,
        target_task=target_batch.task if target_task is None else _as_task(target_task).name,
        model_name=str(model.cfg.model_name), n_demos=target_batch.n_demos,
        per_prompt_source=per_prompt_source, control=control,
        baseline={o: r.value for o, r in zip(OUTCOMES, clean_stats)},
        meta={"source_prompts_task": source_batch.task, "n_source": len(source_batch),
              "n_target": len(target_batch), "exclude_ambiguous": exclude_ambiguous, "seed": seed,
              "written_fraction": float(written.float().mean())},
        logits=torch.stack(kept) if return_logits else None,
    )


def interchange_controls(
    model: Any, source_batch: PromptBatch, target_batch: PromptBatch, third_batch: PromptBatch,
    positions: str | Sequence[str] = "demo_tokens", layers: Sequence[int] | None = None, *,
    seed: int = 0, **kwargs: Any,
) -> dict[str, InterchangeResult]:
    """The interchange and its three controls, all scored against the source batch's task:
    ``"third_task"`` (``third_batch``, another task's prompts, as the source), ``"norm_matched_noise"``
    and ``"shuffled_positions"`` (skipped for a single position)."""
    out = {"interchange": interchange(model, source_batch, target_batch, positions, layers, seed=seed, **kwargs)}
    out["third_task"] = interchange(model, third_batch, target_batch, positions, layers,
                                    source_task=source_batch.task, seed=seed, **kwargs)
    out["norm_matched_noise"] = interchange(model, source_batch, target_batch, positions, layers,
                                            control="norm_matched_noise", seed=seed, **kwargs)
    if len(out["interchange"].positions) > 1:
        out["shuffled_positions"] = interchange(model, source_batch, target_batch, positions, layers,
                                                control="shuffled_positions", seed=seed, **kwargs)
    return out


# ----------------------------------------------------------------------------- necessity
@dataclass(frozen=True)
class NecessityResult(SweepResult):
    """Accuracy per layer with a position set corrupted (a ``SweepResult``: values, per_prompt,
    Wilson low/high, baseline = clean accuracy) plus the position names; ``drop = baseline - values``."""

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
    model: Any,
    batch: PromptBatch,
    positions: str | Sequence[str] = "query",
    layers: Sequence[int] | None = None,
    how: Literal["noise", "zero", "mean"] = "noise",
    noise_scale: float = 1.0,
    relative: bool = True,
    seed: int = 0,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> NecessityResult:
    """Accuracy (argmax = gold first token) with the residual at the input of block l corrupted at
    ``positions``, for each l in ``layers`` (default 0..n_layers-1).

    ``how="noise"``: h <- h + noise_scale * s * eps, eps ~ N(0, I), with s = ||h|| / sqrt(d_model)
    (``relative=True``: noise_scale 1 is noise as large as the activation) or s = 1
    (``relative=False``: noise_scale is the absolute standard deviation; Cheng & Zhang added
    unscaled Gaussian noise). ``"zero"``: h <- 0. ``"mean"``: h <- mean over the batch's prompts of
    the activation at that position (same column, same layer). For multi-token spans of different
    lengths only the valid entries of the set are corrupted and the mean is over the prompts valid
    in that column (``PositionSet.mask``).
    """
    _check_batch(batch)
    if how not in ("noise", "zero", "mean"):
        raise ValueError(f"how must be 'noise', 'zero' or 'mean', got {how!r}")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be non-negative, got {noise_scale!r}")
    layers = _layers(model, layers)
    ps = batch.positions(positions)
    pos, names = ps.positions, ps.names
    means = masked_mean(read_resid(model, batch, pos, layers, batch_size=batch_size), ps.mask)[0] if how == "mean" else None

    def hook_for(i: int, rows: slice):
        m = ps.mask[rows] if ps.ragged else None
        if how == "noise":
            return noise_hook(pos[rows], noise_scale, seed=seed * 1_000_003 + 7919 * i + rows.start, relative=relative,
                              mask=m)
        return ablate_hook(pos[rows], how, None if means is None else means[i], mask=m)

    hits = _layer_sweep(model, batch, layers, hook_for, lambda lg: lg.argmax(-1) == batch.answer_tokens,
                        batch_size=batch_size, progress=progress, desc=f"necessity {_spec_name(positions)}")
    clean = run_final_logits(model, batch, batch_size=batch_size).argmax(-1) == batch.answer_tokens
    rates = [wilson(int(h.sum()), h.numel()) for h in hits]
    return NecessityResult(
        model_info=model_info(model),
        values=hits.float().mean(1), per_prompt=hits.float(), low=torch.tensor([r.low for r in rates]),
        high=torch.tensor([r.high for r in rates]), layers=layers, metric="accuracy", method=f"necessity:{how}",
        task=batch.task, model_name=str(model.cfg.model_name), baseline=float(clean.float().mean()),
        meta={"how": how, "noise_scale": noise_scale, "relative": relative, "seed": seed, "n_demos": batch.n_demos},
        positions=names, position_set=_spec_name(positions),
    )
