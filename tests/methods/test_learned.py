"""Learned task vectors: the cached prefix gives the gradients of the full model, training lowers the
loss, the model stays frozen (also on error), seeds determine the result, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
from icl_circuits import build_prompts
from icl_circuits.methods import learned
from icl_circuits.core.runner import read_resid
from icl_circuits.methods.learned import joint_accuracy, ltv_loss, split_by_query, train_task_vector
from icl_circuits.core.tasks import WordPairTask, get_task
from icl_circuits.methods.vectors import TaskVector, evaluate_vector


@pytest.fixture(scope="module")
def to_cold():
    """Every input maps to "cold": one vector can make that answer win on every prompt."""
    return WordPairTask("to-cold", "knowledge", "x -> cold", [(x, "cold") for x, _ in get_task("antonym").sample(12, 0)])


FAST = dict(n_val=4, epochs=2, batch_size=8, progress=False)


def prompts(model, task="antonym", n=20, k=0, seed=0):
    """The training prompts train_task_vector used to build itself: n zero-shot (or k-demo ICL) prompts."""
    return build_prompts(model, task, n, k, seed=seed, variant="zero_shot" if k == 0 else "icl")


@pytest.mark.parametrize("layers,with_demos,position", [
    ([0], 0, "final"), ([1], 0, "final"), ([2], 0, "final"), ([0, 2], 0, "final"), ([1], 2, ["final", "answer"]),
])
def test_cached_prefix_gives_the_gradients_of_the_full_model(tiny_model, layers, with_demos, position):
    batch = build_prompts(tiny_model, "antonym", 6, with_demos, seed=1, variant="zero_shot" if with_demos == 0 else "icl")
    theta = (torch.randn(len(layers), tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    resid = read_resid(tiny_model, batch, None, [min(layers)])[0]
    loss_c, _ = ltv_loss(tiny_model, batch, theta, layers, position, resid=resid)
    (g_c,) = torch.autograd.grad(loss_c, theta)
    loss_f, _ = ltv_loss(tiny_model, batch, theta, layers, position)
    (g_f,) = torch.autograd.grad(loss_f, theta)
    assert abs(float((loss_c - loss_f).detach())) <= 1e-5
    assert float((g_c - g_f).abs().max()) <= 1e-5 and float(g_f.abs().max()) > 0


def test_training_lowers_the_loss_and_raises_training_accuracy(tiny_model, to_cold):
    tv = train_task_vector(tiny_model, prompts(tiny_model, to_cold), 1, n_val=4, epochs=4, lr=0.3, batch_size=8,
                           progress=False)
    m = tv.meta
    assert m["train_loss"][m["best_epoch"]] < m["train_loss"][0] - 1.0
    assert m["train_accuracy"][0] == 0.0 and m["train_accuracy_best"] >= 0.75
    assert tv.mode == "add" and tv.method == "learned" and tv.layers == [1] and tv.vectors.shape == (1, 32)


def test_untrained_curve_point_is_the_initial_vector(tiny_model):
    """Epoch 0 of the curve is measured with the seeded U(-0.1, 0.1) init, before any step."""
    tv = train_task_vector(tiny_model, prompts(tiny_model), 0, **FAST)
    init = (torch.rand(1, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.1
    back = train_task_vector(tiny_model, prompts(tiny_model), 0, init=init[0], **FAST)
    assert back.meta["train_loss"][0] == pytest.approx(tv.meta["train_loss"][0], abs=1e-6)


def test_model_parameters_unchanged_and_requires_grad_restored(to_cold):
    from tests.conftest import make_tiny_model

    model = make_tiny_model()
    model.blocks[0].attn.W_Q.requires_grad_(False)  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    train_task_vector(model, prompts(model, to_cold), 1, lr=0.3, **FAST)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_requires_grad_restored_when_training_raises(monkeypatch):
    from tests.conftest import make_tiny_model

    model = make_tiny_model()
    calls = {"n": 0}
    real = learned.resume_final_logits

    def boom(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")
        return real(*args, **kw)

    monkeypatch.setattr(learned, "resume_final_logits", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train_task_vector(model, prompts(model), 1, **FAST)
    assert all(p.requires_grad for p in model.parameters())


def test_same_seed_same_vector_other_seed_other_vector(tiny_model):
    a = train_task_vector(tiny_model, prompts(tiny_model, seed=3), 1, seed=3, **FAST)
    b = train_task_vector(tiny_model, prompts(tiny_model, seed=3), 1, seed=3, **FAST)
    c = train_task_vector(tiny_model, prompts(tiny_model, seed=3), 1, seed=4, **FAST)
    assert torch.equal(a.vectors, b.vectors) and a.meta["train_loss"] == b.meta["train_loss"]
    assert not torch.equal(a.vectors, c.vectors)


def test_several_layers_and_positions_train_jointly(tiny_model, tmp_path):
    tv = train_task_vector(tiny_model, prompts(tiny_model, k=2), layers=[0, 2], position=["final", "separator"], **FAST)
    assert tv.layers == [0, 2] and tv.position == "final+separator" and tv.vectors.shape == (2, 32)
    batch = build_prompts(tiny_model, "antonym", 8, 2, seed=5)
    rate = joint_accuracy(tiny_model, tv, batch)
    assert rate.n == 8 and 0 <= rate.value <= 1
    assert evaluate_vector(tiny_model, tv, batch).layers == [0, 2]
    back = TaskVector.load(tv.save(tmp_path / "ltv"))
    assert torch.equal(back.vectors, tv.vectors) and back.meta["best_epoch"] == tv.meta["best_epoch"]
    df = back.to_dataframe()
    assert df.layer.tolist() == [0, 2] and df.norm.tolist() == pytest.approx(tv.vectors.norm(dim=-1).tolist())
    assert set(df.position) == {"final+separator"} and set(df.model) == {tiny_model.cfg.model_name}
    same = train_task_vector(tiny_model, prompts(tiny_model, k=2), layers=[0, 2], position="final+separator", **FAST)
    assert torch.equal(same.vectors, tv.vectors)  # a "+"-joined spec is the list


def test_final_residual_layer_and_no_validation_split(tiny_model):
    tv = train_task_vector(tiny_model, prompts(tiny_model, n=8), tiny_model.cfg.n_layers, n_val=0, epochs=1,
                           progress=False)
    assert tv.layers == [2] and tv.meta["n_val"] == 0 and len(tv.meta["val_loss"]) == 2


def test_split_holds_out_whole_queries(tiny_model):
    batch = build_prompts(tiny_model, "next-letter", 60, 0, variant="zero_shot")
    train, val = split_by_query(batch, 10, seed=0)
    assert sorted(train + val) == list(range(60)) and len(val) >= 10
    assert not {batch.queries[i] for i in train} & {batch.queries[i] for i in val}


def test_vectors_are_added_at_every_position_of_the_spec(tiny_model):
    """ltv_loss adds theta at batch.positions(spec): equal to adding it by hand at those columns."""
    from icl_circuits.core import interventions as iv
    from icl_circuits.core import runner

    batch = build_prompts(tiny_model, "antonym", 3, 2)
    theta = torch.randn(1, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    pos = torch.cat([batch.final_positions[:, None], batch.answer_positions], 1)
    assert torch.equal(batch.positions(["final", "answer"]).positions, pos)
    _, logits = ltv_loss(tiny_model, batch, theta, [1], ["final", "answer"])
    by_hand = runner.run_final_logits(tiny_model, batch, lambda rows, mb: [(iv.resid_name(tiny_model, 1), iv.add_hook(pos[rows], theta[0]))])
    assert torch.allclose(logits.detach(), by_hand, atol=1e-5)


def test_resumed_and_full_runs_agree_at_the_final_residual(tiny_model):
    """Layer n_layers: the resumed run adds the vector to the final residual without running a block."""
    batch = prompts(tiny_model, n=4)
    theta = torch.randn(1, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    n = tiny_model.cfg.n_layers
    resid = read_resid(tiny_model, batch, None, [n])[0]
    a = ltv_loss(tiny_model, batch, theta, [n], resid=resid)[1]
    b = ltv_loss(tiny_model, batch, theta, [n])[1]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer=3), r"layer must be an integer in \[0, 2\]"),
    (dict(layers=[0, 5]), r"layers must be an integer in \[0, 2\]"),
    (dict(layer=1, layers=[1]), "not both"),
    (dict(), "an injection layer is required"),
    (dict(layer=1, init=torch.zeros(48)), "init has width 48 but the model's d_model is 32"),
    (dict(layer=1, position="middle"), "unknown position set 'middle'"),
    (dict(layer=1, position="answer"), "needs demos but the batch has none"),
])
def test_clear_errors(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_task_vector(tiny_model, prompts(tiny_model), **{**FAST, **kwargs})


def test_batch_must_be_a_prompt_batch(tiny_model):
    with pytest.raises(TypeError, match="batch must be a PromptBatch"):
        train_task_vector(tiny_model, "antonym", 1, **FAST)


def test_task_too_small_for_the_split_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="too small"):
        train_task_vector(tiny_model, prompts(tiny_model, "next-letter", n=201), 1, n_val=200, epochs=1, progress=False)


def test_cli_ltv_json_and_out(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["ltv", "--task", "antonym", "--layer", "0,2", "--epochs", "1", "--train", "8",
                                           "--val", "2", "--eval-prompts", "4", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["layers"] == [0, 2] and set(data["accuracy"]) == {"0", "2"}
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()
    bad = CliRunner().invoke(cli_mod.cli, ["ltv", "--layer", "7"])
    assert bad.exit_code != 0 and "--layer" in bad.output


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), r"lr must be a finite number > 0, got -1\.0"),
    (dict(lr=0.0), r"lr must be a finite number > 0 \(lr=0 would return the random initialization"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (dict(init=torch.full((32,), float("nan"))), "init contains NaN or inf"),
    (dict(init=torch.full((32,), float("inf"))), "init contains NaN or inf"),
])
def test_bad_optimizer_settings_and_non_finite_init_are_clear_errors(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_task_vector(tiny_model, prompts(tiny_model), **{**FAST, "layer": 1, **kwargs})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_task_vectors_are_refused(tiny_model, bad):
    v = torch.zeros(1, tiny_model.cfg.d_model)
    v[0, 3] = bad
    tv = TaskVector(v, [1], "add", "learned", "antonym", model="tiny")
    zs = build_prompts(tiny_model, "antonym", 4, 0, seed=0, variant="zero_shot")
    with pytest.raises(ValueError, match="contains NaN or inf"):
        evaluate_vector(tiny_model, tv, zs)
    with pytest.raises(ValueError, match="contains NaN or inf"):
        joint_accuracy(tiny_model, tv, zs)
