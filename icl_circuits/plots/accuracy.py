"""Figures for ICL accuracy tables."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def accuracy_by_demos(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Accuracy vs number of demos, one line per task, Wilson 95% intervals as error bars.

    ``df`` is the table of ``icl_circuits.accuracy_by_demos`` (task, n_demos, accuracy, low, high, n).
    """
    fig = go.Figure()
    for task, g in df.groupby("task", sort=False):
        g = g.sort_values("n_demos")
        fig.add_trace(go.Scatter(
            x=g.n_demos, y=g.accuracy, mode="lines+markers", name=task,
            error_y=dict(type="data", symmetric=False, array=g.high - g.accuracy, arrayminus=g.accuracy - g.low),
            hovertemplate=f"{task}<br>%{{x}} demos: accuracy %{{y:.3f}}<extra></extra>",
        ))
    fig.update_layout(
        title=title or "ICL accuracy vs number of demos", xaxis_title="number of demos",
        yaxis_title="accuracy (first answer token)", yaxis_range=[-0.02, 1.02], template="plotly_white",
    )
    return fig
