"""The runner: the one module that runs a model. Every forward pass of every analysis, every
hook (``model.hooks``), every resumption mid-model and every unembedding goes through here.

What it owns (an analysis says *what* to do with ``Intervention`` specs, the runner *how*):

- **Hooks**: ``hooked(model, interventions)`` compiles specs (``core.interventions``) into
  TransformerLens hooks and attaches them in a ``model.hooks`` context, so they are removed
  also when an exception is raised.
- **Resuming mid-model**: ``resume(model, resid, l)`` runs blocks ``l..`` from the residual at
  the input of block ``l`` with what a full forward gives every block (shortformer positional
  embedding, the attention mask of a left-padding tokenizer, positions offset by a key/value
  cache), so resumed runs equal the full forward (``tests/core/test_resume.py``).
- **Prefix reuse and staggered batching**: ``cache_resid`` runs the clean prefix once;
  ``run_staggered`` runs many *entries* (rows that join the forward at different blocks, each
  with its own interventions, optionally as a suffix over cached keys/values) in one forward.
- **Final-position unembedding**: only the rows read are unembedded (``unembed_rows``), with
  ``ln_final`` and the model's output soft cap.
- **Minibatching, device and dtype**: inputs move to ``model.cfg.device``; outputs come back as
  float32 on the CPU.

Layer convention: "layer l" is the input of block l (``blocks.{l}.hook_resid_pre``); layer
``n_layers`` is the final residual (``blocks.{n_layers-1}.hook_resid_post``, before ``ln_final``).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import HookList, Intervention, check_layer, check_positions, compile_hooks, resid_name
from icl_circuits.core.prompts import PromptBatch

__all__ = [
    "hooked", "resume", "block_inputs", "unembed_resid", "unembed_rows", "frozen", "gather_positions", "minibatches",
    "final_logits", "run_final_logits", "read_activations", "read_resid", "Entry", "run_staggered", "cache_resid",
    "hook_block", "TOKENS_PER_FORWARD", "UNEMBED_ELEMENTS", "final_logits_with_grad", "resume_final_logits",
    "sweep_final_logits",
]

#: Interventions of a run: specs (``Intervention``) or ready ``(hook_name, fn)`` pairs.
Interventions = Sequence["Intervention | tuple[str, Callable]"]


@contextmanager
def hooked(model: Any, interventions: Interventions = (), *, bwd: HookList | None = None) -> Iterator[None]:
    """Attach ``interventions`` (compiled by ``core.interventions.compile_hooks``) and backward
    hooks ``bwd`` for the duration of the block; they are removed on exit, also on an exception.
    The one place in the package that calls ``model.hooks``."""
    with model.hooks(fwd_hooks=compile_hooks(model, interventions), bwd_hooks=bwd or []):
        yield


# ----------------------------------------------------------------------------- resuming mid-model
def block_inputs(
    model: Any, tokens: Int[Tensor, "batch pos"] | None, *, batch: int | None = None, width: int | None = None,
    past: int = 0,
) -> dict[str, Tensor]:
    """Keyword arguments a full forward over ``tokens`` passes to every block besides the residual:
    ``shortformer_pos_embed`` [batch, width, d_model] (shortformer models) and ``attention_mask``
    [batch, past + width] (when TransformerLens builds one), each only when the forward has it.

    ``past``: positions already in a key/value cache (the residual then holds positions
    ``past .. past + width - 1``): the positional embedding is taken at those positions and the
    mask covers the cached positions too. ``tokens`` ([batch, >= past + width]) may be None: the
    positions are then 0, 1, ... with no padding mask (what TransformerLens itself assumes without
    tokens), and ``batch`` and ``width`` must be given.
    """
    if tokens is None:
        if batch is None or width is None:
            raise ValueError("block_inputs: without tokens, give batch and width")
        tokens = torch.ones(batch, past + width, dtype=torch.long)
    width = tokens.shape[1] - past if width is None else width
    if tokens.ndim != 2 or tokens.shape[1] < past + width:
        raise ValueError(f"tokens must have shape [batch, >= past + width = {past + width}], got {tuple(tokens.shape)}")
    tokens = tokens[:, : past + width]
    if model.cfg.positional_embedding_type != "shortformer" and not _builds_mask(model):
        return {}
    # the forward's own code; hooks on hook_embed / hook_pos_embed see these tokens once more
    _, _, pos_embed, mask = model.input_to_embed(tokens.to(model.cfg.device))
    out: dict[str, Tensor] = {}
    if pos_embed is not None:
        out["shortformer_pos_embed"] = pos_embed[:, past : past + width]
    if mask is not None:
        out["attention_mask"] = mask
    return out


def _builds_mask(model: Any) -> bool:
    """Whether ``model(tokens)`` computes an attention mask (TransformerLens: a left-padding tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    return tok is not None and getattr(tok, "padding_side", "right") == "left"


def resume(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    start_at_layer: int,
    stop_at_layer: int | None = None,
    *,
    tokens: Int[Tensor, "batch pos"] | None,
    past: int = 0,
    **kwargs: Any,
) -> Tensor:
    """``model(resid, start_at_layer, stop_at_layer)`` (default: to the final residual, before
    ``ln_final``) with the per-block inputs a full forward over ``tokens`` computes
    (``block_inputs``), so that with no hooks it equals the full forward from block
    ``start_at_layer`` on. ``tokens``: the prompts' tokens ([batch, past + pos]; None only for
    unpadded inputs, see ``block_inputs``); ``past``: positions held in ``kwargs["past_kv_cache"]``.
    Other ``kwargs`` go to the model's forward.
    """
    n = model.cfg.n_layers
    if isinstance(start_at_layer, bool) or not isinstance(start_at_layer, int) or not 0 <= start_at_layer <= n:
        raise ValueError(f"start_at_layer must be an integer in [0, {n}], got {start_at_layer!r}")
    if tokens is not None and (tokens.ndim != 2 or tokens.shape[0] != resid.shape[0]
                               or tokens.shape[1] < past + resid.shape[1]):
        raise ValueError(f"tokens must have shape [batch={resid.shape[0]}, >= {past + resid.shape[1]}] to go with "
                         f"the residual {tuple(resid.shape)}, got {tuple(tokens.shape)}")
    extra = block_inputs(model, tokens, batch=resid.shape[0], width=resid.shape[1], past=past)
    return model(resid, start_at_layer=start_at_layer, stop_at_layer=n if stop_at_layer is None else stop_at_layer,
                 **extra, **kwargs)


# ----------------------------------------------------------------------------- forwards and unembedding
def unembed_resid(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits from a final residual stream: ``ln_final`` (when the model has one), ``unembed``, then
    the model's output soft cap ``c * tanh(logits / c)`` when ``cfg.output_logits_soft_cap > 0``
    (as ``HookedTransformer.forward`` does; it changes probabilities, never the argmax)."""
    shape = resid.shape
    x = resid.reshape(1, -1, shape[-1])
    ln = getattr(model, "ln_final", None)
    if ln is not None:
        x = ln(x)
    logits = model.unembed(x).reshape(*shape[:-1], -1)
    cap = float(getattr(getattr(model, "cfg", None), "output_logits_soft_cap", -1.0) or -1.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


@contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter (restored on exit, also on errors)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def gather_positions(
    x: Float[Tensor, "batch pos ..."], positions: Int[Tensor, "batch n"]
) -> Float[Tensor, "batch n ..."]:
    """``x[b, positions[b, j]]`` for every prompt b and column j."""
    idx = positions.to(x.device).reshape(*positions.shape, *([1] * (x.ndim - 2)))
    return x.gather(1, idx.expand(*positions.shape, *x.shape[2:]))


def minibatches(batch: PromptBatch, batch_size: int) -> Iterator[tuple[slice, PromptBatch]]:
    """Consecutive sub-batches of at most ``batch_size`` prompts, padding trimmed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(batch), batch_size):
        sl = slice(start, min(start + batch_size, len(batch)))
        yield sl, batch.select(sl)


@torch.no_grad()
def final_logits(model: Any, batch: PromptBatch, batch_size: int = 64) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's final position (only that position is unembedded)."""
    out = []
    for _, mb in minibatches(batch, batch_size):
        tokens = mb.tokens.to(model.cfg.device)
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        last = gather_positions(resid, mb.final_positions[:, None])[:, 0]
        out.append(unembed_resid(model, last).float().cpu())
    return torch.cat(out)


MakeHooks = Callable[[slice, PromptBatch], HookList]


def run_final_logits(
    model: Any,
    batch: PromptBatch,
    make_hooks: MakeHooks | None = None,
    *,
    batch_size: int = 64,
    start_at_layer: int | None = None,
    resid: Tensor | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's final position under the hooks ``make_hooks(rows, sub_batch)``.

    ``make_hooks`` is called per minibatch with the slice of rows it covers, so per-prompt values
    can be sliced to match. With ``start_at_layer``, ``resid`` ([batch, pos, d_model], the
    residual at the input of that block) is fed instead of the tokens, through ``resume.resume``
    (which gives the blocks what the full forward would: shortformer positions, attention mask).
    """
    out = []
    with torch.no_grad():
        for rows, mb in minibatches(batch, batch_size):
            hooks = make_hooks(rows, mb) if make_hooks is not None else []
            with hooked(model, hooks):
                if start_at_layer is None:
                    x = model(mb.tokens.to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
                else:
                    inp = resid[rows, : mb.tokens.shape[1]].to(model.cfg.device)
                    x = resume(model, inp, start_at_layer, tokens=mb.tokens)
            last = gather_positions(x, mb.final_positions[:, None])[:, 0]
            out.append(unembed_resid(model, last).float().cpu())
    return torch.cat(out)


def read_activations(
    model: Any,
    batch: PromptBatch,
    names: Sequence[str],
    positions: Tensor | None = None,
    *,
    batch_size: int = 64,
    make_hooks: MakeHooks | None = None,
) -> dict[str, Tensor]:
    """Activations at hook ``names``: ``[batch, n, ...]`` at ``positions`` or ``[batch, pos, ...]``
    (right-padded to the batch's width) when ``positions`` is None."""
    pos = None if positions is None else check_positions(batch, positions)
    wanted = set(names)
    acc: dict[str, list[Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for rows, mb in minibatches(batch, batch_size):
            hooks = make_hooks(rows, mb) if make_hooks is not None else []
            with hooked(model, hooks):
                _, cache = model.run_with_cache(
                    mb.tokens.to(model.cfg.device), names_filter=lambda n: n in wanted,
                    stop_at_layer=model.cfg.n_layers,
                )
            for n in names:
                if n not in cache:
                    raise ValueError(f"names: {n!r} is not a hook point of this model")
                a = cache[n]
                if pos is not None:
                    a = gather_positions(a, pos[rows])
                else:
                    a = torch.nn.functional.pad(a, [0, 0] * (a.ndim - 2) + [0, batch.tokens.shape[1] - a.shape[1]])
                acc[n].append(a.cpu())
    return {n: torch.cat(v) for n, v in acc.items()}


def read_resid(
    model: Any,
    batch: PromptBatch,
    positions: Tensor | None = None,
    layers: Iterable[int] | None = None,
    *,
    batch_size: int = 64,
) -> Float[Tensor, "layer batch n d_model"]:
    """Residual stream at the input of each block in ``layers`` (default 0..n_layers) at ``positions``."""
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else [check_layer(model, l) for l in layers]
    names = [resid_name(model, l) for l in layers]
    acts = read_activations(model, batch, list(dict.fromkeys(names)), positions, batch_size=batch_size)
    return torch.stack([acts[n] for n in names])


# ----------------------------------------------------------------------------- staggered forwards (prefix reuse)
#: Default budget of token positions (rows x width) per forward pass.
TOKENS_PER_FORWARD = 8192


#: Most logits (rows x d_vocab) computed by one unembedding call.
UNEMBED_ELEMENTS = 2**25


def hook_block(model: Any, name: str) -> int:
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
    what a full forward gives them besides the residual (``resume.block_inputs``: shortformer
    positions, attention mask); None: positions 0, 1, ... without a padding mask.
    """

    start: int
    resid: Tensor
    final_positions: Tensor
    hooks: HookList = field(default_factory=list)
    past: list | None = None
    tokens: Tensor | None = None


class _PastKV:
    """A frozen key/value cache entry (TransformerLens's ``past_kv_cache_entry`` interface)."""

    def __init__(self, keys: Tensor, values: Tensor):
        self.past_keys, self.past_values = keys, values

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cat([self.past_keys, k], 1), torch.cat([self.past_values, v], 1)


class _RecordKV(_PastKV):
    """An empty cache entry that records the keys and values attention appends to it."""

    def __init__(self) -> None:
        super().__init__(torch.empty(0, 0), torch.empty(0, 0))
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.keys, self.values = k, v
        return k, v


def _combine(model: Any, entries: list[Entry], offsets: list[int]) -> HookList:
    """One hook per hook name that applies each entry's hooks to that entry's row slice."""
    by_name: dict[str, list[tuple[int, int, Callable]]] = {}
    for e, off in zip(entries, offsets):
        for name, fn in compile_hooks(model, e.hooks):
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
def unembed_rows(model: Any, resid: Float[Tensor, "rows d_model"], max_elements: int = UNEMBED_ELEMENTS) -> Float[Tensor, "rows d_vocab"]:
    """Logits of final residuals (``ln_final`` + ``unembed``), in as few calls as memory allows
    (TransformerLens's unembed copies W_U on every call, so one call for many rows is much faster)."""
    step = max(1, max_elements // model.cfg.d_vocab)
    dev = model.cfg.device
    return torch.cat([unembed_resid(model, resid[i : i + step].to(dev)).float().cpu()
                      for i in range(0, resid.shape[0], step)])


@torch.no_grad()
def run_staggered(model: Any, entries: Sequence[Entry], *, unembed: bool = True) -> Float[Tensor, "rows d_vocab"]:
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
                past = [None] * n
                for i in range(s, nxt):
                    here = [e.past[i] for e in ents if e.start <= i]
                    past[i] = _PastKV(torch.cat([k for k, _ in here]).to(dev), torch.cat([v for _, v in here]).to(dev))
            x = resume(model, x, s, nxt, tokens=None if tokens is None else tokens[: x.shape[0]], past=n_past,
                       past_kv_cache=past)
    fp = torch.cat([e.final_positions for e in ents]).to(x.device)
    out = x[torch.arange(x.shape[0], device=x.device), fp]
    out = unembed_rows(model, out) if unembed else out.cpu()
    back = torch.empty_like(torch.tensor(order))
    back[torch.tensor(order)] = torch.arange(len(order))
    pieces = list(torch.split(out, sizes))
    return torch.cat([pieces[int(j)] for j in back])


@torch.no_grad()
def cache_resid(
    model: Any, tokens: Int[Tensor, "batch pos"], layers: Sequence[int], final_positions: Tensor,
    *, record_kv: bool = False, unembed: bool = True,
) -> tuple[dict[int, Tensor], Tensor, list[tuple[Tensor, Tensor]] | None]:
    """One forward: the residual at the input of each block in ``layers`` ([batch, pos, d_model]
    each), the unpatched final-position logits (``unembed=False``: final residuals [batch, d_model])
    and, with ``record_kv``, every block's keys and values as attention appends them to a cache
    ([batch, pos, head, d_head] each)."""
    names = {resid_name(model, l): l for l in layers}
    keep = lambda nm: nm in names  # noqa: E731
    n = model.cfg.n_layers
    if not record_kv:
        final, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=keep, stop_at_layer=n)
        kv = None
    else:
        rec = [_RecordKV() for _ in range(n)]
        x0 = model(tokens.to(model.cfg.device), stop_at_layer=0)
        final, cache = model.run_with_cache(x0, start_at_layer=0, stop_at_layer=n, past_kv_cache=rec, names_filter=keep,
                                            **block_inputs(model, tokens))
        kv = [(r.keys, r.values) for r in rec]
    last = final[torch.arange(final.shape[0], device=final.device), final_positions.to(final.device)]
    return {l: cache[nm] for nm, l in names.items()}, (unembed_rows(model, last) if unembed else last.cpu()), kv


# ----------------------------------------------------------------------------- gradient-enabled forwards
# (added for saliency flow and anchor re-weighting, issue #16: analyses that differentiate through a run)
def final_logits_with_grad(
    model: Any, batch: PromptBatch, interventions: Interventions = ()
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's final position under ``interventions``, with autograd enabled and
    the graph kept (only the final positions are unembedded, soft cap included as in
    ``unembed_resid``). One forward over the whole ``batch`` (no minibatching; the caller sizes
    it); the hooks are removed on return. Gradients reach whatever the interventions make
    differentiable (a gate, a scale); wrap the call in ``frozen(model)`` to keep them out of
    the parameters."""
    with torch.enable_grad(), hooked(model, interventions):
        resid = model(batch.tokens.to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
        return unembed_resid(model, gather_positions(resid, batch.final_positions[:, None])[:, 0])


# ----------------------------------------------------------------------------- resumed forward with gradients
# (added for learned task vectors, issue #16: training steps resume from a residual read once)
def resume_final_logits(
    model: Any,
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


# ----------------------------------------------------------------------------- layer sweeps of final logits
# (added for interchange and necessity, issue #16: one intervention per layer, each run resumed at its block)
#: ``make_interventions(layer, rows, sub_batch)``: the interventions of the run for ``layer`` on
#: the prompts ``rows`` of the batch (``sub_batch``), built as for a run of the sub-batch alone.
MakeLayerInterventions = Callable[[int, slice, PromptBatch], Interventions]


@torch.no_grad()
def sweep_final_logits(
    model: Any,
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
        raise ValueError("layers must name at least one layer")
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
