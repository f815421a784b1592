"""Activation patching that reuses the shared prefix and batches many cells per forward.

``patch_grid``: activation patching of the residual stream (``blocks.{l}.hook_resid_pre``) from a
clean into a corrupted batch, one cell per (layer, position), the metric read at the final
position. The numbers are those of TransformerLens's ``patching.get_act_patch_resid_pre``. Cell
(l, p) resumes at block l from the corrupted run's cached residual (``runner.cache_resid``) with
the clean activation written at p, and cells share staggered forwards (``runner.run_staggered``);
with a key/value cache only the suffix from p on is replayed. The layer sweep is
``methods.sweeps.layer_sweep``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.runner import TOKENS_PER_FORWARD, UNEMBED_ELEMENTS, Entry, cache_resid, run_staggered, unembed_rows
from icl_circuits.core.checks import check_layer, check_positions
from icl_circuits.core.metrics import get_metric
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.types import HookedModel
from icl_circuits.core.runner.backend import backend_for


# ----------------------------------------------------------------------------- metrics


# ----------------------------------------------------------------------------- the engine


# ----------------------------------------------------------------------------- layer sweep


# ----------------------------------------------------------------------------- patch grid
@dataclass(frozen=True)
class PatchGridResult(Result):
    """Activation patching of the residual stream (resid_pre), clean -> corrupted.

    values: [layer, pos] metric with ``blocks.{l}.hook_resid_pre`` at column j copied from the
    clean run; clean_value / corrupted_value: the metric of the unpatched runs; position_names
    (e.g. "3: ':'" or "answer_2"); positions: the column indices (None for per-prompt positions).
    """

    values: Float[Tensor, "layer pos"]
    layers: list[int]
    position_names: list[str]
    positions: list[int] | None
    clean_value: float
    corrupted_value: float
    metric: str
    task: str
    meta: dict = field(default_factory=dict)

    @property
    def normalized(self) -> Float[Tensor, "layer pos"]:
        """(value - corrupted) / (clean - corrupted): 1 = clean behaviour restored."""
        return (self.values - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def to_dataframe(self) -> pd.DataFrame:
        L, P = self.values.shape
        return pd.DataFrame({
            "layer": np.repeat(self.layers, P), "column": np.tile(np.arange(P), L),
            "position": np.tile(self.positions if self.positions is not None else [-1] * P, L),
            "position_name": np.tile(self.position_names, L), "value": self.values.flatten().tolist(),
            "normalized": self.normalized.flatten().tolist(), "metric": self.metric, "task": self.task,
            "model": self.model,
        })


GridMetric = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class _Prompts:
    """What patch_grid needs of a batch: a PromptBatch, or raw tokens (final position = last column)."""

    tokens: Tensor
    final_positions: Tensor
    answer_tokens: Tensor | None
    batch: PromptBatch | None
    task: str
    variant: str


def _prompts(x: PromptBatch | Tensor, arg: str) -> _Prompts:
    if isinstance(x, PromptBatch):
        return _Prompts(x.tokens, x.final_positions, x.answer_tokens, x, x.task, x.variant)
    if isinstance(x, Tensor) and x.ndim == 2 and not x.is_floating_point():
        B, P = x.shape
        return _Prompts(x.cpu(), torch.full((B,), P - 1), None, None, "custom", "tokens")
    raise TypeError(f"{arg} must be a PromptBatch or an integer token tensor [batch, pos], got {type(x).__name__}")


def _grid_metric(metric: str | GridMetric, clean: _Prompts, corrupted: _Prompts) -> tuple[str, GridMetric]:
    """``(name, fn(final logits of the corrupted rows) -> scalar)``: the mean over prompts of the
    registry's per-prompt metric, scored against the clean batch's answers (``contrast``: clean
    gold logit minus corrupted gold logit)."""
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if clean.batch is None or corrupted.batch is None:
        get_metric(metric)  # an unknown name is the clearer error
        raise ValueError(f"metric={metric!r} needs gold answers: pass PromptBatches, or a callable metric with raw tokens")
    m = get_metric(metric, clean.batch)
    if m.source not in ("final_logits", "paired_logits"):
        raise ValueError(f"metric must be scored on final-position logits; {m.name!r} is computed from {m.source}")
    return m.name, lambda lg: m.from_logits(lg, clean.batch, corrupted.batch).mean()


def _grid_positions(
    positions: Sequence[int] | str | Tensor | None, prompts: _Prompts, tokenizer: Any
) -> tuple[Tensor, list[str], list[int] | None]:
    """Per-prompt positions [batch, n], their names, and the shared column indices (or None)."""
    B, P = prompts.tokens.shape
    spec = isinstance(positions, str) or (isinstance(positions, (list, tuple)) and positions
                                          and all(isinstance(p, str) for p in positions))
    if spec or (isinstance(positions, Tensor) and positions.ndim == 2):
        if prompts.batch is None:
            raise ValueError("per-prompt positions (a spec or a [batch, n] tensor) need PromptBatches, not raw tokens")
        if spec:
            ps = prompts.batch.positions(positions)  # the one position language (PromptBatch.positions)
            if ps.mask is not None and not bool(ps.mask.all()):
                raise ValueError(f"positions={positions!r} has spans of different lengths across prompts; "
                                 "patch_grid needs one valid position per prompt and column")
            return ps.positions, ps.names, None
        pos = check_positions(prompts.batch, positions)
        return pos, [f"column_{j}" for j in range(pos.shape[1])], None
    cols = list(range(P)) if positions is None else [int(p) for p in positions]
    if not cols:
        raise ValueError("positions is empty")
    bad = [p for p in cols if not 0 <= p < P]
    if bad:
        raise ValueError(f"positions {bad} are outside the prompts, whose positions are 0..{P - 1}")
    dec = (lambda t: f"{tokenizer.decode([t])!r}") if tokenizer is not None else str
    names = [f"{p}: {dec(int(prompts.tokens[0, p]))}" for p in cols]
    return torch.tensor(cols)[None].expand(B, -1), names, cols


def _suffix_replay_ok(model: HookedModel, res: dict, logits: Tensor, kv: list, layer: int, final: Tensor,
                      tokens: Tensor) -> bool:
    """Whether resuming at block ``layer`` from position p with cached keys/values reproduces the run."""
    p0 = int(final.min()) // 2
    if p0 == 0:
        return True
    n = model.cfg.n_layers
    past = [None] * layer + [(kv[b][0][:, :p0], kv[b][1][:, :p0]) for b in range(layer, n)]
    replay = run_staggered(model, [Entry(layer, res[layer][:, p0:], final - p0, past=past, tokens=tokens)])
    return bool((replay - logits).abs().max() <= 1e-4 * (1.0 + logits.abs().max()))


@torch.no_grad()
def patch_grid(
    model: HookedModel,
    clean_batch: PromptBatch | Int[Tensor, "batch pos"],
    corrupted_batch: PromptBatch | Int[Tensor, "batch pos"],
    metric: str | GridMetric = "gold_prob",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | str | Tensor | None = None,
    *,
    skip_identical: bool = True,
    suffix_only: bool = True,
    tokens_per_forward: int = TOKENS_PER_FORWARD,
    progress: bool = False,
) -> PatchGridResult:
    """Activation patching of ``blocks.{l}.hook_resid_pre`` from clean into corrupted, per (layer, position).

    values[l, j] = metric(final-position logits of the corrupted batch, with the residual at the
    input of block l at position j of every prompt replaced by the clean run's). This is the
    quantity of TransformerLens's ``get_act_patch_resid_pre(model, corrupted_tokens,
    clean_cache, m)`` with ``m(logits) = metric(logits[arange(batch), final_positions])``.

    Batches: PromptBatches, or raw token tensors (then the final position is the last column and
    the metric must be a callable); both must have identical token shapes. ``metric``: a callable
    on the final-position logits [batch, d_vocab] (the corrupted batch's rows, read at its
    ``final_positions``) returning a scalar, or a registry name (``core.metrics``), averaged over
    prompts and scored against the clean batch's answers, and recorded by its registry name:
    "gold_prob" (mean P(clean gold)), "first_token", "contrast" (clean gold logit minus corrupted
    gold logit; called "logit_diff" here before the one registry), "logit_diff" (clean gold minus
    the best other candidate). ``positions``: column
    indices shared by all prompts (default: every column, as TL), a ``PromptBatch.positions`` spec
    ("answers", "final", "answer_-1", unions with "+"...: each prompt's own positions), or a
    [batch, n] tensor. ``layers``: 0..n_layers-1.

    Speed, without changing the numbers: each cell's run starts at block l from the cached
    corrupted residual (the patched residual is its input, no hook needed) and, under causal
    attention, only at position p: the positions before p are those of the corrupted run, so
    their keys and values are taken from it (``suffix_only``; checked once against the unpatched
    run, with full-width runs as the fallback). A prompt whose clean and corrupted residuals are
    *exactly* equal at (l, p), or whose final position precedes p, is not rerun (its logits are
    the unpatched corrupted ones; ``skip_identical=False`` reruns them). Only final positions are
    unembedded, and many cells share one staggered forward (``tokens_per_forward`` positions).
    """
    clean, corr = _prompts(clean_batch, "clean_batch"), _prompts(corrupted_batch, "corrupted_batch")
    if clean.tokens.shape[0] == 0:
        raise ValueError("clean_batch is empty")
    if clean.tokens.shape != corr.tokens.shape:
        raise ValueError(
            f"clean_batch and corrupted_batch must have identical token shapes (a cell copies one position "
            f"between aligned prompts), got {tuple(clean.tokens.shape)} and {tuple(corr.tokens.shape)}"
        )
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else [check_layer(model, l, allow_final=False, arg="layers") for l in layers]
    if not layers:
        raise ValueError("layers is empty")
    name, fn = _grid_metric(metric, clean, corr)
    pos, names, cols = _grid_positions(positions, corr, getattr(model, "tokenizer", None))
    final = corr.final_positions
    c_res, c_logits, _ = cache_resid(model, clean.tokens, layers, clean.final_positions)
    kv = None
    suffix_only = suffix_only and backend_for(model).supports_suffix_replay
    if suffix_only:
        try:
            x_res, x_logits, kv = cache_resid(model, corr.tokens, layers, final, record_kv=True)
            suffix_only = _suffix_replay_ok(model, x_res, x_logits, kv, layers[0], final, corr.tokens)
        except Exception:  # a model whose attention does not take a key/value cache: full-width runs
            suffix_only = False
    if not suffix_only:
        x_res, x_logits, _ = cache_resid(model, corr.tokens, layers, final)
    clean_value, corrupted_value = float(fn(c_logits)), float(fn(x_logits))
    B, J = pos.shape
    dev = x_res[layers[0]].device
    rows_all = torch.arange(B, device=dev)[:, None]
    values = torch.full((len(layers), J), corrupted_value)
    # work units: (layer index, column, offset p0, rows); a unit runs positions p0.. of its rows
    units: dict[int, list[tuple[int, int, Tensor]]] = {}
    pending: dict[tuple[int, int], list] = {}
    n_skipped = 0
    for i, l in enumerate(layers):
        if skip_identical:
            differ = (c_res[l][rows_all, pos.to(dev)] != x_res[l][rows_all, pos.to(dev)]).any(-1).cpu()
        else:
            differ = torch.ones(B, J, dtype=torch.bool)
        differ &= pos <= final[:, None]
        for j in range(J):
            r = differ[:, j].nonzero()[:, 0]
            if not len(r):
                n_skipped += 1
                continue
            starts = pos[r, j] if suffix_only else torch.zeros_like(r)
            groups = [(int(p0), r[starts == p0]) for p0 in starts.unique()]
            pending[(i, j)] = [[], len(groups)]
            for p0, rr in groups:
                units.setdefault(p0, []).append((i, j, rr))
    n_forward, buf = 0, []  # buf: (unit, final residuals) awaiting one batched unembedding

    def flush() -> None:  # TL copies W_U on every unembedding call: do few, large ones
        logits = unembed_rows(model, torch.cat([f for _, f in buf]))
        for (i, j, r), lg in zip([u for u, _ in buf], torch.split(logits, [len(f) for _, f in buf])):
            cell = pending[(i, j)]
            cell[0].append((r, lg))
            cell[1] -= 1
            if cell[1] == 0:
                full = x_logits.clone()
                for rr, ll in cell[0]:
                    full[rr] = ll
                values[i, j] = float(fn(full))
                del pending[(i, j)]
        buf.clear()

    bar = tqdm(total=sum(len(u) for u in units.values()), desc="patch grid", disable=not progress)
    for p0, us in sorted(units.items()):
        w = int(final[torch.cat([u[2] for u in us])].max()) + 1 - p0
        k = 0
        while k < len(us):
            chunk, rows_in = [], 0
            while k < len(us) and (not chunk or (rows_in + len(us[k][2])) * w <= tokens_per_forward):
                chunk.append(us[k])
                rows_in += len(us[k][2])
                k += 1
            ents = []
            for i, j, r in chunk:
                l, rd, p = layers[i], r.to(dev), pos[r, j].to(dev)
                x = x_res[l][rd, p0 : p0 + w].clone()
                x[torch.arange(len(r), device=dev), p - p0] = c_res[l][rd, p]
                past = None if not p0 else [None] * l + [(kv[b][0][rd, :p0], kv[b][1][rd, :p0]) for b in range(l, n)]
                ents.append(Entry(l, x, final[r] - p0, past=past, tokens=corr.tokens[r, : p0 + w]))
            out = run_staggered(model, ents, unembed=False)
            buf += list(zip(chunk, torch.split(out, [len(c[2]) for c in chunk])))
            n_forward += 1
            bar.update(len(chunk))
            if sum(len(f) for _, f in buf) * model.cfg.d_vocab >= UNEMBED_ELEMENTS:
                flush()
    if buf:
        flush()
    bar.close()
    return PatchGridResult(
        values=values, layers=layers, position_names=names, positions=cols, clean_value=clean_value,
        corrupted_value=corrupted_value, metric=name, task=corr.task, **stamp(model, corr.batch),
        meta={"n_cells": len(layers) * J, "n_cells_skipped": n_skipped, "n_forwards": n_forward, "suffix_only": suffix_only,
              "clean_variant": clean.variant, "corrupted_variant": corr.variant},
    )
