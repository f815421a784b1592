"""Figures for learned task vectors and their propagation: accuracy per layer for several vector
methods, a learned vector's training curve, rotation vs scaling of the propagation map and task
alignment by layer (the logit lens: ``viz.logit_lens``)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_circuits.methods.propagation import PropagationResult
from icl_circuits.methods.vectors import TaskVector
from icl_circuits.methods.sweeps import SweepResult
from icl_circuits.viz import _style, sweeps


@_style.figure
def layer_curves(results: Sequence[SweepResult], title: str | None = None) -> go.Figure:
    """Accuracy per injection layer, one line per SweepResult (e.g. learned vs vanilla vs function
    vectors), with 95% bands and baselines: ``plots.sweeps.sweep`` for a list of results."""
    if not results:
        raise ValueError("results is empty: give at least one SweepResult")
    r0 = results[0]
    return sweeps.sweep(list(results), title or f"Task vectors by injection layer: {r0.model}, {r0.task}")


@_style.figure
def training_curve(tv: TaskVector, title: str | None = None) -> go.Figure:
    """Loss and accuracy per epoch (epoch 0: the untrained vector) of a learned task vector."""
    m = tv.meta
    if "train_loss" not in m:
        raise ValueError("tv has no training curve in its meta (is it a learned task vector from train_task_vector?)")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cross-entropy", "accuracy"))
    ep = list(range(len(m["train_loss"])))
    for key, col in (("train_loss", 1), ("val_loss", 1), ("train_accuracy", 2), ("val_accuracy", 2)):
        fig.add_trace(go.Scatter(x=ep, y=m[key], mode="lines+markers", name=key,
                                 hovertemplate=f"{key}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>"), row=1, col=col)
    fig.add_vline(x=m["best_epoch"], line_dash="dot")
    fig.update_layout(title=title or f"LTV training: {tv.model}, {tv.task}, layers {tv.layers}", template="plotly_white")
    return fig


@_style.figure
def rotation_scaling(res: PropagationResult, title: str | None = None) -> go.Figure:
    """Rotation vs scaling of the propagation map W = U P by injection layer.

    Top: tr(U)/d, cos(theta, U theta), cos(theta, W theta) (1 = no rotation). Bottom: the gain
    ||W theta|| / ||theta|| and the spread of P's eigenvalues (std / mean)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("rotation (cosines)", "scaling"))
    i = 0
    for key, label in (("rotation_cos", "tr(U)/d"), ("cos_theta_utheta", "cos(θ, Uθ)"),
                       ("cos_theta_wtheta", "cos(θ, Wθ)"), ("r2", "fit R² (held-out)")):
        fig.add_trace(go.Scatter(x=res.layers, y=getattr(res, key).tolist(), mode="lines+markers", name=label,
                                 line=dict(color=_style.color(i)),
                                 hovertemplate=f"{label}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"), row=1, col=1)
        i += 1
    for key, label in (("gain", "‖Wθ‖/‖θ‖"), ("stretch_cv", "std/mean of P's eigenvalues")):
        fig.add_trace(go.Scatter(x=res.layers, y=getattr(res, key).tolist(), mode="lines+markers", name=label,
                                 line=dict(color=_style.color(i)),
                                 hovertemplate=f"{label}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"), row=2, col=1)
        i += 1
    _mark_unreadable_fits(fig, res, row=1, col=1)
    fig.update_xaxes(title_text="injection layer (input of block)", row=2, col=1)
    _style.integer_layer_axis(fig, res.layers)
    fig.update_layout(title=title or f"Propagation map W = UP: {res.model}, {res.task}, {res.method} vector",
                      template="plotly_white")
    return fig


def _mark_unreadable_fits(fig: go.Figure, res: PropagationResult, **where) -> None:
    """Grey out the layers whose held-out fit R² < 0 (the map W explains less than the mean: its
    polar decomposition there is not a reading of the model) and say so in the legend."""
    bad = [l for l, r2 in zip(res.layers, res.r2.tolist()) if not r2 >= 0]
    for l in bad:
        fig.add_vrect(x0=l - 0.4, x1=l + 0.4, fillcolor="rgba(120,120,120,0.18)", line_width=0, layer="below",
                      **where)
    if bad:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=dict(symbol="square", size=12,
                                 color="rgba(120,120,120,0.35)"),
                                 name=f"held-out R² < 0 (fit unreadable): layer{'s' if len(bad) > 1 else ''} "
                                      f"{', '.join(map(str, bad))}", hoverinfo="skip"), **where)


@_style.figure
def alignment(res: PropagationResult, title: str | None = None) -> go.Figure:
    """Task alignment (cosine with the label-unembedding span) of theta and of W theta, by layer."""
    fig = go.Figure()
    for key, label in (("alignment_theta", "θ (at its layer)"), ("alignment_wtheta", "Wθ (propagated to the end)")):
        fig.add_trace(go.Scatter(x=res.layers, y=getattr(res, key).tolist(), mode="lines+markers", name=label,
                                 hovertemplate=f"{label}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=res.alignment_chance, line_dash="dot", annotation_text=f"random vector ~{res.alignment_chance:.2f}")
    fig.update_layout(title=title or f"Task alignment: {res.model}, {res.task}, {res.method} vector",
                      xaxis_title="injection layer (input of block)", yaxis_title="cosine with label span",
                      yaxis_range=[-0.02, 1.02], template="plotly_white")
    return _style.integer_layer_axis(fig, res.layers)


@_style.figure
def propagation_summary(res: PropagationResult, title: str | None = None) -> go.Figure:
    """One figure with four panels: rotation, scaling, alignment, accuracies (theta at its layer vs
    W theta at the final residual vs logit lens), all by injection layer."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=("rotation (cosines)", "scaling", "task alignment", "accuracy"))
    def line(key, label, r, c, y=None):
        vals = getattr(res, key).tolist() if y is None else y
        fig.add_trace(go.Scatter(x=res.layers, y=vals, mode="lines+markers", name=label,
                                 line=dict(color=_style.color(len(fig.data))),
                                 hovertemplate=f"{label}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>"), row=r, col=c)
    line("rotation_cos", "tr(U)/d", 1, 1)
    line("cos_theta_wtheta", "cos(θ, Wθ)", 1, 1)
    line("r2", "fit R²", 1, 1)
    line("gain", "‖Wθ‖/‖θ‖", 1, 2)
    line("stretch_cv", "P eigenvalue spread", 1, 2)
    line("alignment_theta", "alignment θ", 2, 1)
    line("alignment_wtheta", "alignment Wθ", 2, 1)
    line("acc_injected", "accuracy θ at layer", 2, 2)
    line("acc_reconstructed", "accuracy Wθ at final", 2, 2)
    line("lens_injected", "logit lens with θ", 2, 2)
    _mark_unreadable_fits(fig, res, row=1, col=1)
    _style.integer_layer_axis(fig, res.layers)
    _style.fit_legend(fig, 700)
    fig.update_layout(title=title or f"Propagation of the {res.method} vector: {res.model}, {res.task} "
                                     f"(no-vector accuracy {res.baseline:.2f})", template="plotly_white")
    return fig
