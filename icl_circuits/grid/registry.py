"""The analyses a grid can run: a name -> (how the cell's prompts are built, the method that runs).

An :class:`Analysis` is a method of ``icl_circuits.methods`` seen from a grid: ``prompts(model, cell)``
builds the cell's PromptBatches (a dict), and ``run(model, batches, **params)`` returns a ``Result``
(anything with ``to_dataframe()`` and ``save()``). Both are plain functions of their arguments, so a
worker process (Ray, Slurm) can run them; a function defined in a notebook travels there by value.

Built in (``list_analyses()``), each on ``n_prompts`` prompts of the cell's task, demo count, template
and seed:

- ``accuracy``: ``accuracy_by_demos`` (``metrics``; ``metrics_if_defined`` are added where the task
  defines them, e.g. ``label`` for categorization tasks).
- ``saliency``: ``saliency_flow`` (S_wp, S_pq, S_ww per layer; keyword arguments pass through).
- ``task_vector``: Hendel et al.'s vanilla vector from dummy-query prompts (seed s), evaluated on
  held-out zero-shot prompts (seed s + 1) at ``layers``, with the held-out ICL rate
  (``task_vector_prompts`` + ``vanilla_task_vector`` + ``evaluate_task_vector``).
- ``interchange``: Cheng & Zhang's interchange from ``source_task`` into the cell's task at
  ``positions`` and ``layers`` (``paired_batches``: target prompts whose query the source task answers
  differently).
- ``head_ablation``: ``head_ablation_scan`` (every head ablated alone; ``how`` zero or mean).
- ``logit_lens``: ``logit_lens`` at each layer's final position.

``register_analysis(name, run, prompts=...)`` adds one (``replace=True`` to redefine a name). A grid may
name any analysis as ``<name>@<label>`` to run it more than once with other parameters (per layer, per
setting): ``analyses: [task_vector@early, task_vector@late]`` with ``params`` under those names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from icl_circuits.core.pairs import paired_batches, task_vector_prompts
from icl_circuits.core.prompts import PromptBatch, build_prompts
from icl_circuits.core.tasks import get_task
from icl_circuits.core.types import HookedModel
from icl_circuits.grid.spec import Cell

__all__ = ["Analysis", "register_analysis", "get_analysis", "list_analyses", "icl_prompts", "import_analyses",
           "by_value_modules"]

Batches = dict[str, PromptBatch]


def icl_prompts(model: HookedModel, cell: Cell) -> Batches:
    """The default prompts of a cell: ``{"icl": build_prompts(model, task, n_prompts, n_demos,
    template, seed, prepend_bos=..., single_token=...)}``."""
    return {"icl": build_prompts(model, cell.task, cell.n_prompts, cell.n_demos, template=cell.template,
                                 seed=cell.seed, prepend_bos=cell.prepend_bos, single_token=cell.single_token)}


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A registered analysis: ``run(model, batches, **params) -> Result`` on the batches that
    ``prompts(model, cell)`` builds (default :func:`icl_prompts`)."""

    name: str
    run: Callable[..., Any]
    prompts: Callable[[HookedModel, Cell], Batches] = icl_prompts
    doc: str = ""

    def __call__(self, model: HookedModel, cell: Cell) -> Any:
        """Build the cell's prompts and run: the cell's Result."""
        batches = self.prompts(model, cell)
        if not isinstance(batches, Mapping) or not batches:
            raise TypeError(f"analysis {self.name!r}: prompts() must return a non-empty dict of PromptBatches, "
                            f"got {type(batches).__name__}")
        result = self.run(model, dict(batches), **cell.params)
        if not (hasattr(result, "to_dataframe") and hasattr(result, "save")):
            raise TypeError(f"analysis {self.name!r} returned a {type(result).__name__}; a grid analysis returns a "
                            "Result (with to_dataframe() and save())")
        return result


_REGISTRY: dict[str, Analysis] = {}


def register_analysis(name: str, run: Callable[..., Any], prompts: Callable[[HookedModel, Cell], Batches] | None = None,
                      *, doc: str | None = None, replace: bool = False) -> Analysis:
    """Register ``run(model, batches, **params) -> Result`` as the grid analysis ``name``; ``prompts(model,
    cell) -> {name: PromptBatch}`` builds its batches (default :func:`icl_prompts`, ``{"icl": ...}``).
    A name already registered raises ValueError unless ``replace=True``."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"name must be a non-empty string without surrounding spaces, got {name!r}")
    if not callable(run):
        raise TypeError(f"run must be callable (model, batches, **params) -> Result, got {type(run).__name__}")
    if prompts is not None and not callable(prompts):
        raise TypeError(f"prompts must be callable (model, cell) -> dict of PromptBatch, got {type(prompts).__name__}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"analysis {name!r} is already registered; pass replace=True to redefine it")
    entry = Analysis(name, run, prompts or icl_prompts, doc if doc is not None else (run.__doc__ or "").strip())
    _REGISTRY[name] = entry
    return entry


def get_analysis(name: str) -> Analysis:
    """The registered analysis ``name``, or ValueError listing the registered ones.

    ``"<name>@<label>"`` is a variant of a registered analysis: the same functions under another name,
    so that one grid can run an analysis several times with different parameters (``params`` are keyed
    by the full name: ``{"accuracy@long": {"metrics": ["exact_match"]}}``)."""
    if isinstance(name, str) and name not in _REGISTRY and "@" in name:
        base, _, label = name.partition("@")
        if base in _REGISTRY and label:
            return dataclasses.replace(_REGISTRY[base], name=name)
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown analysis {name!r}; registered: {', '.join(sorted(_REGISTRY))}, each also as "
                         "<name>@<label> (add one with icl_circuits.grid.register_analysis)") from None


def list_analyses() -> list[str]:
    """The registered analysis names, sorted."""
    return sorted(_REGISTRY)


def import_analyses(name: str) -> Any:
    """Import ``name``, a module name (``my_lab.analyses``) or the path of a ``.py`` file, for the
    analyses it registers; returns the module. A file is imported once per path."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    mod_name = f"icl_grid_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def by_value_modules(analyses: list[Analysis]) -> list[Any]:
    """The modules outside icl_circuits that ``analyses``' functions come from (a notebook's
    ``__main__``, a script, a file given to ``--import``): executors pickle these by value, so a
    worker process runs the functions without importing their module."""
    import sys

    out = {}
    for a in analyses:
        for fn in (a.run, a.prompts):
            mod = getattr(fn, "__module__", None)
            if mod and not mod.startswith("icl_circuits") and mod in sys.modules and mod != "__main__":
                out[mod] = sys.modules[mod]
    return list(out.values())


# ----------------------------------------------------------------------------- built-ins
def _accuracy(model: HookedModel, batches: Batches, *, metrics: list[str] | None = None,
              metrics_if_defined: list[str] | None = None, batch_size: int = 64) -> Any:
    """First-token (and chosen) accuracy with Wilson intervals (``accuracy_by_demos``)."""
    from icl_circuits.methods.accuracy import accuracy_by_demos

    batch = batches["icl"]
    wanted = list(metrics) if metrics is not None else None
    if metrics_if_defined:
        extra = [m for m in metrics_if_defined if m != "label" or batch.label_token_ids is not None]
        wanted = list(dict.fromkeys((wanted or ["first_token"]) + extra))
    return accuracy_by_demos(model, batch, wanted, batch_size=batch_size)


def _saliency(model: HookedModel, batches: Batches, **params: Any) -> Any:
    """S_wp, S_pq, S_ww per layer (``saliency_flow``)."""
    from icl_circuits.methods.saliency import saliency_flow

    return saliency_flow(model, batches["icl"], **{"progress": False, **params})


def _tv_prompts(model: HookedModel, cell: Cell) -> Batches:
    p = task_vector_prompts(model, cell.task, cell.n_demos, cell.n_prompts, cell.seed, template=cell.template,
                            prepend_bos=cell.prepend_bos)
    return {"dummy": p.dummy_query, "zero_shot": p.zero_shot, "icl": p.icl_eval}


def _task_vector(model: HookedModel, batches: Batches, *, layers: list[int] | None = None,
                 metric: str = "first_token", batch_size: int = 64) -> Any:
    """Vanilla task vector, injected into held-out zero-shot prompts at each layer."""
    from icl_circuits.methods.task_vectors import evaluate_task_vector, vanilla_task_vector

    tv = vanilla_task_vector(model, batches["dummy"], layers, batch_size=batch_size)
    return evaluate_task_vector(model, tv, batches["zero_shot"], batches["icl"], metric=metric, batch_size=batch_size)


def _pair_prompts(model: HookedModel, cell: Cell) -> Batches:
    source = cell.params.get("source_task")
    if not isinstance(source, str):
        raise ValueError(f"analysis 'interchange' needs params.interchange.source_task (a task name), got {source!r}")
    src, tgt = paired_batches(model, get_task(source), cell.task, cell.n_prompts, cell.n_demos, seed=cell.seed,
                              template=cell.template)
    return {"source": src, "target": tgt}


def _interchange(model: HookedModel, batches: Batches, *, source_task: str, positions: Any = "answers",
                 layers: list[int] | None = None, **params: Any) -> Any:
    """Interchange of ``positions`` from source-task prompts into the cell's task at each layer."""
    from icl_circuits.methods.interchange import interchange

    seed = batches["target"].seed
    return interchange(model, batches["source"], batches["target"], positions, layers, source_task=source_task,
                       **{"seed": seed, "progress": False, **params})


def _head_ablation(model: HookedModel, batches: Batches, **params: Any) -> Any:
    """Every head ablated alone (``head_ablation_scan``)."""
    from icl_circuits.methods.heads import head_ablation_scan

    return head_ablation_scan(model, batches["icl"], **{"progress": False, **params})


def _logit_lens(model: HookedModel, batches: Batches, **params: Any) -> Any:
    """Logit-lens accuracy at each layer's final position."""
    from icl_circuits.methods.logit_lens import logit_lens

    return logit_lens(model, batches["icl"], **params)


for _name, _run, _prompts in (("accuracy", _accuracy, None), ("saliency", _saliency, None),
                              ("task_vector", _task_vector, _tv_prompts), ("interchange", _interchange, _pair_prompts),
                              ("head_ablation", _head_ablation, None), ("logit_lens", _logit_lens, None)):
    register_analysis(_name, _run, _prompts)
