"""Figures for layer sweeps, activation-patching grids and per-head causal effects."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from icl_circuits.methods.patching import PatchGridResult
from icl_circuits.methods.sweeps import is_rate
from icl_circuits.methods.sweeps import SweepResult
from icl_circuits.viz import _style

_REFERENCE = ("zero-shot", "icl", "random-answers")


def _band(fig: go.Figure, x, low, high, color: str, name: str) -> None:
    low, high = np.asarray(low, float), np.asarray(high, float)
    if np.all(np.isnan(low)) or np.all(np.isnan(high)):
        return
    fig.add_trace(_style.band(x, low.tolist(), high.tolist(), color, name=name, group=name, alpha=0.18))


def _from_frame(df: pd.DataFrame) -> tuple[list[dict], list[tuple[str, float]], str, str, str]:
    """Curves and reference lines from a ``compare_task_vectors`` table."""
    curves, refs = [], []
    for method, g in df.groupby("method", sort=False):
        g = g.sort_values("layer")
        if method in _REFERENCE:
            refs.append((str(method), float(g.accuracy.iloc[0])))
        else:
            curves.append(dict(name=str(method), x=g.layer.tolist(), y=g.accuracy.tolist(), low=g.low.tolist(),
                               high=g.high.tolist(), n=int(g.n.iloc[0]) if "n" in g else None))
    first = df.iloc[0]
    return curves, refs, str(first.get("metric", "accuracy")), str(first.get("task", "")), str(first.get("model", ""))


@_style.figure
def sweep(result: SweepResult | Sequence[SweepResult] | pd.DataFrame, title: str | None = None) -> go.Figure:
    """Metric per layer, one line per result (method), its 95% interval as a band, baselines dashed.

    Accepts a SweepResult, a list of them, or the table of ``task_vectors.compare_task_vectors``
    (rows "zero-shot", "icl", "random-answers" become horizontal reference lines).
    """
    if isinstance(result, pd.DataFrame):
        if result.empty:
            raise ValueError("result is an empty table")
        curves, refs, metric, task, model = _from_frame(result)
    else:
        results = [result] if isinstance(result, SweepResult) else list(result)
        if not results:
            raise ValueError("result is an empty list")
        curves = [dict(name=r.method, x=r.layers, y=r.values.tolist(), low=r.low.tolist(), high=r.high.tolist(),
                       n=r.per_prompt.shape[1]) for r in results]
        seen: dict[float, str] = {}
        for r in results:
            if r.baseline is not None and r.baseline not in seen:
                seen[r.baseline] = f"baseline ({r.method}: {r.meta.get('variant', 'no intervention')})"
        refs = [(name, b) for b, name in seen.items()]
        for r in results:
            if "icl" in r.meta and ("icl", r.meta["icl"]) not in refs:
                refs.append(("icl", float(r.meta["icl"])))
        metric, task, model = results[0].metric, results[0].task, results[0].model
    fig = go.Figure()
    for i, c in enumerate(curves):
        color = _style.color(i)
        _band(fig, c["x"], c["low"], c["high"], color, c["name"])
        hover = [f"{c['name']}<br>layer {x}: {metric} {y:.4f}<br>95% interval [{lo:.3f}, {hi:.3f}]"
                 + (f"<br>n = {c['n']}" if c.get("n") else "") for x, y, lo, hi in zip(c["x"], c["y"], c["low"], c["high"])]
        fig.add_trace(go.Scatter(x=c["x"], y=c["y"], mode="lines+markers", name=c["name"], line=dict(color=color),
                                 legendgroup=c["name"], hovertext=hover, hoverinfo="text"))
    _style.reference_lines(fig, refs)
    rate = metric == "auto" or is_rate(metric)
    fig.update_layout(
        title=title or f"{metric} per layer — {model}, task {task}", xaxis_title="layer (input of block l)",
        yaxis_title=metric, template="plotly_white", hovermode="closest",
        **({"yaxis_range": [-0.02, 1.02]} if rate else {}),
    )
    _style.integer_layer_axis(fig, sorted({x for c in curves for x in c["x"]}))
    return fig


@_style.figure
def patch_grid(result: PatchGridResult, title: str | None = None, normalized: bool = False) -> go.Figure:
    """Layer x position heatmap of an activation-patching grid; positions named by token or role.

    Colour: the metric (``normalized=True``: (value - corrupted) / (clean - corrupted)), centred on
    the corrupted run's value; hover shows the exact value, the normalized one, and both baselines.
    """
    z = result.normalized if normalized else result.values
    z = z.numpy()
    norm = result.normalized.numpy()
    hover = [[f"layer {l}, {p}<br>{result.metric} = {result.values[i, j]:.5f}<br>normalized = {norm[i, j]:.3f}"
              f"<br>clean {result.clean_value:.5f}, corrupted {result.corrupted_value:.5f}"
              for j, p in enumerate(result.position_names)] for i, l in enumerate(result.layers)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(result.position_names))), y=result.layers, colorscale="RdBu",
        zmid=0.0 if normalized else result.corrupted_value, hovertext=hover, hoverinfo="text",
        colorbar=dict(title="normalized" if normalized else result.metric),
    ))
    fig.update_layout(
        title=title or f"Activation patching (resid_pre, clean → corrupted) — {result.model}, task {result.task}",
        xaxis=dict(title="position", tickmode="array", tickvals=list(range(len(result.position_names))),
                   ticktext=result.position_names, tickangle=-60),
        yaxis=dict(title="layer (input of block l)", dtick=1), template="plotly_white",
    )
    return fig


@_style.figure
def cie_heatmap(result, title: str | None = None, top_k: int | None = None) -> go.Figure:
    """Layer x head heatmap of causal indirect effects (``task_vectors.HeadCIEResult``), top heads marked.

    Also accepts a TaskVector of method "function" (its ``meta["cie"]`` and ``meta["heads"]``).
    """
    if hasattr(result, "per_prompt") and hasattr(result, "top"):
        values = result.values.numpy()
        layers, task, model = result.layers, result.task, result.model
        se = (result.per_prompt.std(-1) / max(result.per_prompt.shape[-1], 1) ** 0.5).numpy()
        top = result.top(top_k or min(10, values.size))
    elif getattr(result, "method", None) == "function" and "cie" in getattr(result, "meta", {}):
        values = np.asarray(result.meta["cie"], float)
        layers, task, model = list(range(values.shape[0])), result.task, result.model
        se = np.full_like(values, np.nan)
        top = [tuple(h) for h in result.meta["heads"]]
    else:
        raise TypeError("cie_heatmap takes a HeadCIEResult or a function-vector TaskVector")
    H = values.shape[1]
    hover = [[f"layer {l}, head {h}<br>CIE = {values[i, h]:.3e} ± {se[i, h]:.1e} (s.e.)" for h in range(H)]
             for i, l in enumerate(layers)]
    lim = float(np.abs(values).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=values, x=list(range(H)), y=layers, colorscale="RdBu", zmin=-lim, zmax=lim,
                               hovertext=hover, hoverinfo="text", colorbar=dict(title="CIE")))
    if top:
        fig.add_trace(go.Scatter(x=[h for _, h in top], y=[l for l, _ in top], mode="markers", name=f"top {len(top)}",
                                 marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=2)),
                                 hoverinfo="skip"))
    fig.update_layout(
        title=title or f"Causal indirect effect per head (P(gold) gain) — {model}, task {task}",
        xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1), template="plotly_white",
    )
    return fig
