"""Figures of attention isolation (label words as anchors, Wang et al. 2023): accuracy and label
loyalty per isolated layer range."""

from __future__ import annotations

import plotly.graph_objects as go

from icl_circuits.methods.anchors import IsolationResult
from icl_circuits.viz import _style


@_style.figure
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
        title=title or f"Attention isolation ({result.mode}): {result.model}, {result.task}, "
                       f"{result.n_demos} demos (n={result.correct.shape[-1]})",
        barmode="group", xaxis_title="isolated layers", yaxis_title="rate", yaxis_range=[0, 1.05], template="plotly_white",
    )
    return fig
