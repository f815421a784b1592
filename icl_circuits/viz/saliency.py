"""Figures of the saliency flow (label words as anchors): flows per layer and saliency heatmaps.
Isolation bars are in ``viz.anchors``, re-weighting before / after in ``viz.reweighting``."""

from __future__ import annotations

import plotly.graph_objects as go

from icl_circuits.methods.saliency import SaliencyResult
from icl_circuits.viz import _style
from icl_circuits.viz.attention import token_labels

_COLORS = {"S_wp": "#1f77b4", "S_pq": "#d62728", "S_ww": "#7f7f7f"}
_LABELS = {"S_wp": "S_wp (text → label words)", "S_pq": "S_pq (label words → query)", "S_ww": "S_ww (other pairs)"}


@_style.figure
def flows(result: SaliencyResult, title: str | None = None) -> go.Figure:
    """S_wp, S_pq and S_ww vs layer (Wang et al.'s figure), with the 95% interval of the mean as a band."""
    fig = go.Figure()
    x = result.layers
    what = "proportion" if result.proportions else "mean saliency"
    for name in result.flow_names:
        i = result.flow_names.index(name)
        y, lo, hi = result.flows[i].tolist(), result.low[i].tolist(), result.high[i].tolist()
        color = _COLORS.get(name, None)
        fig.add_trace(_style.band(x, lo, hi, color, name=name, group=name))
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=_LABELS.get(name, name), line=dict(color=color), legendgroup=name,
            customdata=list(zip(lo, hi)),
            hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.4g}} [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}}]<extra></extra>",
        ))
    fig.update_layout(
        title=title or f"Saliency flow: {result.model}, {result.task}, {result.n_demos} demos "
                       f"(loss: {result.loss}, n={result.per_prompt.shape[-1]})",
        xaxis_title="layer", yaxis_title=what, template="plotly_white",
    )
    return _style.integer_layer_axis(fig, x)


@_style.figure
def heatmap(result: SaliencyResult, example: int = 0, title: str | None = None) -> go.Figure:
    """Saliency matrix I_l of one kept prompt over token positions, a slider over layers.

    Rows are query positions, columns key positions, labelled ``position:token``; label words are
    marked with a star and the final position with an arrow.
    """
    n_kept = result.matrices.shape[0]
    if not 0 <= example < n_kept:
        raise ValueError(f"example must be in [0, {n_kept - 1}] (the prompts kept by saliency_flow), got {example}")
    toks = result.example_tokens[example]
    n = len(toks)
    ans, fin = set(result.example_answer_positions[example]), result.example_final_positions[example]
    names = token_labels(toks, ans, fin)
    fig = go.Figure()
    for i, l in enumerate(result.layers):
        z = result.matrices[example, i, :n, :n].numpy()
        fig.add_trace(go.Heatmap(
            z=z, x=names, y=names, colorscale="Viridis", visible=i == 0, colorbar=dict(title="I_l"),
            hovertemplate="layer " + str(l) + "<br>query %{y}<br>key %{x}<br>saliency %{z:.4g}<extra></extra>",
        ))
    steps = [dict(method="update", label=str(l), args=[{"visible": [j == i for j in range(len(result.layers))]}])
             for i, l in enumerate(result.layers)]
    # the layer slider sits above the plot: below it, it collided with the rotated key-position
    # labels and the axis title
    fig.update_layout(
        title=dict(text=title or f"Saliency |Σ_h A·∂L/∂A| of prompt {example}: {result.model}, {result.task} "
                                 f"(* label words, → final position)", y=0.98, yanchor="top"),
        sliders=[dict(active=0, currentvalue=dict(prefix="layer ", xanchor="left"), steps=steps,
                      x=0, len=1.0, y=1.0, yanchor="bottom", pad=dict(t=0, b=10))],
        xaxis=dict(title="key position", tickangle=-60), yaxis=dict(title="query position", autorange="reversed"),
        template="plotly_white", height=720, margin=dict(t=170),
    )
    return fig
