"""Linear propagation of task vectors (Yang, Cho, Ding & Inoue 2025, METHODS.md section 8).

A vector theta added to the residual stream at the input of block l (final position) changes the
final residual by ``delta_h_L(theta) = h_L(with theta) - h_L(without)`` (final position, before
``ln_final``). We fit one linear map ``W`` (d x d) with ``delta_h_L ~ W theta`` over many vectors
and prompts, split it by the polar decomposition ``W = U P`` (U orthogonal: the rotation;
``P = (W^T W)^(1/2)`` symmetric PSD: the stretch) and ask how much it rotates versus scales.
Readouts per layer: the logit lens and task alignment (``icl_circuits.methods.logit_lens``).
Published: early task vectors are rotated into the label subspace, late ones mostly scaled.

Every forward goes through the runner: the clean residual at the input of block l is cached once
(``runner.read_resid``), then blocks l.. are resumed for many vectors at once, each added at
``Site(l)`` at the final position (``Entry`` + ``run_staggered``, final residuals only).
The map is a ridge regression, its penalty cross-validated on the fit vectors (``cv_ridge``; default
since issue 24: the old least squares at n ~ d overfits, docs/results/real/propagation_fit.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.grids import check_grid, grid_edge
from icl_circuits.core.checks import check_layer, check_vector
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.positions import check_batch
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp, stamp_of
from icl_circuits.core.runner import Entry, gather_positions, read_resid, run_staggered
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.logit_lens import alignment_chance, logit_lens, task_alignment
from icl_circuits.methods.vectors import TaskVector, evaluate_vector

__all__ = [
    "fit_linear_map", "r2", "polar_metrics", "cv_ridge", "RidgeChoice", "DEFAULT_RIDGE_GRID", "final_deltas",
    "fit_linear_propagation", "propagation_by_layer", "LinearPropagation", "PropagationResult",
]

#: candidates of ``ridge="cv"``, relative to the mean eigenvalue of X^T X (||X||_F^2 / d_in, the scale of
#: the old "auto" rule's 1e-3): 10^-6 ... 10^2, 17 values half a decade apart
DEFAULT_RIDGE_GRID = np.logspace(-6, 2, 17)


# ----------------------------------------------------------------------------- pure linear algebra
def fit_linear_map(X: Float[Tensor, "n d_in"], Y: Float[Tensor, "n d_out"], ridge: float = 0.0) -> Float[Tensor, "d_out d_in"]:
    """Least-squares ``W`` with ``y ~ W x`` for the rows of X and Y (no intercept), in float64.

    ``ridge = 0``: minimum-norm least squares (``scipy.linalg.lstsq``); ``ridge > 0``: the ridge
    solution ``W^T = (X^T X + ridge I)^-1 X^T Y``.
    """
    X, Y = torch.as_tensor(X).double(), torch.as_tensor(Y).double()
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be [n, d_in] and [n, d_out] with the same n, got {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] == 0:
        raise ValueError("X and Y are empty: nothing to fit")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x, y = X.numpy(), Y.numpy()
    if ridge == 0:
        B = scipy.linalg.lstsq(x, y)[0]
    else:
        B = scipy.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y, assume_a="pos")
    return torch.from_numpy(np.ascontiguousarray(B.T))


def r2(Y: Float[Tensor, "n d"], Y_hat: Float[Tensor, "n d"]) -> float:
    """Pooled coefficient of determination ``1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2``."""
    Y, Y_hat = torch.as_tensor(Y).double(), torch.as_tensor(Y_hat).double()
    tot = float(((Y - Y.mean(0)) ** 2).sum())
    return float("nan") if tot == 0 else 1.0 - float(((Y - Y_hat) ** 2).sum()) / tot


@dataclass(frozen=True)
class RidgeChoice:
    """``cv_ridge``'s choice: ``ridge`` (absolute) from ``grid`` (absolute: the relative grid x ``scale``), the
    pooled R² of each candidate's out-of-fold predictions (``cv_r2``), and ``on_edge`` ("lowest" / "highest"
    when the choice is an end of the grid, else None)."""

    ridge: float
    grid: list[float]
    cv_r2: list[float]
    scale: float
    n_folds: int
    seed: int
    on_edge: str | None


def cv_ridge(X: Float[Tensor, "n d_in"], Y: Float[Tensor, "n d_out"], *, relative_grid: Sequence[float] | None = None,
             n_folds: int = 5, seed: int = 0) -> RidgeChoice:
    """The ridge of ``fit_linear_map(X, Y, ridge)`` with the best k-fold cross-validated fit.

    Candidates: ``relative_grid`` (default ``DEFAULT_RIDGE_GRID``) x ``||X||_F^2 / d_in``. The rows are
    shuffled by ``seed`` into ``min(n_folds, n)`` folds (scikit-learn ``KFold``); each candidate is fitted
    on the other folds (``sklearn.linear_model.Ridge``, no intercept, float64) and predicts the held-out
    fold; the candidate with the least squared error over all folds wins (ties: the larger ridge). Pass
    only the fit rows: rows held out for testing must not choose the ridge.
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    x, y = torch.as_tensor(X).double().numpy(), torch.as_tensor(Y).double().numpy()
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must be [n, d_in] and [n, d_out] with the same n, got {x.shape} and {y.shape}")
    if x.shape[0] < 2 or isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"cross-validating the ridge needs at least 2 rows (got {x.shape[0]}) and an int "
                         f"n_folds >= 2 (got {n_folds!r}); pass a fixed ridge otherwise")
    rel = check_grid(DEFAULT_RIDGE_GRID if relative_grid is None else relative_grid, "relative_grid")
    scale = float((x * x).sum()) / x.shape[1]
    grid = rel * scale
    sse = np.zeros(grid.size)
    for train, held in KFold(min(n_folds, x.shape[0]), shuffle=True, random_state=seed).split(x):
        for i, alpha in enumerate(grid):
            pred = Ridge(alpha=float(alpha), fit_intercept=False).fit(x[train], y[train]).predict(x[held])
            sse[i] += float(((y[held] - pred) ** 2).sum())
    tot = float(((y - y.mean(0)) ** 2).sum())
    best = int(np.flatnonzero(sse == sse.min())[-1])
    return RidgeChoice(ridge=float(grid[best]), grid=grid.tolist(), scale=scale, n_folds=min(n_folds, x.shape[0]),
                       cv_r2=(1.0 - sse / tot if tot > 0 else np.full(grid.size, np.nan)).tolist(), seed=seed,
                       on_edge=grid_edge(float(grid[best]), grid))


def polar_metrics(W: Float[Tensor, "d d"]) -> dict[str, Any]:
    """Polar decomposition ``W = U P`` (``scipy.linalg.polar``) and how much W rotates vs stretches.

    Returns U, P, ``stretch`` (eigenvalues of P, descending = singular values of W),
    ``rotation_cos = tr(U) / d`` (mean cosine between x and U x over isotropic x; 1 = no rotation),
    ``rotation_deviation = ||U - I||_F / sqrt(d)`` (0 = no rotation, sqrt(2) ~ a random rotation),
    ``stretch_cv`` = std / mean of the stretch eigenvalues (0 = a pure scaling).
    """
    w = torch.as_tensor(W).double().numpy()
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"W must be square [d, d], got {w.shape}")
    U, P = scipy.linalg.polar(w, side="right")
    P = (P + P.T) / 2
    ev = np.sort(np.linalg.eigvalsh(P))[::-1].copy()
    d = w.shape[0]
    return {
        "U": torch.from_numpy(U), "P": torch.from_numpy(P), "stretch": torch.from_numpy(ev),
        "rotation_cos": float(np.trace(U) / d),
        "rotation_deviation": float(np.linalg.norm(U - np.eye(d)) / np.sqrt(d)),
        "stretch_cv": float(ev.std() / ev.mean()) if ev.mean() > 0 else float("nan"),
    }


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# ----------------------------------------------------------------------------- measuring the map
def final_deltas(
    model: HookedModel,
    batch: PromptBatch,
    layer: int,
    X: Float[Tensor, "n_vec d_model"],
    *,
    resid: Float[Tensor, "batch pos d_model"] | None = None,
    chunk: int = 4096,
) -> Float[Tensor, "n_vec batch d_model"]:
    """``delta_h_L = h_L(x added at layer's input, final position) - h_L(clean)`` at the final position,
    for every vector and prompt. Blocks layer.. only are run, resumed from the clean residual
    ``resid`` at the input of block ``layer`` (default: read here) through the runner
    (``Entry`` + ``run_staggered``): one clean entry, then up to ``chunk`` (vector, prompt) rows per
    forward, each vector added at ``Site(layer)`` at the final position."""
    check_layer(model, layer)
    check_vector(model, X, arg="X")
    n = model.cfg.n_layers
    if layer == n:
        return X.float()[:, None].expand(-1, len(batch), -1).clone()
    if resid is None:
        resid = read_resid(model, batch, None, [layer])[0]
    P, fin = len(batch), batch.final_positions
    clean = run_staggered(model, [Entry(layer, resid, fin, tokens=batch.tokens)], unembed=False)
    out = []
    per = max(1, chunk // P)
    for s in range(0, X.shape[0], per):
        xs = X[s: s + per].to(resid.dtype)
        c = xs.shape[0]
        pos = fin.repeat(c)[:, None]
        add = Intervention(Site(layer), "add", positions=pos, value=xs.repeat_interleave(P, 0)[:, None])  # [c*P, 1, d]
        h = run_staggered(model, [Entry(layer, resid.repeat(c, 1, 1), fin.repeat(c), hooks=[add],
                                        tokens=batch.tokens.repeat(c, 1))], unembed=False)
        out.append((h - clean.repeat(c, 1)).reshape(c, P, -1).float())
    return torch.cat(out)


@dataclass(frozen=True)
class LinearPropagation(Result):
    """The fitted map from a vector at the input of ``layer`` to its effect on the final residual.

    W: [d, d] (``delta_h_L ~ W x``); U, P: its polar factors; stretch: P's eigenvalues
    (descending); r2: held-out-vector R^2 over (vector, prompt) pairs; r2_mean: the same for the
    prompt-averaged effect; ridge used (``meta["ridge_option"]``: as asked), with ``ridge="cv"`` chosen
    from ``ridge_grid`` by its cross-validated R² ``ridge_cv_r2`` (``cv_ridge``; else empty, as in results
    saved before issue 24); ref_norm: the norm random vectors were drawn around.
    """

    W: Float[Tensor, "d_model d_model"]
    U: Float[Tensor, "d_model d_model"]
    P: Float[Tensor, "d_model d_model"]
    stretch: Float[Tensor, "d_model"]
    layer: int
    r2: float
    r2_mean: float
    ridge: float
    ref_norm: float
    rotation_cos: float
    rotation_deviation: float
    stretch_cv: float
    cos_random: float
    n_fit: int
    n_heldout: int
    n_prompts: int
    task: str
    ridge_grid: list = field(default_factory=list)
    ridge_cv_r2: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def apply(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``W x``."""
        return (x.double() @ self.W.T).to(x.dtype)

    def to_dataframe(self) -> pd.DataFrame:
        keys = ["layer", "r2", "r2_mean", "ridge", "ref_norm", "rotation_cos", "rotation_deviation", "stretch_cv",
                "cos_random", "n_fit", "n_heldout", "n_prompts", "task"]
        return pd.DataFrame([{**{k: getattr(self, k) for k in keys}, "model": self.model}])


def fit_linear_propagation(
    model: HookedModel,
    batch: PromptBatch,
    layer: int,
    *,
    n_vectors: int = 256,
    vectors: Float[Tensor, "k d_model"] | None = None,
    norm: float | None = None,
    holdout: float = 0.25,
    ridge: float | Literal["cv", "auto"] = "cv",
    cv_folds: int = 5,
    seed: int = 0,
) -> LinearPropagation:
    """Fit ``delta_h_L ~ W x`` for vectors x added at the input of block ``layer``, final position.

    Vectors: ``n_vectors`` random directions (seeded) with norms uniform in [0.5, 1.5] x ``norm``
    (default: the norm of the first of ``vectors`` if given, else the mean norm of the final-position
    residual at that layer: a realistic size), plus ``vectors`` (e.g. the task vector, always in the
    fit). ``seed`` draws them; the first ``holdout`` share of the random ones is kept out of the
    fit for R^2. The effects are measured on the prompts of ``batch`` (usually zero-shot). Least squares
    over (vector, prompt) pairs equals least squares on the prompt-averaged effect, which is what is
    solved. ``ridge``: "cv" (default) = ``cv_ridge`` over the fit vectors only (``cv_folds`` folds shuffled
    by ``seed``; the held-out ones never choose it); a float >= 0 fixes it; "auto", the rule before issue
    24 (kept to reproduce results made with it): 0 with >= d fit vectors, else 1e-3 x mean eigenvalue
    of X^T X (at n ~ d that least squares overfits).
    """
    check_layer(model, layer)
    d = model.cfg.d_model
    if isinstance(n_vectors, bool) or not isinstance(n_vectors, int) or n_vectors < 2:
        raise ValueError(f"n_vectors must be an integer >= 2 (some are held out), got {n_vectors!r}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if not (ridge in ("cv", "auto") if isinstance(ridge, str) else isinstance(ridge, Real) and ridge >= 0):
        raise ValueError(f"ridge must be 'cv', 'auto' or a number >= 0, got {ridge!r}")
    check_batch(batch, "batch")
    resid = read_resid(model, batch, None, [layer])[0]
    extra = torch.zeros(0, d) if vectors is None else check_vector(model, torch.as_tensor(vectors), arg="vectors").reshape(-1, d).float().cpu()
    if norm is None:
        norm = float(extra[0].norm()) if len(extra) else float(gather_positions(resid, batch.final_positions[:, None]).norm(dim=-1).mean())
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_vectors, d, generator=g)
    rand = dirs / dirs.norm(dim=-1, keepdim=True) * norm * (0.5 + torch.rand(n_vectors, 1, generator=g))
    n_out = max(1, int(round(holdout * n_vectors)))
    X = torch.cat([rand, extra])
    Y = final_deltas(model, batch, layer, X, resid=resid)  # [n_vec, batch, d]
    test = torch.arange(n_out)
    fit = torch.arange(n_out, len(X))
    Ym = Y.mean(1)
    option, choice = ridge, None
    if ridge == "cv":
        choice = cv_ridge(X[fit], Ym[fit], n_folds=cv_folds, seed=seed)
        ridge = choice.ridge
    elif ridge == "auto":
        x = X[fit].double()
        ridge = 0.0 if len(fit) >= d else 1e-3 * float((x * x).sum()) / d
    W = fit_linear_map(X[fit], Ym[fit], ridge=float(ridge))
    pred = X[test].double() @ W.T  # [n_out, d]
    pm = polar_metrics(W)
    return LinearPropagation(
        W=W.float(), U=pm["U"].float(), P=pm["P"].float(), stretch=pm["stretch"].float(), layer=layer,
        r2=r2(Y[test].reshape(-1, d), pred[:, None].expand(-1, len(batch), -1).reshape(-1, d)),
        r2_mean=r2(Ym[test], pred), ridge=float(ridge), ref_norm=norm, rotation_cos=pm["rotation_cos"],
        rotation_deviation=pm["rotation_deviation"], stretch_cv=pm["stretch_cv"],
        cos_random=float(_cos(X[test], pred.float()).mean()), n_fit=len(fit), n_heldout=n_out,
        n_prompts=len(batch), task=batch.task,
        ridge_grid=choice.grid if choice else [], ridge_cv_r2=choice.cv_r2 if choice else [],
        **stamp(model, batch),
        meta={"n_vectors": n_vectors, "vector_seed": seed, "ridge_option": option,
              **({"ridge_cv_folds": choice.n_folds, "ridge_on_edge": choice.on_edge} if choice else {})},
    )


# ----------------------------------------------------------------------------- per layer
_SCALARS = ("r2", "r2_mean", "rotation_cos", "rotation_deviation", "stretch_cv", "cos_random", "cos_theta_wtheta",
            "cos_theta_utheta", "gain", "alignment_theta", "alignment_wtheta", "lens_clean", "lens_injected",
            "acc_injected", "acc_reconstructed")


@dataclass(frozen=True)
class PropagationResult(Result):
    """How a task vector propagates from each of its layers to the final residual.

    Per layer ([layer] tensors): fit quality ``r2``/``r2_mean``; the map's rotation
    (``rotation_cos = tr U / d``, ``rotation_deviation``) and stretch spread (``stretch_cv``,
    ``stretch`` [layer, d]); for the vector theta itself ``cos_theta_wtheta`` = cos(theta, W theta),
    ``cos_theta_utheta`` = cos(theta, U theta), ``gain`` = ||W theta|| / ||theta||; task alignment
    of theta and of W theta (chance: ``alignment_chance``); logit-lens accuracy at that layer
    without (``lens_clean``) and with theta (``lens_injected``); model accuracy with theta added at
    the layer (``acc_injected``) and with W theta added at the final residual (``acc_reconstructed``),
    both over ``n_eval`` prompts, full vocabulary; ``baseline``: accuracy without a vector. ``ridge``:
    the fit's ridge per layer (None at the final layer, where W = I; empty for results saved before
    issue 24), chosen as ``meta["ridge_option"]`` says (``fit_linear_propagation``).
    """

    layers: list[int]
    r2: Float[Tensor, "layer"]
    r2_mean: Float[Tensor, "layer"]
    rotation_cos: Float[Tensor, "layer"]
    rotation_deviation: Float[Tensor, "layer"]
    stretch_cv: Float[Tensor, "layer"]
    stretch: Float[Tensor, "layer d_model"]
    cos_random: Float[Tensor, "layer"]
    cos_theta_wtheta: Float[Tensor, "layer"]
    cos_theta_utheta: Float[Tensor, "layer"]
    gain: Float[Tensor, "layer"]
    alignment_theta: Float[Tensor, "layer"]
    alignment_wtheta: Float[Tensor, "layer"]
    lens_clean: Float[Tensor, "layer"]
    lens_injected: Float[Tensor, "layer"]
    acc_injected: Float[Tensor, "layer"]
    acc_reconstructed: Float[Tensor, "layer"]
    alignment_chance: float
    baseline: float
    n_eval: int
    n_candidates: int
    task: str
    method: str
    ridge: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        df = pd.DataFrame({"layer": self.layers, **{k: getattr(self, k).tolist() for k in _SCALARS}})
        if len(self.ridge) == len(self.layers):
            df["ridge"] = [float("nan") if v is None else v for v in self.ridge]
        return df.assign(alignment_chance=self.alignment_chance, baseline=self.baseline, n_eval=self.n_eval,
                         task=self.task, model=self.model, method=self.method)


def propagation_by_layer(
    model: HookedModel,
    fit_batch: PromptBatch,
    eval_batch: PromptBatch,
    tv: TaskVector,
    *,
    layers: Sequence[int] | None = None,
    n_vectors: int = 256,
    ridge: float | Literal["cv", "auto"] = "cv",
    seed: int = 0,
    progress: bool = True,
) -> PropagationResult:
    """Fit the linear propagation map at each of ``tv``'s layers and measure rotation vs scaling,
    logit lens, task alignment and the accuracy of the reconstructed vector W theta.

    The map is fitted on ``fit_batch`` (``fit_linear_propagation``, random vectors drawn with
    ``seed``, ridge by ``ridge``, default cross-validated); the logit lens (candidates ``eval_batch.candidate_tokens("gold")``), task alignment
    and every accuracy are measured on ``eval_batch`` (other prompts of the same task; usually
    zero-shot). A "replace" vector (vanilla TV) is treated as the displacement it causes on average,
    ``theta - mean(h_l)`` at the final position of the fit prompts. At the final layer W = I.
    """
    check_batch(fit_batch, "fit_batch")
    ev = check_batch(eval_batch, "eval_batch")
    if fit_batch.task != ev.task:
        raise ValueError(f"fit_batch and eval_batch must be prompts of one task, got {fit_batch.task!r} and {ev.task!r}")
    tv.check_model(model)
    layers = list(tv.layers if layers is None else layers)
    for l in layers:
        tv.at(l)
    cand = ev.candidate_tokens("gold")
    lens_clean = logit_lens(model, ev, layers, candidates=cand)
    lens_inj = logit_lens(model, ev, layers, vectors=tv, candidates=cand)
    acc_inj = evaluate_vector(model, tv, ev, layers=layers)
    d, n = model.cfg.d_model, model.cfg.n_layers
    rows: dict[str, list] = {k: [] for k in (*_SCALARS[:9], "stretch", "wtheta", "theta", "ridge")}
    for l in tqdm(layers, desc=f"propagation {tv.method}", disable=not progress, leave=False):
        theta = tv.at(l).float()
        if tv.mode == "replace":
            h = read_resid(model, fit_batch, fit_batch.positions("final").positions, [l])[0, :, 0]
            theta = theta - h.mean(0)
        if l == n:
            eye = torch.eye(d, dtype=torch.float64)
            fit = {"W": eye, "r2": 1.0, "r2_mean": 1.0, "rotation_cos": 1.0, "rotation_deviation": 0.0,
                   "stretch_cv": 0.0, "cos_random": 1.0, "U": eye, "stretch": torch.ones(d), "ridge": None}
        else:
            lp = fit_linear_propagation(model, fit_batch, l, n_vectors=n_vectors, vectors=theta[None], ridge=ridge,
                                        seed=seed)
            fit = {k: getattr(lp, k) for k in ("W", "r2", "r2_mean", "rotation_cos", "rotation_deviation", "stretch_cv",
                                               "cos_random", "U", "stretch", "ridge")}
        W, U = fit["W"].double(), fit["U"].double()
        wt = W @ theta.double()
        for k in ("r2", "r2_mean", "rotation_cos", "rotation_deviation", "stretch_cv", "cos_random"):
            rows[k].append(float(fit[k]))
        rows["cos_theta_wtheta"].append(float(_cos(theta, wt)))
        rows["cos_theta_utheta"].append(float(_cos(theta, U @ theta.double())))
        rows["gain"].append(float(wt.norm() / theta.norm()))
        rows["stretch"].append(fit["stretch"].float())
        rows["wtheta"].append(wt.float())
        rows["theta"].append(theta)
        rows["ridge"].append(fit["ridge"])
    acc_rec = []
    for wt in rows["wtheta"]:
        rec = TaskVector(wt[None], [n], "add", f"{tv.method}-reconstructed", tv.task, **stamp_of(tv))
        acc_rec.append(float(evaluate_vector(model, rec, ev).values[0]))
    labels = cand.flatten()
    t = lambda k: torch.tensor(rows[k], dtype=torch.float32)  # noqa: E731
    return PropagationResult(
        layers=layers, r2=t("r2"), r2_mean=t("r2_mean"), rotation_cos=t("rotation_cos"),
        rotation_deviation=t("rotation_deviation"), stretch_cv=t("stretch_cv"), stretch=torch.stack(rows["stretch"]),
        cos_random=t("cos_random"), cos_theta_wtheta=t("cos_theta_wtheta"), cos_theta_utheta=t("cos_theta_utheta"),
        gain=t("gain"), alignment_theta=task_alignment(model, torch.stack(rows["theta"]), labels),
        alignment_wtheta=task_alignment(model, torch.stack(rows["wtheta"]), labels),
        lens_clean=lens_clean.accuracy, lens_injected=lens_inj.accuracy, acc_injected=acc_inj.values,
        acc_reconstructed=torch.tensor(acc_rec), alignment_chance=alignment_chance(model, labels),
        baseline=float(acc_inj.baseline), n_eval=len(ev), n_candidates=int(cand.shape[1]), task=ev.task,
        method=tv.method, ridge=rows["ridge"], **stamp(model, ev),
        meta={"n_vectors": n_vectors, "vector_seed": seed, "n_fit_prompts": len(fit_batch),
              "fit_seed": fit_batch.seed, "with_demos": fit_batch.n_demos, "mode": tv.mode, "ridge_option": ridge},
    )
