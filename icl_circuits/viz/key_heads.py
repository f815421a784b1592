"""Figures for key heads: the key-head scores as a layer x head heatmap, and the accuracy drop when
the top-k key heads vs k random heads are ablated."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from icl_circuits.methods.key_heads import KeyHeadAblationResult, KeyHeadsResult
from icl_circuits.viz.heads import head_heatmap, head_layout
from icl_circuits.viz import _style

__all__ = ["key_heads", "key_vs_random"]


@_style.figure
def key_heads(result: KeyHeadsResult, title: str | None = None) -> go.Figure:
    """Heatmap of the key-head scores (mean DLA of each head's contribution), rank in the hover."""
    rank = {tuple(lh): r for r, lh in enumerate(result.ranking)}
    hover = [[f"L{l}H{h}<br>score {float(result.scores[i, h]):.4f}<br>rank {rank[(l, h)] + 1}"
              for h in range(result.scores.shape[1])] for i, l in enumerate(result.layers)]
    fig = go.Figure(head_heatmap(result.scores, result.layers, hover, "DLA"))
    return head_layout(fig, title or f"Key heads ({result.source} DLA) for the vector at layer {result.injection_layer} "
                       f"- {result.model_name}, {result.task}")


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
                       f"- {result.model_name}, {result.task}",
        xaxis_title="k (heads ablated)", yaxis_title="accuracy drop", barmode="group", template="plotly_white",
    )
    return fig
