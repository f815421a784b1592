"""Figures for head-level results: a head ablation scan as a layer x head heatmap, the exact scan
vs attribution patching; the heatmap helpers the head figures of ``ov_circuits`` and ``key_heads``
share."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from torch import Tensor

from icl_circuits.methods.attribution import scan_agreement
from icl_circuits.methods.heads import HeadScanResult
from icl_circuits.viz import _style

__all__ = ["head_scan", "scan_vs_attribution", "head_heatmap", "head_layout"]


@_style.figure
def head_heatmap(values: Tensor, layers: Sequence[int], hover: list[list[str]], colorbar: str, **kw) -> go.Heatmap:
    """A layer x head heatmap of ``values`` ([layer, head]) on a diverging scale centred at 0."""
    v = values.detach().float().numpy()
    lim = float(np.nanmax(np.abs(v))) if v.size and np.isfinite(v).any() else 1.0
    return go.Heatmap(
        z=v, x=[f"H{h}" for h in range(v.shape[1])], y=[f"L{l}" for l in layers], text=hover,
        hovertemplate="%{text}<extra></extra>", colorscale="RdBu", zmid=0, zmin=-lim or -1, zmax=lim or 1,
        colorbar=dict(title=colorbar), **kw,
    )


@_style.figure
def head_layout(fig: go.Figure, title: str) -> go.Figure:
    """Title, heads on x, layers on y (layer 0 at the top)."""
    fig.update_layout(title=title, template="plotly_white")
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


@_style.figure
def head_scan(result: HeadScanResult, title: str | None = None) -> go.Figure:
    """Heatmap (layer x head) of the mean effect of ablating each head alone (ablated - clean)."""
    hover = [[f"L{l}H{h}<br>{result.metric} ablated: {float(result.values[i, h]):.4f} "
              f"[{float(result.low[i, h]):.4f}, {float(result.high[i, h]):.4f}]<br>effect: {float(result.effect[i, h]):+.4f}"
              for h in range(result.n_heads)] for i, l in enumerate(result.layers)]
    fig = go.Figure(head_heatmap(result.effect, result.layers, hover, f"delta {result.metric}"))
    return head_layout(fig, title or f"{result.method} head ablation ({result.how}, {result.positions} positions): "
                       f"change of {result.metric}, clean {float(result.clean.mean()):.3f} - {result.model}, {result.task}")


@_style.figure
def scan_vs_attribution(exact: HeadScanResult, approx: HeadScanResult, title: str | None = None) -> go.Figure:
    """Scatter of each head's exact ablation effect vs its attribution-patching estimate; the title
    names the ablation the agreement figures belong to."""
    import warnings

    with warnings.catch_warnings():  # the caller's scan_agreement warns; the title says it here
        warnings.simplefilter("ignore", UserWarning)
        agree = scan_agreement(exact, approx)
    names = [f"L{l}H{h}" for l in exact.layers for h in range(exact.n_heads)]
    x, y = exact.effect.flatten().numpy(), approx.effect.flatten().numpy()
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers+text", text=names, textposition="top center",
                               hovertemplate="%{text}<br>exact %{x:.4f}<br>attribution %{y:.4f}<extra></extra>"))
    lim = [float(min(x.min(), y.min())), float(max(x.max(), y.max()))]
    fig.add_scatter(x=lim, y=lim, mode="lines", line=dict(dash="dot", color="gray"), name="y = x", hoverinfo="skip")
    k = agree["top_k"]
    fig.update_layout(title=title or f"Exact head ablation vs attribution patching ({agree['ablation']}): "
                      f"Spearman {agree['spearman']:.3f}, top-{k} overlap {agree['top_k_overlap']:.2f}"
                      f"{' (disagree)' if agree['disagree'] else ''} - {exact.model}, {exact.task}",
                      xaxis_title=f"exact effect on {exact.metric}", yaxis_title="attribution estimate",
                      template="plotly_white", showlegend=False)
    return fig
