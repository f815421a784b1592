"""Figures for ICL accuracy tables."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from icl_circuits.viz import _style
from icl_circuits.methods.accuracy import AccuracyResult  # noqa: F401  (annotation)


@_style.figure
def accuracy_by_demos(result: AccuracyResult | pd.DataFrame, title: str | None = None, metric: str = "first_token") -> go.Figure:
    """One metric vs number of demos, one line per task, 95% intervals as error bars.

    ``result``: an ``AccuracyResult`` (``icl_circuits.accuracy_by_demos``) or its tidy table (task,
    n_demos, metric, value, low, high, n); ``metric`` picks its rows (``"first_token"``,
    ``"exact_match"``...).
    """
    df = result if isinstance(result, pd.DataFrame) else result.to_dataframe()
    from icl_circuits.core.metrics import get_metric

    m = get_metric(metric)
    df = df[df.metric == m.name]
    if df.empty:
        raise ValueError(f"metric={metric!r}: the table has no rows for it")
    fig = go.Figure()
    for i, (task, g) in enumerate(df.groupby("task", sort=False)):
        g = g.sort_values("n_demos")
        fig.add_trace(go.Scatter(
            x=g.n_demos, y=g.value, mode="lines+markers", name=task, line=dict(color=_style.color(i)),
            error_y=dict(type="data", symmetric=False, array=g.high - g.value, arrayminus=g.value - g.low,
                         thickness=1.2, width=3),
            hovertemplate=f"{task}<br>%{{x}} demos: {m.name} %{{y:.3f}}<extra></extra>",
        ))
    fig.update_layout(
        title=f"{title or 'ICL accuracy vs number of demos'} ({m.name})", xaxis_title="number of demos",
        yaxis_title=f"{'accuracy' if m.is_rate else 'mean'} ({m.name})",
        yaxis_range=[-0.02, 1.02] if m.is_rate else None, template="plotly_white",
    )
    _style.integer_layer_axis(fig, sorted(set(df.n_demos.astype(int))))  # demo counts: integer ticks too
    return _style.fit_legend(fig)
