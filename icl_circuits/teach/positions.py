"""Exercise: build a position set with the batch's position language (notebooks 03 and 07).

``check_position_set`` compares the learner's set of token positions, prompt by prompt, with
``batch.positions(expected)`` and names what is extra or missing by its role in the prompt (demo
inputs, separators, answers, delimiters, the query, the start of the prompt), so that a wrong set
reads as "you included the query" rather than as two lists of numbers.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from icl_circuits.core.positions import PositionSet, check_batch
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.teach.checks import CheckResult, is_placeholder, verdict

__all__ = ["check_position_set", "ROLE_WORDS"]

#: How a message names each role of a prompt.
ROLE_WORDS = {
    "input": "the demo inputs (demo_k.input)",
    "sep": "the separators between input and answer (demo_k.sep, e.g. ':' or ' ->')",
    "answer": "the demo answers (demo_k.answer)",
    "delim": "the delimiters after each answer (demo_k.delim, e.g. the newline)",
    "query": "the query (its input and the final position)",
    "start": "the start of the prompt before the first demo (e.g. <bos>)",
}


def _roles(batch: PromptBatch) -> list[dict[int, tuple[str, int, int]]]:
    """Per prompt: token position -> (role, demo index or -1, offset in its span) for every real token."""
    out: list[dict[int, tuple[str, int, int]]] = []
    demo = batch.positions("demo_tokens") if batch.n_demos else None
    for b in range(len(batch)):
        final = int(batch.final_positions[b])
        roles = {p: ("start", -1, 0) for p in range(final + 1)}
        for p in range(int(batch.query_spans[b, 0]), final + 1):
            roles[p] = ("query", -1, 0)
        if demo is not None:
            for j, name in enumerate(demo.names):
                if demo.mask[b, j]:
                    k, rest = name[len("demo_"):].split(".", 1)
                    role, off = rest[:-1].split("[")
                    roles[int(demo.positions[b, j])] = (role, int(k), int(off))
        out.append(roles)
    return out


def _as_sets(answer: object, batch: PromptBatch, arg: str) -> tuple[list[set[int]] | None, str | None, bool]:
    """(per-prompt sets of positions, an error the position language raised, whether the answer was a
    bare tensor) for a PositionSet, a spec, or an integer tensor [batch, n]."""
    if isinstance(answer, (str, list, tuple)) and all(isinstance(s, str) for s in ([answer] if isinstance(answer, str) else answer)):
        try:
            answer = batch.positions(answer)
        except ValueError as err:
            return None, str(err), False
    if isinstance(answer, PositionSet):
        pos, mask = answer.positions, answer.mask
        bare = False
    elif isinstance(answer, Tensor) and not answer.is_floating_point() and answer.dtype != torch.bool:
        pos = answer[:, None] if answer.ndim == 1 else answer
        mask, bare = torch.ones(pos.shape, dtype=torch.bool), True
    else:
        raise TypeError(f"{arg} must be a PositionSet (batch.positions(...)), a position spec (a string or a list "
                        f"of names) or an integer tensor [batch, n] of positions, got {type(answer).__name__}")
    if pos.ndim != 2 or pos.shape[0] != len(batch):
        return None, (f"your positions have shape {tuple(pos.shape)}; a position set has one row per prompt: "
                      f"[batch={len(batch)}, n]"), bare
    if bare:
        for b in range(len(batch)):
            row = pos[b].tolist()
            if len(set(row)) < len(row):
                twice = next(p for p in row if row.count(p) > 1)
                why = (" (a PositionSet stores 0 at its masked entries, where a prompt's word is shorter: pass the "
                       "PositionSet itself, or keep only positions[mask])" if twice == 0 else "")
                return None, f"position {twice} appears more than once in prompt {b}{why}", bare
    return [{int(p) for p, ok in zip(pos[b].tolist(), mask[b].tolist()) if ok} for b in range(len(batch))], None, bare


def _name_roles(counter: Counter) -> str:
    words = [ROLE_WORDS[r] for r in ("start", "input", "sep", "answer", "delim", "query") if counter[r]]
    if len(words) < 3:
        return " and ".join(words)
    return "; ".join(words[:-1]) + "; and " + words[-1]


def check_position_set(
    answer: PositionSet | str | Sequence[str] | Int[Tensor, "batch n"],
    batch: PromptBatch,
    expected: str | Sequence[str] = "demo_tokens",
) -> CheckResult:
    """Check a position set against ``batch.positions(expected)``, prompt by prompt.

    Two sets are equal when every prompt b has the same set of valid token positions
    ``{positions[b, j] : mask[b, j]}`` (column order and names do not matter). ``answer``: a
    ``PositionSet``, a spec the position language reads (``"inputs+answers"``, a list of names), or
    an integer tensor [batch, n] (every entry taken as valid). Diagnoses what is extra or missing by
    role (the query, the start of the prompt, one demo left out, separators or delimiters left out,
    only the first token of multi-token words, masked entries read as position 0). Prints the
    verdict and returns it; raises ``TypeError`` only when ``answer`` or ``batch`` is not one of
    these kinds.
    """
    name = "check_position_set"
    check_batch(batch)
    if is_placeholder(answer):
        return verdict(name, "not_done", f"replace ... with the position set of {expected!r} "
                                         "(batch.positions(...) and the names of icl_circuits.core.positions).")
    got, err, bare = _as_sets(answer, batch, "answer")
    if got is None:
        return verdict(name, "wrong", (err if bare or err.startswith("your positions") else
                                       f"the position language refused it: {err}") + ".")
    want_set = batch.positions(expected)
    want = [{int(p) for p, ok in zip(want_set.positions[b].tolist(), want_set.mask[b].tolist()) if ok}
            for b in range(len(batch))]
    if got == want:
        n = sum(len(w) for w in want)
        return verdict(name, "correct", f"{n} positions in {len(batch)} prompts, the same as "
                                        f"batch.positions({expected!r}).")
    roles = _roles(batch)
    extra, missing, outside = Counter(), Counter(), 0
    missing_demos, missing_later, missing_first = Counter(), 0, 0
    for b in range(len(batch)):
        for p in got[b] - want[b]:
            if p in roles[b]:
                extra[roles[b][p][0]] += 1
            else:
                outside += 1
        for p in want[b] - got[b]:
            role, k, off = roles[b][p]
            missing[role] += 1
            missing_demos[k] += 1
            missing_later += off > 0
            missing_first += off == 0
    msgs = []
    if outside:
        msgs.append(f"{outside} of your positions lie outside their prompt (after its final token, in the padding)")
    if extra:
        if bare and extra["start"] and set(extra) == {"start"} and want_set.ragged:
            msgs.append("your tensor holds position 0 where the set has no token: a PositionSet stores 0 at its masked "
                        "entries (mask False, multi-token words of different lengths); pass the PositionSet itself, or "
                        "keep only positions[mask]")
        else:
            msgs.append("you included " + _name_roles(extra) + ": not in the set")
    if missing:
        demos = {k for k in missing_demos if k >= 0}
        size = {k: sum(1 for b in range(len(batch)) for p in want[b] if roles[b][p][1] == k) for k in demos}
        if len(demos) == 1 and all(missing_demos[k] == size[k] for k in demos) and not (missing["query"] or missing["start"]):
            k = next(iter(demos))
            msgs.append(f"you left out demo {k} entirely (the demos are demo_0 ... demo_{batch.n_demos - 1}; "
                        "an off-by-one in a range?)")
        elif missing_first == 0 and missing_later:
            msgs.append("you kept only the first token of multi-token spans (like 'input_first' or 'answers'); on this "
                        "tokenizer a word can span several tokens: the role sets ('inputs', 'answer_tokens', "
                        "'demo_tokens') take every token, with a mask")
        else:
            msgs.append("you left out " + _name_roles(missing))
    return verdict(name, "wrong", "; and ".join(msgs) + f" (compared with batch.positions({expected!r})).")
