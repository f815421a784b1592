"""How answers are scored: the one metric registry, the metrics on final-position logits, and
summaries over prompts (Wilson intervals for rates, Student-t intervals for means).

Every analysis that scores answers takes a metric by name and looks it up here
(``get_metric(name)``); ``list_metrics()`` lists them, ``metrics_table()`` describes them. Each
name means one thing everywhere (heads, patching, task vectors, evaluation):

- ``first_token``: argmax over the vocabulary at the final position is the gold answer's first
  token (what Hendel et al., Todd et al. and Cheng & Zhang score; on a BPE tokenizer the first
  token can be a fragment of the answer).
- ``label``: argmax over the prompt's label words (categorization; chance 1/C).
- ``exact_match``: greedy decoding, stopped at the template's joiner (or EOS), gives exactly the
  gold answer (``evaluation.greedy_answers``).
- ``answer_logprob``: sum_j log p(a_j | prompt, a_<j) over the gold answer's tokens a_1..a_m as
  tokenized in context, one teacher-forced forward (``evaluation.answer_logprob``).
- ``gold_prob``: softmax probability of the gold first token.
- ``logit_diff``: gold first-token logit minus the largest logit among the other candidates
  (``PromptBatch.candidate_tokens()``: the label words; the whole vocabulary for tasks without
  them). Positive exactly when the label (resp. first-token) argmax is right.
- ``logit_diff_to_mean``: gold first-token logit minus the mean logit of the other candidates
  (label words; the whole vocabulary for tasks without them): the smooth margin of the head
  scans (``methods.heads``, docs/results/heads.md).
- ``contrast``: a *paired* metric (clean vs corrupted prompts, ``methods.patching``):
  ``logit[clean gold] - logit[corrupted gold]`` on the logits being scored.

Old names resolve as aliases: ``accuracy`` = first_token, ``label_accuracy`` = label,
``gold_probability`` = gold_prob, ``logit_difference`` and ``label_margin`` = logit_diff; ``auto``
is label when the prompts have label words, else first_token (:func:`auto_metric`, the one place
that decides it). Results record a metric by its registry name, never an alias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

import torch
from jaxtyping import Float, Int
from scipy.stats import t as student_t
from statsmodels.stats.proportion import proportion_confint
from torch import Tensor

from icl_circuits.core.tasks import Task, get_task

if TYPE_CHECKING:
    import pandas as pd

    from icl_circuits.core.prompts import PromptBatch


def correct(
    logits: Float[Tensor, "batch d_vocab"],
    answer_tokens: Int[Tensor, "batch"],
    candidates: Int[Tensor, "batch n_cand"] | None = None,
) -> torch.BoolTensor:
    """Whether the argmax is the gold token (over the whole vocabulary, or over ``candidates``)."""
    if candidates is None:
        return logits.argmax(-1) == answer_tokens
    picked = candidates.gather(1, logits.gather(1, candidates).argmax(-1, keepdim=True))[:, 0]
    return picked == answer_tokens


def logit_difference(
    logits: Float[Tensor, "batch d_vocab"],
    answer_tokens: Int[Tensor, "batch"],
    candidates: Int[Tensor, "batch n_cand"] | None = None,
) -> Float[Tensor, "batch"]:
    """Gold logit minus the largest logit among the other candidates (``candidates`` None: among
    every other token of the vocabulary): ``z_gold - max_{c != gold} z_c``."""
    gold = logits.gather(1, answer_tokens[:, None])[:, 0]
    if candidates is None:
        other = logits.scatter(1, answer_tokens[:, None], float("-inf"))
    else:
        other = logits.gather(1, candidates).masked_fill(candidates == answer_tokens[:, None], float("-inf"))
    return gold - other.max(-1).values


def gold_probability(logits: Float[Tensor, "batch d_vocab"], answer_tokens: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """Softmax probability of the gold token."""
    return logits.float().softmax(-1).gather(1, answer_tokens[:, None])[:, 0]


@dataclass(frozen=True)
class Rate:
    """A proportion k / n with its Wilson 95% interval."""

    k: int
    n: int
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


def wilson(k: int, n: int, alpha: float = 0.05) -> Rate:
    """``k`` successes out of ``n`` with the Wilson score interval (statsmodels)."""
    if n <= 0:
        raise ValueError(f"n must be positive to compute a rate, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n={n}, got {k}")
    low, high = proportion_confint(k, n, alpha=alpha, method="wilson")
    return Rate(int(k), int(n), k / n, float(low), float(high))


# ----------------------------------------------------------------------------- the metric registry
Source = Literal["final_logits", "paired_logits", "greedy", "teacher_forced"]


@dataclass(frozen=True)
class Metric:
    """One way of scoring a prompt's answer, defined once and looked up by name.

    name: the canonical name, written into every result that uses it.
    source: what it is computed from: ``"final_logits"`` (one forward, the logits at each prompt's
        final position; ``fn(logits, batch) -> [batch]``), ``"paired_logits"`` (the same, scored
        against a clean batch *and* its corrupted twin: ``fn(logits, batch, corrupted) -> [batch]``),
        ``"greedy"`` (greedy decoding of the
        whole answer, ``evaluation.greedy_answers``) or ``"teacher_forced"`` (one forward over
        prompt + gold answer, ``evaluation.answer_logprob``).
    summary: ``"rate"`` (0/1 per prompt; summarized by a Wilson 95% interval) or ``"mean"``
        (a real number per prompt; mean with a Student-t 95% interval).
    needs_labels: applies only to prompts with label words (categorization tasks).
    aliases: older names that resolve to this metric.
    """

    name: str
    description: str
    source: Source
    summary: Literal["rate", "mean"]
    needs_labels: bool = False
    aliases: tuple[str, ...] = ()
    fn: Callable[..., Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def is_rate(self) -> bool:
        return self.summary == "rate"

    def check(self, batch: "PromptBatch", arg: str = "metric") -> "Metric":
        """Raise ``ValueError`` (naming ``arg``) when this metric does not apply to ``batch``."""
        if self.needs_labels and batch.label_token_ids is None:
            raise ValueError(
                f"{arg}={self.name!r} needs label words but task {batch.task!r} has none "
                f"(it is not a categorization task); use 'first_token' or 'exact_match'"
            )
        return self

    @property
    def paired(self) -> bool:
        """Whether the metric scores logits against a clean batch and its corrupted twin."""
        return self.source == "paired_logits"

    def from_logits(
        self, logits: Float[Tensor, "batch d_vocab"], batch: "PromptBatch", corrupted: "PromptBatch | None" = None,
    ) -> Float[Tensor, "batch"]:
        """The per-prompt value from final-position logits (``source`` ``"final_logits"``, or
        ``"paired_logits"`` with the ``corrupted`` twin of ``batch``)."""
        if self.fn is None:
            raise ValueError(f"metric {self.name!r} is computed from {self.source}, not from final-position logits")
        self.check(batch)
        if self.paired:
            if corrupted is None:
                raise ValueError(f"metric {self.name!r} compares a clean and a corrupted batch: give corrupted=")
            return self.fn(logits, batch, corrupted).float()
        return self.fn(logits, batch).float()


def _gold(logits: Tensor, batch: "PromptBatch") -> Tensor:
    return batch.answer_tokens.to(logits.device)


def _labels(logits: Tensor, batch: "PromptBatch") -> Tensor:
    return batch.label_token_ids.to(logits.device)


def _candidates(logits: Tensor, batch: "PromptBatch") -> Tensor | None:
    """``batch.candidate_tokens()`` on the logits' device (None: the whole vocabulary)."""
    cand = batch.candidate_tokens()
    return None if cand is None else cand.to(logits.device)


def logit_diff_to_mean(
    logits: Float[Tensor, "batch d_vocab"],
    answer_tokens: Int[Tensor, "batch"],
    candidates: Int[Tensor, "batch n_cand"] | None = None,
) -> Float[Tensor, "batch"]:
    """Gold logit minus the mean logit of the other candidates (minus the mean over the whole
    vocabulary when ``candidates`` is None, or when no candidate differs from the gold token)."""
    g = logits.gather(1, answer_tokens[:, None])[:, 0]
    if candidates is None:
        return g - logits.mean(1)
    other = (candidates != answer_tokens[:, None]).float()
    n = other.sum(1)
    mean_other = (logits.gather(1, candidates) * other).sum(1) / n.clamp(min=1)
    return torch.where(n > 0, g - mean_other, g - logits.mean(1))


def contrast(
    logits: Float[Tensor, "batch d_vocab"], clean_answers: Int[Tensor, "batch"], corrupted_answers: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """``logit[clean gold] - logit[corrupted gold]`` per prompt (the ``contrast`` metric)."""
    return logits.gather(1, clean_answers[:, None])[:, 0] - logits.gather(1, corrupted_answers[:, None])[:, 0]


_REGISTRY: dict[str, Metric] = {}
_ALIASES: dict[str, str] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (its name and aliases must be new). Returns it."""
    if metric.source in ("final_logits", "paired_logits") and metric.fn is None:
        raise ValueError(f"metric {metric.name!r}: a {metric.source} metric needs fn")
    for n in (metric.name, *metric.aliases):
        if n in _REGISTRY or n in _ALIASES or n == "auto":
            raise ValueError(f"metric name {n!r} is already registered")
    _REGISTRY[metric.name] = metric
    for a in metric.aliases:
        _ALIASES[a] = metric.name
    return metric


register_metric(Metric(
    "first_token", "argmax over the whole vocabulary at the final position is the gold answer's first token",
    "final_logits", "rate", aliases=("accuracy",),
    fn=lambda lg, b: correct(lg, _gold(lg, b)),
))
register_metric(Metric(
    "label", "argmax over the prompt's label words (first token of each) is the gold label's (chance 1/C)",
    "final_logits", "rate", needs_labels=True, aliases=("label_accuracy",),
    fn=lambda lg, b: correct(lg, _gold(lg, b), _labels(lg, b)),
))
register_metric(Metric(
    "exact_match", "greedy decoding until the template's joiner (or EOS) gives exactly the gold answer",
    "greedy", "rate",
))
register_metric(Metric(
    "answer_logprob", "sum over the gold answer's tokens of log p(token | prompt, earlier answer tokens)",
    "teacher_forced", "mean",
))
register_metric(Metric(
    "gold_prob", "softmax probability of the gold answer's first token at the final position",
    "final_logits", "mean", aliases=("gold_probability",),
    fn=lambda lg, b: gold_probability(lg, _gold(lg, b)),
))
register_metric(Metric(
    "logit_diff", "gold first-token logit minus the largest logit among the other candidates "
    "(label words for categorization, the whole vocabulary otherwise)",
    "final_logits", "mean", aliases=("logit_difference", "label_margin"),
    fn=lambda lg, b: logit_difference(lg, _gold(lg, b), _candidates(lg, b)),
))
register_metric(Metric(
    "logit_diff_to_mean", "gold first-token logit minus the mean logit of the other candidates "
    "(label words for categorization, the whole vocabulary otherwise)",
    "final_logits", "mean",
    fn=lambda lg, b: logit_diff_to_mean(lg, _gold(lg, b), _candidates(lg, b)),
))
register_metric(Metric(
    "contrast", "logit of the clean prompt's gold first token minus that of the corrupted prompt's "
    "(paired clean/corrupted prompts, e.g. activation patching)",
    "paired_logits", "mean",
    fn=lambda lg, b, c: contrast(lg, _gold(lg, b), _gold(lg, c)),
))


def auto_metric(prompts: "PromptBatch | Task | str") -> str:
    """The registry name ``"auto"`` stands for on ``prompts``: ``"label"`` when they have label
    words (a ``PromptBatch`` with ``label_token_ids``; a ``Task``, or a task's name, with
    ``label_words``: categorization tasks), else ``"first_token"``. ``get_metric("auto", batch)``
    resolves through it, and so does every caller that needs a task's primary metric."""
    if isinstance(prompts, (Task, str)):
        has_labels = get_task(prompts).label_words is not None
    else:
        has_labels = prompts.label_token_ids is not None
    return "label" if has_labels else "first_token"


def list_metrics() -> list[str]:
    """Canonical names of the registered metrics (aliases and ``"auto"`` resolve to these)."""
    return list(_REGISTRY)


def get_metric(name: "str | Metric", batch: "PromptBatch | None" = None, *, arg: str = "metric",
               source: str | None = None) -> Metric:
    """The registered metric called ``name`` (or one of its aliases).

    ``"auto"`` means ``"label"`` when ``batch`` has label words, else ``"first_token"``
    (:func:`auto_metric`). With a
    ``batch``, also checks that the metric applies to it; with ``source`` (e.g. ``"final_logits"``
    for analyses that read only final-position logits of one batch), that it is computed from
    there. Raises ``ValueError`` naming ``arg``.
    """
    m = _lookup(name, batch, arg)
    if source is not None and m.source != source:
        raise ValueError(f"{arg} must be scored on {_SOURCE_TEXT.get(source, source)}; {m.name!r} is computed "
                         f"from {m.source}")
    return m


_SOURCE_TEXT = {"final_logits": "final-position logits of one batch (e.g. 'first_token', 'logit_diff_to_mean', 'gold_prob')"}


def _lookup(name: "str | Metric", batch: "PromptBatch | None", arg: str) -> Metric:
    if isinstance(name, Metric):
        return name.check(batch, arg) if batch is not None else name
    if name == "auto":
        if batch is None:
            raise ValueError(f"{arg}='auto' needs a batch to choose between 'label' and 'first_token'")
        name = auto_metric(batch)
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown {arg} {name!r}; choose from: {', '.join([*_REGISTRY, 'auto'])} "
            f"(aliases: {', '.join(f'{a}={c}' for a, c in _ALIASES.items())})"
        )
    m = _REGISTRY[key]
    return m.check(batch, arg) if batch is not None else m


def metrics_table() -> "pd.DataFrame":
    """One row per registered metric: name, source, summary, needs_labels, aliases, description."""
    import pandas as pd

    return pd.DataFrame([
        {"name": m.name, "source": m.source, "summary": m.summary, "needs_labels": m.needs_labels,
         "aliases": ", ".join(m.aliases), "description": m.description}
        for m in _REGISTRY.values()
    ])


# ----------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Summary:
    """A metric over prompts: the mean ``value`` with a 95% interval [low, high] over ``n`` prompts.

    interval: ``"wilson"`` (rates: Wilson score interval) or ``"t"`` (means: mean +- t_{0.975, n-1}
    * sd / sqrt(n), sd with Bessel's correction; NaN bounds for n = 1).
    """

    metric: str
    value: float
    low: float
    high: float
    n: int
    interval: str


def summarize(values: Float[Tensor, "batch"], metric: "str | Metric", alpha: float = 0.05) -> Summary:
    """Mean of per-prompt ``values`` with the interval that fits ``metric`` (see ``Summary``)."""
    m = get_metric(metric)
    v = torch.as_tensor(values).detach().double().flatten().cpu()
    n = v.numel()
    if n == 0:
        raise ValueError("values is empty: nothing to summarize")
    if m.is_rate:
        if not bool(((v == 0) | (v == 1)).all()):
            raise ValueError(f"metric {m.name!r} is a rate: values must be 0 or 1")
        r = wilson(int(v.sum()), n, alpha)
        return Summary(m.name, r.value, r.low, r.high, n, "wilson")
    mean = float(v.mean())
    if n < 2:
        return Summary(m.name, mean, float("nan"), float("nan"), n, "t")
    half = float(student_t.ppf(1 - alpha / 2, n - 1)) * float(v.std(unbiased=True)) / n**0.5
    return Summary(m.name, mean, mean - half, mean + half, n, "t")
