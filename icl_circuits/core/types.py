"""``HookedModel``: the interface every analysis needs from a model (TransformerLens's
``HookedTransformer`` has it; a TransformerLens 4 ``TransformerBridge`` in compatibility mode is
reached through its own runner backend). Annotations only: nothing is checked at run time
beyond what the runner checks.
"""

from __future__ import annotations

from typing import Any, ContextManager, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["HookedModel"]


@runtime_checkable
class HookedModel(Protocol):
    """What icl-circuits uses of a model.

    - ``cfg``: n_layers, d_model, n_heads, d_head, d_vocab, device, dtype, model_name,
      positional_embedding_type, output_logits_soft_cap, n_key_value_heads;
    - ``tokenizer`` (a Hugging Face tokenizer with offsets), ``to_tokens``;
    - ``forward(input, start_at_layer=..., stop_at_layer=..., past_kv_cache=...)``,
      ``run_with_cache(..., names_filter=...)``, ``hooks(fwd_hooks=..., bwd_hooks=...)``
      (called by ``core.runner`` only), ``input_to_embed``;
    - ``blocks``, ``ln_final``, ``unembed`` and the weight views ``W_U``, ``W_O``, ``W_V``.
    """

    cfg: Any
    tokenizer: Any
    blocks: nn.ModuleList
    ln_final: nn.Module
    unembed: nn.Module

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Tensor: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]: ...

    def hooks(self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., *args: Any, **kwargs: Any) -> ContextManager[Any]: ...

    def input_to_embed(self, tokens: Tensor, *args: Any, **kwargs: Any) -> tuple[Any, ...]: ...

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]: ...

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]: ...

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]: ...
