"""Multi-position interchange and necessity tests (Cheng & Zhang 2026, METHODS.md section 5).

*Interchange*: record the residual stream of task-A (source) prompts at the input of block ``l``
(``blocks.{l}.hook_resid_pre``) at a set of positions, average it per position over the source
prompts, write it over the same positions (matched by role) of every task-B (target) prompt and
read the prediction at the target's final position. The prediction is scored as *transfer*
(first token of A(query)), *preserve* (first token of B(query), the gold token) or *neither*.

*Necessity*: corrupt a position set (Gaussian noise, zero or mean ablation) at block ``l`` and
measure the accuracy drop. Published: the query position is necessary, no single demo position
is; a single demo position transfers nothing while all demo tokens together transfer the task.

Position sets (``resolve_positions``), resolved per prompt from the ``PromptBatch``'s exact spans,
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
``query``              the final position (also ``final``)
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
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.interventions import ablate_hook, check_layer, noise_hook, read_resid, replace_hook, resid_name, run_final_logits
from icl_circuits.core.metrics import wilson
from icl_circuits.core.models import model_info
from icl_circuits.core.prompts import PromptBatch, TokenizationBoundaryError, _render, _token_span, _tokenize, build_prompts
from icl_circuits.core.results import Result
from icl_circuits.core.tasks import CategorizationTask, Task, get_task
from icl_circuits.methods.vectors import SweepResult

OUTCOMES = ("transfer", "preserve", "neither")
Control = Literal["none", "norm_matched_noise", "shuffled_positions"]
_ROLES = ("input", "sep", "answer", "delim")
_SINGLE = re.compile(r"^(answer|answer_last|separator|delimiter|input_first|input_last)_(-?\d+)$")
_ROLE = re.compile(r"^demo_(-?\d+)\.(input|sep|answer|delim)\[(\d+)\]$")
_DEMO = re.compile(r"^demo_(-?\d+)$")
_KIND_SETS = {"answers": "answer", "answer": "answer", "answer_last": "answer_last", "separators": "separator",
              "separator": "separator", "delimiters": "delimiter", "delimiter": "delimiter",
              "input_first": "input_first", "input_last": "input_last"}
_ROLE_SETS = {"inputs": ("input",), "input_tokens": ("input",), "answer_tokens": ("answer",), "demo_tokens": _ROLES}
SET_NAMES = (*_KIND_SETS, *_ROLE_SETS, "last_demo_token", "query", "final")
_CACHE_BYTES = 2**30  # prefix reuse when the cached residuals fit in 1 GiB


# ----------------------------------------------------------------------------- positions
def _check_batch(batch: PromptBatch, arg: str = "batch") -> None:
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"{arg} must be a PromptBatch, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{arg} is empty")


def _demo_index(batch: PromptBatch, k: int, name: str) -> int:
    n = batch.n_demos
    if not -n <= k < n:
        raise ValueError(
            f"positions: {name!r} is outside the prompt: the batch has {n} demos (valid k: {-n}..{n - 1})"
            if n else f"positions: {name!r} needs demos but the batch has none (variant {batch.variant!r})"
        )
    return k % n


def _role_span(batch: PromptBatch, i: int, role: str) -> tuple[Tensor, Tensor]:
    """[start, end) of one role of demo i in every prompt."""
    inp, ans = batch.input_spans[:, i], batch.answer_spans[:, i]
    nxt = batch.input_spans[:, i + 1, 0] if i + 1 < batch.n_demos else batch.query_spans[:, 0]
    return {"input": (inp[:, 0], inp[:, 1]), "sep": (inp[:, 1], ans[:, 0]),
            "answer": (ans[:, 0], ans[:, 1]), "delim": (ans[:, 1], nxt)}[role]


def _role_tokens(batch: PromptBatch, i: int, role: str) -> tuple[Tensor, list[str], Tensor]:
    """Every token of one role of demo i, aligned by offset from the span start: positions and
    mask [batch, longest span] (masked entries hold 0), names ``demo_i.role[o]``."""
    start, end = _role_span(batch, i, role)
    offsets = torch.arange(int((end - start).max()))
    mask = offsets < (end - start)[:, None]
    return torch.where(mask, start[:, None] + offsets, 0), [f"demo_{i}.{role}[{o}]" for o in offsets.tolist()], mask


def _full(p: Tensor) -> Tensor:
    return torch.ones(p.shape, dtype=torch.bool)


def _resolve_one(batch: PromptBatch, name: str) -> tuple[Tensor, list[str], Tensor]:
    if name in _KIND_SETS:
        kind = _KIND_SETS[name]
        if batch.n_demos == 0:
            raise ValueError(f"positions {name!r} needs demos but the batch has none (variant {batch.variant!r})")
        p = batch.positions(kind)
        return p, [f"{kind}_{i}" for i in range(batch.n_demos)], _full(p)
    if name in ("query", "final"):
        return batch.final_positions[:, None], ["query"], _full(batch.final_positions[:, None])
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
        p = batch.positions(kind)[:, i : i + 1]
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
    """A position set resolved in every prompt of a batch (``resolve_positions``).

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


def resolve_positions(batch: PromptBatch, spec: str | Sequence[str]) -> PositionSet:
    """Exact token positions of a position set in every prompt: a ``PositionSet`` (positions
    ``[batch, n]``, the name of each column, and a validity mask ``[batch, n]`` for multi-token
    spans of different lengths; see the module docstring). Repeated names are kept once; two
    different names on the same token of a prompt, or a position outside a prompt, raise
    ``ValueError``."""
    _check_batch(batch)
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


# ----------------------------------------------------------------------------- answers
def _as_task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def task_answer_tokens(batch: PromptBatch, task: Task | str) -> Int[Tensor, "batch"]:
    """First token of ``task`` applied to each prompt's query, rendered as that prompt's answer
    (same template and demos, so the token is exactly what the model would have to produce);
    ``-1`` where the task is undefined on the query. Categorization tasks use the prompt's own
    label binding (``batch.label_words``); a prompt without one (or with another number of
    classes) gets ``-1``."""
    _check_batch(batch)
    task = _as_task(task)
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
        r = _render(batch.template, batch.demos[i], (q, y))
        ids, offsets = _tokenize(batch.tokenizer, r.text)
        try:
            out.append(ids[_token_span(offsets, r.text, *r.answer_chars[-1], "answer")[0]])
        except TokenizationBoundaryError:
            out.append(-1)
    return torch.tensor(out, dtype=torch.long)


def paired_batches(
    model: Any, source: Task | str, target: Task | str, n_prompts: int, n_demos: int, *,
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


# ----------------------------------------------------------------------------- shared machinery
def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    out = [check_layer(model, l, arg="layers") for l in layers]
    if not out:
        raise ValueError("layers must name at least one layer")
    return out


def _layer_sweep(model, batch, layers, hook_for, reduce, *, batch_size: int, progress: bool, desc: str) -> Tensor:
    """``reduce(final logits)`` with ``hook_for(i, rows)`` at ``resid_name(layers[i])``, per layer.
    The clean residual at block l is cached once so each patched run resumes at block l."""
    n = model.cfg.n_layers
    early = [l for l in layers if l < n]
    size = len(early) * len(batch) * batch.tokens.shape[1] * model.cfg.d_model * 4
    cached = read_resid(model, batch, None, early, batch_size=batch_size) if early and size <= _CACHE_BYTES else None
    out = []
    for i, l in enumerate(tqdm(layers, desc=desc, disable=not progress)):
        make = lambda rows, mb, i=i, l=l: [(resid_name(model, l), hook_for(i, rows))]  # noqa: E731
        if l < n and cached is not None:
            logits = run_final_logits(model, batch, make, batch_size=batch_size, start_at_layer=l,
                                      resid=cached[early.index(l)])
        else:
            logits = run_final_logits(model, batch, make, batch_size=batch_size)
        out.append(reduce(logits))
    return torch.stack(out)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def _rates(hits: Bool[Tensor, "layer batch"], valid: Bool[Tensor, "batch"]) -> tuple[list, Tensor]:
    n = int(valid.sum())
    ks = (hits & valid).sum(-1)
    return [wilson(int(k), n) for k in ks.reshape(-1)], ks


# ----------------------------------------------------------------------------- interchange
@dataclass(frozen=True)
class InterchangeResult(Result):
    """Transfer / preserve / neither rates per layer of one interchange.

    rates, low, high, counts: [outcome=3, layer] (outcomes ``OUTCOMES``; Wilson 95% intervals over
    the ``valid`` prompts); predictions: [layer, batch] argmax token at the target's final position;
    clean_predictions: [batch] without intervention; transfer_tokens / preserve_tokens: [batch]
    first tokens of A(query) / B(query) (-1: undefined); valid: [batch] prompts that are scored.
    ``transfer`` and ``preserve`` are not exclusive when A(query) and B(query) share their first
    token (only possible with ``exclude_ambiguous=False``); ``neither`` is "not transfer and not
    preserve". baseline: the three rates of the clean target run. logits: [layer, batch, d_vocab]
    (only with ``return_logits=True``).
    """

    rates: Float[Tensor, "outcome layer"]
    low: Float[Tensor, "outcome layer"]
    high: Float[Tensor, "outcome layer"]
    counts: Int[Tensor, "outcome layer"]
    predictions: Int[Tensor, "layer batch"]
    clean_predictions: Int[Tensor, "batch"]
    transfer_tokens: Int[Tensor, "batch"]
    preserve_tokens: Int[Tensor, "batch"]
    valid: Bool[Tensor, "batch"]
    layers: list[int]
    positions: list[str]
    position_set: str
    source_task: str
    target_task: str
    model_name: str
    n_demos: int
    per_prompt_source: bool = False
    control: str = "none"
    baseline: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    logits: Tensor | None = None

    def rate(self, outcome: str = "transfer") -> Float[Tensor, "layer"]:
        """The rate of one outcome per layer."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        return self.rates[OUTCOMES.index(outcome)]

    @property
    def n(self) -> int:
        return int(self.valid.sum())

    def to_dataframe(self) -> pd.DataFrame:
        rows = [
            {"layer": l, "outcome": o, "value": float(self.rates[j, i]), "low": float(self.low[j, i]),
             "high": float(self.high[j, i]), "k": int(self.counts[j, i]), "n": self.n,
             "clean": self.baseline.get(o), "position_set": self.position_set, "source_task": self.source_task,
             "target_task": self.target_task, "control": self.control, "model": self.model_name}
            for j, o in enumerate(OUTCOMES) for i, l in enumerate(self.layers)
        ]
        return pd.DataFrame(rows)


def _spec_name(spec: str | Sequence[str]) -> str:
    return spec if isinstance(spec, str) else "+".join(map(str, spec))


def interchange(
    model: Any,
    source_batch: PromptBatch,
    target_batch: PromptBatch,
    positions: str | Sequence[str] = "answers",
    layers: Sequence[int] | None = None,
    source_task: Task | str | None = None,
    target_task: Task | str | None = None,
    *,
    per_prompt_source: bool = False,
    control: Control = "none",
    exclude_ambiguous: bool = True,
    return_logits: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> InterchangeResult:
    """Cheng & Zhang's interchange at each layer in ``layers`` (default 0..n_layers-1; block inputs).

    v_l[j] = mean over source prompts s of resid_l[s, pos_s[s, j]] (``per_prompt_source=True``:
    source prompt i's own value, paired with target prompt i); then every target prompt t runs with
    resid_l[t, pos_t[t, j]] <- v_l[j] for all columns j of the position set, and its prediction
    argmax logits[t, final_t] is scored against A(query_t) (``source_task``, default the source
    batch's task) and B(query_t) (``target_task``, default the target's gold answer tokens).

    Prompts where A is undefined on the query, or (``exclude_ambiguous``) where A and B give the
    same first token, are not scored (``valid``). Controls (``control``): ``"norm_matched_noise"``
    replaces every source vector by a random direction (seeded) of the same norm;
    ``"shuffled_positions"`` assigns the source columns to a derangement of the target columns.
    For a third-task control pass another task's batch as ``source_batch`` and the task of interest
    as ``source_task`` (or use ``interchange_controls``).

    Multi-token spans of different lengths (``PositionSet.mask``): columns are matched by role name,
    the mean v_l[j] is over the source prompts that have column j, and resid_l[t, pos_t[t, j]] is
    written only where target t has column j and some source prompt had it (per prompt: where
    both prompt i's have it); ``meta["written_fraction"]`` is the share of target entries written.
    """
    _check_batch(source_batch, "source_batch")
    _check_batch(target_batch, "target_batch")
    if source_batch.n_demos != target_batch.n_demos:
        raise ValueError(f"source and target batches must have the same number of demos, got "
                         f"{source_batch.n_demos} and {target_batch.n_demos}")
    if source_batch.template != target_batch.template:
        raise ValueError(f"source and target batches must use the same template, got "
                         f"{source_batch.template} and {target_batch.template}")
    if per_prompt_source and len(source_batch) != len(target_batch):
        raise ValueError(f"per_prompt_source=True pairs source prompt i with target prompt i: the batches "
                         f"must be the same size, got {len(source_batch)} and {len(target_batch)}")
    if control not in ("none", "norm_matched_noise", "shuffled_positions"):
        raise ValueError(f"control must be 'none', 'norm_matched_noise' or 'shuffled_positions', got {control!r}")
    layers = _layers(model, layers)
    src, tgt = resolve_positions(source_batch, positions), resolve_positions(target_batch, positions)
    names = tgt.names

    values = read_resid(model, source_batch, src.positions, layers, batch_size=batch_size)  # [layer, src, n, d]
    src_ok = src.mask
    if src.names != names:  # spans of different longest length in the two batches: match columns by role
        cols = [src.names.index(n) if n in src.names else -1 for n in names]
        idx = torch.tensor([max(c, 0) for c in cols], dtype=torch.long)
        values, src_ok = values[:, :, idx], src.mask[:, idx] & torch.tensor([c >= 0 for c in cols])
    if per_prompt_source:
        has_src = src_ok
    else:
        mean, has = masked_mean(values, src_ok)
        values, has_src = mean[:, None], has[None]
    if control == "norm_matched_noise":
        g = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
        values = g / g.norm(dim=-1, keepdim=True) * values.norm(dim=-1, keepdim=True)
    elif control == "shuffled_positions":
        if len(names) < 2:
            raise ValueError("control='shuffled_positions' needs a position set of at least 2 positions")
        perm = torch.as_tensor(_derangement(len(names), np.random.default_rng(seed)))
        values, has_src = values[:, :, perm], has_src[:, perm]
    written = tgt.mask & has_src  # [target, n]: where a target position receives a source value
    if not written.any():
        raise ValueError(f"positions {_spec_name(positions)!r}: no target position has a source value "
                         "(the source prompts have no token in any column the target prompts have)")
    write_mask = None if written.all() else written

    a_task = source_task if source_task is not None else source_batch.task
    ta = task_answer_tokens(target_batch, a_task)
    tb = target_batch.answer_tokens.clone() if target_task is None else task_answer_tokens(target_batch, target_task)
    valid = (ta >= 0) & (tb >= 0)
    if exclude_ambiguous:
        valid &= ta != tb
    if not valid.any():
        raise ValueError(
            f"no target prompt can be scored: source task {_as_task(a_task).name!r} is undefined on every query "
            "or gives the same first token as the target task (use paired_batches, or exclude_ambiguous=False)"
        )

    def hook_for(i: int, rows: slice):
        v = values[i][rows] if per_prompt_source else values[i, 0]
        return replace_hook(tgt.positions[rows], v, mask=None if write_mask is None else write_mask[rows])

    kept: list[Tensor] = []

    def reduce(logits: Tensor) -> Tensor:
        if return_logits:
            kept.append(logits)
        return logits.argmax(-1)

    preds = _layer_sweep(model, target_batch, layers, hook_for, reduce, batch_size=batch_size, progress=progress,
                         desc=f"interchange {_spec_name(positions)}")
    clean = run_final_logits(model, target_batch, batch_size=batch_size).argmax(-1)

    def outcome_hits(p: Tensor) -> Tensor:
        t, s = p == ta, p == tb
        return torch.stack([t, s, ~(t | s)])

    stats, counts = _rates(outcome_hits(preds), valid)
    clean_stats, _ = _rates(outcome_hits(clean[None])[:, 0], valid)
    shape = (len(OUTCOMES), len(layers))
    return InterchangeResult(
        model_info=model_info(model),
        rates=torch.tensor([r.value for r in stats]).reshape(shape),
        low=torch.tensor([r.low for r in stats]).reshape(shape),
        high=torch.tensor([r.high for r in stats]).reshape(shape),
        counts=counts.long(), predictions=preds.long(), clean_predictions=clean.long(),
        transfer_tokens=ta, preserve_tokens=tb, valid=valid, layers=layers, positions=names,
        position_set=_spec_name(positions), source_task=_as_task(a_task).name,
        target_task=target_batch.task if target_task is None else _as_task(target_task).name,
        model_name=str(model.cfg.model_name), n_demos=target_batch.n_demos,
        per_prompt_source=per_prompt_source, control=control,
        baseline={o: r.value for o, r in zip(OUTCOMES, clean_stats)},
        meta={"source_prompts_task": source_batch.task, "n_source": len(source_batch),
              "n_target": len(target_batch), "exclude_ambiguous": exclude_ambiguous, "seed": seed,
              "written_fraction": float(written.float().mean())},
        logits=torch.stack(kept) if return_logits else None,
    )


def interchange_controls(
    model: Any, source_batch: PromptBatch, target_batch: PromptBatch, third_batch: PromptBatch,
    positions: str | Sequence[str] = "demo_tokens", layers: Sequence[int] | None = None, *,
    seed: int = 0, **kwargs: Any,
) -> dict[str, InterchangeResult]:
    """The interchange and its three controls, all scored against the source batch's task:
    ``"third_task"`` (``third_batch``, another task's prompts, as the source), ``"norm_matched_noise"``
    and ``"shuffled_positions"`` (skipped for a single position)."""
    out = {"interchange": interchange(model, source_batch, target_batch, positions, layers, seed=seed, **kwargs)}
    out["third_task"] = interchange(model, third_batch, target_batch, positions, layers,
                                    source_task=source_batch.task, seed=seed, **kwargs)
    out["norm_matched_noise"] = interchange(model, source_batch, target_batch, positions, layers,
                                            control="norm_matched_noise", seed=seed, **kwargs)
    if len(out["interchange"].positions) > 1:
        out["shuffled_positions"] = interchange(model, source_batch, target_batch, positions, layers,
                                                control="shuffled_positions", seed=seed, **kwargs)
    return out


# ----------------------------------------------------------------------------- necessity
@dataclass(frozen=True)
class NecessityResult(SweepResult):
    """Accuracy per layer with a position set corrupted (a ``SweepResult``: values, per_prompt,
    Wilson low/high, baseline = clean accuracy) plus the position names; ``drop = baseline - values``."""

    positions: list = field(default_factory=list)
    position_set: str = ""

    @property
    def drop(self) -> Float[Tensor, "layer"]:
        return self.baseline - self.values

    def to_dataframe(self) -> pd.DataFrame:
        df = super().to_dataframe()
        df["drop"] = self.drop.tolist()
        df["drop_low"], df["drop_high"] = (self.baseline - self.high).tolist(), (self.baseline - self.low).tolist()
        df["position_set"] = self.position_set
        return df


def necessity(
    model: Any,
    batch: PromptBatch,
    positions: str | Sequence[str] = "query",
    layers: Sequence[int] | None = None,
    how: Literal["noise", "zero", "mean"] = "noise",
    noise_scale: float = 1.0,
    relative: bool = True,
    seed: int = 0,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> NecessityResult:
    """Accuracy (argmax = gold first token) with the residual at the input of block l corrupted at
    ``positions``, for each l in ``layers`` (default 0..n_layers-1).

    ``how="noise"``: h <- h + noise_scale * s * eps, eps ~ N(0, I), with s = ||h|| / sqrt(d_model)
    (``relative=True``: noise_scale 1 is noise as large as the activation) or s = 1
    (``relative=False``: noise_scale is the absolute standard deviation; Cheng & Zhang added
    unscaled Gaussian noise). ``"zero"``: h <- 0. ``"mean"``: h <- mean over the batch's prompts of
    the activation at that position (same column, same layer). For multi-token spans of different
    lengths only the valid entries of the set are corrupted and the mean is over the prompts valid
    in that column (``PositionSet.mask``).
    """
    _check_batch(batch)
    if how not in ("noise", "zero", "mean"):
        raise ValueError(f"how must be 'noise', 'zero' or 'mean', got {how!r}")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be non-negative, got {noise_scale!r}")
    layers = _layers(model, layers)
    ps = resolve_positions(batch, positions)
    pos, names = ps.positions, ps.names
    means = masked_mean(read_resid(model, batch, pos, layers, batch_size=batch_size), ps.mask)[0] if how == "mean" else None

    def hook_for(i: int, rows: slice):
        m = ps.mask[rows] if ps.ragged else None
        if how == "noise":
            return noise_hook(pos[rows], noise_scale, seed=seed * 1_000_003 + 7919 * i + rows.start, relative=relative,
                              mask=m)
        return ablate_hook(pos[rows], how, None if means is None else means[i], mask=m)

    hits = _layer_sweep(model, batch, layers, hook_for, lambda lg: lg.argmax(-1) == batch.answer_tokens,
                        batch_size=batch_size, progress=progress, desc=f"necessity {_spec_name(positions)}")
    clean = run_final_logits(model, batch, batch_size=batch_size).argmax(-1) == batch.answer_tokens
    rates = [wilson(int(h.sum()), h.numel()) for h in hits]
    return NecessityResult(
        model_info=model_info(model),
        values=hits.float().mean(1), per_prompt=hits.float(), low=torch.tensor([r.low for r in rates]),
        high=torch.tensor([r.high for r in rates]), layers=layers, metric="accuracy", method=f"necessity:{how}",
        task=batch.task, model_name=str(model.cfg.model_name), baseline=float(clean.float().mean()),
        meta={"how": how, "noise_scale": noise_scale, "relative": relative, "seed": seed, "n_demos": batch.n_demos},
        positions=names, position_set=_spec_name(positions),
    )
