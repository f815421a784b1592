"""Figures for head-level results: layer x head heatmaps (OV contribution, DLA, ablation effect),
key heads vs random heads, reconstruction accuracy, exact scan vs attribution patching."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from icl_circuits.methods.circuits import KeyHeadAblationResult, KeyHeadsResult, OVResult, ReconstructionResult
from icl_circuits.methods.heads import HeadScanResult, scan_agreement


def _heatmap(values: Tensor, layers: Sequence[int], hover: list[list[str]], colorbar: str, **kw) -> go.Heatmap:
    v = values.detach().float().numpy()
    lim = float(np.nanmax(np.abs(v))) if v.size and np.isfinite(v).any() else 1.0
    return go.Heatmap(
        z=v, x=[f"H{h}" for h in range(v.shape[1])], y=[f"L{l}" for l in layers], text=hover,
        hovertemplate="%{text}<extra></extra>", colorscale="RdBu", zmid=0, zmin=-lim or -1, zmax=lim or 1,
        colorbar=dict(title=colorbar), **kw,
    )


def _layout(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white")
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def head_scan(result: HeadScanResult, title: str | None = None) -> go.Figure:
    """Heatmap (layer x head) of the mean effect of ablating each head alone (ablated - clean)."""
    hover = [[f"L{l}H{h}<br>{result.metric} ablated: {float(result.values[i, h]):.4f} "
              f"[{float(result.low[i, h]):.4f}, {float(result.high[i, h]):.4f}]<br>effect: {float(result.effect[i, h]):+.4f}"
              for h in range(result.n_heads)] for i, l in enumerate(result.layers)]
    fig = go.Figure(_heatmap(result.effect, result.layers, hover, f"delta {result.metric}"))
    return _layout(fig, title or f"{result.method} head ablation ({result.how}, {result.positions} positions): "
                   f"change of {result.metric}, clean {float(result.clean.mean()):.3f} - {result.model_name}, {result.task}")


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
        fig.add_trace(_heatmap(m, result.layers, hover, name, showscale=c == 2), row=1, col=c + 1)
    return _layout(fig, title or f"Heads carrying the vector injected at layer {result.injection_layer} "
                   f"(LN {result.ln}) - {result.model_name}, {result.task}")


def key_heads(result: KeyHeadsResult, title: str | None = None) -> go.Figure:
    """Heatmap of the key-head scores (mean DLA of each head's contribution), rank in the hover."""
    rank = {tuple(lh): r for r, lh in enumerate(result.ranking)}
    hover = [[f"L{l}H{h}<br>score {float(result.scores[i, h]):.4f}<br>rank {rank[(l, h)] + 1}"
              for h in range(result.scores.shape[1])] for i, l in enumerate(result.layers)]
    fig = go.Figure(_heatmap(result.scores, result.layers, hover, "DLA"))
    return _layout(fig, title or f"Key heads ({result.source} DLA) for the vector at layer {result.injection_layer} "
                   f"- {result.model_name}, {result.task}")


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
                      f"(n={result.per_prompt.shape[1]}) - {result.model_name}, {result.task}",
                      yaxis_title="accuracy", yaxis_range=[-0.02, 1.02], template="plotly_white")
    return fig


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
                      f"{' (disagree)' if agree['disagree'] else ''} - {exact.model_name}, {exact.task}",
                      xaxis_title=f"exact effect on {exact.metric}", yaxis_title="attribution estimate",
                      template="plotly_white", showlegend=False)
    return fig
