"""Anchor re-weighting (Wang et al. 2023): identity at beta = 0, exact scaling, training."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts, final_logits
from icl_circuits.core import interventions as iv
from icl_circuits.core import runner
from icl_circuits.methods.reweighting import (
    ReweightResult, reweighted_logits, reweighting_interventions, train_anchor_reweighting,
)


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


def test_zero_beta_is_the_identity(tiny_model, batch):
    beta = torch.zeros(2, 4, batch.n_demos)
    # exact: exp(0) scales the pattern by one, in forwards of the same shapes (one minibatch each)
    assert torch.equal(reweighted_logits(tiny_model, batch, beta), final_logits(tiny_model, batch))


def test_scale_hook_scales_exactly_the_query_to_label_weights(tiny_model, batch):
    beta = torch.zeros(2, 4, batch.n_demos)
    beta[1] = torch.randn(4, batch.n_demos)
    name = iv.pattern_name(1)
    _, clean = tiny_model.run_with_cache(batch.tokens, names_filter=[name])
    with runner.hooked(tiny_model, reweighting_interventions(batch, beta)):
        _, hooked = tiny_model.run_with_cache(batch.tokens, names_filter=[name])
    factor = torch.ones_like(clean[name])
    for b in range(len(batch)):
        factor[b][:, int(batch.final_positions[b]), batch.answer_positions[b]] = beta[1].exp()
    assert torch.allclose(hooked[name], clean[name] * factor, atol=1e-7)


def test_training_reduces_the_training_loss(tiny_model, tmp_path):
    tr = build_prompts(tiny_model, "number", 16, 2, seed=1)
    ev = build_prompts(tiny_model, "number", 16, 2, seed=2)
    res = train_anchor_reweighting(tiny_model, tr, ev, lr=0.05, epochs=4, batch_size=8, progress=False)
    assert res.train_loss_after < res.train_loss_before and res.beta.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in tiny_model.parameters())
    back = ReweightResult.load(res.save(tmp_path / "rw"))
    assert list(back.to_dataframe().stage) == ["before", "after"]




def test_scale_attention_spec_equals_the_raw_hook(tiny_model, batch):
    """``reweighted_logits`` (specs through the runner) equals the hook the method used to attach."""
    from icl_circuits.core.runner import run_final_logits

    beta = torch.randn(2, 4, batch.n_demos, generator=torch.Generator().manual_seed(0))
    raw = run_final_logits(tiny_model, batch, lambda rows, mb: [
        (iv.pattern_name(l), iv.scale_pattern_hook(mb.final_positions, mb.answer_positions, beta[l].exp()))
        for l in range(2)], batch_size=4)
    assert torch.equal(reweighted_logits(tiny_model, batch, beta, batch_size=4), raw)  # exact: same hook, shapes
