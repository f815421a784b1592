"""Separation of clusters of samples: pairwise Mahalanobis distances between class means under a
pooled within-class covariance (with shrinkage), in pure numpy (used by ``dpca.analysis``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["MahalanobisResult", "mahalanobis_distances"]


@dataclass(frozen=True, eq=False)
class MahalanobisResult:
    """Pairwise Mahalanobis distances between class means under a pooled covariance."""

    distances: pd.DataFrame  # (n_groups, n_groups), indexed by group id
    mean_distance: float  # mean over unordered pairs i < j
    shrinkage: float  # shrinkage coefficient used
    covariance: np.ndarray  # pooled within-class covariance estimate (n_features, n_features)


def mahalanobis_distances(
    H: np.ndarray, groups: np.ndarray, shrinkage: str | float = "ledoit_wolf"
) -> MahalanobisResult:
    """``d(i, j) = sqrt((m_i - m_j)^T S^{-1} (m_i - m_j))`` for class means m of ``H``
    (n_samples, n_features) grouped by ``groups`` (n_samples,).

    ``S`` is the pooled within-class covariance of the residuals ``H - m[group]``
    (normalised by n_samples - n_groups), shrunk towards a scaled identity with
    scikit-learn's LedoitWolf ("ledoit_wolf"), OAS ("oas"), or a fixed coefficient in [0, 1].
    """
    from scipy.linalg import LinAlgError, cho_factor, cho_solve
    from sklearn.covariance import OAS, LedoitWolf, shrunk_covariance

    H = np.asarray(H, dtype=np.float64)
    groups = np.asarray(groups)
    if H.ndim != 2 or H.shape[0] == 0 or H.shape[1] == 0:
        raise ValueError(f"H must be a non-empty (n_samples, n_features) array, got shape {H.shape}")
    if groups.ndim != 1 or groups.shape[0] != H.shape[0]:
        raise ValueError(f"groups must have shape (n_samples={H.shape[0]},), got {groups.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H contains NaN or inf")
    if groups.dtype.kind == "f" and not np.all(np.isfinite(groups)):
        raise ValueError("groups contains NaN or inf")
    ids, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if ids.size < 2:
        raise ValueError(f"groups must contain at least 2 distinct classes, got {ids.size}")
    if np.any(counts < 2):
        raise ValueError(f"each group needs at least 2 samples; too few in {ids[counts < 2].tolist()}")
    means = np.stack([H[inv == g].mean(axis=0) for g in range(ids.size)])
    R = H - means[inv]
    n, p = R.shape
    dof_scale = n / (n - ids.size)
    if isinstance(shrinkage, str):
        est = {"ledoit_wolf": LedoitWolf, "oas": OAS}.get(shrinkage)
        if est is None:
            raise ValueError(f"shrinkage must be 'ledoit_wolf', 'oas' or a float in [0, 1], got {shrinkage!r}")
        fitted = est(assume_centered=True).fit(R)
        cov, coef = fitted.covariance_ * dof_scale, float(fitted.shrinkage_)
    else:
        coef = float(shrinkage)
        if not 0.0 <= coef <= 1.0:
            raise ValueError(f"shrinkage must be 'ledoit_wolf', 'oas' or a float in [0, 1], got {shrinkage!r}")
        cov = shrunk_covariance(R.T @ R / (n - ids.size), shrinkage=coef)
    try:
        chol = cho_factor(cov)
    except LinAlgError as exc:
        raise ValueError("pooled covariance is singular; use shrinkage > 0") from exc
    diff = means[:, None, :] - means[None, :, :]
    flat = diff.reshape(-1, p)
    d2 = np.einsum("ij,ij->i", flat, cho_solve(chol, flat.T).T).reshape(ids.size, ids.size)
    dist = np.sqrt(np.clip(d2, 0.0, None))
    np.fill_diagonal(dist, 0.0)
    iu = np.triu_indices(ids.size, k=1)
    return MahalanobisResult(distances=pd.DataFrame(dist, index=ids, columns=ids),
                             mean_distance=float(dist[iu].mean()), shrinkage=coef, covariance=cov)
