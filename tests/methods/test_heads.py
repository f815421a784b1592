"""Head ablation: batched scan equals one ablation per forward, identities, positions specs, errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.methods.heads import HeadScanResult, head_ablation_scan
from icl_circuits.methods.head_ablation import ablate_heads, head_means


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


@pytest.mark.parametrize("how", ["zero", "mean"])
@pytest.mark.parametrize("positions", ["all", "final"])
def test_batched_scan_equals_one_ablation_per_forward(tiny_model, batch, how, positions):
    kw = dict(metric="logit_diff_to_mean", positions=positions, progress=False)
    fast = head_ablation_scan(tiny_model, batch, how, batch_size=4, **kw)  # two minibatches, 4 copies each
    naive = head_ablation_scan(tiny_model, batch, how, batched=False, **kw)
    # float32 logit differences (|x| <= 3); stacked copies and minibatches of 4 vs one batch of 6: other shapes,
    # other kernels and summation orders per CPU (measured: 1.2e-7), so 1e-5 relative and absolute
    torch.testing.assert_close(fast.per_prompt, naive.per_prompt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.clean, naive.clean, rtol=1e-5, atol=1e-5)
    assert fast.effect.abs().max() > 0


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_scan_at_a_positions_spec_equals_one_ablation_per_forward(tiny_model, batch, how):
    kw = dict(metric="gold_prob", positions="answer_-1+final", progress=False)
    fast = head_ablation_scan(tiny_model, batch, how, batch_size=4, **kw)
    naive = head_ablation_scan(tiny_model, batch, how, batched=False, **kw)
    # gold-token probabilities (float32, 1e-4 to 3e-3 here): other batch shapes, other kernels; the softmax turns
    # a logit error e into a relative error e, so 1e-5 relative (atol 1e-8 for probabilities near 0)
    torch.testing.assert_close(fast.per_prompt, naive.per_prompt, rtol=1e-5, atol=1e-8)
    assert fast.positions == "answer_-1+final"
    assert fast.effect.abs().max() > 0


@pytest.mark.parametrize("positions", ["all", "final"])
def test_intervention_specs_equal_the_stacked_copies_hook(tiny_model, batch, positions):
    """The scan (Intervention specs through the runner) equals the former engine's hook, head by head."""
    from icl_circuits.core.metrics import get_metric
    from icl_circuits.core.runner import run_final_logits

    scan = head_ablation_scan(tiny_model, batch, "zero", metric="logit_diff_to_mean", positions=positions,
                              progress=False)
    pos = None if positions == "all" else batch.positions("final").positions
    for l, h in [(0, 1), (1, 3)]:
        def make(rows, mb, l=l, h=h):
            return [(iv.z_name(l), iv.stacked_head_ablation_hook([[h]], None if pos is None else pos[rows], "zero"))]

        logits = run_final_logits(tiny_model, batch, make)
        assert torch.allclose(scan.per_prompt[l, h], get_metric("logit_diff_to_mean").from_logits(logits, batch),
                              atol=1e-5)


def test_heads_per_forward_chunks_give_the_same_scan(tiny_model, batch):
    a = head_ablation_scan(tiny_model, batch, metric="gold_prob", heads_per_forward=3, progress=False)
    b = head_ablation_scan(tiny_model, batch, metric="gold_prob", progress=False)
    # 3 then 1 stacked copies vs 4: other shapes, other kernels (gold probabilities, as above)
    torch.testing.assert_close(a.per_prompt, b.per_prompt, rtol=1e-5, atol=1e-8)


def test_zero_ablation_equals_a_handwritten_hook(tiny_model, batch):
    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with tiny_model.hooks(fwd_hooks=[(iv.z_name(1), zero_head)]):
        logits = tiny_model(batch.tokens)[torch.arange(len(batch)), batch.final_positions]
    res = ablate_heads(tiny_model, batch, [(1, 2)], "zero", metric="logit_diff_to_mean")
    assert torch.allclose(res.logits, logits, atol=1e-5)


def test_zero_ablating_no_heads_changes_nothing(tiny_model, batch):
    res = ablate_heads(tiny_model, batch, [], "zero", metric="logit_diff_to_mean")
    assert torch.equal(res.per_prompt, res.clean)  # exact: the same forward on the same shapes, no intervention


@pytest.mark.parametrize("positions", ["all", "final"])
def test_mean_ablation_of_one_prompt_with_its_own_mean_changes_nothing(tiny_model, batch, positions):
    one = batch.select([2])
    res = ablate_heads(tiny_model, one, [(0, 0), (0, 3), (1, 1)], "mean", positions=positions, metric="logit_diff_to_mean")
    assert (res.per_prompt - res.clean).abs().max() < 1e-5


def test_mean_over_tokens_is_one_vector_for_every_position(tiny_model, batch):
    m = head_means(tiny_model, batch, [1], mean_over="tokens")[1]
    assert m.shape == (batch.tokens.shape[1], 4, 8) and torch.allclose(m[0], m[-1])
    per_pos = head_means(tiny_model, batch, [1], width=batch.tokens.shape[1] + 3)[1]
    assert per_pos.shape[0] == batch.tokens.shape[1] + 3 and torch.allclose(per_pos[-1], m[0], atol=1e-6)


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
    (lambda m, b: head_ablation_scan(m, b, metric="loss", progress=False), "unknown metric 'loss'"),
    (lambda m, b: head_ablation_scan(m, b, metric="exact_match", progress=False), "final-position logits"),
    (lambda m, b: head_ablation_scan(m, b, positions="bogus", progress=False), "positions must be 'all'"),
])
def test_clear_errors(tiny_model, batch, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model, batch)


def test_cli_heads_json_and_out(monkeypatch, tiny_model, tmp_path):
    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod

    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["heads", "--task", "antonym", "--demos", "2", "--prompts", "4", "--how", "mean",
                                           "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert len(data["scan_effect"]) == 2 and len(data["attribution_effect"][0]) == 4 and "spearman" in data
    assert (tmp_path / "o" / "result.json").is_file() and (tmp_path / "o" / "figure.html").is_file()


def test_cli_heads_states_the_ablation_with_the_agreement(monkeypatch, tiny_model, tmp_path):
    import warnings

    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod
    from icl_circuits.methods.heads import HeadScanResult as HSR

    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
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
