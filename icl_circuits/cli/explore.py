"""``icl-circuits explore``: the interactive explorer on a local port."""

from __future__ import annotations

import click

from icl_circuits.cli import common
from icl_circuits.cli.common import cli, model_option, threads_option


@cli.command("explore")
@model_option
@threads_option
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. The default serves this machine only; 0.0.0.0 exposes the app (and the "
                   "model's compute) to the network.")
def explore_cmd(model: str, port: int, host: str) -> None:
    """Serve the interactive ICL explorer: build a prompt, see its roles, attention and saliency, patch
    positions, ablate heads, and follow six lessons, all computed live by the project's methods on
    MODEL (only that model: the browser cannot load another). Prints the URL; Ctrl-C stops it."""
    try:
        from icl_circuits.explorer.app import make_app, serve
    except ImportError as err:
        raise click.UsageError(f"the explorer needs Dash: pip install 'icl-circuits[explore]' ({err})")
    app = make_app(common.load(model), name=model)
    click.echo(f"ICL explorer for {model}: http://{host}:{port}/  (Ctrl-C to stop)", err=True)
    serve(app, host=host, port=port)
