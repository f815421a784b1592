"""Figures for interchange, necessity and probe results (Wilson 95% bands for every rate)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from icl_circuits.methods.interchange import OUTCOMES, InterchangeControlsResult, InterchangeResult
from icl_circuits.methods.necessity import NecessityResult
from icl_circuits.methods.probing import ProbeResult
from icl_circuits.viz import _style

_DASH = {"transfer": "solid", "preserve": "dash", "neither": "dot"}


def _color(i: int) -> str:
    return _style.color(i)


def _band(fig: go.Figure, x, low, high, color: str, group: str) -> None:
    fig.add_trace(_style.band(x, low, high, color, group=group))


def _as_list(results):
    if isinstance(results, InterchangeControlsResult):  # its runs, in order
        return [r for _, r in results.items()]
    return [results] if not isinstance(results, (list, tuple)) else list(results)


@_style.figure
def interchange(
    results: InterchangeResult | Sequence[InterchangeResult] | InterchangeControlsResult,
    outcomes: Sequence[str] = OUTCOMES,
    title: str | None = None,
) -> go.Figure:
    """Transfer / preserve / neither rate per layer, one colour per position set (or control), one
    dash per outcome, with Wilson 95% bands (an ``InterchangeControlsResult``: one colour per run)."""
    results = _as_list(results)
    if not results:
        raise ValueError("results must hold at least one InterchangeResult")
    fig = go.Figure()
    for i, r in enumerate(results):
        color, label = _color(i), r.position_set + ("" if r.control == "none" else f" ({r.control})")
        if r.meta.get("source_prompts_task", r.source_task) != r.source_task:
            label += f" [source prompts: {r.meta['source_prompts_task']}]"
        for o in outcomes:
            j = OUTCOMES.index(o)
            v, lo, hi = r.rates[j].tolist(), r.low[j].tolist(), r.high[j].tolist()
            _band(fig, r.layers, lo, hi, color, label)
            fig.add_trace(go.Scatter(
                x=r.layers, y=v, mode="lines+markers", name=f"{label}: {o}", legendgroup=label,
                line=dict(color=color, dash=_DASH[o]),
                customdata=[[a, b, int(k), r.n] for a, b, k in zip(lo, hi, r.counts[j].tolist())],
                hovertemplate=(f"{label}<br>layer %{{x}}: {o} %{{y:.3f}} "
                               "[%{customdata[0]:.3f}, %{customdata[1]:.3f}] (%{customdata[2]}/%{customdata[3]})"
                               "<extra></extra>"),
            ))
    r0 = results[0]
    fig.update_layout(
        title=title or (f"Interchange {r0.source_task} \u2192 {r0.target_task} on {r0.model} "
                        f"({r0.n_demos} demos, n={r0.n})"),
        xaxis_title="layer (residual stream at the block input)", yaxis_title="rate (Wilson 95% band)",
        yaxis_range=[-0.02, 1.02], template="plotly_white",
    )
    _style.integer_layer_axis(fig, sorted({l for r in results for l in r.layers}))
    return _style.fit_legend(fig)


@_style.figure
def necessity(results: NecessityResult | Sequence[NecessityResult], title: str | None = None) -> go.Figure:
    """Accuracy drop (clean minus corrupted) per layer, one line per position set, Wilson 95% bands."""
    results = _as_list(results)
    if not results:
        raise ValueError("results must hold at least one NecessityResult")
    fig = go.Figure()
    for i, r in enumerate(results):
        color, label = _color(i), r.position_set
        drop = r.drop.tolist()
        lo, hi = (r.baseline - r.high).tolist(), (r.baseline - r.low).tolist()
        _band(fig, r.layers, lo, hi, color, label)
        fig.add_trace(go.Scatter(
            x=r.layers, y=drop, mode="lines+markers", name=label, legendgroup=label, line=dict(color=color),
            customdata=[[a, b, v] for a, b, v in zip(lo, hi, r.values.tolist())],
            hovertemplate=(f"{label}<br>layer %{{x}}: drop %{{y:.3f}} [%{{customdata[0]:.3f}}, "
                           f"%{{customdata[1]:.3f}}]<br>accuracy %{{customdata[2]:.3f}} (clean {r.baseline:.3f})"
                           "<extra></extra>"),
        ))
    r0 = results[0]
    fig.update_layout(
        title=title or f"Necessity ({r0.method.split(':')[-1]}) on {r0.model}, task {r0.task}",
        xaxis_title="layer (residual stream at the block input)", yaxis_title="accuracy drop",
        template="plotly_white",
    )
    _style.integer_layer_axis(fig, sorted({l for r in results for l in r.layers}))
    return _style.fit_legend(fig)


@_style.figure
def probe_vs_transfer(
    probes: ProbeResult | Sequence[ProbeResult],
    transfers: InterchangeResult | Sequence[InterchangeResult] = (),
    title: str | None = None,
) -> go.Figure:
    """Probe accuracy per layer (solid) next to interchange transfer rate (dashed), Wilson bands;
    the probe's chance level and shuffled-label control are dotted."""
    probes, transfers = _as_list(probes), _as_list(transfers)
    if not probes:
        raise ValueError("probes must hold at least one ProbeResult")
    fig = go.Figure()
    for i, p in enumerate(probes):
        color, label = _color(i), f"probe @ {p.position_set}"
        _band(fig, p.layers, p.low.tolist(), p.high.tolist(), color, label)
        fig.add_trace(go.Scatter(
            x=p.layers, y=p.accuracy.tolist(), mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=color), customdata=list(zip(p.low.tolist(), p.high.tolist(), p.control.tolist())),
            hovertemplate=(f"{label}<br>layer %{{x}}: accuracy %{{y:.3f}} [%{{customdata[0]:.3f}}, "
                           "%{customdata[1]:.3f}]<br>shuffled labels %{customdata[2]:.3f}<extra></extra>"),
        ))
        if not p.control.isnan().all():
            fig.add_trace(go.Scatter(x=p.layers, y=p.control.tolist(), mode="lines", line=dict(color=color, dash="dot"),
                                     name=f"{label}: shuffled labels", legendgroup=label))
    for i, r in enumerate(transfers):
        color, label = _color(len(probes) + i), f"transfer @ {r.position_set}"
        v, lo, hi = r.rate("transfer").tolist(), r.low[0].tolist(), r.high[0].tolist()
        _band(fig, r.layers, lo, hi, color, label)
        fig.add_trace(go.Scatter(
            x=r.layers, y=v, mode="lines+markers", name=label, legendgroup=label, line=dict(color=color, dash="dash"),
            customdata=list(zip(lo, hi)),
            hovertemplate=(f"{label}<br>layer %{{x}}: transfer %{{y:.3f}} [%{{customdata[0]:.3f}}, "
                           "%{customdata[1]:.3f}]<extra></extra>"),
        ))
    p0 = probes[0]
    fig.add_hline(y=p0.chance, line=dict(color="grey", dash="dot"), annotation_text=f"chance {p0.chance:.2f}")
    fig.update_layout(
        title=title or f"Probe accuracy vs causal transfer on {p0.model} ({p0.task})",
        xaxis_title="layer (residual stream at the block input)", yaxis_title="accuracy / transfer rate",
        yaxis_range=[-0.02, 1.02], template="plotly_white",
    )
    _style.integer_layer_axis(fig, sorted({l for r in [*probes, *transfers] for l in r.layers}))
    return _style.fit_legend(fig)
