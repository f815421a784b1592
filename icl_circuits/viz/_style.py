"""Shared figure style: one palette that tells >= 16 series apart, confidence bands drawn without
markers, integer layer axes, legends that fit without scrolling, reference lines whose labels do
not print on top of each other. Every figure builder in ``icl_circuits.viz`` uses these."""

from __future__ import annotations

import functools
import textwrap
from typing import Any, Callable, Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go

#: 24 distinct colours (plotly's Dark24): series i gets PALETTE[i]; >24 series wrap around.
PALETTE: tuple[str, ...] = tuple(plotly.colors.qualitative.Dark24)
#: plotly's default figure height; a legend taller than the plot area would scroll.
DEFAULT_HEIGHT = 450
#: pixels per legend entry (font 12 plus gap) and the top + bottom margins plotly keeps.
LEGEND_ROW_PX = 21
MARGIN_PX = 180


#: Characters per title line: a title longer than this is wrapped (plotly never wraps, and a long
#: title is cut at the figure's edge in a report column or a notebook cell, ~800 px).
TITLE_CHARS = 80
#: Extra top margin per wrapped title line (pixels).
TITLE_LINE_PX = 22


def wrap_title(fig: go.Figure, width: int = TITLE_CHARS) -> go.Figure:
    """Wrap the figure's title onto lines of at most ``width`` characters (``<br>``), keeping
    existing line breaks, and make room for the extra lines in the top margin."""
    text = fig.layout.title.text
    if not text:
        return fig
    lines = []
    for part in str(text).split("<br>"):
        lines += textwrap.wrap(part, width) if len(part) > width and "<" not in part else [part]
    if len(lines) > len(str(text).split("<br>")):
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
        fig.update_layout(title_text="<br>".join(lines), margin_t=top + TITLE_LINE_PX * (len(lines) - 1))
    return fig


def figure(fn: Callable[..., go.Figure]) -> Callable[..., go.Figure]:
    """Decorator of every public figure builder in ``icl_circuits.viz``: the figure it returns gets
    the shared finishing (``wrap_title``)."""

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> go.Figure:
        fig = fn(*args, **kwargs)
        return wrap_title(fig) if isinstance(fig, go.Figure) else fig

    return build


def color(i: int) -> str:
    """The i-th series colour (distinct for i < len(PALETTE))."""
    return PALETTE[i % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    """``"#rrggbb"`` (or ``"rgb(r, g, b)"``) as ``"rgba(r, g, b, alpha)"``."""
    if hex_color.startswith("#"):
        r, g, b = plotly.colors.hex_to_rgb(hex_color)
    else:
        r, g, b = plotly.colors.unlabel_rgb(hex_color)
    return f"rgba({int(r)}, {int(g)}, {int(b)}, {alpha})"


def band(x: Sequence, low: Sequence[float], high: Sequence[float], color: str | None, *, name: str = "",
         group: str | None = None, alpha: float = 0.15) -> go.Scatter:
    """A filled confidence band (high along x, low back) as ONE trace with ``mode="lines"`` and zero
    line width: no markers (plotly's default mode for short traces adds markers, drawn as stray
    dots at the band's edges), no hover, no legend entry."""
    x = list(x)
    return go.Scatter(
        x=x + x[::-1], y=list(high) + list(low)[::-1], mode="lines", fill="toself",
        fillcolor=rgba(color, alpha) if color else None, line=dict(width=0), hoverinfo="skip",
        showlegend=False, legendgroup=group, name=f"{name} 95%" if name else None,
    )


def integer_layer_axis(fig: go.Figure, layers: Sequence[int], axis: str = "x", **select) -> go.Figure:
    """Ticks of the layer axis at integers only: at every layer given (up to 32 of them), otherwise an
    integer step. ``select`` goes to ``update_xaxes``/``update_yaxes`` (e.g. ``row=2, col=1``)."""
    vals = sorted({int(v) for v in layers})
    if len(vals) <= 32:
        spec = dict(tickmode="array", tickvals=vals, ticktext=[str(v) for v in vals])
    else:
        step = int(np.ceil((vals[-1] - vals[0]) / 16)) or 1
        spec = dict(tickmode="linear", tick0=vals[0], dtick=step)
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(**spec, **select)
    return fig


def fit_legend(fig: go.Figure, min_height: int = DEFAULT_HEIGHT) -> go.Figure:
    """Make the figure tall enough that its legend needs no scrolling (plotly scrolls a vertical
    legend taller than the plot area)."""
    entries = [t for t in fig.data if t.showlegend is not False and t.name]
    groups = len({t.legendgroup for t in entries if t.legendgroup})  # a gap between groups
    need = MARGIN_PX + LEGEND_ROW_PX * len(entries) + 10 * groups
    height = max(fig.layout.height or min_height, min_height, need)
    fig.update_layout(height=height)
    return fig


def reference_lines(fig: go.Figure, refs: Sequence[tuple[str, float]], *, close: float = 0.04,
                    color: str = "gray") -> go.Figure:
    """Horizontal dashed reference lines (``(name, value)``) with ONE label per cluster of values
    closer than ``close``: equal baselines (e.g. "icl: 1.000" and "random answers: 1.000") are
    named together ("icl = random answers: 1.000") instead of printed on top of each other."""
    dashes = ("dash", "dot", "dashdot", "longdash")
    for j, (_, value) in enumerate(refs):
        fig.add_hline(y=value, line=dict(dash=dashes[j % len(dashes)], color=color, width=1.5))
    order = sorted(range(len(refs)), key=lambda j: refs[j][1])
    clusters: list[list[int]] = []
    for j in order:
        if clusters and abs(refs[j][1] - refs[clusters[-1][0]][1]) < close:
            clusters[-1].append(j)
        else:
            clusters.append([j])
    for c in clusters:
        names = [refs[j][0] for j in c]
        values = [refs[j][1] for j in c]
        same = max(values) - min(values) < 5e-4
        text = (" = ".join(names) + f": {values[0]:.3f}" if same
                else ", ".join(f"{n}: {v:.3f}" for n, v in zip(names, values)))
        fig.add_annotation(x=0, xref="paper", xanchor="left", y=float(np.mean(values)), yref="y",
                           yanchor="bottom", text=text, showarrow=False, font=dict(size=11, color="#444"),
                           bgcolor="rgba(255,255,255,0.7)")
    return fig
