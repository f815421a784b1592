"""Figures for the OV decomposition of an injected vector: layer x head heatmaps of each head's
exact and OV-approximated DLA, and accuracy of the reconstructions at the final residual."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_circuits.methods.ov_circuits import OVResult, ReconstructionResult
from icl_circuits.viz.heads import head_heatmap, head_layout
from icl_circuits.viz import _style

__all__ = ["ov_heads", "reconstruction"]


@_style.figure
def ov_heads(result: OVResult, title: str | None = None) -> go.Figure:
    """Three heatmaps (layer x head): DLA of each head's exact change, of its OV approximation,
    and the mean cosine between the two vectors."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("exact DLA", "OV DLA", "cosine(OV, exact)"))
    for c, (name, t) in enumerate((("exact DLA", result.exact_dla), ("OV DLA", result.ov_dla), ("cosine", result.cosine))):
        m = t.mean(-1)
        hover = [[f"L{l}H{h}<br>{name}: {float(m[i, h]):.4f}<br>exact DLA {float(result.exact_dla[i, h].mean()):.4f}"
                  f"<br>OV DLA {float(result.ov_dla[i, h].mean()):.4f}<br>|exact| {float(result.exact_norm[i, h].mean()):.3f}"
                  f" |OV| {float(result.ov_norm[i, h].mean()):.3f}" for h in range(result.n_heads)]
                 for i, l in enumerate(result.layers)]
        fig.add_trace(head_heatmap(m, result.layers, hover, name, showscale=c == 2), row=1, col=c + 1)
    return head_layout(fig, title or f"Heads carrying the vector injected at layer {result.injection_layer} "
                       f"(LN {result.ln}) - {result.model}, {result.task}")


@_style.figure
def reconstruction(result: ReconstructionResult, title: str | None = None) -> go.Figure:
    """Accuracy per reconstruction condition, Wilson 95% intervals as error bars."""
    v, lo, hi = result.values.numpy(), result.low.numpy(), result.high.numpy()
    fig = go.Figure(go.Bar(
        x=result.conditions, y=v, error_y=dict(type="data", symmetric=False, array=hi - v, arrayminus=v - lo),
        customdata=np.stack([lo, hi, np.array(result.recovered, dtype=float)], 1),
        hovertemplate="%{x}<br>accuracy %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                      "<br>recovered %{customdata[2]:.2f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"Reconstructing the vector at layer {result.injection_layer} at the final layer "
                      f"(n={result.per_prompt.shape[1]}) - {result.model}, {result.task}",
                      yaxis_title="accuracy", yaxis_range=[-0.02, 1.02], template="plotly_white",
                      # the condition names are long and plotly slants them: room below the plot for the
                      # slanted labels (automargin grows the margin to fit them, 160 px is the floor)
                      xaxis_automargin=True, xaxis_tickangle=-30, margin_b=160)
    return fig
