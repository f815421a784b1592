"""Intervention specs: *what* to do to a model, as data. The runner (``core.runner``) executes them.

An ``Intervention`` is a site (``Site``: layer + hook point + optional head), per-prompt positions
(from ``PromptBatch.positions``; None: every position) and an operation: ``read``, ``replace``,
``add``, ``zero`` / ``mean`` ablation, ``noise``, ``project_out``, ``scale_attention``,
``block_attention`` or ``apply`` (a function of the selected activations). ``compile_hooks``
turns specs into TransformerLens hook functions, built by the hook builders below; only the
runner attaches them (``runner.hooked``), so hooks are removed also when an exception is raised.

Vocabulary (TransformerLens hook names):
- ``resid_name(model, l)``: the residual stream at the *input* of block ``l``
  (``blocks.{l}.hook_resid_pre``); ``l == n_layers`` is the final residual
  (``blocks.{n_layers-1}.hook_resid_post``, before ``ln_final``).
- ``z_name(l)``: ``blocks.{l}.attn.hook_z``, each head's output before ``W_O``
  ([batch, pos, head, d_head]).

Positions are per prompt: an int tensor ``[batch, n]`` (a padded batch has different positions in
every row; see ``PromptBatch.positions``). Every hook builder returns a function
``hook(activation, hook) -> activation`` to be used in ``model.hooks(fwd_hooks=[(name, fn)])``;
runs go through ``model.hooks`` so hooks are removed also when an exception is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_circuits.core.prompts import PromptBatch

Hook = Callable[[Tensor, Any], Tensor]
HookList = list[tuple[str, Hook]]
Ablation = Literal["zero", "mean"]


# ----------------------------------------------------------------------------- names and checks
def check_layer(model: Any, layer: int, *, allow_final: bool = True, arg: str = "layer") -> int:
    """Validate a layer index (0..n_layers, or 0..n_layers-1 with ``allow_final=False``)."""
    n = model.cfg.n_layers
    top = n if allow_final else n - 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= top:
        raise ValueError(f"{arg} must be an integer in [0, {top}] for a model with {n} layers, got {layer!r}")
    return layer


def check_head(model: Any, layer: int, head: int, arg: str = "head") -> tuple[int, int]:
    """Validate a (layer, head) pair."""
    check_layer(model, layer, allow_final=False)
    h = model.cfg.n_heads
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < h:
        raise ValueError(f"{arg} must be an integer in [0, {h - 1}] (the model has {h} heads per layer), got {head!r}")
    return layer, head


def check_vector(model: Any, vector: Tensor, arg: str = "vector") -> Tensor:
    """Validate that the last dimension of ``vector`` is ``d_model`` and that every value is finite
    (a NaN or inf vector would silently turn every logit it reaches into NaN)."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.shape[-1] != model.cfg.d_model:
        raise ValueError(
            f"{arg} has width {vector.shape[-1]} but the model's d_model is {model.cfg.d_model}"
        )
    if vector.is_floating_point() or vector.is_complex():
        bad = ~torch.isfinite(vector.detach())
        if bad.any():
            raise ValueError(f"{arg} contains NaN or inf ({int(bad.sum())} of {vector.numel()} values)")
    return vector


def check_positions(batch: PromptBatch, positions: Tensor, arg: str = "positions") -> Int[Tensor, "batch n"]:
    """Validate per-prompt positions ``[batch, n]`` (or ``[n]``, the same for every prompt)."""
    pos = torch.as_tensor(positions, dtype=torch.long)
    if pos.ndim == 1:
        pos = pos[None].expand(len(batch), -1)
    if pos.ndim != 2 or pos.shape[0] != len(batch):
        raise ValueError(f"{arg} must have shape [batch={len(batch)}, n] or [n], got {tuple(pos.shape)}")
    bad = (pos < 0) | (pos > batch.final_positions[:, None])
    if bad.any():
        b, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{arg}[{b}, {j}] = {int(pos[b, j])} is outside prompt {b}, whose positions are 0..{int(batch.final_positions[b])}"
        )
    return pos


def resid_name(model: Any, layer: int) -> str:
    """Hook name of the residual stream at the input of block ``layer`` (``n_layers``: final)."""
    check_layer(model, layer)
    if layer == model.cfg.n_layers:
        return f"blocks.{layer - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_resid_pre"


def z_name(layer: int) -> str:
    """Hook name of the heads' outputs before W_O in block ``layer``."""
    return f"blocks.{layer}.attn.hook_z"


# ----------------------------------------------------------------------------- hook builders
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


# ----------------------------------------------------------------------------- running


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


# ----------------------------------------------------------------------------- attention hooks
# (saliency flow, attention isolation and anchor re-weighting; Wang et al. 2023)
def attn_scores_name(layer: int) -> str:
    """Hook name of block ``layer``'s pre-softmax attention scores ([batch, head, query_pos, key_pos])."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def pattern_name(layer: int) -> str:
    """Hook name of block ``layer``'s post-softmax attention pattern ([batch, head, query_pos, key_pos])."""
    return f"blocks.{layer}.attn.hook_pattern"


def block_attention_hook(blocked: Tensor, head: int | None = None) -> Hook:
    """For ``hook_attn_scores``: set the score of every blocked (query, key) pair to -inf.

    ``blocked`` is a bool tensor ``[batch, query_pos, key_pos]`` (cropped to the activation's width,
    since minibatches trim padding); the blocked keys then get exactly zero attention weight and
    the softmax renormalizes over the keys left. Only ``head`` is blocked when given. A query whose
    every key is blocked gets an all-zero pattern row (TransformerLens maps the NaN to 0).
    """
    blocked = torch.as_tensor(blocked, dtype=torch.bool)
    if blocked.ndim != 3:
        raise ValueError(f"blocked must have shape [batch, query_pos, key_pos], got {tuple(blocked.shape)}")

    def hook(scores: Tensor, hook: Any = None) -> Tensor:
        q, k = scores.shape[-2:]
        if blocked.shape[0] != scores.shape[0] or blocked.shape[1] < q or blocked.shape[2] < k:
            raise ValueError(
                f"blocked has shape {tuple(blocked.shape)} but the attention scores are {tuple(scores.shape)}"
            )
        m = blocked[:, :q, :k].to(scores.device)[:, None]
        if head is not None:
            m = m & (torch.arange(scores.shape[1], device=scores.device) == head)[None, :, None, None]
        return scores.masked_fill(m, float("-inf"))

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


# ----------------------------------------------------------------------------- head ablation hooks
# (head ablation scans and attribution patching; icl_circuits.methods.heads)
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


# ----------------------------------------------------------------------------- the spec
#: Hook points of a site: ``Site(l, point).hook_name(model)``.
HOOK_POINTS: dict[str, str] = {
    "resid_pre": "blocks.{l}.hook_resid_pre", "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post", "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out", "z": "blocks.{l}.attn.hook_z", "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k", "v": "blocks.{l}.attn.hook_v", "pattern": "blocks.{l}.attn.hook_pattern",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
}
#: Operations of an ``Intervention``.
OPERATIONS = ("read", "replace", "add", "zero", "mean", "noise", "project_out", "scale_attention",
              "block_attention", "apply")
_HEADED = ("z", "q", "k", "v")


@dataclass(frozen=True)
class Site:
    """Where an intervention acts: ``layer`` (0-based; for ``point="resid_pre"``, ``layer ==
    n_layers`` is the final residual), a hook ``point`` (a key of ``HOOK_POINTS``) and, for
    per-head points (``z``, ``q``, ``k``, ``v``), an optional ``head``."""

    layer: int
    point: str = "resid_pre"
    head: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"Site.layer must be a non-negative integer, got {self.layer!r}")
        if self.point not in HOOK_POINTS:
            raise ValueError(f"Site.point must be one of {', '.join(HOOK_POINTS)}, got {self.point!r}")
        if self.head is not None and self.point not in _HEADED:
            raise ValueError(f"Site.head is only meaningful for per-head points ({', '.join(_HEADED)}), not {self.point!r}")

    def hook_name(self, model: Any) -> str:
        """The TransformerLens hook name of this site on ``model`` (checks the layer and head)."""
        if self.point == "resid_pre":
            return resid_name(model, self.layer)
        check_layer(model, self.layer, allow_final=False, arg="Site.layer")
        if self.head is not None:
            check_head(model, self.layer, self.head, arg="Site.head")
        return HOOK_POINTS[self.point].format(l=self.layer)


@dataclass(frozen=True, eq=False)
class Intervention:
    """One operation at one site, at per-prompt ``positions`` ([batch, n] or None: every position).

    ``op`` and what it uses:

    - ``read``: append the (detached) activation at ``positions`` to the list ``store``;
    - ``replace``: write ``value`` ([batch, n, d], [n, d] or [d]);
    - ``add``: add ``scale * value``;
    - ``zero`` / ``mean``: ablate (``mean``: write ``value``, the mean activation);
    - ``noise``: add Gaussian noise of std ``scale`` (``relative=True``: times each activation's
      norm / sqrt(d)), drawn with ``seed``;
    - ``project_out``: remove the component of ``act - centre`` in span(``value``) ([d, k]);
    - ``scale_attention``: for ``pattern``: multiply ``A[b, h, positions[b, 0], keys[b, j]]`` by
      ``value`` ([head, j] or [batch, head, j]); ``keys`` holds the key positions;
    - ``block_attention``: for ``attn_scores``: set the scores where ``value`` ([batch, q, k],
      bool) is True to -inf before the softmax (one head when ``site.head`` is given);
    - ``apply``: replace the selected activations ``x`` by ``fn(x)``.

    ``mask`` ([batch, n], from ``PositionSet.mask``): only entries where it is True are written.
    """

    site: Site
    op: str
    positions: Int[Tensor, "batch n"] | None = None
    value: Tensor | None = None
    mask: Bool[Tensor, "batch n"] | None = None
    scale: float | Tensor = 1.0
    seed: int = 0
    relative: bool = False
    centre: Tensor | None = None
    keys: Int[Tensor, "batch n"] | None = None
    fn: Callable[[Tensor], Tensor] | None = None
    store: list | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.site, Site):
            raise TypeError(f"Intervention.site must be a Site, got {type(self.site).__name__}")
        if self.op not in OPERATIONS:
            raise ValueError(f"Intervention.op must be one of {', '.join(OPERATIONS)}, got {self.op!r}")
        needs_value = {"replace", "add", "mean", "project_out", "scale_attention", "block_attention"}
        if self.op in needs_value and self.value is None:
            raise ValueError(f"Intervention op {self.op!r} needs a value")
        if self.op == "apply" and self.fn is None:
            raise ValueError("Intervention op 'apply' needs fn")
        if self.op == "read" and self.store is None:
            raise ValueError("Intervention op 'read' needs store (a list the activations are appended to)")
        if self.op == "scale_attention" and (self.site.point != "pattern" or self.keys is None or self.positions is None):
            raise ValueError("scale_attention acts on Site(l, 'pattern') and needs positions (queries) and keys")
        if self.op == "block_attention" and self.site.point != "attn_scores":
            raise ValueError("block_attention acts on Site(l, 'attn_scores')")
        if self.positions is None and self.op not in ("read", "block_attention", "apply", "zero", "add", "replace"):
            raise ValueError(f"Intervention op {self.op!r} needs positions")

    def hook(self, model: Any) -> tuple[str, Hook]:
        """``(hook_name, fn)`` for ``model.hooks``."""
        name, head, op = self.site.hook_name(model), self.site.head, self.op
        pos = self.positions
        if pos is None and op not in ("block_attention", "scale_attention"):
            return name, _everywhere(self, head)
        if op == "read":
            store = self.store

            def read(act: Tensor, hook: Any = None) -> Tensor:
                p = pos.to(act.device)
                rows = _rows(p)
                store.append((act[rows, p] if head is None else act[rows, p, head]).detach())
                return act

            return name, read
        if op == "replace":
            return name, replace_hook(pos, self.value, head, self.mask)
        if op == "add":
            return name, add_hook(pos, self.value, float(self.scale), head, self.mask)
        if op in ("zero", "mean"):
            return name, ablate_hook(pos, op, self.value, head, self.mask)
        if op == "noise":
            return name, noise_hook(pos, self.scale, self.seed, relative=self.relative, mask=self.mask)
        if op == "project_out":
            return name, project_out_centred_hook(pos, self.value, self.centre)
        if op == "scale_attention":
            return name, scale_pattern_hook(pos[:, 0], self.keys, self.value)
        if op == "block_attention":
            return name, block_attention_hook(self.value, head)
        return name, edit_at(pos, self.fn, head, self.mask)


def _everywhere(iv: Intervention, head: int | None) -> Hook:
    """Hook of an intervention without positions: it acts on every position."""
    sel = (lambda a: a) if head is None else (lambda a: a[..., head, :])  # noqa: E731

    def write(act: Tensor, new: Tensor) -> Tensor:
        if head is None:
            return new.to(act.dtype)
        act = act.clone()
        act[..., head, :] = new.to(act.dtype)
        return act

    def hook(act: Tensor, hook: Any = None) -> Tensor:
        x = sel(act)
        if iv.op == "read":
            iv.store.append(x.detach())
            return act
        if iv.op == "zero":
            return write(act, torch.zeros_like(x))
        if iv.op == "add":
            return write(act, x + float(iv.scale) * iv.value.to(x.device, x.dtype))
        if iv.op == "replace":
            return write(act, iv.value.to(x.device, x.dtype).expand_as(x))
        return write(act, iv.fn(x))

    return hook


def compile_hooks(model: Any, interventions: Sequence["Intervention | tuple[str, Hook]"]) -> HookList:
    """TransformerLens ``(hook_name, fn)`` pairs of ``interventions`` (specs are compiled with
    ``Intervention.hook``; ready pairs pass through), in order."""
    out: HookList = []
    for iv in interventions:
        if isinstance(iv, Intervention):
            out.append(iv.hook(model))
        elif isinstance(iv, tuple) and len(iv) == 2 and isinstance(iv[0], str) and callable(iv[1]):
            out.append(iv)
        else:
            raise TypeError(f"an intervention must be an Intervention or a (hook_name, fn) pair, got {iv!r}")
    return out
