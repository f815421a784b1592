"""Figures for label words as anchors: saliency flows per layer, saliency heatmaps, isolation bars,
anchor re-weighting before / after."""

from __future__ import annotations

import plotly.graph_objects as go

from icl_circuits.methods.anchors import IsolationResult, ReweightResult
from icl_circuits.methods.saliency import SaliencyResult
from icl_circuits.viz import _style

_COLORS = {"S_wp": "#1f77b4", "S_pq": "#d62728", "S_ww": "#7f7f7f"}
_LABELS = {"S_wp": "S_wp (text → label words)", "S_pq": "S_pq (label words → query)", "S_ww": "S_ww (other pairs)"}


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
        title=title or f"Saliency flow: {result.model_name}, {result.task}, {result.n_demos} demos "
                       f"(loss: {result.loss}, n={result.per_prompt.shape[-1]})",
        xaxis_title="layer", yaxis_title=what, template="plotly_white",
    )
    return _style.integer_layer_axis(fig, x)


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
    names = [f"{p}:{t!r}" + (" *" if p in ans else " →" if p == fin else "") for p, t in enumerate(toks)]
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
        title=dict(text=title or f"Saliency |Σ_h A·∂L/∂A| of prompt {example}: {result.model_name}, {result.task} "
                                 f"(* label words, → final position)", y=0.98, yanchor="top"),
        sliders=[dict(active=0, currentvalue=dict(prefix="layer ", xanchor="left"), steps=steps,
                      x=0, len=1.0, y=1.0, yanchor="bottom", pad=dict(t=0, b=10))],
        xaxis=dict(title="key position", tickangle=-60), yaxis=dict(title="query position", autorange="reversed"),
        template="plotly_white", height=720, margin=dict(t=170),
    )
    return fig


def isolation(result: IsolationResult, title: str | None = None) -> go.Figure:
    """Accuracy and label loyalty per isolated layer range, label words vs random positions
    (Wilson 95% error bars; the un-isolated accuracy as a dashed line)."""
    fig = go.Figure()
    x = result.range_names
    for j, t in enumerate(result.targets):
        for metric, key, dash in (("accuracy", "accuracy", None), ("label loyalty", "loyalty", "x")):
            v, lo, hi = (getattr(result, k)[:, j] for k in (key, f"{key}_low", f"{key}_high"))
            fig.add_trace(go.Bar(
                x=x, y=v.tolist(), name=f"{metric}, {t} positions",
                marker=dict(color="#d62728" if t == "label" else "#7f7f7f", pattern=dict(shape=dash or "")),
                error_y=dict(type="data", symmetric=False, array=(hi - v).tolist(), arrayminus=(v - lo).tolist()),
                customdata=list(zip(lo.tolist(), hi.tolist())),
                hovertemplate=f"{metric}, {t}<br>layers %{{x}}: %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]<extra></extra>",
            ))
    fig.add_hline(y=result.baseline_accuracy, line_dash="dash", annotation_text=f"no isolation: {result.baseline_accuracy:.3f}")
    fig.update_layout(
        title=title or f"Attention isolation ({result.mode}): {result.model_name}, {result.task}, "
                       f"{result.n_demos} demos (n={result.correct.shape[-1]})",
        barmode="group", xaxis_title="isolated layers", yaxis_title="rate", yaxis_range=[0, 1.05], template="plotly_white",
    )
    return fig


def reweighting(result: ReweightResult, title: str | None = None) -> go.Figure:
    """Held-out accuracy before / after anchor re-weighting (Wilson 95% error bars)."""
    df = result.to_dataframe()
    fig = go.Figure(go.Bar(
        x=df.stage, y=df.accuracy, error_y=dict(type="data", symmetric=False, array=df.high - df.accuracy,
                                                arrayminus=df.accuracy - df.low),
        customdata=df[["low", "high", "eval_loss"]].values,
        hovertemplate="%{x}: accuracy %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}], loss %{customdata[2]:.3f}<extra></extra>",
    ))
    fig.update_layout(
        title=title or f"Anchor re-weighting: {result.model_name}, {result.task}, {result.n_demos} demos (n={len(result.correct_before)})",
        yaxis_title="held-out accuracy", yaxis_range=[0, 1.05], template="plotly_white",
    )
    return fig
