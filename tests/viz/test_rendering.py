"""The browser check itself: it sees overlapping annotation texts and scrolling legends, and the
figures in docs/ have neither."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import pytest

from tests.browser import check_html, chromium

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs it)")


def _page(fig: go.Figure, path: Path) -> Path:
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def test_the_check_sees_overlapping_annotations_and_legend_scrolls(tmp_path):
    bad = go.Figure([go.Scatter(x=[0, 1], y=[0, i], name=f"series {i}") for i in range(40)])
    bad.add_annotation(x=0.5, y=0.5, text="icl: 1.000", showarrow=False)
    bad.add_annotation(x=0.5, y=0.5, text="random answers: 1.000", showarrow=False)
    bad.update_layout(height=300)
    r = check_html(_page(bad, tmp_path / "bad.html"))
    assert r["rendered"] == 1 and r["errors"] == []
    assert r["overlapping_annotations"] == [[0, "icl: 1.000", "random answers: 1.000"]]
    assert r["legend_scrolls"] == [0]
    good = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], name="one")])
    good.add_annotation(x=0, y=0, text="low", showarrow=False)
    good.add_annotation(x=1, y=1, text="high", showarrow=False)
    r = check_html(_page(good, tmp_path / "good.html"))
    assert r["overlapping_annotations"] == [] and r["legend_scrolls"] == [] and r["clipped_titles"] == []
    long = go.Figure([go.Scatter(x=[0, 1], y=[0, 1])], layout={"title": {"text": "a title that runs on " * 12}})
    assert check_html(_page(long, tmp_path / "long.html"))["clipped_titles"] != []


def test_figure_builders_wrap_long_titles():
    """Every viz builder's figure leaves with its title wrapped (plotly never wraps; a long title is cut)."""
    from icl_circuits.viz import _style

    fig = _style.wrap_title(go.Figure(layout={"title": {"text": "word " * 40}}))
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) > 1 and all(len(x) <= _style.TITLE_CHARS for x in lines)
    assert fig.layout.margin.t > 80
    assert _style.wrap_title(fig).layout.title.text == fig.layout.title.text  # idempotent


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "figures").glob("*.html")), ids=lambda p: p.name)
def test_doc_figures_render_cleanly(path):
    r = check_html(path)
    assert r["errors"] == [] and r["rendered"] == r["plots"] >= 1
    assert r["overlapping_annotations"] == [] and r["legend_scrolls"] == [] and r["clipped_titles"] == []
