"""What every ``icl-circuits`` command shares: the command group, ``--model``, ``--threads``, ``--out DIR``,
model loading, argument checks and JSON output.

Every analysis subcommand takes ``--model`` (default: the bundled ``toy-icl``), ``--threads``
(torch intra-op threads, default 1, set before the model loads) and ``--json``; with ``--json``
the last line printed is one JSON object with the numbers. ``--out DIR`` writes the result
(``Result.save``: JSON + safetensors) and ``figure.html``.

Command modules import this one and register their commands on ``cli``; ``main`` imports the
command modules. Tests replace the model loader with ``monkeypatch.setattr(common, "load", ...)``,
so commands call it as ``common.load(model)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

__all__ = [
    "DEFAULT_MODEL",
    "OUT_DIR",
    "check_task",
    "cli",
    "emit_json",
    "int_list",
    "layer_list",
    "load",
    "model_option",
    "out_problem",
    "threads_option",
    "write_out",
]

DEFAULT_MODEL = "toy-icl"
#: The --model option every command shares.
model_option = click.option("--model", default=DEFAULT_MODEL, show_default=True,
                            help="toy-icl, smollm2-135m, a local Hugging Face directory or a TransformerLens name.")


def _set_threads(_ctx: Any, _param: click.Parameter, value: int) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(value)
    threadpool_limits(limits=value)  # numpy / scipy / scikit-learn BLAS too (dPCA, probes, fits), for the process
    return value


#: The --threads option every command shares: torch.set_num_threads(N) and the BLAS pools of numpy /
#: scipy / scikit-learn (threadpoolctl) limited to N when the options are parsed,
#: i.e. before the command loads the model. Not passed to the command (read torch.get_num_threads()).
threads_option = click.option(
    "--threads", default=1, show_default=True, type=click.IntRange(min=1), callback=_set_threads, expose_value=False,
    help="threads for torch (torch.set_num_threads) and numpy's BLAS, set before the model loads. 1 by default: "
         "torch's default (one per core) was ~48x slower on a busy 2-core machine (docs/gotchas.md).")


def int_list(_ctx: Any, param: click.Parameter, value: str) -> list[int]:
    """Click callback: comma-separated non-negative integers (``0,1,2,4,8``) -> list, else a usage error."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,1,2,4,8, got {value!r}", param=param)
    if not out or any(v < 0 for v in out):
        raise click.BadParameter(f"expected non-negative integers, got {value!r}", param=param)
    return out


def layer_list(value: str | None, option: str = "--layers") -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; empty or None -> None (the analysis' default); else a usage error
    naming ``option``. The range is checked by the analysis (it knows the model)."""
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,1,2, got {value!r}", param_hint=option)


def load(model: str):
    """``core.models.load_model(model)``; an unknown or unreadable model is a usage error on ``--model``."""
    from icl_circuits.core.models import load_model

    try:
        return load_model(model)
    except (ValueError, FileNotFoundError, ImportError) as err:  # ImportError: the real model's wheel is missing
        raise click.BadParameter(str(err), param_hint="--model")


def check_task(task: str, option: str = "--task") -> str:
    """``task`` if it is registered, else a usage error on ``option`` listing the tasks."""
    from icl_circuits.core.tasks import list_tasks

    if task not in list_tasks():
        raise click.BadParameter(f"unknown task {task!r}; choose from: {', '.join(list_tasks())}", param_hint=option)
    return task


def check_label_words(task: str, option: str) -> None:
    """A usage error on ``option`` (which asks for label-word scoring) when ``task`` has no label words."""
    from icl_circuits.core.tasks import get_task

    if get_task(task).label_words is None:
        raise click.BadParameter(f"task {task!r} has no label words (only categorization tasks have them)",
                                 param_hint=option)


def emit_json(obj: dict) -> None:
    """Print ``obj`` as one JSON line (the last line of ``--json`` output)."""
    click.echo(json.dumps(obj, default=float))


# ----------------------------------------------------------------------------- --out
def out_problem(path: str | Path, *, directory: bool = True) -> str | None:
    """Why ``path`` cannot be written (None if it can): for ``directory=True`` ``path`` is a directory
    to create or fill, else a file whose directory is created. The nearest existing ancestor must be
    a writable directory (checked before an analysis runs, so that it does not fail at the end)."""
    p = Path(path).expanduser()
    if directory and p.exists() and not p.is_dir():
        return f"{str(path)!r} is a file, not a directory"
    if not directory and p.is_dir():
        return f"{str(path)!r} is a directory, not a file"
    anc = p if directory else p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        return f"cannot create {str(path)!r}: {str(anc)!r} is a file, not a directory"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"cannot create {str(path)!r}: {str(anc)!r} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{str(path)!r} is not writable"
    return None


class _OutDir(click.Path):
    """A ``--out DIR`` that must be creatable and writable: checked when the options are parsed."""

    def __init__(self) -> None:
        super().__init__(file_okay=False)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        value = super().convert(value, param, ctx)
        problem = out_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        return value


#: The click type of every ``--out DIR`` option.
OUT_DIR = _OutDir()


def write_out(out: str, figures: dict[str, Any], results: dict[str, Any] | None = None,
              summary: dict | None = None) -> None:
    """Write ``--out DIR``: each result by ``Result.save(DIR/stem)``, ``summary`` as ``result.json``, and
    each figure (or list of figures, one page) as self-contained HTML; then say what was written."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    if summary is not None:
        (d / "result.json").write_text(json.dumps(summary, indent=1, default=float))
    for stem, res in (results or {}).items():
        res.save(d / stem)
    for name, fig in figures.items():
        if isinstance(fig, list):
            html = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(fig))
            (d / name).write_text(f"<html><head><meta charset='utf-8'></head><body>{html}</body></html>")
        else:
            fig.write_html(str(d / name), include_plotlyjs=True)
    files = [str(d / "result.json"), *(str(d / name) for name in figures)]
    click.echo(f"wrote {', '.join(files[:-1])} and {files[-1]}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="icl-circuits")
def cli() -> None:
    """Mechanistic interpretability of in-context learning on HookedTransformers."""
