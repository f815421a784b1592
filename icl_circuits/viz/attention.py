"""Figures of one prompt: a head's attention pattern, the next-token distribution, and one layer's
heads ablated exactly next to their attribution estimates (the explorer's views)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from icl_circuits.methods.heads import HeadScanResult
from icl_circuits.viz import _style

__all__ = ["pattern", "top_tokens", "layer_heads", "token_labels"]


def token_labels(tokens: Sequence[str], marked: Sequence[int] = (), final: int | None = None) -> list[str]:
    """Axis labels ``position:token``; label words (``marked``) get a star, the final position an arrow."""
    marked = set(marked)
    return [f"{p}:{t!r}" + (" *" if p in marked else " →" if p == final else "") for p, t in enumerate(tokens)]


@_style.figure
def pattern(values: Float[Tensor, "query_pos key_pos"], tokens: Sequence[str], layer: int, head: int, *,
            label_positions: Sequence[int] = (), model: str = "", title: str | None = None) -> go.Figure:
    """Heatmap of one head's attention pattern ``A[l, h][q, k] = softmax_k(q_q . k_k / sqrt(d_head))``
    on one prompt: rows are query positions, columns key positions; label words (``label_positions``,
    the demos' answer tokens) are starred and the final position has an arrow."""
    n = len(tokens)
    if tuple(values.shape) != (n, n):
        raise ValueError(f"values must be [{n}, {n}] (one row and column per token), got {tuple(values.shape)}")
    names = token_labels(tokens, label_positions, n - 1)
    fig = go.Figure(go.Heatmap(
        z=values.detach().cpu().float().numpy(), x=names, y=names, colorscale="Blues", zmin=0, zmax=1,
        colorbar=dict(title="attention"),
        hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"Attention of L{layer}H{head} on this prompt - {model}",
                      xaxis_title="key position (attended to)", yaxis_title="query position",
                      yaxis_autorange="reversed", template="plotly_white", height=560)
    return fig


@_style.figure
def top_tokens(top: Sequence[tuple[str, float]], gold: str = "", title: str | None = None) -> go.Figure:
    """Bar chart of the most likely next tokens at the final position with their probabilities;
    the bar of the gold answer's first token is green."""
    words = [repr(t) for t, _ in top]
    colors = ["#2ca02c" if gold and t.strip() and gold.startswith(t.strip()) else "#7f7f7f" for t, _ in top]
    fig = go.Figure(go.Bar(x=[p for _, p in top], y=words, orientation="h", marker_color=colors,
                           hovertemplate="%{y}: p = %{x:.4f}<extra></extra>"))
    fig.update_layout(title=title or "Top next tokens (softmax at the final position)", xaxis_title="probability",
                      xaxis_range=[0, 1], yaxis_autorange="reversed", template="plotly_white", height=300)
    return fig


@_style.figure
def layer_heads(exact: HeadScanResult, approx: HeadScanResult, layer: int, selected: int | None = None,
                title: str | None = None) -> go.Figure:
    """One layer's heads: the exact change of the metric when each head is ablated alone
    (``head_ablation_scan``) next to its attribution-patching estimate (``head_attribution``)."""
    if layer not in exact.layers or layer not in approx.layers:
        raise ValueError(f"layer {layer} is not in both scans (exact: {exact.layers}, estimate: {approx.layers})")
    e, a = exact.effect[exact.layers.index(layer)], approx.effect[approx.layers.index(layer)]
    heads = [f"H{h}" + (" (clicked)" if h == selected else "") for h in range(exact.n_heads)]
    fig = go.Figure([
        go.Bar(name="exact ablation", x=heads, y=e.tolist(), marker_color="#1f77b4",
               hovertemplate="%{x}: exact %{y:+.3f}<extra></extra>"),
        go.Bar(name="attribution estimate", x=heads, y=a.tolist(), marker_color="#ff7f0e",
               hovertemplate="%{x}: estimate %{y:+.3f}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", template="plotly_white", height=340,
                      title=title or f"Layer {layer}: change of {exact.metric} when each head is {exact.how}-ablated "
                                     f"(clean {float(exact.clean.mean()):.3f})",
                      yaxis_title=f"delta {exact.metric}", legend=dict(orientation="h", y=-0.2))
    return fig
