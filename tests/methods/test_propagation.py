"""Linear propagation: exact recovery of a known map, polar factors, logit lens and task alignment
identities, deltas equal the naive runs, the per-layer analysis, figures, CLI and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.core.runner import final_logits
from icl_circuits.core.metrics import correct
from icl_circuits.viz import propagation as plots
from icl_circuits.methods.propagation import (
    PropagationResult, alignment_chance, candidate_tokens, final_deltas, fit_linear_map, fit_linear_propagation,
    logit_lens, polar_metrics, propagation_by_layer, r2, task_alignment, vector_logit_lens,
)
from icl_circuits.methods.vectors import SweepResult, TaskVector


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


def test_logit_lens_at_the_final_layer_is_the_models_prediction_over_labels(tiny_model):
    batch = build_prompts(tiny_model, "number", 16, 4, seed=0)
    res = logit_lens(tiny_model, batch)
    assert res.layers == [0, 1, 2] and res.n_candidates == 2
    own = correct(final_logits(tiny_model, batch), batch.answer_tokens, batch.label_token_ids).float()
    assert torch.equal(res.per_prompt[-1], own)


def test_logit_lens_with_an_added_vector_reads_the_injected_state(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 8, 0, variant="zero_shot")
    gold = tiny_model.W_U[:, batch.answer_tokens[0]].detach()
    tv = TaskVector(torch.stack([gold, gold]) * 1e4, [1, 2], "add", "gold", "antonym", "tiny")
    res = logit_lens(tiny_model, batch, vectors=tv)
    assert res.layers == [1, 2] and res.injected == "gold"
    first = (batch.answer_tokens == batch.answer_tokens[0]).float()
    assert torch.equal(res.per_prompt[1], first)  # a huge gold-direction vector wins where it is the gold


def test_non_categorization_candidates_are_the_batch_gold_tokens(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 12, 0, variant="zero_shot")
    cand = candidate_tokens(batch)
    assert cand.shape[0] == 12 and set(cand[0].tolist()) == set(batch.answer_tokens.tolist())


def test_alignment_of_a_label_unembedding_is_one_and_of_an_orthogonal_vector_zero(tiny_model):
    labels = torch.tensor([5, 17, 40])
    assert float(task_alignment(tiny_model, tiny_model.W_U[:, 17].detach(), labels)) == pytest.approx(1, abs=1e-5)
    B = tiny_model.W_U[:, labels].detach().double()
    v = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    orth = v - B @ torch.linalg.lstsq(B, v[:, None]).solution[:, 0]
    assert float(task_alignment(tiny_model, orth.float(), labels)) == pytest.approx(0, abs=1e-5)
    tv = TaskVector(torch.randn(3, 32), [0, 1, 2], "add", "r", "t", "tiny")
    assert task_alignment(tiny_model, tv, labels[None].expand(4, -1)).shape == (3,)
    assert alignment_chance(tiny_model, labels) == pytest.approx(np.sqrt(3 / 32))


def test_final_deltas_equal_the_naive_difference(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    X = torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 5
    D = final_deltas(tiny_model, batch, 1, X)
    rows = torch.arange(4)
    clean = tiny_model(batch.tokens, stop_at_layer=2)[rows, batch.final_positions]
    for i in range(3):
        hook = iv.add_hook(batch.positions("final").positions, X[i])
        with tiny_model.hooks(fwd_hooks=[(iv.resid_name(tiny_model, 1), hook)]):
            h = tiny_model(batch.tokens, stop_at_layer=2)[rows, batch.final_positions]
        assert torch.allclose(D[i], (h - clean).detach(), atol=1e-5)
    assert torch.equal(final_deltas(tiny_model, batch, 2, X)[:, 0], X)


def test_small_vectors_propagate_linearly(tiny_model):
    """In the linear regime (tiny norms) the fitted map explains the held-out effects almost fully."""
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    lp = fit_linear_propagation(tiny_model, batch, 1, n_vectors=96, norm=1e-3)
    assert lp.r2_mean > 0.99 and lp.ridge == 0 and lp.n_fit == 72 and lp.W.shape == (32, 32)
    lp2 = fit_linear_propagation(tiny_model, batch, 0, n_vectors=20, seed=1)
    assert lp2.ridge > 0  # 15 fit vectors < d = 32


def test_propagation_by_layer_result_figures_and_round_trip(tiny_model, tmp_path):
    tv = TaskVector(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 3, [0, 1, 2], "add", "random",
                    "antonym", "tiny")
    res = propagation_by_layer(tiny_model, "antonym", tv, n_vectors=48, n_prompts=4, n_eval=8, progress=False)
    df = res.to_dataframe()
    assert list(df.layer) == [0, 1, 2] and df.loc[2, "rotation_cos"] == 1 and df.loc[2, "gain"] == pytest.approx(1)
    assert df.loc[2, "acc_reconstructed"] == df.loc[2, "acc_injected"]  # W = I at the final residual
    back = PropagationResult.load(res.save(tmp_path / "p"))
    assert torch.equal(back.r2, res.r2) and back.layers == [0, 1, 2]
    for fig in (plots.rotation_scaling(res), plots.alignment(res), plots.logit_lens(res), plots.propagation_summary(res)):
        assert "tiny" in fig.layout.title.text and "antonym" in fig.layout.title.text
    batch = build_prompts(tiny_model, "antonym", 8, 0, variant="zero_shot")
    assert "tiny" in plots.logit_lens(logit_lens(tiny_model, batch)).layout.title.text
    top = vector_logit_lens(tiny_model, tv, k=3)
    assert len(top) == 9 and set(top.columns) >= {"layer", "rank", "token", "token_str", "logit"}


def test_replace_vectors_are_propagated_as_their_mean_displacement(tiny_model):
    tv = TaskVector(torch.randn(1, 32), [1], "replace", "vanilla", "antonym", "tiny")
    res = propagation_by_layer(tiny_model, "antonym", tv, n_vectors=40, n_prompts=4, n_eval=4, progress=False)
    assert res.meta["mode"] == "replace" and res.layers == [1]


def test_layer_curves_one_line_per_sweep():
    s = SweepResult(torch.tensor([0.1, 0.5]), torch.zeros(2, 10), torch.zeros(2), torch.ones(2), [0, 1], "accuracy",
                    "learned", "antonym", "toy", baseline=0.1)
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
    with pytest.raises(ValueError, match="zero vector"):
        task_alignment(tiny_model, torch.zeros(32), [1, 2])
    with pytest.raises(ValueError, match="token ids in"):
        task_alignment(tiny_model, torch.ones(32), [10 ** 6])
    with pytest.raises(ValueError, match="width 16"):
        task_alignment(tiny_model, torch.ones(16), [1])
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 2\]"):
        fit_linear_propagation(tiny_model, batch, 3)
    tv = TaskVector(torch.randn(1, 32), [1], "add", "r", "antonym", "tiny")
    with pytest.raises(ValueError, match="not among the task vector's layers"):
        logit_lens(tiny_model, batch, layers=[0], vectors=tv)


def test_cli_propagation_json(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr(cli_common, "_load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["propagation", "--task", "antonym", "--layer", "1,2", "--epochs", "1",
                                           "--train", "8", "--val", "2", "--eval-prompts", "4", "--vectors", "40",
                                           "--fit-prompts", "4", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["layers"] == [1, 2] and {"r2", "rotation_cos", "alignment_theta"} <= set(data["by_layer"]["1"])
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()
