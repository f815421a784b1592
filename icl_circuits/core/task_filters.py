"""Which examples and tasks a tokenizer can carry: ``single_token_task`` (examples whose input and
answer are one token in context) and ``representable_tasks`` (tasks with no word mapped to the
unknown token). Both read prompts exactly as ``prompts.build_prompts`` renders them (``templates.render``).
"""

from __future__ import annotations

from typing import Any, Sequence

from icl_circuits.core.tasks import CategorizationTask, Task, get_task, list_tasks
from icl_circuits.core.templates import (
    Template, TokenizationBoundaryError, default_template, get_tokenizer, render, token_span, unknown_words,
)

__all__ = ["single_token_task", "representable_tasks"]


def single_token_task(model_or_tokenizer: Any, task: Task | str, template: Template | str | dict | None = None) -> Task:
    """The examples of ``task`` whose input and answer are each exactly one token for this
    tokenizer, as rendered by ``template`` (default ``default_template``) in a prompt.

    Each example is rendered twice, as the first example of a prompt (after the template's prefix)
    and as a later one (after the joiner; its answer ends the text, as a query's gold answer
    does), and kept only if its input and its answer are one token in both places: with
    ``"{x} -> {y}"`` and a BPE tokenizer the answer ``" cold"`` is one token. For a categorization
    task the label words are checked as answers: arbitrary label pools keep their one-token words
    (at least ``n_classes`` must remain); a task with fixed labels needs every label to be one token.

    Returns a task of the same name and kind restricted to the kept inputs (``Task.subset``):
    ``len(result)`` examples are kept of ``result.source_size``. Raises ``ValueError`` when none is.
    """
    tok = get_tokenizer(model_or_tokenizer)[0]
    task = get_task(task) if isinstance(task, str) else task
    if not isinstance(task, Task):
        raise TypeError(f"task must be a task name or a Task, got {type(task).__name__}")
    template = default_template(tok) if template is None else Template.coerce(template)
    xs = task.inputs()

    def one_token(pairs: list[tuple[str, str]]) -> tuple[list[bool], list[bool]]:
        rendered = [render(template, [p], p) for p in pairs]
        enc = tok([r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
        ok_x, ok_y = [], []
        for r, offsets in zip(rendered, enc["offset_mapping"]):
            offsets = [tuple(o) for o in offsets]

            def single(chars: list[tuple[int, int]]) -> bool:
                try:
                    spans = [token_span(offsets, r.text, a, b, "field") for a, b in chars]
                except TokenizationBoundaryError:
                    return False
                return all(e - s == 1 for s, e in spans)

            ok_x.append(single(r.input_chars))
            ok_y.append(single(r.answer_chars))
        return ok_x, ok_y

    where = f"for this tokenizer in template {template.example!r}"
    if isinstance(task, CategorizationTask):
        pool = task.label_words
        ok_w = one_token([(xs[0], w) for w in pool])[1]
        words = [w for w, ok in zip(pool, ok_w) if ok]
        if task.fixed_labels and len(words) < len(pool):
            raise ValueError(f"task {task.name!r}: the label word(s) {[w for w in pool if w not in words]} are "
                             f"not one token {where}; single_token cannot drop a class")
        if len(words) < task.n_classes:
            raise ValueError(f"task {task.name!r}: only {len(words)} of its {len(pool)} label words are one token "
                             f"{where}, fewer than its {task.n_classes} classes")
        keep = [x for x, ok in zip(xs, one_token([(x, words[0]) for x in xs])[0]) if ok]
    else:
        ok_x, ok_y = one_token([(x, task.apply(x)) for x in xs])
        keep = [x for x, a, b in zip(xs, ok_x, ok_y) if a and b]
    if not keep:
        raise ValueError(f"no example of task {task.name!r} (of {len(xs)}) has a one-token input and answer {where}")
    description = f"{task.description} (one-token examples {where}: {len(keep)} of {len(xs)})"
    try:
        if isinstance(task, CategorizationTask):
            sub = task.with_labels(words, inputs=keep, description=description)
            sub.source_size = len(task) if task.source_size is None else task.source_size
        else:
            sub = task.subset(keep, description)
    except ValueError as err:
        raise ValueError(f"single_token: {len(keep)} of {len(xs)} examples of task {task.name!r} are one token "
                         f"{where}, but {err}") from None
    return sub


def representable_tasks(model_or_tokenizer: Any, tasks: Sequence[str] | None = None) -> list[str]:
    """The tasks (default: every registered task) whose every input, output and label word the
    tokenizer can represent, i.e. maps to no unknown token. A word-level tokenizer such as
    ``toy-icl``'s cannot read tasks written after it was built; byte-level BPE can read anything."""
    tok = get_tokenizer(model_or_tokenizer)[0]
    out = []
    for name in list_tasks() if tasks is None else tasks:
        t = get_task(name)
        words = sorted({*t.inputs(), *t.outputs(), *(t.label_words or [])})
        enc = tok(words, add_special_tokens=False, return_offsets_mapping=True)
        if not any(unknown_words(tok, w, i, o) for w, i, o in zip(words, enc["input_ids"], enc["offset_mapping"])):
            out.append(name)
    return out
