"""Weights stored in the memory layout TransformerLens's forward reads, so that it copies nothing.

TransformerLens 3 keeps ``W_U`` as ``[d_model, d_vocab]`` and a gated MLP's ``W_in``, ``W_gate``
(``[d_model, d_mlp]``) and ``W_out`` (``[d_mlp, d_model]``) row-major, and every forward calls
``F.linear(x, W.T.contiguous())``: a full copy of each matrix on every call (SmolLM2-135M: 30 x
10.6 MB of MLP weights and 113 MB of unembedding per forward, whatever the number of tokens). With
each such parameter stored column-major (same shape and values, ``W.T`` contiguous), ``.contiguous()``
returns ``W.T`` itself and ``F.linear`` receives exactly the tensor it received before, in the same
layout, so every forward is bit-for-bit unchanged (``tests/core/test_weight_layout.py``).

Measured on SmolLM2-135M, one thread, CPU time (docs/performance.md): a 1-token forward 0.36 s ->
0.11 s (3.1x), 4 prompts x 36 tokens 0.58 s -> 0.41 s (1.4x).

Code that multiplies these parameters itself (``x @ model.W_U``) gets the same values up to the
last bit (BLAS may pick another kernel for a transposed operand); ``.contiguous()`` copies a
parameter back to row-major where a library needs it (safetensors).
"""

from __future__ import annotations

from typing import Any

import torch

#: (module attribute path relative to a block or the model, parameter names) stored column-major
_BLOCK_PARAMS = ("W_in", "W_gate", "W_out")


def _column_major(p: torch.nn.Parameter) -> bool:
    """Store ``p`` ([m, n], row-major) column-major in place; True when it changed."""
    if p.ndim != 2 or p.T.is_contiguous():
        return False
    with torch.no_grad():
        p.data = p.data.T.contiguous().T
    return True


def store_for_forward(model: Any) -> int:
    """Store the weights TransformerLens transposes on every forward (gated MLPs' ``W_in``,
    ``W_gate``, ``W_out``; ``unembed.W_U``) column-major, in place. Only ``GatedMLP`` blocks are
    touched (a plain ``MLP`` reads its weights as stored). Returns the number of parameters changed."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    n = 0
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if type(mlp) is GatedMLP:
            n += sum(_column_major(getattr(mlp, name)) for name in _BLOCK_PARAMS)
    unembed = getattr(model, "unembed", None)
    if unembed is not None and isinstance(getattr(unembed, "W_U", None), torch.nn.Parameter):
        n += _column_major(unembed.W_U)
    return n


__all__ = ["store_for_forward"]
