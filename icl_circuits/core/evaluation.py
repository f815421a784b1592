"""Running a model on a PromptBatch and scoring its answers.

- ``final_logits``: the logits at each prompt's final position (one forward).
- ``greedy_answers``: greedy decoding of the whole answer, batched with cached keys/values,
  stopped at the template's joiner or EOS (the ``exact_match`` metric).
- ``answer_logprob``: the summed log-probability of the gold answer's tokens under teacher
  forcing, one forward (the ``answer_logprob`` metric).
- ``score``: per-prompt values of any registered metric (``metrics.list_metrics()``);
  ``icl_accuracy`` and ``accuracy_by_demos`` summarize them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.runner import backend_for, final_logits, gather_positions, minibatches, unembed_resid
from icl_circuits.core.metrics import Metric, get_metric
from icl_circuits.core.prompts import PromptBatch, Template
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.types import HookedModel


# ----------------------------------------------------------------------------- whole answers: greedy
#: Tokens generated beyond the longest gold answer (in tokens) when ``max_new_tokens`` is not given.
MAX_NEW_TOKENS_MARGIN = 3


def cut_answer(text: str, template: Template) -> tuple[str, bool]:
    """The answer in a generated continuation: ``(answer, whether the joiner was reached)``.

    Leading whitespace that is not part of the joiner is dropped (BPE answers start with a space),
    the text is cut at the first occurrence of ``template.joiner``, stripped of surrounding
    whitespace, and the template's text after ``{y}`` (if any) is removed from its end.
    """
    joiner = template.joiner
    start = 0
    while start < len(text) and text[start].isspace() and text[start] not in joiner:
        start += 1
    text = text[start:]
    at = text.find(joiner)
    reached = at >= 0
    if reached:
        text = text[:at]
    text = text.strip()
    after = template.parts[2].strip()
    if after and text.endswith(after):
        text = text[: -len(after)].strip()
    return text, reached


@dataclass(frozen=True)
class GreedyAnswers(Result):
    """Greedy decoding of each prompt's answer and its exact match with the gold answer.

    correct: [batch] generated answer == reference; generated: the answer text (``cut_answer``
    of the decoded continuation); references: the gold answer as the tokenizer decodes its own
    tokens of it, stripped (equal to the gold string for lossless tokenizers); generated_ids:
    every generated token (EOS excluded); stop_reasons: "joiner", "eos" or "max_new_tokens".
    """

    correct: Bool[Tensor, "batch"]
    generated: list[str]
    references: list[str]
    generated_ids: list[list[int]]
    stop_reasons: list[str]
    max_new_tokens: int
    task: str
    template: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({
            "reference": self.references, "generated": self.generated, "correct": self.correct.tolist(),
            "stop_reason": self.stop_reasons, "n_generated": [len(g) for g in self.generated_ids],
            "metric": "exact_match", "task": self.task,
        })

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())


def default_max_new_tokens(batch: PromptBatch, margin: int = MAX_NEW_TOKENS_MARGIN) -> int:
    """Longest gold answer in tokens, plus ``margin`` (room for the joiner and other splits)."""
    return max(len(a) for a in batch.answer_token_ids) + margin


class _Stopper:
    """Decides when a row's generation ends: EOS, the joiner in the decoded text, or the budget."""

    def __init__(self, tokenizer: Any, template: Template, max_new_tokens: int):
        self.tok, self.template, self.max_new = tokenizer, template, max_new_tokens
        self.eos = getattr(tokenizer, "eos_token_id", None)

    def __call__(self, ids: list[int]) -> str | None:
        if self.eos is not None and ids[-1] == self.eos:
            return "eos"
        if cut_answer(self.tok.decode(ids), self.template)[1]:
            return "joiner"
        return "max_new_tokens" if len(ids) >= self.max_new else None

    def answer(self, ids: list[int]) -> str:
        ids = ids[:-1] if ids and self.eos is not None and ids[-1] == self.eos else ids
        return cut_answer(self.tok.decode(ids), self.template)[0]


def _last_logits(model: HookedModel, tokens: Tensor, kv_cache: Any = None) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position of ``tokens`` (placed after ``kv_cache``'s positions, which it extends)."""
    be = backend_for(model)
    resid = be.forward(tokens.to(model.cfg.device)) if kv_cache is None else be.decode(tokens, kv_cache)
    return unembed_resid(model, resid[:, -1])


@torch.no_grad()
def _greedy_cached(model: HookedModel, mb: PromptBatch, stop: _Stopper) -> tuple[list[list[int]], list[str]]:
    """All rows of ``mb`` advance one position per forward, so the cache stays rectangular and every
    token sits at its true position: prefill the first ``m = min length`` tokens, then feed, at
    position p + 1, the prompt's own token while p + 1 < its length, else its greedy prediction.
    A backend without a key/value cache decodes with the uncached reference loop."""
    lengths = mb.lengths.tolist()
    cache = backend_for(model).new_kv_cache(len(lengths))
    if cache is None:
        return _greedy_uncached(model, mb, stop)
    b, m, width = len(lengths), min(lengths), max(lengths)
    buf = torch.zeros(b, width + stop.max_new, dtype=torch.long)
    buf[:, :width] = mb.tokens[:, :width]
    logits = _last_logits(model, buf[:, :m], cache)
    gen: list[list[int]] = [[] for _ in range(b)]
    reasons: list[str | None] = [None] * b
    p = m - 1  # position whose next-token logits we hold
    while True:
        nxt = logits.argmax(-1).cpu()
        for i in range(b):
            if reasons[i] is None and p >= lengths[i] - 1:
                gen[i].append(int(nxt[i]))
                buf[i, p + 1] = nxt[i]
                reasons[i] = stop(gen[i])
        if all(r is not None for r in reasons):
            return gen, [str(r) for r in reasons]
        logits = _last_logits(model, buf[:, p + 1 : p + 2], cache)
        p += 1


@torch.no_grad()
def _greedy_uncached(model: HookedModel, mb: PromptBatch, stop: _Stopper) -> tuple[list[list[int]], list[str]]:
    """The reference: one prompt at a time, the whole sequence re-run for every new token."""
    gens, reasons = [], []
    for i, n in enumerate(mb.lengths.tolist()):
        ids, gen, why = mb.tokens[i, :n].tolist(), [], None
        while why is None:
            gen.append(int(_last_logits(model, torch.tensor([ids + gen])).argmax(-1)[0]))
            why = stop(gen)
        gens.append(gen)
        reasons.append(why)
    return gens, reasons


def greedy_answers(
    model: HookedModel,
    batch: PromptBatch,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = False,
) -> GreedyAnswers:
    """Greedy decoding of every prompt's answer and whether it is exactly the gold answer.

    Generation appends ``argmax_v logits(v | prompt, generated so far)`` until the decoded text
    contains ``batch.template.joiner`` (what would start the next example), the model emits EOS,
    or ``max_new_tokens`` tokens (default: the longest gold answer in tokens + 3). The answer is the
    continuation cut at the joiner and stripped (``cut_answer``); it is correct when it equals the
    gold answer (as the tokenizer decodes the gold tokens, stripped).

    Batched with cached keys and values and without moving any token: prompts (sorted by length
    into minibatches) all advance one position per forward, and a prompt shorter than the longest
    feeds its own remaining prompt tokens before it starts generating, so every token sits at its
    true position and no padding is ever attended to. ``use_cache=False`` runs the plain
    per-prompt loop (the reference the cached path is tested against).
    """
    if len(batch) == 0:
        raise ValueError("batch is empty")
    if batch.tokenizer is None:
        raise ValueError("batch has no tokenizer: whole-answer metrics need it to decode the generated tokens")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    t_max = default_max_new_tokens(batch) if max_new_tokens is None else max_new_tokens
    if not isinstance(t_max, int) or t_max < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    n_ctx, longest = model.cfg.n_ctx, int(batch.lengths.max())
    if longest + t_max - 1 > n_ctx:
        raise ValueError(
            f"max_new_tokens={t_max}: the longest prompt ({longest} tokens) plus {t_max - 1} generated tokens "
            f"exceeds the model's n_ctx={n_ctx}"
        )
    stop = _Stopper(batch.tokenizer, batch.template, t_max)
    order = torch.argsort(batch.lengths, stable=True).tolist()
    gens: list[list[int]] = [[] for _ in range(len(batch))]
    reasons = [""] * len(batch)
    run = _greedy_cached if use_cache else _greedy_uncached
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in tqdm(chunks, desc="greedy decoding", disable=not progress):
        g, r = run(model, batch.select(idx), stop)
        for j, i in enumerate(idx):
            gens[i], reasons[i] = g[j], r[j]
    generated = [stop.answer(g) for g in gens]
    refs = [batch.tokenizer.decode(a).strip() for a in batch.answer_token_ids]
    return GreedyAnswers(
        **stamp(model, batch),
        correct=torch.tensor([g == r for g, r in zip(generated, refs)]), generated=generated, references=refs,
        generated_ids=gens, stop_reasons=reasons, max_new_tokens=t_max, task=batch.task,
        template=asdict(batch.template),
    )


# ----------------------------------------------------------------------------- whole answers: teacher forcing
@torch.no_grad()
def answer_token_logprobs(
    model: HookedModel, batch: PromptBatch, *, batch_size: int = 64
) -> tuple[Float[Tensor, "batch n_answer"], Bool[Tensor, "batch n_answer"]]:
    """``log p(a_j | prompt, a_<j)`` for every token a_j of each prompt's gold answer.

    Teacher forcing: each prompt is followed by its gold answer tokens (``answer_token_ids``, as
    tokenized in context) and one forward gives every term; the logit for a_j is read at position
    ``final_position + j``. Returns ``(logprobs, mask)``, right-padded to the longest answer
    (padding: 0 and False).
    """
    if len(batch) == 0:
        raise ValueError("batch is empty")
    n_ans = max(len(a) for a in batch.answer_token_ids)
    out = torch.zeros(len(batch), n_ans)
    mask = torch.zeros(len(batch), n_ans, dtype=torch.bool)
    for rows, mb in minibatches(batch, batch_size):
        seqs = [mb.tokens[i, :n].tolist() + list(a) for i, (n, a) in enumerate(zip(mb.lengths.tolist(), mb.answer_token_ids))]
        width = max(len(s) for s in seqs)
        if width > model.cfg.n_ctx:
            raise ValueError(f"a prompt plus its gold answer has {width} tokens, more than the model's n_ctx={model.cfg.n_ctx}")
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s)
        m = torch.zeros(len(seqs), n_ans, dtype=torch.bool)
        gold = torch.zeros(len(seqs), n_ans, dtype=torch.long)
        for i, a in enumerate(mb.answer_token_ids):
            m[i, : len(a)] = True
            gold[i, : len(a)] = torch.tensor(a)
        pos = (mb.final_positions[:, None] + torch.arange(n_ans)[None]).clamp(max=width - 1) * m
        resid = backend_for(model).forward(x.to(model.cfg.device))  # the final residual, on every backend
        logp = unembed_resid(model, gather_positions(resid, pos)).float().log_softmax(-1).cpu()
        out[rows] = logp.gather(-1, gold[..., None])[..., 0] * m
        mask[rows] = m
    return out, mask


def answer_logprob(model: HookedModel, batch: PromptBatch, *, batch_size: int = 64) -> Float[Tensor, "batch"]:
    """``sum_j log p(a_j | prompt, a_<j)`` over the gold answer's tokens (one teacher-forced forward)."""
    return answer_token_logprobs(model, batch, batch_size=batch_size)[0].sum(1)


# ----------------------------------------------------------------------------- any metric
def _resolve(metrics: str | Metric | Sequence[str | Metric], batch: PromptBatch) -> list[Metric]:
    ms = [metrics] if isinstance(metrics, (str, Metric)) else list(metrics)
    if not ms:
        raise ValueError("metrics is empty: give at least one metric name")
    out = {}
    for m in ms:
        got = get_metric(m, batch, arg="metric")
        if got.paired:
            raise ValueError(f"metric={got.name!r} compares clean and corrupted prompts (patching); score takes one batch")
        out.setdefault(got.name, got)
    return list(out.values())


def score(
    model: HookedModel,
    batch: PromptBatch,
    metrics: str | Sequence[str] = ("first_token",),
    *,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> dict[str, Float[Tensor, "batch"]]:
    """Per-prompt values of each metric (canonical name -> [batch]; rates are 0.0/1.0).

    Final-logit metrics share one forward (``final_logits``), ``exact_match`` runs
    ``greedy_answers``, ``answer_logprob`` runs ``answer_logprob``. Unknown names, and metrics that
    do not apply (``label`` without label words), raise ``ValueError``.
    """
    if len(batch) == 0:
        raise ValueError("batch is empty")
    ms = _resolve(metrics, batch)
    out: dict[str, Tensor] = {}
    logits = None
    for m in ms:
        if m.source == "final_logits":
            logits = final_logits(model, batch, batch_size) if logits is None else logits
            out[m.name] = m.from_logits(logits, batch).cpu()
        elif m.source == "greedy":
            out[m.name] = greedy_answers(model, batch, max_new_tokens=max_new_tokens, batch_size=batch_size).correct.float()
        else:
            out[m.name] = answer_logprob(model, batch, batch_size=batch_size)
    return out


def icl_accuracy(
    model: HookedModel,
    batch: PromptBatch,
    metric: str = "first_token",
    *,
    restrict_to_labels: bool = False,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> float:
    """Fraction of prompts answered correctly under ``metric`` (a rate: ``first_token`` (default),
    ``label``, ``exact_match``; see ``metrics.list_metrics``).

    ``restrict_to_labels=True`` is ``metric="label"``: the argmax over the prompt's label words
    only (categorization tasks; chance is then 1 / number of classes).
    """
    if restrict_to_labels:
        if get_metric(metric).name != "first_token":
            raise ValueError(f"restrict_to_labels=True means metric='label'; do not also pass metric={metric!r}")
        metric = "label"
    m = get_metric(metric)
    if not m.is_rate:
        raise ValueError(f"metric={m.name!r} is not a rate (it is a {m.summary}); use evaluation.score for it")
    if len(batch) == 0:
        raise ValueError("batch is empty")
    vals = score(model, batch, [m.name], batch_size=batch_size, max_new_tokens=max_new_tokens)[m.name]
    return float(vals.mean())


