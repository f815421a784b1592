"""Runner backends: how a forward pass runs on each kind of model, chosen from the model object.

- **hooked**: a TransformerLens 3 ``HookedTransformer`` (its own ``forward(start_at_layer=...,
  stop_at_layer=..., past_kv_cache=...)``, ``run_with_cache``, ``hooks``).
- **bridge**: a TransformerLens 4 ``TransformerBridge`` in compatibility mode (the Hugging Face
  module wrapped with hook points under the TransformerLens 3 names). What differs, and how the
  runner keeps the numbers of the hooked backend:

  * ``stop_at_layer=n_layers`` returns logits on a bridge, not the final residual; and a bridge's
    ``start_at_layer=l`` still runs blocks ``0..l-1`` (their output is discarded when block ``l``
    swaps in the residual; their hooks fire on it). Here a segment ``[start, stop)`` runs blocks
    ``start..stop-1`` only: earlier blocks are bypassed for the call (their forward returns its
    input) and the run halts at block ``stop``'s input (or at ``ln_final``'s input), before that
    block's hooks, exactly as ``HookedTransformer.forward(start_at_layer, stop_at_layer)``.
  * keys and values cached for a suffix-only replay (``past_kv_cache``) are not supported: the
    runner raises ``NotImplementedError`` and callers with a fallback (``patch_grid``) run full
    width instead.
  * attention edits: ``hook_pattern`` / ``hook_attn_scores`` change the output only on attention
    adapters that compute attention themselves (the Llama family's
    ``PositionEmbeddingsAttentionBridge``, GPT-2's ``JointQKVAttentionBridge``, and, for the
    pattern only, TransformerLens's native attention). On the generic ``AttentionBridge`` the
    hooks fire on the weights Hugging Face returns, after the output is computed: an edit there
    would do nothing, so ``check_attention_edits`` refuses it, naming the adapter.
  * on grouped-query models a bridge's ``W_K``/``W_V`` have ``n_key_value_heads`` rows
    (``HookedTransformer`` repeats them to ``n_heads``): ``per_head`` repeats them.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from torch import Tensor

from icl_circuits.core.types import HookedModel

BACKENDS = ("hooked", "bridge")


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens 4 ``TransformerBridge`` (checked by class name, so
    TransformerLens 3 never imports the bridge)."""
    return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)


def backend_of(model: Any) -> str:
    """``"bridge"`` for a ``TransformerBridge``, else ``"hooked"``."""
    return "bridge" if is_bridge(model) else "hooked"


def tl_major() -> int:
    """Major version of the installed TransformerLens (3 for 3.x, 4 for 4.x)."""
    from importlib.metadata import version

    return int(version("transformer-lens").split(".")[0])


def available_backends() -> tuple[str, ...]:
    """Backends the installed TransformerLens provides: ``("hooked",)`` on 3.x (``TransformerBridge``
    there cannot resume mid-model), ``("bridge",)`` on 4.x (``HookedTransformer`` was removed)."""
    return ("bridge",) if tl_major() >= 4 else ("hooked",)


def resolve_backend(backend: str | None) -> str:
    """``backend`` checked against ``available_backends()`` (None: the one available)."""
    have = available_backends()
    if backend is None:
        return have[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (or None), got {backend!r}")
    if backend not in have:
        from importlib.metadata import version

        why = ("HookedTransformer was removed in TransformerLens 4.0" if backend == "hooked"
               else "icl-circuits runs TransformerBridge only with TransformerLens >= 4 (3.x bridges cannot resume mid-model)")
        raise ValueError(f"backend={backend!r} is not available with transformer-lens {version('transformer-lens')}: "
                         f"{why}; use backend={have[0]!r}")
    return backend


# ----------------------------------------------------------------------------- bridge segments
class _Halt(Exception):
    """Raised at the input of the block (or ``ln_final``) where a segment stops; carries the residual."""

    def __init__(self, resid: Tensor):
        super().__init__("segment end")
        self.resid = resid


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _block_returns_tuple(model: Any) -> bool:
    """Whether the wrapped model's blocks return ``(hidden,)`` (TransformerLens's native blocks) or a
    bare tensor (Hugging Face >= 4.54 decoder layers), from the block's return annotation."""
    import inspect

    inner = getattr(model.blocks[0], "original_component", None)
    ann = inspect.signature(type(inner).forward).return_annotation if inner is not None else None
    return "tuple" in str(ann).lower()


@contextmanager
def _segment(model: Any, start: int, stop: int) -> Iterator[None]:
    """For one call: blocks ``< start`` return their input unchanged (no hooks fire), and the
    forward halts (``_Halt``) at the input of block ``stop`` or, for ``stop == n_layers``, of
    ``ln_final``."""
    blocks, n = model.blocks, model.cfg.n_layers
    as_tuple = _block_returns_tuple(model) if start > 0 else False

    def bypass(*args: Any, **kwargs: Any) -> Any:
        x = _hidden(args, kwargs)
        return (x,) if as_tuple else x

    def halt(*args: Any, **kwargs: Any) -> Any:
        raise _Halt(_hidden(args, kwargs))

    def halt_pre(module: Any, args: tuple, kwargs: dict) -> None:
        raise _Halt(_hidden(args, kwargs))

    patched = []
    handle = None
    try:
        # object.__setattr__: a bridge component forwards attribute writes to the module it wraps
        for i in range(start):
            object.__setattr__(blocks[i], "forward", bypass)
            patched.append(blocks[i])
        if stop < n:
            object.__setattr__(blocks[stop], "forward", halt)
            patched.append(blocks[stop])
        else:
            handle = model.ln_final.register_forward_pre_hook(halt_pre, with_kwargs=True)
        yield
    finally:
        for b in patched:
            b.__dict__.pop("forward", None)
        if handle is not None:
            handle.remove()


def bridge_run(model: Any, x: Tensor, start: int, stop: int, **kwargs: Any) -> Tensor:
    """Residual at the input of block ``stop`` (``n_layers``: the final residual, before
    ``ln_final``) of a bridge run that starts from token ids ``x`` (``start == 0``) or from the
    residual ``x`` at the input of block ``start``; only blocks ``start..stop-1`` run."""
    if kwargs.get("past_kv_cache") is not None:
        raise NotImplementedError("TransformerBridge backend: runs over cached keys/values (suffix-only replay) "
                                  "are not supported; run the full width instead")
    kwargs.pop("past_kv_cache", None)
    n = model.cfg.n_layers
    if not 0 <= start <= stop <= n:
        raise ValueError(f"need 0 <= start_at_layer <= stop_at_layer <= {n}, got {start} and {stop}")
    tokens_in = not x.is_floating_point()
    if not tokens_in and start == stop:
        return x
    with _segment(model, start, stop):
        try:
            if tokens_in:
                if start != 0:
                    raise ValueError("token ids can only start a run at block 0")
                model(x, **kwargs)
            else:
                model(x, start_at_layer=start, **kwargs)
        except _Halt as h:
            return h.resid
    raise RuntimeError(f"the bridge's forward never reached block {stop}'s input")  # pragma: no cover


def forward(model: HookedModel, x: Tensor, *, start_at_layer: int | None = None, stop_at_layer: int | None = None,
            **kwargs: Any) -> Tensor:
    """``model(x, start_at_layer, stop_at_layer, **kwargs)`` with HookedTransformer's meaning on
    every backend: the residual at the input of block ``stop_at_layer`` (default ``n_layers``: the
    final residual, before ``ln_final``)."""
    n = model.cfg.n_layers
    stop = n if stop_at_layer is None else stop_at_layer
    if is_bridge(model):
        kwargs.pop("shortformer_pos_embed", None)
        kwargs.pop("attention_mask", None)  # right-padded causal batches need none (as on HookedTransformer)
        return bridge_run(model, x, 0 if start_at_layer is None else start_at_layer, stop, **kwargs)
    if start_at_layer is None:
        return model(x, stop_at_layer=stop, **kwargs)
    return model(x, start_at_layer=start_at_layer, stop_at_layer=stop, **kwargs)


def run_with_cache(model: HookedModel, x: Tensor, names: Callable[[str], bool], **kwargs: Any) -> tuple[Tensor, dict]:
    """``(final residual, {hook name: activation})`` of one forward from token ids ``x`` (or from a
    residual with ``start_at_layer``), caching the hook points for which ``names(name)`` is True.
    Hooks already attached (``hooked``) run first, so the cache sees their edits."""
    if not is_bridge(model):
        kwargs.setdefault("stop_at_layer", model.cfg.n_layers)
        return model.run_with_cache(x, names_filter=names, **kwargs)
    cache: dict[str, Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            cache[name] = act.detach()
            return act

        return hook

    wanted = [n for n in model.hook_dict if names(n)]
    for n in wanted:
        m = _SCORES.fullmatch(n)
        if m and not attention_seams(model, int(m.group(1)))[2]:
            _refuse(model, int(m.group(1)), "reading", "hook_attn_scores")
    with model.hooks(fwd_hooks=[(n, keep(n)) for n in wanted]):
        final = forward(model, x, **kwargs)
    return final, cache


def hooks(model: HookedModel, fwd: list, bwd: list) -> Any:
    """The model's ``hooks`` context (the same call on both backends)."""
    return model.hooks(fwd_hooks=fwd, bwd_hooks=bwd)


# ----------------------------------------------------------------------------- attention edits
#: Adapters that compute attention themselves, with the pattern and scores hooks inside the computation.
_REIMPLEMENTING = ("PositionEmbeddingsAttentionBridge", "JointQKVAttentionBridge")


def attention_seams(model: HookedModel, layer: int) -> tuple[str, bool, bool]:
    """``(adapter class name, pattern edits take effect, score edits take effect)`` for block
    ``layer``'s attention (always True, True on a HookedTransformer)."""
    attn = model.blocks[layer].attn
    name = type(attn).__name__
    if not is_bridge(model):
        return name, True, True
    mro = {c.__name__ for c in type(attn).__mro__}
    if mro & set(_REIMPLEMENTING):
        return name, True, True
    inner = getattr(attn, "original_component", None)
    pattern_inside = bool(getattr(inner, "accepts_pattern_fn", False))
    if pattern_inside:
        name = f"{name} around {type(inner).__name__}"
    return name, pattern_inside, False


def check_attention_edits(model: HookedModel, interventions: Sequence[Any]) -> list:
    """``interventions`` as a bridge can run them: edits (and gradient taps) of ``hook_pattern`` /
    ``hook_attn_scores`` whose hook the block's attention adapter fires after the output is computed
    are refused (the edit would do nothing and the analysis would report a null effect), except
    ``block_attention`` on an adapter that runs ``hook_pattern`` inside the computation (TransformerLens's
    native attention): blocking scores is then applied, exactly, to the pattern
    (``A'[q, k] = A[q, k] / sum_{k' not blocked} A[q, k']``, 0 where blocked; ``hook_fns.pattern_block_hook``).
    Reads of ``hook_pattern`` are always allowed; ``hook_attn_scores`` on such an adapter holds the
    post-softmax weights, so any hook there (a read, or a plain ``(name, fn)`` pair) is refused; other
    plain pairs are taken as given. Returns the list to compile (unchanged on a HookedTransformer)."""
    if not is_bridge(model):
        return list(interventions)
    from icl_circuits.core.hook_fns import pattern_block_hook
    from icl_circuits.core.interventions import Intervention

    out = []
    for iv in interventions:
        if isinstance(iv, tuple):
            m = _SCORES.fullmatch(str(iv[0]))
            if m and not attention_seams(model, int(m.group(1)))[2]:
                _refuse(model, int(m.group(1)), "a hook", "hook_attn_scores")
            out.append(iv)
            continue
        if not isinstance(iv, Intervention) or iv.site.point not in ("pattern", "attn_scores") or (
                iv.op == "read" and iv.site.point == "pattern"):
            out.append(iv)
            continue
        adapter, pattern_ok, scores_ok = attention_seams(model, iv.site.layer)
        if iv.site.point == "pattern" and pattern_ok or iv.site.point == "attn_scores" and scores_ok:
            out.append(iv)
            continue
        if iv.op == "block_attention" and pattern_ok:
            out.append((f"blocks.{iv.site.layer}.attn.hook_pattern", pattern_block_hook(iv.value, iv.site.head)))
            continue
        _refuse(model, iv.site.layer, f"op {iv.op!r}", "hook_pattern" if iv.site.point == "pattern" else "hook_attn_scores")
    return out


_SCORES = re.compile(r"blocks\.(\d+)\.attn\.hook_attn_scores")


def _refuse(model: HookedModel, layer: int, what: str, hook: str) -> None:
    adapter = attention_seams(model, layer)[0]
    raise NotImplementedError(
        f"{what} at blocks.{layer}.attn.{hook} cannot be exact on this TransformerBridge: its attention adapter "
        f"{adapter} fires {hook} on the weights Hugging Face returns (post-softmax), after the attention output is "
        f"computed, so an edit would change nothing and a read would not see the scores. Attention edits need an "
        f"adapter that re-implements attention ({', '.join(_REIMPLEMENTING)}; TransformerLens's native attention "
        f"for hook_pattern), or TransformerLens 3's HookedTransformer"
    )


# ----------------------------------------------------------------------------- weights
def per_head(model: HookedModel, w: Tensor) -> Tensor:
    """A key/value weight or bias with one row per *query* head: ``[n_kv_heads, ...]`` rows (a bridge
    on a grouped-query model) are repeated ``n_heads // n_kv_heads`` times each (query head h reads
    key/value head ``h // (n_heads // n_kv_heads)``, as HookedTransformer's ``W_V``); already
    per-head weights pass through."""
    h = model.cfg.n_heads
    if w.shape[0] == h:
        return w
    if h % w.shape[0]:
        raise ValueError(f"a weight with {w.shape[0]} head rows does not divide n_heads={h}")
    return w.repeat_interleave(h // w.shape[0], dim=0)


__all__ = [
    "BACKENDS", "is_bridge", "backend_of", "tl_major", "available_backends", "resolve_backend", "forward",
    "run_with_cache", "hooks", "bridge_run", "attention_seams", "check_attention_edits",
    "per_head",
]
