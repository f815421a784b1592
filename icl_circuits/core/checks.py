"""Argument checks shared by the spec, the runner and every method: layers, heads, vectors and
per-prompt positions, each refused with a message that names the argument and its valid range.

Each check returns what it validated (normalised where it says so), so a method writes
``layer = check_layer(model, layer)`` once at its entry.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.types import HookedModel

__all__ = ["check_layer", "check_layers", "check_head", "check_vector", "check_positions"]


def check_layer(model: HookedModel, layer: int, *, allow_final: bool = True, arg: str = "layer") -> int:
    """Validate a layer index (0..n_layers, or 0..n_layers-1 with ``allow_final=False``)."""
    n = model.cfg.n_layers
    top = n if allow_final else n - 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= top:
        raise ValueError(f"{arg} must be an integer in [0, {top}] for a model with {n} layers, got {layer!r}")
    return layer


def check_layers(model: HookedModel, layers: Sequence[int] | None, *, allow_final: bool = True,
                 arg: str = "layers") -> list[int]:
    """Validated layer indices (``check_layer`` each); None: every layer (0..n_layers, or
    0..n_layers-1 with ``allow_final=False``). An empty list is an error."""
    n = model.cfg.n_layers
    out = list(range(n + 1 if allow_final else n)) if layers is None else [
        check_layer(model, l, allow_final=allow_final, arg=arg) for l in layers]
    if not out:
        raise ValueError(f"{arg} is empty")
    return out


def check_head(model: HookedModel, layer: int, head: int, arg: str = "head") -> tuple[int, int]:
    """Validate a (layer, head) pair."""
    check_layer(model, layer, allow_final=False)
    h = model.cfg.n_heads
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < h:
        raise ValueError(f"{arg} must be an integer in [0, {h - 1}] (the model has {h} heads per layer), got {head!r}")
    return layer, head


def check_vector(model: HookedModel, vector: Tensor, arg: str = "vector") -> Tensor:
    """Validate that the last dimension of ``vector`` is ``d_model`` and that every value is finite
    (a NaN or inf vector would silently turn every logit it reaches into NaN)."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.shape[-1] != model.cfg.d_model:
        raise ValueError(
            f"{arg} has width {vector.shape[-1]} but the model's d_model is {model.cfg.d_model}"
        )
    if vector.is_floating_point() or vector.is_complex():
        bad = ~torch.isfinite(vector.detach())
        if bad.any():
            raise ValueError(f"{arg} contains NaN or inf ({int(bad.sum())} of {vector.numel()} values)")
    return vector


def check_positions(batch: PromptBatch, positions: Tensor, arg: str = "positions") -> Int[Tensor, "batch n"]:
    """Validate per-prompt positions ``[batch, n]`` (or ``[n]``, the same for every prompt): every
    ``positions[b, j]`` lies in ``0..final_positions[b]``. Returns them as a long ``[batch, n]`` tensor."""
    pos = torch.as_tensor(positions, dtype=torch.long)
    if pos.ndim == 1:
        pos = pos[None].expand(len(batch), -1)
    if pos.ndim != 2 or pos.shape[0] != len(batch):
        raise ValueError(f"{arg} must have shape [batch={len(batch)}, n] or [n], got {tuple(pos.shape)}")
    bad = (pos < 0) | (pos > batch.final_positions[:, None])
    if bad.any():
        b, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{arg}[{b}, {j}] = {int(pos[b, j])} is outside prompt {b}, whose positions are 0..{int(batch.final_positions[b])}"
        )
    return pos
