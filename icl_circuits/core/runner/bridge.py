"""The bridge backend: a TransformerLens 4 ``TransformerBridge`` in compatibility mode (the Hugging Face
module wrapped with hook points under the TransformerLens 3 names). What differs from a
``HookedTransformer``, and how this backend keeps its numbers:

- ``stop_at_layer=n_layers`` returns logits on a bridge, not the final residual; and a bridge's
  ``start_at_layer=l`` still runs blocks ``0..l-1`` (their output is discarded when block ``l``
  swaps in the residual; their hooks fire on it). Here a segment ``[start, stop)`` runs blocks
  ``start..stop-1`` only: earlier blocks are bypassed for the call (their forward returns its
  input) and the run halts at block ``stop``'s input (or at ``ln_final``'s input), before that
  block's hooks, exactly as ``HookedTransformer.forward(start_at_layer, stop_at_layer)``.
- greedy decoding uses Hugging Face's own key/value cache (``DynamicCache``, handed to the bridge's
  ``past_key_values``); suffix-only replay over recorded keys/values is not supported (``record_kv``
  raises ``NotImplementedError`` and callers with a fallback, ``patch_grid``, run full width).
- attention edits: ``hook_pattern`` / ``hook_attn_scores`` change the output only on attention
  adapters that compute attention themselves (the Llama family's
  ``PositionEmbeddingsAttentionBridge``, GPT-2's ``JointQKVAttentionBridge``, and, for the
  pattern only, TransformerLens's native attention). On the generic ``AttentionBridge`` the
  hooks fire on the weights Hugging Face returns, after the output is computed: an edit there
  would do nothing, so ``check_attention_edits`` refuses it, naming the adapter.
- on grouped-query models a bridge's ``W_K``/``W_V`` have ``n_key_value_heads`` rows: the weight
  views repeat them to ``n_heads`` (``TransformerLensBackend.per_head``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import Tensor

from icl_circuits.core.interventions import ATTENTION_POINTS, Intervention
from icl_circuits.core.runner.backend import TransformerLensBackend, register_backend, tl_major

#: Adapters that compute attention themselves, with the pattern and scores hooks inside the computation.
_REIMPLEMENTING = ("PositionEmbeddingsAttentionBridge", "JointQKVAttentionBridge")
_SCORES = re.compile(r"blocks\.(\d+)\.attn\.hook_attn_scores")


class _Halt(Exception):
    """Raised at the input of the block (or ``ln_final``) where a segment stops; carries the residual."""

    def __init__(self, resid: Tensor):
        super().__init__("segment end")
        self.resid = resid


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _block_returns_tuple(model: Any) -> bool:
    """Whether the wrapped model's blocks return ``(hidden,)`` (TransformerLens's native blocks) or a bare
    tensor. Every decoder layer of transformers >= 5 (the versions supported) returns the hidden states
    themselves, whatever its annotation says (Gemma 3's still reads ``tuple[...]``); native blocks are
    read from their return annotation."""
    from transformers import PreTrainedModel

    if isinstance(getattr(model, "original_model", None), PreTrainedModel):
        return False
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


@contextmanager
def _cache_named_for_adapters(model: Any, active: bool = True) -> Iterator[None]:
    """For one call: each block's attention adapter also receives Hugging Face's key/value cache as
    ``past_key_values``. Newer transformers (>= 5.2x) hand it to attention as ``cache``, while
    TransformerLens 4.3's re-implemented attention reads ``past_key_values`` (or ``layer_past``) and
    would otherwise compute without the cached positions."""

    def rename(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return args, kwargs

    handles = [b.attn.register_forward_pre_hook(rename, with_kwargs=True) for b in model.blocks] if active else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@register_backend
class BridgeBackend(TransformerLensBackend):
    """TransformerLens 4 ``TransformerBridge`` (compatibility mode)."""

    name: ClassVar[str] = "bridge"
    loads_models: ClassVar[bool] = True

    @property
    def supports_suffix_replay(self) -> bool:  # type: ignore[override]
        """Keys and values can be recorded and replayed where the bridge wraps a Hugging Face model
        (its cache), not on TransformerLens's native modules."""
        return self._hf_model() is not None

    def _hf_model(self) -> Any | None:
        from transformers import PreTrainedModel  # a dependency of every TransformerLens 4

        hf = getattr(self.model, "original_model", None)
        return hf if isinstance(hf, PreTrainedModel) else None

    @classmethod
    def claims(cls, model: Any) -> bool:
        # by class name, so TransformerLens 3 never imports the bridge
        return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)

    @classmethod
    def available(cls) -> str | None:
        if tl_major() < 4:
            return "icl-circuits runs TransformerBridge only with TransformerLens >= 4 (3.x bridges cannot resume mid-model)"
        return None

    # -- forwards
    def segment(self, x: Tensor, start: int, stop: int, **kwargs: Any) -> Tensor:
        """Residual at the input of block ``stop`` (``n_layers``: the final residual, before
        ``ln_final``) of a run that starts from token ids ``x`` (``start == 0``) or from the
        residual ``x`` at the input of block ``start``; only blocks ``start..stop-1`` run."""
        model, n = self.model, self.model.cfg.n_layers
        if not 0 <= start <= stop <= n:
            raise ValueError(f"need 0 <= start_at_layer <= stop_at_layer <= {n}, got {start} and {stop}")
        tokens_in = not x.is_floating_point()
        if not tokens_in and start == stop:
            return x
        cached = kwargs.get("past_key_values") is not None
        with _segment(model, start, stop), _cache_named_for_adapters(model, cached), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated", category=FutureWarning)
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

    def forward(self, x: Tensor, *, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                **kwargs: Any) -> Tensor:
        kwargs.pop("shortformer_pos_embed", None)
        kwargs.pop("attention_mask", None)  # right-padded causal batches need none (as on HookedTransformer)
        stop = self.model.cfg.n_layers if stop_at_layer is None else stop_at_layer
        return self.segment(x, 0 if start_at_layer is None else start_at_layer, stop, **kwargs)

    def resume(self, resid: Tensor, start_at_layer: int, stop_at_layer: int | None = None, *,
               tokens: Tensor | None, past: int = 0, past_kv: Any = None) -> Tensor:
        # right-padded causal batches: no mask, positions 0, 1, ... (what block_inputs gives the hooked backend);
        # with past_kv the Hugging Face model places the residual after the cached positions
        kw = {} if past_kv is None else {"past_key_values": past_kv}
        return self.forward(resid, start_at_layer=start_at_layer, stop_at_layer=stop_at_layer, **kw)

    # -- keys and values: Hugging Face's cache, in TransformerLens's layout [batch, pos, head, d_head]
    def record_kv(self, tokens: Tensor, names: Callable[[str], bool]) -> tuple[Tensor, dict, list]:
        cache = self.new_kv_cache(tokens.shape[0])
        if cache is None:
            return super().record_kv(tokens, names)
        final, acts = self.run_with_cache(tokens.to(self.model.cfg.device), names, past_key_values=cache)
        return final, acts, [(lay.keys.transpose(1, 2), lay.values.transpose(1, 2)) for lay in cache.layers]

    def frozen_kv(self, per_block: Sequence[tuple[Tensor, Tensor] | None]) -> Any:
        """A ``DynamicCache`` holding ``per_block`` (read, then extended by the run it is given to: build
        one per run). Blocks without keys and values are bypassed by the run; they hold zeros of the
        same shape so that the cache's length (read from block 0) is the number of past positions."""
        hf = self._hf_model()
        if hf is None:
            return super().frozen_kv(per_block)
        from transformers import DynamicCache

        some = next(kv for kv in per_block if kv is not None)
        filler = (torch.zeros_like(some[0]), torch.zeros_like(some[1]))
        data = [(k.transpose(1, 2), v.transpose(1, 2)) for k, v in (kv if kv is not None else filler for kv in per_block)]
        return DynamicCache(data, config=hf.config)

    def run_with_cache(self, x: Tensor, names: Callable[[str], bool], **kwargs: Any) -> tuple[Tensor, dict]:
        for n in self.hook_names():  # a read of post-softmax "scores" would be silently wrong: refused
            m = _SCORES.fullmatch(n)
            if m and names(n) and not self.attention_seams(int(m.group(1)))[2]:
                self._refuse(int(m.group(1)), "reading", "hook_attn_scores")
        return super().run_with_cache(x, names, **kwargs)

    # -- greedy decoding with Hugging Face's cache
    def new_kv_cache(self, batch_size: int) -> Any | None:
        """A Hugging Face ``DynamicCache`` when the bridge wraps a Hugging Face model (its layers read
        and extend it); None for TransformerLens's native modules, which take no cache."""
        from transformers import DynamicCache

        hf = self._hf_model()
        return None if hf is None else DynamicCache(config=hf.config)

    def decode(self, tokens: Tensor, kv_cache: Any) -> Tensor:
        # the bridge hands the cache to the Hugging Face model, which extends it in place and derives
        # the positions of ``tokens`` from its length; no mask (no padding is ever fed)
        before = kv_cache.get_seq_length()
        out = self.segment(tokens.to(self.model.cfg.device), 0, self.model.cfg.n_layers, past_key_values=kv_cache)
        if kv_cache.get_seq_length() != before + tokens.shape[1]:  # pragma: no cover - a model that ignored the cache
            raise RuntimeError("the bridged model did not extend the key/value cache; decode with use_cache=False")
        return out

    # -- attention edits
    def attention_seams(self, layer: int) -> tuple[str, bool, bool]:
        attn = self.model.blocks[layer].attn
        name = type(attn).__name__
        mro = {c.__name__ for c in type(attn).__mro__}
        if mro & set(_REIMPLEMENTING):
            return name, True, True
        inner = getattr(attn, "original_component", None)
        pattern_inside = bool(getattr(inner, "accepts_pattern_fn", False))
        if pattern_inside:
            name = f"{name} around {type(inner).__name__}"
        return name, pattern_inside, False

    def check_attention_edits(self, interventions: Sequence[Any]) -> list:
        """Edits (and gradient taps) of ``hook_pattern`` / ``hook_attn_scores`` whose hook the block's
        adapter fires after the output is computed are refused (the edit would do nothing and the
        analysis would report a null effect), except ``block_attention`` on an adapter that runs
        ``hook_pattern`` inside the computation (TransformerLens's native attention): blocking scores
        is then applied, exactly, to the pattern (``A'[q, k] = A[q, k] / sum_{k' not blocked} A[q, k']``,
        0 where blocked; ``hook_fns.pattern_block_hook``). Reads of ``hook_pattern`` are always allowed;
        ``hook_attn_scores`` on such an adapter holds the post-softmax weights, so any hook there (a
        read, or a plain ``(name, fn)`` pair) is refused; other plain pairs are taken as given."""
        out = []
        for iv in interventions:
            if isinstance(iv, tuple):
                m = _SCORES.fullmatch(str(iv[0]))
                if m and not self.attention_seams(int(m.group(1)))[2]:
                    self._refuse(int(m.group(1)), "a hook", "hook_attn_scores")
                out.append(iv)
                continue
            if not isinstance(iv, Intervention) or iv.site.point not in ATTENTION_POINTS or (
                    not iv.op_kind.writes and iv.site.point == "pattern"):
                out.append(iv)
                continue
            _, pattern_ok, scores_ok = self.attention_seams(iv.site.layer)
            if iv.site.point == "pattern" and pattern_ok or iv.site.point == "attn_scores" and scores_ok:
                out.append(iv)
                continue
            on_pattern = iv.op_kind.on_pattern(iv) if pattern_ok else None
            if on_pattern is not None:  # e.g. blocking scores, applied exactly to the pattern
                out.append((f"blocks.{iv.site.layer}.attn.hook_pattern", on_pattern))
                continue
            self._refuse(iv.site.layer, f"op {iv.op!r}", "hook_pattern" if iv.site.point == "pattern" else "hook_attn_scores")
        return out

    def _refuse(self, layer: int, what: str, hook: str) -> None:
        adapter = self.attention_seams(layer)[0]
        raise NotImplementedError(
            f"{what} at blocks.{layer}.attn.{hook} cannot be exact on this TransformerBridge: its attention adapter "
            f"{adapter} fires {hook} on the weights Hugging Face returns (post-softmax), after the attention output is "
            f"computed, so an edit would change nothing and a read would not see the scores. Attention edits need an "
            f"adapter that re-implements attention ({', '.join(_REIMPLEMENTING)}; TransformerLens's native attention "
            f"for hook_pattern), or TransformerLens 3's HookedTransformer"
        )


__all__ = ["BridgeBackend"]
