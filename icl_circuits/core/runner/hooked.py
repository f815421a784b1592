"""The hooked backend: a TransformerLens 3 ``HookedTransformer``, run by its own
``forward(start_at_layer=..., stop_at_layer=..., past_kv_cache=...)``, ``run_with_cache`` and ``hooks``.

What a resumed run needs besides the residual (``block_inputs``): the shortformer positional
embedding and the attention mask of a left-padding tokenizer, both computed by the model's own
``input_to_embed``, at positions offset by any cached prefix. Keys and values are recorded and
replayed with TransformerLens's ``past_kv_cache`` entries (``_RecordKV`` / ``_FrozenKV``), and greedy
decoding uses TransformerLens's key/value cache.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Callable, ClassVar, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from icl_circuits.core.runner.backend import TransformerLensBackend, register_backend

try:
    from transformer_lens import HookedTransformer
except ImportError:  # TransformerLens >= 4 removed it
    HookedTransformer = None  # type: ignore[assignment,misc]
try:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as _KVCache
except ImportError:  # older layouts
    try:
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache as _KVCache
    except ImportError:
        _KVCache = None  # type: ignore[assignment,misc]


def block_inputs(
    model: Any, tokens: Int[Tensor, "batch pos"] | None, *, batch: int | None = None, width: int | None = None,
    past: int = 0,
) -> dict[str, Tensor]:
    """Keyword arguments a full ``HookedTransformer`` forward over ``tokens`` passes to every block
    besides the residual: ``shortformer_pos_embed`` [batch, width, d_model] (shortformer models) and
    ``attention_mask`` [batch, past + width] (when TransformerLens builds one), each only when the
    forward has it.

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


class _FrozenKV:
    """A frozen key/value cache entry (TransformerLens's ``past_kv_cache_entry`` interface)."""

    def __init__(self, keys: Tensor, values: Tensor):
        self.past_keys, self.past_values = keys, values

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cat([self.past_keys, k], 1), torch.cat([self.past_values, v], 1)


class _RecordKV(_FrozenKV):
    """An empty cache entry that records the keys and values attention appends to it."""

    def __init__(self) -> None:
        super().__init__(torch.empty(0, 0), torch.empty(0, 0))
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.keys, self.values = k, v
        return k, v


@register_backend
class HookedBackend(TransformerLensBackend):
    """TransformerLens 3 ``HookedTransformer``: every call is the model's own."""

    name: ClassVar[str] = "hooked"
    supports_suffix_replay: ClassVar[bool] = True
    loads_models: ClassVar[bool] = True

    @classmethod
    def claims(cls, model: Any) -> bool:
        return HookedTransformer is not None and isinstance(model, HookedTransformer)

    @classmethod
    def available(cls) -> str | None:
        if HookedTransformer is None:
            return f"HookedTransformer was removed in TransformerLens 4.0 (installed: {version('transformer-lens')})"
        return None

    def forward(self, x: Tensor, *, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                **kwargs: Any) -> Tensor:
        stop = self.model.cfg.n_layers if stop_at_layer is None else stop_at_layer
        if start_at_layer is None:
            return self.model(x, stop_at_layer=stop, **kwargs)
        return self.model(x, start_at_layer=start_at_layer, stop_at_layer=stop, **kwargs)

    def resume(self, resid: Tensor, start_at_layer: int, stop_at_layer: int | None = None, *,
               tokens: Tensor | None, past: int = 0, past_kv: Any = None) -> Tensor:
        extra = block_inputs(self.model, tokens, batch=resid.shape[0], width=resid.shape[1], past=past)
        return self.forward(resid, start_at_layer=start_at_layer, stop_at_layer=stop_at_layer, past_kv_cache=past_kv,
                            **extra)

    def run_with_cache(self, x: Tensor, names: Callable[[str], bool], **kwargs: Any) -> tuple[Tensor, dict]:
        kwargs.setdefault("stop_at_layer", self.model.cfg.n_layers)
        return self.model.run_with_cache(x, names_filter=names, **kwargs)

    def record_kv(self, tokens: Tensor, names: Callable[[str], bool]) -> tuple[Tensor, dict, list]:
        n, dev = self.model.cfg.n_layers, self.model.cfg.device
        rec = [_RecordKV() for _ in range(n)]
        x0 = self.model(tokens.to(dev), stop_at_layer=0)
        final, cache = self.model.run_with_cache(x0, start_at_layer=0, stop_at_layer=n, past_kv_cache=rec,
                                                 names_filter=names, **block_inputs(self.model, tokens))
        return final, cache, [(r.keys, r.values) for r in rec]

    def frozen_kv(self, per_block: Sequence[tuple[Tensor, Tensor] | None]) -> list:
        return [None if kv is None else _FrozenKV(*kv) for kv in per_block]

    def new_kv_cache(self, batch_size: int) -> Any | None:
        if _KVCache is None:  # pragma: no cover - every supported TransformerLens 3 has one
            return None
        return _KVCache.init_cache(self.model.cfg, self.model.cfg.device, batch_size)

    def decode(self, tokens: Tensor, kv_cache: Any) -> Tensor:
        ones = torch.ones(tokens.shape[0], tokens.shape[1], dtype=torch.long, device=self.model.cfg.device)
        # an explicit all-ones mask: TransformerLens would otherwise guess padding from pad-token ids
        return self.forward(tokens.to(self.model.cfg.device), past_kv_cache=kv_cache, attention_mask=ones)


__all__ = ["HookedBackend", "block_inputs"]
