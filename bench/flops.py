"""FLOP models of the benches: what a run costs in multiply-adds, counted from the model's shapes, so
each bench prints the speed-up its algorithm can reach at most (its "limit") beside the one it
measures. Imported by the bench scripts from their own directory.

Per token: a block costs ``2 * (weights of its matrices) + 4 * width * n_heads * d_head`` FLOPs
(every matrix-vector product, plus ``q k^T`` and ``A v`` over the ``width`` keys TransformerLens
computes for each query, causal mask or not); the unembedding costs ``2 * d_model * d_vocab``.
For SmolLM2-135M: 7.08 MFLOP per token per block (+ 0.02 MFLOP per key) and 56.6 MFLOP of
unembedding; norms, rotary, softmax and the embedding lookup are left out.
"""

from __future__ import annotations

from typing import Iterable


def block_flops(model, width: int) -> float:
    """FLOPs of one block for one token, with ``width`` keys."""
    weights = sum(p.numel() for p in model.blocks[0].parameters() if p.ndim >= 2)
    cfg = model.cfg
    return 2.0 * weights + 4.0 * width * cfg.n_heads * cfg.d_head


def unembed_flops(model) -> float:
    """FLOPs of unembedding one residual row (``d_model x d_vocab`` matrix-vector product)."""
    return 2.0 * model.cfg.d_model * model.cfg.d_vocab


def full_forward(model, batch: int, width: int, unembed_rows: int | None = None) -> float:
    """A full forward of ``batch`` x ``width`` tokens unembedding ``unembed_rows`` rows (default every position)."""
    rows = batch * width if unembed_rows is None else unembed_rows
    return batch * width * model.cfg.n_layers * block_flops(model, width) + rows * unembed_flops(model)


def patch_grid_limit(model, batch: int, width: int, cells: Iterable[tuple[int, int]]) -> dict:
    """TransformerLens's ``get_act_patch_resid_pre`` against ``patch_grid`` for the grid ``cells``
    ((layer, position) pairs), before skipping identical cells.

    TL: one clean ``run_with_cache`` plus one full forward with full unembedding per cell.
    patch_grid: the clean and corrupted caching forwards, then per cell (l, p) blocks l.. on
    positions p.. (keys 0..width-1 each) of every prompt and one unembedded row per prompt.
    """
    cells = list(cells)
    L, cb, cu = model.cfg.n_layers, block_flops(model, width), unembed_flops(model)
    tl = (1 + len(cells)) * full_forward(model, batch, width)
    ours = 2 * batch * width * L * cb + sum(batch * ((L - l) * (width - p) * cb + cu) for l, p in cells)
    return {"tl_gflop": tl / 1e9, "ours_gflop": ours / 1e9, "limit": tl / ours}


def layer_sweep_limit(model, batch: int, width: int, layers: Iterable[int]) -> dict:
    """A naive loop (one full forward per swept layer, full unembedding) against ``layer_sweep``
    (one caching forward, then blocks l.. of every prompt per layer l, one unembedded row per
    prompt and layer)."""
    layers = list(layers)
    L, cb, cu = model.cfg.n_layers, block_flops(model, width), unembed_flops(model)
    naive = len(layers) * full_forward(model, batch, width)
    ours = batch * width * L * cb + sum(batch * width * (L - min(l, L - 1)) * cb for l in layers) \
        + (1 + len(layers)) * batch * cu
    return {"naive_gflop": naive / 1e9, "ours_gflop": ours / 1e9, "limit": naive / ours}


def head_scan_limit(model) -> dict:
    """Naive scan (1 + L*H full forwards) against the batched scan (one caching forward, then for
    each head of block l the blocks l..: 1 + H * sum_l (L - l) / L forwards), final rows unembedded
    in both: the ratio of block counts ``(1 + L H) / (1 + H (L + 1) / 2)``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return {"naive_forwards": 1 + L * H, "scan_forwards": 1 + H * (L + 1) / 2,
            "limit": (1 + L * H) / (1 + H * (L + 1) / 2)}


def ltv_limit(model, layer: int, width: int, backward: float = 1.0) -> float:
    """Training at injection layer ``layer`` resuming from the cached residual against the full
    model, per step (forward, backward to theta). The model is frozen, so the backward computes
    input gradients only, about ``backward`` (1) times the forward, and only through blocks l..
    in both paths; the final row is unembedded in both. Per prompt of ``width`` tokens:
    cached ``(1 + b) ((L - l) c_b width + c_u)``, full ``L c_b width + b (L - l) c_b width + (1 + b) c_u``;
    at most ``(L + b (L - l)) / ((1 + b) (L - l))`` with no unembedding. The issue's target
    ``0.8 L / (L - l)`` counts the forward only: above this limit once ``l > L / 2`` or so."""
    L, cb, cu, b = model.cfg.n_layers, block_flops(model, width) * width, unembed_flops(model), backward
    cached = (1 + b) * ((L - layer) * cb + cu)
    full = L * cb + b * (L - layer) * cb + (1 + b) * cu
    return full / cached
