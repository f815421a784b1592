"""Hook functions: what an ``Intervention``'s op (``core.ops``) compiles to (``core.interventions.compile_hooks``).

Each builder returns ``hook(activation, hook) -> activation`` for TransformerLens; only the runner
attaches them (``core.runner.hooked``), so they are removed also when an exception is raised.
Positions are per prompt (``[batch, n]``, from ``PromptBatch.positions``); ``mask`` (``[batch, n]``,
``PositionSet.mask``) limits writes to the valid entries of a ragged position set.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Hook = Callable[[Tensor, Any], Tensor]
HookList = list[tuple[str, Hook]]
Ablation = Literal["zero", "mean"]


def _rows(positions: Tensor) -> Tensor:
    return torch.arange(positions.shape[0], device=positions.device)[:, None].expand_as(positions)


def edit_at(
    positions: Int[Tensor, "batch n"],
    fn: Callable[[Tensor], Tensor],
    head: int | None = None,
    mask: Bool[Tensor, "batch n"] | None = None,
) -> Hook:
    """A hook replacing ``act[b, positions[b, j]]`` (and ``[..., head, :]`` if given) by ``fn(old)``.

    ``fn`` receives the selected activations ``[batch, n, ...]`` and returns new ones of that shape.
    With ``mask`` (``PositionSet.mask``), only the entries where it is True are written: ``fn`` still
    sees every entry (so seeded noise is drawn as without a mask), the others keep their value.
    """
    if mask is not None and tuple(mask.shape) != tuple(positions.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but positions have {tuple(positions.shape)}")

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        pos = positions.to(act.device)
        rows = _rows(pos)
        act = act.clone()
        if mask is None:
            if head is None:
                act[rows, pos] = fn(act[rows, pos]).to(act.dtype)
            else:
                act[rows, pos, head] = fn(act[rows, pos, head]).to(act.dtype)
            return act
        m = mask.to(act.device, torch.bool)
        if head is None:
            act[rows[m], pos[m]] = fn(act[rows, pos])[m].to(act.dtype)
        else:
            act[rows[m], pos[m], head] = fn(act[rows, pos, head])[m].to(act.dtype)
        return act

    return hook


def edit_all(fn: Callable[[Tensor], Tensor], head: int | None = None) -> Hook:
    """A hook replacing the whole activation ``x`` (or ``x[..., head, :]`` if given) by ``fn(x)``,
    cast to the activation's dtype: ``edit_at`` at every position, without a mask."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if head is None:
            return fn(act).to(act.dtype)
        new = fn(act[..., head, :])
        act = act.clone()
        act[..., head, :] = new.to(act.dtype)
        return act

    return hook


def read_hook(store: list, positions: Int[Tensor, "batch n"] | None = None, head: int | None = None) -> Hook:
    """A hook appending the detached activation to ``store`` and returning the activation itself
    (the forward is unchanged): ``act[b, positions[b, j]]`` (``[batch, n, ...]``), or the whole
    activation when ``positions`` is None; only ``[..., head, :]`` when ``head`` is given."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if positions is None:
            store.append((act if head is None else act[..., head, :]).detach())
            return act
        pos = positions.to(act.device)
        rows = _rows(pos)
        store.append((act[rows, pos] if head is None else act[rows, pos, head]).detach())
        return act

    return hook


def replace_hook(positions: Tensor, values: Tensor, head: int | None = None, mask: Tensor | None = None) -> Hook:
    """Overwrite the activation at ``positions`` with ``values`` ([batch, n, d], [n, d] or [d]);
    only where ``mask`` is True when given."""
    return edit_at(positions, lambda old: values.to(old.device).expand_as(old), head, mask)


def add_hook(
    positions: Tensor, vector: Tensor, scale: float = 1.0, head: int | None = None, mask: Tensor | None = None,
) -> Hook:
    """Add ``scale * vector`` ([batch, n, d], [n, d] or [d]) at ``positions`` (where ``mask`` is True)."""
    return edit_at(positions, lambda old: old + scale * vector.to(old.device), head, mask)


def ablate_hook(
    positions: Tensor, how: Ablation = "zero", mean: Tensor | None = None, head: int | None = None,
    mask: Tensor | None = None,
) -> Hook:
    """Zero-ablate, or mean-ablate with ``mean`` (broadcastable to [batch, n, d]), at ``positions``
    (only where ``mask`` is True when given)."""
    if how == "zero":
        return edit_at(positions, torch.zeros_like, head, mask)
    if how == "mean":
        if mean is None:
            raise ValueError("how='mean' needs the mean activation (argument mean)")
        return replace_hook(positions, mean, head, mask)
    raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")


def noise_hook(
    positions: Tensor, std: float | Tensor, seed: int = 0, *, relative: bool = False, mask: Tensor | None = None,
) -> Hook:
    """Add Gaussian noise at ``positions`` (only where ``mask`` is True when given; the noise of
    the other entries is drawn and dropped, so the same seed gives the same noise per entry).
    ``relative=True`` scales it by each activation's norm / sqrt(d) (so ``std=1`` is noise as
    large as the activation); otherwise ``std`` is absolute."""

    def fn(old: Tensor) -> Tensor:
        g = torch.Generator(device="cpu").manual_seed(seed)
        eps = torch.randn(old.shape, generator=g).to(old.device, old.dtype)
        scale = old.norm(dim=-1, keepdim=True) / old.shape[-1] ** 0.5 if relative else 1.0
        return old + eps * std * scale

    return edit_at(positions, fn, mask=mask)


def project_out_hook(positions: Tensor, basis: Float[Tensor, "d_model k"]) -> Hook:
    """Remove the component in span(``basis``) (orthonormalized here) at ``positions``."""
    q, _ = torch.linalg.qr(basis.float())
    return edit_at(positions, lambda old: old - (old.float() @ q.to(old.device)) @ q.to(old.device).T)


def project_out_centred_hook(
    positions: Tensor, basis: Float[Tensor, "d_model k"], centre: Float[Tensor, "d_model"] | None = None
) -> Hook:
    """Remove the component of ``act - centre`` in span(``basis``) at ``positions``:
    ``act - Q Q^T (act - centre)`` with ``Q`` an orthonormal basis of span(``basis``) (QR here).

    The part of ``act`` in the subspace is replaced by that of ``centre`` (a mean-ablation restricted
    to the subspace); ``centre=None`` is plain projection (``project_out_hook``).
    """
    q, _ = torch.linalg.qr(basis.float())
    c = None if centre is None else centre.float()

    def fn(old: Tensor) -> Tensor:
        qd = q.to(old.device)
        x = old.float() if c is None else old.float() - c.to(old.device)
        return old - (x @ qd) @ qd.T

    return edit_at(positions, fn)


def _blocked_mask(blocked: Tensor, head: int | None, what: str) -> Callable[[Tensor], Tensor]:
    """Checks ``blocked`` ([batch, query_pos, key_pos], bool) once; returns ``act -> mask`` for an
    attention activation ``act`` [batch, head, query_pos, key_pos] (``blocked`` cropped to its width, since
    minibatches trim padding; only ``head`` when given). ``what`` names the activation in errors."""
    blocked = torch.as_tensor(blocked, dtype=torch.bool)
    if blocked.ndim != 3:
        raise ValueError(f"blocked must have shape [batch, query_pos, key_pos], got {tuple(blocked.shape)}")

    def mask(act: Tensor) -> Tensor:
        q, k = act.shape[-2:]
        if blocked.shape[0] != act.shape[0] or blocked.shape[1] < q or blocked.shape[2] < k:
            raise ValueError(f"blocked has shape {tuple(blocked.shape)} but the attention {what} are {tuple(act.shape)}")
        m = blocked[:, :q, :k].to(act.device)[:, None]
        if head is not None:
            m = m & (torch.arange(act.shape[1], device=act.device) == head)[None, :, None, None]
        return m

    return mask


def block_attention_hook(blocked: Tensor, head: int | None = None) -> Hook:
    """For ``hook_attn_scores``: set the score of every blocked (query, key) pair to -inf.

    ``blocked`` is a bool tensor ``[batch, query_pos, key_pos]`` (cropped to the activation's width,
    since minibatches trim padding); the blocked keys then get exactly zero attention weight and
    the softmax renormalizes over the keys left. Only ``head`` is blocked when given. A query whose
    every key is blocked gets an all-zero pattern row (TransformerLens maps the NaN to 0).
    """
    mask = _blocked_mask(blocked, head, "scores")

    def hook(scores: Tensor, hook: Any = None) -> Tensor:
        return scores.masked_fill(mask(scores), float("-inf"))

    return hook


def pattern_block_hook(blocked: Tensor, head: int | None = None) -> Hook:
    """For ``hook_pattern``: what setting the scores of the ``blocked`` (query, key) pairs
    ([batch, query_pos, key_pos], bool) to -inf before the softmax gives:
    ``A'[q, k] = 0`` where blocked, else ``A[q, k] / sum_{k' not blocked} A[q, k']``; a query whose every
    key is blocked gets an all-zero row (as TransformerLens maps that NaN to 0). Only ``head`` when given.
    Used where an attention adapter fires ``hook_attn_scores`` after the softmax (runner.backend)."""
    mask = _blocked_mask(blocked, head, "pattern")

    def hook(pattern: Tensor, hook: Any = None) -> Tensor:
        kept = pattern.masked_fill(mask(pattern), 0.0)
        total = kept.sum(-1, keepdim=True)
        return torch.where(total > 0, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), torch.zeros_like(kept))

    return hook


def scale_pattern_hook(
    query_positions: Int[Tensor, "batch"], key_positions: Int[Tensor, "batch n"], scale: Tensor
) -> Hook:
    """For ``hook_pattern``: multiply ``A[b, h, query_positions[b], key_positions[b, j]]`` by
    ``scale[h, j]`` (or ``scale[b, h, j]``), out of place so that gradients reach ``scale``.

    The row is not renormalized (Wang et al.'s anchor re-weighting scales the weights as they are).
    """

    def hook(pattern: Tensor, hook: Any = None) -> Tensor:
        b, h = pattern.shape[:2]
        keys = key_positions.to(pattern.device)
        s = scale.to(pattern.device, pattern.dtype)
        s = (s[None] if s.ndim == 2 else s).expand(b, h, keys.shape[1])
        rows = torch.arange(b, device=pattern.device)[:, None, None]
        heads = torch.arange(h, device=pattern.device)[None, :, None]
        qs = query_positions.to(pattern.device)[:, None, None]
        factor = torch.ones_like(pattern).index_put((rows, heads, qs, keys[:, None, :]), s)
        return pattern * factor

    return hook


def gate_pattern_hook(store: list) -> Hook:
    """For ``hook_pattern``: multiply the pattern by a tensor of ones that requires grad and append
    that gate to ``store``.

    The forward pass is unchanged, and after a backward pass of a loss L,
    ``dL/dgate = A * dL/dA`` elementwise, the *total* derivative (including every path through
    later layers' attention), even when the model's parameters are frozen: one backward pass
    gives the saliency term of every hooked layer.
    """

    def hook(pattern: Tensor, hook: Any = None) -> Tensor:
        gate = torch.ones_like(pattern, requires_grad=True)
        store.append(gate)
        return pattern * gate

    return hook


def stacked_head_ablation_hook(
    heads_per_copy: Sequence[Sequence[int]],
    positions: Int[Tensor, "batch n"] | None = None,
    how: Ablation = "zero",
    mean: Tensor | None = None,
) -> Hook:
    """For ``hook_z`` of a batch made of ``C = len(heads_per_copy)`` stacked copies of one batch of
    ``B`` prompts (rows ``c*B .. (c+1)*B - 1`` are copy ``c``): in copy ``c`` ablate every head in
    ``heads_per_copy[c]`` (an empty list leaves that copy untouched).

    ``positions``: ``[B, n]`` per-prompt positions, or None for every position. ``how="zero"``
    writes zeros; ``how="mean"`` writes ``mean[..., head, :]``, where ``mean`` is
    ``[pos, head, d_head]`` (per absolute position, cropped to the activation's width) when
    ``positions`` is None, and ``[head, d_head]`` or ``[B, n, head, d_head]`` otherwise.
    With ``C = 1`` this is a plain multi-head ablation of one batch.
    """
    if how not in ("zero", "mean"):
        raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")
    if how == "mean" and mean is None:
        raise ValueError("how='mean' needs the mean activation (argument mean)")
    copies = [list(h) for h in heads_per_copy]

    def hook(z: Tensor, hook: Any = None) -> Tensor:
        n_copies = len(copies)
        if n_copies == 0 or z.shape[0] % n_copies:
            raise ValueError(f"hook_z has {z.shape[0]} rows, not a multiple of {n_copies} copies")
        b = z.shape[0] // n_copies
        z = z.clone()
        view = z.view(n_copies, b, *z.shape[1:])
        for c, heads in enumerate(copies):
            for h in heads:
                if positions is None:
                    value = 0.0 if how == "zero" else mean[: z.shape[1], h].to(z.device, z.dtype)
                    view[c, :, :, h] = value
                else:
                    pos = positions.to(z.device)
                    rows = torch.arange(b, device=z.device)[:, None].expand_as(pos)
                    value = 0.0 if how == "zero" else mean[..., h, :].to(z.device, z.dtype)
                    view[c][rows, pos, h] = value if how == "zero" else value.expand(*pos.shape, z.shape[-1])
        return z

    return hook


def tap_hook(store: list) -> Hook:
    """Add a zero tensor that requires grad to the activation and append ``(activation, tap)`` to
    ``store``: the forward pass is unchanged and, after autograd, ``dL/dtap = dL/dactivation``
    (the total derivative through every later layer), even with frozen parameters."""

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        tap = torch.zeros_like(act, requires_grad=True)
        store.append((act.detach(), tap))
        return act + tap

    return hook
