"""The explorer's page: the prompt controls, the prompt's tokens (always visible, clickable) and
one tab per view. Component ids are stable: the browser test and the callbacks use them."""

from __future__ import annotations

from typing import Sequence

from dash import dcc, html

from icl_circuits.explorer.inputs import CUSTOM, MAX_CUSTOM_PAIRS, MAX_SEED, NAMED_POSITION_SETS, TEMPLATES
from icl_circuits.explorer.lessons import LESSONS
from icl_circuits.explorer.session import MAX_DEMOS, Explorer

__all__ = ["CLICKED", "ROLE_COLORS", "page", "token_buttons", "token_class"]

#: The interventions view's choice "the tokens clicked in the prompt".
CLICKED = "clicked tokens"
#: Background colour of a token by the first part of its role (``PromptBatch.roles``).
ROLE_COLORS = {"bos": "#e0e0e0", "input": "#dbe9f6", "answer": "#fde0c5", "query": "#d5f0d5",
               "final": "#b9e3b9", "template": "#f4f4f4"}
CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #222; }
h1 { font-size: 1.4rem; margin: .8rem 0 .2rem; } .sub { color: #555; margin-bottom: .6rem; }
.controls { display: flex; flex-wrap: wrap; gap: .8rem 1.2rem; align-items: end; margin: .6rem 0; }
.controls label { display: block; font-size: .8rem; color: #555; }
.controls > button { font: inherit; padding: .45rem .9rem; border: 1px solid #bbb; border-radius: 4px;
                     background: #f6f6f6; cursor: pointer; }
.message { color: #a61b1b; min-height: 1.2rem; margin: .3rem 0; font-size: .9rem; }
.strip { display: flex; flex-wrap: wrap; gap: 2px; margin: .4rem 0; padding: .4rem;
         border: 1px solid #ddd; border-radius: 4px; }
.token { border: 1px solid #ccc; border-radius: 3px; padding: 1px 4px; font-family: monospace;
         font-size: .85rem; cursor: pointer; white-space: pre; }
.token.selected { outline: 2px solid #d62728; outline-offset: 1px; }
.legend span { margin-right: .8rem; padding: 0 4px; border-radius: 3px; font-size: .8rem; }
.panel { display: flex; flex-wrap: wrap; gap: 1rem; } .panel > div { flex: 1 1 420px; min-width: 320px; }
.answer td { padding: 2px 8px; } table.answer { margin-top: .6rem; } .lesson p { max-width: 60rem; }
"""


def token_class(role: str, selected: bool) -> str:
    """CSS classes of a token button: ``token``, its role kind, and ``selected``."""
    return "token role-" + role_kind(role) + (" selected" if selected else "")


def role_kind(role: str) -> str:
    if role.startswith("bos"):
        return "bos"
    if role == "final" or role.endswith("+final"):
        return "final"
    if role.startswith("query"):
        return "query"
    if ".answer" in role:
        return "answer"
    if ".input" in role:
        return "input"
    return "template"


def token_buttons(tokens: Sequence[str], roles: Sequence[str], names: Sequence[str | None],
                  selected: Sequence[int] = ()) -> list[html.Button]:
    """One button per token, coloured by role; the tooltip names its position (``demo_1.answer[0]``)."""
    chosen = set(selected)
    return [html.Button(
        t.replace("\n", "\\n") or "·", id={"type": "token", "index": i}, n_clicks=0,
        className=token_class(r, i in chosen), title=f"{i}: {r}" + (f" = {n}" if n else " (not patchable)"),
        style={"background": ROLE_COLORS[role_kind(r)]}, **{"data-index": str(i), "data-role": r})
        for i, (t, r, n) in enumerate(zip(tokens, roles, names))]


def _field(label: str, component) -> html.Div:
    return html.Div([html.Label(label), component])


def controls(explorer: Explorer) -> html.Div:
    tasks = [{"label": t, "value": t} for t in explorer.tasks] + [{"label": "custom pairs...", "value": CUSTOM}]
    return html.Div(className="controls", children=[
        _field("task", dcc.Dropdown(id="task", options=tasks, value=explorer.tasks[0], clearable=False,
                                    style={"width": "14rem"})),
        _field(f"demos (0-{MAX_DEMOS})", dcc.Input(id="demos", type="number", value=8, min=0, max=MAX_DEMOS,
                                                   step=1, debounce=True, style={"width": "5rem"})),
        _field("seed", dcc.Input(id="seed", type="number", value=0, min=0, max=MAX_SEED, step=1, debounce=True,
                                 style={"width": "6rem"})),
        _field("template", dcc.Dropdown(id="template", options=[
            {"label": k if v is None else f"{k}: {v!r}", "value": k} for k, v in TEMPLATES.items()],
            value="default", clearable=False, style={"width": "12rem"})),
        html.Div(id="pairs-box", style={"display": "none"}, children=_field(
            f"custom pairs, one 'input -> output' per line (at most {MAX_CUSTOM_PAIRS})",
            dcc.Textarea(id="pairs", value="hot -> cold\nbig -> small\nup -> down\nfast -> slow\nold -> new\n"
                         "wet -> dry\nhigh -> low\nlight -> dark\nhappy -> sad\nopen -> closed",
                         style={"width": "22rem", "height": "7rem"}))),
    ])


def prompt_tab() -> dcc.Tab:
    return dcc.Tab(label="Prompt", value="prompt", children=html.Div(className="panel", children=[
        html.Div(id="answer"),
        html.Div(dcc.Graph(id="top-tokens", config={"displaylogo": False})),
    ]))


def attention_tab(explorer: Explorer) -> dcc.Tab:
    n, h = explorer.n_layers, explorer.n_heads
    return dcc.Tab(label="Attention and saliency", value="attention", children=[
        html.Div(className="controls", children=[
            _field("layer", html.Div(dcc.Slider(id="att-layer", min=0, max=n - 1, step=1, value=0,
                                                marks={i: str(i) for i in range(n)}), style={"width": "24rem"})),
            _field("head", dcc.Dropdown(id="att-head", options=list(range(h)), value=0, clearable=False,
                                        style={"width": "6rem"})),
        ]),
        html.Div(id="att-message", className="message", role="alert"),
        html.Div(className="panel", children=[
            html.Div(dcc.Graph(id="attention", config={"displaylogo": False})),
            html.Div(dcc.Graph(id="saliency", config={"displaylogo": False})),
        ]),
    ])


def intervention_tab(explorer: Explorer) -> dcc.Tab:
    n = explorer.n_layers
    return dcc.Tab(label="Interventions", value="interventions", children=[
        html.P("Replace this prompt's residual stream at a set of positions and one layer by the mean over "
               "prompts of another task (Cheng & Zhang's interchange), and see whether the answer moves to "
               "the other task (transfer), stays (preserve), or neither. Click tokens in the prompt above "
               "for your own set."),
        html.Div(className="controls", children=[
            _field("source task", dcc.Dropdown(id="source", options=[], clearable=False, style={"width": "14rem"})),
            _field("positions", dcc.RadioItems(id="position-set", options=[*NAMED_POSITION_SETS, CLICKED],
                                               value="all demo tokens", inline=True)),
            _field("layer", html.Div(dcc.Slider(id="int-layer", min=0, max=n - 1, step=1, value=0,
                                                marks={i: str(i) for i in range(n)}), style={"width": "24rem"})),
        ]),
        html.Div(id="int-message", className="message", role="alert"),
        html.Div(id="int-outcome"),
        dcc.Graph(id="int-curve", config={"displaylogo": False}),
    ])


def heads_tab() -> dcc.Tab:
    return dcc.Tab(label="Heads", value="heads", children=[
        html.P("Each cell estimates, by attribution patching (one forward and one backward pass), how the "
               "answer's logit difference changes when that head is ablated. Click a head to ablate it "
               "exactly and compare."),
        html.Div(className="controls", children=[
            _field("ablation", dcc.RadioItems(id="how", options=["zero", "mean"], value="zero", inline=True)),
            html.Button("exact scan of every head", id="scan-all", n_clicks=0),
        ]),
        html.Div(id="heads-message", className="message", role="alert"),
        html.Div(className="panel", children=[
            html.Div(dcc.Graph(id="heads-grid", config={"displaylogo": False})),
            html.Div([html.Div(id="head-outcome"), dcc.Graph(id="head-layer", config={"displaylogo": False})]),
        ]),
        dcc.Graph(id="scan-vs-attribution", style={"display": "none"}, config={"displaylogo": False}),
    ])


def lessons_tab() -> dcc.Tab:
    return dcc.Tab(label="Lessons", value="lessons", children=[
        html.Div(className="controls", children=[
            _field("lesson", dcc.Dropdown(id="lesson", options=[
                {"label": f"{i + 1}. {l.title}", "value": l.key} for i, l in enumerate(LESSONS)],
                value=LESSONS[0].key, clearable=False, style={"width": "30rem"})),
            html.Button("run it", id="lesson-run", n_clicks=0),
        ]),
        html.Div(id="lesson-message", className="message", role="alert"),
        html.Div(id="lesson-text", className="lesson"),
        dcc.Graph(id="lesson-figure", style={"display": "none"}, config={"displaylogo": False}),
    ])


def page(explorer: Explorer, subtitle: str) -> html.Div:
    """The whole page."""
    legend = html.Div(className="legend", children=[html.Span(k, style={"background": c})
                                                     for k, c in ROLE_COLORS.items()])
    return html.Div([
        html.H1(f"ICL explorer: {explorer.name}"),
        html.Div(subtitle, className="sub"),
        controls(explorer),
        html.Div(id="prompt-message", className="message", role="alert"),
        legend,
        html.Div(id="token-strip", className="strip"),
        dcc.Store(id="settings"), dcc.Store(id="selection", data=[]), dcc.Store(id="roles", data=[]),
        dcc.Tabs(id="tabs", value="prompt", children=[
            prompt_tab(), attention_tab(explorer), intervention_tab(explorer), heads_tab(), lessons_tab()]),
    ])
