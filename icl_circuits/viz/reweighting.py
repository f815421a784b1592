"""Figures of anchor re-weighting (Wang et al. 2023): held-out accuracy before / after."""

from __future__ import annotations

import plotly.graph_objects as go

from icl_circuits.methods.reweighting import ReweightResult
from icl_circuits.viz import _style


@_style.figure
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
        title=title or f"Anchor re-weighting: {result.model}, {result.task}, {result.n_demos} demos (n={len(result.correct_before)})",
        yaxis_title="held-out accuracy", yaxis_range=[0, 1.05], template="plotly_white",
    )
    return fig
