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
``separator_k``        the token just before demo k's answer; ``delimiter_k``: the first token
                       after it; ``input_first_k`` / ``input_last_k``: first / last input token
``answers``            every ``answer_k`` (also ``answer``); likewise ``separators``,
                       ``delimiters``, ``input_first``, ``input_last``
``inputs``             every token of every demo input (``demo_k.input[o]``)
``demo_k``             every token of demo k: ``demo_k.input[o]``, ``demo_k.sep[o]`` (input end
                       to answer start), ``demo_k.answer[o]``, ``demo_k.delim[o]`` (answer end
                       to the next input: text after y, the joiner, the next example's text
                       before x)
``demo_tokens``        every token of every demo (all ``demo_k``)
``last_demo_token``    the token right before the query's input (last token of the last demo)
``query``              the final position (also ``final``)
====================  ==========================================================================

A union is a list of names or a string joined by ``+`` (``"answer_0+answer_-1"``).

Multi-token fields: a role-and-offset name (``demo_2.input[1]``) is only well defined when that
field has the same number of tokens in every prompt. The sets ``inputs``, ``demo_k`` and
``demo_tokens`` therefore require equal span lengths per demo and role across the batch (and
between source and target) and raise a ``ValueError`` naming the span otherwise; use the
single-token sets (``input_first``, ``input_last``, ``answers``, ``separators``, ``delimiters``)
for tasks whose inputs vary in length.
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

from .interventions import ablate_hook, check_layer, noise_hook, read_resid, replace_hook, resid_name, run_final_logits
from .metrics import wilson
from .prompts import PromptBatch, TokenizationBoundaryError, _render, _token_span, _tokenize, build_prompts
from .results import Result
from .tasks import CategorizationTask, Task, get_task
from .vectors import SweepResult

OUTCOMES = ("transfer", "preserve", "neither")
Control = Literal["none", "norm_matched_noise", "shuffled_positions"]
_ROLES = ("input", "sep", "answer", "delim")
_SINGLE = re.compile(r"^(answer|separator|delimiter|input_first|input_last)_(-?\d+)$")
_ROLE = re.compile(r"^demo_(-?\d+)\.(input|sep|answer|delim)\[(\d+)\]$")
_DEMO = re.compile(r"^demo_(-?\d+)$")
_KIND_SETS = {"answers": "answer", "answer": "answer", "separators": "separator", "separator": "separator",
              "delimiters": "delimiter", "delimiter": "delimiter", "input_first": "input_first",
              "input_last": "input_last"}
SET_NAMES = (*_KIND_SETS, "inputs", "demo_tokens", "last_demo_token", "query", "final")
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


def _role_tokens(batch: PromptBatch, i: int, role: str, spec: str) -> tuple[Tensor, list[str]]:
    start, end = _role_span(batch, i, role)
    lengths = sorted({int(v) for v in end - start})
    if len(lengths) != 1:
        raise ValueError(
            f"positions {spec!r}: the {role} of demo {i} spans {lengths} tokens in different prompts; "
            "multi-token spans must have the same length in every prompt to map positions by role. "
            "Use single-token sets instead (input_first, input_last, answers, separators, delimiters)."
        )
    offsets = torch.arange(lengths[0])
    return start[:, None] + offsets, [f"demo_{i}.{role}[{o}]" for o in range(lengths[0])]


def _resolve_one(batch: PromptBatch, name: str) -> tuple[Tensor, list[str]]:
    if name in _KIND_SETS:
        kind = _KIND_SETS[name]
        if batch.n_demos == 0:
            raise ValueError(f"positions {name!r} needs demos but the batch has none (variant {batch.variant!r})")
        return batch.positions(kind), [f"{kind}_{i}" for i in range(batch.n_demos)]
    if name in ("query", "final"):
        return batch.final_positions[:, None], ["query"]
    if name == "last_demo_token":
        if batch.n_demos == 0:
            raise ValueError("positions 'last_demo_token' needs demos but the batch has none")
        return batch.query_spans[:, :1] - 1, ["last_demo_token"]
    if name in ("inputs", "demo_tokens") or _DEMO.match(name):
        if batch.n_demos == 0:
            raise ValueError(f"positions {name!r} needs demos but the batch has none")
        m = _DEMO.match(name)
        demos = [_demo_index(batch, int(m.group(1)), name)] if m else range(batch.n_demos)
        roles = ("input",) if name == "inputs" else _ROLES
        parts = [_role_tokens(batch, i, r, name) for i in demos for r in roles]
        return torch.cat([p for p, _ in parts], 1), [n for _, ns in parts for n in ns]
    if m := _SINGLE.match(name):
        kind, i = m.group(1), _demo_index(batch, int(m.group(2)), name)
        return batch.positions(kind)[:, i : i + 1], [f"{kind}_{i}"]
    if m := _ROLE.match(name):
        i, role, o = _demo_index(batch, int(m.group(1)), name), m.group(2), int(m.group(3))
        start, end = _role_span(batch, i, role)
        if (o >= end - start).any():
            raise ValueError(f"positions: {name!r} is outside the prompt: the {role} of demo {i} has only "
                             f"{int((end - start).min())} token(s) in some prompts")
        return start[:, None] + o, [f"demo_{i}.{role}[{o}]"]
    raise ValueError(
        f"unknown position set {name!r}; expected one of {', '.join(SET_NAMES)}, or a single position "
        "like answer_3, separator_-1, delimiter_0, input_first_2, input_last_2, demo_1, demo_1.input[0]"
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


def resolve_positions(batch: PromptBatch, spec: str | Sequence[str]) -> tuple[Int[Tensor, "batch n"], list[str]]:
    """Exact token positions ``[batch, n]`` of a position set in every prompt, and the name of each
    column (see the module docstring for the names). Repeated names are kept once; two different
    names on the same token of a prompt, or a position outside a prompt, raise ``ValueError``."""
    _check_batch(batch)
    cols, names = [], []
    for item in _spec_items(spec):
        p, ns = _resolve_one(batch, item)
        for j, n in enumerate(ns):
            if n not in names:
                cols.append(p[:, j])
                names.append(n)
    pos = torch.stack(cols, 1).long()
    srt, order = pos.sort(1)
    dup = srt[:, 1:] == srt[:, :-1]
    if dup.any():
        b, j = (int(v) for v in dup.nonzero()[0])
        a, c = names[int(order[b, j])], names[int(order[b, j + 1])]
        raise ValueError(f"positions {spec!r}: {a!r} and {c!r} are the same token ({int(srt[b, j])}) in prompt {b}")
    if ((pos < 0) | (pos > batch.final_positions[:, None])).any():
        raise ValueError(f"positions {spec!r}: a position lies outside its prompt")
    return pos, names


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
    pos_s, names = resolve_positions(source_batch, positions)
    pos_t, names_t = resolve_positions(target_batch, positions)
    if names != names_t:
        raise ValueError(f"positions {_spec_name(positions)!r} resolve to different roles in source and target "
                         f"prompts ({names} vs {names_t}); multi-token spans must match in length")

    values = read_resid(model, source_batch, pos_s, layers, batch_size=batch_size)  # [layer, src, n, d]
    if not per_prompt_source:
        values = values.mean(1, keepdim=True)
    if control == "norm_matched_noise":
        g = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
        values = g / g.norm(dim=-1, keepdim=True) * values.norm(dim=-1, keepdim=True)
    elif control == "shuffled_positions":
        if len(names) < 2:
            raise ValueError("control='shuffled_positions' needs a position set of at least 2 positions")
        values = values[:, :, torch.as_tensor(_derangement(len(names), np.random.default_rng(seed)))]

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
        return replace_hook(pos_t[rows], v)

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
              "n_target": len(target_batch), "exclude_ambiguous": exclude_ambiguous, "seed": seed},
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
    the activation at that position (same column, same layer).
    """
    _check_batch(batch)
    if how not in ("noise", "zero", "mean"):
        raise ValueError(f"how must be 'noise', 'zero' or 'mean', got {how!r}")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be non-negative, got {noise_scale!r}")
    layers = _layers(model, layers)
    pos, names = resolve_positions(batch, positions)
    means = read_resid(model, batch, pos, layers, batch_size=batch_size).mean(1) if how == "mean" else None

    def hook_for(i: int, rows: slice):
        if how == "noise":
            return noise_hook(pos[rows], noise_scale, seed=seed * 1_000_003 + 7919 * i + rows.start, relative=relative)
        return ablate_hook(pos[rows], how, None if means is None else means[i])

    hits = _layer_sweep(model, batch, layers, hook_for, lambda lg: lg.argmax(-1) == batch.answer_tokens,
                        batch_size=batch_size, progress=progress, desc=f"necessity {_spec_name(positions)}")
    clean = run_final_logits(model, batch, batch_size=batch_size).argmax(-1) == batch.answer_tokens
    rates = [wilson(int(h.sum()), h.numel()) for h in hits]
    return NecessityResult(
        values=hits.float().mean(1), per_prompt=hits.float(), low=torch.tensor([r.low for r in rates]),
        high=torch.tensor([r.high for r in rates]), layers=layers, metric="accuracy", method=f"necessity:{how}",
        task=batch.task, model_name=str(model.cfg.model_name), baseline=float(clean.float().mean()),
        meta={"how": how, "noise_scale": noise_scale, "relative": relative, "seed": seed, "n_demos": batch.n_demos},
        positions=names, position_set=_spec_name(positions),
    )
