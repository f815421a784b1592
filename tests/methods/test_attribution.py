"""Attribution patching of heads: exact for a linear model, ranks heads like the exact scan,
positions specs, parameter grads untouched; scan agreement names its ablation and warns."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.methods.attribution import head_attribution, scan_agreement
from icl_circuits.methods.heads import HeadScanResult, head_ablation_scan
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


@pytest.fixture(scope="module")
def linear_model():
    """Attention only, no LayerNorm: the final logits are linear in the last block's hook_z."""
    return make_tiny_model(normalization_type=None, attn_only=True, seed=1)


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_attribution_is_exact_for_the_last_block_of_a_linear_model(linear_model, batch, how):
    """No LayerNorm, no MLP: logit_diff is linear in the last block's z, so the Taylor estimate is exact."""
    exact = head_ablation_scan(linear_model, batch, how, metric="logit_diff_to_mean", layers=[1], progress=False)
    attr = head_attribution(linear_model, batch, how, metric="logit_diff_to_mean", layers=[1])
    assert torch.allclose(attr.per_prompt, exact.per_prompt, atol=1e-4)


def test_attribution_ranks_heads_like_the_exact_scan(tiny_model, batch):
    exact = head_ablation_scan(tiny_model, batch, "mean", metric="logit_diff_to_mean", positions="final", progress=False)
    attr = head_attribution(tiny_model, batch, "mean", metric="logit_diff_to_mean", positions="final")
    agree = scan_agreement(exact, attr)
    assert agree["spearman"] > 0.6
    big = exact.effect.abs() > exact.effect.abs().median()
    assert (torch.sign(exact.effect[big]) == torch.sign(attr.effect[big])).float().mean() >= 0.75


def test_attribution_leaves_parameter_grads_alone(tiny_model, batch):
    head_attribution(tiny_model, batch)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_attribution_refuses_rates_and_bad_positions(tiny_model, batch):
    with pytest.raises(ValueError, match="zero gradient"):
        head_attribution(tiny_model, batch, metric="accuracy")
    with pytest.raises(ValueError, match="positions must be 'all'"):
        head_attribution(tiny_model, batch, positions="bogus")


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_attribution_at_a_positions_spec_is_exact_for_a_linear_model(linear_model, batch, how):
    """The Taylor estimate at the answer positions equals the exact ablation there (linear in the last z)."""
    kw = dict(metric="logit_diff", positions="answers+final", layers=[1])
    exact = head_ablation_scan(linear_model, batch, how, progress=False, **kw)
    attr = head_attribution(linear_model, batch, how, **kw)
    assert attr.positions == "answers+final" and exact.effect.abs().max() > 0
    assert torch.allclose(attr.per_prompt, exact.per_prompt, atol=1e-4)


# ----------------------------------------------------------------------------- agreement, with its ablation
def _fake_scan(effect, how="zero", positions="all", metric="logit_diff", method="exact"):
    e = torch.as_tensor(effect, dtype=torch.float32)
    pp = e[..., None].repeat(1, 1, 2)
    return HeadScanResult(values=e, effect=e, per_prompt=pp, clean=torch.zeros(2), low=e, high=e,
                          layers=list(range(e.shape[0])), metric=metric, how=how, positions=positions,
                          method=method, task="t", model="m")


def test_agreement_names_the_ablation_and_warns_when_the_top_heads_differ():
    import warnings

    from icl_circuits.methods.attribution import TOP_K_MIN_OVERLAP

    exact = _fake_scan([[-5.0, -4.0, -3.0, 0.0], [0.1, 0.2, 0.0, 0.0]])
    same = _fake_scan([[-4.0, -3.5, -2.0, 0.0], [0.1, 0.15, 0.0, 0.0]], method="attribution")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agreeing scans: no warning
        ok = scan_agreement(exact, same, k=3)
    assert ok["how"] == "zero" and ok["positions"] == "all" and ok["metric"] == "logit_diff"
    assert "zero" in ok["ablation"] and ok["top_k"] == 3 and ok["top3_overlap"] == 1.0
    assert ok["disagree"] is False and ok["min_overlap"] == TOP_K_MIN_OVERLAP
    other = _fake_scan([[0.0, 0.0, 0.1, -3.0], [-4.0, -5.0, 0.0, 0.0]], method="attribution")
    with pytest.warns(UserWarning, match=r"disagree on the top 3 heads \(zero ablation, all positions"):
        bad = scan_agreement(exact, other, k=3)
    assert bad["disagree"] is True and bad["top3_overlap"] < TOP_K_MIN_OVERLAP
    assert bad["missed"] == [[0, 0], [0, 1], [0, 2]] and bad["top_head_missed"] is True
    # enough overlap, but the one head that matters most is missed: still a disagreement
    near = _fake_scan([[-0.1, -4.0, -3.0, 0.0], [0.0, 0.0, 0.0, -2.0]], method="attribution")
    with pytest.warns(UserWarning, match=r"the most important head \[0, 0\] is not in its top 3"):
        top = scan_agreement(exact, near, k=3)
    assert top["top3_overlap"] == pytest.approx(2 / 3) and top["disagree"] is True


def test_agreement_refuses_scans_of_different_ablations():
    with pytest.raises(ValueError, match="how"):
        scan_agreement(_fake_scan([[1.0, 2.0]], how="zero"), _fake_scan([[1.0, 2.0]], how="mean"))
    with pytest.raises(ValueError, match="positions"):
        scan_agreement(_fake_scan([[1.0, 2.0]]), _fake_scan([[1.0, 2.0]], positions="final"))




def test_scan_agreement_is_a_result(tmp_path):
    """Fields read like a dict (as callers did), and it saves, loads and tabulates like any Result."""
    from icl_circuits.methods.attribution import ScanAgreement

    exact = _fake_scan([[3.0, 1.0, 0.5], [2.0, 0.1, 0.2]])
    approx = _fake_scan([[2.5, 1.2, 0.4], [1.5, 0.3, 0.1]])
    agree = scan_agreement(exact, approx, k=2)
    assert isinstance(agree, ScanAgreement) and agree["top2_overlap"] == agree.top_k_overlap == 1.0
    assert agree["spearman"] == agree.spearman and agree["missed"] == []
    with pytest.raises(KeyError, match="no such field"):
        agree["nope"]
    back = ScanAgreement.load(agree.save(tmp_path / "agree"))
    assert back == agree and back.to_dataframe().equals(agree.to_dataframe())
