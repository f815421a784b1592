"""From samples to the dPCA condition tensor: per-condition means of crossed factors and balanced,
seeded trials for cross-validation, in pure numpy (``numpy_dpca.demixed_pca`` consumes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ConditionData", "condition_tensor"]


@dataclass(frozen=True, eq=False)
class ConditionData:
    """Samples arranged by condition: ``X`` (n_features, n_1, ..., n_k) holds the mean of ALL
    samples of each condition; ``trials`` (n_trials, *X.shape) a balanced, seeded subsample
    (``n_trials`` samples per condition, without replacement) for cross-validation;
    ``levels[i]`` the sorted values of factor i; ``counts`` (n_1, ..., n_k) samples per condition."""

    X: np.ndarray
    trials: np.ndarray
    levels: list[list]
    counts: np.ndarray


def condition_tensor(
    H: np.ndarray, factors: Sequence[np.ndarray], names: Sequence[str] | None = None, *,
    n_trials: int | None = None, min_trials: int = 2, seed: int = 0,
) -> ConditionData:
    """Average samples ``H`` (n_samples, n_features) per condition of the crossed ``factors``
    (each (n_samples,), integer-like). Levels are the sorted distinct values of each factor;
    every combination must have at least ``min_trials`` samples (else ValueError naming it).
    ``n_trials`` defaults to the smallest condition count."""
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or 0 in H.shape:
        raise ValueError(f"H must be a non-empty (n_samples, n_features) array, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H contains NaN or inf")
    names = [f"factor_{i}" for i in range(len(factors))] if names is None else list(names)
    if len(factors) < 1 or len(names) != len(factors):
        raise ValueError(f"need at least one factor and one name per factor, got {len(factors)} factors, names {names}")
    codes, levels = [], []
    for name, f in zip(names, factors):
        f = np.asarray(f)
        if f.shape != (H.shape[0],):
            raise ValueError(f"factor {name!r} must have shape (n_samples={H.shape[0]},), got {f.shape}")
        lev, code = np.unique(f, return_inverse=True)
        if lev.size < 2:
            raise ValueError(f"factor {name!r} takes a single value ({lev.tolist()}); need at least 2 levels")
        levels.append(lev.tolist())
        codes.append(code)
    if isinstance(min_trials, bool) or not isinstance(min_trials, (int, np.integer)) or min_trials < 1:
        raise ValueError(f"min_trials must be an int >= 1, got {min_trials!r}")
    shape = tuple(len(l) for l in levels)
    flat = np.ravel_multi_index(tuple(codes), shape)
    counts = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)
    low = counts < min_trials
    if low.any():
        idx = np.argwhere(low)[0]
        cond = ", ".join(f"{n}={levels[i][j]}" for i, (n, j) in enumerate(zip(names, idx)))
        raise ValueError(f"condition ({cond}) has {counts[tuple(idx)]} samples; need at least "
                         f"min_trials={min_trials} in each of the {counts.size} conditions (use more prompts)")
    n_min = int(counts.min())
    n_trials = n_min if n_trials is None else n_trials
    if isinstance(n_trials, bool) or not isinstance(n_trials, (int, np.integer)) or not 1 <= n_trials <= n_min:
        raise ValueError(f"n_trials must be an int in [1, {n_min}] (the smallest condition count), got {n_trials!r}")
    rng = np.random.default_rng(seed)
    n_feat = H.shape[1]
    X = np.empty((n_feat, counts.size))
    trials = np.empty((n_trials, n_feat, counts.size))
    for c in range(counts.size):
        rows = np.flatnonzero(flat == c)
        X[:, c] = H[rows].mean(axis=0)
        trials[:, :, c] = H[np.sort(rng.choice(rows, size=n_trials, replace=False))]
    return ConditionData(X=X.reshape((n_feat,) + shape), trials=trials.reshape((n_trials, n_feat) + shape),
                         levels=levels, counts=counts)
