"""Weights stored in the memory layout TransformerLens's forward reads, so that it copies nothing.

TransformerLens 3 keeps ``W_U`` as ``[d_model, d_vocab]`` and a gated MLP's ``W_in``, ``W_gate``
(``[d_model, d_mlp]``) and ``W_out`` (``[d_mlp, d_model]``) row-major, and every forward calls
``F.linear(x, W.T.contiguous())``: a full copy of each matrix on every call (SmolLM2-135M: 30 x
10.6 MB of MLP weights and 113 MB of unembedding per forward, whatever the number of tokens). With
each such parameter stored column-major (same shape and values, ``W.T`` contiguous), ``.contiguous()``
returns ``W.T`` itself and ``F.linear`` receives exactly the tensor it received before, in the same
layout: the same computation on the same shapes, so on any one machine every forward is bit-for-bit
unchanged (``tests/core/test_weight_layout.py``). Attention
likewise: ``W_Q``, ``W_K``, ``W_V`` (``[head, d_model, d_head]``, read as ``(head d_head) d_model``)
and ``W_O`` (``[head, d_head, d_model]``, read as ``d_model (head d_head)``) are rearranged and
copied on every forward; stored as permuted views of tensors already in the order read, the
rearrangement is a view.

Measured on SmolLM2-135M, one thread, CPU time (docs/performance.md): a 1-token forward 0.36 s ->
0.11 s (3.1x) with the MLP and unembedding weights, 0.069 s (5.2x) with attention's too; 4 prompts
x 36 tokens 0.58 s -> 0.41 s (1.4x) -> 0.36 s (1.6x).

Code that multiplies these parameters itself (``x @ model.W_U``) gets the same values up to the
last bit (BLAS may pick another kernel for a transposed operand); ``.contiguous()`` copies a
parameter back to row-major where a library needs it (safetensors).
"""

from __future__ import annotations

from typing import Any

import torch

#: a gated MLP's parameters that TransformerLens reads transposed (stored column-major)
_BLOCK_PARAMS = ("W_in", "W_gate", "W_out")


def _column_major(p: torch.nn.Parameter) -> bool:
    """Store ``p`` ([m, n], row-major) column-major in place; True when it changed."""
    if p.ndim != 2 or p.T.is_contiguous():
        return False
    with torch.no_grad():
        p.data = p.data.T.contiguous().T
    return True


def _permuted(p: torch.nn.Parameter, read: tuple[int, ...]) -> bool:
    """Store ``p`` so that ``p.permute(*read)`` (the order TransformerLens reads it in) is contiguous."""
    if not isinstance(p, torch.nn.Parameter) or p.ndim != len(read) or p.permute(*read).is_contiguous():
        return False
    inverse = tuple(sorted(range(len(read)), key=read.__getitem__))
    with torch.no_grad():
        p.data = p.data.permute(*read).contiguous().permute(*inverse)
    return True


def store_for_forward(model: Any) -> int:
    """Store the weights TransformerLens transposes or rearranges on every forward (gated MLPs'
    ``W_in``, ``W_gate``, ``W_out``; ``unembed.W_U``; attention's ``W_Q``, ``W_K``, ``W_V``,
    ``W_O``) in the order it reads them, in place; shapes and values are unchanged. Only
    ``GatedMLP`` blocks' MLPs are touched (a plain ``MLP`` reads its weights as stored), and only
    ``Attention`` / ``GroupedQueryAttention`` (grouped key/value weights: ``_W_K``, ``_W_V``).
    Returns the number of parameters changed."""
    from transformer_lens.components import Attention, GroupedQueryAttention
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    n = 0
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if type(mlp) is GatedMLP:
            n += sum(_column_major(getattr(mlp, name)) for name in _BLOCK_PARAMS)
        attn = getattr(block, "attn", None)
        if type(attn) in (Attention, GroupedQueryAttention):
            kv = ("_W_K", "_W_V") if type(attn) is GroupedQueryAttention else ("W_K", "W_V")
            n += sum(_permuted(getattr(attn, name), (0, 2, 1)) for name in ("W_Q", *kv))  # (head d_head) d_model
            n += _permuted(attn.W_O, (2, 0, 1))  # d_model (head d_head)
    unembed = getattr(model, "unembed", None)
    if unembed is not None and isinstance(getattr(unembed, "W_U", None), torch.nn.Parameter):
        n += _column_major(unembed.W_U)
    return n


__all__ = ["store_for_forward"]
