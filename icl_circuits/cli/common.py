"""What every ``icl-circuits`` command shares: the command group, ``--model``, model loading and JSON output.

Every analysis subcommand takes ``--model`` (default: the bundled ``toy-icl``) and ``--json``;
with ``--json`` the last line printed is one JSON object with the numbers.
"""

from __future__ import annotations

import json
from typing import Any

import click

DEFAULT_MODEL = "toy-icl"
#: The --model option every command shares.
model_option = click.option("--model", default=DEFAULT_MODEL, show_default=True,
                            help="toy-icl, smollm2-135m, a local Hugging Face directory or a TransformerLens name.")


def _int_list(_ctx: Any, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,1,2,4,8, got {value!r}", param=param)
    if not out or any(v < 0 for v in out):
        raise click.BadParameter(f"expected non-negative integers, got {value!r}", param=param)
    return out


def _load(model: str):
    from icl_circuits.core.models import load_model

    try:
        return load_model(model)
    except (ValueError, FileNotFoundError, ImportError) as err:  # ImportError: the real model's wheel is missing
        raise click.BadParameter(str(err), param_hint="--model")


def _check_task(task: str) -> str:
    from icl_circuits.core.tasks import list_tasks

    if task not in list_tasks():
        raise click.BadParameter(f"unknown task {task!r}; choose from: {', '.join(list_tasks())}", param_hint="--task")
    return task


def emit_json(obj: dict) -> None:
    """Print ``obj`` as one JSON line (the last line of ``--json`` output)."""
    click.echo(json.dumps(obj, default=float))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="icl-circuits")
def cli() -> None:
    """Mechanistic interpretability of in-context learning on HookedTransformers."""
