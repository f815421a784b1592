"""The HTML report: self-contained, every section present, and it renders in headless Chromium."""

from __future__ import annotations

import re

import pytest

from icl_circuits.report import ReportConfig, render_html, run_suite
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
    assert text.count("Plotly.newPlot") == sum(len(s.figures) for s in report[0])


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium_without_console_errors(report):
    sections, path = report
    result = check_html(path)
    assert result["errors"] == []
    assert result["plots"] == sum(len(s.figures) for s in sections)
    assert result["rendered"] == result["plots"]


def test_unknown_section_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="only: unknown sections"):
        run_suite(tiny_model, ReportConfig(quick=True), only=["nope"], progress=False)


def _boom(ctx):
    raise RuntimeError("deliberate failure")


def test_a_failing_section_makes_report_exit_nonzero_and_is_shown(monkeypatch, tiny_model, tmp_path):
    """The page is still written with the error in it, and the command exits 1 naming the section."""
    from click.testing import CliRunner

    import icl_circuits.cli as cli_mod
    import icl_circuits.report as report_mod
    import icl_circuits.report_sections  # noqa: F401  (register the real sections before patching)

    monkeypatch.setattr(cli_mod, "_load", lambda name: tiny_model)
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

    import icl_circuits.cli as cli_mod
    import icl_circuits.report as report_mod
    import icl_circuits.report_sections  # noqa: F401

    def quiet(ctx):
        return report_mod.Section("quiet", "quiet", f"threads {torch.get_num_threads()}")

    before = torch.get_num_threads()
    monkeypatch.setattr(cli_mod, "_load", lambda name: tiny_model)
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
