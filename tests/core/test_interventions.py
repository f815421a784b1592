"""Hook primitives: identities, per-prompt positions, errors, hooks removed on exceptions."""

from __future__ import annotations

import pytest
import torch

from icl_circuits.core import runner
from icl_circuits import build_prompts, final_logits
from icl_circuits.core import checks
from icl_circuits.core import interventions as iv


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


def test_final_logits_equal_full_forward_at_final_position(tiny_model, batch):
    full = tiny_model(batch.tokens)
    expected = full[torch.arange(len(batch)), batch.final_positions]
    assert torch.allclose(final_logits(tiny_model, batch), expected, atol=1e-5)


def test_right_padding_changes_nothing(tiny_model, batch):
    """Each prompt alone (no padding) gives the same final logits as inside the padded batch."""
    together = final_logits(tiny_model, batch)
    for i in range(len(batch)):
        alone = tiny_model(batch.tokens[i : i + 1, : int(batch.final_positions[i]) + 1])[0, -1]
        assert torch.allclose(alone, together[i], atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_patching_clean_activations_into_clean_run_changes_nothing(tiny_model, batch, layer):
    name = iv.resid_name(tiny_model, layer)
    pos = batch.positions("answer").positions
    own = runner.read_activations(tiny_model, batch, [name], pos)[name]
    clean = runner.run_final_logits(tiny_model, batch)
    patched = runner.run_final_logits(tiny_model, batch, lambda rows, mb: [(name, iv.replace_hook(pos[rows], own[rows]))])
    assert (patched - clean).abs().max() <= 1e-5


def test_replace_at_final_position_changes_output_and_only_there(tiny_model, batch):
    name = iv.resid_name(tiny_model, 1)
    pos = batch.positions("final").positions
    v = torch.randn(tiny_model.cfg.d_model) * 10
    clean = runner.read_activations(tiny_model, batch, [iv.resid_name(tiny_model, 2)])
    hooked = runner.read_activations(tiny_model, batch, [iv.resid_name(tiny_model, 2)],
                                 make_hooks=lambda rows, mb: [(name, iv.replace_hook(pos[rows], v))])
    a, b = clean[iv.resid_name(tiny_model, 2)], hooked[iv.resid_name(tiny_model, 2)]
    for i in range(len(batch)):
        f = int(batch.final_positions[i])
        assert torch.allclose(a[i, :f], b[i, :f], atol=1e-6)  # causal: earlier positions untouched
        assert not torch.allclose(a[i, f], b[i, f])


def test_read_resid_final_layer_is_resid_post(tiny_model, batch):
    r = runner.read_resid(tiny_model, batch, batch.positions("final").positions)
    assert r.shape == (tiny_model.cfg.n_layers + 1, len(batch), 1, tiny_model.cfg.d_model)
    logits = runner.unembed_resid(tiny_model, r[-1, :, 0])
    assert torch.allclose(logits, final_logits(tiny_model, batch), atol=1e-4)


def test_zero_and_mean_ablation_and_projection(tiny_model, batch):
    pos = batch.positions("answer").positions
    x = torch.randn(len(batch), 8, tiny_model.cfg.d_model)
    p = torch.randint(0, 3, (len(batch), 2))
    assert iv.ablate_hook(p, "zero")(x)[torch.arange(len(batch))[:, None], p].abs().sum() == 0
    m = torch.ones(tiny_model.cfg.d_model)
    assert (iv.ablate_hook(p, "mean", m)(x)[torch.arange(len(batch))[:, None], p] == 1).all()
    basis = torch.randn(tiny_model.cfg.d_model, 3)
    y = iv.project_out_hook(p, basis)(x)[torch.arange(len(batch))[:, None], p]
    assert (y @ basis).abs().max() < 1e-4
    assert pos.shape == (len(batch), 3)


def test_noise_is_seeded_and_relative_scale(tiny_model):
    x = torch.randn(2, 5, 16) * 3
    p = torch.tensor([[1], [2]])
    a, b = iv.noise_hook(p, 1.0, seed=3)(x), iv.noise_hook(p, 1.0, seed=3)(x)
    assert torch.equal(a, b) and not torch.equal(a, iv.noise_hook(p, 1.0, seed=4)(x))
    big = iv.noise_hook(p, 1.0, seed=3, relative=True)(x * 100) - x * 100
    assert big.abs().max() > 10  # scaled with the activation's norm


def test_hooks_are_removed_when_a_hook_raises(tiny_model, batch):
    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        runner.run_final_logits(tiny_model, batch, lambda rows, mb: [(iv.resid_name(tiny_model, 1), boom)])
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny_model.hook_dict.values())
    assert torch.allclose(runner.run_final_logits(tiny_model, batch), final_logits(tiny_model, batch))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, b: iv.resid_name(m, 3), r"layer must be an integer in \[0, 2\]"),
        (lambda m, b: checks.check_head(m, 0, 4), r"head must be an integer in \[0, 3\]"),
        (lambda m, b: checks.check_vector(m, torch.zeros(31)), "width 31 but the model's d_model is 32"),
        (lambda m, b: checks.check_positions(b, b.final_positions[:, None] + 1), "outside prompt"),
        (lambda m, b: checks.check_positions(b, torch.zeros(3, 1, dtype=torch.long)), "shape"),
        (lambda m, b: runner.read_activations(m, b, ["blocks.9.nothing"]), "not a hook point"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_model, batch, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model, batch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_vector_refuses_non_finite_values_naming_the_argument(tiny_model, bad):
    v = torch.zeros(2, tiny_model.cfg.d_model)
    v[1, 0] = bad
    with pytest.raises(ValueError, match=r"theta contains NaN or inf \(1 of 64 values\)"):
        checks.check_vector(tiny_model, v, arg="theta")
