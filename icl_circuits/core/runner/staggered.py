"""Prefix reuse and staggered batching: one clean forward caches the residual at every block input
(``cache_resid``); ``run_staggered`` then runs many *entries* in one forward pass. An entry is a
block of rows that joins the forward at block ``start`` (its residual there is given) with its
own interventions, applied to its rows only, optionally as a suffix over cached keys and values.
Entries are sorted by ``start``: the forward runs ``blocks[s_1:s_2]`` on the first entries,
appends those that start at ``s_2`` along the batch dimension, and so on, so runs that start at
different layers share every forward without recomputing any block. ``sweep_final_logits`` and
``resume_final_logits`` are the layer sweep and the gradient-enabled resumed forward built on it."""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.checks import check_layer
from icl_circuits.core.interventions import HookList, compile_hooks, resid_name
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.runner.backend import backend_for
from icl_circuits.core.runner.forward import (
    Interventions, gather_positions, hooked, minibatches, unembed_resid, unembed_rows,
)
from icl_circuits.core.runner.resume import resume
from icl_circuits.core.types import HookedModel


#: Default budget of token positions (rows x width) per forward pass.
TOKENS_PER_FORWARD = 8192


def hook_block(model: HookedModel, name: str) -> int:
    """The block a hook point belongs to: ``blocks.{i}.*`` -> i; ``ln_final``/``unembed`` -> n_layers;
    anything before the first block (``hook_embed``...) -> -1."""
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1))
    if name.startswith(("ln_final", "unembed")):
        return model.cfg.n_layers
    return -1


@dataclass
class Entry:
    """Rows that join a staggered forward at block ``start``.

    resid: [rows, pos, d_model], the residual at the input of block ``start``;
    final_positions: [rows], where logits are read (indices into ``resid``); hooks: applied to
    these rows only, each hook function seeing an activation of ``rows`` prompts (as if the entry
    ran alone); past: optional keys and values of the positions *before* ``resid``'s first one,
    ``past[i] = (keys, values)`` ([rows, n_past, head, d_head], as attention appends them) for
    every block i >= start: then ``resid`` holds only the later positions (a suffix); tokens:
    [rows, n_past + pos] the rows' tokens (cached positions included), from which the blocks get
    what a full forward gives them besides the residual (``Backend.resume``: positions,
    padding mask); None: positions 0, 1, ... without a padding mask.
    """

    start: int
    resid: Tensor
    final_positions: Tensor
    hooks: HookList = field(default_factory=list)
    past: list | None = None
    tokens: Tensor | None = None


def _combine(model: HookedModel, entries: list[Entry], offsets: list[int]) -> HookList:
    """One hook per hook name that applies each entry's hooks to that entry's row slice."""
    by_name: dict[str, list[tuple[int, int, Callable]]] = {}
    for e, off in zip(entries, offsets):
        for name, fn in compile_hooks(model, backend_for(model).check_attention_edits(e.hooks)):
            if hook_block(model, name) >= model.cfg.n_layers:
                raise ValueError(f"hook {name!r} runs after the last block; hook "
                                 f"{resid_name(model, model.cfg.n_layers)!r} (the final residual) instead")
            if hook_block(model, name) < e.start:
                raise ValueError(
                    f"hook {name!r} belongs to an earlier block than the run it is attached to, which "
                    f"resumes at block {e.start} (start_at_layer): it would never fire"
                )
            by_name.setdefault(name, []).append((off, off + e.resid.shape[0], fn))

    def make(parts: list[tuple[int, int, Callable]]) -> Callable:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            act = act.clone()
            for a, b, fn in parts:
                if b > act.shape[0]:  # pragma: no cover - guarded by the block check above
                    raise RuntimeError("a hook fired before its rows joined the forward")
                out = fn(act[a:b], hook)
                if out is not None:
                    act[a:b] = out
            return act

        return hook

    return [(name, make(parts)) for name, parts in by_name.items()]


@torch.no_grad()
def run_staggered(model: HookedModel, entries: Sequence[Entry], *, unembed: bool = True) -> Float[Tensor, "rows d_vocab"]:
    """Final-position logits of every entry's rows (in the order given), in one staggered forward
    (``unembed=False``: the final residual at those positions, [rows, d_model]).

    All entries must have the same width (pos), and the same number of past positions. Each entry
    joins at its ``start`` block; between two consecutive start blocks the model runs
    ``resume.resume(x, a, b)`` (with the entries' past keys and values and their tokens).
    """
    if not entries:
        raise ValueError("entries is empty")
    n = model.cfg.n_layers
    widths = {e.resid.shape[1] for e in entries}
    if len(widths) != 1:
        raise ValueError(f"all entries of a staggered forward must have the same width, got {sorted(widths)}")
    for e in entries:
        check_layer(model, e.start, allow_final=False, arg="entry start")
    n_past = {0 if e.past is None else e.past[e.start][0].shape[1] for e in entries}
    if len({e.past is None for e in entries}) != 1 or len(n_past) != 1:
        raise ValueError("all entries of a staggered forward must have the same number of past positions")
    if len({e.tokens is None for e in entries}) != 1:
        raise ValueError("give tokens for every entry of a staggered forward or for none")
    n_past = n_past.pop()
    order = sorted(range(len(entries)), key=lambda i: entries[i].start)
    ents = [entries[i] for i in order]
    sizes = [e.resid.shape[0] for e in ents]
    offsets = list(np.cumsum([0, *sizes[:-1]]))
    hooks = _combine(model, ents, offsets)
    dev = model.cfg.device
    starts = sorted({e.start for e in ents})
    width = ents[0].resid.shape[1]
    tokens = None if ents[0].tokens is None else torch.cat([e.tokens[:, : n_past + width] for e in ents])
    with hooked(model, hooks):
        x = None
        for s, nxt in zip(starts, [*starts[1:], n]):
            joining = [e.resid.to(dev) for e in ents if e.start == s]
            x = torch.cat(joining if x is None else [x, *joining])
            past = None
            if ents[0].past is not None:
                per_block: list = [None] * n
                for i in range(s, nxt):
                    here = [e.past[i] for e in ents if e.start <= i]
                    per_block[i] = (torch.cat([k for k, _ in here]).to(dev), torch.cat([v for _, v in here]).to(dev))
                past = backend_for(model).frozen_kv(per_block)
            x = resume(model, x, s, nxt, tokens=None if tokens is None else tokens[: x.shape[0]], past=n_past,
                       past_kv=past)
    fp = torch.cat([e.final_positions for e in ents]).to(x.device)
    out = x[torch.arange(x.shape[0], device=x.device), fp]
    out = unembed_rows(model, out) if unembed else out.cpu()
    back = torch.empty_like(torch.tensor(order))
    back[torch.tensor(order)] = torch.arange(len(order))
    pieces = list(torch.split(out, sizes))
    return torch.cat([pieces[int(j)] for j in back])


@torch.no_grad()
def cache_resid(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], layers: Sequence[int], final_positions: Tensor,
    *, record_kv: bool = False, unembed: bool = True,
) -> tuple[dict[int, Tensor], Tensor, list[tuple[Tensor, Tensor]] | None]:
    """One forward: the residual at the input of each block in ``layers`` ([batch, pos, d_model]
    each), the unpatched final-position logits (``unembed=False``: final residuals [batch, d_model])
    and, with ``record_kv``, every block's keys and values as attention appends them to a cache
    ([batch, pos, head, d_head] each)."""
    names = {resid_name(model, l): l for l in layers}
    keep = lambda nm: nm in names  # noqa: E731
    be = backend_for(model)
    if record_kv:
        final, cache, kv = be.record_kv(tokens, keep)
    else:
        final, cache = be.run_with_cache(tokens.to(model.cfg.device), keep)
        kv = None
    last = final[torch.arange(final.shape[0], device=final.device), final_positions.to(final.device)]
    return {l: cache[nm] for nm, l in names.items()}, (unembed_rows(model, last) if unembed else last.cpu()), kv


def resume_final_logits(
    model: HookedModel,
    resid: Float[Tensor, "batch pos d_model"],
    start_at_layer: int,
    *,
    tokens: Int[Tensor, "batch pos"] | None,
    final_positions: Int[Tensor, "batch"],
    interventions: Interventions = (),
) -> Float[Tensor, "batch d_vocab"]:
    """Final-position logits of a run resumed at block ``start_at_layer`` from ``resid`` (the
    residual at its input, e.g. from ``read_resid``) under ``interventions``, autograd enabled and
    the graph kept, on the model's device, float32.

    The blocks get what a full forward over ``tokens`` gives them (``resume``), so with a frozen
    model and interventions in blocks >= ``start_at_layer`` this equals ``final_logits_with_grad``
    of the full prompts, gradients included (``tests/methods/test_learned.py``).
    ``start_at_layer == n_layers``: no block runs; the interventions at the final residual
    (``Site(n_layers)``, hook ``blocks.{n_layers-1}.hook_resid_post``) are applied to ``resid``
    directly, and any other is refused (it would never fire). One forward, no minibatching.
    """
    n = model.cfg.n_layers
    check_layer(model, start_at_layer, arg="start_at_layer")
    x = resid.to(model.cfg.device)
    with torch.enable_grad():
        if start_at_layer == n:
            final = resid_name(model, n)
            for name, fn in compile_hooks(model, interventions):
                if name != final:
                    raise ValueError(f"hook {name!r} never fires in a run resumed at the final residual (layer {n})")
                x = fn(x, None)
        else:
            with hooked(model, interventions):
                x = resume(model, x, start_at_layer, tokens=tokens)
        last = gather_positions(x, final_positions[:, None])[:, 0]
        return unembed_resid(model, last).float()


#: ``make_interventions(layer, rows, sub_batch)``: the interventions of the run for ``layer`` on
#: the prompts ``rows`` of the batch (``sub_batch``), built as for a run of the sub-batch alone.
MakeLayerInterventions = Callable[[int, slice, PromptBatch], Interventions]


@torch.no_grad()
def sweep_final_logits(
    model: HookedModel,
    batch: PromptBatch,
    make_interventions: MakeLayerInterventions,
    layers: Sequence[int],
    reduce: Callable[[Tensor, PromptBatch], Tensor] | None = None,
    *,
    batch_size: int = 64,
    layers_per_forward: int | None = None,
    tokens_per_forward: int = TOKENS_PER_FORWARD,
    progress: bool = False,
    desc: str = "layer sweep",
) -> tuple[Tensor, Tensor]:
    """``reduce(logits, sub_batch)`` of the final-position logits of ``batch`` under the
    interventions of each layer in ``layers``, and of the unpatched run.

    Returns ``(per_layer, clean)``: per_layer ``[layer, batch, ...]`` (``layers`` in the order
    given), clean ``[batch, ...]``; ``reduce`` defaults to the logits themselves ([.., d_vocab]).

    Layer l (0..n_layers) names the run whose interventions live in block l or later (for
    l = n_layers, ``Site(n_layers)``: ``blocks.{n_layers-1}.hook_resid_post``). Per minibatch of
    ``batch_size`` prompts (padding trimmed), one unpatched forward (``cache_resid``) gives the
    residual at the input of every block needed and the clean logits; the run for layer l resumes
    at block min(l, n_layers-1) from it (``Entry`` + ``run_staggered``), ``layers_per_forward``
    layers per staggered forward (default: as many as fit in ``tokens_per_forward`` positions).
    Every run of a minibatch sees its own rows only, exactly as if it ran alone, so seeded
    interventions draw the same numbers whatever the staggering.
    """
    if len(batch) == 0:
        raise ValueError("batch is empty")
    n = model.cfg.n_layers
    layers = [check_layer(model, l, arg="layers") for l in layers]
    if not layers:
        raise ValueError("layers is empty")
    if layers_per_forward is not None and layers_per_forward < 1:
        raise ValueError(f"layers_per_forward must be positive, got {layers_per_forward}")
    red = reduce if reduce is not None else (lambda logits, mb: logits)
    start = {l: min(l, n - 1) for l in layers}
    order = sorted(set(layers))
    per_layer: dict[int, list[Tensor]] = {l: [] for l in order}
    clean: list[Tensor] = []
    bar = tqdm(total=len(batch) * len(order), desc=desc, disable=not progress)
    for rows, mb in minibatches(batch, batch_size):
        cached, clean_final, _ = cache_resid(model, mb.tokens, sorted(set(start.values())), mb.final_positions,
                                             unembed=False)
        finals = [clean_final]
        k = layers_per_forward or max(1, tokens_per_forward // (len(mb) * mb.tokens.shape[1]))
        for g in range(0, len(order), k):
            group = order[g : g + k]
            ents = [Entry(start[l], cached[start[l]], mb.final_positions, list(make_interventions(l, rows, mb)),
                          tokens=mb.tokens) for l in group]
            finals.append(run_staggered(model, ents, unembed=False))
            bar.update(len(mb) * len(group))
        logits = torch.split(unembed_rows(model, torch.cat(finals)), len(mb))
        clean.append(red(logits[0], mb))
        for l, lg in zip(order, logits[1:]):
            per_layer[l].append(red(lg, mb))
    bar.close()
    return torch.stack([torch.cat(per_layer[l]) for l in layers]), torch.cat(clean)
