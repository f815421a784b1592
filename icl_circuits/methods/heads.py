"""Attention-head ablation: ablate any set of heads, scan every head, attribution patching.

- ``ablate_heads``: zero- or mean-ablate a list of heads (``blocks.{l}.attn.hook_z``, the head's
  output before ``W_O``) at every position or at the final one, and return the final logits.
- ``head_ablation_scan``: the effect of ablating each head alone, exactly. Heads are batched per
  forward: the clean residual at the input of block ``l`` is computed once, stacked ``C`` times
  (one copy per head of that layer), and the run resumes at block ``l`` (``start_at_layer``) with
  copy ``c`` ablating head ``c``.
- ``head_attribution``: attribution patching (a first-order Taylor expansion): one forward and
  one backward pass give, for every head, ``sum_pos dM/dz(pos) . (z_ablated(pos) - z(pos))``.

Metrics (per prompt, on the final-position logits): ``"accuracy"`` (argmax over the vocabulary
is the gold token), ``"logit_diff"`` (gold logit minus the mean logit of the prompt's other label
words for categorization tasks, minus the mean logit over the whole vocabulary otherwise: a
smooth margin, the same direction as the direct logit attribution in ``circuits``) and
``"gold_prob"`` (softmax probability of the gold token).

Mean ablation (``how="mean"``) writes the mean of ``hook_z`` over ``mean_batch`` (default: the
batch itself). With ``positions="final"`` it is the mean over the prompts' final positions. With
``positions="all"`` it is, by default (``mean_over="position"``), the mean at each absolute
position over the prompts that have a real token there (right padding: positions ``0..final``);
positions past the longest prompt of ``mean_batch`` get the mean over every real token, which is
also what ``mean_over="tokens"`` uses at every position. So mean-ablating a one-prompt batch with
its own mean changes nothing.
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

from icl_circuits.core.runner import gather_positions, minibatches, unembed_resid
from icl_circuits.core.interventions import check_head, resid_name, stacked_head_ablation_hook, tap_hook, z_name
from icl_circuits.core.runner import MakeHooks, read_activations, run_final_logits
from icl_circuits.core.metrics import correct, gold_probability, wilson
from icl_circuits.core.models import model_info
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result
from icl_circuits.core.runner import resume

Metric = Literal["accuracy", "logit_diff", "gold_prob"]
METRICS = ("accuracy", "logit_diff", "gold_prob")
HeadPositions = Literal["all", "final"]


# ----------------------------------------------------------------------------- checks and metrics
def _check_batch(batch: PromptBatch, arg: str = "batch") -> None:
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"{arg} must be a PromptBatch, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{arg} is empty")


def _check_choice(value: Any, choices: Sequence[str], arg: str) -> str:
    if value not in choices:
        raise ValueError(f"{arg} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_heads(model: Any, heads: Sequence[Sequence[int]], *, allow_empty: bool = True, arg: str = "heads") -> list[tuple[int, int]]:
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


def head_metric(logits: Float[Tensor, "batch d_vocab"], batch: PromptBatch, metric: Metric) -> Float[Tensor, "batch"]:
    """Per-prompt metric of final-position logits (see the module docstring for the definitions)."""
    _check_choice(metric, METRICS, "metric")
    gold = batch.answer_tokens.to(logits.device)
    if metric == "accuracy":
        return correct(logits, gold).float()
    if metric == "gold_prob":
        return gold_probability(logits, gold)
    g = logits.gather(1, gold[:, None])[:, 0]
    if batch.label_token_ids is not None:
        cand = batch.label_token_ids.to(logits.device)
        other = (cand != gold[:, None]).float()
        n = other.sum(1)
        mean_other = (logits.gather(1, cand) * other).sum(1) / n.clamp(min=1)
        return torch.where(n > 0, g - mean_other, g - logits.mean(1))
    return g - logits.mean(1)


def _positions_of(batch: PromptBatch, positions: HeadPositions) -> Tensor | None:
    _check_choice(positions, ("all", "final"), "positions")
    return None if positions == "all" else batch.positions("final").positions


# ----------------------------------------------------------------------------- mean activations
def head_means(
    model: Any,
    mean_batch: PromptBatch,
    layers: Sequence[int],
    *,
    positions: HeadPositions = "all",
    mean_over: Literal["position", "tokens"] = "position",
    width: int | None = None,
    make_hooks: MakeHooks | None = None,
    batch_size: int = 64,
) -> dict[int, Tensor]:
    """Mean of ``hook_z`` per layer: ``[head, d_head]`` (``positions="final"``) or
    ``[width, head, d_head]`` (``positions="all"``; see the module docstring), under the hooks
    ``make_hooks`` (e.g. an injected task vector)."""
    _check_batch(mean_batch, "mean_batch")
    _check_choice(mean_over, ("position", "tokens"), "mean_over")
    layers = sorted(set(layers))
    if not layers:
        return {}
    names = [z_name(l) for l in layers]
    if positions == "final":
        acts = read_activations(model, mean_batch, names, mean_batch.positions("final").positions,
                                batch_size=batch_size, make_hooks=make_hooks)
        return {l: acts[z_name(l)][:, 0].float().mean(0) for l in layers}
    _check_choice(positions, ("all", "final"), "positions")
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


def _mean_for(means: dict[int, Tensor] | None, layer: int, width: int) -> Tensor | None:
    if means is None:
        return None
    m = means[layer]
    if m.ndim == 3 and m.shape[0] < width:  # a batch wider than the one the means were computed on
        m = torch.cat([m, m[-1:].expand(width - m.shape[0], -1, -1)])
    return m


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


def _ablation_hooks(heads: Sequence[tuple[int, int]], how: str, means: dict | None, positions: HeadPositions,
                    extra: MakeHooks | None) -> MakeHooks:
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)

    def make(rows: slice, mb: PromptBatch):
        hooks = list(extra(rows, mb)) if extra is not None else []
        pos = _positions_of(mb, positions)
        for l, hs in by_layer.items():
            mean = _mean_for(means, l, mb.tokens.shape[1])
            hooks.append((z_name(l), stacked_head_ablation_hook([hs], pos, how, mean)))
        return hooks

    return make


def ablate_heads(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[Sequence[int]],
    how: Literal["zero", "mean"] = "zero",
    *,
    mean_batch: PromptBatch | None = None,
    positions: HeadPositions = "all",
    mean_over: Literal["position", "tokens"] = "position",
    metric: Metric = "accuracy",
    extra_hooks: MakeHooks | None = None,
    batch_size: int = 64,
) -> AblationResult:
    """Final logits of ``batch`` with every head in ``heads`` (``[(layer, head), ...]``) ablated
    together at ``positions`` (``"all"`` or ``"final"``).

    ``how="zero"`` sets ``z[l, h] = 0``; ``how="mean"`` sets it to its mean over ``mean_batch``
    (default: ``batch``) computed under the same ``extra_hooks`` (see the module docstring).
    ``extra_hooks(rows, sub_batch) -> [(name, fn)]`` are applied to every run (e.g. an injected
    task vector). An empty ``heads`` list is allowed: the clean run.
    """
    _check_batch(batch)
    _check_choice(how, ("zero", "mean"), "how")
    _check_choice(positions, ("all", "final"), "positions")
    _check_choice(metric, METRICS, "metric")
    hs = check_heads(model, heads)
    means = None
    if how == "mean" and hs:
        mb = batch if mean_batch is None else mean_batch
        means = head_means(model, mb, [l for l, _ in hs], positions=positions, mean_over=mean_over,
                           width=batch.tokens.shape[1], make_hooks=extra_hooks, batch_size=batch_size)
    clean_logits = run_final_logits(model, batch, extra_hooks, batch_size=batch_size)
    logits = run_final_logits(model, batch, _ablation_hooks(hs, how, means, positions, extra_hooks), batch_size=batch_size)
    return AblationResult(
        model_info=model_info(model),
        logits=logits, per_prompt=head_metric(logits, batch, metric), clean=head_metric(clean_logits, batch, metric),
        heads=[list(p) for p in hs], how=how, positions=positions, metric=metric, task=batch.task,
        model_name=str(model.cfg.model_name), meta={"mean_over": mean_over, "n_demos": batch.n_demos,
                                                    "variant": batch.variant},
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


def _scan_result(per_prompt: Tensor, clean: Tensor, layers: list[int], metric: str, how: str, positions: str,
                 method: str, batch: PromptBatch, model: Any, meta: dict) -> HeadScanResult:
    n = per_prompt.shape[-1]
    values = per_prompt.mean(-1)
    effect = (per_prompt - clean).mean(-1)
    if metric == "accuracy":
        rates = [[wilson(int(round(float(v.sum()))), n) for v in row] for row in per_prompt]
        low = torch.tensor([[r.low for r in row] for row in rates])
        high = torch.tensor([[r.high for r in row] for row in rates])
    else:
        sem = (per_prompt - clean).std(-1) / n**0.5 if n > 1 else torch.zeros_like(values)
        low, high = values - 1.96 * sem, values + 1.96 * sem
    return HeadScanResult(
        model_info=model_info(model),
        values=values, effect=effect, per_prompt=per_prompt, clean=clean, low=low, high=high, layers=layers,
        metric=metric, how=how, positions=positions, method=method, task=batch.task,
        model_name=str(model.cfg.model_name), meta={"n_demos": batch.n_demos, "variant": batch.variant, **meta},
    )


def _scan_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = model.cfg.n_layers
    out = list(range(n)) if layers is None else list(layers)
    if not out:
        raise ValueError("layers is empty: give at least one layer to scan")
    for l in out:
        if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or not 0 <= l < n:
            raise ValueError(f"layers: each layer must be an integer in [0, {n - 1}], got {l!r}")
    return [int(l) for l in out]


def head_ablation_scan(
    model: Any,
    batch: PromptBatch,
    how: Literal["zero", "mean"] = "zero",
    *,
    metric: Metric = "accuracy",
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
    metric of prompt ``b`` with ``z[l, h]`` zero- or mean-ablated at ``positions``.

    ``batched=True``: per minibatch of prompts, one clean forward caches the residual at the
    input of every scanned layer; for layer ``l`` the cache is stacked ``heads_per_forward``
    times (default: every head of the layer) and the run resumes at block ``l``, copy ``c``
    ablating head ``c``. ``batched=False``: one full forward per head (the naive reference).
    """
    _check_batch(batch)
    _check_choice(how, ("zero", "mean"), "how")
    _check_choice(positions, ("all", "final"), "positions")
    _check_choice(metric, METRICS, "metric")
    layers = _scan_layers(model, layers)
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
        clean = head_metric(run_final_logits(model, batch, batch_size=batch_size), batch, metric)
        bar = tqdm(total=len(layers) * n_heads, disable=not progress, desc="head scan (naive)")
        for i, l in enumerate(layers):
            for h in range(n_heads):
                logits = run_final_logits(model, batch, _ablation_hooks([(l, h)], how, means, positions, None),
                                          batch_size=batch_size)
                per_prompt[i, h] = head_metric(logits, batch, metric)
                bar.update()
        bar.close()
        return _scan_result(per_prompt, clean, layers, metric, how, positions, "exact", batch, model,
                            {"batched": False, "mean_over": mean_over})

    clean = torch.zeros(len(batch))
    n_mb = -(-len(batch) // batch_size)
    bar = tqdm(total=n_mb * len(layers), disable=not progress, desc="head scan")
    wanted = {resid_name(model, l) for l in layers}
    groups = [list(range(s, min(s + hpf, n_heads))) for s in range(0, n_heads, hpf)]
    with torch.no_grad():
        for rows, mb in minibatches(batch, batch_size):
            tokens = mb.tokens.to(model.cfg.device)
            final = mb.final_positions
            resid, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted,
                                                stop_at_layer=model.cfg.n_layers)
            logits = unembed_resid(model, gather_positions(resid, final[:, None])[:, 0]).float().cpu()
            clean[rows] = head_metric(logits, mb, metric)
            pos = _positions_of(mb, positions)
            for i, l in enumerate(layers):
                x = cache[resid_name(model, l)]
                mean = _mean_for(means, l, mb.tokens.shape[1])
                for group in groups:
                    c = len(group)
                    hook = stacked_head_ablation_hook([[h] for h in group], pos, how, mean)
                    with model.hooks(fwd_hooks=[(z_name(l), hook)]):
                        out = resume(model, x.repeat(c, 1, 1), l, tokens=tokens.repeat(c, 1))
                    last = gather_positions(out, final.repeat(c)[:, None].to(out.device))[:, 0]
                    lg = unembed_resid(model, last).float().cpu().view(c, len(mb), -1)
                    for j, h in enumerate(group):
                        per_prompt[i, h, rows] = head_metric(lg[j], mb, metric)
                bar.update()
    bar.close()
    return _scan_result(per_prompt, clean, layers, metric, how, positions, "exact", batch, model,
                        {"batched": True, "heads_per_forward": hpf, "mean_over": mean_over})


def head_attribution(
    model: Any,
    batch: PromptBatch,
    how: Literal["zero", "mean"] = "zero",
    *,
    metric: Metric = "logit_diff",
    positions: HeadPositions = "all",
    mean_batch: PromptBatch | None = None,
    mean_over: Literal["position", "tokens"] = "position",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
) -> HeadScanResult:
    """Attribution patching: ``effect[l, h, b] ~= sum_pos dM_b/dz[l](pos, h) . (z_abl - z)(pos, h)``
    (a first-order Taylor expansion of the metric around the clean run; positions: every real
    token, or the final one), from one forward and one backward pass per minibatch.

    Gradients are total derivatives (through every later layer), taken with ``tap_hook``
    (a zero that requires grad added to ``hook_z``), so frozen parameters are fine and no
    parameter ``.grad`` is touched. ``per_prompt`` holds clean + estimated effect. The metric must
    be differentiable: ``"logit_diff"`` or ``"gold_prob"``.
    """
    _check_batch(batch)
    _check_choice(how, ("zero", "mean"), "how")
    _check_choice(positions, ("all", "final"), "positions")
    if metric == "accuracy":
        raise ValueError("metric='accuracy' has zero gradient; attribution needs metric='logit_diff' or 'gold_prob'")
    _check_choice(metric, METRICS, "metric")
    layers = _scan_layers(model, layers)
    means = None
    if how == "mean":
        means = head_means(model, batch if mean_batch is None else mean_batch, layers, positions=positions,
                           mean_over=mean_over, width=batch.tokens.shape[1], batch_size=batch_size)
    attr = torch.zeros(len(layers), model.cfg.n_heads, len(batch))
    clean = torch.zeros(len(batch))
    for rows, mb in minibatches(batch, batch_size):
        store: list = []
        hooks = [(z_name(l), tap_hook(store)) for l in layers]
        final = mb.final_positions
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            resid = model(mb.tokens.to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
            logits = unembed_resid(model, gather_positions(resid, final[:, None])[:, 0]).float()
            m = head_metric(logits, mb, metric)
            grads = torch.autograd.grad(m.sum(), [tap for _, tap in store])
        clean[rows] = m.detach().cpu()
        width = mb.tokens.shape[1]
        if positions == "all":
            mask = (torch.arange(width)[None] <= final[:, None]).float()
        else:
            mask = torch.nn.functional.one_hot(final, width).float()
        for i, (l, (z, _), g) in enumerate(zip(layers, store, grads)):
            z, g = z.float().cpu(), g.float().cpu()
            if how == "zero":
                delta = -z
            elif positions == "all":
                delta = _mean_for(means, l, width)[:width].float()[None] - z
            else:
                delta = means[l].float()[None, None] - z
            attr[i, :, rows] = torch.einsum("bphd,bphd,bp->hb", g, delta, mask)
    return _scan_result(clean + attr, clean, layers, metric, how, positions, "attribution", batch, model,
                        {"mean_over": mean_over})


#: ``scan_agreement`` warns when fewer than this fraction of the exact scan's top-k heads (by absolute
#: effect) are among the estimate's top k (with k = 5: when it finds fewer than 3 of the 5 heads that
#: matter most), or when the single head that matters most is not among them.
TOP_K_MIN_OVERLAP = 0.6


def scan_agreement(exact: HeadScanResult, approx: HeadScanResult, k: int = 5, *,
                   min_overlap: float = TOP_K_MIN_OVERLAP) -> dict:
    """How well ``approx`` (e.g. attribution) ranks heads like ``exact``, for the ablation both used.

    Returns Spearman and Pearson correlations of the mean effects over every (layer, head), the
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
    out = {"spearman": float(rho), "spearman_p": float(p), "pearson": float(r), f"top{k}_overlap": overlap,
           "top_k": k, "top_k_overlap": overlap, "min_overlap": float(min_overlap), "top_head_missed": top_missed,
           "disagree": overlap < min_overlap or top_missed, "missed": missed, "how": exact.how,
           "positions": exact.positions, "metric": exact.metric, "ablation": ablation}
    if out["disagree"]:
        why = f"top-{k} overlap {overlap:.2f}" + (f" < {min_overlap}" if overlap < min_overlap else "")
        if top_missed:
            why += f", the most important head {missed[0]} is not in its top {k}"
        warnings.warn(f"{approx.method} and the {exact.method} scan disagree on the top {k} heads ({ablation}): "
                      f"{why}; missed (layer, head): {missed}", UserWarning, stacklevel=2)
    return out
