"""The HTML report: self-contained, every section present, and it renders in headless Chromium."""

from __future__ import annotations

import re

import pytest

from icl_circuits.report.suite import ReportConfig, render_html, run_suite
from tests.browser import check_html, chromium


@pytest.fixture(scope="module")
def report(tiny_model, tmp_path_factory):
    cfg = ReportConfig(model_name="tiny", quick=True)
    sections = run_suite(tiny_model, cfg, progress=False)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(sections, cfg, 1.0), encoding="utf-8")
    return sections, path


def test_every_section_ran_and_has_a_figure(report):
    sections, _ = report
    assert sections, "no sections registered"
    for s in sections:
        assert s.error is None, f"{s.key}: {s.error}"
        assert s.figures and s.text


def test_report_is_self_contained(report):
    _, path = report
    text = path.read_text()
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?https?:""", text)
    assert "<script src=" not in text
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()) == 1  # plotly.js inlined once
    # one newPlot call per figure, outside plotly.js itself (whose source mentions the name in some
    # releases: plotly 5.18's bundle once, 7.x's not at all)
    assert text.replace(get_plotlyjs(), "").count("Plotly.newPlot") == sum(len(s.figures) for s in report[0])


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium_without_console_errors(report):
    sections, path = report
    result = check_html(path)
    assert result["errors"] == []
    assert result["plots"] == sum(len(s.figures) for s in sections)
    assert result["rendered"] == result["plots"]
    assert result["overlapping_annotations"] == [], "annotation texts drawn on top of each other"
    assert result["legend_scrolls"] == [], "a legend needs a scroll bar (entries hidden)"
    assert result["clipped_titles"] == [], "a title runs past its figure's edge"


def test_unknown_section_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="only: unknown sections"):
        run_suite(tiny_model, ReportConfig(quick=True), only=["nope"], progress=False)


def _boom(ctx):
    raise RuntimeError("deliberate failure")


def test_a_failing_section_makes_report_exit_nonzero_and_is_shown(monkeypatch, tiny_model, tmp_path):
    """The page is still written with the error in it, and the command exits 1 naming the section."""
    from click.testing import CliRunner

    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod
    import icl_circuits.report.suite as report_mod
    import icl_circuits.report.sections  # noqa: F401  (register the real sections before patching)

    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    monkeypatch.setattr(report_mod, "SECTIONS", [*report_mod.SECTIONS, ("boom", _boom)])
    out = tmp_path / "r.html"
    res = CliRunner().invoke(cli_mod.cli, ["report", "--quick", "--only", "boom", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "boom" in res.output and "failed" in res.output
    page = out.read_text()
    assert "This section failed: RuntimeError: deliberate failure" in page
    assert "1 section(s) failed: boom" in page
    res = CliRunner().invoke(cli_mod.cli, ["report", "--quick", "--only", "boom", "--out", str(out), "--keep-going"])
    assert res.exit_code == 0, res.output


def test_threads_option_sets_torch_threads_and_the_header_says_it(monkeypatch, tiny_model, tmp_path):
    import torch
    from click.testing import CliRunner

    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod
    import icl_circuits.report.suite as report_mod
    import icl_circuits.report.sections  # noqa: F401

    def quiet(ctx):
        return report_mod.Section("quiet", "quiet", f"threads {torch.get_num_threads()}")

    before = torch.get_num_threads()
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    monkeypatch.setattr(report_mod, "SECTIONS", [*report_mod.SECTIONS, ("quiet", quiet)])
    out = tmp_path / "r.html"
    try:
        res = CliRunner().invoke(cli_mod.cli, ["report", "--only", "quiet", "--threads", "2", "--out", str(out)])
        assert res.exit_code == 0, res.output
        page = out.read_text()
        assert "threads 2" in page and "2 torch thread(s)" in page
    finally:
        torch.set_num_threads(before)
    res = CliRunner().invoke(cli_mod.cli, ["report", "--threads", "0", "--out", str(out)])
    assert res.exit_code == 2 and "--threads" in res.output


def test_header_prompt_counts_are_the_sections_own(report):
    """The header lists what each section evaluated (read from its result), not one config constant."""
    sections, path = report
    cfg = ReportConfig(model_name="tiny", quick=True)
    n = {s.key: s.n_prompts for s in sections}
    assert all(v is not None and v > 0 for v in n.values()), n
    assert n["accuracy"] == cfg.prompts() and n["saliency"] == cfg.prompts(32) and n["dpca"] == cfg.prompts(64)
    header = path.read_text().split("<ol>")[0]
    assert "prompts per section: " + ", ".join(f"{k} {v}" for k, v in n.items()) in header


# --- figure style: properties every report figure must keep (regressions seen in the rendered page)


def _figures(report):
    return [(s.key, j, f) for s in report[0] for j, f in enumerate(s.figures)]


def _axes(fig):
    lay = fig.layout
    return [(k, lay[k]) for k in lay if k.startswith(("xaxis", "yaxis")) and lay[k] is not None]


def test_confidence_bands_draw_no_markers(report):
    for key, j, fig in _figures(report):
        for t in fig.data:
            if getattr(t, "fill", None) == "toself":
                assert t.mode == "lines", f"{key}-{j}: band {t.name!r} has mode {t.mode!r} (markers = stray dots)"


def test_every_layer_axis_has_integer_ticks(report):
    for key, j, fig in _figures(report):
        titled = {k for k, ax in _axes(fig) if ax.title.text and "layer" in ax.title.text}
        if not titled:
            continue
        for k, ax in _axes(fig):
            if k not in titled and not (k.startswith("xaxis") and any(kk.startswith("xaxis") for kk in titled)):
                continue
            traces = [t for t in fig.data if (getattr(t, k[0] + "axis", None) or k[0]) == k[0] + k[5:]]
            values = [v for t in traces for v in (getattr(t, k[0]) or []) if v is not None]
            if values and all(isinstance(v, str) for v in values):
                continue  # categorical layer labels ("L0", "L1"...)
            if ax.tickmode == "array":
                assert all(float(v).is_integer() for v in ax.tickvals), f"{key}-{j} {k}: {ax.tickvals}"
            else:
                assert ax.dtick is not None and float(ax.dtick).is_integer() and ax.dtick >= 1, \
                    f"{key}-{j} {k}: layer axis without integer ticks (tickmode {ax.tickmode}, dtick {ax.dtick})"


def test_legend_entries_are_distinguishable(report):
    """No two legend entries of a figure look the same (colour, dash and marker all equal)."""
    for key, j, fig in _figures(report):
        seen = {}
        for t in fig.data:
            if t.showlegend is False or not t.name or t.type not in ("scatter", "scattergl"):
                continue
            line = getattr(t, "line", None)
            style = (line.color if line else None, line.dash if line else None,
                     t.marker.color if t.marker is not None and not isinstance(t.marker.color, (list, tuple)) else None,
                     t.marker.symbol if t.marker is not None else None)
            if style == (None, None, None, None):
                continue  # plotly assigns distinct colourway colours
            assert style not in seen, f"{key}-{j}: {t.name!r} looks like {seen[style]!r}: {style}"
            seen[style] = t.name


def test_reference_labels_do_not_overlap(report):
    for key, j, fig in _figures(report):
        anns = [a for a in fig.layout.annotations if a.yref == "y" and a.text]
        for i, a in enumerate(anns):
            for b in anns[i + 1:]:
                assert not (a.x == b.x and abs(a.y - b.y) < 0.04), f"{key}-{j}: {a.text!r} on top of {b.text!r}"


def test_equal_baselines_share_one_label():
    import plotly.graph_objects as go

    from icl_circuits.viz import _style

    fig = _style.reference_lines(go.Figure(), [("zero-shot", 0.5), ("icl", 1.0), ("random answers", 1.0)])
    texts = sorted(a.text for a in fig.layout.annotations)
    assert texts == ["icl = random answers: 1.000", "zero-shot: 0.500"]
    assert len(fig.layout.shapes) == 3


def test_sixteen_tasks_get_distinct_colours_and_a_legend_that_fits():
    import pandas as pd

    from icl_circuits.viz import _style
    from icl_circuits.viz.accuracy import accuracy_by_demos

    rows = [dict(task=f"task-{i}", n_demos=k, metric="first_token", value=0.5, low=0.4, high=0.6, n=16)
            for i in range(18) for k in (0, 1, 2, 4, 8)]
    fig = accuracy_by_demos(pd.DataFrame(rows))
    colours = [t.line.color for t in fig.data]
    assert len(set(colours)) == 18
    assert fig.layout.height >= _style.MARGIN_PX + _style.LEGEND_ROW_PX * 18
    assert list(fig.layout.xaxis.tickvals) == [0, 1, 2, 4, 8]


def test_long_tables_are_cut_with_a_download():
    import pandas as pd

    from icl_circuits.report.suite import MAX_TABLE_ROWS, Section, table_html

    long = pd.DataFrame({"layer": range(300), "value": 0.5})
    out = table_html(Section("k", "k", "", table=long, data=long))
    assert out.count("<tr") == MAX_TABLE_ROWS + 1  # header + the first rows
    assert f"First {MAX_TABLE_ROWS} of 300 rows" in out and out.count("data:text/csv;base64,") == 2


# --- degenerate results are labelled from the results' own numbers


def test_local_vector_ceiling_is_flagged_only_when_random_answers_reach_icl():
    import pandas as pd

    from icl_circuits.report.sections import local_vector_ceiling

    def frame(rnd, rnd_high):
        rows = [dict(method="icl", layer=0, accuracy=1.0, low=0.9, high=1.0, n=32),
                dict(method="random-answers", layer=0, accuracy=rnd, low=rnd - 0.1, high=rnd_high, n=32),
                dict(method="local", layer=0, accuracy=1.0, low=0.9, high=1.0, n=32)]
        return pd.DataFrame(rows)

    assert "degenerate" in local_vector_ceiling(frame(1.0, 1.0))
    assert local_vector_ceiling(frame(0.3, 0.45)) is None
    assert local_vector_ceiling(frame(1.0, 1.0)[lambda d: d.method != "local"]) is None


def test_negative_r2_layers_are_labelled_unreadable():
    from icl_circuits.report.sections import propagation_fit_warnings

    out = propagation_fit_warnings([0, 1, 2], [-0.34, 0.1, 0.9])
    assert len(out) == 2 and "R² < 0 at layer(s) 0 (0: -0.34)" in out[0] and "layer(s) 1" in out[1]
    assert propagation_fit_warnings([0, 1], [0.5, 0.9]) == []


def test_dpca_on_a_task_at_chance_is_labelled():
    from icl_circuits.report.sections import dpca_chance_warning

    assert "no learned label representation" in dpca_chance_warning("t", 0.56, 0.42, 0.69, 0.5, 8)
    assert dpca_chance_warning("t", 0.95, 0.85, 0.99, 0.5, 8) is None


def test_warnings_are_rendered_above_the_figures(report):
    from icl_circuits.report.suite import Section

    sections, _ = report
    s = Section("x", "x", "text", warnings=["the baseline <already> reaches the ceiling"])
    page = render_html([s], ReportConfig(quick=True), 1.0)
    assert '<p class="warn"><b>Not a finding:</b> the baseline &lt;already&gt; reaches the ceiling</p>' in page
    for s in sections:  # every warning a section raised is on the page
        assert all(isinstance(w, str) and w for w in s.warnings)


# --- every section reads like a paper's figure; degenerate numbers are labelled (verdicts)


def test_every_section_states_its_claim_source_paper_number_ours_and_a_reading(report):
    sections, path = report
    page = path.read_text()
    for s in sections:
        assert s.claim is not None and s.claim.source and s.claim.paper, s.key
        assert s.reading and s.table is not None and s.data is not None, s.key
        assert 0 < len(s.table) <= 31, f"{s.key}: summary table of {len(s.table)} rows"
        assert s.cpu_seconds >= 0 and s.seconds > 0
    assert page.count("Claim tested:") == len(sections) and page.count("Reading (") == len(sections)
    assert page.count("s CPU") >= len(sections)


def test_task_unsolved_threshold():
    from icl_circuits.report.verdicts import task_unsolved

    assert "0.56" in task_unsolved("country-capital", 0.56, 0.46, 0.65, "first_token")
    assert task_unsolved("present-past", 0.93, 0.86, 0.97, "first_token") is None
    assert task_unsolved("t", 0.70, 0.6, 0.8, "label") is None  # the threshold itself is solved


def test_baseline_at_icl_flags_a_zero_shot_baseline_that_reaches_icl():
    from icl_circuits.report.verdicts import baseline_at_icl

    # sentiment on SmolLM2: 0.86 label accuracy zero-shot, 0.79 with 8 demos
    assert "already reaches the ICL accuracy" in baseline_at_icl("zero-shot", 0.86, 0.91, 0.79)
    assert baseline_at_icl("zero-shot", 0.13, 0.2, 0.86) is None


def test_interval_spanning_the_comparison_is_not_resolved():
    from icl_circuits.report.verdicts import interval_spans

    assert "not resolved" in interval_spans("the vector", 0.40, 0.89, 0.40, "zero-shot")
    assert interval_spans("the vector", 0.72, 1.0, 0.40, "zero-shot") is None


def test_nulls_that_overlap_the_effect():
    from icl_circuits.report.verdicts import null_overlaps

    assert "indistinguishable from noise" in null_overlaps("drop", 0.2, [0.0, 0.1, 0.3])
    assert null_overlaps("drop", 0.5, [0.0, 0.1, 0.3]) is None
    assert "indistinguishable" in null_overlaps("drop", 0.3, [0.3])  # a tie is not above the null


def test_weak_fit_below_point_two():
    from icl_circuits.report.verdicts import weak_fit_layers

    assert "layer(s) 0, 3" in weak_fit_layers([0, 3, 6], [-0.34, 0.19, 0.8])
    assert weak_fit_layers([0, 3], [0.2, 0.9]) is None
    assert weak_fit_layers([0], [float("nan")]) is not None  # a failed fit is not readable


def test_verdict_label():
    from icl_circuits.report.verdicts import verdict_label

    assert verdict_label([]) == "finding" and verdict_label(["x"]) == "not a finding"


def test_model_presets_choose_solved_tasks_and_a_layer_stride():
    from icl_circuits.report.suite import ReportConfig

    real = ReportConfig.for_model("smollm2-135m")
    assert real.layers(30) == list(range(0, 31, 3)) and real.block_layers(30) == list(range(0, 30, 3))
    assert real.category_task == "animal-plant" and real.knowledge_task == "present-past"
    toy = ReportConfig.for_model("toy-icl", quick=True)
    assert toy.quick and toy.layers(4) == [0, 1, 2, 3, 4]
    assert ReportConfig.for_model("some-gpt2").layers(24) == list(range(0, 25, 2))  # auto: n_layers // 10
    assert ReportConfig(layer_stride=4).layers(10) == [0, 4, 8, 10]  # the final residual always included


@pytest.mark.real_model
def test_one_real_model_section_runs_with_the_real_preset(real_model):
    """The saliency section on SmolLM2 with the demo's preset (~5 s): it runs, names the preset's task,
    and says whether the paper's pattern holds."""
    from icl_circuits.report.suite import ReportConfig

    cfg = ReportConfig.for_model("smollm2-135m", n_prompts=8)  # 8 prompts for the task's accuracy check
    (s,) = run_suite(real_model, cfg, only=["saliency"], progress=False)
    assert s.error is None, s.error
    assert "present-past" in s.text and s.reading.startswith("The paper's pattern")
    assert s.n_prompts == cfg.prompts(32) // 2 == 16


def test_label_variance_that_is_token_identity():
    from icl_circuits.report.verdicts import label_token_identity

    assert "token's identity" in label_token_identity(3, 0.999)  # animal-plant on SmolLM2: fixed label words
    assert label_token_identity(1, 0.3) is None


@pytest.mark.parametrize("overrides", [{}, dict(fv_layer_stride=2, fv_prompts=4)])
def test_the_reports_function_vector_is_function_vector_with_layers(test_device, overrides):
    """The task-vector section calls ``function_vector(..., layers=, vector_layers=)``; on toy-icl its
    vector equals the one the section assembled by hand from ``mean_head_outputs``, ``head_cie`` and
    ``fv_from_heads`` before ``function_vector`` had ``layers=`` (the code below), bit for bit: the same
    computations on the same batches."""
    import torch

    from icl_circuits.core.models import load_model
    from icl_circuits.core.pairs import task_vector_prompts
    from icl_circuits.methods.function_vectors import fv_from_heads, head_cie, mean_head_outputs
    from icl_circuits.report.config import Context
    from icl_circuits.report.task_vector_sections import function_vector_at

    m = load_model("toy-icl", device=test_device)
    cfg = ReportConfig.for_model("toy-icl", quick=True, **overrides)
    L = m.cfg.n_layers
    prompts = task_vector_prompts(m, cfg.knowledge_task, n_demos=cfg.n_demos, n_prompts=cfg.prompts(32), seed=cfg.seed)
    fv = function_vector_at(Context(m, cfg), prompts)

    mean_z = mean_head_outputs(m, prompts.icl)
    cand = [l for l in cfg.block_layers(L) if 0 < l <= max(1, L // 2)] or [0]
    if cfg.fv_layer_stride > 1:
        cand = cand[1::cfg.fv_layer_stride] or cand
    k = min(len(prompts.shuffled), cfg.fv_prompts or len(prompts.shuffled))
    cie = head_cie(m, prompts.icl, prompts.shuffled.select(torch.arange(k)), mean_z, layers=cand)
    heads = cie.top(min(10, cie.values.numel()))
    hand = fv_from_heads(m, mean_z, heads)

    assert fv.meta["heads"] == [list(h) for h in heads] and fv.meta["cie_layers"] == cie.layers == cand
    assert fv.meta["cie_prompts"] == k and fv.layers == cfg.block_layers(L)
    assert fv.method == "function" and fv.mode == "add" and fv.task == prompts.icl.task
    assert torch.equal(fv.vectors, hand[None].repeat(len(fv.layers), 1))
