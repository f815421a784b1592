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

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.runner import final_logits, minibatches
from icl_circuits.core.interventions import check_layer, replace_hook, resid_name, z_name
from icl_circuits.core.runner import read_activations, read_resid
from icl_circuits.core.metrics import wilson
from icl_circuits.methods.patching import layer_sweep, prompt_metric
from icl_circuits.core.runner import TOKENS_PER_FORWARD, Entry, cache_resid, run_staggered, unembed_rows
from icl_circuits.core.prompts import PromptBatch, Template, build_prompts
from icl_circuits.core.results import Result
from icl_circuits.core.tasks import Episode, Task, get_task
from icl_circuits.core.models import model_info
from icl_circuits.methods.vectors import SweepResult, TaskVector

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
    r = read_resid(model, batch, batch.positions("final").positions, layers, batch_size=batch_size)  # [layer, batch, 1, d]
    return TaskVector(r[:, :, 0].float().mean(1), layers, "replace", "vanilla", batch.task, model.cfg.model_name,
                      meta=_meta(batch), model_info=model_info(model))


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
    from icl_circuits.methods.vectors import evaluate_vector

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
class NoLengthMatchedAnswers(ValueError):
    """No prompt has, for every demo, another answer of the task with as many tokens as its own."""


class _ScriptedTask(Task):
    """``base`` whose episodes are given: the i-th ``sample_episode`` call returns ``episodes[i]``."""

    def __init__(self, base: Task, episodes: Sequence[Episode]):
        self._base, self._episodes = base, list(episodes)
        self.name, self.kind, self.description = base.name, base.kind, base.description

    def __getattr__(self, name: str) -> Any:  # n_classes, fixed_labels, nuisance... of the base task
        if name.startswith("__") or name in ("_base", "_episodes"):
            raise AttributeError(name)
        return getattr(self._base, name)

    @property
    def label_words(self) -> list[str] | None:
        return self._base.label_words

    def inputs(self) -> list[str]:
        return self._base.inputs()

    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        return self._base.apply(x, label_words)

    def sample_episode(self, n: int, seed: Any) -> Episode:
        if not self._episodes:
            raise RuntimeError("scripted task: more episodes requested than scripted")
        return self._episodes.pop(0)


def _answer_lengths(tok: Any, template: Template, x: str, words: Sequence[str]) -> dict[str, int]:
    """Tokens of each answer ``y`` in ``joiner + before + x + sep + y + after + joiner`` (a demo's context)."""
    before, sep, after = template.parts
    left = template.joiner + before + x + sep
    ys = list(dict.fromkeys(words))
    enc = tok([left + y + after + template.joiner for y in ys], add_special_tokens=False, return_offsets_mapping=True)
    a = len(left)
    return {y: sum(1 for s, e in offs if e > s and s < a + len(y) and e > a)
            for y, offs in zip(ys, enc["offset_mapping"])}


def _matched_demos(demos: Sequence[tuple[str, str]], widths: Sequence[int], pool: Sequence[str],
                   lengths: dict[str, int], rng: np.random.Generator) -> list[tuple[str, str]] | None:
    """Each demo's input with a random answer of ``pool`` as long (in tokens) as its own, or None when
    some demo has no other answer of its length."""
    out = []
    for (x, y), n in zip(demos, widths):
        same = [w for w in pool if lengths[w] == n]
        if not any(w != y for w in same):
            return None
        out.append((x, same[int(rng.integers(len(same)))]))
    return out


def random_answer_twins(
    model: Any, icl: PromptBatch, task: str | Task, seed: int = 0,
) -> tuple[PromptBatch, PromptBatch, dict]:
    """The random-answer twin of every ICL prompt, each random answer as many tokens as the real one.

    Demo d of prompt i keeps its input; its answer is drawn uniformly (``numpy.random.default_rng([seed,
    i, 1])``) among the task's answers (the prompt's label words for categorization tasks, else
    every output of the task) that tokenize, in the demo's context, to as many tokens as the real
    answer ``y_d`` (``y_d`` itself included, as with random labels). So both prompts have the same
    token positions and the local vectors of one can be patched into the other. A prompt is
    dropped when some demo has no *other* answer of its length (``"no_match"``) or when the built
    twin's spans still differ (``"tokenization"``, a tokenizer merging across the field). Returns
    (the kept ICL prompts, their twins with variant ``"random_answers"``, counts of dropped prompts
    by reason); raises ``NoLengthMatchedAnswers`` when no prompt is left.
    """
    if icl.n_demos < 1:
        raise ValueError("icl has no demonstrations: local task vectors live at the demo answer positions")
    task_obj = get_task(task) if isinstance(task, str) else task
    tok = icl.tokenizer
    outputs = None if icl.label_words[0] is not None else task_obj.outputs()
    x0 = icl.demos[0][0][0]
    cache: dict[tuple[str, ...], dict[str, int]] = {}
    keep, episodes, dropped = [], [], {"no_match": 0, "tokenization": 0}
    for i in range(len(icl)):
        pool = list(icl.label_words[i]) if icl.label_words[i] is not None else outputs
        key = tuple(pool) if icl.label_words[i] is not None else ("<outputs>",)
        if key not in cache:
            cache[key] = _answer_lengths(tok, icl.template, x0, pool)
        widths = (icl.answer_spans[i, :, 1] - icl.answer_spans[i, :, 0]).tolist()
        demos = _matched_demos(icl.demos[i], widths, pool, cache[key], np.random.default_rng([seed, i, 1]))
        if demos is None:
            dropped["no_match"] += 1
            continue
        keep.append(i)
        episodes.append(Episode([*demos, (icl.queries[i], icl.answers[i])], icl.label_words[i]))
    if not keep:
        raise NoLengthMatchedAnswers(
            f"task {icl.task!r}: no prompt (of {len(icl)}) has, for every demo, another answer with as many tokens "
            "as its own answer on this tokenizer; random-answer twins with the same positions cannot be built"
        )
    icl = icl.select(keep)
    twin = build_prompts(model, _ScriptedTask(task_obj, episodes), len(keep), icl.n_demos, template=icl.template, seed=seed)
    if [[x for x, _ in d] for d in twin.demos] != [[x for x, _ in d] for d in icl.demos]:
        raise RuntimeError("random_answer_twins: build_prompts did not take the scripted episodes in order")
    twin = dataclasses.replace(twin, variant="random_answers")
    same = ((icl.answer_spans == twin.answer_spans).flatten(1).all(1)
            & (icl.input_spans == twin.input_spans).flatten(1).all(1) & (icl.final_positions == twin.final_positions))
    ok = same.nonzero()[:, 0].tolist()
    dropped["tokenization"] = len(icl) - len(ok)
    if not ok:
        raise NoLengthMatchedAnswers(f"task {icl.task!r}: every random-answer twin tokenizes to other positions")
    if len(ok) < len(icl):
        icl, twin = icl.select(ok), twin.select(ok)
    return icl, twin, dropped


def local_task_vectors(
    model: Any, task: TaskLike, n_demos: int = 8, n_prompts: int = 32, seed: int = 0,
    layers: Sequence[int] | None = None, *, positions: str = "answer", metric: str = "accuracy",
    template: Template | str | None = None, batch_size: int = 64,
) -> SweepResult:
    """2406.16007: patch an ICL prompt's hidden states at its demo answer positions into its twin with
    random answers (same demo inputs, ``random_answer_twins``), at one layer l at a time.

    For prompt i and layer l: h_l(icl_i, p) overwrites the residual at the input of block l at
    every position p of kind ``positions`` ("answer": the first token of each demo answer) of the
    random-answer prompt i. Random answers are matched to the real ones by token length on this
    tokenizer, so both prompts share every position; prompts where that is impossible are dropped
    and counted in ``meta["n_dropped"]`` (by reason in ``meta["dropped"]``); none left raises
    ``NoLengthMatchedAnswers`` (a ``ValueError``). Returns the metric of the query per layer
    (0..n_layers-1); ``baseline`` is the unpatched random-answer prompt, ``meta["icl"]`` the ICL
    prompts' metric.
    """
    if isinstance(task, PromptBatch):
        raise TypeError("local_task_vectors builds its own paired prompts: pass a task name or Task")
    if positions == "final":
        raise ValueError("positions must be a demo position kind (answer, separator, ...), not 'final'")
    layers = _layers(model, layers, allow_final=False)
    icl = build_prompts(model, task, n_prompts, n_demos, template=template, seed=seed)
    icl, dummy, dropped = random_answer_twins(model, icl, task, seed)
    pos = icl.positions(positions).positions
    states = read_resid(model, icl, pos, layers, batch_size=batch_size)  # [layer, batch, n, d]

    def make(l: int, rows: slice, mb: PromptBatch):
        return [(resid_name(model, l), replace_hook(pos[rows], states[layers.index(l)][rows]))]

    res = layer_sweep(model, dummy, make, layers, metric, batch_size=batch_size, method="local",
                      meta=_meta(dummy, positions=positions, n_dropped=n_prompts - len(icl), dropped=dropped,
                                 length_matched=True))
    i = _rate(model, icl, metric)
    return SweepResult(**{**res.__dict__, "meta": {**res.meta, "icl": i["value"], "icl_low": i["low"], "icl_high": i["high"]}})


# ----------------------------------------------------------------------------- function vectors
def mean_head_outputs(model: Any, batch: PromptBatch, *, batch_size: int = 64) -> Float[Tensor, "layer head d_head"]:
    """a_bar[l, h] = mean over prompts of ``blocks.{l}.attn.hook_z`` at the final position (input to W_O)."""
    if len(batch) == 0:
        raise ValueError("batch is empty")
    names = [z_name(l) for l in range(model.cfg.n_layers)]
    acts = read_activations(model, batch, names, batch.positions("final").positions, batch_size=batch_size)
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
    pos = corrupted_batch.positions("final").positions
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
    return HeadCIEResult(model_info=model_info(model), values=out.mean(-1), per_prompt=out, layers=layers, baseline=float(torch.cat(base_all).mean()),
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
                                 default_layer=round(L / 3)), model_info=model_info(model))


def fv_from_heads(model: Any, mean_z: Float[Tensor, "layer head d_head"], heads: Sequence[tuple[int, int]]) -> Float[Tensor, "d_model"]:
    """sum over (l, h) in ``heads`` of mean_z[l, h] @ W_O[l, h] (no output bias)."""
    fv = torch.zeros(model.cfg.d_model)
    for l, h in heads:
        fv += (mean_z[l, h].to(model.W_O.dtype).to(model.W_O.device) @ model.W_O[l, h]).float().cpu()
    return fv


# ----------------------------------------------------------------------------- comparison
METHODS: tuple[str, ...] = ("vanilla", "local", "function")


def compare_task_vectors(
    model: Any, task: str | Task, n_demos: int = 8, n_prompts: int = 32, seed: int = 0, *,
    eval_seed: int | None = None, n_eval: int | None = None, top_k: int = 10, metric: str = "auto",
    methods: Sequence[str] = METHODS, extra: Sequence[TaskVector] = (), template: Template | str | None = None,
    batch_size: int = 32, progress: bool = False,
) -> pd.DataFrame:
    """Vanilla vs local vs function vectors (and any ``extra`` TaskVector) per layer, one tidy table.

    ``methods``: which of ``"vanilla"``, ``"local"`` and ``"function"`` to run (default all three).
    Extraction uses ``seed``; evaluation uses ``eval_seed`` (default seed + 1) with ``n_eval``
    prompts (default ``n_prompts``): vanilla (replace) and function (add) vectors and ``extra``
    are injected at the final position of zero-shot prompts; local vectors are patched into the
    length-matched random-answer twins of ICL prompts (``random_answer_twins``). When no prompt
    has length-matched random answers on this tokenizer, the local method is skipped with a
    ``UserWarning`` saying why (``df.attrs["skipped"]``) and the others still run.
    Zero-shot, ICL and random-answer prompts share their queries. ``metric="auto"``:
    label_accuracy (argmax over the prompt's label words, chance 1/2) for categorization tasks,
    else accuracy. Reference rows: "zero-shot", "icl" and (with local) "random-answers", flat
    over layers. Columns: method, layer, accuracy, low, high, n, metric, task, model; ``df.attrs``
    holds the FV heads (None without "function").
    """
    ev = seed + 1 if eval_seed is None else eval_seed
    if ev == seed:
        raise ValueError("eval_seed must differ from seed (held-out prompts)")
    if metric not in ("auto", "accuracy", "label_accuracy"):
        raise ValueError(f"metric must be 'auto', 'accuracy' or 'label_accuracy', got {metric!r}")
    if isinstance(methods, str):
        methods = [methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not (methods or extra):
        raise ValueError(f"methods must name some of {', '.join(METHODS)}, got {list(methods)!r}")
    methods = [m for m in METHODS if m in methods]
    n_eval = n_eval or n_prompts
    steps = tqdm(total=len(methods) + len(extra), desc="task vectors", disable=not progress)
    vecs: list[TaskVector] = []
    fv = None
    if "vanilla" in methods:
        vecs.append(vanilla_task_vector(model, task, n_demos, n_prompts, seed, template=template, batch_size=batch_size))
    if "function" in methods:
        fv = function_vector(model, task, n_demos, n_prompts, seed, top_k, template=template, batch_size=batch_size)
        vecs.append(fv)
    zs = build_prompts(model, task, n_eval, n_demos, template=template, seed=ev, variant="zero_shot")  # ICL's queries
    from icl_circuits.methods.vectors import evaluate_vector

    sweeps = []
    for vec in (*vecs, *extra):
        sweeps.append(evaluate_vector(model, vec, zs, metric=metric, batch_size=batch_size))
        steps.update()
    local, skipped = None, {}
    if "local" in methods:
        try:
            local = local_task_vectors(model, task, n_demos, n_eval, ev, metric=metric, template=template,
                                       batch_size=batch_size)
        except NoLengthMatchedAnswers as err:
            skipped["local"] = str(err)
            warnings.warn(f"compare_task_vectors: local task vectors skipped: {err}", UserWarning, stacklevel=2)
        steps.update()
    steps.close()
    icl = _rate(model, build_prompts(model, task, n_eval, n_demos, template=template, seed=ev), metric)
    zero = _rate(model, zs, metric)
    name = prompt_metric(metric, zs)[0]
    rows = []
    for s in [*sweeps, *([local] if local is not None else [])]:
        n = s.per_prompt.shape[1]
        rows += [{"method": s.method, "layer": l, "accuracy": float(v), "low": float(lo), "high": float(hi), "n": n}
                 for l, v, lo, hi in zip(s.layers, s.values, s.low, s.high)]
    ref = {"zero-shot": (zero, n_eval), "icl": (icl, n_eval)}
    if local is not None:
        k_local = local.per_prompt.shape[1]
        ra = wilson(round(local.baseline * k_local), k_local)  # the metrics here are rates
        ref["random-answers"] = ({"value": local.baseline, "low": ra.low, "high": ra.high}, k_local)
    all_layers = sorted({r["layer"] for r in rows}) or list(range(model.cfg.n_layers + 1))  # every method skipped
    for method, (r, n) in ref.items():
        rows += [{"method": method, "layer": l, "accuracy": r["value"], "low": r["low"], "high": r["high"], "n": n}
                 for l in all_layers]
    df = pd.DataFrame(rows).assign(metric=name, task=zs.task, model=model.cfg.model_name)
    df.attrs = {"fv_heads": fv.meta["heads"] if fv else None, "fv_head_cie": fv.meta["head_cie"] if fv else None,
                "seed": seed, "eval_seed": ev, "n_demos": n_demos, "n_prompts": n_prompts, "n_eval": n_eval,
                "methods": methods, "skipped": skipped,
                "local_dropped": local.meta["n_dropped"] if local is not None else None}
    return df
