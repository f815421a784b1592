"""Head ablation: batched scan equals one ablation per forward, identities, attribution, errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.methods.heads import (
    HeadScanResult, ablate_heads, head_ablation_scan, head_attribution, head_means, head_metric, scan_agreement,
)
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


@pytest.fixture(scope="module")
def linear_model():
    """Attention only, no LayerNorm: the final logits are linear in the last block's hook_z."""
    return make_tiny_model(normalization_type=None, attn_only=True, seed=1)


@pytest.mark.parametrize("how", ["zero", "mean"])
@pytest.mark.parametrize("positions", ["all", "final"])
def test_batched_scan_equals_one_ablation_per_forward(tiny_model, batch, how, positions):
    kw = dict(metric="logit_diff", positions=positions, progress=False)
    fast = head_ablation_scan(tiny_model, batch, how, batch_size=4, **kw)  # two minibatches, 4 copies each
    naive = head_ablation_scan(tiny_model, batch, how, batched=False, **kw)
    assert torch.equal(fast.per_prompt, naive.per_prompt) and torch.equal(fast.clean, naive.clean)
    assert fast.effect.abs().max() > 0


def test_heads_per_forward_chunks_give_the_same_scan(tiny_model, batch):
    a = head_ablation_scan(tiny_model, batch, metric="gold_prob", heads_per_forward=3, progress=False)
    b = head_ablation_scan(tiny_model, batch, metric="gold_prob", progress=False)
    assert torch.equal(a.per_prompt, b.per_prompt)


def test_zero_ablation_equals_a_handwritten_hook(tiny_model, batch):
    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with tiny_model.hooks(fwd_hooks=[(iv.z_name(1), zero_head)]):
        logits = tiny_model(batch.tokens)[torch.arange(len(batch)), batch.final_positions]
    res = ablate_heads(tiny_model, batch, [(1, 2)], "zero", metric="logit_diff")
    assert torch.allclose(res.logits, logits, atol=1e-5)


def test_zero_ablating_no_heads_changes_nothing(tiny_model, batch):
    res = ablate_heads(tiny_model, batch, [], "zero", metric="logit_diff")
    assert torch.equal(res.per_prompt, res.clean)


@pytest.mark.parametrize("positions", ["all", "final"])
def test_mean_ablation_of_one_prompt_with_its_own_mean_changes_nothing(tiny_model, batch, positions):
    one = batch.select([2])
    res = ablate_heads(tiny_model, one, [(0, 0), (0, 3), (1, 1)], "mean", positions=positions, metric="logit_diff")
    assert (res.per_prompt - res.clean).abs().max() < 1e-5


def test_mean_over_tokens_is_one_vector_for_every_position(tiny_model, batch):
    m = head_means(tiny_model, batch, [1], mean_over="tokens")[1]
    assert m.shape == (batch.tokens.shape[1], 4, 8) and torch.allclose(m[0], m[-1])
    per_pos = head_means(tiny_model, batch, [1], width=batch.tokens.shape[1] + 3)[1]
    assert per_pos.shape[0] == batch.tokens.shape[1] + 3 and torch.allclose(per_pos[-1], m[0], atol=1e-6)


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_attribution_is_exact_for_the_last_block_of_a_linear_model(linear_model, batch, how):
    """No LayerNorm, no MLP: logit_diff is linear in the last block's z, so the Taylor estimate is exact."""
    exact = head_ablation_scan(linear_model, batch, how, metric="logit_diff", layers=[1], progress=False)
    attr = head_attribution(linear_model, batch, how, metric="logit_diff", layers=[1])
    assert torch.allclose(attr.per_prompt, exact.per_prompt, atol=1e-4)


def test_attribution_ranks_heads_like_the_exact_scan(tiny_model, batch):
    exact = head_ablation_scan(tiny_model, batch, "mean", metric="logit_diff", positions="final", progress=False)
    attr = head_attribution(tiny_model, batch, "mean", metric="logit_diff", positions="final")
    agree = scan_agreement(exact, attr)
    assert agree["spearman"] > 0.6
    big = exact.effect.abs() > exact.effect.abs().median()
    assert (torch.sign(exact.effect[big]) == torch.sign(attr.effect[big])).float().mean() >= 0.75


def test_attribution_leaves_parameter_grads_alone(tiny_model, batch):
    head_attribution(tiny_model, batch)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_logit_diff_uses_other_labels(tiny_model, batch):
    logits = torch.zeros(len(batch), tiny_model.cfg.d_vocab)
    logits[torch.arange(len(batch)), batch.answer_tokens] = 3.0
    assert torch.allclose(head_metric(logits, batch, "logit_diff"), torch.full((len(batch),), 3.0))


def test_scan_result_round_trip_and_table(tiny_model, batch, tmp_path):
    res = head_ablation_scan(tiny_model, batch, metric="accuracy", progress=False)
    back = HeadScanResult.load(res.save(tmp_path / "scan"))
    assert torch.equal(back.per_prompt, res.per_prompt) and back.layers == [0, 1]
    df = back.to_dataframe()
    assert len(df) == 8 and {"layer", "head", "value", "effect", "low", "high"} <= set(df.columns)
    assert (df.low <= df.value).all() and (df.value <= df.high).all()
    assert len(res.top(3)) == 3


@pytest.mark.parametrize("call, match", [
    (lambda m, b: ablate_heads(m, b, [(0, 4)]), r"head must be an integer in \[0, 3\]"),
    (lambda m, b: ablate_heads(m, b, [(2, 0)]), r"layer must be an integer in \[0, 1\]"),
    (lambda m, b: ablate_heads(m, b, [(0, 1, 2)]), "must be a \\(layer, head\\) pair"),
    (lambda m, b: ablate_heads(m, b, [(0, 1)], how="random"), "how must be one of"),
    (lambda m, b: head_ablation_scan(m, b, layers=[3], progress=False), r"layers: each layer must be an integer in \[0, 1\]"),
    (lambda m, b: head_ablation_scan(m, b, layers=[], progress=False), "layers is empty"),
    (lambda m, b: head_ablation_scan(m, b, metric="loss", progress=False), "metric must be one of"),
    (lambda m, b: head_attribution(m, b, metric="accuracy"), "zero gradient"),
    (lambda m, b: head_ablation_scan(m, b, positions="answer", progress=False), "positions must be one of"),
])
def test_clear_errors(tiny_model, batch, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model, batch)


def test_cli_heads_json_and_out(monkeypatch, tiny_model, tmp_path):
    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod

    monkeypatch.setattr(cli_common, "_load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["heads", "--task", "antonym", "--demos", "2", "--prompts", "4", "--how", "mean",
                                           "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert len(data["scan_effect"]) == 2 and len(data["attribution_effect"][0]) == 4 and "spearman" in data
    assert (tmp_path / "o" / "result.json").is_file() and (tmp_path / "o" / "figure.html").is_file()


# ----------------------------------------------------------------------------- agreement, with its ablation
def _fake_scan(effect, how="zero", positions="all", metric="logit_diff", method="exact"):
    e = torch.as_tensor(effect, dtype=torch.float32)
    pp = e[..., None].repeat(1, 1, 2)
    return HeadScanResult(values=e, effect=e, per_prompt=pp, clean=torch.zeros(2), low=e, high=e,
                          layers=list(range(e.shape[0])), metric=metric, how=how, positions=positions,
                          method=method, task="t", model_name="m")


def test_agreement_names_the_ablation_and_warns_when_the_top_heads_differ():
    import warnings

    from icl_circuits.methods.heads import TOP_K_MIN_OVERLAP

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


def test_cli_heads_states_the_ablation_with_the_agreement(monkeypatch, tiny_model, tmp_path):
    import warnings

    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod
    from icl_circuits.methods.heads import HeadScanResult as HSR

    monkeypatch.setattr(cli_common, "_load", lambda name: tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(cli_mod.cli, ["heads", "--task", "antonym", "--demos", "2", "--prompts", "4",
                                               "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("attribution vs exact"))
    assert "zero ablation" in line and "all positions" in line and "top-5 overlap" in line
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["agreement"]["how"] == "zero" and data["agreement"]["ablation"] in line
    saved = HSR.load(tmp_path / "o" / "attribution")
    assert saved.meta["agreement"]["how"] == "zero" and "disagree" in saved.meta["agreement"]
