"""The explorer as a Dash app: ``make_app`` builds it around one model, ``serve`` runs it on a local
port (``icl-circuits explore``), ``explore`` shows it inline in Jupyter (``ic.explore``).

The server holds exactly the model it was started with; nothing the browser sends names a model,
a file or a module. It binds to 127.0.0.1 unless told otherwise, runs Dash with debugging off (no
traceback ever reaches the browser) and serves every asset from the installed packages (offline).
"""

from __future__ import annotations

from typing import Any

from dash import Dash

from icl_circuits.core.model_info import model_info
from icl_circuits.core.models import load_model
from icl_circuits.explorer.callbacks import Views, register
from icl_circuits.explorer.layout import CSS, page
from icl_circuits.explorer.session import Explorer

__all__ = ["make_app", "serve", "explore", "LOCALHOST", "subtitle"]

LOCALHOST = "127.0.0.1"


def subtitle(explorer: Explorer) -> str:
    """What the page says about its model: layers, heads, weights (the real models are 4-bit GGUF
    quantizations dequantized to float32), and where the numbers come from."""
    info = model_info(explorer.model)
    what = f"{explorer.n_layers} layers x {explorer.n_heads} heads, {info.get('dtype', '')}"
    source = str(info.get("source", ""))
    if "gguf" in source.lower():
        what += ", 4-bit GGUF weights dequantized to float32"
    return (f"{what}. Every view runs the project's own methods on the prompt below "
            "(one prompt: numbers are n = 1 unless a view says otherwise).")


def make_app(model: Any = "toy-icl", *, name: str | None = None, **explorer_options: Any) -> Dash:
    """The explorer app around ``model`` (a loaded model, an ``Explorer``, or a name ``load_model``
    accepts). ``app.explorer`` is its ``Explorer`` and ``app.views`` its ``Views`` (the callbacks as
    plain functions)."""
    if isinstance(model, Explorer):
        explorer = model
    else:
        explorer = Explorer(load_model(model) if isinstance(model, str) else model, name=name, **explorer_options)
    app = Dash(__name__, title=f"ICL explorer: {explorer.name}", serve_locally=True,
               suppress_callback_exceptions=False)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + CSS + "</style>")
    app.layout = page(explorer, subtitle(explorer))
    views = Views(explorer)
    register(app, views)
    app.explorer, app.views = explorer, views
    return app


def serve(app: Dash, *, host: str = LOCALHOST, port: int = 8050) -> None:
    """Run the app's server until interrupted (Flask's threaded server; model calls are serialized
    by the explorer's lock). Debugging stays off: errors are logged here, never sent to the page."""
    app.run(host=host, port=port, debug=False, dev_tools_ui=False, dev_tools_props_check=False)


def explore(model: Any = "toy-icl", *, port: int = 8050, host: str = LOCALHOST, mode: str = "inline",
            height: int = 900, **explorer_options: Any) -> Dash:
    """Show the explorer in Jupyter (``mode="inline"``: in the output cell; ``"tab"``: a browser tab;
    ``"external"``: print the URL). Returns the app."""
    if mode not in ("inline", "tab", "external"):
        raise ValueError(f"mode must be 'inline', 'tab' or 'external', got {mode!r}")
    app = make_app(model, **explorer_options)
    app.run(host=host, port=port, debug=False, jupyter_mode=mode, jupyter_height=height)
    return app
