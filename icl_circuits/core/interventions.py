"""Intervention specs: *what* to do to a model, as data. The runner (``core.runner``) executes them.

An ``Intervention`` is a site (``Site``: layer + hook point + optional head), per-prompt positions
(from ``PromptBatch.positions``; None: every position) and an operation: ``read``, ``replace``,
``add``, ``zero`` / ``mean`` ablation, ``noise``, ``project_out``, ``scale_attention``,
``block_attention`` or ``apply`` (a function of the selected activations). ``compile_hooks``
turns specs into TransformerLens hook functions, built by ``core.hook_fns``; only the
runner attaches them (``runner.hooked``), so hooks are removed also when an exception is raised.

Vocabulary (TransformerLens hook names):
- ``resid_name(model, l)``: the residual stream at the *input* of block ``l``
  (``blocks.{l}.hook_resid_pre``); ``l == n_layers`` is the final residual
  (``blocks.{n_layers-1}.hook_resid_post``, before ``ln_final``).
- ``z_name(l)``: ``blocks.{l}.attn.hook_z``, each head's output before ``W_O``
  ([batch, pos, head, d_head]).

Positions are per prompt: an int tensor ``[batch, n]`` (a padded batch has different positions in
every row; see ``PromptBatch.positions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.types import HookedModel

from icl_circuits.core.hook_fns import (  # noqa: F401  (re-exported: the hook builders specs compile to)
    Ablation, Hook, HookList, _rows, ablate_hook, add_hook, block_attention_hook, edit_at, gate_pattern_hook, noise_hook,
    project_out_centred_hook, project_out_hook, replace_hook, scale_pattern_hook, stacked_head_ablation_hook, tap_hook,
)


# ----------------------------------------------------------------------------- names and checks
def check_layer(model: HookedModel, layer: int, *, allow_final: bool = True, arg: str = "layer") -> int:
    """Validate a layer index (0..n_layers, or 0..n_layers-1 with ``allow_final=False``)."""
    n = model.cfg.n_layers
    top = n if allow_final else n - 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= top:
        raise ValueError(f"{arg} must be an integer in [0, {top}] for a model with {n} layers, got {layer!r}")
    return layer


def check_layers(model: HookedModel, layers: Sequence[int] | None, *, allow_final: bool = True,
                 arg: str = "layers") -> list[int]:
    """Validated layer indices (``check_layer`` each); None: every layer (0..n_layers, or
    0..n_layers-1 with ``allow_final=False``). An empty list is an error."""
    n = model.cfg.n_layers
    out = list(range(n + 1 if allow_final else n)) if layers is None else [
        check_layer(model, l, allow_final=allow_final, arg=arg) for l in layers]
    if not out:
        raise ValueError(f"{arg} is empty")
    return out


def check_head(model: HookedModel, layer: int, head: int, arg: str = "head") -> tuple[int, int]:
    """Validate a (layer, head) pair."""
    check_layer(model, layer, allow_final=False)
    h = model.cfg.n_heads
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < h:
        raise ValueError(f"{arg} must be an integer in [0, {h - 1}] (the model has {h} heads per layer), got {head!r}")
    return layer, head


def check_vector(model: HookedModel, vector: Tensor, arg: str = "vector") -> Tensor:
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


def resid_name(model: HookedModel, layer: int) -> str:
    """Hook name of the residual stream at the input of block ``layer`` (``n_layers``: final)."""
    check_layer(model, layer)
    if layer == model.cfg.n_layers:
        return f"blocks.{layer - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_resid_pre"


def z_name(layer: int) -> str:
    """Hook name of the heads' outputs before W_O in block ``layer``."""
    return f"blocks.{layer}.attn.hook_z"






# ----------------------------------------------------------------------------- attention hook names
# (saliency flow, attention isolation and anchor re-weighting; Wang et al. 2023)
def attn_scores_name(layer: int) -> str:
    """Hook name of block ``layer``'s pre-softmax attention scores ([batch, head, query_pos, key_pos])."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def pattern_name(layer: int) -> str:
    """Hook name of block ``layer``'s post-softmax attention pattern ([batch, head, query_pos, key_pos])."""
    return f"blocks.{layer}.attn.hook_pattern"




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
OPERATIONS = ("read", "tap", "replace", "add", "zero", "mean", "noise", "project_out", "scale_attention",
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

    def hook_name(self, model: HookedModel) -> str:
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
    - ``tap``: for gradients: add a zero tensor that requires grad to the whole activation and
      append ``(activation, tap)`` to ``store``; after a backward pass ``tap.grad`` is the total
      derivative of the loss with respect to the activation (``hook_fns.tap_hook``);
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
        if self.op in ("read", "tap") and self.store is None:
            raise ValueError(f"Intervention op {self.op!r} needs store (a list the activations are appended to)")
        if self.op == "tap" and (self.positions is not None or self.site.head is not None):
            raise ValueError("Intervention op 'tap' acts on the whole activation: give neither positions nor a head")
        if self.op == "scale_attention" and (self.site.point != "pattern" or self.keys is None or self.positions is None):
            raise ValueError("scale_attention acts on Site(l, 'pattern') and needs positions (queries) and keys")
        if self.op == "block_attention" and self.site.point != "attn_scores":
            raise ValueError("block_attention acts on Site(l, 'attn_scores')")
        if self.positions is None and self.op not in ("read", "tap", "block_attention", "apply", "zero", "add", "replace"):
            raise ValueError(f"Intervention op {self.op!r} needs positions")

    def hook(self, model: HookedModel) -> tuple[str, Hook]:
        """``(hook_name, fn)`` for ``model.hooks``."""
        name, head, op = self.site.hook_name(model), self.site.head, self.op
        pos = self.positions
        if op == "tap":
            return name, tap_hook(self.store)
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


def compile_hooks(model: HookedModel, interventions: Sequence["Intervention | tuple[str, Hook]"]) -> HookList:
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
