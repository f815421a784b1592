"""Figures for dPCA of label-position states (``icl_circuits.methods.dpca.analysis``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_circuits.core.metrics import get_metric
from icl_circuits.methods.dpca.ablation import SubspaceAblationResult
from icl_circuits.methods.dpca.analysis import DPCALayerResult
from icl_circuits.viz import _style

_COLORS = _style.PALETTE
#: Colours of the label classes in ``projections``: blue and orange (far apart in hue and in
#: lightness); the nuisance levels get green, purple, dark grey, magenta, olive (each far from
#: both). Plotly's Dark24 in its own order gave label 1 pink beside nuisance levels red and
#: magenta: they looked alike.
LABEL_COLORS: tuple[str, ...] = tuple(_style.PALETTE[i] for i in (0, 8))
NUISANCE_COLORS: tuple[str, ...] = tuple(_style.PALETTE[i] for i in (2, 7, 5, 4, 14))


def level_color(factor: str, i: int) -> str:
    """Colour of level ``i`` of ``factor`` in the projection scatter: ``LABEL_COLORS`` for the
    label (and word) factor, ``NUISANCE_COLORS`` for the nuisance; no colour is in both sets."""
    pool = LABEL_COLORS if factor in ("label", "word") else NUISANCE_COLORS
    if factor in ("label", "word") and i >= len(pool):  # more classes than two: the palette's rest,
        pool = LABEL_COLORS + tuple(c for c in _style.PALETTE if c not in LABEL_COLORS + NUISANCE_COLORS)
    return pool[i % len(pool)]


def _title(r: DPCALayerResult, what: str) -> str:
    return f"{what}: {r.model}, task {r.task}, {r.position_kind} positions, {r.n_demos} demos"


def _n_null(r: DPCALayerResult) -> int:
    return int(r.null_total_marginal_variance.shape[0])


@_style.figure
def explained_variance(r: DPCALayerResult, title: str | None = None) -> go.Figure:
    """Variance of the condition means in each marginalization vs layer (solid), the part
    captured by its dPCA components (dotted), and the null baseline (dashed: the 95th percentile of
    the null draws, shown whenever the result has draws; the mean over draws in the hover)."""
    fig = go.Figure()
    for mi, m in enumerate(r.marginalizations):
        col = _COLORS[mi % len(_COLORS)]
        tot = r.total_marginal_variance[:, mi].tolist()
        comp = np.nansum(r.explained_variance[:, mi].numpy(), axis=1).tolist()
        null = r.variance_table(null=0.95)[m].tolist()
        null_mean = r.variance_table(null=True)[m].tolist()
        fig.add_trace(go.Scatter(x=r.layers, y=tot, mode="lines+markers", name=m, line=dict(color=col),
                                 hovertemplate=f"{m}<br>layer %{{x}}: %{{y:.4f}} of the variance<extra></extra>"))
        fig.add_trace(go.Scatter(x=r.layers, y=comp, mode="lines", name=f"{m} (dPCA components)",
                                 line=dict(color=col, dash="dot"), legendgroup=m,
                                 hovertemplate=f"{m}, components<br>layer %{{x}}: %{{y:.4f}}<extra></extra>"))
        if not np.all(np.isnan(null)):
            fig.add_trace(go.Scatter(x=r.layers, y=null, mode="lines", name=f"{m} (null 95th pct., {_n_null(r)} draws)",
                                     line=dict(color=col, dash="dash", width=1), legendgroup=m, customdata=null_mean,
                                     hovertemplate=f"{m}, null<br>layer %{{x}}: 95th pct. %{{y:.4f}}, "
                                                   f"mean %{{customdata:.4f}}<extra></extra>"))
    fig.update_layout(title=title or _title(r, "dPCA variance per marginalization"), xaxis_title="layer (block input)",
                      yaxis_title="fraction of condition-mean variance", yaxis_range=[0, 1.02],
                      template="plotly_white")
    _style.integer_layer_axis(fig, r.layers)
    return _style.fit_legend(fig)


@_style.figure
def distances(r: DPCALayerResult, spaces: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Mean pairwise Mahalanobis distance between the clusters of each factor vs layer: full space
    (solid), the factor's own dPCA subspace (dash), every other space in ``spaces`` (dot); the
    null baseline of the full space in the factor's colour, long dash-dot (95th percentile of the
    draws; shown whenever the result has draws; every space's null mean is in the hover)."""
    own = {f: f if f in r.marginalizations else "dpca" for f in r.factors}
    null_mean = {s: r.distance_table(s, null=True) for s in r.spaces}
    fig = go.Figure()
    for fi, f in enumerate(r.factors):
        col = _COLORS[fi % len(_COLORS)]
        chosen = list(spaces) if spaces is not None else ["full", own[f]]
        for s in chosen:
            if s not in r.spaces:
                raise ValueError(f"spaces: {s!r} is not one of {r.spaces}")
            si = r.spaces.index(s)
            dash = "solid" if s == "full" else "dash" if s == own[f] else "dot"
            fig.add_trace(go.Scatter(
                x=r.layers, y=r.distances[:, fi, si].tolist(), mode="lines+markers", name=f"{f} clusters, {s} space",
                line=dict(color=col, dash=dash),
                customdata=null_mean[s][f].tolist(),
                hovertemplate=f"{f} clusters in {s} space<br>layer %{{x}}: %{{y:.3f}} "
                              f"(null: %{{customdata:.3f}})<extra></extra>"))
        null = r.distance_table("full", null=0.95)[f].tolist()
        if not np.all(np.isnan(null)):
            fig.add_trace(go.Scatter(x=r.layers, y=null, mode="lines",
                                     name=f"{f}, full, null 95th pct. ({_n_null(r)} draws)",
                                     line=dict(color=col, dash="longdashdot", width=1.5), legendgroup=f,
                                     hovertemplate=f"{f}, null 95th pct.<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=title or _title(r, "Mahalanobis distance between clusters"),
                      xaxis_title="layer (block input)", yaxis_title="mean pairwise Mahalanobis distance",
                      template="plotly_white")
    _style.integer_layer_axis(fig, r.layers)
    return _style.fit_legend(fig)


@_style.figure
def projections(r: DPCALayerResult, x: str = "label", y: str | None = None, title: str | None = None) -> go.Figure:
    """Samples on the first ``x`` axis vs the first ``y`` axis (default: the first factor, i.e. the
    nuisance), coloured by label (left) and by the nuisance (right); a dropdown picks the layer."""
    y = y or r.marginalizations[0]
    for m in (x, y):
        if m not in r.marginalizations:
            raise ValueError(f"marginalization {m!r} is not one of {r.marginalizations}")
    xi, yi = r.marginalizations.index(x), r.marginalizations.index(y)
    colour_by = ["label" if "label" in r.factors else r.factors[1], r.factors[0]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"coloured by {f}" for f in colour_by])
    per_layer = []
    for li, layer in enumerate(r.layers):
        idx = []
        for col, f in enumerate(colour_by, start=1):
            vals = r.sample_factors[r.factors.index(f)].numpy()
            for ci, v in enumerate(np.unique(vals)):
                sel = vals == v
                px, py = r.projections[li, xi, 0].numpy()[sel], r.projections[li, yi, 0].numpy()[sel]
                idx.append(len(fig.data))
                fig.add_trace(go.Scattergl(
                    x=px, y=py, mode="markers", name=f"{f}={v}", legendgroup=f"{f}={v}", showlegend=li == 0,
                    marker=dict(size=4, opacity=0.6, color=level_color(f, ci)),
                    visible=li == 0,
                    hovertemplate=f"layer {layer}, {f}={v}<br>{x} axis 1: %{{x:.3f}}<br>{y} axis 1: %{{y:.3f}}<extra></extra>",
                ), row=1, col=col)
        per_layer.append(idx)
    buttons = []
    for li, layer in enumerate(r.layers):
        vis = [False] * len(fig.data)
        for i in per_layer[li]:
            vis[i] = True
        buttons.append(dict(label=f"layer {layer}", method="update", args=[{"visible": vis}]))
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, y=1.18, xanchor="right")],
                      title=title or _title(r, "dPCA projections"), template="plotly_white")
    for col in (1, 2):
        fig.update_xaxes(title_text=f"{x} axis 1", row=1, col=col)
        fig.update_yaxes(title_text=f"{y} axis 1", row=1, col=col)
    return fig


#: The y-axis title of ``ablation`` per metric.
_AXIS = {"first_token": "accuracy", "label": "label accuracy"}


@_style.figure
def ablation(results: SubspaceAblationResult | Sequence[SubspaceAblationResult], metric: str = "label",
             title: str | None = None) -> go.Figure:
    """Accuracy at the query (``metric``: "label", argmax over the label words, or "first_token",
    over the vocabulary): clean, with the dPCA subspace projected out, with random subspaces of the
    same dimension (pooled); Wilson 95% intervals as error bars; one group per result."""
    results = [results] if isinstance(results, SubspaceAblationResult) else list(results)
    if not results:
        raise ValueError("results is empty")
    fig = go.Figure()
    groups = [f"{r.marginalization} @ layers {','.join(map(str, r.layers)) or '-'}" for r in results]
    for ci, cond in enumerate(("clean", "ablated", "random")):
        vals, lo, hi = [], [], []
        for r in results:
            rate = r.rates(metric).get(cond)
            vals.append(np.nan if rate is None else rate.value)
            lo.append(0.0 if rate is None else rate.value - rate.low)
            hi.append(0.0 if rate is None else rate.high - rate.value)
        fig.add_trace(go.Bar(x=groups, y=vals, name=cond, marker_color=_COLORS[ci],
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                             hovertemplate=f"{cond}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    r0 = results[0]
    fig.update_layout(barmode="group", template="plotly_white", yaxis_range=[0, 1.02],
                      yaxis_title=_AXIS[get_metric(metric).name],
                      title=title or f"dPCA subspace ablation: {r0.model}, task {r0.task}, "
                                     f"{r0.positions} positions, {r0.n_demos} demos")
    return fig


@_style.figure
def summary(r: DPCALayerResult) -> go.Figure:
    """Two panels: variance per marginalization and cluster distances (full and own subspace)."""
    a, b = explained_variance(r), distances(r)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["variance per marginalization", "Mahalanobis distance"])
    for tr in a.data:
        fig.add_trace(tr, row=1, col=1)
    for tr in b.data:
        fig.add_trace(tr, row=1, col=2)
    fig.update_xaxes(title_text="layer (block input)")
    _style.integer_layer_axis(fig, r.layers)
    fig.update_layout(title=_title(r, "dPCA by layer"), template="plotly_white")
    return _style.fit_legend(fig)
