"""Figures for key heads: the key-head scores as a layer x head heatmap, and the accuracy drop when
the top-k key heads vs k random heads are ablated."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from icl_circuits.methods.key_heads import KeyHeadAblationResult, KeyHeadsResult
from icl_circuits.viz.heads import head_heatmap, head_layout
from icl_circuits.viz import _style

__all__ = ["key_heads", "key_vs_random", "key_head_layers"]


@_style.figure
def key_heads(result: KeyHeadsResult, title: str | None = None) -> go.Figure:
    """Heatmap of the key-head scores (mean DLA of each head's contribution), rank in the hover."""
    rank = {tuple(lh): r for r, lh in enumerate(result.ranking)}
    hover = [[f"L{l}H{h}<br>score {float(result.scores[i, h]):.4f}<br>rank {rank[(l, h)] + 1}"
              for h in range(result.scores.shape[1])] for i, l in enumerate(result.layers)]
    fig = go.Figure(head_heatmap(result.scores, result.layers, hover, "DLA"))
    return head_layout(fig, title or f"Key heads ({result.source} DLA) for the vector at layer {result.injection_layer} "
                       f"- {result.model}, {result.task}")


@_style.figure
def key_vs_random(result: KeyHeadAblationResult, title: str | None = None) -> go.Figure:
    """Accuracy drop when the top-k key heads vs k random heads are ablated (random: mean, error
    bars = standard deviation over draws, dots = each draw)."""
    ks = [str(k) for k in result.ks]
    rd = result.random_drop.numpy()
    fig = go.Figure()
    fig.add_bar(x=ks, y=result.top_drop.numpy(), name="top-k key heads",
                hovertemplate="k=%{x}: drop %{y:.3f}<extra>key heads</extra>")
    fig.add_bar(x=ks, y=rd.mean(1), name=f"k random heads ({rd.shape[1]} draws)",
                error_y=dict(type="data", array=rd.std(1)),
                customdata=np.stack([rd.std(1), rd.min(1), rd.max(1)], 1),
                hovertemplate="k=%{x}: mean drop %{y:.3f} (sd %{customdata[0]:.3f}, "
                              "range %{customdata[1]:.3f}..%{customdata[2]:.3f})<extra>random</extra>")
    fig.add_scatter(x=np.repeat(ks, rd.shape[1]), y=rd.flatten(), mode="markers", name="random draws",
                    marker=dict(size=5, color="black", opacity=0.4), hovertemplate="k=%{x}: drop %{y:.3f}<extra></extra>")
    fig.update_layout(
        title=title or f"Ablating key vs random heads ({result.how}) with the vector at layer {result.injection_layer}: "
                       f"accuracy {result.vector_accuracy:.3f} with the vector, {result.no_vector_accuracy:.3f} without "
                       f"- {result.model}, {result.task}",
        xaxis_title="k (heads ablated)", yaxis_title="accuracy drop", barmode="group", template="plotly_white",
    )
    return fig


@_style.figure
def key_head_layers(results: list[KeyHeadsResult], top: int = 10, title: str | None = None) -> go.Figure:
    """Where the top key heads sit: for each injection layer (one row), the blocks holding its ``top``
    highest-ranked heads (marker size = number of heads in that block), with the injection layer
    marked; the blocks just after the injection and the final blocks are the paper's two clusters."""
    if not results:
        raise ValueError("results is empty: give at least one KeyHeadsResult")
    fig = go.Figure()
    for i, r in enumerate(results):
        blocks = [int(lh[0]) for lh in r.ranking[:top]]
        xs, counts = np.unique(blocks, return_counts=True)
        y = f"injected at {r.injection_layer}"
        fig.add_scatter(x=xs, y=[y] * len(xs), mode="markers", name=y, showlegend=False,
                        marker=dict(size=8 + 6 * counts, color=_style.color(i)), customdata=counts,
                        hovertemplate=f"{y}<br>block %{{x}}: %{{customdata}} of the top {top}<extra></extra>")
        fig.add_scatter(x=[r.injection_layer], y=[y], mode="markers", showlegend=i == 0, name="injection layer",
                        marker=dict(symbol="line-ns-open", size=22, color="black", line=dict(width=3, color="black")),
                        hoverinfo="skip")
    n_blocks = max(max(r.layers) for r in results) + 1
    fig.update_layout(title=title or f"Blocks of the top-{top} key heads by injection layer - {results[0].model}, "
                                     f"{results[0].task}",
                      xaxis_title="block of the head", xaxis_range=[-0.5, n_blocks - 0.5], template="plotly_white",
                      height=max(300, 120 + 60 * len(results)))
    return fig
