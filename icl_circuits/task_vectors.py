"""Vanilla task vectors, local task vectors and function vectors (METHODS.md sections 2, 3, 4).

- ``vanilla_task_vector`` (Hendel et al. 2023): the residual at the final position of ICL prompts
  whose query is a dummy, averaged over prompts, one vector per layer; evaluated by REPLACING the
  residual at the final position of zero-shot prompts (``evaluate_task_vector``).
- ``local_task_vectors`` (arXiv 2406.16007): the hidden states at every demo answer position of a
  real ICL prompt, patched into the same positions of its twin with random answers, one layer at
  a time.
- ``function_vector`` (Todd et al. 2024): mean head outputs at the final position
  (``mean_head_outputs``), heads ranked by causal indirect effect on label-shuffled prompts
  (``head_cie``), FV = sum over the top-K heads of mean_z[l, h] @ W_O[l, h], ADDED at a layer.
- ``compare_task_vectors``: the three (plus any other TaskVector) on the same held-out prompts.

Every layer l means the input of block l (``blocks.{l}.hook_resid_pre``; l = n_layers: the final
residual). Sweeps run through ``patching.layer_sweep`` (prefix reuse, several layers per forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .evaluation import final_logits, minibatches
from .interventions import check_layer, read_activations, read_resid, replace_hook, resid_name, z_name
from .metrics import wilson
from .patching import (
    TOKENS_PER_FORWARD, Entry, cache_resid, layer_sweep, prompt_metric, run_staggered, unembed_rows,
)
from .prompts import PromptBatch, Template, build_prompts
from .results import Result
from .tasks import Task
from .vectors import SweepResult, TaskVector

TaskLike = str | Task | PromptBatch


def _prompts(model: Any, task: TaskLike, n_prompts: int, n_demos: int, seed: int, variant: str,
             template: Template | str | None) -> PromptBatch:
    if isinstance(task, PromptBatch):
        if len(task) == 0:
            raise ValueError("batch is empty")
        return task
    return build_prompts(model, task, n_prompts, n_demos, template=template, seed=seed, variant=variant)  # type: ignore[arg-type]


def _layers(model: Any, layers: Sequence[int] | None, allow_final: bool = True) -> list[int]:
    n = model.cfg.n_layers
    out = list(range(n + 1 if allow_final else n)) if layers is None else [
        check_layer(model, l, allow_final=allow_final, arg="layers") for l in layers]
    if not out:
        raise ValueError("layers is empty")
    return out


def _meta(batch: PromptBatch, **kw: Any) -> dict:
    return {"n_demos": batch.n_demos, "n_prompts": len(batch), "seed": batch.seed, "variant": batch.variant,
            "template": [batch.template.example, batch.template.joiner, batch.template.prefix], **kw}


def _rate(model: Any, batch: PromptBatch, metric: str) -> dict:
    """The unpatched metric of ``batch`` as a rate with its Wilson interval."""
    name, fn = prompt_metric(metric, batch)
    ok = fn(final_logits(model, batch), batch).float()
    r = wilson(int(ok.sum()), len(ok)) if name in ("accuracy", "label_accuracy") else None
    return {"value": float(ok.mean()), "low": r.low if r else float("nan"), "high": r.high if r else float("nan")}


# ----------------------------------------------------------------------------- vanilla
def vanilla_task_vector(
    model: Any, task: TaskLike, n_demos: int = 8, n_prompts: int = 16, seed: int = 0,
    layers: Sequence[int] | None = None, *, template: Template | str | None = None, batch_size: int = 64,
) -> TaskVector:
    """Hendel et al.: theta_l = mean over prompts of the residual at the input of block l, final position,
    of ICL prompts whose query is a dummy (variant "dummy_query"; or the PromptBatch given).

    Returns a TaskVector ([layer, d_model], layers 0..n_layers by default, mode "replace").
    """
    batch = _prompts(model, task, n_prompts, n_demos, seed, "dummy_query", template)
    layers = _layers(model, layers)
    r = read_resid(model, batch, batch.positions("final"), layers, batch_size=batch_size)  # [layer, batch, 1, d]
    return TaskVector(r[:, :, 0].float().mean(1), layers, "replace", "vanilla", batch.task, model.cfg.model_name,
                      meta=_meta(batch))


def evaluate_task_vector(
    model: Any, vector: TaskVector, task: TaskLike | None = None, n_prompts: int = 64, seed: int | None = None,
    *, n_demos: int | None = None, layers: Sequence[int] | None = None, metric: str = "accuracy",
    scale: float = 1.0, template: Template | str | None = None, batch_size: int = 64,
) -> SweepResult:
    """The metric of zero-shot prompts with ``vector`` injected at each layer (``evaluate_vector``).

    Zero-shot and ICL prompts (``n_demos``, default the vector's) are drawn with ``seed`` (default:
    the extraction seed + 1; the extraction seed itself is refused, the prompts would share
    demos); they share their queries (the zero-shot prompts are the ICL prompts without demos). ``baseline`` is the zero-shot metric; ``meta`` records zero_shot, icl, icl_low, icl_high.
    """
    from .vectors import evaluate_vector

    ext_seed = vector.meta.get("seed")
    seed = (ext_seed + 1 if ext_seed is not None else 1) if seed is None else seed
    if ext_seed is not None and seed == ext_seed:
        raise ValueError(f"seed={seed} is the seed the vector was extracted with; evaluate on held-out prompts")
    k = n_demos if n_demos is not None else int(vector.meta.get("n_demos", 8))
    task = vector.task if task is None else task
    template = template if template is not None else _template(vector)
    zs = _prompts(model, task, n_prompts, k, seed, "zero_shot", template)  # the ICL prompts' queries, no demos
    res = evaluate_vector(model, vector, zs, layers=layers, scale=scale, batch_size=batch_size, metric=metric)
    icl = _rate(model, build_prompts(model, zs.task, len(zs), k, template=zs.template, seed=seed), metric)
    meta = {**res.meta, "zero_shot": res.baseline, "icl": icl["value"], "icl_low": icl["low"],
            "icl_high": icl["high"], "icl_n_demos": k, "eval_seed": seed, "extraction_seed": ext_seed}
    return SweepResult(**{**res.__dict__, "meta": meta})


def _template(vector: TaskVector) -> Template | None:
    t = vector.meta.get("template")
    return Template(*t) if isinstance(t, (list, tuple)) and len(t) == 3 else None


# ----------------------------------------------------------------------------- local
def local_task_vectors(
    model: Any, task: TaskLike, n_demos: int = 8, n_prompts: int = 32, seed: int = 0,
    layers: Sequence[int] | None = None, *, positions: str = "answer", metric: str = "accuracy",
    template: Template | str | None = None, batch_size: int = 64,
) -> SweepResult:
    """2406.16007: patch an ICL prompt's hidden states at its demo answer positions into its twin with
    random answers (same demo inputs, variant "random_answers"), at one layer l at a time.

    For prompt i and layer l: h_l(icl_i, p) overwrites the residual at the input of block l at
    every position p of kind ``positions`` ("answer": the first token of each demo answer) of the
    random-answer prompt i (the same positions when the answers tokenize to the same lengths;
    prompts whose spans differ are dropped and counted in ``meta["n_dropped"]``, all differing is an
    error). Returns the metric of the query per layer (0..n_layers-1); ``baseline`` is the
    unpatched random-answer prompt, ``meta["icl"]`` the ICL prompts' metric.
    """
    if isinstance(task, PromptBatch):
        raise TypeError("local_task_vectors builds its own paired prompts: pass a task name or Task")
    icl = build_prompts(model, task, n_prompts, n_demos, template=template, seed=seed)
    dummy = build_prompts(model, task, n_prompts, n_demos, template=template, seed=seed, variant="random_answers")
    if positions == "final":
        raise ValueError("positions must be a demo position kind (answer, separator, ...), not 'final'")
    same = ((icl.answer_spans == dummy.answer_spans).flatten(1).all(1)
            & (icl.input_spans == dummy.input_spans).flatten(1).all(1) & (icl.final_positions == dummy.final_positions))
    keep = same.nonzero()[:, 0].tolist()
    if not keep:
        raise ValueError(f"no prompt of task {icl.task!r} has random answers that tokenize like its real answers; "
                         "local vectors need the same positions in both prompts")
    if len(keep) < len(icl):
        icl, dummy = icl.select(keep), dummy.select(keep)
    layers = _layers(model, layers, allow_final=False)
    pos = icl.positions(positions)
    states = read_resid(model, icl, pos, layers, batch_size=batch_size)  # [layer, batch, n, d]

    def make(l: int, rows: slice, mb: PromptBatch):
        return [(resid_name(model, l), replace_hook(pos[rows], states[layers.index(l)][rows]))]

    res = layer_sweep(model, dummy, make, layers, metric, batch_size=batch_size, method="local",
                      meta=_meta(dummy, positions=positions, n_dropped=n_prompts - len(keep)))
    i = _rate(model, icl, metric)
    return SweepResult(**{**res.__dict__, "meta": {**res.meta, "icl": i["value"], "icl_low": i["low"], "icl_high": i["high"]}})


# ----------------------------------------------------------------------------- function vectors
def mean_head_outputs(model: Any, batch: PromptBatch, *, batch_size: int = 64) -> Float[Tensor, "layer head d_head"]:
    """a_bar[l, h] = mean over prompts of ``blocks.{l}.attn.hook_z`` at the final position (input to W_O)."""
    if len(batch) == 0:
        raise ValueError("batch is empty")
    names = [z_name(l) for l in range(model.cfg.n_layers)]
    acts = read_activations(model, batch, names, batch.positions("final"), batch_size=batch_size)
    return torch.stack([acts[n][:, 0].float().mean(0) for n in names])


@dataclass(frozen=True)
class HeadCIEResult(Result):
    """Causal indirect effect of each head: values [layer, head] (mean over prompts),
    per_prompt [layer, head, batch], baseline = mean P(gold | corrupted)."""

    values: Float[Tensor, "layer head"]
    per_prompt: Float[Tensor, "layer head batch"]
    layers: list[int]
    baseline: float
    task: str
    model_name: str
    metric: str = "gold_probability"
    meta: dict = field(default_factory=dict)

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` (layer, head) pairs of largest mean CIE."""
        n = self.values.numel()
        if not 1 <= k <= n:
            raise ValueError(f"top_k must be in [1, {n}] (layers x heads), got {k}")
        idx = self.values.flatten().argsort(descending=True)[:k]
        H = self.values.shape[1]
        return [(self.layers[int(i) // H], int(i) % H) for i in idx]

    def to_dataframe(self) -> pd.DataFrame:
        L, H = self.values.shape
        se = self.per_prompt.std(-1) / max(self.per_prompt.shape[-1], 1) ** 0.5
        return pd.DataFrame({
            "layer": np.repeat(self.layers, H), "head": np.tile(np.arange(H), L),
            "cie": self.values.flatten().tolist(), "se": se.flatten().tolist(),
            "task": self.task, "model": self.model_name,
        })


@torch.no_grad()
def head_cie(
    model: Any, clean_batch: PromptBatch, corrupted_batch: PromptBatch, mean_z: Tensor | None = None,
    layers: Sequence[int] | None = None, *, batch_size: int = 32, tokens_per_forward: int = TOKENS_PER_FORWARD,
    progress: bool = False,
) -> HeadCIEResult:
    """Todd et al.: CIE(l, h) = P(gold | corrupted, z_{l,h} <- a_bar_{l,h}) - P(gold | corrupted).

    At each corrupted prompt's final position, head h of block l outputs its mean over clean
    prompts (``mean_z``, default ``mean_head_outputs(model, clean_batch)``); gold is the corrupted
    prompt's answer token (label-shuffled prompts keep the query). Batched over heads: every
    (layer, head) patch is a copy of the corrupted sub-batch in one staggered forward, each copy
    resuming at its layer from the cached corrupted residual and hooking one head.
    """
    if len(corrupted_batch) == 0:
        raise ValueError("corrupted_batch is empty")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    mean_z = mean_head_outputs(model, clean_batch) if mean_z is None else mean_z
    if tuple(mean_z.shape) != (L, H, model.cfg.d_head):
        raise ValueError(f"mean_z must have shape [n_layers={L}, n_heads={H}, d_head={model.cfg.d_head}], got {tuple(mean_z.shape)}")
    layers = _layers(model, layers, allow_final=False)
    pos = corrupted_batch.positions("final")
    cells = [(l, h) for l in layers for h in range(H)]
    out = torch.zeros(len(layers), H, len(corrupted_batch))
    base_all = []
    bar = tqdm(total=len(cells) * len(corrupted_batch), desc="head CIE", disable=not progress)
    for rows, mb in minibatches(corrupted_batch, batch_size):
        cached, base_logits, _ = cache_resid(model, mb.tokens, layers, mb.final_positions)
        gold = mb.answer_tokens
        p0 = base_logits.softmax(-1)[torch.arange(len(mb)), gold]
        base_all.append(p0)
        per = max(1, tokens_per_forward // (len(mb) * mb.tokens.shape[1]))
        finals = []
        for c in range(0, len(cells), per):
            ents = [Entry(l, cached[l], mb.final_positions,
                          [(z_name(l), replace_hook(pos[rows], mean_z[l, h].to(cached[l].dtype), head=h))])
                    for l, h in cells[c : c + per]]
            finals.append(run_staggered(model, ents, unembed=False))
            bar.update(len(ents) * len(mb))
        probs = unembed_rows(model, torch.cat(finals)).softmax(-1)
        probs = probs.reshape(len(cells), len(mb), -1)[:, torch.arange(len(mb)), gold]  # [cell, batch]
        out[:, :, rows] = (probs - p0).reshape(len(layers), H, len(mb))
    bar.close()
    return HeadCIEResult(values=out.mean(-1), per_prompt=out, layers=layers, baseline=float(torch.cat(base_all).mean()),
                         task=corrupted_batch.task, model_name=model.cfg.model_name,
                         meta={"clean_variant": clean_batch.variant, "corrupted_variant": corrupted_batch.variant,
                               "n_prompts": len(corrupted_batch), "n_demos": corrupted_batch.n_demos})


def function_vector(
    model: Any, task: str | Task, n_demos: int = 8, n_prompts: int = 16, seed: int = 0, top_k: int = 10,
    layer: int | None = None, *, template: Template | str | None = None, batch_size: int = 32,
    progress: bool = False,
) -> TaskVector:
    """Todd et al.: FV = sum over the top-K heads by mean CIE of a_bar[l, h] @ W_O[l, h] ([d_model]).

    a_bar from ICL prompts, CIE on their label-shuffled twins (same seed). Returns a TaskVector of
    mode "add" holding the FV for every layer 0..n_layers (or only ``layer``), to be added at
    the final position; ``meta`` holds the heads, their CIE, the CIE matrix and
    ``default_layer`` = round(n_layers / 3) (Todd et al. add it at about a third of the depth).
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(top_k, int) or not 1 <= top_k <= L * H:
        raise ValueError(f"top_k must be an integer in [1, {L * H}] (layers x heads), got {top_k!r}")
    if layer is not None:
        check_layer(model, layer, arg="layer")
    clean = build_prompts(model, task, n_prompts, n_demos, template=template, seed=seed)
    corrupted = build_prompts(model, task, n_prompts, n_demos, template=template, seed=seed, variant="shuffled_labels")
    mean_z = mean_head_outputs(model, clean, batch_size=batch_size)
    cie = head_cie(model, clean, corrupted, mean_z, batch_size=batch_size, progress=progress)
    heads = cie.top(top_k)
    fv = fv_from_heads(model, mean_z, heads)
    layers = list(range(L + 1)) if layer is None else [layer]
    return TaskVector(fv[None].repeat(len(layers), 1), layers, "add", "function", clean.task, model.cfg.model_name,
                      meta=_meta(clean, heads=[list(h) for h in heads], head_cie=[float(cie.values[l, h]) for l, h in heads],
                                 cie=cie.values.tolist(), corrupted_baseline=cie.baseline, top_k=top_k,
                                 default_layer=round(L / 3)))


def fv_from_heads(model: Any, mean_z: Float[Tensor, "layer head d_head"], heads: Sequence[tuple[int, int]]) -> Float[Tensor, "d_model"]:
    """sum over (l, h) in ``heads`` of mean_z[l, h] @ W_O[l, h] (no output bias)."""
    fv = torch.zeros(model.cfg.d_model)
    for l, h in heads:
        fv += (mean_z[l, h].to(model.W_O.dtype).to(model.W_O.device) @ model.W_O[l, h]).float().cpu()
    return fv


# ----------------------------------------------------------------------------- comparison
def compare_task_vectors(
    model: Any, task: str | Task, n_demos: int = 8, n_prompts: int = 32, seed: int = 0, *,
    eval_seed: int | None = None, n_eval: int | None = None, top_k: int = 10, metric: str = "auto",
    extra: Sequence[TaskVector] = (), template: Template | str | None = None, batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """Vanilla vs local vs function vectors (and any ``extra`` TaskVector) per layer, one tidy table.

    Extraction uses ``seed``; evaluation uses ``eval_seed`` (default seed + 1) with ``n_eval``
    prompts (default ``n_prompts``): vanilla (replace) and function (add) vectors and ``extra``
    are injected at the final position of zero-shot prompts; local vectors are patched into the
    random-answer twins of ICL prompts. Zero-shot, ICL and random-answer prompts share their queries. ``metric="auto"``: label_accuracy (argmax over the
    prompt's label words, chance 1/2) for categorization tasks, else accuracy. Reference rows:
    "zero-shot", "icl" and "random-answers" (flat over layers). Columns: method, layer, accuracy,
    low, high, n, metric, task, model; ``df.attrs`` holds the FV heads.
    """
    ev = seed + 1 if eval_seed is None else eval_seed
    if ev == seed:
        raise ValueError("eval_seed must differ from seed (held-out prompts)")
    if metric not in ("auto", "accuracy", "label_accuracy"):
        raise ValueError(f"metric must be 'auto', 'accuracy' or 'label_accuracy', got {metric!r}")
    n_eval = n_eval or n_prompts
    steps = tqdm(total=4 + len(extra), desc="task vectors", disable=not progress)
    tv = vanilla_task_vector(model, task, n_demos, n_prompts, seed, template=template, batch_size=batch_size)
    steps.update()
    fv = function_vector(model, task, n_demos, n_prompts, seed, top_k, template=template, batch_size=batch_size)
    steps.update()
    zs = build_prompts(model, task, n_eval, n_demos, template=template, seed=ev, variant="zero_shot")  # ICL's queries
    from .vectors import evaluate_vector

    sweeps = []
    for vec in (tv, fv, *extra):
        sweeps.append(evaluate_vector(model, vec, zs, metric=metric, batch_size=batch_size))
        steps.update()
    local = local_task_vectors(model, task, n_demos, n_eval, ev, metric=metric, template=template, batch_size=batch_size)
    steps.update()
    steps.close()
    icl = _rate(model, build_prompts(model, task, n_eval, n_demos, template=template, seed=ev), metric)
    name = sweeps[0].metric
    rows = []
    for s in [*sweeps, local]:
        n = s.per_prompt.shape[1]
        rows += [{"method": s.method, "layer": l, "accuracy": float(v), "low": float(lo), "high": float(hi), "n": n}
                 for l, v, lo, hi in zip(s.layers, s.values, s.low, s.high)]
    k_local = local.per_prompt.shape[1]
    ra = wilson(round(local.baseline * k_local), k_local)  # the metrics here are rates
    ref = {"zero-shot": _rate(model, zs, metric), "icl": icl,
           "random-answers": {"value": local.baseline, "low": ra.low, "high": ra.high}}
    all_layers = sorted({r["layer"] for r in rows})
    for method, r in ref.items():
        rows += [{"method": method, "layer": l, "accuracy": r["value"], "low": r["low"], "high": r["high"], "n": n_eval}
                 for l in all_layers]
    df = pd.DataFrame(rows).assign(metric=name, task=zs.task, model=model.cfg.model_name)
    df.attrs = {"fv_heads": fv.meta["heads"], "fv_head_cie": fv.meta["head_cie"], "seed": seed, "eval_seed": ev,
                "n_demos": n_demos, "n_prompts": n_prompts, "n_eval": n_eval, "local_dropped": local.meta["n_dropped"]}
    return df
