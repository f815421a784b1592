"""What every ``icl-circuits`` command shares: the command group, the options several commands take
(one decorator each, one help text each), model loading, argument checks and JSON output.

Every analysis subcommand takes ``--model`` (default: the bundled ``toy-icl``), ``--threads``
(torch intra-op threads, default 1, set before the model loads) and ``--json``; with ``--json``
the last line printed is one JSON object with the numbers. ``--out DIR`` writes the result
(``Result.save``: JSON + safetensors) and ``figure.html``.

An option that several commands take (``--model``, ``--threads``, ``--task``, ``--demos``, ``--prompts``,
``--layers``, ``--seed``, ``--json``, ``--out``) is declared only by its decorator here, with its help text
from ``SHARED_HELP``: the same in every command's ``--help`` (a command may choose its default and, where
the decorator allows, its parameter name). What the option means in one command beyond that text
(which prompts, which layers, another syntax) is said in the command's description.

Command modules import this one and register their commands on ``cli``; ``main`` imports the
command modules. Every task-valued option (``--task``, ``--source``, ``--tasks``...) is a ``TaskOption``:
it takes a task name or the path of a JSON task file, and its default is chosen per model from the
report's presets (``report.suite.MODEL_PRESETS``), resolved once ``--model`` is known; ``preset_option``
does the same for a setting (the LTV learning rate). ``task_option`` declares the shared ``--task``,
``task_valued_option`` any other. Tests replace the model loader with
``monkeypatch.setattr(common, "load", ...)``, so commands call it as ``common.load(model)``.
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
    "SHARED_HELP",
    "SharedOption",
    "SharedTaskOption",
    "check_task",
    "cli",
    "demos_option",
    "emit_json",
    "int_list",
    "json_option",
    "layer_list",
    "layers_option",
    "load",
    "model_option",
    "model_option_with_default",
    "out_option",
    "out_problem",
    "preset_option",
    "preset_value",
    "prompts_option",
    "report_out_option",
    "seed_option",
    "task_name",
    "task_option",
    "task_valued_option",
    "threads_option",
    "write_out",
]

DEFAULT_MODEL = "toy-icl"

# ----------------------------------------------------------------------------- shared options
#: The help text of each option that several commands share, by key: the option's name, except
#: ``--out FILE``, the HTML file of ``report`` and ``demo`` (the analysis commands' ``--out`` is a directory).
#: Only the decorators of this module declare these options (``SharedOption``), so every command's
#: ``--help`` says the same; tests/cli/test_shared_options.py checks each command against this table.
SHARED_HELP: dict[str, str] = {
    "--model": "toy-icl, smollm2-135m, gemma3-270m, a .gguf file (llama, qwen2, gemma3), a local Hugging Face directory or a TransformerLens name.",
    "--threads": "threads for torch (torch.set_num_threads) and numpy's BLAS, set before the model loads. 1 by "
                 "default: torch's default (one per core) was ~48x slower on a busy 2-core machine (docs/gotchas.md).",
    "--task": "A task name (`icl-circuits tasks` lists them) or the path of a JSON task file.",
    "--demos": "Demos (input -> output examples) per prompt.",
    "--prompts": "Number of prompts.",
    "--layers": "Comma-separated layers, e.g. 0,2,4.",
    "--seed": "Random seed: the prompts and every other random draw follow from it.",
    "--json": "Last line printed: one JSON object with the results.",
    "--out": "Directory to write: result.json (its tensors in result.safetensors), figure.html and the further "
             "files the command's description names.",
    "--out FILE": "HTML file to write.",
}


class SharedOption(click.Option):
    """An option that several commands share: ``shared`` is its key in ``SHARED_HELP``, whose text is its
    help (a ``help=`` of its own is refused)."""

    def __init__(self, *args: Any, shared: str, **kwargs: Any) -> None:
        super().__init__(*args, help=SHARED_HELP[shared], **kwargs)
        self.shared = shared


def _shared(key: str, *decls: str, cls: type[click.Option] = SharedOption, **kwargs: Any):
    """``click.option(*decls)`` declaring the shared option ``key`` (a ``SharedOption`` or subclass)."""
    return click.option(*decls, cls=cls, shared=key, **kwargs)


def model_option_with_default(default: str):
    """``--model`` with ``default`` (``demo`` runs the real SmolLM2 by default); ``model_option`` for the rest."""
    return _shared("--model", "--model", default=default, show_default=True)


#: The --model option every command shares.
model_option = model_option_with_default(DEFAULT_MODEL)


def _set_threads(_ctx: Any, _param: click.Parameter, value: int) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(value)
    threadpool_limits(limits=value)  # numpy / scipy / scikit-learn BLAS too (dPCA, probes, fits), for the process
    return value


#: The --threads option every command shares: torch.set_num_threads(N) and the BLAS pools of numpy /
#: scipy / scikit-learn (threadpoolctl) limited to N when the options are parsed,
#: i.e. before the command loads the model. Not passed to the command (read torch.get_num_threads()).
threads_option = _shared("--threads", "--threads", default=1, show_default=True, type=click.IntRange(min=1),
                         callback=_set_threads, expose_value=False)


def demos_option(default: int | str = 8, *, dest: str = "n_demos", minimum: int = 1, sweep: bool = False):
    """``--demos``: an integer >= ``minimum`` passed as ``dest``; ``sweep=True``: comma-separated numbers
    (``int_list``, ``default`` a string like ``"0,1,2,4,8"``), one analysis each."""
    if sweep:
        return _shared("--demos", "--demos", dest, default=default, show_default=True, callback=int_list,
                       metavar="N,N,...")
    return _shared("--demos", "--demos", dest, default=default, show_default=True, type=click.IntRange(min=minimum))


def prompts_option(default: int, *, dest: str = "n_prompts", minimum: int = 1):
    """``--prompts``: an integer >= ``minimum`` passed as ``dest`` (the description says which prompts)."""
    return _shared("--prompts", "--prompts", dest, default=default, show_default=True, type=click.IntRange(min=minimum))


def layers_option(default: str | None = None, *, dest: str = "layers", show_default: bool | str = True):
    """``--layers``: the string given (``layer_list`` reads comma-separated layers; a command may read
    more forms and says so in its description), else ``default``; ``show_default``: a string says what
    the default is where ``default`` is None (the analysis' own choice)."""
    return _shared("--layers", "--layers", dest, default=default, show_default=show_default)


def seed_option():
    """``--seed``: an integer, 0 by default (where a command draws prompts with seed + 1, its description says so)."""
    return _shared("--seed", "--seed", default=0, show_default=True, type=int)


def json_option():
    """``--json`` (a flag, passed as ``as_json``): the command ends with ``emit_json``."""
    return _shared("--json", "--json", "as_json", is_flag=True)


def out_option():
    """``--out DIR`` (default: nothing written), checked before the analysis runs (``OUT_DIR``); see ``write_out``."""
    return _shared("--out", "--out", default=None, type=OUT_DIR)


def report_out_option():
    """``--out FILE``: the HTML file of ``report`` and ``demo`` (default ``report.html``)."""
    return _shared("--out FILE", "--out", default="report.html", show_default=True, type=click.Path(dir_okay=False))


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
        raise click.BadParameter(f"unknown task {task!r}; choose from: {', '.join(list_tasks())} "
                                 "(or give the path of a JSON task file)", param_hint=option)
    return task


def check_label_words(task: str, option: str) -> None:
    """A usage error on ``option`` (which asks for label-word scoring) when ``task`` has no label words."""
    from icl_circuits.core.tasks import get_task

    if get_task(task).label_words is None:
        raise click.BadParameter(f"task {task!r} has no label words (only categorization tasks have them)",
                                 param_hint=option)


# ----------------------------------------------------------------------------- task-valued options
def task_name(value: str, option: str = "--task") -> str:
    """The task named by one value of a task-valued option: a registered task's name, or else the path
    of a JSON task file (an existing file, or any value ending in ``.json``; layout in
    ``core/tasks/custom.py``), which is loaded and registered for this process (replacing an earlier
    registration of its name). An unknown name, a missing file or a malformed one is a usage error
    naming ``option``."""
    from icl_circuits.core.tasks import list_tasks, register_task

    value = value.strip()
    path = Path(value).expanduser()
    if value in list_tasks() or not (value.lower().endswith(".json") or path.is_file()):
        return check_task(value, option)
    if not path.is_file():
        raise click.BadParameter(f"no task file at {value!r} (a value ending in .json is read as a task file)",
                                 param_hint=option)
    try:
        return register_task(path, overwrite=True).name
    except (ValueError, OSError) as err:  # malformed JSON or task, a built-in task's name, unreadable
        raise click.BadParameter(f"task file {value!r}: {err}", param_hint=option)


def _preset_model(model: str) -> str:
    """The key of ``model`` in the report's presets (an alias of a bundled model -> its name)."""
    from icl_circuits.core.real_models import bundled

    spec = bundled(model)
    return spec.name if spec is not None else model


def preset_value(model: str, field: str, index: int | None = None) -> Any:
    """What the report's preset for ``model`` (``report.suite.MODEL_PRESETS``) names in ``field``: the
    tasks it solves (``knowledge_task``, ``category_task``, ``interchange_pair`` with ``index``,
    ``accuracy_tasks``) or a setting (``ltv_lr``). None where its preset names none (the bundled toy
    model keeps the report's defaults, as does a model without a preset)."""
    from icl_circuits.report.suite import MODEL_PRESETS

    value = MODEL_PRESETS.get(_preset_model(model), {}).get(field)
    return value if value is None or index is None else value[index]


class PresetOption(click.Option):
    """An option whose default depends on the model (see ``preset_option``): when the option is not given,
    the value that the report's preset for ``--model`` names in ``preset`` (``index``: which element of a
    pair), else ``fallback``; ``--help`` states the default of each model."""

    def __init__(self, *args: Any, preset: str | None = None, index: int | None = None, fallback: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, default=None, callback=_resolve_preset_option, **kwargs)
        self.preset, self.index, self.fallback = preset, index, fallback

    def model_default(self, model: str) -> Any:
        """This option's default for ``model``: its preset's value if the preset names one, else ``fallback``."""
        value = preset_value(model, self.preset, self.index) if self.preset else None
        return self.fallback if value is None else value

    def show(self, value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    def finish(self, value: Any) -> Any:
        """The value passed to the command (a given value is already converted by the option's type)."""
        return value

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None or self.preset is None:
            return record
        from icl_circuits.report.suite import MODEL_PRESETS

        named = [n for n in MODEL_PRESETS if preset_value(n, self.preset, self.index) is not None]
        rest = " and ".join([n for n in MODEL_PRESETS if n not in named] + ["other models"])
        per_model = [f"{self.show(self.model_default(n))} on {n}" for n in named] + [f"{self.show(self.fallback)} on {rest}"]
        return record[0], f"{record[1]}  [default: {'; '.join(per_model)} (the report's per-model presets)]"


class TaskOption(PresetOption):
    """A task-valued option (see ``task_option``): each value converted by ``task_name``."""

    def __init__(self, *args: Any, many: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.many = many

    def show(self, value: Any) -> str:
        return ",".join(value) if self.many else str(value)

    def finish(self, value: Any) -> Any:
        hint = self.opts[0]
        if self.multiple:  # repeatable: each value a task (an empty tuple: the command's own default)
            return tuple(task_name(v, hint) for v in value or ())
        if value is None:
            return None
        if self.many:
            values = value.split(",") if isinstance(value, str) else list(value)
            return [task_name(v, hint) for v in values if v.strip()]
        return task_name(value, hint)


def _resolve_preset_option(ctx: click.Context, param: PresetOption, value: Any) -> Any:
    if ctx.resilient_parsing:
        return value
    given = bool(value) if param.multiple else value is not None
    if not given and param.preset is not None:
        # --model is declared before every such option, and click processes the options not given in
        # their declared order, after those given: --model is known here either way
        if "model" not in ctx.params:
            raise RuntimeError(f"{ctx.info_name}: declare --model before {param.opts[0]} (its default depends on it)")
        value = param.model_default(ctx.params["model"])
    elif not given and not param.multiple:
        value = param.fallback
    return param.finish(value)


def preset_option(*decls: str, preset: str, index: int | None = None, fallback: Any = None, **kwargs: Any):
    """A click option whose default is the value that the report's preset for ``--model`` names in
    ``preset`` (``report.suite.MODEL_PRESETS``), else ``fallback`` (for toy-icl and models without a
    preset); a value given is converted by ``type`` as usual."""
    return click.option(*decls, cls=PresetOption, preset=preset, index=index, fallback=fallback, **kwargs)


def task_valued_option(*decls: str, preset: str | None = None, index: int | None = None, fallback: Any = None,
                       many: bool = False, **kwargs: Any):
    """A task-valued click option (``--source``, ``--tasks``...; ``--task`` itself is ``task_option``): a task
    name or the path of a JSON task file (``task_name``).

    Not given, it takes the task that the report's preset for ``--model`` names in ``preset``
    (``index``: which element of a pair), else ``fallback`` (for toy-icl and models without a preset).
    ``many``: a comma-separated list, passed on as a list of names; ``multiple=True``: repeatable, a tuple.
    """
    return click.option(*decls, cls=TaskOption, preset=preset, index=index, fallback=fallback, many=many, **kwargs)


class SharedTaskOption(SharedOption, TaskOption):
    """The shared ``--task``: a ``TaskOption`` with the help text of ``SHARED_HELP["--task"]``."""


def task_option(preset: str | None = None, index: int | None = None, fallback: Any = None, *, dest: str = "task",
                multiple: bool = False, show_default: str | None = None):
    """``--task`` (passed as ``dest``), as ``task_valued_option``: not given, the task that the report's preset
    for ``--model`` names in ``preset``, else ``fallback``. ``multiple=True``: repeatable, a tuple (empty when
    not given; ``show_default`` then says what the command does instead)."""
    return _shared("--task", "--task", dest, cls=SharedTaskOption, preset=preset, index=index, fallback=fallback,
                   multiple=multiple, show_default=show_default)


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
