"""Resuming a forward at block ``l`` from the residual at its input, with what a full forward hands
every block besides the residual (shortformer positional embedding, the attention mask of a
left-padding tokenizer, positions offset by a key/value cache), so resumed runs equal the full
forward (``tests/core/test_resume.py``). How is the backend's (``Backend.resume``)."""

from __future__ import annotations

from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from icl_circuits.core.runner.backend import backend_for
from icl_circuits.core.runner.hooked import block_inputs  # noqa: F401  (re-exported: the hooked backend's block inputs)
from icl_circuits.core.types import HookedModel


def resume(
    model: HookedModel,
    resid: Float[Tensor, "batch pos d_model"],
    start_at_layer: int,
    stop_at_layer: int | None = None,
    *,
    tokens: Int[Tensor, "batch pos"] | None,
    past: int = 0,
    past_kv: Any = None,
) -> Tensor:
    """``model(resid, start_at_layer, stop_at_layer)`` (default: to the final residual, before
    ``ln_final``) with the per-block inputs a full forward over ``tokens`` computes, so that with
    no hooks it equals the full forward from block ``start_at_layer`` on. ``tokens``: the prompts'
    tokens ([batch, past + pos]; None only for unpadded inputs: positions 0, 1, ... without a
    padding mask); ``past_kv``: a cache of ``past`` earlier positions (``Backend.frozen_kv``).
    """
    n = model.cfg.n_layers
    if isinstance(start_at_layer, bool) or not isinstance(start_at_layer, int) or not 0 <= start_at_layer <= n:
        raise ValueError(f"start_at_layer must be an integer in [0, {n}], got {start_at_layer!r}")
    if tokens is not None and (tokens.ndim != 2 or tokens.shape[0] != resid.shape[0]
                               or tokens.shape[1] < past + resid.shape[1]):
        raise ValueError(f"tokens must have shape [batch={resid.shape[0]}, >= {past + resid.shape[1]}] to go with "
                         f"the residual {tuple(resid.shape)}, got {tuple(tokens.shape)}")
    return backend_for(model).resume(resid, start_at_layer, stop_at_layer, tokens=tokens, past=past, past_kv=past_kv)
