"""dPCA of hidden states at label positions, per layer (arXiv 2406.16007; METHODS.md sections 4 and 9).

Pipeline: ``states.collect_label_states`` reads the residual stream at the demo answer (label
word) positions of a ``PromptBatch`` of a categorization task -> ``LabelStates`` (one sample per
demo, labelled by the input's nuisance feature, its class and the label word) ->
``dpca_from_states`` arranges each layer's samples into the dPCA tensor ``X`` (d_model x
n_nuisance x n_label, ``conditions.condition_tensor``), fits ``numpy_dpca.demixed_pca``, measures
Mahalanobis distances between clusters (``distances``) and repeats it under ``null_factors`` ->
``DPCALayerResult``. ``dpca_by_layer`` does both. Removing a fitted subspace from the residual
stream is ``ablation.ablate_subspace``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp_of
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.dpca.conditions import condition_tensor
from icl_circuits.methods.dpca.distances import mahalanobis_distances
from icl_circuits.methods.dpca.numpy_dpca import RegularizerOnEdgeWarning, demixed_pca
from icl_circuits.methods.dpca.states import FACTORS, LabelStates, categorization_task, collect_label_states

__all__ = ["DPCALayerResult", "dpca_from_states", "dpca_by_layer", "null_factors", "DEFAULT_N_NULL"]

#: Null draws by default: the permutation p-value (1 + #{null >= observed}) / (1 + n_null) can then
#: reach 1/21 < 0.05. Each draw repeats the per-layer fit (with its cross-validation) and the
#: Mahalanobis distances, so a result costs about (1 + n_null) times the fitting time of one without
#: nulls; the model's forward passes (collecting the states) are not repeated.
DEFAULT_N_NULL = 20


# ----------------------------------------------------------------------------- dPCA per layer
@dataclass(frozen=True)
class DPCALayerResult(Result):
    """dPCA of label-position states at every layer, with cluster distances.

    Axes: ``marginalizations`` (e.g. ["length", "label", "interaction"]), components (padded to
    ``n_components``: NaN for explained variance and projections, 0 for axes; ``n_axes`` says how
    many are real), ``factors`` (display names, e.g. ["length", "label"]), ``spaces`` ("full",
    each marginalization's encoder projections, "dpca" = all of them).

    total_marginal_variance: [layer, marg] ||X_phi||^2 / ||X||^2 (sums to 1 per layer)
    explained_variance: [layer, marg, comp] variance of X explained by each component
    encoders: [layer, marg, comp, d_model]; decoders: [layer, marg, d_model, comp] (orthonormal)
    means: [layer, d_model] dPCA centre (mean over conditions); regularizers: [layer] lambda used
    regularizer_on_edge: per layer, "lowest" / "highest" where cross-validation chose that end of its
        grid (``meta["lambda_grid"]``; the error may keep falling beyond it), else None; empty for
        results saved before issue 24 (``edge_layers`` reads it)
    distances: [layer, factor, space] mean pairwise Mahalanobis distance between the factor's
        clusters of samples (pooled within-class covariance, shrinkage ``shrinkage``)
    null_distances: [null, layer, factor, space], null_total_marginal_variance: [null, layer, marg]:
        the same for each of ``n_null`` draws of condition labels under the null (``null_factors``;
        refit included): what noise, overfitting and the sharing of words and context within a
        prompt give without any representation of the factor. ``p_values`` compares with them.
    projections: [layer, marg, comp, sample] encoder projections D (h - mean) of each sample
    sample_factors: [factor, sample]; condition_counts: samples per condition
    """

    total_marginal_variance: Float[Tensor, "layer marg"]
    explained_variance: Float[Tensor, "layer marg comp"]
    encoders: Float[Tensor, "layer marg comp d_model"]
    decoders: Float[Tensor, "layer marg d_model comp"]
    n_axes: Int[Tensor, "layer marg"]
    means: Float[Tensor, "layer d_model"]
    regularizers: Float[Tensor, "layer"]
    distances: Float[Tensor, "layer factor space"]
    null_distances: Float[Tensor, "null layer factor space"]
    null_total_marginal_variance: Float[Tensor, "null layer marg"]
    projections: Float[Tensor, "layer marg comp sample"]
    sample_factors: Int[Tensor, "factor sample"]
    condition_counts: Int[Tensor, "..."]
    layers: list[int]
    marginalizations: list[str]
    factors: list[str]
    levels: list[list]
    spaces: list[str]
    position_kind: str
    task: str
    n_demos: int
    seed: int
    n_trials: int
    regularizer: float | str | None
    shrinkage: float | str
    regularizer_on_edge: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def edge_layers(self) -> dict[int, str]:
        """``{layer: "lowest" | "highest"}`` for the layers whose cross-validated lambda is on an edge
        of its grid (empty when none is, when lambda was fixed, or for a result saved without it)."""
        return {l: e for l, e in zip(self.layers, self.regularizer_on_edge) if e}

    def _index(self, layer: int, marginalization: str) -> tuple[int, int]:
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} not among this result's layers {self.layers}")
        if marginalization not in self.marginalizations:
            raise ValueError(f"marginalization must be one of {self.marginalizations}, got {marginalization!r}")
        return self.layers.index(layer), self.marginalizations.index(marginalization)

    def axes(self, layer: int, marginalization: str) -> Float[Tensor, "d_model k"]:
        """The decoder axes (orthonormal columns) of ``marginalization`` at ``layer``."""
        li, mi = self._index(layer, marginalization)
        return self.decoders[li, mi, :, : int(self.n_axes[li, mi])]

    @staticmethod
    def _null(draws: Tensor, null: bool | float) -> np.ndarray:
        """Mean over null draws (``null=True``) or their ``null`` quantile (a float in [0, 1]); draws
        that could not be fitted (NaN, see ``meta["null_error"]``) are left out."""
        x = draws.double().numpy()
        if not isinstance(null, bool) and not 0.0 <= float(null) <= 1.0:
            raise ValueError(f"null must be a bool or a quantile in [0, 1], got {null!r}")
        ok = ~np.isnan(x)
        if x.shape[0] == 0 or not ok.any():
            return np.full(x.shape[1:], np.nan)
        import warnings

        with warnings.catch_warnings():  # an entry with no fitted draw is NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(x, 0) if isinstance(null, bool) else np.nanquantile(x, float(null), axis=0)

    def variance_table(self, null: bool | float = False) -> pd.DataFrame:
        """Total marginal variance: one row per layer, one column per marginalization (``null``:
        True = mean over the null draws, a float q = their q-quantile)."""
        v = self.total_marginal_variance.numpy() if null is False else self._null(self.null_total_marginal_variance, null)
        return pd.DataFrame(v, index=pd.Index(self.layers, name="layer"), columns=self.marginalizations)

    def distance_table(self, space: str = "full", null: bool | float = False) -> pd.DataFrame:
        """Mean Mahalanobis distance per layer (rows) and factor (columns) in ``space`` (``null`` as
        in ``variance_table``)."""
        if space not in self.spaces:
            raise ValueError(f"space must be one of {self.spaces}, got {space!r}")
        d = self.distances.numpy() if null is False else self._null(self.null_distances, null)
        return pd.DataFrame(d[:, :, self.spaces.index(space)], index=pd.Index(self.layers, name="layer"),
                            columns=self.factors)

    def p_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Permutation p-values ``(1 + #{null >= observed}) / (1 + n)`` for the total marginal
        variance [layer, marg] and the distances [layer, factor, space], with ``n`` the null draws that
        could be fitted (a NaN draw is left out, not counted as below the observed value; NaN where
        there is none)."""
        def p(obs: Tensor, draws: Tensor) -> np.ndarray:
            ok = ~torch.isnan(draws)
            n = ok.sum(0).numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                out = (1 + ((draws >= obs[None]) & ok).sum(0).numpy()) / (1 + n)
            return np.where(n > 0, out, np.nan)
        return p(self.total_marginal_variance, self.null_total_marginal_variance), p(self.distances, self.null_distances)

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy: layer, measure (total_marginal_variance | explained_variance | distance),
        marginalization, component, factor, space, value, null (mean over null draws), null_q95,
        p_value (permutation p-value against the null draws)."""
        nv, nd = self._null(self.null_total_marginal_variance, True), self._null(self.null_distances, True)
        qv, qd = self._null(self.null_total_marginal_variance, 0.95), self._null(self.null_distances, 0.95)
        pv, pd_ = self.p_values()
        rows = []
        for li, l in enumerate(self.layers):
            for mi, m in enumerate(self.marginalizations):
                rows.append((l, "total_marginal_variance", m, None, None, None,
                             float(self.total_marginal_variance[li, mi]), nv[li, mi], qv[li, mi], pv[li, mi]))
                for k in range(int(self.n_axes[li, mi])):
                    rows.append((l, "explained_variance", m, k, None, None,
                                 float(self.explained_variance[li, mi, k]), None, None, None))
            for fi, f in enumerate(self.factors):
                for si, s in enumerate(self.spaces):
                    rows.append((l, "distance", None, None, f, s, float(self.distances[li, fi, si]),
                                 nd[li, fi, si], qd[li, fi, si], pd_[li, fi, si]))
        return pd.DataFrame(rows, columns=["layer", "measure", "marginalization", "component", "factor",
                                           "space", "value", "null", "null_q95", "p_value"])

    def summary(self) -> dict:
        """Per-layer numbers as plain JSON: variance per marginalization, distances per factor/space,
        and the means over the null draws (NaN without them)."""
        nv, nd = self._null(self.null_total_marginal_variance, True), self._null(self.null_distances, True)
        out = {}
        for li, l in enumerate(self.layers):
            out[str(l)] = {
                "total_marginal_variance": {m: float(self.total_marginal_variance[li, mi])
                                            for mi, m in enumerate(self.marginalizations)},
                "explained_variance": {m: self.explained_variance[li, mi, : int(self.n_axes[li, mi])].tolist()
                                       for mi, m in enumerate(self.marginalizations)},
                "distance": {f: {s: float(self.distances[li, fi, si]) for si, s in enumerate(self.spaces)}
                             for fi, f in enumerate(self.factors)},
                "null_distance": {f: {s: float(nd[li, fi, si]) for si, s in enumerate(self.spaces)}
                                  for fi, f in enumerate(self.factors)},
                "null_total_marginal_variance": {m: float(nv[li, mi]) for mi, m in enumerate(self.marginalizations)},
            }
        return out


def _join(names: list[str]) -> dict[str, list[str]]:
    """Readable names for interactions: "interaction" for two factors, "a×b" beyond."""
    out = {}
    for r in range(2, len(names) + 1):
        for sub in combinations(names, r):
            out["interaction" if len(names) == 2 else "×".join(sub)] = ["".join(sub)]
    return out


def _mean_distance(H: np.ndarray, groups: np.ndarray, shrinkage: float | str) -> float:
    if H.shape[1] == 0:
        return float("nan")
    return mahalanobis_distances(H, groups, shrinkage=shrinkage).mean_distance


def _fit_layer(H, fvals, names, join, n_components, regularizer, n_trials, min_trials, shrinkage, seed, grid=None):
    cd = condition_tensor(H, fvals, names, n_trials=n_trials, min_trials=min_trials, seed=seed)
    if regularizer == "auto" and cd.trials.shape[0] < 5:
        raise ValueError(f"regularizer='auto' cross-validates over 5 folds of trials but the smallest "
                         f"condition has {cd.trials.shape[0]} samples; use more prompts or a fixed regularizer")
    with warnings.catch_warnings():  # recorded in the fit; dpca_from_states warns once for all layers
        warnings.simplefilter("ignore", RegularizerOnEdgeWarning)
        fit = demixed_pca(cd.X, n_components, labels=names, join=join, regularizer=regularizer,
                          trials=cd.trials, seed=seed, lambda_grid=grid)
    Hc = H - fit.mean
    proj = {m: Hc @ fit.encoders[m].T for m in fit.marginalization_names}  # (sample, q)
    spaces = {"full": H, **proj, "dpca": np.concatenate(list(proj.values()), axis=1)}
    dist = np.array([[_mean_distance(S, f, shrinkage) for S in spaces.values()] for f in fvals])
    return cd, fit, proj, dist


def null_factors(states: LabelStates, factors: Sequence[str], seed: int = 0, draw: int = 0) -> list[np.ndarray]:
    """Factor values under the null hypothesis that the states do not represent them, drawn with
    ``numpy.random.default_rng([seed, 1, draw])`` and respecting the prompt structure (samples of one
    prompt share label words and context, so a per-sample shuffle would make a too-easy null):
    label and word are relabelled per prompt by a random permutation of their levels (consistent
    within the prompt, like the label-word binding); the nuisance is shuffled among the samples of
    each prompt (among all samples when every prompt has one sample, e.g. "final" positions)."""
    rng = np.random.default_rng([seed, 1, draw])
    order = np.argsort(states.prompt.numpy(), kind="stable")
    _, starts = np.unique(states.prompt.numpy()[order], return_index=True)
    groups = np.split(order, starts[1:])
    single = all(len(g) == 1 for g in groups)
    out = []
    for f in factors:
        v = states.factor(f).copy()
        if f == "nuisance" and single:
            v = v[rng.permutation(len(v))]
        elif f == "nuisance":
            for g in groups:
                v[g] = v[g][rng.permutation(len(g))]
        else:
            lev = np.unique(v)
            for g in groups:
                v[g] = rng.permutation(lev)[np.searchsorted(lev, v[g])]
        out.append(v)
    return out


def dpca_from_states(
    states: LabelStates, *, factors: Sequence[str] = ("nuisance", "label"), n_components: int = 3,
    regularizer: float | str | None = "auto", n_trials: int | None = None, min_trials: int = 2,
    shrinkage: float | str = "ledoit_wolf", n_null: int = DEFAULT_N_NULL, seed: int = 0, progress: bool = True,
    lambda_grid: Sequence[float] | None = None,
) -> DPCALayerResult:
    """dPCA of ``states`` at each of its layers (see ``dpca_by_layer`` for the analysis).

    X[:, i, j] = mean of the layer's samples with factor levels (i, j); ``trials`` (for
    ``regularizer="auto"``) are ``n_trials`` samples per condition (default: the smallest count)
    drawn with ``seed``, lambda from ``lambda_grid`` (default ``DEFAULT_LAMBDA_GRID``). Distances are measured in-sample on all samples; each of ``n_null`` null
    draws repeats fit and distances with the condition labels of ``null_factors`` (``seed``, draw),
    a baseline for the noise floor of Mahalanobis distances in d > n, the overfitting of the dPCA
    subspace and the correlation of samples within a prompt (if a draw's conditions are too thin
    to fit, its numbers are NaN and ``meta["null_error"]`` says why). ``n_null`` (default
    ``DEFAULT_N_NULL`` = 20, so that a p-value can reach 1/21 < 0.05) multiplies the fitting time by
    about ``1 + n_null``; 0 skips the null (p-values are then NaN). Layers whose cross-validated
    lambda is on an edge of its grid are recorded (``regularizer_on_edge``, ``edge_layers``) and named
    in one ``RegularizerOnEdgeWarning`` (null draws are not flagged: they are fitted on noise).
    """
    factors = list(factors)
    if len(factors) < 2 or len(set(factors)) != len(factors) or any(f not in FACTORS for f in factors):
        raise ValueError(f"factors must be 2 or 3 distinct names from {FACTORS}, got {factors!r}")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be an int >= 1, got {n_components!r}")
    names = [states.factor_label(f) for f in factors]
    join = _join(names)
    fvals = [states.factor(f) for f in factors]
    if isinstance(n_null, bool) or not isinstance(n_null, int) or n_null < 0:
        raise ValueError(f"n_null must be an int >= 0, got {n_null!r}")
    nulls = [null_factors(states, factors, seed, k) for k in range(n_null)]
    meta: dict = {"n_samples": len(states), "n_components": n_components, "states_seed": states.seed,
                  "n_null": n_null}
    d, n = states.states.shape[2], len(states)
    out: dict[str, list] = {k: [] for k in ("tmv", "ev", "enc", "dec", "nax", "mean", "lam", "dist",
                                            "ndist", "ntmv", "proj")}
    counts, edges, grid = None, [], None
    for li, layer in enumerate(tqdm(states.layers, desc="dPCA per layer", disable=not progress)):
        H = states.at(layer)
        cd, fit, proj, dist = _fit_layer(H, fvals, names, join, n_components, regularizer, n_trials,
                                         min_trials, shrinkage, seed, lambda_grid)
        margs = fit.marginalization_names
        counts = cd.counts
        edges.append(fit.regularizer_on_edge)
        grid = grid if fit.cv_lambdas is None else fit.cv_lambdas
        q = n_components
        ev, enc, dec = np.full((len(margs), q), np.nan), np.zeros((len(margs), q, d)), np.zeros((len(margs), d, q))
        pr = np.full((len(margs), q, n), np.nan)
        for mi, m in enumerate(margs):
            k = fit.encoders[m].shape[0]
            ev[mi, :k], enc[mi, :k], dec[mi, :, :k], pr[mi, :k] = (fit.explained_variance[m], fit.encoders[m],
                                                                   fit.decoders[m], proj[m].T)
        out["tmv"].append([fit.total_marginal_variance[m] for m in margs])
        out["nax"].append([fit.encoders[m].shape[0] for m in margs])
        for key, v in (("ev", ev), ("enc", enc), ("dec", dec), ("mean", fit.mean), ("lam", fit.regularizer),
                       ("dist", dist), ("proj", pr)):
            out[key].append(v)
        nd, nv = np.full((n_null, *dist.shape), np.nan), np.full((n_null, len(margs)), np.nan)
        for k, fnull in enumerate(nulls):
            try:
                _, nfit, _, nd[k] = _fit_layer(H, fnull, names, join, n_components, regularizer, None,
                                               min_trials, shrinkage, seed, lambda_grid)
                nv[k] = [nfit.total_marginal_variance[m] for m in margs]
            except ValueError as err:
                meta["null_error"] = str(err)
        out["ndist"].append(nd)
        out["ntmv"].append(nv)
    if grid is not None:
        meta["lambda_grid"] = [float(v) for v in grid]
    if any(edges):
        where = ", ".join(f"{l} ({lam:.3g}, {e})" for l, lam, e in zip(states.layers, out["lam"], edges) if e)
        warnings.warn(f"dPCA cross-validation chose lambda on an edge of its grid ({grid[0]:.3g} ... {grid[-1]:.3g}, "
                      f"{len(grid)} values) at layer(s) {where}: the held-out error may keep falling beyond it",
                      RegularizerOnEdgeWarning, stacklevel=2)
    f32 = lambda k: torch.tensor(np.asarray(out[k]), dtype=torch.float32)  # noqa: E731
    return DPCALayerResult(
        total_marginal_variance=f32("tmv"), explained_variance=f32("ev"), encoders=f32("enc"),
        decoders=f32("dec"), n_axes=torch.tensor(out["nax"], dtype=torch.long), means=f32("mean"),
        regularizers=f32("lam"), distances=f32("dist"), projections=f32("proj"),
        null_distances=f32("ndist").transpose(0, 1).contiguous(),
        null_total_marginal_variance=f32("ntmv").transpose(0, 1).contiguous(),
        sample_factors=torch.tensor(np.stack(fvals), dtype=torch.long),
        condition_counts=torch.tensor(counts, dtype=torch.long),
        layers=list(states.layers), marginalizations=list(margs), factors=names,
        levels=[list(map(int, lv)) for lv in cd.levels], spaces=["full", *margs, "dpca"],
        position_kind=states.position_kind, task=states.task,
        n_demos=states.n_demos, seed=seed, n_trials=int(cd.trials.shape[0]), regularizer=regularizer,
        shrinkage=shrinkage, regularizer_on_edge=edges, meta=meta, **stamp_of(states),
    )


def dpca_by_layer(
    model: HookedModel, batch: PromptBatch, layers: Sequence[int] | None = None, n_components: int = 3,
    regularizer: float | str | None = "auto", position: str = "answer", *,
    factors: Sequence[str] = ("nuisance", "label"), min_trials: int = 2, shrinkage: float | str = "ledoit_wolf",
    n_null: int = DEFAULT_N_NULL, seed: int | None = None, batch_size: int = 64, progress: bool = True,
    lambda_grid: Sequence[float] | None = None,
) -> DPCALayerResult:
    """Per layer, demixed PCA of the residual stream at label positions (2406.16007's analysis).

    The states of ``collect_label_states`` are averaged per condition into X (d_model x
    n_nuisance x n_label) and split into the nuisance, label and interaction marginalizations
    (``dpca.demixed_pca``; ``regularizer``: "auto" (default) = lambda cross-validated over balanced
    trials from ``lambda_grid`` (default ``DEFAULT_LAMBDA_GRID``), needs >= 5 samples per condition; None = 0, which with d_model > n_conditions amplifies
    the samples' noise in the encoder projections; or a float lambda). Returned per layer: the
    variance of each marginalization, the components' explained variance, the decoder axes, and
    the mean pairwise Mahalanobis distance between label clusters and between nuisance clusters
    (pooled within-class covariance with Ledoit-Wolf shrinkage) in the full space, in each
    marginalization's encoder projections and in all dPCA components together, each with
    ``n_null`` draws of a null baseline (``null_factors``; default 20, so that permutation p-values
    can fall below 0.05; each draw refits every layer, see ``DEFAULT_N_NULL`` for the cost).
    ``batch``: ICL prompts of a categorization task (``build_prompts(model, task, n_prompts,
    n_demos, seed=...)``); ``seed`` (default: the batch's seed) draws the balanced trials and the
    null labels. Published (LLaMA-7B, string length as nuisance): length information peaks early
    and fades, label information stays.
    """
    categorization_task(batch.task, "dpca_by_layer")
    seed = batch.seed if seed is None else seed
    states = collect_label_states(model, batch, layers, position, batch_size=batch_size)
    return dpca_from_states(states, factors=factors, n_components=n_components, regularizer=regularizer,
                            min_trials=min_trials, shrinkage=shrinkage, n_null=n_null, seed=seed, progress=progress,
                            lambda_grid=lambda_grid)
