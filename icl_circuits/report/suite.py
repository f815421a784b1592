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
from icl_circuits.report.verdicts import CLAIMS, verdict_label


@dataclass
class ReportConfig:
    """What the suite runs on. ``quick`` shrinks prompt counts for a fast look.

    ``ReportConfig.for_model(name)`` gives the tasks and sizes chosen for a model
    (``MODEL_PRESETS``): tasks the model solves (>= 0.7 on its primary metric) and prompt counts
    and a layer stride that keep the full report within about 3 minutes on 2 CPU cores.
    """

    model_name: str = "toy-icl"
    knowledge_task: str = "antonym"
    category_task: str = "letter-string"
    interchange_pair: tuple[str, str] = ("antonym", "english-french")
    #: tasks of the accuracy-vs-demos section (None: every task the tokenizer can carry)
    accuracy_tasks: tuple[str, ...] | None = None
    accuracy_demos: tuple[int, ...] = (0, 1, 2, 4, 8)
    #: prompts per cell of the accuracy section (None: ``n_prompts``)
    accuracy_prompts: int | None = None
    n_demos: int = 8
    n_prompts: int = 48
    #: every ``layer_stride``-th layer is analysed in per-layer sweeps (None: 1 up to 12 layers, else
    #: n_layers // 10); the final layer is always included
    layer_stride: int | None = None
    #: head ablation: the exact per-head scan of every head (expensive on real models) next to attribution
    exact_head_scan: bool = True
    #: function vectors: head CIE is measured in every ``fv_layer_stride``-th analysed layer of the first
    #: two thirds (each head costs one patched forward of the ICL prompts)
    fv_layer_stride: int = 1
    #: corrupted prompts the head CIE is averaged over (None: all of the section's prompts)
    fv_prompts: int | None = None
    #: LTV training epochs per layer and training prompts (the task-vector, OV and propagation sections)
    ltv_epochs: int = 8
    #: LTV learning rate (Adam). SmolLM2's final-position residual has norm 120-220: at 2e-2 and a few dozen
    #: steps the vector stays below norm 4 and moves nothing (measured: docs/results/real/task_vectors.md)
    ltv_lr: float = 2e-2
    #: LTVs are trained at every ``ltv_layer_stride``-th analysed block layer (training costs ~10 s of CPU per
    #: layer on SmolLM2); the propagation section fits at the same layers
    ltv_layer_stride: int = 1
    #: LTV training prompts per layer (None: 2 * prompts(32)); a quarter as many again are held out
    ltv_prompts: int | None = None
    #: random vectors of the propagation fit
    propagation_vectors: int = 160
    seed: int = 0
    quick: bool = False
    #: null draws of the dPCA section (``dpca_analysis.DEFAULT_N_NULL``: p-values can reach 1/21)
    dpca_n_null: int = 20
    #: dPCA at every ``dpca_layer_stride``-th analysed layer (each layer: a fit plus one per null draw)
    dpca_layer_stride: int = 1
    #: numbers of key heads ablated (vs as many random heads)
    key_head_ks: tuple[int, ...] = (1, 2, 4, 8)
    #: torch intra-op threads for the run (None: leave torch's setting); the header states the count.
    #: The CLI defaults to 1: on a busy 2-core machine torch's default count was ~48x slower.
    threads: int | None = None

    def prompts(self, n: int | None = None) -> int:
        n = n or self.n_prompts
        return max(8, n // 3) if self.quick else n

    def layers(self, n_layers: int) -> list[int]:
        """The layers of per-layer sweeps: 0, s, 2s, ... and always ``n_layers`` (the final residual)."""
        s = self.layer_stride or (1 if n_layers <= 12 else max(1, n_layers // 10))
        return sorted(set(range(0, n_layers + 1, s)) | {n_layers})

    def block_layers(self, n_layers: int) -> list[int]:
        """``layers`` without the final residual (sweeps that intervene at the input of a block)."""
        return [l for l in self.layers(n_layers) if l < n_layers]

    @classmethod
    def for_model(cls, model_name: str, **overrides: Any) -> "ReportConfig":
        """The preset of ``model_name`` (``MODEL_PRESETS``; defaults for other models) with ``overrides``."""
        return cls(model_name=model_name, **{**MODEL_PRESETS.get(model_name, {}), **overrides})


#: Per-model choices. smollm2-135m: tasks it solves with 8 demos under "{x} -> {y}"
#: (docs/models/smollm2-135m.md: present-past 0.93, uppercase 0.86, first-letter 0.85, singular-plural
#: 0.96 first token; animal-plant 0.89 label accuracy), every 3rd of its 30 layers, and prompt counts
#: sized so that the whole report takes about 3 minutes on 2 CPU cores with 1 thread.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "toy-icl": {},
    "smollm2-135m": dict(
        knowledge_task="present-past", category_task="animal-plant", interchange_pair=("uppercase", "first-letter"),
        accuracy_tasks=("present-past", "singular-plural", "uppercase"), accuracy_demos=(0, 2, 8), accuracy_prompts=12,
        n_prompts=24, layer_stride=3, fv_layer_stride=2, fv_prompts=8, exact_head_scan=False, ltv_epochs=10, ltv_lr=0.1,
        ltv_layer_stride=3, ltv_prompts=24, propagation_vectors=48, dpca_n_null=10, dpca_layer_stride=2,
        key_head_ks=(1, 4, 8),
    ),
}


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
    #: the claim tested, its source and the paper's number (``verdicts.CLAIMS[key]`` by default)
    claim: Any = None
    #: our number, to stand beside the paper's
    ours: str = ""
    #: what the numbers say, generated from them (shown after the table)
    reading: str = ""
    #: CPU seconds of the process while the section ran (wall time is ``seconds``)
    cpu_seconds: float = 0.0


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
    from icl_circuits.core.models import load_model

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
