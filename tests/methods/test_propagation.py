"""Linear propagation: exact recovery of a known map, polar factors, deltas equal the naive runs (to
float32 rounding), the cross-validated ridge, the per-layer analysis on batches, figures, CLI and clear
errors."""

from __future__ import annotations

import json

import pytest
import scipy.stats
import torch
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
from icl_circuits import build_prompts
from icl_circuits.methods.logit_lens import logit_lens
from icl_circuits.methods import propagation as prop
from icl_circuits.methods.propagation import (
    DEFAULT_RIDGE_GRID, LinearPropagation, PropagationResult, cv_ridge, final_deltas, fit_linear_map,
    fit_linear_propagation, polar_metrics, propagation_by_layer, r2,
)
from icl_circuits.methods.vectors import TaskVector
from icl_circuits.methods.sweeps import SweepResult
from icl_circuits.viz import logit_lens as lens_plots
from icl_circuits.viz import propagation as plots


def _batches(model, n_fit, n_eval, task="antonym"):
    """Fit and evaluation prompts as the callers build them (zero-shot, seeds 0 and 1)."""
    return (build_prompts(model, task, n_fit, 0, seed=0, variant="zero_shot"),
            build_prompts(model, task, n_eval, 0, seed=1, variant="zero_shot"))


def test_fit_linear_map_recovers_a_known_matrix_exactly():
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    W = fit_linear_map(X, X @ W0.T)
    assert W.shape == (6, 5) and torch.allclose(W, W0, atol=1e-10)
    assert r2(X @ W0.T, X @ W.T) == pytest.approx(1.0)


def test_ridge_shrinks_and_solves_underdetermined_fits():
    g = torch.Generator().manual_seed(1)
    W0 = torch.randn(8, 8, generator=g, dtype=torch.float64)
    X = torch.randn(5, 8, generator=g, dtype=torch.float64)  # n < d
    W = fit_linear_map(X, X @ W0.T, ridge=1e-9)
    assert torch.allclose(X @ W.T, X @ W0.T, atol=1e-6)  # interpolates the training pairs
    assert fit_linear_map(X, X @ W0.T, ridge=1e3).norm() < W.norm()


def test_polar_of_rotation_times_stretch_gives_them_back():
    R = torch.from_numpy(scipy.stats.special_ortho_group.rvs(6, random_state=0))
    Q = torch.from_numpy(scipy.stats.ortho_group.rvs(6, random_state=1))
    S = Q @ torch.diag(torch.tensor([5.0, 4, 3, 2, 1, 0.5], dtype=torch.float64)) @ Q.T
    pm = polar_metrics(R @ S)
    assert torch.allclose(pm["U"], R, atol=1e-10) and torch.allclose(pm["P"], S, atol=1e-10)
    assert torch.allclose(pm["stretch"], torch.tensor([5.0, 4, 3, 2, 1, 0.5], dtype=torch.float64))


def test_a_pure_scaling_neither_rotates_nor_spreads():
    pm = polar_metrics(3 * torch.eye(4))
    assert pm["rotation_cos"] == pytest.approx(1) and pm["rotation_deviation"] == pytest.approx(0, abs=1e-12)
    assert pm["stretch_cv"] == pytest.approx(0, abs=1e-12)


def test_final_deltas_equal_the_naive_difference(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    X = torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 5
    D = final_deltas(tiny_model, batch, 1, X, chunk=8)  # 2 vectors per forward: two chunks
    # below: a different batching (one vector per forward, by hand), so float32 kernels may differ: atol 1e-5
    rows = torch.arange(4)
    with torch.no_grad():
        x = tiny_model(batch.tokens, stop_at_layer=1)
        clean = tiny_model(x, start_at_layer=1, stop_at_layer=2)[rows, batch.final_positions]
        for i in range(3):  # by hand: no hooks, no runner
            xi = x.clone()
            xi[rows, batch.final_positions] = xi[rows, batch.final_positions] + X[i]
            h = tiny_model(xi, start_at_layer=1, stop_at_layer=2)[rows, batch.final_positions]
            assert torch.allclose(D[i], h - clean, atol=1e-5)
    assert torch.equal(final_deltas(tiny_model, batch, 2, X)[:, 0], X)  # the final layer adds x itself: a copy


def test_small_vectors_propagate_linearly(tiny_model, tmp_path):
    """In the linear regime (tiny norms) the fitted map explains the held-out effects almost fully; the
    cross-validated ridge (the default) is recorded with its grid and scores and survives save/load."""
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    lp = fit_linear_propagation(tiny_model, batch, 1, n_vectors=96, norm=1e-3)
    assert lp.r2_mean > 0.99 and lp.n_fit == 72 and lp.W.shape == (32, 32)
    assert lp.meta["ridge_option"] == "cv" and len(lp.ridge_grid) == len(lp.ridge_cv_r2) == DEFAULT_RIDGE_GRID.size
    assert lp.ridge == lp.ridge_grid[max(range(len(lp.ridge_cv_r2)), key=lambda i: (lp.ridge_cv_r2[i], i))]
    back = LinearPropagation.load(lp.save(tmp_path / "lp"))
    assert torch.equal(back.W, lp.W) and back.to_dataframe().loc[0, "model"] == "tiny"  # read back: bit-equal
    assert back.ridge == lp.ridge and back.ridge_grid == lp.ridge_grid and back.ridge_cv_r2 == lp.ridge_cv_r2
    assert back.meta["ridge_on_edge"] == lp.meta["ridge_on_edge"]
    assert "model_name" not in lp.to_dataframe().columns and lp.provenance["n_prompts"] == 4


def test_auto_ridge_keeps_the_old_rule(tiny_model):
    """ridge="auto" (the default before issue 24, kept to reproduce old results): 0 with >= d fit vectors."""
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    lp = fit_linear_propagation(tiny_model, batch, 1, n_vectors=96, norm=1e-3, ridge="auto")
    assert lp.ridge == 0 and lp.ridge_grid == [] and lp.meta["ridge_option"] == "auto"
    lp2 = fit_linear_propagation(tiny_model, batch, 0, n_vectors=20, seed=1, ridge="auto")
    assert lp2.ridge > 0  # 15 fit vectors < d = 32
    fixed = fit_linear_propagation(tiny_model, batch, 1, n_vectors=20, ridge=0.5)
    assert fixed.ridge == 0.5 and fixed.meta["ridge_option"] == 0.5


# ----------------------------------------------------------------------------- the cross-validated ridge
def _planted_map(n, d=48, noise=0.5, seed=0):
    """y = W0 x + noise for n fit rows and 400 fresh test rows (float64)."""
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    X, Xt = (torch.randn(m, d, generator=g, dtype=torch.float64) for m in (n, 400))
    Y, Yt = (x @ W0.T + noise * torch.randn(len(x), d, generator=g, dtype=torch.float64) for x in (X, Xt))
    return X, Y, Xt, Yt


@pytest.mark.parametrize("n", [48, 56, 64])
def test_cv_ridge_beats_least_squares_at_n_about_d(n):
    """At n ~ d with noise, least squares fits the noise; the cross-validated ridge predicts fresh data better,
    with a ridge inside its grid (so neither 0 nor the grid's bound)."""
    X, Y, Xt, Yt = _planted_map(n)
    choice = cv_ridge(X, Y, seed=0)
    held_ls = r2(Yt, Xt @ fit_linear_map(X, Y, ridge=0.0).T)
    held_cv = r2(Yt, Xt @ fit_linear_map(X, Y, ridge=choice.ridge).T)
    assert held_cv > held_ls + 0.2 and held_cv > 0.3
    assert choice.on_edge is None and choice.grid[0] < choice.ridge < choice.grid[-1]
    assert choice.grid == pytest.approx((DEFAULT_RIDGE_GRID * choice.scale).tolist(), rel=1e-12)
    assert choice.scale == pytest.approx(float((X ** 2).sum()) / X.shape[1])
    assert max(choice.cv_r2) == choice.cv_r2[choice.grid.index(choice.ridge)]


def test_cv_ridge_needs_little_ridge_without_noise():
    X, Y, *_ = _planted_map(200, noise=0.0)
    choice = cv_ridge(X, Y, seed=0)
    assert choice.on_edge == "lowest" and choice.cv_r2[0] > 0.999


def test_cv_ridge_is_deterministic_for_a_seed():
    X, Y, *_ = _planted_map(56)
    a, b, c = cv_ridge(X, Y, seed=3), cv_ridge(X, Y, seed=3), cv_ridge(X, Y, seed=4)
    assert a == b  # the same folds and fits twice: bit-equal
    assert a.cv_r2 != c.cv_r2  # another seed: other folds


def test_fit_linear_propagation_cross_validates_on_the_fit_vectors_only(tiny_model, monkeypatch):
    """The held-out vectors (the first quarter of the random ones) never reach cv_ridge; a seed fixes the fit."""
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    seen = []
    real = prop.cv_ridge
    monkeypatch.setattr(prop, "cv_ridge", lambda X, Y, **kw: seen.append((X.clone(), kw)) or real(X, Y, **kw))
    lp = fit_linear_propagation(tiny_model, batch, 1, n_vectors=48, seed=2)
    g = torch.Generator().manual_seed(2)  # the vectors as fit_linear_propagation draws them
    dirs = torch.randn(48, 32, generator=g)
    X = dirs / dirs.norm(dim=-1, keepdim=True) * lp.ref_norm * (0.5 + torch.rand(48, 1, generator=g))
    (Xcv, kw), = seen
    assert Xcv.shape[0] == lp.n_fit == 36 and torch.equal(Xcv, X[12:])  # the same vectors: bit-equal
    assert kw["seed"] == 2 and lp.meta["ridge_cv_folds"] == 5
    again = fit_linear_propagation(tiny_model, batch, 1, n_vectors=48, seed=2)
    assert again.ridge == lp.ridge and torch.equal(again.W, lp.W)  # the same call on the same shapes: bit-equal


def test_propagation_by_layer_result_figures_and_round_trip(tiny_model, tmp_path):
    tv = TaskVector(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 3, [0, 1, 2], "add", "random",
                    "antonym", model="tiny")
    fit, ev = _batches(tiny_model, 4, 8)
    res = propagation_by_layer(tiny_model, fit, ev, tv, n_vectors=48, progress=False)
    df = res.to_dataframe()
    assert list(df.layer) == [0, 1, 2] and df.loc[2, "rotation_cos"] == 1 and df.loc[2, "gain"] == pytest.approx(1)
    assert df.loc[2, "acc_reconstructed"] == df.loc[2, "acc_injected"]  # W = I at the final residual
    back = PropagationResult.load(res.save(tmp_path / "p"))
    assert torch.equal(back.r2, res.r2) and back.layers == [0, 1, 2]  # read back: bit-equal
    assert back.ridge == res.ridge and res.ridge[2] is None and all(v > 0 for v in res.ridge[:2])
    assert res.meta["ridge_option"] == "cv" and df["ridge"].isna().tolist() == [False, False, True]
    for fig in (plots.rotation_scaling(res), plots.alignment(res), lens_plots.logit_lens(res),
                plots.propagation_summary(res)):
        assert "tiny" in fig.layout.title.text and "antonym" in fig.layout.title.text
    # the same logit-lens call (default candidates = the gold ones) on the same batch: bit-equal
    assert torch.equal(res.lens_clean, logit_lens(tiny_model, ev, [0, 1, 2]).accuracy)
    assert res.provenance["n_prompts"] == 8 and res.meta["n_fit_prompts"] == 4 and res.provenance["model"] == "tiny"


def test_replace_vectors_are_propagated_as_their_mean_displacement(tiny_model):
    tv = TaskVector(torch.randn(1, 32), [1], "replace", "vanilla", "antonym", model="tiny")
    res = propagation_by_layer(tiny_model, *_batches(tiny_model, 4, 4), tv, n_vectors=40, progress=False)
    assert res.meta["mode"] == "replace" and res.layers == [1]


def test_layer_curves_one_line_per_sweep():
    s = SweepResult(torch.tensor([0.1, 0.5]), torch.zeros(2, 10), torch.zeros(2), torch.ones(2), [0, 1], "first_token",
                    "learned", "antonym", baseline=0.1, model="toy")
    fig = plots.layer_curves([s, s])
    assert sum(tr.mode == "lines+markers" for tr in fig.data) == 2 and "toy" in fig.layout.title.text
    with pytest.raises(ValueError, match="results is empty"):
        plots.layer_curves([])


def test_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="same n"):
        fit_linear_map(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="empty"):
        fit_linear_map(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="square"):
        polar_metrics(torch.zeros(3, 2))
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 2\]"):
        fit_linear_propagation(tiny_model, batch, 3)
    with pytest.raises(TypeError, match="batch must be a PromptBatch"):
        fit_linear_propagation(tiny_model, "antonym", 1)
    for bad in ("loo", -1.0, None):
        with pytest.raises(ValueError, match="ridge must be 'cv', 'auto' or a number >= 0"):
            fit_linear_propagation(tiny_model, batch, 1, ridge=bad)
    with pytest.raises(ValueError, match=r"at least 2 rows \(got 1\)"):
        cv_ridge(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="relative_grid"):
        cv_ridge(torch.ones(4, 3), torch.ones(4, 3), relative_grid=[1.0, 0.1, 0.01])
    tv = TaskVector(torch.randn(1, 32), [1], "add", "r", "antonym", model="tiny")
    with pytest.raises(TypeError, match="fit_batch must be a PromptBatch"):
        propagation_by_layer(tiny_model, "antonym", batch, tv)
    with pytest.raises(ValueError, match="one task"):
        propagation_by_layer(tiny_model, batch, build_prompts(tiny_model, "uppercase", 4, 0, variant="zero_shot"), tv)


def test_cli_propagation_json(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["propagation", "--task", "antonym", "--layer", "1,2", "--epochs", "1",
                                           "--train", "8", "--val", "2", "--eval-prompts", "4", "--vectors", "40",
                                           "--fit-prompts", "4", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["layers"] == [1, 2] and {"r2", "rotation_cos", "alignment_theta"} <= set(data["by_layer"]["1"])
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()
