"""Runner backends: one object per model that knows how a forward pass runs on that kind of model.

Everything that differs by model kind lives behind ``Backend`` (a Protocol): forwards that start
and stop at any block, resuming from a residual, caching activations, recording and replaying
keys/values, greedy decoding with a key/value cache, hook attachment, which attention hooks may
be edited, and weight views (per query head, grouped-query heads expanded). The rest of the
package gets the object with ``backend_for(model)`` and never asks which class the model has.

Built in (registered when ``icl_circuits.core.runner`` is imported):

- ``HookedBackend`` (``core/runner/hooked.py``): a TransformerLens 3 ``HookedTransformer``.
- ``BridgeBackend`` (``core/runner/bridge.py``): a TransformerLens 4 ``TransformerBridge`` in
  compatibility mode.

A new backend subclasses ``TransformerLensBackend`` (or implements ``Backend`` from scratch) and
calls ``register_backend``; docs/architecture.md has the checklist and ``tests/core/hf_backend.py``
is a worked example (a plain ``transformers`` model with torch hooks).

Layer convention (every backend): "layer l" is the input of block l (``blocks.{l}.hook_resid_pre``);
layer ``n_layers`` is the final residual (``blocks.{n_layers-1}.hook_resid_post``, before the
final norm).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.metadata import version
from typing import Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Hooks as ``model.hooks`` takes them: ``[(hook_name, fn(act, hook) -> act | None), ...]``.
HookPairs = list[tuple[str, Callable]]


@runtime_checkable
class Backend(Protocol):
    """What the runner needs from a model. Shapes follow TransformerLens; every tensor returned is on
    the model's device in its dtype unless said otherwise."""

    #: short name recorded in results (``model_info["backend"]``) and taken by ``load_model(backend=)``
    name: ClassVar[str]
    #: the model this backend runs
    model: Any
    #: whether ``record_kv`` / ``resume(..., past_kv=...)`` work (suffix-only replay over cached keys/values)
    supports_suffix_replay: ClassVar[bool]

    # -- forwards
    def forward(self, x: Tensor, *, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                **kwargs: Any) -> Float[Tensor, "batch pos d_model"]:
        """Residual at the input of block ``stop_at_layer`` (default ``n_layers``: the final residual,
        before the final norm) of a run from token ids ``x`` or, with ``start_at_layer``, from the
        residual ``x`` at the input of that block; only blocks ``start..stop-1`` run."""

    def resume(self, resid: Float[Tensor, "batch pos d_model"], start_at_layer: int, stop_at_layer: int | None = None,
               *, tokens: Int[Tensor, "batch pos"] | None, past: int = 0, past_kv: Any = None) -> Tensor:
        """``forward(resid, start_at_layer, stop_at_layer)`` with what a full forward over ``tokens``
        gives every block besides the residual (positions, padding mask), so that with no hooks it
        equals the full forward; ``past_kv`` (from ``frozen_kv``) holds ``past`` earlier positions."""

    def run_with_cache(self, x: Tensor, names: Callable[[str], bool], **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """``(final residual, {hook name: activation})`` of one forward, caching the hook points for
        which ``names(name)`` is True; hooks already attached run first."""

    def record_kv(self, tokens: Int[Tensor, "batch pos"], names: Callable[[str], bool]
                  ) -> tuple[Tensor, dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        """``run_with_cache`` over ``tokens`` that also returns every block's keys and values
        ``[(keys, values)]`` ([batch, pos, head, d_head] each), for ``frozen_kv``."""

    def frozen_kv(self, per_block: Sequence[tuple[Tensor, Tensor] | None]) -> Any:
        """A key/value cache holding ``per_block[i]`` for block i (None: a block that does not run),
        read but never extended by ``resume(..., past_kv=...)``."""

    # -- greedy decoding
    def new_kv_cache(self, batch_size: int) -> Any | None:
        """An empty key/value cache for incremental decoding (None: this backend has none)."""

    def decode(self, tokens: Int[Tensor, "batch pos"], kv_cache: Any) -> Float[Tensor, "batch pos d_model"]:
        """Final residual of ``tokens`` placed after the positions already in ``kv_cache``, which is
        extended by them (every row advances by the same number of positions; no padding)."""

    # -- hooks
    def hooks(self, fwd: HookPairs, bwd: HookPairs) -> AbstractContextManager:
        """A context in which the hooks are attached; they are removed on exit, also on an error."""

    def check_attention_edits(self, interventions: Sequence[Any]) -> list:
        """``interventions`` as this backend can run them exactly; edits it cannot apply exactly
        raise ``NotImplementedError`` naming why."""

    def attention_seams(self, layer: int) -> tuple[str, bool, bool]:
        """``(attention module name, pattern edits take effect, score edits take effect)`` for block ``layer``."""

    # -- weights and unembedding
    def W_Q(self, layer: int) -> Float[Tensor, "head d_model d_head"]: ...
    def W_K(self, layer: int) -> Float[Tensor, "head d_model d_head"]: ...
    def W_V(self, layer: int) -> Float[Tensor, "head d_model d_head"]: ...
    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]: ...
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]: ...
    def ln1(self, layer: int) -> Callable[[Tensor], Tensor]: ...
    def attn_out_gain(self, layer: int, z: Float[Tensor, "... head d_head"]) -> Float[Tensor, "... d_model"] | None: ...
    def ln_final(self) -> Callable[[Tensor], Tensor] | None: ...
    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]: ...


# ----------------------------------------------------------------------------- shared TransformerLens behaviour
class TransformerLensBackend:
    """What a model with TransformerLens's names (``cfg``, ``blocks[l].attn.W_Q``..., ``ln_final``,
    ``unembed``, ``hooks(fwd_hooks, bwd_hooks)``) shares; subclasses add the forwards.

    Weight views are detached (analyses read weights; nothing here trains them). Key and value
    weights have one row per *query* head: ``n_kv_heads`` rows (grouped-query attention) are
    repeated ``n_heads // n_kv_heads`` times each (query head h reads key/value head
    ``h // (n_heads // n_kv_heads)``, as ``HookedTransformer.W_V``)."""

    name: ClassVar[str] = ""
    supports_suffix_replay: ClassVar[bool] = False
    #: loads models through ``core.models.load_model(backend=name)``
    loads_models: ClassVar[bool] = False

    def __init__(self, model: Any):
        self.model = model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(getattr(self.model, 'cfg', None), 'model_name', '?')})"

    # -- registry questions
    @classmethod
    def claims(cls, model: Any) -> bool:
        """Whether this backend runs ``model``."""
        raise NotImplementedError

    @classmethod
    def available(cls) -> str | None:
        """None when the installed packages provide this backend, else why not (for load_model's error)."""
        return None

    # -- defaults every subclass may keep
    def hooks(self, fwd: HookPairs, bwd: HookPairs) -> AbstractContextManager:
        return self.model.hooks(fwd_hooks=fwd, bwd_hooks=bwd)

    def hook_names(self) -> list[str]:
        """The hook points ``hooks`` accepts (default: the model's ``hook_dict``)."""
        return list(self.model.hook_dict)

    def run_with_cache(self, x: Tensor, names: Callable[[str], bool], **kwargs: Any) -> tuple[Tensor, dict]:
        """``forward`` with a storing hook on every point of ``hook_names()`` that ``names`` selects
        (attached after any hooks already in place, so the cache sees their edits)."""
        cache: dict[str, Tensor] = {}

        def keep(name: str) -> Callable:
            def hook(act: Tensor, hook: Any = None) -> Tensor:
                cache[name] = act.detach()
                return act

            return hook

        with self.hooks([(n, keep(n)) for n in self.hook_names() if names(n)], []):
            final = self.forward(x, **kwargs)
        return final, cache

    def check_attention_edits(self, interventions: Sequence[Any]) -> list:
        return list(interventions)

    def attention_seams(self, layer: int) -> tuple[str, bool, bool]:
        return type(self.model.blocks[layer].attn).__name__, True, True

    def record_kv(self, tokens: Tensor, names: Callable[[str], bool]) -> tuple[Tensor, dict, list]:
        raise NotImplementedError(f"{type(self).__name__}: recording keys/values for suffix-only replay is not "
                                  "supported; run the full width instead")

    def frozen_kv(self, per_block: Sequence[tuple[Tensor, Tensor] | None]) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: runs over cached keys/values (suffix-only replay) are "
                                  "not supported; run the full width instead")

    def new_kv_cache(self, batch_size: int) -> Any | None:
        return None

    def decode(self, tokens: Tensor, kv_cache: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no key/value cache for decoding")

    # -- weights
    def per_head(self, w: Tensor) -> Tensor:
        """A key/value weight or bias with one row per query head (grouped-query rows repeated)."""
        h = self.model.cfg.n_heads
        if w.shape[0] == h:
            return w
        if h % w.shape[0]:
            raise ValueError(f"a weight with {w.shape[0]} head rows does not divide n_heads={h}")
        return w.repeat_interleave(h // w.shape[0], dim=0)

    def W_Q(self, layer: int) -> Tensor:
        return self.model.blocks[layer].attn.W_Q.detach()

    def W_K(self, layer: int) -> Tensor:
        return self.per_head(self.model.blocks[layer].attn.W_K.detach())

    def W_V(self, layer: int) -> Tensor:
        return self.per_head(self.model.blocks[layer].attn.W_V.detach())

    def W_O(self, layer: int) -> Tensor:
        return self.model.blocks[layer].attn.W_O.detach()

    def W_U(self) -> Tensor:
        return self.model.W_U.detach()

    def ln1(self, layer: int) -> Callable[[Tensor], Tensor]:
        return self.model.blocks[layer].ln1

    def attn_out_gain(self, layer: int, z: Tensor) -> Tensor | None:
        """What multiplies each head's ``z_h W_O[h]`` on its way into the residual, for the head outputs
        ``z`` ([..., head, d_head], every head of block ``layer`` at some positions): None when the
        block adds ``sum_h z_h W_O[h] + b_O`` as it is (pre-norm blocks), else the post-attention
        RMSNorm's per-position gain ``g / sqrt(mean(s^2) + eps)`` with ``s = sum_h z_h W_O[h] + b_O``
        (Gemma 2/3: ``ln1_post``). ``sum_h gain * z_h W_O[h]`` is then exactly the block's attention
        output (``hook_attn_out``) when ``b_O = 0``; a decomposition that moves ``z`` uses the gain of
        the run it reads. ``g`` is read off the norm itself (``norm(1) * sqrt(1 + eps)``), so folded and
        (1 + w) gains are both what the model applies."""
        post = getattr(self.model.blocks[layer], "ln1_post", None)
        if post is None:
            return None
        W_O = self.W_O(layer)
        attn = self.model.blocks[layer].attn
        b_O = getattr(attn, "b_O", None)
        if b_O is not None and bool(b_O.detach().abs().max() > 0):
            raise NotImplementedError(f"block {layer}: a post-attention norm after a nonzero output bias b_O "
                                      "cannot be split into per-head terms")
        eps = float(self.model.cfg.eps)
        d = W_O.shape[-1]
        ones = torch.ones(1, 1, d, device=W_O.device, dtype=W_O.dtype)
        g = (post(ones)[0, 0] * (1.0 + eps) ** 0.5).detach()
        s = torch.einsum("...he,hed->...d", z.to(W_O.device, W_O.dtype), W_O)
        return g * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)

    def ln_final(self) -> Callable[[Tensor], Tensor] | None:
        return getattr(self.model, "ln_final", None)

    def unembed(self, resid: Tensor) -> Tensor:
        """``ln_final`` (when the model has one), ``unembed``, then the output soft cap
        ``c * tanh(logits / c)`` when ``cfg.output_logits_soft_cap > 0`` (as ``HookedTransformer.forward``
        does; it changes probabilities, never the argmax)."""
        shape = resid.shape
        x = resid.reshape(1, -1, shape[-1])
        ln = self.ln_final()
        if ln is not None:
            x = ln(x)
        logits = self.model.unembed(x).reshape(*shape[:-1], -1)
        cap = float(getattr(getattr(self.model, "cfg", None), "output_logits_soft_cap", -1.0) or -1.0)
        return cap * torch.tanh(logits / cap) if cap > 0 else logits


# ----------------------------------------------------------------------------- registry
_REGISTRY: list[type] = []
_ATTR = "_icl_circuits_backend"


def register_backend(cls: type) -> type:
    """Add a backend class (usable as a decorator). Later registrations are asked first, so a backend
    registered by a user or a test takes the models it ``claims`` before the built-in ones."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if any(c.name == cls.name and c is not cls for c in _REGISTRY):
        raise ValueError(f"a backend named {cls.name!r} is already registered")
    if cls not in _REGISTRY:
        _REGISTRY.append(cls)
    return cls


def unregister_backend(cls: type) -> None:
    """Remove a backend class registered with ``register_backend`` (models already bound keep theirs)."""
    if cls in _REGISTRY:
        _REGISTRY.remove(cls)


def registered_backends() -> tuple[type, ...]:
    """The registered backend classes, in the order they are asked (newest first)."""
    return tuple(reversed(_REGISTRY))


def backend_for(model: Any) -> Backend:
    """The backend that runs ``model``: chosen once (the first registered class, newest first, whose
    ``claims(model)`` is True) and kept on the model."""
    cached = model.__dict__.get(_ATTR) if hasattr(model, "__dict__") else None
    if cached is not None:
        return cached
    for cls in registered_backends():
        if cls.claims(model):
            be = cls(model)
            object.__setattr__(model, _ATTR, be)  # a bridge forwards ordinary attribute writes to its module
            return be
    raise TypeError(f"no runner backend runs a model of type {type(model).__name__}; registered: "
                    f"{', '.join(c.__name__ for c in registered_backends()) or 'none'} "
                    "(load models with icl_circuits.load_model, or register_backend a backend for this class)")


def backend_names() -> tuple[str, ...]:
    """Names of the registered backends that load models (``load_model(backend=...)``)."""
    return tuple(c.name for c in _REGISTRY if getattr(c, "loads_models", False))


def available_backends() -> tuple[str, ...]:
    """Model-loading backends the installed packages provide (``("hooked",)`` with TransformerLens 3,
    ``("bridge",)`` with TransformerLens 4)."""
    return tuple(c.name for c in _REGISTRY if getattr(c, "loads_models", False) and c.available() is None)


def resolve_backend(backend: str | None) -> str:
    """``backend`` checked against ``available_backends()`` (None: the first available)."""
    have = available_backends()
    if backend is None:
        if not have:
            raise RuntimeError("no model-loading backend is available: install transformer-lens>=3.9,<5")
        return have[0]
    names = backend_names()
    if backend not in names:
        raise ValueError(f"backend must be one of {', '.join(names)} (or None), got {backend!r}")
    if backend not in have:
        why = next(c for c in _REGISTRY if c.name == backend).available()
        raise ValueError(f"backend={backend!r} is not available with transformer-lens {version('transformer-lens')}: "
                         f"{why}; use backend={have[0]!r}" if have else "")
    return backend


def tl_major() -> int:
    """Major version of the installed TransformerLens (3 for 3.x, 4 for 4.x)."""
    return int(version("transformer-lens").split(".")[0])


__all__ = [
    "Backend", "TransformerLensBackend", "HookPairs", "register_backend", "unregister_backend", "registered_backends",
    "backend_for", "backend_names", "available_backends", "resolve_backend", "tl_major",
]
