"""Figures for the logit lens: accuracy of decoding the final-position residual at each layer, with
Wilson 95% bands (clean, and with a task vector injected)."""

from __future__ import annotations

import plotly.graph_objects as go

from icl_circuits.core.metrics import wilson
from icl_circuits.methods.logit_lens import LogitLensResult
from icl_circuits.methods.propagation import PropagationResult
from icl_circuits.viz import _style

__all__ = ["logit_lens"]


def _band(fig: go.Figure, x, low, high, name: str, color: str | None = None, **where) -> None:
    fig.add_trace(_style.band(x, low, high, color, name=name, group=name), **where)


def _wilson_band(values, n: int) -> tuple[list[float], list[float]]:
    """Wilson 95% bands of rates measured on ``n`` prompts (each rate is k/n exactly)."""
    rates = [wilson(int(round(v * n)), n) for v in values]
    return [r.low for r in rates], [r.high for r in rates]


@_style.figure
def logit_lens(res: LogitLensResult | PropagationResult, title: str | None = None) -> go.Figure:
    """Logit-lens accuracy by layer with Wilson 95% bands (a PropagationResult: without and with the
    vector injected at that layer)."""
    fig = go.Figure()
    if isinstance(res, LogitLensResult):
        curves = [("clean" if res.injected is None else f"with {res.injected} vector", res.accuracy.tolist(),
                   res.low.tolist(), res.high.tolist(), res.per_prompt.shape[1])]
        n_cand = res.n_candidates
    else:
        curves = []
        for key, label in (("lens_clean", "clean"), ("lens_injected", f"with {res.method} vector")):
            v = getattr(res, key).tolist()
            lo, hi = _wilson_band(v, res.n_eval)
            curves.append((label, v, lo, hi, res.n_eval))
        n_cand = res.n_candidates
    for label, v, lo, hi, n in curves:
        _band(fig, res.layers, lo, hi, label)
        fig.add_trace(go.Scatter(x=res.layers, y=v, mode="lines+markers", name=label, customdata=list(zip(lo, hi)),
                                 hovertemplate=f"{label}<br>layer %{{x}}: %{{y:.3f}} [%{{customdata[0]:.3f}}, "
                                               f"%{{customdata[1]:.3f}}] (n={n})<extra></extra>"))
    fig.add_hline(y=1 / max(n_cand, 1), line_dash="dot", annotation_text=f"chance 1/{n_cand}")
    fig.update_layout(title=title or f"Logit lens over {n_cand} candidates: {res.model}, {res.task}",
                      xaxis_title="layer (input of block)", yaxis_title="accuracy", yaxis_range=[-0.02, 1.02],
                      template="plotly_white")
    return _style.integer_layer_axis(fig, res.layers)
