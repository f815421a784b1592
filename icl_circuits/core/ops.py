"""Operations of an ``Intervention``: one small class per kind of edit or read, one dispatch.

Each op declares, as class attributes, what it needs and where it may act, and builds its hook:

- ``needs``: the fields of the ``Intervention`` it cannot run without (``"value"``, ``"fn"``,
  ``"store"``, ``"positions"``, ``"keys"``); without ``"positions"``, ``positions=None`` means every
  position (``hook_all``);
- ``refuses``: what it would ignore, so a spec giving it is an error rather than a silent no-op
  (``"head"``: ``Site.head``; ``"mask"``; ``"positions"``);
- ``points``: the hook points (``Site.point``) it may act on, None for any;
- ``writes``: whether the hook's return value carries its effect (every edit, and the gradient tap,
  which must stay in the forward's path); False for a pure read, whose hook returns the
  activation itself;
- ``on_pattern(iv)``: for an op at ``attn_scores``, a hook at the same block's ``hook_pattern``
  with the same effect, where the scores cannot be edited (a bridge adapter that fires
  ``hook_attn_scores`` after the softmax); None when there is none.

``Intervention.hook`` calls ``op.check`` (at construction) and ``op.hook`` (at compile time): the
one dispatch. A new op is one class registered with ``@register``; nothing else changes. The
hooks are built by ``core.hook_fns``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icl_circuits.core.hook_fns import (
    Hook, ablate_hook, add_hook, block_attention_hook, edit_all, edit_at, noise_hook, pattern_block_hook,
    project_out_centred_hook, read_hook, replace_hook, scale_pattern_hook, tap_hook,
)

__all__ = ["Spec", "Op", "OPS", "register", "get_op", "Read", "Tap", "Replace", "Add", "Zero", "Mean", "Noise",
           "ProjectOut", "ScaleAttention", "BlockAttention", "Apply"]


class Spec(Protocol):
    """What an op reads from its ``Intervention`` (``core.interventions``; see its fields)."""

    site: Any
    positions: Int[Tensor, "batch n"] | None
    value: Tensor | None
    mask: Bool[Tensor, "batch n"] | None
    scale: float | Tensor
    seed: int
    relative: bool
    centre: Tensor | None
    keys: Int[Tensor, "batch n"] | None
    fn: Callable[[Tensor], Tensor] | None
    store: list | None


#: How a missing field is named in "needs ..." errors.
_NEEDED = {"value": "a value", "fn": "fn", "store": "store (a list the activations are appended to)",
           "positions": "positions", "keys": "keys (the key positions)"}
#: Whether a spec gives what an op may refuse, and how that is named in errors.
_GIVEN: dict[str, tuple[Callable[[Spec], bool], str]] = {
    "head": (lambda iv: iv.site.head is not None, "a head (Site.head)"),
    "mask": (lambda iv: iv.mask is not None, "a mask"),
    "positions": (lambda iv: iv.positions is not None, "positions"),
}


class Op:
    """One kind of intervention. Subclasses set ``name`` and the declarations, and implement
    ``hook_at`` (given positions) and, when positions are optional, ``hook_all`` (every position)."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    refuses: ClassVar[tuple[str, ...]] = ()
    points: ClassVar[tuple[str, ...] | None] = None
    writes: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def check(self, iv: Spec) -> None:
        """Refuse a spec this op cannot run as given (missing fields, ignored arguments, wrong point)."""
        for field in self.needs:
            if getattr(iv, field) is None:
                raise ValueError(f"Intervention op {self.name!r} needs {_NEEDED.get(field, field)}")
        self.check_more(iv)
        for what in self.refuses:
            given, said = _GIVEN[what]
            if given(iv):
                raise ValueError(f"Intervention op {self.name!r} does not use {said}; give none")
        if self.points is not None and iv.site.point not in self.points:
            where = " or ".join(f"Site(l, {p!r})" for p in self.points)
            raise ValueError(f"{self.name} acts on {where}")

    def check_more(self, iv: Spec) -> None:
        """Rules of this op beyond its declarations (none by default)."""

    def hook(self, iv: Spec) -> Hook:
        """The hook of ``iv``: ``hook_at`` at its positions, or ``hook_all`` when they are None."""
        return self.hook_all(iv) if iv.positions is None else self.hook_at(iv, iv.positions)

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        """The hook acting at per-prompt ``positions`` (only where ``iv.mask`` is True when given)."""
        raise NotImplementedError(f"op {self.name!r} has no hook at positions")

    def hook_all(self, iv: Spec) -> Hook:
        """The hook acting on every position."""
        raise NotImplementedError(f"op {self.name!r} needs positions")

    def on_pattern(self, iv: Spec) -> Hook | None:
        """A ``hook_pattern`` hook with this op's effect at ``hook_attn_scores`` (None: none exists)."""
        return None


#: The registered ops by name (what ``Intervention(site, op=name)`` accepts).
OPS: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    """Register the op class ``cls`` under ``cls.name`` (a class decorator); returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Op)) or not cls.name:
        raise TypeError(f"an op must be a subclass of Op with a name, got {cls!r}")
    known = OPS.get(cls.name)
    if known is not None and type(known) is not cls:
        raise ValueError(f"an op named {cls.name!r} is already registered ({type(known).__name__})")
    bad = [f for f in cls.needs if f not in _NEEDED] + [f for f in cls.refuses if f not in _GIVEN]
    if bad:
        raise ValueError(f"op {cls.name!r} declares unknown fields {bad}")
    OPS[cls.name] = cls()
    return cls


def get_op(op: str | Op | type[Op]) -> Op:
    """The registered op named ``op`` (an ``Op`` instance or subclass: by its name)."""
    name = op.name if isinstance(op, Op) or isinstance(op, type) and issubclass(op, Op) else op
    if not isinstance(name, str) or name not in OPS:
        raise ValueError(f"Intervention.op must be one of {', '.join(OPS)}, got {op!r}")
    return OPS[name]


# ----------------------------------------------------------------------------- reads
@register
class Read(Op):
    """Append the detached activation at ``positions`` (every position when None; ``[..., head, :]``
    with ``Site.head``) to the list ``store``; the forward is unchanged."""

    name = "read"
    needs = ("store",)
    refuses = ("mask",)
    writes = False

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return read_hook(iv.store, positions, iv.site.head)

    def hook_all(self, iv: Spec) -> Hook:
        return read_hook(iv.store, None, iv.site.head)


@register
class Tap(Op):
    """For gradients: add a zero tensor that requires grad to the whole activation and append
    ``(activation, tap)`` to ``store``; after a backward pass ``tap.grad`` is the total derivative
    of the loss with respect to the activation (``hook_fns.tap_hook``)."""

    name = "tap"
    needs = ("store",)
    refuses = ("mask",)

    def check_more(self, iv: Spec) -> None:
        if iv.positions is not None or iv.site.head is not None:
            raise ValueError("Intervention op 'tap' acts on the whole activation: give neither positions nor a head")

    def hook(self, iv: Spec) -> Hook:
        return tap_hook(iv.store)


# ----------------------------------------------------------------------------- writes
@register
class Replace(Op):
    """Write ``value`` ([batch, n, d], [n, d] or [d]; broadcast to the activation without positions)."""

    name = "replace"
    needs = ("value",)

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return replace_hook(positions, iv.value, iv.site.head, iv.mask)

    def hook_all(self, iv: Spec) -> Hook:
        value = iv.value
        return edit_all(lambda x: value.to(x.device, x.dtype).expand_as(x), iv.site.head)


@register
class Add(Op):
    """Add ``scale * value``."""

    name = "add"
    needs = ("value",)

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return add_hook(positions, iv.value, float(iv.scale), iv.site.head, iv.mask)

    def hook_all(self, iv: Spec) -> Hook:
        value, scale = iv.value, iv.scale
        return edit_all(lambda x: x + float(scale) * value.to(x.device, x.dtype), iv.site.head)


@register
class Zero(Op):
    """Zero ablation."""

    name = "zero"

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return ablate_hook(positions, "zero", iv.value, iv.site.head, iv.mask)

    def hook_all(self, iv: Spec) -> Hook:
        return edit_all(torch.zeros_like, iv.site.head)


@register
class Mean(Op):
    """Mean ablation: write ``value``, the mean activation."""

    name = "mean"
    needs = ("value", "positions")

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return ablate_hook(positions, "mean", iv.value, iv.site.head, iv.mask)


@register
class Noise(Op):
    """Add Gaussian noise of std ``scale`` (``relative=True``: times each activation's norm /
    sqrt(d)), drawn with ``seed`` (``hook_fns.noise_hook``)."""

    name = "noise"
    needs = ("positions",)
    refuses = ("head",)

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return noise_hook(positions, iv.scale, iv.seed, relative=iv.relative, mask=iv.mask)


@register
class ProjectOut(Op):
    """Remove the component of ``act - centre`` in span(``value``) ([d, k]):
    ``act - Q Q^T (act - centre)`` (``hook_fns.project_out_centred_hook``)."""

    name = "project_out"
    needs = ("value", "positions")
    refuses = ("head", "mask")

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return project_out_centred_hook(positions, iv.value, iv.centre)


# ----------------------------------------------------------------------------- attention edits
@register
class ScaleAttention(Op):
    """At ``pattern``: multiply ``A[b, h, positions[b, 0], keys[b, j]]`` by ``value`` ([head, j] or
    [batch, head, j]), out of place so that gradients reach ``value``; rows are not renormalised."""

    name = "scale_attention"
    needs = ("value", "positions", "keys")
    refuses = ("mask",)
    points = ("pattern",)

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return scale_pattern_hook(positions[:, 0], iv.keys, iv.value)


@register
class BlockAttention(Op):
    """At ``attn_scores``: set the scores where ``value`` ([batch, query_pos, key_pos], bool) is True
    to -inf before the softmax (one head when ``site.head`` is given). Where the scores cannot be
    edited, the same effect on the pattern: blocked entries 0, rows renormalised."""

    name = "block_attention"
    needs = ("value",)
    refuses = ("positions", "mask")
    points = ("attn_scores",)

    def hook(self, iv: Spec) -> Hook:
        return block_attention_hook(iv.value, iv.site.head)

    def on_pattern(self, iv: Spec) -> Hook | None:
        return pattern_block_hook(iv.value, iv.site.head)


# ----------------------------------------------------------------------------- any function
@register
class Apply(Op):
    """Replace the selected activations ``x`` by ``fn(x)``."""

    name = "apply"
    needs = ("fn",)

    def hook_at(self, iv: Spec, positions: Int[Tensor, "batch n"]) -> Hook:
        return edit_at(positions, iv.fn, iv.site.head, iv.mask)

    def hook_all(self, iv: Spec) -> Hook:
        return edit_all(iv.fn, iv.site.head)
