"""``HookedModel``: what every analysis needs from a model object itself. Everything else (forwards,
hooks, caches, weights) it reaches through the model's runner backend, ``core.runner.backend_for(model)``
(``Backend``). Annotations only: nothing is checked at run time beyond what the runner checks.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["HookedModel"]


@runtime_checkable
class HookedModel(Protocol):
    """What icl-circuits reads from a model object directly (a TransformerLens ``HookedTransformer``
    and a TransformerLens 4 ``TransformerBridge`` in compatibility mode have both):

    - ``cfg``: n_layers, d_model, n_heads, d_head, d_vocab, n_ctx, device, dtype, model_name,
      default_prepend_bos (and, where the model has them, n_key_value_heads,
      positional_embedding_type, normalization_type, output_logits_soft_cap);
    - ``tokenizer``: a Hugging Face tokenizer with offsets.

    How the model runs is its backend's (``core/runner/backend.py``); a model of another kind gets a
    backend of its own (docs/architecture.md, "Adding a backend").
    """

    cfg: Any
    tokenizer: Any
