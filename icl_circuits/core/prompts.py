"""ICL prompts with exact positions: ``PromptBatch`` and ``build_prompts`` (templates: ``core.templates``).

A prompt is ``prefix + x_1 SEP y_1 + joiner + ... + x_q SEP`` where each example is rendered by the
template. The default depends on the tokenizer (``default_template``): ``"{x}:{y}"`` for the bundled
word-level model, whose tokenizer drops spaces, and ``"{x} -> {y}"`` for subword tokenizers (byte-level
BPE, metaspace), where a space before the answer makes its first token the whole-word token that the
model saw in pretraining (``"{x}:{y}"`` would make ``lose`` start with ``l``). Every position an analysis needs is computed once, here, from
the tokenizer's own offset mapping of the *whole* text (never by tokenizing pieces separately):

- the text is rendered *with* the query's gold answer and tokenized once; the prompt is every
  token before the first token of that answer, so the query is tokenized exactly as the demos are
  and ``answer_tokens`` is the token the model should produce next;
- a field's token span is the set of tokens whose character offsets overlap the field. A token
  that mixes a field with non-whitespace template text would make positions ambiguous, so it is
  an error (``TokenizationBoundaryError``), never a silent approximation.

Batches are RIGHT-padded: every position index is the same as in the unpadded prompt, and under a
causal mask the pad tokens cannot influence any real position, so no attention mask is needed to
get exactly the unpadded activations. Read predictions at ``final_positions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from icl_circuits.core.positions import KINDS, Positioned
from icl_circuits.core.task_filters import single_token_task
from icl_circuits.core.tasks import Task, get_task
from icl_circuits.core.templates import (  # noqa: F401  (re-exported: the prompt-building vocabulary)
    COMPACT_TEMPLATE, SPACED_TEMPLATE, Template, TokenizationBoundaryError, UnrepresentableTextError, default_template,
    get_tokenizer, render, token_span, tokenize_with_offsets, unknown_words,
)

Variant = Literal["icl", "zero_shot", "dummy_query", "shuffled_labels", "random_answers"]
VARIANTS: tuple[str, ...] = ("icl", "zero_shot", "dummy_query", "shuffled_labels", "random_answers")

#: Position kinds understood by ``PromptBatch.kind_positions`` (``positions.KINDS``).
POSITION_KINDS = KINDS


@dataclass(frozen=True)
class PromptBatch(Positioned):
    """A batch of ICL prompts with every position an analysis needs (right-padded).

    Spans are ``[start, end)`` token indices into ``tokens``; all positions already include the
    BOS token when one is prepended.

    tokens, attention_mask: [batch, pos]
    input_spans, answer_spans: [batch, n_demos, 2]  demo inputs / demo answers
    answer_positions: [batch, n_demos]  first token of each demo answer (the label word)
    separator_positions: [batch, n_demos]  the token just before each demo answer, i.e. the
        position whose next-token prediction is that answer (the last separator token)
    delimiter_positions: [batch, n_demos]  the first token after each demo answer
    query_spans: [batch, 2]; final_positions: [batch]  last real token (the query's separator)
    answer_tokens: [batch]  gold first token of the query's answer
    answer_token_ids: per prompt, every token of the query's gold answer as tokenized in the
        full rendered text (``answer_token_ids[i][0] == answer_tokens[i]``); whole-answer metrics
        score these (teacher forcing, greedy exact match)
    demo_answer_tokens: [batch, n_demos]  first token of each demo answer
    label_token_ids: [batch, n_labels] first token of each of the prompt's label words, rendered
        as an answer (categorization tasks), else None

    The position language (``positions(spec)``, ``kind_positions(kind)`` and the per-demo
    positions above) comes from ``positions.Positioned``.
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    input_spans: Int[Tensor, "batch n_demos 2"]
    answer_spans: Int[Tensor, "batch n_demos 2"]
    query_spans: Int[Tensor, "batch 2"]
    final_positions: Int[Tensor, "batch"]
    answer_tokens: Int[Tensor, "batch"]
    demo_answer_tokens: Int[Tensor, "batch n_demos"]
    label_token_ids: Int[Tensor, "batch n_labels"] | None
    queries: list[str]
    answers: list[str]
    texts: list[str]
    demos: list[list[tuple[str, str]]]
    label_words: list[tuple[str, ...] | None]
    answer_token_ids: list[list[int]]
    task: str
    variant: str
    template: Template
    n_demos: int
    seed: int
    #: Drawn only from the task's examples whose input and answer are each one token
    #: (``build_prompts(..., single_token=True)``); recorded in every result's provenance.
    single_token: bool = False
    tokenizer: Any = field(repr=False, compare=False, default=None)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Int[Tensor, "batch"]:
        return self.final_positions + 1

    def candidate_tokens(
        self, fallback: Literal["gold", "answers"] | None = None
    ) -> Int[Tensor, "batch n_cand"] | None:
        """The tokens a label-restricted score compares, per prompt: THE candidate set of every
        metric, loss or lens that restricts its argmax/softmax to "the possible answers".

        - Categorization tasks (the prompt has label words): ``label_token_ids`` [batch, n_labels],
          the first token of each label word rendered as the query's answer in its own context
          (column order = the prompt's label-word order; contains the gold token).
        - Other tasks, by ``fallback``:
          ``None`` -> ``None`` (no candidate set: score over the whole vocabulary);
          ``"gold"`` -> the distinct gold first tokens of the batch's queries
          (``unique(answer_tokens)``, sorted), the same row for every prompt;
          ``"answers"`` -> the distinct first tokens of every answer in the batch, queries' gold
          tokens and demo answers (``unique(answer_tokens ++ demo_answer_tokens)``, sorted), the same
          row for every prompt.

        The tensor is on the batch's device; rows of the fallbacks are expanded views (do not write)."""
        if self.label_token_ids is not None:
            return self.label_token_ids
        if fallback is None:
            return None
        if fallback == "gold":
            pool = torch.unique(self.answer_tokens)
        elif fallback == "answers":
            pool = torch.cat([self.answer_tokens, self.demo_answer_tokens.flatten()]).unique()
        else:
            raise ValueError(f"fallback must be None, 'gold' or 'answers', got {fallback!r}")
        return pool[None].expand(len(self), -1)

    def select(self, idx: Sequence[int] | slice | Tensor) -> "PromptBatch":
        """A sub-batch (padding trimmed to the longest selected prompt)."""
        ids = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        if not ids:
            raise ValueError("select: no prompts selected")
        t = torch.tensor(ids)
        width = int(self.final_positions[t].max()) + 1
        pick = lambda xs: [xs[i] for i in ids]  # noqa: E731
        return PromptBatch(
            tokens=self.tokens[t, :width], attention_mask=self.attention_mask[t, :width],
            input_spans=self.input_spans[t], answer_spans=self.answer_spans[t],
            query_spans=self.query_spans[t], final_positions=self.final_positions[t],
            answer_tokens=self.answer_tokens[t], demo_answer_tokens=self.demo_answer_tokens[t],
            label_token_ids=None if self.label_token_ids is None else self.label_token_ids[t],
            queries=pick(self.queries), answers=pick(self.answers), texts=pick(self.texts),
            demos=pick(self.demos), label_words=pick(self.label_words),
            answer_token_ids=pick(self.answer_token_ids), task=self.task,
            variant=self.variant, template=self.template, n_demos=self.n_demos, seed=self.seed,
            single_token=self.single_token, tokenizer=self.tokenizer,
        )

    def to(self, device: str | torch.device) -> "PromptBatch":
        """The same batch with its tensors on ``device``."""
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for k, v in kw.items():
            if isinstance(v, Tensor):
                kw[k] = v.to(device)
        return PromptBatch(**kw)

    def roles(self, i: int) -> list[str]:
        """A role name for every real token of prompt ``i`` (``"demo_2.answer"``, ``"final"``...)."""
        n = int(self.final_positions[i]) + 1
        roles = ["template"] * n
        if self.tokenizer is not None and self.tokenizer.bos_token_id is not None:
            if int(self.tokens[i, 0]) == self.tokenizer.bos_token_id:
                roles[0] = "bos"
        for d in range(self.n_demos):
            for name, spans in (("input", self.input_spans), ("answer", self.answer_spans)):
                s, e = (int(v) for v in spans[i, d])
                for p in range(s, e):
                    roles[p] = f"demo_{d}.{name}"
            roles[int(self.separator_positions[i, d])] += "+separator"
        s, e = (int(v) for v in self.query_spans[i])
        for p in range(s, e):
            roles[p] = "query.input"
        roles[n - 1] = roles[n - 1] + "+final" if roles[n - 1] != "template" else "final"
        return roles

    def describe(self, i: int = 0) -> str:
        """Prompt ``i`` as a table of tokens and their roles, for humans."""
        if not 0 <= i < len(self):
            raise IndexError(f"prompt index {i} out of range for a batch of {len(self)}")
        ids = self.tokens[i, : int(self.final_positions[i]) + 1].tolist()
        strs = (
            [self.tokenizer.decode([t]) for t in ids] if self.tokenizer is not None else [str(t) for t in ids]
        )
        lines = [
            f"task={self.task} variant={self.variant} n_demos={self.n_demos} seed={self.seed}",
            f"query={self.queries[i]!r} gold={self.answers[i]!r} "
            f"(first token {self._tok_str(int(self.answer_tokens[i]))!r})",
        ]
        if self.label_words[i] is not None:
            lines.append(f"label words: {', '.join(self.label_words[i])}")
        lines += [f"{p:>4}  {s!r:<16} {r}" for p, (s, r) in enumerate(zip(strs, self.roles(i)))]
        return "\n".join(lines)

    def _tok_str(self, t: int) -> str:
        return self.tokenizer.decode([t]) if self.tokenizer is not None else str(t)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    if n < 2:
        return np.arange(n)
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def _draw(task: Task, n_demos: int, variant: str, rng: np.random.Generator):
    """(demos, query pair, label words) for one prompt; variants share the icl draw."""
    try:
        ep = task.sample_episode(n_demos + 1, rng)
    except ValueError as err:
        raise ValueError(
            f"n_demos={n_demos} needs {n_demos + 1} distinct examples per prompt but task "
            f"{task.name!r} has {len(task)}"
        ) from err
    demos, query = list(ep.pairs[:-1]), ep.pairs[-1]
    words = ep.label_words
    if variant == "zero_shot":
        demos = []
    elif variant == "dummy_query":
        used = {x for x, _ in ep.pairs}
        pool = [x for x in task.inputs() if x not in used]
        if not pool:
            raise ValueError(f"n_demos={n_demos}: task {task.name!r} has no input left for a dummy query")
        x = pool[int(rng.integers(len(pool)))]
        query = (x, task.apply(x, words))
    elif variant == "shuffled_labels":
        perm = _derangement(len(demos), rng)
        demos = [(demos[i][0], demos[j][1]) for i, j in enumerate(perm)]
    elif variant == "random_answers":
        outs = list(words) if words is not None else task.outputs()
        demos = [(x, outs[int(rng.integers(len(outs)))]) for x, _ in demos]
    return demos, query, words


def build_prompts(
    model_or_tokenizer: Any,
    task: Task | str,
    n_prompts: int,
    n_demos: int,
    template: Template | str | dict | None = None,
    seed: int = 0,
    variant: Variant = "icl",
    *,
    prepend_bos: bool | None = None,
    single_token: bool = False,
) -> PromptBatch:
    """Build ``n_prompts`` ICL prompts of ``task`` with ``n_demos`` demonstrations each.

    ``template=None`` is ``default_template(model_or_tokenizer)``: ``"{x}:{y}"`` for the bundled
    word-level model, ``"{x} -> {y}"`` for subword (BPE, metaspace) tokenizers.

    Prompt ``i`` draws its examples from ``numpy.random.default_rng([seed, i])``, so the variants
    of the same seed share demos and queries: ``"zero_shot"`` drops the demos, ``"dummy_query"``
    replaces the query by another input (Hendel et al.'s extraction prompt),
    ``"shuffled_labels"`` permutes the demo answers among the demos (a derangement; Todd et al.'s
    corrupted prompt), ``"random_answers"`` replaces each demo answer with a random output of the
    task (for categorization: a random one of the prompt's label words).

    ``single_token=True`` draws only from the examples whose input and answer are each one token
    in this template for this tokenizer (``single_token_task``; the error says how many of the
    task's examples remain when they are too few for ``n_demos``).

    ``prepend_bos`` defaults to the model's ``cfg.default_prepend_bos`` (True for a bare tokenizer
    that has a BOS token). Raises ``ValueError`` naming the argument for bad input, and
    ``TokenizationBoundaryError`` when the tokenizer merges a field with template text.
    """
    tok, n_ctx, default_bos = get_tokenizer(model_or_tokenizer)
    task_obj = get_task(task) if isinstance(task, str) else task
    if not isinstance(task_obj, Task):
        raise TypeError(f"task must be a task name or a Task, got {type(task).__name__}")
    template = default_template(tok) if template is None else Template.coerce(template)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive integer, got {n_prompts!r}")
    if not isinstance(n_demos, int) or n_demos < 0:
        raise ValueError(f"n_demos must be a non-negative integer, got {n_demos!r}")
    bos = default_bos if prepend_bos is None else prepend_bos
    if bos and tok.bos_token_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    shift = 1 if bos else 0
    if single_token:
        task_obj = single_token_task(tok, task_obj, template)
        need = n_demos + 1 + (variant == "dummy_query")
        if len(task_obj) < need:
            raise ValueError(
                f"n_demos={n_demos} with single_token=True needs {need} distinct examples per prompt but "
                f"only {len(task_obj)} of the {task_obj.source_size} examples of task {task_obj.name!r} have a "
                f"one-token input and answer for this tokenizer in template {template.example!r}"
            )

    rows = []
    for i in range(n_prompts):
        demos, query, words = _draw(task_obj, n_demos, variant, np.random.default_rng([seed, i]))
        rows.append(_encode(tok, template, demos, query, words, shift))

    n_shown = len(rows[0]["inputs"])
    length = max(len(r["ids"]) for r in rows)
    if n_ctx is not None and length > n_ctx:
        raise ValueError(
            f"n_demos={n_demos}: the longest prompt has {length} tokens, more than the model's "
            f"n_ctx={n_ctx}; use fewer demos or a shorter template"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    tokens = torch.full((n_prompts, length), pad, dtype=torch.long)
    mask = torch.zeros((n_prompts, length), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r["ids"])] = torch.tensor(r["ids"])
        mask[i, : len(r["ids"])] = 1
    n_labels = {len(r["label_ids"]) for r in rows}
    span = lambda key: torch.tensor([r[key] for r in rows], dtype=torch.long).reshape(n_prompts, n_shown, 2)  # noqa: E731
    return PromptBatch(
        tokens=tokens,
        attention_mask=mask,
        input_spans=span("inputs"),
        answer_spans=span("answers"),
        query_spans=torch.tensor([r["query"] for r in rows], dtype=torch.long),
        final_positions=torch.tensor([len(r["ids"]) - 1 for r in rows], dtype=torch.long),
        answer_tokens=torch.tensor([r["answer_token"] for r in rows], dtype=torch.long),
        demo_answer_tokens=torch.tensor([r["demo_answer_tokens"] for r in rows], dtype=torch.long).reshape(
            n_prompts, n_shown
        ),
        label_token_ids=(
            torch.tensor([r["label_ids"] for r in rows], dtype=torch.long) if n_labels != {0} else None
        ),
        queries=[r["query_text"] for r in rows],
        answers=[r["answer_text"] for r in rows],
        texts=[r["text"] for r in rows],
        demos=[r["demos"] for r in rows],
        label_words=[r["label_words"] for r in rows],
        answer_token_ids=[r["answer_ids"] for r in rows],
        task=task_obj.name,
        variant=variant,
        template=template,
        n_demos=n_shown,
        seed=seed,
        single_token=bool(single_token),
        tokenizer=tok,
    )


def _encode(tok, template: Template, demos, query, words, shift: int) -> dict:
    """Tokenize one rendered prompt and locate every field in token indices."""
    r = render(template, demos, query)
    ids, offsets = tokenize_with_offsets(tok, r.text)
    unknown = unknown_words(tok, r.text, ids, offsets)
    if unknown:
        raise UnrepresentableTextError(
            f"the tokenizer maps {sorted(set(unknown))[:5]} to its unknown token {tok.unk_token!r}: this model cannot "
            "read the task (see task_filters.representable_tasks for the tasks it can)"
        )
    spans_in = [token_span(offsets, r.text, a, b, "input") for a, b in r.input_chars]
    spans_ans = [token_span(offsets, r.text, a, b, "answer") for a, b in r.answer_chars]
    cut = spans_ans[-1][0]
    if cut == 0:
        raise TokenizationBoundaryError("the query's answer starts at the first token; nothing to condition on")
    label_ids: list[int] = []
    if words is not None:  # first token of each label word as the query's answer, in this context
        for w in words:
            rw = render(template, demos, (query[0], w))
            ids_w, off_w = tokenize_with_offsets(tok, rw.text)
            a, b = rw.answer_chars[-1]
            label_ids.append(ids_w[token_span(off_w, rw.text, a, b, "label word")[0]])
    bos = [tok.bos_token_id] if shift else []
    sh = lambda s: [s[0] + shift, s[1] + shift]  # noqa: E731
    return {
        "ids": bos + ids[:cut],
        "text": r.text[: offsets[cut - 1][1]],
        "inputs": [sh(s) for s in spans_in[:-1]],
        "answers": [sh(s) for s in spans_ans[:-1]],
        "query": sh(spans_in[-1]),
        "answer_token": ids[cut],
        "answer_ids": ids[cut : spans_ans[-1][1]],
        "demo_answer_tokens": [ids[s[0]] for s in spans_ans[:-1]],
        "label_ids": label_ids,
        "query_text": query[0],
        "answer_text": query[1],
        "demos": list(demos),
        "label_words": words,
    }
