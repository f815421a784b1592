"""The one position language: every token position an ICL analysis reads or writes, resolved from
a ``PromptBatch``'s exact spans (``PromptBatch.positions(spec)`` calls ``resolve``). ``PromptBatch``
inherits the language from ``Positioned``, so this module stands below ``prompts`` and never imports it.

Position sets, resolved per prompt from the ``PromptBatch``'s exact spans,
each column named by its role so that column j of a source prompt maps to column j of a target:

====================  ==========================================================================
``answer_k``           first token of demo k's answer (``k`` may be negative: ``answer_-1``)
``answer_last_k``      last token of demo k's answer (the same as ``answer_k`` for a one-token answer)
``separator_k``        the token just before demo k's answer; ``delimiter_k``: the first token
                       after it; ``input_first_k`` / ``input_last_k``: first / last input token
``answers``            every ``answer_k`` (also ``answer``); likewise ``answer_last``,
                       ``separators``, ``delimiters``, ``input_first``, ``input_last``
``inputs``             every token of every demo input (``demo_k.input[o]``); also ``input_tokens``
``answer_tokens``      every token of every demo answer (``demo_k.answer[o]``)
``demo_k``             every token of demo k: ``demo_k.input[o]``, ``demo_k.sep[o]`` (input end
                       to answer start), ``demo_k.answer[o]``, ``demo_k.delim[o]`` (answer end
                       to the next input: text after y, the joiner, the next example's text
                       before x)
``demo_tokens``        every token of every demo (all ``demo_k``)
``last_demo_token``    the token right before the query's input (last token of the last demo)
``query``              the final position (also ``final``, named so)
====================  ==========================================================================

A union is a list of names or a string joined by ``+`` (``"answer_0+answer_-1"``).

Multi-token fields (every BPE model: words differ in token count across prompts) are aligned by
role and offset from the span start: ``demo_2.input[o]`` is the o-th token of demo 2's input, for
``o`` up to the longest such span in the batch, and ``PositionSet.mask`` is False where a prompt's
span is shorter. Analyses read and write only valid entries: ``interchange`` averages the source
per column over the source prompts valid there and writes a target column only where the target
is valid and the source column had a valid prompt; ``necessity`` corrupts valid entries only
(its ``"mean"`` is the mean over valid prompts). With equal span lengths every entry is valid and
the results are those of unmasked positions exactly. The single-token sets (``input_first``,
``input_last``, ``answers``, ``answer_last``, ``separators``, ``delimiters``) are never masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["KINDS", "SET_NAMES", "Positioned", "PositionSet", "check_batch", "resolve", "masked_mean"]

#: Single-token kinds, one column per demo (``"final"``: one column).
KINDS = ("answer", "answer_last", "separator", "delimiter", "input_first", "input_last", "final")
_ROLES = ("input", "sep", "answer", "delim")
_SINGLE = re.compile(r"^(answer|answer_last|separator|delimiter|input_first|input_last)_(-?\d+)$")
_ROLE = re.compile(r"^demo_(-?\d+)\.(input|sep|answer|delim)\[(\d+)\]$")
_DEMO = re.compile(r"^demo_(-?\d+)$")
_KIND_SETS = {"answers": "answer", "answer": "answer", "answer_last": "answer_last", "separators": "separator",
              "separator": "separator", "delimiters": "delimiter", "delimiter": "delimiter",
              "input_first": "input_first", "input_last": "input_last"}
_ROLE_SETS = {"inputs": ("input",), "input_tokens": ("input",), "answer_tokens": ("answer",), "demo_tokens": _ROLES}
SET_NAMES = (*_KIND_SETS, *_ROLE_SETS, "last_demo_token", "query", "final")


class Positioned:
    """The position language of a batch of prompts with exact token spans; ``PromptBatch`` is one.

    A subclass holds the spans the language reads (``[start, end)`` token indices): ``input_spans``
    and ``answer_spans`` [batch, n_demos, 2], ``query_spans`` [batch, 2], ``final_positions`` [batch]
    (the last real token), ``n_demos`` and ``variant``. This class adds the positions computed from
    them: ``positions(spec)``, ``kind_positions(kind)`` and the per-demo single-token positions.
    """

    input_spans: Int[Tensor, "batch n_demos 2"]
    answer_spans: Int[Tensor, "batch n_demos 2"]
    query_spans: Int[Tensor, "batch 2"]
    final_positions: Int[Tensor, "batch"]
    n_demos: int
    variant: str

    @property
    def answer_positions(self) -> Int[Tensor, "batch n_demos"]:
        """First token of each demo answer (the label word): ``answer_spans[..., 0]``."""
        return self.answer_spans[..., 0]

    @property
    def separator_positions(self) -> Int[Tensor, "batch n_demos"]:
        """The token just before each demo answer, whose next-token prediction is that answer."""
        return self.answer_spans[..., 0] - 1

    @property
    def delimiter_positions(self) -> Int[Tensor, "batch n_demos"]:
        """The first token after each demo answer: ``answer_spans[..., 1]``."""
        return self.answer_spans[..., 1]

    def positions(self, spec: str | Sequence[str]) -> PositionSet:
        """The one position language: exact token positions of ``spec`` in every prompt, as a
        ``PositionSet`` (``positions`` [batch, n], the role name of each column, and a validity
        ``mask`` [batch, n] for multi-token spans); ``resolve(self, spec)``.

        ``spec``: a kind (``"answers"``, ``"separators"``, ``"query"``...), one position
        (``"answer_3"``, ``"answer_-1"``, ``"demo_2.input[0]"``), every token of a role
        (``"inputs"``, ``"answer_tokens"``, ``"demo_tokens"``, ``"demo_1"``), or a union (a list,
        or names joined by ``+``)."""
        return resolve(self, spec)

    def kind_positions(self, kind: str) -> Int[Tensor, "batch n"]:
        """Single-token positions of one kind, one column per demo (``"final"``: one column):
        ``"answer"`` / ``"answer_last"``: first / last token of each demo answer;
        ``"input_first"`` / ``"input_last"`` likewise for inputs; ``"separator"``, ``"delimiter"``.
        The building block of ``positions(spec)``; analyses use ``positions``."""
        table = {
            "answer": self.answer_positions,
            "answer_last": self.answer_spans[..., 1] - 1,
            "separator": self.separator_positions,
            "delimiter": self.delimiter_positions,
            "input_first": self.input_spans[..., 0],
            "input_last": self.input_spans[..., 1] - 1,
            "final": self.final_positions[:, None],
        }
        if kind not in table:
            raise ValueError(f"position kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return table[kind]


def check_batch(batch: Positioned, arg: str = "batch") -> Positioned:
    """``batch`` if it is a non-empty ``PromptBatch`` (a ``Positioned`` batch); else a clear error naming ``arg``."""
    if not isinstance(batch, Positioned):
        raise TypeError(f"{arg} must be a PromptBatch (build one with build_prompts), got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{arg} is empty")
    return batch


def _demo_index(batch: Positioned, k: int, name: str) -> int:
    n = batch.n_demos
    if not -n <= k < n:
        raise ValueError(
            f"positions: {name!r} is outside the prompt: the batch has {n} demos (valid k: {-n}..{n - 1})"
            if n else f"positions: {name!r} needs demos but the batch has none (variant {batch.variant!r})"
        )
    return k % n


def _role_span(batch: Positioned, i: int, role: str) -> tuple[Tensor, Tensor]:
    """[start, end) of one role of demo i in every prompt."""
    inp, ans = batch.input_spans[:, i], batch.answer_spans[:, i]
    nxt = batch.input_spans[:, i + 1, 0] if i + 1 < batch.n_demos else batch.query_spans[:, 0]
    return {"input": (inp[:, 0], inp[:, 1]), "sep": (inp[:, 1], ans[:, 0]),
            "answer": (ans[:, 0], ans[:, 1]), "delim": (ans[:, 1], nxt)}[role]


def _role_tokens(batch: Positioned, i: int, role: str) -> tuple[Tensor, list[str], Tensor]:
    """Every token of one role of demo i, aligned by offset from the span start: positions and
    mask [batch, longest span] (masked entries hold 0), names ``demo_i.role[o]``."""
    start, end = _role_span(batch, i, role)
    offsets = torch.arange(int((end - start).max()))
    mask = offsets < (end - start)[:, None]
    return torch.where(mask, start[:, None] + offsets, 0), [f"demo_{i}.{role}[{o}]" for o in offsets.tolist()], mask


def _full(p: Tensor) -> Tensor:
    return torch.ones(p.shape, dtype=torch.bool)


def _resolve_one(batch: Positioned, name: str) -> tuple[Tensor, list[str], Tensor]:
    if name in _KIND_SETS:
        kind = _KIND_SETS[name]
        if batch.n_demos == 0:
            raise ValueError(f"positions {name!r} needs demos but the batch has none (variant {batch.variant!r})")
        p = batch.kind_positions(kind)
        return p, [f"{kind}_{i}" for i in range(batch.n_demos)], _full(p)
    if name in ("query", "final"):  # the same token; named as asked
        return batch.final_positions[:, None], [name], _full(batch.final_positions[:, None])
    if name == "last_demo_token":
        if batch.n_demos == 0:
            raise ValueError("positions 'last_demo_token' needs demos but the batch has none")
        return batch.query_spans[:, :1] - 1, ["last_demo_token"], _full(batch.query_spans[:, :1])
    if name in _ROLE_SETS or _DEMO.match(name):
        if batch.n_demos == 0:
            raise ValueError(f"positions {name!r} needs demos but the batch has none")
        m = _DEMO.match(name)
        demos = [_demo_index(batch, int(m.group(1)), name)] if m else range(batch.n_demos)
        roles = _ROLES if m else _ROLE_SETS[name]
        parts = [_role_tokens(batch, i, r) for i in demos for r in roles]
        return (torch.cat([p for p, _, _ in parts], 1), [n for _, ns, _ in parts for n in ns],
                torch.cat([v for _, _, v in parts], 1))
    if m := _SINGLE.match(name):
        kind, i = m.group(1), _demo_index(batch, int(m.group(2)), name)
        p = batch.kind_positions(kind)[:, i : i + 1]
        return p, [f"{kind}_{i}"], _full(p)
    if m := _ROLE.match(name):
        i, role, o = _demo_index(batch, int(m.group(1)), name), m.group(2), int(m.group(3))
        start, end = _role_span(batch, i, role)
        valid = o < end - start
        if not valid.any():
            raise ValueError(f"positions: {name!r} is outside the prompt: the {role} of demo {i} has at most "
                             f"{int((end - start).max())} token(s) in every prompt")
        return torch.where(valid, start + o, 0)[:, None], [f"demo_{i}.{role}[{o}]"], valid[:, None]
    raise ValueError(
        f"unknown position set {name!r}; expected one of {', '.join(SET_NAMES)}, or a single position "
        "like answer_3, answer_last_0, separator_-1, delimiter_0, input_first_2, input_last_2, demo_1, "
        "demo_1.input[0]"
    )


def _spec_items(spec: str | Sequence[str]) -> list[str]:
    if isinstance(spec, str):
        if "," in spec:
            raise ValueError(f"positions {spec!r}: join position names with '+' (or pass a list), not ','")
        items = spec.split("+")
    else:
        items = list(spec)
    items = [str(s).strip() for s in items]
    if not items or any(not s for s in items):
        raise ValueError(f"positions must name at least one position set, got {spec!r}")
    return items


@dataclass(frozen=True)
class PositionSet:
    """A position set resolved in every prompt of a batch (``PromptBatch.positions(spec)``).

    positions: [batch, n] token index of column j in prompt b; 0 where ``mask`` is False
    names: the n column names (roles: ``"answer_2"``, ``"demo_0.answer[1]"``, ``"query"``)
    mask: [batch, n] False where prompt b has no token for column j (its span is shorter than the
        longest one in the batch); such entries must be neither read as data nor written
    """

    positions: Int[Tensor, "batch n"]
    names: list[str]
    mask: Bool[Tensor, "batch n"]

    @property
    def ragged(self) -> bool:
        """Whether some prompt lacks some column (span lengths differ across prompts)."""
        return not bool(self.mask.all())

    def column(self, name: str) -> int:
        """Index of the column called ``name``."""
        if name not in self.names:
            raise ValueError(f"no column {name!r} in this position set (columns: {', '.join(self.names)})")
        return self.names.index(name)


def resolve(batch: Positioned, spec: str | Sequence[str]) -> PositionSet:
    """Exact token positions of a position set in every prompt: a ``PositionSet`` (positions
    ``[batch, n]``, the name of each column, and a validity mask ``[batch, n]`` for multi-token
    spans of different lengths; see the module docstring). Repeated names are kept once; two
    different names on the same token of a prompt, or a position outside a prompt, raise
    ``ValueError``."""
    check_batch(batch)
    cols, names, valid = [], [], []
    for item in _spec_items(spec):
        p, ns, v = _resolve_one(batch, item)
        for j, n in enumerate(ns):
            if n not in names:
                cols.append(p[:, j])
                names.append(n)
                valid.append(v[:, j])
    if not cols:
        raise ValueError(f"positions {spec!r}: the set has no token in any prompt")
    pos, mask = torch.stack(cols, 1).long(), torch.stack(valid, 1).bool()
    keyed = torch.where(mask, pos, -1 - torch.arange(pos.shape[1]))  # masked entries never collide
    srt, order = keyed.sort(1)
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if dup.any():
        b, j = (int(v) for v in dup.nonzero()[0])
        a, c = names[int(order[b, j])], names[int(order[b, j + 1])]
        raise ValueError(f"positions {spec!r}: {a!r} and {c!r} are the same token ({int(srt[b, j])}) in prompt {b}")
    if (mask & ((pos < 0) | (pos > batch.final_positions[:, None]))).any():
        raise ValueError(f"positions {spec!r}: a position lies outside its prompt")
    return PositionSet(pos, names, mask)


def masked_mean(values: Float[Tensor, "... batch n d"], mask: Bool[Tensor, "batch n"]) -> tuple[Tensor, Tensor]:
    """Mean over the batch axis (-3) of each column j over the prompts valid there:
    ``sum_b mask[b, j] * values[..., b, j, :] / sum_b mask[b, j]``, and which columns have a valid
    prompt ``[n]``. A column without one gets zeros. Columns valid in every prompt are
    ``values.mean(-3)`` exactly (the same reduction), so an unmasked set gives unmasked results."""
    out = values.mean(-3)
    has = mask.any(0)
    for j in (~mask.all(0)).nonzero()[:, 0].tolist():
        rows = mask[:, j].to(values.device)
        out[..., j, :] = values[..., j, :][..., rows, :].mean(-2) if has[j] else 0.0
    return out, has


