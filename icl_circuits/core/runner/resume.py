"""Resuming a forward at block ``l`` from the residual at its input, with what a full forward hands
every block besides the residual (shortformer positional embedding, the attention mask of a
left-padding tokenizer, positions offset by a key/value cache), so resumed runs equal the full
forward (``tests/core/test_resume.py``)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_circuits.core.types import HookedModel


def block_inputs(
    model: HookedModel, tokens: Int[Tensor, "batch pos"] | None, *, batch: int | None = None, width: int | None = None,
    past: int = 0,
) -> dict[str, Tensor]:
    """Keyword arguments a full forward over ``tokens`` passes to every block besides the residual:
    ``shortformer_pos_embed`` [batch, width, d_model] (shortformer models) and ``attention_mask``
    [batch, past + width] (when TransformerLens builds one), each only when the forward has it.

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


def _builds_mask(model: HookedModel) -> bool:
    """Whether ``model(tokens)`` computes an attention mask (TransformerLens: a left-padding tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    return tok is not None and getattr(tok, "padding_side", "right") == "left"


def resume(
    model: HookedModel,
    resid: Float[Tensor, "batch pos d_model"],
    start_at_layer: int,
    stop_at_layer: int | None = None,
    *,
    tokens: Int[Tensor, "batch pos"] | None,
    past: int = 0,
    **kwargs: Any,
) -> Tensor:
    """``model(resid, start_at_layer, stop_at_layer)`` (default: to the final residual, before
    ``ln_final``) with the per-block inputs a full forward over ``tokens`` computes
    (``block_inputs``), so that with no hooks it equals the full forward from block
    ``start_at_layer`` on. ``tokens``: the prompts' tokens ([batch, past + pos]; None only for
    unpadded inputs, see ``block_inputs``); ``past``: positions held in ``kwargs["past_kv_cache"]``.
    Other ``kwargs`` go to the model's forward.
    """
    n = model.cfg.n_layers
    if isinstance(start_at_layer, bool) or not isinstance(start_at_layer, int) or not 0 <= start_at_layer <= n:
        raise ValueError(f"start_at_layer must be an integer in [0, {n}], got {start_at_layer!r}")
    if tokens is not None and (tokens.ndim != 2 or tokens.shape[0] != resid.shape[0]
                               or tokens.shape[1] < past + resid.shape[1]):
        raise ValueError(f"tokens must have shape [batch={resid.shape[0]}, >= {past + resid.shape[1]}] to go with "
                         f"the residual {tuple(resid.shape)}, got {tuple(tokens.shape)}")
    from icl_circuits.core.runner import backend

    if backend.is_bridge(model):  # right-padded causal batches: no mask, positions 0, 1, ... (as block_inputs gives)
        return backend.forward(model, resid, start_at_layer=start_at_layer, stop_at_layer=stop_at_layer, **kwargs)
    extra = block_inputs(model, tokens, batch=resid.shape[0], width=resid.shape[1], past=past)
    return model(resid, start_at_layer=start_at_layer, stop_at_layer=n if stop_at_layer is None else stop_at_layer,
                 **extra, **kwargs)
