"""OV decomposition of an injected vector: the exact identity, the OV formula, the runner path equals
a hand-written forward, position specs (unions, multi-token sets), reconstruction, errors, figures."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core import runner
from icl_circuits.core.interventions import Intervention
from icl_circuits.methods.ov_circuits import OVResult, ReconstructionResult, injection, ov_contributions, reconstruct
from icl_circuits.methods.vectors import TaskVector
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def zs(tiny_model):
    return build_prompts(tiny_model, "antonym", 8, 0, seed=0, variant="zero_shot")


@pytest.fixture(scope="module")
def icl(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)


@pytest.fixture(scope="module")
def tv(tiny_model):
    g = torch.Generator().manual_seed(0)
    return TaskVector(torch.randn(2, tiny_model.cfg.d_model, generator=g) * 4, [0, 1], "add", "random", "antonym", model="tiny")


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("positions", ["final", "answer", "separators", "final+answer_-1"])
def test_final_residual_change_is_direct_plus_heads_plus_mlps(tiny_model, icl, tv, layer, positions):
    """delta h_L(q) = d(q) + sum of head changes + sum of MLP changes, exactly (no embedding term)."""
    r = ov_contributions(tiny_model, icl, tv, layer, positions=positions, batch_size=4)
    assert r.identity_error() <= 1e-4
    assert (r.attn_layers - r.head_exact.sum(1)).abs().max() <= 1e-4  # b_O cancels
    assert r.total.abs().max() > 1e-2
    assert (r.direct.abs().sum() > 0) == positions.startswith("final")
    assert r.positions == positions


def test_identity_holds_for_replace_mode_vectors(tiny_model, zs, tv):
    rep = TaskVector(tv.vectors, tv.layers, "replace", "vanilla", "antonym", model="tiny")
    r = ov_contributions(tiny_model, zs, rep, 1)
    assert r.identity_error() <= 1e-4 and r.mode == "replace"


def test_total_change_matches_the_injected_run(tiny_model, zs, tv):
    r = ov_contributions(tiny_model, zs, tv, 0)
    logits = runner.run_final_logits(tiny_model, zs, injection(tiny_model, tv, 0))
    assert torch.allclose(runner.unembed_resid(tiny_model, r.clean_final + r.total), logits, atol=1e-4)


@pytest.mark.parametrize("positions", ["final", "answer"])
def test_ov_formula_is_exact_without_layernorm(positions):
    """No LN and a vector outside span(W_Q, W_K) of the block it enters: attention is unchanged and
    each head's change is exactly sum_p A[q, p] theta W_V W_O."""
    model = make_tiny_model(normalization_type=None, d_head=2, rotary_dim=2, seed=3)
    W_Q, W_K = model.blocks[1].attn.W_Q.detach(), model.blocks[1].attn.W_K.detach()
    span = torch.cat([W_Q.permute(1, 0, 2).flatten(1), W_K.permute(1, 0, 2).flatten(1)], 1)  # [d_model, 16]
    basis, _ = torch.linalg.qr(span)
    theta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    theta = 10 * (theta - basis @ (basis.T @ theta))
    batch = build_prompts(model, "letter-string", 5, 3, seed=1)
    r = ov_contributions(model, batch, theta, 1, positions=positions)
    assert r.head_exact.abs().max() > 1e-2
    assert (r.head_ov - r.head_exact).abs().max() <= 1e-5
    assert r.cosine.min() > 0.9999


def test_frozen_ln_agrees_with_the_difference_for_a_small_vector_off_the_residual(tiny_model, zs):
    """Freezing the LN scale drops only the scale's own change, which is first order in the part of
    the vector along the centred residual: for a small vector orthogonal to it (and to the ones
    vector) both LN treatments agree."""
    one = zs.select([0])
    h = runner.read_resid(tiny_model, one, one.positions("final").positions, [0, 1])[:, 0, 0]  # [2, d_model]
    span = torch.cat([torch.ones(1, h.shape[1]), h - h.mean(1, keepdim=True)]).T
    basis, _ = torch.linalg.qr(span)
    theta = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    theta = 1e-3 * (theta - basis @ (basis.T @ theta))
    a = ov_contributions(tiny_model, one, theta, 0, ln="difference")
    b = ov_contributions(tiny_model, one, theta, 0, ln="frozen")
    assert (a.head_ov - b.head_ov).abs().max() <= 1e-2 * a.head_ov.abs().max()


def test_reconstruction_full_sum_equals_the_vector_run(tiny_model, zs, tv):
    rec = reconstruct(tiny_model, zs, tv, 1)
    assert rec.conditions[:2] == ["no vector", "theta at layer 1"]
    full = rec.conditions.index("theta + heads + MLPs (exact) at final")
    assert torch.equal(rec.per_prompt[1], rec.per_prompt[full])  # 0/1 outcomes: paths differ by float32 rounding only
    df = rec.to_dataframe()
    assert len(df) == len(rec.conditions) and ((df.low <= df.accuracy) & (df.accuracy <= df.high)).all()


def test_reconstruction_with_a_head_subset(tiny_model, zs, tv):
    ov = ov_contributions(tiny_model, zs, tv, 0)
    rec = reconstruct(tiny_model, zs, tv, 0, ov=ov, heads=[(0, 1), (1, 2)])
    assert rec.heads == [[0, 1], [1, 2]] and "theta + 2 heads (OV) at final" in rec.conditions
    with pytest.raises(ValueError, match="heads is empty"):
        reconstruct(tiny_model, zs, tv, 0, ov=ov, heads=[])


def test_ov_result_round_trip_without_head_vectors(tiny_model, zs, tv, tmp_path):
    r = ov_contributions(tiny_model, zs, tv, 1, keep_head_vectors=False)
    back = OVResult.load(r.save(tmp_path / "ov"))
    assert back.head_exact is None and torch.equal(back.exact_dla, r.exact_dla) and back.layers == [1]
    assert len(back.to_dataframe()) == 4




def _hand_run(model, batch, theta, layer, positions, mask=None):
    """The final residual at q with theta added at the input of block ``layer`` by hand: no hooks,
    no runner (the engine ov_contributions had before the runner)."""
    with torch.no_grad():
        x = model(batch.tokens, stop_at_layer=layer)
        rows = torch.arange(len(batch))[:, None].expand_as(positions)
        keep = torch.ones_like(positions, dtype=torch.bool) if mask is None else mask
        x[rows[keep], positions[keep]] = x[rows[keep], positions[keep]] + theta
        out = model(x, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
    return out[torch.arange(len(batch)), batch.final_positions]


@pytest.mark.parametrize("layer", [0, 1])
def test_runner_path_equals_a_hand_written_forward(tiny_model, icl, tv, layer):
    r = ov_contributions(tiny_model, icl, tv, layer, positions="answers", batch_size=4)
    clean = _hand_run(tiny_model, icl, torch.zeros(32), layer, icl.positions("answers").positions)
    hand = _hand_run(tiny_model, icl, tv.at(layer), layer, icl.positions("answers").positions)
    # float32 final residuals (|h| <= 3): minibatches of 4 + 2 vs one batch of 6 run other kernels on other CPUs,
    # so 1e-5 relative and absolute (total is a difference of two such residuals: the same absolute budget)
    torch.testing.assert_close(r.clean_final, clean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.total, hand - clean, rtol=1e-5, atol=1e-5)


def test_multi_token_sets_inject_at_valid_entries_only(tiny_model, icl, tv):
    """letter-string inputs differ in token count: the vector goes to each prompt's own input tokens."""
    ps = icl.positions("inputs")
    assert ps.ragged
    r = ov_contributions(tiny_model, icl, tv, 0, positions="inputs")
    hand = _hand_run(tiny_model, icl, tv.at(0), 0, ps.positions, ps.mask)
    assert torch.allclose(r.clean_final + r.total, hand, atol=1e-5)
    assert r.identity_error() <= 1e-4


def test_injection_resolves_positions_per_sub_batch(tiny_model, zs, icl, tv):
    make = injection(tiny_model, tv, 1, positions="final+answer_0")
    (spec,) = make(slice(2, 4), icl.select([2, 3]))
    assert isinstance(spec, Intervention) and spec.op == "add" and spec.site.layer == 1
    assert torch.equal(spec.positions, icl.positions("final+answer_0").positions[2:4])
    rep = TaskVector(tv.vectors, tv.layers, "replace", "vanilla", "antonym", model="tiny")
    assert injection(tiny_model, rep, 0)(slice(0, 8), zs)[0].op == "replace"


def test_results_round_trip(tiny_model, zs, tv, tmp_path):
    ov = ov_contributions(tiny_model, zs, tv, 1)
    rec = reconstruct(tiny_model, zs, tv, 1, ov=ov)
    back = ReconstructionResult.load(rec.save(tmp_path / "rec"))
    assert torch.equal(back.per_prompt, rec.per_prompt) and back.conditions == rec.conditions
    assert back.to_dataframe().equals(rec.to_dataframe())
    assert rec.provenance["model"] == "tiny" and rec.provenance["task"] == "antonym" and ov.provenance["n_prompts"] == 8


@pytest.mark.parametrize("call, exc, match", [
    (lambda m, b, tv: ov_contributions(m, b, tv, 2), ValueError, r"layer must be an integer in \[0, 1\]"),
    (lambda m, b, tv: ov_contributions(m, b, torch.randn(48), 0), ValueError, "width 48 but the model's d_model is 32"),
    (lambda m, b, tv: ov_contributions(m, b, tv), ValueError, "say which one to inject"),
    (lambda m, b, tv: ov_contributions(m, b, tv, 0, positions="final+query"), ValueError, "are the same token"),
    (lambda m, b, tv: ov_contributions(m, b, tv, 0, positions=torch.zeros(8, 2, dtype=torch.long)), TypeError,
     "position spec"),
    (lambda m, b, tv: ov_contributions(m, b, tv, 0, positions="answers"), ValueError, "needs demos"),
    (lambda m, b, tv: ov_contributions(m, b, tv, 0, ln="exact"), ValueError, "ln must be one of"),
    (lambda m, b, tv: ov_contributions(m, b.task, tv, 0), TypeError, "batch must be a PromptBatch"),
    (lambda m, b, tv: reconstruct(m, b, tv, 0, restrict_to_labels=True), ValueError, "has no label words"),
])
def test_clear_errors(tiny_model, zs, tv, call, exc, match):
    with pytest.raises(exc, match=match):
        call(tiny_model, zs, tv)


def test_figures_build(tiny_model, zs, tv):
    from icl_circuits.viz import ov_circuits as P

    ov = ov_contributions(tiny_model, zs, tv, 0)
    rec = P.reconstruction(reconstruct(tiny_model, zs, tv, 0, ov=ov))
    for f in (P.ov_heads(ov), rec):
        assert "tiny" in f.layout.title.text and len(f.data) >= 1
    # the long condition names are slanted: the x axis must make room for them below the plot (#15)
    assert rec.layout.xaxis.automargin and rec.layout.xaxis.tickangle and rec.layout.margin.b >= 150
