"""Demixed PCA (Kobak et al. 2016, eLife), in pure numpy.

Layout: data checks -> marginalization -> the per-marginalization fit (closed form via
one SVD of the data) -> cross-validation of the ridge strength -> ``demixed_pca`` and
its ``DPCAResult``. Samples are arranged into the condition tensor by
``dpca.conditions.condition_tensor``, cluster separation is ``dpca.distances``; model-facing
code (``dpca.states``, ``dpca.analysis``, ``dpca.ablation``) only consumes
``DPCAResult.encoders`` / ``decoders`` / ``mean``.

Conventions, with ``X`` the centred data flattened to (n_features, n_conditions):

* ridge: ``mu = lambda * ||X||_F^2``. Kobak et al. write ``mu = (lambda * ||X||_F)^2``,
  so our ``lambda`` is the square of theirs.
* rank: a marginalization keeps at most as many components as the augmented fitted values
  ``B [X, sqrt(mu) I]`` (see ``_fit_one``) have singular values above
  ``max(X.shape) * eps * ||X||_2``; asking for more returns fewer (possibly 0).
* signs: each (encoder row, decoder column) pair is flipped so that the decoder entry of
  largest absolute value is positive.
* cross-validated lambda: a choice on either end of its grid is flagged (``regularizer_on_edge``)
  and warned about (``RegularizerOnEdgeWarning``): the error may still fall beyond the grid.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from icl_circuits.core.grids import check_grid
from icl_circuits.core.grids import grid_edge as lambda_on_edge  # "lowest" / "highest" / None: the dPCA name

__all__ = ["DPCAResult", "demixed_pca", "marginalize", "DEFAULT_LAMBDA_GRID", "RegularizerOnEdgeWarning",
           "lambda_on_edge"]

#: lambda grid of ``regularizer="auto"``: 10^-7 ... 10^1, 17 values half a decade apart. Until issue 24: its first
#: 13 values, whose top (0.1) letter-string on toy-icl and noisy planted data (reference code: ~0.78) sat on.
DEFAULT_LAMBDA_GRID = np.logspace(-7, 1, 17)
#: ``save``'s format; files saved before ``regularizer_on_edge`` was stored load with it recomputed
_FORMAT_VERSION = 1


class RegularizerOnEdgeWarning(UserWarning):
    """Cross-validation chose an end of its lambda grid: a bound, perhaps not the optimum."""


def _edge_message(lam: float, edge: str, grid: np.ndarray) -> str:
    beyond = ("a smaller lambda (the data need no ridge)" if edge == "lowest" else
              "a larger lambda (as when the condition means are mostly trial noise)")
    return (f"dPCA cross-validation chose lambda = {lam:.3g}, the {edge} value of its grid ({float(grid[0]):.3g} ... "
            f"{float(grid[-1]):.3g}, {len(grid)} values): the held-out error may fall further for {beyond}; "
            "widen lambda_grid or read the fit as regularized at the grid's bound")


# ----------------------------------------------------------------------------- checks
def _check_data(X: np.ndarray, labels: Sequence[str], name: str = "X") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.size == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); expected (n_features, n_1, ..., n_k)")
    if X.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (n_features, n_1, ...), got shape {X.shape}")
    if len(labels) != X.ndim - 1:
        raise ValueError(f"labels must have one entry per parameter axis of {name} "
                         f"({X.ndim - 1}), got {len(labels)}: {tuple(labels)!r}")
    if len(set(labels)) != len(labels) or any(not isinstance(s, str) or not s for s in labels):
        raise ValueError(f"labels must be distinct non-empty strings, got {tuple(labels)!r}")
    small = [f"{lab}={n}" for lab, n in zip(labels, X.shape[1:]) if n < 2]
    if small:
        raise ValueError(f"each parameter needs at least 2 values; {name} has {', '.join(small)}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or inf")
    return X


def _subsets(k: int) -> list[tuple[int, ...]]:
    """Non-empty subsets of range(k), by size then lexicographic order."""
    return [s for r in range(1, k + 1) for s in combinations(range(k), r)]


# ----------------------------------------------------------------------- marginalize
def marginalize(X_centred: np.ndarray, labels: Sequence[str] = ("a", "b")) -> dict[str, np.ndarray]:
    """ANOVA-style split of data of shape (n_features, n_1, ..., n_k) over its parameters.

    For every non-empty subset S of parameters,
    ``X_S = mean_{params not in S}(X) - sum_{T proper subset of S} X_T`` (grand mean
    counted as the empty T), broadcast back to the full shape. The parts sum exactly to
    ``X - grand_mean`` and each averages to zero over each of its own parameters. Returns
    ``{concatenated labels of S: X_S}`` ordered by subset size, e.g. "a", "b", "ab".
    """
    X = _check_data(X_centred, labels, "X_centred")
    k = X.ndim - 1
    grand = X.mean(axis=tuple(range(1, k + 1)), keepdims=True)
    parts: dict[tuple[int, ...], np.ndarray] = {}
    for S in _subsets(k):
        other = tuple(1 + i for i in range(k) if i not in S)
        part = (X.mean(axis=other, keepdims=True) if other else X) - grand
        for T in parts:
            if set(T) < set(S):
                part = part - parts[T]
        parts[S] = np.broadcast_to(part, X.shape).copy()
    return {"".join(labels[i] for i in S): v for S, v in parts.items()}


def _joined_margs(X: np.ndarray, labels: Sequence[str],
                  join: Mapping[str, Sequence[str]] | None) -> dict[str, np.ndarray]:
    margs = marginalize(X, labels)
    if not join:
        return margs
    owner: dict[str, str] = {}
    for new, members in join.items():
        members = [members] if isinstance(members, str) else list(members)
        unknown = [m for m in members if m not in margs]
        if unknown or not members:
            raise ValueError(f"join[{new!r}] names unknown marginalizations {unknown} "
                             f"(expected a non-empty list from {list(margs)})")
        for m in members:
            if m in owner:
                raise ValueError(f"join puts marginalization {m!r} in both {owner[m]!r} and {new!r}")
            owner[m] = new
    clash = [n for n in join if n in margs and n not in owner]
    if clash:
        raise ValueError(f"join names {clash} collide with marginalizations that are not joined")
    out: dict[str, np.ndarray] = {}
    for name, part in margs.items():
        key = owner.get(name, name)
        out[key] = out[key] + part if key in out else part
    return out


# ---------------------------------------------------------------------------- fitting
class _SVDData:
    """Thin SVD ``X = P diag(s) Q^T`` of centred flattened data, dropping null directions."""

    def __init__(self, X2: np.ndarray):
        P, s, Qt = np.linalg.svd(X2, full_matrices=False)
        self.tol = max(X2.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
        keep = s > self.tol
        self.P, self.s, self.Q = P[:, keep], s[keep], Qt[keep].T
        self.sq_norm = float(np.sum(s ** 2))


def _fit_one(svd: _SVDData, Xphi2: np.ndarray, q: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Encoder D (q, n) and decoder F (n, q) minimizing ``||X_phi - F D X||^2 + mu ||F D||^2``
    over rank-q ``A = F D`` (Kobak et al. 2016, methods), with ``mu = lam ||X||_F^2``.

    The penalty is the plain reduced-rank regression of the augmented data
    ``[X_phi, 0]`` on ``X~ = [X, sqrt(mu) I]``. Its full-rank (ridge) solution is
    ``B = X_phi X^T (X X^T + mu I)^+ = X_phi Q diag(s / (s^2 + mu)) P^T`` (``X = P diag(s) Q^T``),
    and the rank-q optimum is ``A = U U^T B`` with ``U`` the top-q left singular vectors of the
    augmented fitted values ``B X~ = [B X, sqrt(mu) B]``. Since
    ``B X~ (B X~)^T = B (X X^T + mu I) B^T = M M^T`` with ``M = X_phi Q diag(s / sqrt(s^2 + mu))``,
    ``U`` is computed as the top-q left singular vectors of ``M``; then ``F = U``,
    ``D = U^T B``. (The SVD of ``B X`` alone, without the ``sqrt(mu) B`` block, is only right at
    ``mu = 0``, where both are the fitted values ``X_phi Q Q^T``.)
    """
    mu = lam * svd.sq_norm
    s2 = svd.s ** 2
    XphiQ = Xphi2 @ svd.Q
    U, sv, _ = np.linalg.svd(XphiQ * (svd.s / np.sqrt(s2 + mu)), full_matrices=False)
    q = min(q, int(np.sum(sv > svd.tol)))
    U = U[:, :q]
    D = ((U.T @ XphiQ) * (svd.s / (s2 + mu))) @ svd.P.T
    flip = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(q)])
    flip[flip == 0] = 1.0
    return D * flip[:, None], U * flip[None, :]


def _fit_all(X: np.ndarray, margs: Mapping[str, np.ndarray], qs: Mapping[str, int], lam: float):
    n = X.shape[0]
    svd = _SVDData(X.reshape(n, -1))
    return {name: _fit_one(svd, m.reshape(n, -1), qs[name], lam) for name, m in margs.items()}


def _cv_lambda(trials: np.ndarray, labels, join, qs, grid: np.ndarray, n_folds: int, seed: int):
    """K-fold over trials: fit on the centred average of the training trials, then reconstruct the
    TRAINING marginalizations from the centred test average (the scoring of Kobak et al.'s
    reference implementation, ``dpca_optimizeLambda`` method "training"):
    ``sum_phi ||Xtrain_phi - F_phi D_phi Xtest||^2 / sum_phi ||Xtrain_phi||^2``. Target and input
    carry independent noise, so fitting the training noise is not rewarded (reconstructing the test
    marginalizations from the test data itself would be: that error falls as lambda -> 0).
    Returns (lambda with the lowest mean error over folds, mean errors)."""
    n_trials = trials.shape[0]
    order = np.random.default_rng(seed).permutation(n_trials)
    errors = np.zeros((n_folds, grid.size))
    for f, test in enumerate(np.array_split(order, n_folds)):
        train = np.setdiff1d(order, test)
        Xtr = trials[train].mean(axis=0)
        Xtr = Xtr - Xtr.mean(axis=tuple(range(1, Xtr.ndim)), keepdims=True)
        Xte = trials[test].mean(axis=0)
        n = Xte.shape[0]
        Xte2 = (Xte - Xte.mean(axis=tuple(range(1, Xte.ndim)), keepdims=True)).reshape(n, -1)
        mtr = _joined_margs(Xtr, labels, join)
        norm = max(sum(float(np.sum(m ** 2)) for m in mtr.values()), np.finfo(float).tiny)
        svd = _SVDData(Xtr.reshape(n, -1))
        for g, lam in enumerate(grid):
            err = 0.0
            for name, m in mtr.items():
                D, F = _fit_one(svd, m.reshape(n, -1), qs[name], float(lam))
                err += np.sum((m.reshape(n, -1) - F @ (D @ Xte2)) ** 2)
            errors[f, g] = err / norm
    mean_err = errors.mean(axis=0)
    return float(grid[int(np.argmin(mean_err))]), mean_err


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class DPCAResult:
    """Fitted dPCA. Component k of marginalization phi: encoder row ``D_k`` (projects
    centred data), decoder column ``F_k`` (unit-norm axis in feature space)."""

    mean: np.ndarray
    encoders: dict[str, np.ndarray]
    decoders: dict[str, np.ndarray]
    explained_variance: dict[str, np.ndarray]
    marginal_explained_variance: dict[str, np.ndarray]
    total_marginal_variance: dict[str, float]
    marginalization_names: list[str]
    labels: tuple[str, ...]
    regularizer: float
    cv_errors: np.ndarray | None = None
    cv_lambdas: np.ndarray | None = None
    #: "lowest" / "highest": cross-validation chose that end of ``cv_lambdas`` (see
    #: ``RegularizerOnEdgeWarning``); None: an interior choice, or lambda was not cross-validated
    regularizer_on_edge: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = [self.mean, self.cv_errors, self.cv_lambdas]
        for d in (self.encoders, self.decoders, self.explained_variance, self.marginal_explained_variance):
            arrays.extend(d.values())
        for a in arrays:
            if a is not None:
                a.setflags(write=False)

    def transform(self, X_new: np.ndarray, marginalization: str | None = None) -> dict[str, np.ndarray]:
        """Project ``X_new`` (n_features, ...) with the TRAINING mean: ``D (X_new - mean)``.

        Returns ``{name: array (q, ...)}``; only ``marginalization`` if one is given.
        """
        X_new = np.asarray(X_new, dtype=np.float64)
        if X_new.ndim < 1 or X_new.shape[0] != self.mean.shape[0]:
            raise ValueError(f"X_new must have shape (n_features={self.mean.shape[0]}, ...), got {X_new.shape}")
        if marginalization is not None and marginalization not in self.encoders:
            raise ValueError(f"marginalization must be one of {self.marginalization_names}, got {marginalization!r}")
        names = self.marginalization_names if marginalization is None else [marginalization]
        Xc = (X_new - self.mean.reshape((-1,) + (1,) * (X_new.ndim - 1))).reshape(X_new.shape[0], -1)
        return {n: (self.encoders[n] @ Xc).reshape((-1,) + X_new.shape[1:]) for n in names}

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table: one row per (marginalization, component) with its explained_variance."""
        rows = [{"marginalization": n, "component": k, "explained_variance": float(ev)}
                for n in self.marginalization_names for k, ev in enumerate(self.explained_variance[n])]
        return pd.DataFrame(rows, columns=["marginalization", "component", "explained_variance"])

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.npz`` (arrays) and ``<path>.json`` (names, scalars, the SHA-256 of the npz);
        no pickle. Atomic as ``results.Result.save``: temporary files renamed over the old ones, so an
        interrupted save leaves the previous fit or a pair that ``load`` refuses."""
        from icl_circuits.core.results import write_atomically  # torch-free until a fit is saved

        base = _base(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mean": self.mean}
        for i, n in enumerate(self.marginalization_names):
            arrays[f"enc_{i}"], arrays[f"dec_{i}"] = self.encoders[n], self.decoders[n]
            arrays[f"ev_{i}"], arrays[f"mev_{i}"] = self.explained_variance[n], self.marginal_explained_variance[n]
        for key in ("cv_errors", "cv_lambdas"):
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        meta = {"format_version": _FORMAT_VERSION, "marginalization_names": self.marginalization_names,
                "labels": list(self.labels), "regularizer": self.regularizer,
                "regularizer_on_edge": self.regularizer_on_edge,
                "total_marginal_variance": self.total_marginal_variance, "meta": self.meta,
                "arrays_sha256": hashlib.sha256(data).hexdigest()}
        text = json.dumps(meta, indent=2)
        write_atomically([(base.with_suffix(".npz"), data), (base.with_suffix(".json"), text.encode())])
        return base.with_suffix(".npz"), base.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "DPCAResult":
        """Read a result written by ``save`` (same ``path``, with or without suffix).

        Raises ``core.results.ResultLoadError`` naming the file when it is missing, truncated, not a
        dPCA fit, not the array file its JSON was saved with, or of a newer file format."""
        from icl_circuits.core.results import ResultLoadError, read_data, read_spec

        base = _base(path)
        spec_path, data_path = base.with_suffix(".json"), base.with_suffix(".npz")
        meta = read_spec(spec_path, what="a dPCA fit saved with DPCAResult.save()", max_version=_FORMAT_VERSION)
        if not isinstance(meta.get("marginalization_names"), list):
            raise ResultLoadError(f"{spec_path} is not a dPCA fit (it has no marginalization_names)")
        names = list(meta["marginalization_names"])
        data = read_data(data_path, meta.get("arrays_sha256"), spec_path)
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ResultLoadError(f"{data_path} is not a readable .npz file ({err})") from None
        with z:
            get = lambda p: {n: z[f"{p}_{i}"] for i, n in enumerate(names)}  # noqa: E731
            lam = float(meta["regularizer"])
            cv_lambdas = z["cv_lambdas"] if "cv_lambdas" in z.files else None
            # files saved before the flag was stored: recompute it from the grid they were fitted on
            edge = meta["regularizer_on_edge"] if "regularizer_on_edge" in meta else lambda_on_edge(lam, cv_lambdas)
            return cls(mean=z["mean"], encoders=get("enc"), decoders=get("dec"),
                       explained_variance=get("ev"), marginal_explained_variance=get("mev"),
                       total_marginal_variance={k: float(v) for k, v in meta["total_marginal_variance"].items()},
                       marginalization_names=names, labels=tuple(meta["labels"]), regularizer=lam,
                       cv_errors=z["cv_errors"] if "cv_errors" in z.files else None,
                       cv_lambdas=cv_lambdas, regularizer_on_edge=edge, meta=meta.get("meta", {}))


def _base(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".npz", ".json") else p


# ------------------------------------------------------------------------ demixed_pca
def demixed_pca(
    X: np.ndarray,
    n_components: int | Mapping[str, int] = 3,
    *,
    labels: Sequence[str] = ("a", "b"),
    join: Mapping[str, Sequence[str]] | None = None,
    regularizer: float | str | None = None,
    trials: np.ndarray | None = None,
    n_folds: int = 5,
    seed: int = 0,
    lambda_grid: Sequence[float] | None = None,
) -> DPCAResult:
    """Demixed PCA of trial-averaged ``X`` (n_features, n_1, ..., n_k).

    ``X`` is centred per feature, split by ``marginalize`` (then merged by ``join``, e.g.
    ``{"label": ["b", "ab"]}``), and for each marginalization phi a reduced-rank ridge
    regression ``min ||X_phi - F D X||^2 + mu ||F D||^2`` (``mu = lambda ||X||_F^2``) gives
    decoder ``F = U``, the top left singular vectors of the augmented fitted values
    ``B [X, sqrt(mu) I]`` with ``B = X_phi X^T (X X^T + mu I)^+`` the ridge solution, and encoder
    ``D = U^T B`` (see ``_fit_one``). ``regularizer``:
    None -> lambda = 0 (pseudo-inverse); float -> that lambda; "auto" -> lambda from
    ``lambda_grid`` (default ``DEFAULT_LAMBDA_GRID``, 10^-7 ... 10^1; increasing, positive) by
    ``n_folds``-fold cross-validation over ``trials`` (n_trials, *X.shape; balanced, no NaN),
    shuffled by ``seed`` only. A lambda on either end of the grid is recorded in
    ``regularizer_on_edge`` ("lowest" / "highest") and warned about (``RegularizerOnEdgeWarning``).

    Component counts: ``n_components`` (int, or dict over all marginalization names) capped
    at each marginalization's rank. Explained variance of component k of phi:
    ``(||X||^2 - ||X - F_k D_k X||^2) / ||X||^2``; its marginal split over psi:
    ``(||X_psi||^2 - ||X_psi - F_k D_k X_psi||^2) / ||X||^2`` (columns sum to the total);
    ``total_marginal_variance[psi] = ||X_psi||^2 / ||X||^2`` (sums to 1).
    """
    labels = tuple(labels)
    X = _check_data(X, labels, "X")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}")
    mean = X.mean(axis=tuple(range(1, X.ndim)))
    Xc = X - mean.reshape((-1,) + (1,) * (X.ndim - 1))
    total = float(np.sum(Xc ** 2))
    if total <= 0.0:
        raise ValueError("X has zero variance across conditions; nothing to decompose")
    margs = _joined_margs(Xc, labels, join)
    names = list(margs)
    qs = _component_counts(n_components, names)

    if trials is not None:  # only used to cross-validate lambda, but always checked
        trials = np.asarray(trials, dtype=np.float64)
        if trials.ndim != X.ndim + 1 or trials.shape[1:] != X.shape:
            raise ValueError(f"trials must have shape (n_trials, *X.shape={X.shape}), got {trials.shape}")
        if not np.all(np.isfinite(trials)):
            raise ValueError("trials contains NaN or inf; trials must be balanced and complete")
    cv_errors = cv_lambdas = edge = None
    if lambda_grid is not None and regularizer != "auto":
        raise ValueError(f"lambda_grid is only used with regularizer='auto' (got regularizer={regularizer!r})")
    if regularizer is None:
        lam = 0.0
    elif isinstance(regularizer, str):
        if regularizer != "auto":
            raise ValueError(f"regularizer must be None, a float >= 0 or 'auto', got {regularizer!r}")
        if trials is None:
            raise ValueError("regularizer='auto' needs trials of shape (n_trials, *X.shape)")
        if trials.shape[0] < n_folds:
            raise ValueError(f"trials has {trials.shape[0]} trials; need at least n_folds={n_folds}")
        cv_lambdas = check_grid(DEFAULT_LAMBDA_GRID if lambda_grid is None else lambda_grid, "lambda_grid")
        lam, cv_errors = _cv_lambda(trials, labels, join, qs, cv_lambdas, int(n_folds), int(seed))
        edge = lambda_on_edge(lam, cv_lambdas)
        if edge is not None:
            warnings.warn(_edge_message(lam, edge, cv_lambdas), RegularizerOnEdgeWarning, stacklevel=2)
    else:
        lam = float(regularizer)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"regularizer must be None, a float >= 0 or 'auto', got {regularizer!r}")

    n = X.shape[0]
    fits = _fit_all(Xc, margs, qs, lam)
    X2 = Xc.reshape(n, -1)
    M2 = [margs[p].reshape(n, -1) for p in names]
    ev, mev = {}, {}
    for name, (D, F) in fits.items():
        ev[name] = np.array([total - np.sum((X2 - np.outer(F[:, k], D[k] @ X2)) ** 2)
                             for k in range(D.shape[0])]) / total
        mev[name] = np.array([[np.sum(m ** 2) - np.sum((m - np.outer(F[:, k], D[k] @ m)) ** 2) for m in M2]
                              for k in range(D.shape[0])]).reshape(D.shape[0], len(names)) / total
    return DPCAResult(
        mean=mean, encoders={k: v[0] for k, v in fits.items()}, decoders={k: v[1] for k, v in fits.items()},
        explained_variance=ev, marginal_explained_variance=mev,
        total_marginal_variance={p: float(np.sum(margs[p] ** 2)) / total for p in names},
        marginalization_names=names, labels=labels, regularizer=lam,
        cv_errors=cv_errors, cv_lambdas=cv_lambdas, regularizer_on_edge=edge,
        meta={"seed": int(seed), "n_folds": int(n_folds)},
    )


def _component_counts(n_components: int | Mapping[str, int], names: list[str]) -> dict[str, int]:
    if isinstance(n_components, Mapping):
        if set(n_components) != set(names):
            raise ValueError(f"n_components dict must have exactly the keys {names}, got {list(n_components)}")
        qs = dict(n_components)
    else:
        qs = {n: n_components for n in names}
    for n, q in qs.items():
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q < 1:
            raise ValueError(f"n_components must be an int >= 1 (for {n!r}), got {q!r}")
    return {n: int(q) for n, q in qs.items()}
