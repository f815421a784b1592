"""Multi-position interchange (Cheng & Zhang 2026, METHODS.md section 5).

Record the residual stream of task-A (source) prompts at the input of block ``l``
(``blocks.{l}.hook_resid_pre``) at a set of positions, average it per position over the source
prompts, write it over the same positions (matched by role) of every task-B (target) prompt and
read the prediction at the target's final position. The prediction is scored as *transfer*
(first token of A(query)), *preserve* (first token of B(query), the gold token) or *neither*.
Published: a single demo position transfers nothing while all demo tokens together transfer the
task. The necessity test (corrupt a position set) is ``icl_circuits.methods.necessity``.

Position sets are ``PromptBatch.positions(spec)`` (``icl_circuits.core.positions``); paired
source/target batches come from ``icl_circuits.core.pairs.paired_batches``. Each write is an
``Intervention(Site(l), "replace", ...)``; the runner (``core.runner.sweep_final_logits``) runs
every layer resumed at its block from one cached clean prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_circuits.core.checks import check_layer
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import wilson
from icl_circuits.core.pairs import task_answer_tokens
from icl_circuits.core.positions import check_batch, masked_mean
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp, stamp_of
from icl_circuits.core.runner import read_resid, sweep_final_logits
from icl_circuits.core.tasks import Task, get_task
from icl_circuits.core.types import HookedModel

__all__ = ["OUTCOMES", "InterchangeResult", "InterchangeControlsResult", "interchange", "interchange_controls"]

OUTCOMES = ("transfer", "preserve", "neither")
Control = Literal["none", "norm_matched_noise", "shuffled_positions"]


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def _rates(hits: Bool[Tensor, "... batch"], valid: Bool[Tensor, "batch"]) -> tuple[list, Tensor]:
    n = int(valid.sum())
    ks = (hits & valid).sum(-1)
    return [wilson(int(k), n) for k in ks.reshape(-1)], ks


# ----------------------------------------------------------------------------- the result
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
    (only with ``return_logits=True``). Stamped (``core.results.stamp``) with the model and the
    target batch. Scoring is first-token.
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
             "target_task": self.target_task, "control": self.control, "model": self.model}
            for j, o in enumerate(OUTCOMES) for i, l in enumerate(self.layers)
        ]
        return pd.DataFrame(rows)



# ----------------------------------------------------------------------------- interchange
def interchange(
    model: HookedModel,
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
    ``positions``: a position spec of ``PromptBatch.positions`` ("answers", "answer_-1",
    "demo_tokens", "query", unions with "+"...).

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
    check_batch(source_batch, "source_batch")
    check_batch(target_batch, "target_batch")
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
    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, l, arg="layers") for l in layers]
    if not layers:
        raise ValueError("layers must name at least one layer")
    spec_name = positions if isinstance(positions, str) else "+".join(map(str, positions))
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
        raise ValueError(f"positions {spec_name!r}: no target position has a source value "
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
            f"no target prompt can be scored: source task {get_task(a_task).name!r} is undefined on every query "
            "or gives the same first token as the target task (use paired_batches, or exclude_ambiguous=False)"
        )

    def write(layer: int, rows: slice, mb: PromptBatch) -> list[Intervention]:
        i = layers.index(layer)
        v = values[i][rows] if per_prompt_source else values[i, 0]
        return [Intervention(Site(layer), "replace", positions=tgt.positions[rows], value=v,
                             mask=None if write_mask is None else write_mask[rows])]

    reduce = None if return_logits else (lambda logits, mb: logits.argmax(-1))
    out, clean = sweep_final_logits(model, target_batch, write, layers, reduce, batch_size=batch_size,
                                    progress=progress, desc=f"interchange {spec_name}")
    logits = out if return_logits else None
    preds = out.argmax(-1) if return_logits else out
    clean = clean.argmax(-1) if return_logits else clean

    def outcome_hits(p: Tensor) -> Tensor:
        t, s = p == ta, p == tb
        return torch.stack([t, s, ~(t | s)])

    stats, counts = _rates(outcome_hits(preds), valid)
    clean_stats, _ = _rates(outcome_hits(clean[None])[:, 0], valid)
    shape = (len(OUTCOMES), len(layers))
    return InterchangeResult(
        rates=torch.tensor([r.value for r in stats]).reshape(shape),
        low=torch.tensor([r.low for r in stats]).reshape(shape),
        high=torch.tensor([r.high for r in stats]).reshape(shape),
        counts=counts.long(), predictions=preds.long(), clean_predictions=clean.long(),
        transfer_tokens=ta, preserve_tokens=tb, valid=valid, layers=layers, positions=names,
        position_set=spec_name, source_task=get_task(a_task).name,
        target_task=target_batch.task if target_task is None else get_task(target_task).name,
        n_demos=target_batch.n_demos,
        per_prompt_source=per_prompt_source, control=control,
        baseline={o: r.value for o, r in zip(OUTCOMES, clean_stats)},
        meta={"source_prompts_task": source_batch.task, "n_source": len(source_batch),
              "n_target": len(target_batch), "exclude_ambiguous": exclude_ambiguous, "seed": seed,
              "written_fraction": float(written.float().mean())},
        logits=logits, **stamp(model, target_batch, source_task=source_batch.task, n_source=len(source_batch)),
    )


# ----------------------------------------------------------------------------- controls
@dataclass(frozen=True)
class InterchangeControlsResult(Result):
    """An interchange and its controls (``interchange_controls``), all on the same target prompts
    and scored against the same source task.

    runs: the run names (``"interchange"``, ``"third_task"``, ``"norm_matched_noise"`` and, for
    two or more positions, ``"shuffled_positions"``); rates, low, high, counts: [run, outcome=3,
    layer]; predictions: [run, layer, batch]; clean_predictions, transfer_tokens, preserve_tokens,
    valid: [batch] (shared: the target prompts and the scoring are the same in every run);
    run_meta: each run's ``InterchangeResult.meta``. ``result[name]`` (or ``result.run(name)``)
    gives one run as an ``InterchangeResult``; iterating gives the run names, ``items()`` the
    (name, result) pairs, in order.
    """

    runs: list[str]
    rates: Float[Tensor, "run outcome layer"]
    low: Float[Tensor, "run outcome layer"]
    high: Float[Tensor, "run outcome layer"]
    counts: Int[Tensor, "run outcome layer"]
    predictions: Int[Tensor, "run layer batch"]
    clean_predictions: Int[Tensor, "batch"]
    transfer_tokens: Int[Tensor, "batch"]
    preserve_tokens: Int[Tensor, "batch"]
    valid: Bool[Tensor, "batch"]
    layers: list[int]
    positions: list[str]
    position_set: str
    source_task: str
    target_task: str
    third_task: str
    n_demos: int
    baseline: dict = field(default_factory=dict)
    run_meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.valid.sum())

    def run(self, name: str) -> InterchangeResult:
        """One run as an ``InterchangeResult``."""
        if name not in self.runs:
            raise KeyError(f"no run {name!r}; runs: {', '.join(self.runs)}")
        i = self.runs.index(name)
        return InterchangeResult(
            rates=self.rates[i], low=self.low[i], high=self.high[i],
            counts=self.counts[i], predictions=self.predictions[i], clean_predictions=self.clean_predictions,
            transfer_tokens=self.transfer_tokens, preserve_tokens=self.preserve_tokens, valid=self.valid,
            layers=self.layers, positions=self.positions, position_set=self.position_set,
            source_task=self.source_task, target_task=self.target_task, n_demos=self.n_demos,
            control=name if name in ("norm_matched_noise", "shuffled_positions") else "none",
            baseline=self.baseline, meta=self.run_meta.get(name, {}), **stamp_of(self),
        )

    __getitem__ = run

    def __iter__(self) -> Iterator[str]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, name: object) -> bool:
        return name in self.runs

    def keys(self) -> list[str]:
        return list(self.runs)

    def items(self) -> list[tuple[str, InterchangeResult]]:
        return [(r, self.run(r)) for r in self.runs]

    def to_dataframe(self) -> pd.DataFrame:
        """The runs' ``InterchangeResult.to_dataframe()`` rows, with a ``run`` column."""
        return pd.concat([r.to_dataframe().assign(run=name) for name, r in self.items()], ignore_index=True)


def interchange_controls(
    model: HookedModel, source_batch: PromptBatch, target_batch: PromptBatch, third_batch: PromptBatch,
    positions: str | Sequence[str] = "demo_tokens", layers: Sequence[int] | None = None, *,
    seed: int = 0, **kwargs: Any,
) -> InterchangeControlsResult:
    """The interchange and its three controls, all scored against the source batch's task:
    ``"third_task"`` (``third_batch``, another task's prompts, as the source), ``"norm_matched_noise"``
    and ``"shuffled_positions"`` (skipped for a single position). ``kwargs`` go to ``interchange``
    (not ``return_logits``, ``source_task``, ``control`` or ``per_prompt_source``)."""
    for k in ("return_logits", "source_task", "control", "per_prompt_source"):
        if k in kwargs:
            raise TypeError(f"interchange_controls does not take {k!r}")
    out = {"interchange": interchange(model, source_batch, target_batch, positions, layers, seed=seed, **kwargs)}
    out["third_task"] = interchange(model, third_batch, target_batch, positions, layers,
                                    source_task=source_batch.task, seed=seed, **kwargs)
    out["norm_matched_noise"] = interchange(model, source_batch, target_batch, positions, layers,
                                            control="norm_matched_noise", seed=seed, **kwargs)
    if len(out["interchange"].positions) > 1:
        out["shuffled_positions"] = interchange(model, source_batch, target_batch, positions, layers,
                                                control="shuffled_positions", seed=seed, **kwargs)
    r0 = out["interchange"]
    stack = lambda name: torch.stack([getattr(r, name) for r in out.values()])  # noqa: E731
    return InterchangeControlsResult(
        runs=list(out), rates=stack("rates"), low=stack("low"), high=stack("high"),
        counts=stack("counts"), predictions=stack("predictions"), clean_predictions=r0.clean_predictions,
        transfer_tokens=r0.transfer_tokens, preserve_tokens=r0.preserve_tokens, valid=r0.valid, layers=r0.layers,
        positions=r0.positions, position_set=r0.position_set, source_task=r0.source_task,
        target_task=r0.target_task, third_task=third_batch.task, n_demos=r0.n_demos,
        baseline=r0.baseline, run_meta={k: r.meta for k, r in out.items()}, **stamp_of(r0),
    )
