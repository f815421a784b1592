"""Metrics on final-position logits: accuracy, logit difference, rates with Wilson intervals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from statsmodels.stats.proportion import proportion_confint
from torch import Tensor


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
    candidates: Int[Tensor, "batch n_cand"],
) -> Float[Tensor, "batch"]:
    """Gold logit minus the largest logit among the other candidates."""
    gold = logits.gather(1, answer_tokens[:, None])[:, 0]
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
