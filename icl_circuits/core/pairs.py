"""Paired and twin prompt builders: prompts of two tasks whose answers can be told apart.

``task_answer_tokens``: the first token another task would answer on each prompt's query;
``paired_batches``: source prompts of task A and target prompts of task B for interchange;
``random_answer_twins``: each ICL prompt with random demo answers of the same token length (local
task vectors); ``task_vector_prompts``: the extraction and evaluation prompts of a task-vector comparison.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from icl_circuits.core.positions import check_batch
from icl_circuits.core.prompts import PromptBatch, build_prompts
from icl_circuits.core.tasks import CategorizationTask, Episode, Task, get_task
from icl_circuits.core.templates import Template, TokenizationBoundaryError, render, token_span, tokenize_with_offsets
from icl_circuits.core.types import HookedModel

__all__ = ["has_bos", "task_answer_tokens", "paired_batches", "random_answer_twins", "NoLengthMatchedAnswers", "ScriptedTask",
           "TaskVectorPrompts", "task_vector_prompts"]


def task_answer_tokens(batch: PromptBatch, task: Task | str) -> Int[Tensor, "batch"]:
    """First token of ``task`` applied to each prompt's query, rendered as that prompt's answer
    (same template and demos, so the token is exactly what the model would have to produce);
    ``-1`` where the task is undefined on the query. Categorization tasks use the prompt's own
    label binding (``batch.label_words``); a prompt without one (or with another number of
    classes) gets ``-1``."""
    check_batch(batch)
    task = get_task(task)
    if batch.tokenizer is None:
        raise ValueError("batch has no tokenizer; build it with build_prompts")
    out = []
    for i, q in enumerate(batch.queries):
        words = batch.label_words[i]
        if isinstance(task, CategorizationTask):
            y = task.apply(q, words) if words is not None and len(words) == task.n_classes else None
        else:
            y = task.apply(q)
        if y is None:
            out.append(-1)
            continue
        r = render(batch.template, batch.demos[i], (q, y))
        ids, offsets = tokenize_with_offsets(batch.tokenizer, r.text)
        try:
            out.append(ids[token_span(offsets, r.text, *r.answer_chars[-1], "answer")[0]])
        except TokenizationBoundaryError:
            out.append(-1)
    return torch.tensor(out, dtype=torch.long)


def paired_batches(
    model: HookedModel, source: Task | str, target: Task | str, n_prompts: int, n_demos: int, *,
    seed: int = 0, template: Any = None, oversample: int = 6,
) -> tuple[PromptBatch, PromptBatch]:
    """Source prompts of task A (seed ``seed + 1``) and target prompts of task B (seed ``seed``)
    whose query is in A's domain with a first answer token different from B's, so every target
    prompt can tell transfer from preserve. Target prompts are drawn from a pool of
    ``oversample * n_prompts`` and the first ``n_prompts`` that qualify are kept."""
    src = build_prompts(model, source, n_prompts, n_demos, template=template, seed=seed + 1)
    pool = build_prompts(model, target, n_prompts * oversample, n_demos, template=template, seed=seed)
    ta = task_answer_tokens(pool, source)
    ok = ((ta >= 0) & (ta != pool.answer_tokens)).nonzero()[:, 0]
    if len(ok) < n_prompts:
        raise ValueError(
            f"only {len(ok)} of {len(pool)} prompts of target task {pool.task!r} have a query on which "
            f"source task {src.task!r} is defined with a different answer; n_prompts={n_prompts} is too many "
            "(or the two tasks' domains do not overlap)"
        )
    return src, pool.select(ok[:n_prompts])


# ----------------------------------------------------------------------------- random-answer twins
# (local task vectors, icl_circuits.methods.task_vectors.local_task_vectors; moved from methods/task_vectors.py)
class NoLengthMatchedAnswers(ValueError):
    """No prompt has, for every demo, another answer of the task with as many tokens as its own."""


class ScriptedTask(Task):
    """``base`` whose episodes are given: the i-th ``sample_episode`` call returns ``episodes[i]``
    (builds prompts whose demos are chosen by the caller, through ``build_prompts``)."""

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
    model: HookedModel, icl: PromptBatch, task: str | Task | None = None, seed: int = 0,
) -> tuple[PromptBatch, PromptBatch, dict]:
    """The random-answer twin of every ICL prompt, each random answer as many tokens as the real one.

    Demo d of prompt i keeps its input; its answer is drawn uniformly (``numpy.random.default_rng([seed,
    i, 1])``) among the task's answers (the prompt's label words for categorization tasks, else
    every output of the task) that tokenize, in the demo's context, to as many tokens as the real
    answer ``y_d`` (``y_d`` itself included, as with random labels). So both prompts have the same
    token positions and the local vectors of one can be patched into the other. A prompt is
    dropped when some demo has no *other* answer of its length (``"no_match"``) or when the built
    twin's spans still differ (``"tokenization"``, a tokenizer merging across the field). ``task``:
    the batch's task (default ``get_task(icl.task)``; give the ``Task`` for an unregistered one).
    Returns (the kept ICL prompts, their twins with variant ``"random_answers"``, counts of dropped
    prompts by reason); raises ``NoLengthMatchedAnswers`` when no prompt is left.
    """
    check_batch(icl, "icl")
    if icl.n_demos < 1:
        raise ValueError("icl has no demonstrations: local task vectors live at the demo answer positions")
    task_obj = get_task(icl.task if task is None else task)
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
    bos = getattr(tok, "bos_token_id", None)  # the twin starts like the ICL prompt: with BOS iff it does
    starts_bos = bos is not None and bool((icl.tokens[:, 0] == bos).all())
    twin = build_prompts(model, ScriptedTask(task_obj, episodes), len(keep), icl.n_demos, template=icl.template, seed=seed,
                         prepend_bos=starts_bos)
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


# ----------------------------------------------------------------------------- task-vector prompt sets
@dataclasses.dataclass(frozen=True)
class TaskVectorPrompts:
    """The prompts ``methods.task_vectors.compare_task_vectors`` extracts and evaluates on.

    Extraction (``seed``): ``dummy_query`` (vanilla vectors), ``icl`` and ``shuffled`` (its
    label-shuffled twins: function vectors). Evaluation (``eval_seed``): ``zero_shot`` (the
    vectors are injected there) and ``icl_eval`` (the same queries with demos: the ICL reference
    and the local vectors). ``task``: the Task object (for random-answer twins of unregistered tasks).
    """

    dummy_query: PromptBatch
    icl: PromptBatch
    shuffled: PromptBatch
    zero_shot: PromptBatch
    icl_eval: PromptBatch
    task: Task


def has_bos(model: HookedModel) -> bool:
    """Whether the model's tokenizer has a BOS token: zero-shot task-vector prompts then start with it
    (``task_vector_prompts``' default; without one a zero-shot prompt's query word is the attention sink)."""
    return getattr(getattr(model, "tokenizer", model), "bos_token_id", None) is not None


def task_vector_prompts(
    model: HookedModel, task: Task | str, n_demos: int = 8, n_prompts: int = 32, seed: int = 0, *,
    n_eval: int | None = None, eval_seed: int | None = None, template: Any = None, prepend_bos: bool | None = None,
) -> TaskVectorPrompts:
    """Build ``TaskVectorPrompts``: ``n_prompts`` extraction prompts of each variant with ``seed``
    (dummy-query, ICL, shuffled labels; variants of one seed share demos and queries) and
    ``n_eval`` (default ``n_prompts``) evaluation prompts with ``eval_seed`` (default seed + 1,
    which must differ from ``seed``: held-out prompts), zero-shot and ICL (sharing their queries).

    ``prepend_bos`` (for every variant): None (default) prepends the tokenizer's BOS whenever it
    has one, whatever ``cfg.default_prepend_bos`` says. A zero-shot prompt ``x_q SEP`` is two or
    three tokens; without a start token its query word is the first token, the attention sink of
    Llama-family models, which later positions barely read: on SmolLM2-135M the vanilla task vector
    then transfers 0.00 at every layer and learned vectors cannot be trained (present-past; with
    ``<|endoftext|>`` first the vanilla vector reaches 0.83 at layer 21). False keeps the model's
    prompts as they are."""
    ev = seed + 1 if eval_seed is None else eval_seed
    if ev == seed:
        raise ValueError("eval_seed must differ from seed (held-out prompts)")
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise TypeError(f"prepend_bos must be True, False or None, got {prepend_bos!r}")
    task_obj = get_task(task)
    n_eval = n_eval or n_prompts
    if prepend_bos is None:
        prepend_bos = has_bos(model)
    b = lambda n, s, v: build_prompts(model, task_obj, n, n_demos, template=template, seed=s, variant=v,  # noqa: E731
                                      prepend_bos=prepend_bos)
    return TaskVectorPrompts(dummy_query=b(n_prompts, seed, "dummy_query"), icl=b(n_prompts, seed, "icl"),
                             shuffled=b(n_prompts, seed, "shuffled_labels"), zero_shot=b(n_eval, ev, "zero_shot"),
                             icl_eval=b(n_eval, ev, "icl"), task=task_obj)
