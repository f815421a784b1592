"""Vanilla and local task vectors, and a comparison of every task vector (METHODS.md sections 2, 3).

- ``vanilla_task_vector`` (Hendel et al. 2023): the residual at the final position of ICL prompts
  whose query is a dummy, averaged over prompts, one vector per layer; evaluated by REPLACING the
  residual at the final position of zero-shot prompts (``evaluate_task_vector``).
- ``local_task_vectors`` (arXiv 2406.16007): the hidden states at every demo answer position of a
  real ICL prompt, patched into the same positions of its twin with random answers
  (``core.pairs.random_answer_twins``), one layer at a time.
- ``compare_task_vectors``: vanilla, local and function vectors (``methods.function_vectors``),
  plus any other TaskVector, on the same held-out prompts (``core.pairs.task_vector_prompts``);
  returns a ``TaskVectorComparison``.

Every analysis takes ``PromptBatch``es. Layer l means the input of block l
(``blocks.{l}.hook_resid_pre``; l = n_layers: the final residual). Sweeps run through
``sweeps.layer_sweep`` (prefix reuse, several layers per forward) with ``Intervention`` specs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.checks import check_layers
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import get_metric, wilson
from icl_circuits.core.pairs import NoLengthMatchedAnswers, TaskVectorPrompts, random_answer_twins
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import final_logits, read_resid
from icl_circuits.core.tasks import Task
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.function_vectors import function_vector
from icl_circuits.methods.sweeps import is_rate, layer_sweep, prompt_metric
from icl_circuits.methods.vectors import TaskVector, evaluate_vector
from icl_circuits.methods.sweeps import SweepResult

__all__ = ["vanilla_task_vector", "evaluate_task_vector", "local_task_vectors", "compare_task_vectors",
           "TaskVectorComparison", "METHODS", "NoLengthMatchedAnswers"]


def _batch(batch: PromptBatch, arg: str = "batch") -> PromptBatch:
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"{arg} must be a PromptBatch (build_prompts), got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{arg} is empty")
    return batch



def _meta(batch: PromptBatch, **kw) -> dict:
    return {"n_demos": batch.n_demos, "n_prompts": len(batch), "seed": batch.seed, "variant": batch.variant,
            "template": [batch.template.example, batch.template.joiner, batch.template.prefix], **kw}


def _rate(model: HookedModel, batch: PromptBatch, metric: str) -> dict:
    """The unpatched metric of ``batch`` as a rate with its Wilson interval."""
    name, fn = prompt_metric(metric, batch)
    ok = fn(final_logits(model, batch), batch).float()
    r = wilson(int(ok.sum()), len(ok)) if is_rate(name) else None
    return {"value": float(ok.mean()), "low": r.low if r else float("nan"), "high": r.high if r else float("nan")}


# ----------------------------------------------------------------------------- vanilla
def vanilla_task_vector(
    model: HookedModel, batch: PromptBatch, layers: Sequence[int] | None = None, *, batch_size: int = 64,
) -> TaskVector:
    """Hendel et al.: theta_l = mean over prompts of the residual at the input of block l, final position
    (``batch.positions("final")``), of ``batch``: ICL prompts whose query is a dummy
    (``build_prompts(..., variant="dummy_query")``).

    Returns a TaskVector ([layer, d_model], layers 0..n_layers by default, mode "replace").
    """
    _batch(batch)
    layers = check_layers(model, layers)
    r = read_resid(model, batch, batch.positions("final").positions, layers, batch_size=batch_size)  # [layer, batch, 1, d]
    return TaskVector(r[:, :, 0].float().mean(1), layers, "replace", "vanilla", batch.task, meta=_meta(batch),
                      **stamp(model, batch))


def evaluate_task_vector(
    model: HookedModel, vector: TaskVector, zero_shot: PromptBatch, icl: PromptBatch | None = None, *,
    layers: Sequence[int] | None = None, metric: str = "first_token", scale: float = 1.0, batch_size: int = 64,
) -> SweepResult:
    """The metric of the zero-shot prompts ``zero_shot`` with ``vector`` injected at each layer
    (``vectors.evaluate_vector``), and of ``icl`` (the same queries with demos, optional) unpatched.

    ``zero_shot`` must be held out: a batch drawn with the seed the vector was extracted with is
    refused (the prompts would share demos and queries). ``baseline`` is the zero-shot metric;
    ``meta`` records zero_shot, icl, icl_low, icl_high (NaN without ``icl``), icl_n_demos,
    eval_seed and extraction_seed.
    """
    _batch(zero_shot, "zero_shot")
    ext_seed = vector.meta.get("seed")
    if ext_seed is not None and zero_shot.seed == ext_seed:
        raise ValueError(f"zero_shot has seed={zero_shot.seed}, the seed the vector was extracted with; "
                         "evaluate on held-out prompts")
    res = evaluate_vector(model, vector, zero_shot, layers=layers, scale=scale, batch_size=batch_size, metric=metric)
    nan = float("nan")
    i = _rate(model, _batch(icl, "icl"), metric) if icl is not None else {"value": nan, "low": nan, "high": nan}
    meta = {**res.meta, "zero_shot": res.baseline, "icl": i["value"], "icl_low": i["low"], "icl_high": i["high"],
            "icl_n_demos": icl.n_demos if icl is not None else None, "eval_seed": zero_shot.seed,
            "extraction_seed": ext_seed}
    return SweepResult(**{**res.__dict__, "meta": meta})


# ----------------------------------------------------------------------------- local
def local_task_vectors(
    model: HookedModel, icl: PromptBatch, layers: Sequence[int] | None = None, *, task: str | Task | None = None,
    twin_seed: int | None = None, positions: str | Sequence[str] = "answer", metric: str = "first_token",
    batch_size: int = 64,
) -> SweepResult:
    """2406.16007: patch an ICL prompt's hidden states at its demo answer positions into its twin with
    random answers (same demo inputs, ``core.pairs.random_answer_twins`` of ``icl`` with
    ``twin_seed``, default ``icl.seed``), at one layer l at a time.

    For prompt i and layer l: h_l(icl_i, p) overwrites the residual at the input of block l at
    every position p of ``icl.positions(positions)`` (default "answer": the first token of each
    demo answer; any demo position spec, not the query) of the random-answer prompt i, as
    ``Intervention(Site(l), "replace")``. Random answers are matched to the real ones by token
    length on this tokenizer, so both prompts share every position; prompts where that is
    impossible are dropped and counted in ``meta["n_dropped"]`` (by reason in ``meta["dropped"]``);
    none left raises ``NoLengthMatchedAnswers`` (a ``ValueError``). ``task``: the Task of an
    unregistered task. Returns the metric of the query per layer (0..n_layers-1); ``baseline`` is
    the unpatched random-answer prompt, ``meta["icl"]`` the ICL prompts' metric.
    """
    _batch(icl, "icl")
    names = icl.positions(positions).names if icl.n_demos else []
    if {"final", "query"} & set(names) or positions in ("final", "query"):
        raise ValueError(f"positions must name demo positions (answer, separator, ...), not 'final' (got {positions!r})")
    layers = check_layers(model, layers, allow_final=False)
    n_prompts = len(icl)
    icl, dummy, dropped = random_answer_twins(model, icl, task, icl.seed if twin_seed is None else twin_seed)
    ps = icl.positions(positions)
    pos, mask = ps.positions, (ps.mask if ps.ragged else None)
    states = read_resid(model, icl, pos, layers, batch_size=batch_size)  # [layer, batch, n, d]

    def make(l: int, rows: slice, mb: PromptBatch) -> list[Intervention]:
        return [Intervention(Site(l), "replace", positions=pos[rows], value=states[layers.index(l)][rows],
                             mask=None if mask is None else mask[rows])]

    res = layer_sweep(model, dummy, make, layers, metric, batch_size=batch_size, method="local",
                      meta=_meta(dummy, positions=positions if isinstance(positions, str) else list(positions),
                                 n_dropped=n_prompts - len(icl), dropped=dropped, length_matched=True))
    i = _rate(model, icl, metric)
    return SweepResult(**{**res.__dict__, "meta": {**res.meta, "icl": i["value"], "icl_low": i["low"], "icl_high": i["high"]}})


# ----------------------------------------------------------------------------- comparison
METHODS: tuple[str, ...] = ("vanilla", "local", "function")


@dataclass(frozen=True)
class TaskVectorComparison(Result):
    """Task vectors compared per layer: one row per (method, layer).

    method, layer, n: per row; accuracy, low, high: [row] float64, the metric (first answer token,
    ``metric``) and its Wilson 95% interval; rows "zero-shot", "icl" and "random-answers" are
    reference rates repeated at every layer. ``meta``: fv_heads, fv_head_cie, seed, eval_seed,
    n_demos, n_prompts, n_eval, methods, skipped (method -> why), local_dropped.
    """

    method: list[str]
    layer: list[int]
    accuracy: Float[Tensor, "row"]
    low: Float[Tensor, "row"]
    high: Float[Tensor, "row"]
    n: list[int]
    metric: str
    task: str
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        """Columns method, layer, accuracy, low, high, n, metric, task, model; ``df.attrs`` = ``meta``."""
        df = pd.DataFrame({"method": self.method, "layer": self.layer, "accuracy": self.accuracy.tolist(),
                           "low": self.low.tolist(), "high": self.high.tolist(), "n": self.n})
        df = df.assign(metric=self.metric, task=self.task, model=self.model)
        df.attrs = dict(self.meta)
        return df


def compare_task_vectors(
    model: HookedModel, prompts: TaskVectorPrompts, *, top_k: int = 10, metric: str = "auto",
    methods: Sequence[str] = METHODS, extra: Sequence[TaskVector] = (), batch_size: int = 32, progress: bool = False,
) -> TaskVectorComparison:
    """Vanilla vs local vs function vectors (and any ``extra`` TaskVector) per layer.

    ``prompts`` (``core.pairs.task_vector_prompts(model, task, n_demos, n_prompts, seed, n_eval=...)``):
    vanilla vectors are extracted from ``prompts.dummy_query``, function vectors (``top_k`` heads)
    from ``prompts.icl`` and ``prompts.shuffled``; vanilla (replace) and function (add) vectors and
    ``extra`` are injected at the final position of ``prompts.zero_shot``; local vectors are
    patched into the length-matched random-answer twins of ``prompts.icl_eval``
    (``random_answer_twins``). ``methods``: which of ``"vanilla"``, ``"local"`` and
    ``"function"`` to run (default all three). When no prompt has length-matched random answers
    on this tokenizer, the local method is skipped with a ``UserWarning`` saying why
    (``meta["skipped"]``) and the others still run. ``metric``: a rate of the registry,
    ``"first_token"``, ``"label"`` (argmax over the prompt's label words, chance 1/2) or ``"auto"``
    (``core.metrics.get_metric``: label for categorization tasks, else first_token).
    Reference rows: "zero-shot", "icl" and (with local) "random-answers", flat over layers.
    """
    if not isinstance(prompts, TaskVectorPrompts):
        raise TypeError("prompts must be a TaskVectorPrompts (core.pairs.task_vector_prompts), "
                        f"got {type(prompts).__name__}")
    seed, ev = prompts.icl.seed, prompts.zero_shot.seed
    if ev == seed:
        raise ValueError("eval_seed must differ from seed (held-out prompts)")
    if not get_metric(metric, prompts.zero_shot, source="final_logits").is_rate:
        raise ValueError(f"metric must be a rate ('auto', 'first_token' or 'label'), got {metric!r}")
    if isinstance(methods, str):
        methods = [methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not (methods or extra):
        raise ValueError(f"methods must name some of {', '.join(METHODS)}, got {list(methods)!r}")
    methods = [m for m in METHODS if m in methods]
    zs, n_eval = prompts.zero_shot, len(prompts.zero_shot)
    steps = tqdm(total=len(methods) + len(extra), desc="task vectors", disable=not progress)
    vecs: list[TaskVector] = []
    fv = None
    if "vanilla" in methods:
        vecs.append(vanilla_task_vector(model, prompts.dummy_query, batch_size=batch_size))
    if "function" in methods:
        fv = function_vector(model, prompts.icl, prompts.shuffled, top_k=top_k, batch_size=batch_size)
        vecs.append(fv)
    sweeps = []
    for vec in (*vecs, *extra):
        sweeps.append(evaluate_vector(model, vec, zs, metric=metric, batch_size=batch_size))
        steps.update()
    local, skipped = None, {}
    if "local" in methods:
        try:
            local = local_task_vectors(model, prompts.icl_eval, task=prompts.task, metric=metric, batch_size=batch_size)
        except NoLengthMatchedAnswers as err:
            skipped["local"] = str(err)
            warnings.warn(f"compare_task_vectors: local task vectors skipped: {err}", UserWarning, stacklevel=2)
        steps.update()
    steps.close()
    icl = _rate(model, prompts.icl_eval, metric)
    zero = _rate(model, zs, metric)
    name = prompt_metric(metric, zs)[0]
    rows = []
    for s in [*sweeps, *([local] if local is not None else [])]:
        n = s.per_prompt.shape[1]
        rows += [(s.method, l, float(v), float(lo), float(hi), n) for l, v, lo, hi in zip(s.layers, s.values, s.low, s.high)]
    ref = {"zero-shot": (zero, n_eval), "icl": (icl, n_eval)}
    if local is not None:
        k_local = local.per_prompt.shape[1]
        ra = wilson(round(local.baseline * k_local), k_local)  # the metrics here are rates
        ref["random-answers"] = ({"value": local.baseline, "low": ra.low, "high": ra.high}, k_local)
    all_layers = sorted({r[1] for r in rows}) or list(range(model.cfg.n_layers + 1))  # every method skipped
    for method, (r, n) in ref.items():
        rows += [(method, l, r["value"], r["low"], r["high"], n) for l in all_layers]
    col = lambda j: [r[j] for r in rows]  # noqa: E731
    f64 = lambda j: torch.tensor(col(j), dtype=torch.float64)  # noqa: E731  (Python floats, exactly)
    return TaskVectorComparison(
        method=col(0), layer=[int(v) for v in col(1)], accuracy=f64(2), low=f64(3), high=f64(4), n=[int(v) for v in col(5)],
        metric=name, task=zs.task, **stamp(model, prompts.icl),
        meta={"fv_heads": fv.meta["heads"] if fv else None, "fv_head_cie": fv.meta["head_cie"] if fv else None,
              "seed": seed, "eval_seed": ev, "n_demos": prompts.icl.n_demos, "n_prompts": len(prompts.icl),
              "n_eval": n_eval, "methods": methods, "skipped": skipped,
              "local_dropped": local.meta["n_dropped"] if local is not None else None})
