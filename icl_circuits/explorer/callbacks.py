"""The explorer's callbacks: each reads the page's inputs, checks them, calls the ``Explorer`` (the
project's methods) and returns figures from ``ic.viz`` builders. A view computes only while its tab
is shown (a new prompt costs one view's work, not five); showing the tab computes it.

Every callback is also a plain function of its inputs (``Views``), so tests and the bench call them
without a browser. A callback never raises to the browser: a bad input (``ExplorerInputError``)
becomes a message in its view's message box, any other error is logged on the server and the page
gets a short message without a traceback.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, Callable

import plotly.graph_objects as go
from dash import ALL, Dash, Input, Output, State, ctx, html, no_update

from icl_circuits.explorer.inputs import CUSTOM, ExplorerInputError, PromptSettings
from icl_circuits.explorer.layout import CLICKED, token_buttons, token_class
from icl_circuits.explorer.lessons import lesson, run_lesson
from icl_circuits.explorer.session import HEAD_METRIC, Explorer
from icl_circuits.viz import attention as attention_plots
from icl_circuits.viz import heads as head_plots
from icl_circuits.viz import interchange as interchange_plots
from icl_circuits.viz import saliency as saliency_plots

__all__ = ["Views", "register", "INTERNAL_ERROR"]

log = logging.getLogger("icl_circuits.explorer")
INTERNAL_ERROR = "Something went wrong on the server (it is logged there); try other settings."
_HEAD = re.compile(r"^H(\d+)$")
_LAYER = re.compile(r"^L(\d+)$")


def guarded(n_out: int, message: int) -> Callable:
    """Wrap a view so that it returns ``n_out`` outputs whatever happens: on ``ExplorerInputError``
    every output is left unchanged but output ``message``, which shows the error; on any other
    exception the same with ``INTERNAL_ERROR`` (the traceback goes to the server's log only)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def view(*args: Any) -> tuple:
            try:
                return fn(*args)
            except ExplorerInputError as e:
                text = str(e)
            except Exception:  # noqa: BLE001 - the server keeps serving; the log has the traceback
                log.exception("explorer callback %s failed", fn.__name__)
                text = INTERNAL_ERROR
            out = [no_update] * n_out
            out[message] = text
            return tuple(out)
        return view
    return wrap


def _empty(text: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template="plotly_white", height=200, xaxis_visible=False, yaxis_visible=False,
                      annotations=[dict(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")])
    return fig


class Views:
    """The page's views as functions of their inputs (the callbacks call these)."""

    def __init__(self, explorer: Explorer) -> None:
        self.ex = explorer

    def _settings(self, stored: Any) -> PromptSettings:
        """The prompt of a ``settings`` store, checked again (a browser can send anything)."""
        if not isinstance(stored, dict):
            raise ExplorerInputError("choose a task and a number of demos first")
        return self.ex.settings(stored.get("task"), stored.get("n_demos"), stored.get("seed"),
                                stored.get("template"), stored.get("pairs", ""))

    # ----------------------------------------------------------------------------- the prompt
    @guarded(3, 2)
    def settings(self, task: Any, demos: Any, seed: Any, template: Any, pairs: Any) -> tuple:
        """Controls -> (settings store, pairs box style, message)."""
        box = {"display": "block"} if task == CUSTOM else {"display": "none"}
        s = self.ex.settings(task, demos, seed, template, pairs if task == CUSTOM else "")
        self.ex.batch(s)  # a prompt that cannot be built (too long, a tokenization problem) is an input error
        return ({"task": s.task, "n_demos": s.n_demos, "seed": s.seed, "template": s.template,
                 "pairs": pairs if task == CUSTOM else ""}, box, "")

    @guarded(6, 5)
    def prompt(self, stored: Any) -> tuple:
        """Settings -> (token strip, roles store, selection store, answer panel, top-5 figure, message)."""
        s = self._settings(stored)
        v = self.ex.prompt(s)
        ok = lambda b: "yes" if b else "no"  # noqa: E731
        rows = [("query", repr(v.query)), ("gold answer", repr(v.gold)),
                ("model's answer (greedy)", repr(v.generated)),
                ("first token correct", ok(v.first_token_correct)),
                ("whole answer correct", ok(v.whole_answer_correct))]
        if v.label_words:
            rows.append(("label words", ", ".join(v.label_words)))
        answer = html.Table(className="answer", children=[html.Tr([html.Td(k), html.Td(x)]) for k, x in rows])
        fig = attention_plots.top_tokens(v.top, v.gold, title=f"Top-5 next tokens - {self.ex.name}, {s.label}")
        return token_buttons(v.tokens, v.roles, v.names), v.roles, [], answer, fig, ""

    def toggle(self, clicks: list, selection: Any, roles: Any, trig: Any = None) -> tuple:
        """A click on token ``trig`` (its component id) adds it to the selection or removes it ->
        (selection, classes)."""
        selection = [i for i in (selection or []) if isinstance(i, int)]
        roles = roles if isinstance(roles, list) else []
        if isinstance(trig, dict) and trig.get("type") == "token" and any(clicks or []):
            i = trig.get("index")
            if isinstance(i, int) and 0 <= i < len(roles):
                selection = [j for j in selection if j != i] if i in selection else sorted([*selection, i])
        chosen = set(selection)
        return selection, [token_class(str(r), i in chosen) for i, r in enumerate(roles)]

    # ----------------------------------------------------------------------------- attention and saliency
    @guarded(3, 2)
    def attention(self, stored: Any, layer: Any, head: Any, tab: Any = "attention") -> tuple:
        """-> (attention pattern figure, saliency flow figure, message)."""
        if tab != "attention":
            return no_update, no_update, no_update
        s = self._settings(stored)
        layer, head = self.ex.layer(layer), self.ex.head(head)
        v, b = self.ex.prompt(s), self.ex.batch(s)
        labels = b.answer_positions[0].tolist() if b.n_demos else []
        att = attention_plots.pattern(self.ex.attention(s, layer, head), v.tokens, layer, head,
                                      label_positions=labels, model=self.ex.name)
        if b.n_demos == 0:
            return att, _empty("Saliency flows need demos: choose at least 1."), ""
        sal = saliency_plots.flows(self.ex.saliency(s), title=f"Saliency flow on this prompt - {self.ex.name}, "
                                   f"{s.label} (S_wp: text to label words, S_pq: label words to the final token)")
        return att, sal, ""

    # ----------------------------------------------------------------------------- interventions
    @guarded(3, 2)
    def sources(self, stored: Any, current: Any, tab: Any = "interventions") -> tuple:
        """Settings -> (source task options, value, message): the tasks defined on this query."""
        if tab != "interventions":
            return no_update, no_update, no_update
        s = self._settings(stored)
        opts = self.ex.sources(s)
        if not opts:
            return [], None, f"no task can be interchanged into this query ({self.ex.prompt(s).query!r}); try another seed"
        return opts, current if current in opts else opts[0], ""

    @guarded(3, 2)
    def interchange(self, stored: Any, source: Any, position_set: Any, selection: Any, layer: Any,
                    tab: Any = "interventions") -> tuple:
        """-> (outcome panel, per-layer curve, message)."""
        if tab != "interventions" or source is None:
            return no_update, no_update, no_update
        s = self._settings(stored)
        if s.n_demos == 0:
            raise ExplorerInputError("the interchange patches demo positions: choose at least 1 demo")
        layer = self.ex.layer(layer)
        sel = list(selection) if isinstance(selection, list) else []
        spec = self.ex.position_spec(s, sel if position_set == CLICKED else position_set)
        res = self.ex.interchange(s, source, spec)
        tok = self.ex.batch(s).tokenizer
        i = res.layers.index(layer)
        clean, moved = int(res.clean_predictions[0]), int(res.predictions[i, 0])
        outcome = ("transfer" if moved == int(res.transfer_tokens[0]) else
                   "preserve" if moved == int(res.preserve_tokens[0]) else "neither")
        moved_text = (f"the prediction stayed {tok.decode([clean])!r}" if moved == clean else
                      f"the prediction moved from {tok.decode([clean])!r} to ")
        panel = html.P([f"Patched {spec} at layer {layer} with the mean of {self.ex.source_prompts} "
                        f"{res.source_task} prompts: {moved_text}",
                        html.B("" if moved == clean else repr(tok.decode([moved]))), f" ({outcome}; {res.source_task} would answer "
                        f"{tok.decode([int(res.transfer_tokens[0])])!r}, {s.task} "
                        f"{tok.decode([int(res.preserve_tokens[0])])!r})."], id="int-outcome-text")
        fig = interchange_plots.interchange(res, outcomes=("transfer",), title=(
            f"Transfer when {spec} comes from {res.source_task} (1: the answer became its), every layer, "
            f"n = 1 prompt - {self.ex.name}"))
        fig.add_vline(x=layer, line_dash="dot", line_color="#888")
        return panel, fig, ""

    # ----------------------------------------------------------------------------- heads
    @guarded(2, 1)
    def heads(self, stored: Any, how: Any, tab: Any = "heads") -> tuple:
        """-> (layer x head grid of attribution estimates, message)."""
        if tab != "heads":
            return no_update, no_update
        s = self._settings(stored)
        est = self.ex.head_attribution(s, how)
        return head_plots.head_scan(est, title=f"Attribution estimate: change of {HEAD_METRIC} (clean "
                                    f"{float(est.clean.mean()):.2f}) when each head is {how}-ablated - "
                                    f"{self.ex.name}, {s.label}. Click a head."), ""

    @guarded(3, 2)
    def head_click(self, stored: Any, how: Any, click: Any, tab: Any = "heads") -> tuple:
        """A clicked head -> (ablation panel, that layer's exact vs estimated effects, message)."""
        if tab != "heads":
            return no_update, no_update, no_update
        s = self._settings(stored)
        try:
            point = click["points"][0]
            head, layer = int(_HEAD.match(point["x"]).group(1)), int(_LAYER.match(point["y"]).group(1))
        except (TypeError, KeyError, IndexError, AttributeError, ValueError):
            return html.P("Click a head in the grid."), _empty("Click a head in the grid."), ""
        layer, head = self.ex.layer(layer), self.ex.head(head)
        exact, est = self.ex.head_scan(s, how, layer), self.ex.head_attribution(s, how)
        clean, ablated = float(exact.clean[0]), float(exact.values[0, head])
        a = float(est.effect[est.layers.index(layer), head])
        panel = html.Div(id="head-outcome-text", children=[
            html.P([html.B(f"L{layer}H{head}, {how}-ablated: "),
                    f"{HEAD_METRIC} {clean:.3f} -> {ablated:.3f}: exact change {ablated - clean:+.3f}, "
                    f"attribution estimate {a:+.3f}."])])
        return panel, attention_plots.layer_heads(exact, est, layer, head), ""

    @guarded(3, 2)
    def scan_all(self, stored: Any, how: Any, clicks: Any, trig: Any = "scan-all") -> tuple:
        """The button -> (exact vs attribution scatter of every head, its style, message)."""
        if not clicks or trig != "scan-all":  # a new prompt or ablation hides the old scan
            return no_update, {"display": "none"}, ""
        s = self._settings(stored)
        fig = head_plots.scan_vs_attribution(self.ex.head_scan(s, how), self.ex.head_attribution(s, how))
        return fig, {"display": "block"}, ""

    # ----------------------------------------------------------------------------- lessons
    @guarded(4, 3)
    def lesson(self, key: Any, clicks: Any, trig: Any = "lesson-run") -> tuple:
        """-> (lesson text, figure, figure style, message); the lesson runs on "run it"."""
        try:
            les = lesson(key)
        except ValueError as e:
            raise ExplorerInputError(str(e)) from None
        text = [html.H3(les.title), html.P([html.B("Paper: "), les.paper]), html.P([html.B("Claim: "), les.claim]),
                html.P([html.B("The paper's number: "), les.paper_number]),
                html.P([html.B("Predict before you run: "), les.predict])]
        if not clicks or trig != "lesson-run":
            return text, no_update, {"display": "none"}, ""
        run = run_lesson(self.ex, les.key)
        text += [html.P([html.B("Measured here: "), run.measured], id="lesson-measured"),
                 html.P([html.B("What to look for: "), les.look_for])]
        return text, run.figure, {"display": "block"}, ""


def register(app: Dash, views: Views) -> None:
    """Attach every view to the app's components (ids of ``layout.page``)."""
    app.callback(Output("settings", "data"), Output("pairs-box", "style"), Output("prompt-message", "children"),
                 Input("task", "value"), Input("demos", "value"), Input("seed", "value"), Input("template", "value"),
                 Input("pairs", "value"))(views.settings)
    app.callback(Output("token-strip", "children"), Output("roles", "data"), Output("selection", "data"),
                 Output("answer", "children"), Output("top-tokens", "figure"),
                 Output("prompt-message", "children", allow_duplicate=True),
                 Input("settings", "data"), prevent_initial_call=True)(views.prompt)
    app.callback(Output("selection", "data", allow_duplicate=True),
                 Output({"type": "token", "index": ALL}, "className"),
                 Input({"type": "token", "index": ALL}, "n_clicks"), State("selection", "data"),
                 State("roles", "data"), prevent_initial_call=True)(
        lambda *a: views.toggle(*a, ctx.triggered_id))
    app.callback(Output("attention", "figure"), Output("saliency", "figure"), Output("att-message", "children"),
                 Input("settings", "data"), Input("att-layer", "value"), Input("att-head", "value"),
                 Input("tabs", "value"), prevent_initial_call=True)(views.attention)
    app.callback(Output("source", "options"), Output("source", "value"), Output("int-message", "children"),
                 Input("settings", "data"), State("source", "value"), Input("tabs", "value"),
                 prevent_initial_call=True)(views.sources)
    app.callback(Output("int-outcome", "children"), Output("int-curve", "figure"),
                 Output("int-message", "children", allow_duplicate=True),
                 Input("settings", "data"), Input("source", "value"), Input("position-set", "value"),
                 Input("selection", "data"), Input("int-layer", "value"), Input("tabs", "value"),
                 prevent_initial_call=True)(views.interchange)
    app.callback(Output("heads-grid", "figure"), Output("heads-message", "children"),
                 Input("settings", "data"), Input("how", "value"), Input("tabs", "value"),
                 prevent_initial_call=True)(views.heads)
    app.callback(Output("head-outcome", "children"), Output("head-layer", "figure"),
                 Output("heads-message", "children", allow_duplicate=True),
                 Input("settings", "data"), Input("how", "value"), Input("heads-grid", "clickData"),
                 Input("tabs", "value"), prevent_initial_call=True)(views.head_click)
    app.callback(Output("scan-vs-attribution", "figure"), Output("scan-vs-attribution", "style"),
                 Output("heads-message", "children", allow_duplicate=True),
                 Input("settings", "data"), Input("how", "value"), Input("scan-all", "n_clicks"),
                 prevent_initial_call=True)(lambda *a: views.scan_all(*a, ctx.triggered_id))
    app.callback(Output("lesson-text", "children"), Output("lesson-figure", "figure"),
                 Output("lesson-figure", "style"), Output("lesson-message", "children"),
                 Input("lesson", "value"), Input("lesson-run", "n_clicks"))(
        lambda *a: views.lesson(*a, ctx.triggered_id))
