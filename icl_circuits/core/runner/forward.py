"""Forward passes: hooks attached (``hooked``), final-position logits, activations read, unembedding
(``ln_final``, ``unembed``, the output soft cap), minibatches, and forwards with gradients."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_circuits.core.checks import check_layer, check_positions
from icl_circuits.core.interventions import HookList, Intervention, Site, compile_hooks
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.runner.backend import backend_for
from icl_circuits.core.runner.resume import resume
from icl_circuits.core.types import HookedModel

#: Interventions of a run: specs (``Intervention``) or ready ``(hook_name, fn)`` pairs.
Interventions = Sequence["Intervention | tuple[str, Callable]"]


@contextmanager
def hooked(model: HookedModel, interventions: Interventions = (), *, bwd: HookList | None = None) -> Iterator[None]:
    """Attach ``interventions`` (compiled by ``core.interventions.compile_hooks``) and backward
    hooks ``bwd`` for the duration of the block; they are removed on exit, also on an exception.
    The one place in the package that calls ``model.hooks``. On a TransformerBridge, attention
    edits its adapter would ignore are refused (``Backend.check_attention_edits``)."""
    be = backend_for(model)
    with be.hooks(compile_hooks(model, be.check_attention_edits(interventions)), bwd or []):
        yield




# ----------------------------------------------------------------------------- forwards and unembedding
def unembed_resid(model: HookedModel, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits from a final residual stream: the final norm, the unembedding, then the model's output
    soft cap ``c * tanh(logits / c)`` when it has one (``Backend.unembed``)."""
    return backend_for(model).unembed(resid)


@contextmanager
def frozen(model: HookedModel) -> Iterator[None]:
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
def final_logits(model: HookedModel, batch: PromptBatch, batch_size: int = 64) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's final position (only that position is unembedded)."""
    out = []
    for _, mb in minibatches(batch, batch_size):
        tokens = mb.tokens.to(model.cfg.device)
        resid = backend_for(model).forward(tokens)
        last = gather_positions(resid, mb.final_positions[:, None])[:, 0]
        out.append(unembed_resid(model, last).float().cpu())
    return torch.cat(out)


MakeHooks = Callable[[slice, PromptBatch], HookList]


def run_final_logits(
    model: HookedModel,
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
                    x = backend_for(model).forward(mb.tokens.to(model.cfg.device))
                else:
                    inp = resid[rows, : mb.tokens.shape[1]].to(model.cfg.device)
                    x = resume(model, inp, start_at_layer, tokens=mb.tokens)
            last = gather_positions(x, mb.final_positions[:, None])[:, 0]
            out.append(unembed_resid(model, last).float().cpu())
    return torch.cat(out)


def read_activations(
    model: HookedModel,
    batch: PromptBatch,
    names: Sequence[Site | str],
    positions: Tensor | None = None,
    *,
    batch_size: int = 64,
    make_hooks: MakeHooks | None = None,
) -> dict[Site | str, Tensor]:
    """Activations at the hook points ``names``, each a ``Site`` or a TransformerLens hook name,
    keyed as given: ``[batch, n, ...]`` at ``positions`` or ``[batch, pos, ...]`` (right-padded to the
    batch's width; attention scores and patterns ``[batch, head, pos, pos]``) when ``positions`` is
    None. A ``Site`` with a head reads that head only (``[batch, n, d_head]``)."""
    pos = None if positions is None else check_positions(batch, positions)
    hook_of = {n: n.hook_name(model) if isinstance(n, Site) else n for n in names}
    wanted = set(hook_of.values())
    acc: dict[Site | str, list[Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for rows, mb in minibatches(batch, batch_size):
            hooks = make_hooks(rows, mb) if make_hooks is not None else []
            with hooked(model, hooks):
                _, cache = backend_for(model).run_with_cache(mb.tokens.to(model.cfg.device), lambda n: n in wanted)
            for n in names:
                if hook_of[n] not in cache:
                    raise ValueError(f"names: {n!r} is not a hook point of this model")
                a = cache[hook_of[n]]
                if pos is not None:
                    a = gather_positions(a, pos[rows])
                else:
                    a = _pad_positions(hook_of[n], a, batch.tokens.shape[1])
                if isinstance(n, Site) and n.head is not None:
                    a = a[:, :, n.head]
                acc[n].append(a.cpu())
    return {n: torch.cat(v) for n, v in acc.items()}


def _pad_positions(name: str, a: Tensor, width: int) -> Tensor:
    """Right-pad the position axes of a minibatch's activation to the batch's ``width``: axis 1
    (``[batch, pos, ...]``), or the last two axes of attention scores and patterns
    (``[batch, head, query_pos, key_pos]``)."""
    if name.endswith(("hook_pattern", "hook_attn_scores")):
        return torch.nn.functional.pad(a, [0, width - a.shape[-1], 0, width - a.shape[-2]])
    return torch.nn.functional.pad(a, [0, 0] * (a.ndim - 2) + [0, width - a.shape[1]])


def read_resid(
    model: HookedModel,
    batch: PromptBatch,
    positions: Tensor | None = None,
    layers: Iterable[int] | None = None,
    *,
    batch_size: int = 64,
) -> Float[Tensor, "layer batch n d_model"]:
    """Residual stream at the input of each block in ``layers`` (default 0..n_layers) at ``positions``."""
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else [check_layer(model, l) for l in layers]
    sites = [Site(l) for l in layers]
    acts = read_activations(model, batch, list(dict.fromkeys(sites)), positions, batch_size=batch_size)
    return torch.stack([acts[s] for s in sites])




#: Most logits (rows x d_vocab) computed by one unembedding call.
UNEMBED_ELEMENTS = 2**25


@torch.no_grad()
def unembed_rows(model: HookedModel, resid: Float[Tensor, "rows d_model"], max_elements: int = UNEMBED_ELEMENTS) -> Float[Tensor, "rows d_vocab"]:
    """Logits of final residuals (``ln_final`` + ``unembed``), in as few calls as memory allows
    (TransformerLens's unembed copies W_U on every call, so one call for many rows is much faster)."""
    step = max(1, max_elements // model.cfg.d_vocab)
    dev = model.cfg.device
    return torch.cat([unembed_resid(model, resid[i : i + step].to(dev)).float().cpu()
                      for i in range(0, resid.shape[0], step)])


# ----------------------------------------------------------------------------- gradient-enabled forwards
# (added for saliency flow and anchor re-weighting, issue #16: analyses that differentiate through a run)
def final_logits_with_grad(
    model: HookedModel, batch: PromptBatch, interventions: Interventions = ()
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each prompt's final position under ``interventions``, with autograd enabled and
    the graph kept (only the final positions are unembedded, soft cap included as in
    ``unembed_resid``). One forward over the whole ``batch`` (no minibatching; the caller sizes
    it); the hooks are removed on return. Gradients reach whatever the interventions make
    differentiable (a gate, a scale); wrap the call in ``frozen(model)`` to keep them out of
    the parameters."""
    with torch.enable_grad(), hooked(model, interventions):
        resid = backend_for(model).forward(batch.tokens.to(model.cfg.device))
        return unembed_resid(model, gather_positions(resid, batch.final_positions[:, None])[:, 0])


# ----------------------------------------------------------------------------- one block's attention pattern
# (added for AtP*'s QK fix, issue #18: a block's attention recomputed for a shifted input residual)
class _PatternRead(Exception):
    """Raised by the hook that reads a block's pattern, so the rest of the forward is skipped."""


def attention_pattern(
    model: HookedModel, resid: Float[Tensor, "batch pos d_model"], layer: int, tokens: Int[Tensor, "batch pos"] | None,
) -> Float[Tensor, "batch head query_pos key_pos"]:
    """Block ``layer``'s attention pattern ``softmax(mask(q k^T / scale))`` when the residual at its
    input is ``resid``: the block's own ``ln1``, query/key projections, positional scheme (rotary,
    ALiBi...) and masks, run by ``resume`` (``tokens``: the prompts' tokens, for the padding mask and
    positions, see ``block_inputs``) and stopped at ``hook_pattern``, so values, head outputs and
    later blocks are not computed. Differentiable in ``resid`` when autograd is enabled; the
    pattern stays on the model's device, in its dtype."""
    check_layer(model, layer, allow_final=False)
    store: list[Tensor] = []

    def grab(pattern: Tensor, hook=None) -> Tensor:
        store.append(pattern)
        raise _PatternRead

    try:
        with hooked(model, [(f"blocks.{layer}.attn.hook_pattern", grab)]):
            resume(model, resid.to(model.cfg.device), layer, layer + 1, tokens=tokens)
    except _PatternRead:
        pass
    if not store:
        raise RuntimeError(f"block {layer} computed no attention pattern (hook_pattern never ran)")
    return store[0]
