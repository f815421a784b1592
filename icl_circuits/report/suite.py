"""The main job: run the analysis suite on a model and write ONE self-contained HTML report.

Every section is a function ``section(ctx) -> Section`` that computes a result with the toolkit's
public functions and turns it into figures, a table and a few sentences saying what was measured.
The HTML inlines plotly.js once, so the file opens offline. Each section records its own time.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.offline import get_plotlyjs
from tqdm.auto import tqdm
from icl_circuits.core.types import HookedModel


@dataclass
class ReportConfig:
    """What the suite runs on. ``quick`` shrinks prompt counts for a fast look."""

    model_name: str = "toy-icl"
    knowledge_task: str = "antonym"
    category_task: str = "letter-string"
    interchange_pair: tuple[str, str] = ("antonym", "english-french")
    n_demos: int = 8
    n_prompts: int = 48
    seed: int = 0
    quick: bool = False
    #: null draws of the dPCA section (``dpca_analysis.DEFAULT_N_NULL``: p-values can reach 1/21)
    dpca_n_null: int = 20
    #: torch intra-op threads for the run (None: leave torch's setting); the header states the count.
    #: The CLI defaults to 1: on a busy 2-core machine torch's default count was ~48x slower.
    threads: int | None = None

    def prompts(self, n: int | None = None) -> int:
        n = n or self.n_prompts
        return max(8, n // 3) if self.quick else n


@dataclass
class Section:
    """One part of the report: text, figures, optional table, and the time it took."""

    key: str
    title: str
    text: str
    figures: list[go.Figure] = field(default_factory=list)
    table: pd.DataFrame | None = None
    seconds: float = 0.0
    error: str | None = None
    #: prompts the section actually evaluated (read from its result, not the config); None: unknown
    n_prompts: int | None = None
    #: the full tidy data behind ``table``, offered as an embedded CSV download (not printed)
    data: pd.DataFrame | None = None
    #: why (part of) the result is degenerate or not readable, computed from its own numbers;
    #: shown above the figures so that nothing degenerate reads as a finding
    warnings: list[str] = field(default_factory=list)


#: tables longer than this are cut to their first rows in the page (the whole table: CSV download)
MAX_TABLE_ROWS = 30


def _csv_link(df: pd.DataFrame, filename: str, label: str) -> str:
    import base64

    b64 = base64.b64encode(df.to_csv(index=False).encode()).decode()
    return f'<a download="{html.escape(filename)}" href="data:text/csv;base64,{b64}">{html.escape(label)}</a>'


def table_html(s: Section) -> str:
    """The section's table: whole if short, else its first ``MAX_TABLE_ROWS`` rows with a note;
    the full table (and ``s.data``, if any) as embedded CSV downloads."""
    out = []
    fmt = dict(index=False, float_format=lambda v: f"{v:.3g}", classes="tbl", border=0)
    if s.table is not None:
        t = s.table
        out.append(t.head(MAX_TABLE_ROWS).to_html(**fmt))
        if len(t) > MAX_TABLE_ROWS:
            out.append(f'<p class="meta">First {MAX_TABLE_ROWS} of {len(t)} rows shown; '
                       + _csv_link(t, f"{s.key}-table.csv", "download all rows (CSV)") + ".</p>")
    if s.data is not None:
        out.append(f'<p class="meta">{_csv_link(s.data, f"{s.key}-data.csv", "full data (CSV")}, '
                   f"{len(s.data)} rows).</p>")
    return "\n".join(out)


@dataclass
class Context:
    model: HookedModel
    cfg: ReportConfig
    cache: dict = field(default_factory=dict)


SectionFn = Callable[[Context], Section]
SECTIONS: list[tuple[str, SectionFn]] = []


def section(key: str) -> Callable[[SectionFn], SectionFn]:
    """Register a section function under ``key`` (sections run in registration order)."""

    def deco(fn: SectionFn) -> SectionFn:
        SECTIONS.append((key, fn))
        return fn

    return deco


def run_suite(
    model: HookedModel, cfg: ReportConfig, *, only: list[str] | None = None, progress: bool = True
) -> list[Section]:
    """Run every registered section (or those in ``only``); a failing section is reported, not fatal."""
    from icl_circuits.report import sections as report_sections  # noqa: F401  (registers the sections)

    todo = [(k, f) for k, f in SECTIONS if only is None or k in only]
    if only:
        unknown = set(only) - {k for k, _ in SECTIONS}
        if unknown:
            raise ValueError(f"only: unknown sections {sorted(unknown)}; known: {[k for k, _ in SECTIONS]}")
    ctx = Context(model, cfg)
    out = []
    bar = tqdm(todo, desc="report", disable=not progress)
    for key, fn in bar:
        bar.set_postfix_str(key)
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        try:
            sec = fn(ctx)
        except Exception as err:  # keep the rest of the report; show the failure in it
            sec = Section(key, key, "", error=f"{type(err).__name__}: {err}")
        sec.seconds = time.perf_counter() - t0
        out.append(sec)
    return out


def _figure_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def render_html(sections: list[Section], cfg: ReportConfig, total_seconds: float) -> str:
    """One self-contained HTML page (plotly.js inlined once)."""
    parts = []
    toc = []
    for i, s in enumerate(sections):
        toc.append(f'<li><a href="#{s.key}">{html.escape(s.title)}</a> <span class="t">{s.seconds:.1f} s</span></li>')
        body = [f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>']
        n = f" · {s.n_prompts} prompts" if s.n_prompts is not None else ""
        body.append(f'<p class="meta">model {html.escape(cfg.model_name)}{n} · seed {cfg.seed} · {s.seconds:.1f} s</p>')
        if s.error:
            body.append(f'<p class="error">This section failed: {html.escape(s.error)}</p>')
        body += [f'<p class="warn"><b>Not a finding:</b> {html.escape(w)}</p>' for w in s.warnings]
        body += [f"<p>{p}</p>" for p in s.text.split("\n\n") if p.strip()]
        body += [_figure_html(f, f"fig-{s.key}-{j}") for j, f in enumerate(s.figures)]
        body.append(table_html(s))
        body.append("</section>")
        parts.append("\n".join(body))
    counts = html.escape(", ".join(f"{s.key} {s.n_prompts}" for s in sections if s.n_prompts is not None) or "n/a")
    failed = failed_sections(sections)
    failed_banner = (f'<p class="error">{len(failed)} section(s) failed: {html.escape(", ".join(failed))} '
                     "(the error is shown in each).</p>" if failed else "")
    style = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0} .meta,.t{color:#777;font-size:.9em} .error{color:#b00}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em}
table.tbl{border-collapse:collapse;font-size:.85em;margin:1em 0} .tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #ddd}
section{margin-top:2.5em}"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>icl-circuits report: {html.escape(cfg.model_name)}</title>
<style>{style}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>icl-circuits report</h1>
<p class="meta">model {html.escape(cfg.model_name)} · {cfg.n_demos} demos · prompts per section: {counts} ·
seed {cfg.seed}{' · quick' if cfg.quick else ''} · {cfg.threads or torch.get_num_threads()} torch thread(s) ·
total {total_seconds:.1f} s</p>
{failed_banner}<ol>{''.join(toc)}</ol>
{''.join(parts)}
</body></html>"""


def write_report(
    model_name: str = "toy-icl", out: str | Path = "report.html", *, quick: bool = False, seed: int = 0,
    only: list[str] | None = None, progress: bool = True, model: HookedModel = None, **cfg_kwargs: Any,
) -> list[Section]:
    """Run the suite on ``model_name`` and write the report to ``out``; returns the sections."""
    from icl_circuits.core.models import load_model

    cfg = ReportConfig(model_name=model_name, quick=quick, seed=seed, **cfg_kwargs)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    cfg.threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model = model if model is not None else load_model(model_name)
    sections = run_suite(model, cfg, only=only, progress=progress)
    total = time.perf_counter() - t0
    Path(out).write_text(render_html(sections, cfg, total), encoding="utf-8")
    for s in sections:
        status = "FAILED " + s.error if s.error else ""
        print(f"  {s.key:<16} {s.seconds:6.1f} s {status}")
    print(f"report written to {out} ({total:.1f} s)")
    return sections


def failed_sections(sections: list[Section]) -> list[str]:
    """Keys of the sections that raised (their error is shown in the HTML)."""
    return [s.key for s in sections if s.error]
