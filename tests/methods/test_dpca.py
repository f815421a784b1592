"""Tests for the pure-numpy demixed PCA and Mahalanobis cluster distances."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from icl_circuits.methods.dpca.distances import mahalanobis_distances
from icl_circuits.methods.dpca.numpy_dpca import (
    DEFAULT_LAMBDA_GRID, DPCAResult, RegularizerOnEdgeWarning, demixed_pca, lambda_on_edge, marginalize,
)

#: the grid before issue 24; its top edge is where noisy planted data and letter-string sat
OLD_GRID = np.logspace(-7, -1, 13)


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _centre(X):
    return X - X.mean(axis=tuple(range(1, X.ndim)), keepdims=True)


def _planted(sigma=0.01, seed=1):
    """X[:, i, j] = u f(i) + v g(j) + noise, with orthonormal u, v (d=40, 4 x 3 conditions)."""
    rng = np.random.default_rng(seed)
    uv, _ = np.linalg.qr(rng.normal(size=(40, 2)))
    u, v = uv[:, 0], uv[:, 1]
    f = 2.0 * np.array([-1.5, -0.5, 0.5, 1.5])
    g = 1.5 * np.array([-1.0, 0.0, 1.0])
    S = u[:, None, None] * f[None, :, None] + v[:, None, None] * g[None, None, :]
    N = sigma * rng.normal(size=S.shape)
    return S + N, u, v, S, N


# ------------------------------------------------------------------ marginalization
@pytest.mark.parametrize("shape,labels", [((7, 4, 3), ("a", "b")), ((5, 3, 2, 4), ("t", "s", "d"))])
def test_marginalizations_sum_to_centred_data(shape, labels):
    X = _random(shape) + 3.0
    margs = marginalize(_centre(X), labels)
    assert len(margs) == 2 ** len(labels) - 1
    np.testing.assert_allclose(sum(margs.values()), _centre(X), atol=1e-10, rtol=0)


def test_marginalization_names_and_zero_mean_over_own_parameters():
    labels = ("t", "s", "d")
    margs = marginalize(_centre(_random((5, 3, 2, 4))), labels)
    assert list(margs) == ["t", "s", "d", "ts", "td", "sd", "tsd"]
    for name, part in margs.items():
        assert part.shape == (5, 3, 2, 4)
        for lab in name:
            assert np.abs(part.mean(axis=1 + labels.index(lab))).max() < 1e-12


def test_marginalizations_are_mutually_orthogonal_in_condition_space():
    margs = marginalize(_centre(_random((6, 4, 3))), ("a", "b"))
    flat = {k: v.reshape(6, -1) for k, v in margs.items()}
    assert np.abs(flat["a"] @ flat["b"].T).max() < 1e-12
    assert np.abs(flat["a"] @ flat["ab"].T).max() < 1e-12


# ------------------------------------------------------------------ planted structure
def test_planted_axes_are_recovered_by_top_decoders():
    X, u, v, _, _ = _planted()
    res = demixed_pca(X, 2)
    assert abs(res.decoders["a"][:, 0] @ u) >= 0.9
    assert abs(res.decoders["b"][:, 0] @ v) >= 0.9


def test_planted_variance_split_matches_construction():
    sigma = 0.01
    X, u, v, S, _ = _planted(sigma=sigma)
    res = demixed_pca(X, 2)
    f, g = u @ S[:, :, 0], v @ S[:, 0, :]  # planted tunings (zero-mean by construction)
    var_a, var_b = 3 * np.sum(f ** 2), 4 * np.sum(g ** 2)  # |u| = |v| = 1, 3 and 4 repeats
    total = var_a + var_b
    # noise moves a squared norm by the cross term 2<S_phi, N_phi> ~ N(0, (2 sigma ||S_phi||)^2)
    # plus at most E||N||^2 = sigma^2 d n_cond; allow 4 sd, doubled for numerator + denominator
    noise_energy = sigma ** 2 * X.size
    tol = 2 * (4 * 2 * sigma * np.sqrt(total) + noise_energy) / total
    assert abs(res.total_marginal_variance["a"] - var_a / total) <= tol
    assert abs(res.total_marginal_variance["b"] - var_b / total) <= tol
    assert res.total_marginal_variance["ab"] <= 2 * noise_energy / total
    assert res.explained_variance["a"][0] == pytest.approx(var_a / total, abs=tol)


def test_total_marginal_variance_sums_to_one():
    res = demixed_pca(_random((8, 4, 3)), 2)
    assert sum(res.total_marginal_variance.values()) == pytest.approx(1.0, abs=1e-12)


def test_marginal_explained_variance_splits_each_components_total():
    res = demixed_pca(_random((8, 4, 3)), 2, regularizer=1e-3)
    for name in res.marginalization_names:
        mev = res.marginal_explained_variance[name]
        assert mev.shape == (res.encoders[name].shape[0], 3)
        np.testing.assert_allclose(mev.sum(axis=1), res.explained_variance[name], atol=1e-12)


def test_unregularized_full_rank_fit_reconstructs_the_marginalization():
    X = _random((10, 3, 2))
    res = demixed_pca(X, 10)  # capped at each marginalization's rank
    margs = marginalize(_centre(X), ("a", "b"))
    Xc = _centre(X).reshape(10, -1)
    for name, part in margs.items():
        recon = res.decoders[name] @ res.encoders[name] @ Xc
        np.testing.assert_allclose(recon, part.reshape(10, -1), atol=1e-10)


def test_regularization_shrinks_encoders():
    X = _random((10, 4, 3))
    small, large = demixed_pca(X, 2), demixed_pca(X, 2, regularizer=1e-1)
    assert np.linalg.norm(large.encoders["a"]) < np.linalg.norm(small.encoders["a"])


# ----------------------------------------------------------------------- determinism
@pytest.mark.parametrize("regularizer", [None, 1e-3])
def test_fits_are_bitwise_identical_regardless_of_global_seed(regularizer):
    # bit-equality: the same call on the same arrays twice (only numpy's global state differs)
    X = _random((20, 4, 3))
    np.random.seed(1)
    r1 = demixed_pca(X, 3, regularizer=regularizer)
    np.random.seed(12345)
    np.random.rand(10)
    r2 = demixed_pca(X, 3, regularizer=regularizer)
    for name in r1.marginalization_names:
        assert np.array_equal(r1.encoders[name], r2.encoders[name])
        assert np.array_equal(r1.decoders[name], r2.decoders[name])
        assert np.array_equal(r1.explained_variance[name], r2.explained_variance[name])


def test_auto_regularizer_is_deterministic_for_fixed_seed():
    X, *_ = _planted(sigma=0.5)
    trials = X[None] + np.random.default_rng(3).normal(size=(10,) + X.shape)
    np.random.seed(0)
    r1 = demixed_pca(trials.mean(0), 2, regularizer="auto", trials=trials, seed=7)
    np.random.seed(99)
    r2 = demixed_pca(trials.mean(0), 2, regularizer="auto", trials=trials, seed=7)
    # bit-equality: the same call on the same arrays twice
    assert r1.regularizer == r2.regularizer and r1.regularizer in DEFAULT_LAMBDA_GRID
    assert np.array_equal(r1.cv_errors, r2.cv_errors)
    assert r1.cv_errors.shape == DEFAULT_LAMBDA_GRID.shape and np.all(np.isfinite(r1.cv_errors))
    assert np.array_equal(r1.encoders["a"], r2.encoders["a"])


def test_auto_regularizer_requires_trials():
    with pytest.raises(ValueError, match="trials"):
        demixed_pca(_random((5, 3, 2)), regularizer="auto")


@pytest.mark.parametrize("bad_trials,match", [
    (np.zeros((6, 5, 3, 3)), "shape"),
    (np.full((6, 5, 3, 2), np.nan), "NaN"),
    (np.zeros((3, 5, 3, 2)), "n_folds"),
])
def test_bad_trials_raise(bad_trials, match):
    with pytest.raises(ValueError, match=match):
        demixed_pca(_random((5, 3, 2)), regularizer="auto", trials=bad_trials)


# ----------------------------------------------------------------- components/signs
def test_n_components_capped_at_marginalization_rank():
    res = demixed_pca(_random((10, 3, 2)), 5)
    assert {k: v.shape for k, v in res.encoders.items()} == {"a": (2, 10), "b": (1, 10), "ab": (2, 10)}
    assert res.decoders["b"].shape == (10, 1) and res.explained_variance["b"].shape == (1,)


def test_n_components_per_marginalization_dict():
    res = demixed_pca(_random((10, 4, 3)), {"a": 1, "b": 2, "ab": 3})
    assert [res.encoders[k].shape[0] for k in ("a", "b", "ab")] == [1, 2, 3]
    with pytest.raises(ValueError, match="n_components"):
        demixed_pca(_random((10, 4, 3)), {"a": 1})


def test_sign_convention_largest_decoder_entry_is_positive():
    res = demixed_pca(_random((15, 4, 3), seed=5), 3)
    for F in res.decoders.values():
        for k in range(F.shape[1]):
            assert F[np.argmax(np.abs(F[:, k])), k] > 0


def test_decoders_are_orthonormal():
    res = demixed_pca(_random((15, 4, 3)), 3, regularizer=1e-2)
    for F in res.decoders.values():
        np.testing.assert_allclose(F.T @ F, np.eye(F.shape[1]), atol=1e-12)


def test_transform_uses_training_mean():
    X = _random((12, 4, 3)) + 5.0
    res = demixed_pca(X, 2)
    proj = res.transform(X)
    assert proj["a"].shape == (2, 4, 3)
    for name, p in proj.items():
        assert np.abs(p.mean(axis=(1, 2))).max() < 1e-10  # the mean condition projects to ~0
    shifted = res.transform(X + 1.0, marginalization="a")
    assert list(shifted) == ["a"]
    np.testing.assert_allclose(shifted["a"] - proj["a"],
                               (res.encoders["a"] @ np.ones(12))[:, None, None] * np.ones((1, 4, 3)))


def test_transform_rejects_wrong_feature_count():
    res = demixed_pca(_random((12, 4, 3)), 2)
    with pytest.raises(ValueError, match="n_features"):
        res.transform(np.zeros((11, 3)))


# --------------------------------------------------------------------------- join
def test_join_merges_marginalizations():
    X = _random((9, 4, 3))
    res = demixed_pca(X, 2, join={"label": ["b", "ab"]})
    assert res.marginalization_names == ["a", "label"]
    margs = marginalize(_centre(X), ("a", "b"))
    total = np.sum(_centre(X) ** 2)
    expected = (np.sum(margs["b"] ** 2) + np.sum(margs["ab"] ** 2)) / total
    assert res.total_marginal_variance["label"] == pytest.approx(expected, rel=1e-12)
    assert res.marginal_explained_variance["a"].shape == (2, 2)


@pytest.mark.parametrize("join", [{"x": ["b", "zz"]}, {"x": ["b"], "y": ["b"]}, {"a": ["b"]}])
def test_bad_join_raises(join):
    with pytest.raises(ValueError, match="join"):
        demixed_pca(_random((9, 4, 3)), join=join)


# ------------------------------------------------------------------ input validation
@pytest.mark.parametrize("X,kwargs,match", [
    (np.zeros(5), {}, "at least 2 dims"),
    (np.zeros((5, 0, 3)), {}, "empty"),
    (_random((5, 1, 3)), {}, "each parameter needs at least 2 values"),
    (np.where(np.eye(5, 4)[:, :, None] > 0, np.nan, 1.0) * np.ones((5, 4, 3)), {}, "NaN"),
    (np.full((5, 4, 3), np.inf), {}, "NaN or inf"),
    (_random((5, 4, 3)), {"labels": ("a",)}, "labels"),
    (_random((5, 4, 3)), {"n_components": 0}, "n_components"),
    (_random((5, 4, 3)), {"regularizer": -1.0}, "regularizer"),
    (_random((5, 4, 3)), {"regularizer": "cv"}, "regularizer"),
])
def test_invalid_inputs_raise(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        demixed_pca(X, **kwargs)


# ----------------------------------------------------------------------- outputs
def test_to_dataframe_is_tidy():
    res = demixed_pca(_random((10, 3, 2)), 5)
    df = res.to_dataframe()
    assert list(df.columns) == ["marginalization", "component", "explained_variance"]
    assert len(df) == 5 and df.groupby("marginalization").size().to_dict() == {"a": 2, "ab": 2, "b": 1}


@pytest.mark.parametrize("regularizer", [1e-3, "auto"])
def test_save_load_round_trip(tmp_path, regularizer):
    X = _random((8, 3, 2))
    trials = X[None] + 0.1 * _random((5, 8, 3, 2), seed=9)
    res = demixed_pca(X, 2, regularizer=regularizer, trials=trials, join={"s": ["b", "ab"]})
    npz, js = res.save(tmp_path / "fit.npz")
    assert npz.exists() and js.exists()
    back = DPCAResult.load(tmp_path / "fit")
    # bit-equality: the arrays are written and read back, not recomputed
    assert back.marginalization_names == res.marginalization_names and back.labels == res.labels
    assert back.regularizer == res.regularizer and back.regularizer_on_edge == res.regularizer_on_edge
    assert back.total_marginal_variance == res.total_marginal_variance
    assert np.array_equal(back.mean, res.mean)
    for name in res.marginalization_names:
        for attr in ("encoders", "decoders", "explained_variance", "marginal_explained_variance"):
            assert np.array_equal(getattr(back, attr)[name], getattr(res, attr)[name])
    if regularizer == "auto":
        assert np.array_equal(back.cv_errors, res.cv_errors)
    else:
        assert back.cv_errors is None
    np.testing.assert_array_equal(back.transform(X)["a"], res.transform(X)["a"])  # same arrays, same call


# -------------------------------------------------------------------- Mahalanobis
def _two_clusters(n=2000, p=5, delta=3.0, seed=0):
    rng = np.random.default_rng(seed)
    shift = np.zeros(p)
    shift[0] = delta
    H = np.concatenate([rng.normal(size=(n, p)), rng.normal(size=(n, p)) + shift])
    return H, np.repeat([0, 1], n)


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", "oas", 0.0, 0.1])
def test_mahalanobis_recovers_known_separation(shrinkage):
    H, groups = _two_clusters()
    res = mahalanobis_distances(H, groups, shrinkage=shrinkage)
    assert isinstance(res.distances, pd.DataFrame) and res.distances.shape == (2, 2)
    assert res.mean_distance == pytest.approx(3.0, abs=0.15)
    assert res.distances.loc[0, 1] == res.distances.loc[1, 0] == res.mean_distance
    assert res.distances.loc[0, 0] == 0.0


def test_mahalanobis_mean_over_pairs_with_three_groups():
    rng = np.random.default_rng(1)
    H = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 4, 20, axis=0)
    res = mahalanobis_distances(H, np.repeat([2, 5, 7], 20))
    D = res.distances.to_numpy()
    assert list(res.distances.index) == [2, 5, 7] and np.allclose(D, D.T)
    assert res.mean_distance == pytest.approx(D[np.triu_indices(3, 1)].mean())


@pytest.mark.parametrize("H,groups,kwargs,match", [
    (np.zeros((5, 3)), np.array([0, 0, 1, 1, 1, 1]), {}, "groups must have shape"),
    (_random((5, 3)), np.array([0, 0, 0, 0, 0]), {}, "at least 2 distinct"),
    (_random((5, 3)), np.array([0, 0, 0, 0, 1]), {}, "at least 2 samples"),
    (np.where(np.eye(5, 3) > 0, np.nan, 0.0), np.array([0, 0, 1, 1, 1]), {}, "NaN"),
    (_random((5, 3)), np.array([0, 0, 1, 1, 1]), {"shrinkage": "bogus"}, "shrinkage"),
    (_random((5, 3)), np.array([0, 0, 1, 1, 1]), {"shrinkage": 1.5}, "shrinkage"),
    (_random((4, 10)), np.array([0, 0, 1, 1]), {"shrinkage": 0.0}, "singular"),
])
def test_mahalanobis_bad_inputs_raise(H, groups, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mahalanobis_distances(H, groups, **kwargs)


# ------------------------------------------------------ ridge: the reduced-rank optimum
def _ridge_rrr_optimum(X2, Xphi2, mu, q):
    """Independent closed form of min_{rank A <= q} ||Xphi - A X||^2 + mu ||A||^2: the plain
    reduced-rank regression of the augmented data [Xphi, 0] on [X, sqrt(mu) I] (least squares by
    lstsq, then the top-q left singular vectors of the augmented fitted values)."""
    n = X2.shape[0]
    Xa = np.hstack([X2, np.sqrt(mu) * np.eye(n)])
    Ya = np.hstack([Xphi2, np.zeros((n, n))])
    B = np.linalg.lstsq(Xa.T, Ya.T, rcond=None)[0].T
    U = np.linalg.svd(B @ Xa, full_matrices=False)[0][:, :q]
    return U @ U.T @ B, U


def _objective(A, X2, Xphi2, mu):
    return float(np.sum((Xphi2 - A @ X2) ** 2) + mu * np.sum(A ** 2))


def _max_angle_degrees(U, V):
    """Largest principal angle between the column spans of orthonormal U and V (via its sine,
    which is accurate near 0 where arccos is not)."""
    s = np.linalg.norm(V - U @ (U.T @ V), ord=2)
    return float(np.degrees(np.arcsin(min(s, 1.0))))


@pytest.mark.parametrize("lam", [1e-3, 1e-2, 1e-1])
@pytest.mark.parametrize("q", [1, 2])
def test_ridge_fit_attains_the_reduced_rank_ridge_optimum(lam, q):
    # d > n_conditions, as for residual streams; mu = lam ||X||_F^2 (the module's convention)
    X = _random((30, 4, 3), seed=11) + 0.5 * _planted(sigma=0.0)[0][:30]
    res = demixed_pca(X, q, regularizer=lam)
    Xc = _centre(X)
    X2 = Xc.reshape(30, -1)
    mu = lam * np.sum(Xc ** 2)
    for name, part in marginalize(Xc, ("a", "b")).items():
        P2 = part.reshape(30, -1)
        A_opt, U = _ridge_rrr_optimum(X2, P2, mu, q)
        F, D = res.decoders[name], res.encoders[name]
        best = _objective(A_opt, X2, P2, mu)
        assert _objective(F @ D, X2, P2, mu) == pytest.approx(best, rel=1e-10)
        assert _max_angle_degrees(F, U) < 1e-5
        np.testing.assert_allclose(F @ D, A_opt, atol=1e-10 * np.abs(A_opt).max())


def test_unregularized_fit_is_the_reduced_rank_regression_with_pseudo_inverse():
    X = _random((30, 4, 3), seed=12)
    res = demixed_pca(X, 2)
    Xc = _centre(X)
    X2 = Xc.reshape(30, -1)
    pinv = np.linalg.pinv(X2)
    for name, part in marginalize(Xc, ("a", "b")).items():
        P2 = part.reshape(30, -1)
        B = P2 @ pinv  # mu = 0: the minimum-norm least-squares B
        U = np.linalg.svd(B @ X2, full_matrices=False)[0][:, :2]
        F, D = res.decoders[name], res.encoders[name]
        assert _max_angle_degrees(F, U) < 1e-6
        np.testing.assert_allclose(F @ D, U @ U.T @ B, atol=1e-10 * np.abs(B).max())
        A0, _ = _ridge_rrr_optimum(X2, P2, 0.0, 2)
        np.testing.assert_allclose(F @ D, A0, atol=1e-10 * np.abs(B).max())


def test_cv_error_reconstructs_training_marginalizations_from_test_trials():
    # Kobak et al.'s reference scoring: fit on the training average, then predict the TRAINING
    # marginalizations from the held-out average (independent noise in target and input)
    X, *_ = _planted(sigma=0.3)
    trials = X[None] + np.random.default_rng(4).normal(size=(10,) + X.shape)
    res = demixed_pca(trials.mean(0), 2, regularizer="auto", trials=trials, seed=7, n_folds=5)
    order = np.random.default_rng(7).permutation(10)
    for g in (0, 6, 12):
        lam, errs = DEFAULT_LAMBDA_GRID[g], []
        for test in np.array_split(order, 5):
            Xtr = _centre(trials[np.setdiff1d(order, test)].mean(0))
            Xte = _centre(trials[test].mean(0)).reshape(40, -1)
            fit, margs = demixed_pca(Xtr, 2, regularizer=lam), marginalize(Xtr, ("a", "b"))
            err = sum(np.sum((m.reshape(40, -1) - fit.decoders[k] @ fit.encoders[k] @ Xte) ** 2) for k, m in margs.items())
            errs.append(err / sum(np.sum(m ** 2) for m in margs.values()))
        assert res.cv_errors[g] == pytest.approx(np.mean(errs), rel=1e-9)


def test_cv_prefers_a_ridge_when_noise_dominates_in_high_dimension():
    # d = 40 features, 12 conditions, noisy trials: the unregularized encoder fits noise, so the
    # held-out error must be lowest at an interior lambda, not at the smallest of the grid
    X, *_ = _planted(sigma=0.0)
    trials = X[None] + 2.0 * np.random.default_rng(5).normal(size=(20,) + X.shape)
    res = demixed_pca(trials.mean(0), 2, regularizer="auto", trials=trials, seed=0)
    assert res.regularizer > DEFAULT_LAMBDA_GRID[0]
    assert res.cv_errors[0] > res.cv_errors.min() * 1.01


# ------------------------------------------------------- lambda grid: edges flagged
def _noisy_planted_trials():
    """The data of the test above: 20 trials of planted structure under noise 2 (d = 40, 12 conditions).
    CV's optimum is ~0.1 in our lambda (Kobak et al.'s reference code: ~0.78), the old grid's top value."""
    X, *_ = _planted(sigma=0.0)
    return X[None] + 2.0 * np.random.default_rng(5).normal(size=(20,) + X.shape)


def test_default_grid_is_log_spaced_to_10_and_extends_the_old_one():
    steps = np.diff(np.log10(DEFAULT_LAMBDA_GRID))
    assert DEFAULT_LAMBDA_GRID[0] == pytest.approx(1e-7) and DEFAULT_LAMBDA_GRID[-1] == pytest.approx(10.0)
    np.testing.assert_allclose(steps, 0.5, rtol=1e-12)
    np.testing.assert_allclose(DEFAULT_LAMBDA_GRID[: OLD_GRID.size], OLD_GRID, rtol=1e-12)  # old choices stay


def test_lambda_on_edge_rule():
    grid = np.array([1e-3, 1e-2, 1e-1])
    assert [lambda_on_edge(v, grid) for v in grid] == ["lowest", None, "highest"]
    assert lambda_on_edge(1e-3, None) is None and lambda_on_edge(0.0, grid) is None


def test_planted_lambda_inside_the_grid_is_not_flagged():
    trials = _noisy_planted_trials()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegularizerOnEdgeWarning)  # no edge warning may be raised
        res = demixed_pca(trials.mean(0), 2, regularizer="auto", trials=trials, seed=0)
    g = int(np.flatnonzero(res.cv_lambdas == res.regularizer)[0])
    assert 0 < g < DEFAULT_LAMBDA_GRID.size - 1 and res.regularizer_on_edge is None
    assert res.cv_errors[g] < res.cv_errors[g - 1] and res.cv_errors[g] < res.cv_errors[g + 1]  # a true minimum


def _edge_cases():
    X, *_ = _planted(sigma=0.0)
    exact = np.repeat(X[None], 10, axis=0)  # noise-free trials: every ridge only costs, CV wants lambda -> 0
    return [("lowest", exact, None, DEFAULT_LAMBDA_GRID[0]),
            ("highest", _noisy_planted_trials(), OLD_GRID, OLD_GRID[-1])]  # the optimum (~0.1) past 0.1


@pytest.mark.parametrize("edge,trials,grid,lam", _edge_cases(), ids=["below-default-grid", "above-old-grid"])
def test_lambda_beyond_the_grid_is_flagged_warns_and_round_trips(tmp_path, edge, trials, grid, lam):
    with pytest.warns(RegularizerOnEdgeWarning, match=rf"lambda = {lam:.3g}, the {edge} value of its grid") as rec:
        res = demixed_pca(trials.mean(0), 2, regularizer="auto", trials=trials, seed=0, lambda_grid=grid)
    used = DEFAULT_LAMBDA_GRID if grid is None else grid
    assert f"({used[0]:.3g} ... {used[-1]:.3g}, {used.size} values)" in str(rec[0].message)
    assert res.regularizer == pytest.approx(lam, rel=1e-12) and res.regularizer_on_edge == edge
    slope = res.cv_errors[1] - res.cv_errors[0] if edge == "lowest" else res.cv_errors[-2] - res.cv_errors[-1]
    assert slope > 0  # the error still falls towards (and past) the edge
    res.save(tmp_path / "fit")
    assert DPCAResult.load(tmp_path / "fit").regularizer_on_edge == edge
    # a file written before the flag was stored: recomputed from its regularizer and grid on load
    js = tmp_path / "fit.json"
    meta = json.loads(js.read_text())
    del meta["regularizer_on_edge"]
    js.write_text(json.dumps(meta))
    assert DPCAResult.load(tmp_path / "fit").regularizer_on_edge == edge


def test_fixed_regularizer_is_never_flagged():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegularizerOnEdgeWarning)
        res = demixed_pca(_random((8, 3, 2)), 2, regularizer=DEFAULT_LAMBDA_GRID[-1])
    assert res.regularizer_on_edge is None and res.cv_lambdas is None


@pytest.mark.parametrize("kwargs,match", [
    ({"lambda_grid": [1e-3, 1e-2]}, "at least 3"), ({"lambda_grid": [1e-1, 1e-2, 1e-3]}, "increasing"),
    ({"lambda_grid": [0.0, 1e-2, 1e-1]}, "positive"), ({"lambda_grid": [1e-3, 1e-2, 1e-1], "regularizer": 1e-3}, "only used"),
])
def test_bad_lambda_grid_raises(kwargs, match):
    trials = np.zeros((6, 5, 3, 2)) + _random((6, 5, 3, 2))
    with pytest.raises(ValueError, match=match):
        demixed_pca(trials.mean(0), **({"regularizer": "auto", "trials": trials} | kwargs))


def test_interrupted_save_keeps_the_previous_fit_or_loads_nothing(tmp_path, monkeypatch):
    import icl_circuits.methods.dpca.numpy_dpca as dpca_mod
    import icl_circuits.core.results as results_mod

    old, new = demixed_pca(_random((8, 3, 2)), 1), demixed_pca(_random((8, 3, 2), seed=5), 1)
    old.save(tmp_path / "fit")

    def boom(*a, **k):
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(dpca_mod.json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "fit")
    monkeypatch.undo()
    back = DPCAResult.load(tmp_path / "fit")
    assert np.array_equal(back.encoders["a"], old.encoders["a"])  # read back, not recomputed: bit-equal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "fit.npz"]

    from tests.conftest import interrupt_nth_replace

    interrupt_nth_replace(monkeypatch, results_mod, 2)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "fit")
    monkeypatch.undo()
    try:
        back = DPCAResult.load(tmp_path / "fit")
    except ValueError as err:
        assert "interrupted" in str(err)
    else:
        assert np.array_equal(back.encoders["a"], old.encoders["a"])  # read back: bit-equal
