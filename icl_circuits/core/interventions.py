"""Intervention specs: *what* to do to a model, as data. The runner (``core.runner``) executes them.

An ``Intervention`` is a site (``Site``: layer + hook point + optional head), per-prompt positions
(from ``PromptBatch.positions``; None: every position) and an op, named by a string: ``read``,
``tap``, ``replace``, ``add``, ``zero`` / ``mean`` ablation, ``noise``, ``project_out``,
``scale_attention``, ``block_attention`` or ``apply`` (a function of the selected activations).
Each op is a small class of ``core.ops`` that declares what it needs and where it may act and
builds its hook (with ``core.hook_fns``); a new op is one class registered there. ``compile_hooks``
turns specs into TransformerLens hook functions; only the runner attaches them
(``runner.hooked``), so hooks are removed also when an exception is raised. Argument checks
(``check_layer``, ``check_positions``...) live in ``core.checks``.

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
from typing import Callable, Sequence

from jaxtyping import Bool, Int
from torch import Tensor

from icl_circuits.core.checks import check_head, check_layer
from icl_circuits.core.ops import Op, get_op
from icl_circuits.core.types import HookedModel

from icl_circuits.core.hook_fns import (  # noqa: F401  (re-exported: the hook builders specs compile to)
    Ablation, Hook, HookList, ablate_hook, add_hook, block_attention_hook, edit_all, edit_at, gate_pattern_hook,
    noise_hook, project_out_centred_hook, project_out_hook, read_hook, replace_hook, scale_pattern_hook,
    stacked_head_ablation_hook, tap_hook,
)


# ----------------------------------------------------------------------------- hook names
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
#: Hook points whose edits act on attention itself (a bridge may refuse them: ``runner.backend``).
ATTENTION_POINTS = ("pattern", "attn_scores")
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

    ``op`` names a registered op of ``core.ops`` (an ``Op`` subclass or instance is accepted and
    stored by its name); ``op_kind`` is the op itself. What each uses (its class says more):

    - ``read``: append the (detached) activation at ``positions`` to the list ``store``;
    - ``tap``: for gradients: add a zero tensor that requires grad to the whole activation and
      append ``(activation, tap)`` to ``store`` (``tap.grad`` is then dL/d activation);
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
    A spec the op cannot run as given (a missing value, an argument it would ignore, a point it
    does not act on) is refused here, naming the op.
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
        kind = get_op(self.op)
        object.__setattr__(self, "op", kind.name)
        kind.check(self)

    @property
    def op_kind(self) -> Op:
        """The registered op (``core.ops``) named ``op``: what it needs, where it acts, its hook."""
        return get_op(self.op)

    def hook(self, model: HookedModel) -> tuple[str, Hook]:
        """``(hook_name, fn)`` for ``model.hooks``: the site's hook name and the op's hook."""
        return self.site.hook_name(model), self.op_kind.hook(self)


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
