"""The main job: run the analysis suite on a model and write ONE self-contained HTML report.

Every section is a function ``section(ctx) -> Section`` (``sections``, ``task_vector_sections``,
``circuit_sections``) that computes a result with the toolkit's public functions and turns it into
figures, a table and a few sentences saying what was measured; ``SECTIONS`` lists them in order.
The HTML inlines plotly.js once, so the file opens offline. Each section records its own time.
The top of the report package: it imports the section modules, none of them imports it.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.offline import get_plotlyjs
from tqdm.auto import tqdm

from icl_circuits.core.models import load_model
from icl_circuits.core.types import HookedModel
from icl_circuits.report.circuit_sections import dpca_section, heads_section, ov_section, propagation_section
from icl_circuits.report.config import MODEL_PRESETS, Context, ReportConfig, Section, SectionFn  # noqa: F401  (re-exported)
from icl_circuits.report.sections import accuracy_section, saliency_section
from icl_circuits.report.task_vector_sections import interchange_section, task_vectors_section
from icl_circuits.report.verdicts import CLAIMS, verdict_label


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


#: The report's sections, in order: (key, section function).
SECTIONS: list[tuple[str, SectionFn]] = [
    ("accuracy", accuracy_section), ("saliency", saliency_section), ("task_vectors", task_vectors_section),
    ("interchange", interchange_section), ("heads", heads_section), ("ov", ov_section),
    ("propagation", propagation_section), ("dpca", dpca_section),
]


def run_suite(
    model: HookedModel, cfg: ReportConfig, *, only: list[str] | None = None, progress: bool = True
) -> list[Section]:
    """Run every section of ``SECTIONS`` (or those in ``only``); a failing section is reported, not fatal."""
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
        t0, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(cfg.seed)
        try:
            sec = fn(ctx)
        except Exception as err:  # keep the rest of the report; show the failure in it
            sec = Section(key, key, "", error=f"{type(err).__name__}: {err}")
        sec.seconds, sec.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        if sec.claim is None:
            sec.claim = CLAIMS.get(key)
        if progress:
            tqdm.write(f"  {key:<14} {sec.seconds:6.1f} s wall, {sec.cpu_seconds:6.1f} s CPU"
                       + (f"  FAILED {sec.error}" if sec.error else ""))
        out.append(sec)
    return out


def _figure_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def _section_html(s: Section, cfg: ReportConfig) -> str:
    """A section as a paper's figure: claim and source, paper vs ours, verdicts, figure(s), summary
    table, the reading of the numbers, and the full data as a CSV download."""
    body = [f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>']
    n = f" · {s.n_prompts} prompts" if s.n_prompts is not None else ""
    body.append(f'<p class="meta">model {html.escape(cfg.model_name)}{n} · seed {cfg.seed} · '
                f"{s.seconds:.1f} s wall, {s.cpu_seconds:.1f} s CPU</p>")
    if s.error:
        body.append(f'<p class="error">This section failed: {html.escape(s.error)}</p>')
    if s.claim is not None:
        body.append(f'<div class="claim"><p><b>Claim tested:</b> {html.escape(s.claim.claim)} '
                    f'<span class="meta">({html.escape(s.claim.source)})</span></p>'
                    f"<p><b>Paper:</b> {html.escape(s.claim.paper)}"
                    + (f"<br><b>Ours:</b> {html.escape(s.ours)}" if s.ours else "") + "</p></div>")
    body += [f'<p class="warn"><b>Not a finding:</b> {html.escape(w)}</p>' for w in s.warnings]
    body += [f"<p>{p}</p>" for p in s.text.split("\n\n") if p.strip()]
    for j, f in enumerate(s.figures):
        if j == 1:
            body.append('<p class="meta">Detail:</p>')
        body.append(_figure_html(f, f"fig-{s.key}-{j}"))
    body.append(table_html(s))
    if s.reading:
        tag = verdict_label(s.warnings) if not s.error else "failed"
        body.append(f'<p class="reading"><b>Reading ({tag}):</b> {html.escape(s.reading)}</p>')
    body.append("</section>")
    return "\n".join(body)


def render_html(sections: list[Section], cfg: ReportConfig, total_seconds: float, n_layers: int | None = None,
                load_seconds: float = 0.0) -> str:
    """One self-contained HTML page (plotly.js inlined once). The header says what was run: model,
    tasks, demos, prompts per section, analysed layers, threads and times (per section: wall and CPU)."""
    toc = [f'<li><a href="#{s.key}">{html.escape(s.title)}</a> <span class="t">{s.seconds:.1f} s wall, '
           f"{s.cpu_seconds:.1f} s CPU{' · FAILED' if s.error else ''}</span></li>" for s in sections]
    parts = [_section_html(s, cfg) for s in sections]
    counts = html.escape(", ".join(f"{s.key} {s.n_prompts}" for s in sections if s.n_prompts is not None) or "n/a")
    failed = failed_sections(sections)
    failed_banner = (f'<p class="error">{len(failed)} section(s) failed: {html.escape(", ".join(failed))} '
                     "(the error is shown in each).</p>" if failed else "")
    analysis = sum(s.seconds for s in sections)
    cpu = sum(s.cpu_seconds for s in sections)
    layers = (f"layers analysed in per-layer sweeps: {', '.join(map(str, cfg.layers(n_layers)))} "
              f"(of 0..{n_layers})" if n_layers else "")
    tasks = (f"tasks: accuracy {', '.join(cfg.accuracy_tasks) if cfg.accuracy_tasks else 'every readable task'}; "
             f"vectors, heads, OV, propagation {cfg.knowledge_task}; interchange {' -> '.join(cfg.interchange_pair)}; "
             f"dPCA {cfg.category_task}")
    methods = ("head ranking: attribution patching" + (" and the exact scan" if cfg.exact_head_scan else "")
               + f"; function-vector heads scored in every {cfg.fv_layer_stride} analysed layer(s) up to half depth"
               + (f" on {cfg.fv_prompts} prompts" if cfg.fv_prompts else "")
               + f"; LTVs at every {cfg.ltv_layer_stride} analysed layer(s), {cfg.ltv_epochs} epochs, lr {cfg.ltv_lr:g}; propagation fit "
               f"on {cfg.propagation_vectors} random vectors at the LTV layers; key heads k = "
               f"{', '.join(map(str, cfg.key_head_ks))} vs 10 random draws; dPCA at every {cfg.dpca_layer_stride} "
               f"analysed layer(s) >= 1, {cfg.dpca_n_null} null draws")
    style = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0} .meta,.t{color:#777;font-size:.9em} .error{color:#b00}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em}
.claim{background:#f3f6fb;border-left:4px solid #4a78b5;padding:.1em .8em}
.reading{border-left:4px solid #888;padding:.2em .8em}
table.tbl{border-collapse:collapse;font-size:.85em;margin:1em 0} .tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #ddd}
section{margin-top:2.5em}"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>icl-circuits report: {html.escape(cfg.model_name)}</title>
<style>{style}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>icl-circuits report</h1>
<p class="meta">model {html.escape(cfg.model_name)} · {cfg.n_demos} demos · prompts per section: {counts} ·
seed {cfg.seed}{' · quick' if cfg.quick else ''} · {cfg.threads or torch.get_num_threads()} torch thread(s) ·
total {total_seconds:.1f} s (model load {load_seconds:.1f} s, analysis {analysis:.1f} s wall, {cpu:.1f} s CPU)</p>
<p class="meta">{html.escape(tasks)}<br>{html.escape(layers)}<br>{html.escape(methods)}</p>
{failed_banner}<ol>{''.join(toc)}</ol>
{''.join(parts)}
</body></html>"""


def write_report(
    model_name: str = "toy-icl", out: str | Path = "report.html", *, quick: bool = False, seed: int = 0,
    only: list[str] | None = None, progress: bool = True, model: HookedModel = None, load_seconds: float = 0.0,
    **cfg_kwargs: Any,
) -> list[Section]:
    """Run the suite on ``model_name`` and write the report to ``out``; returns the sections."""
    cfg = ReportConfig.for_model(model_name, quick=quick, seed=seed, **cfg_kwargs)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    cfg.threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model = model if model is not None else load_model(model_name)
    load = time.perf_counter() - t0 + load_seconds  # load_seconds: a model loaded by the caller
    sections = run_suite(model, cfg, only=only, progress=progress)  # prints each section's time as it ends
    total = time.perf_counter() - t0 + load_seconds
    Path(out).write_text(render_html(sections, cfg, total, model.cfg.n_layers, load), encoding="utf-8")
    wall, cpu = sum(s.seconds for s in sections), sum(s.cpu_seconds for s in sections)
    print(f"report written to {out}: analysis {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({cfg.threads} thread(s)); total {total:.1f} s with the model load ({load:.1f} s)")
    return sections


def failed_sections(sections: list[Section]) -> list[str]:
    """Keys of the sections that raised (their error is shown in the HTML)."""
    return [s.key for s in sections if s.error]
