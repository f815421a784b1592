"""Necessity: corruption identities, hand-made reference runs (the Intervention specs give the
numbers of the hand-written hooks, same noise), ragged sets, positions specs, Result, figure, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
from icl_circuits import build_prompts, final_logits
from icl_circuits.core import interventions as iv
from icl_circuits.core import runner
from icl_circuits.methods.necessity import NecessityResult, necessity
from icl_circuits.viz import interchange as plots
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def target(tiny_model):
    return build_prompts(tiny_model, "antonym", 6, 3, seed=0)


@pytest.fixture(scope="module")
def ragged(tiny_model):
    """letter-string inputs are 2 to 5 tokens ("k q z"): spans differ in length across prompts."""
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)


def _hand_run(model, batch, hooks_for_rows, batch_size):
    """Full forwards (no resuming) with hand-written hooks, minibatch by minibatch: [batch] correct."""
    out = []
    for rows, mb in runner.minibatches(batch, batch_size):
        with model.hooks(fwd_hooks=hooks_for_rows(rows)):
            logits = model(mb.tokens)[torch.arange(len(mb)), mb.final_positions]
        out.append(logits.argmax(-1) == mb.answer_tokens)
    return torch.cat(out).float()


# ----------------------------------------------------------------------------- identities and references
def test_necessity_with_zero_noise_changes_nothing(tiny_model, target):
    r = necessity(tiny_model, target, "demo_tokens+query", layers=[0, 1, 2], how="noise", noise_scale=0.0, progress=False)
    clean = (final_logits(tiny_model, target).argmax(-1) == target.answer_tokens).float()
    # 0/1 outcomes compared exactly (here and below): resumed and full forwards differ by ~1e-6 in float32, and
    # |gold - best other logit| is >= 0.9 on these prompts, clean or corrupted: no outcome sits near a tie
    assert torch.equal(r.per_prompt, clean.expand_as(r.per_prompt)) and torch.all(r.drop == 0)
    assert r.baseline == float(clean.mean())


@pytest.mark.parametrize("relative", [True, False])
def test_noise_equals_hand_written_noise_hooks_with_the_documented_seeds(tiny_model, target, relative):
    """Layer layers[i], minibatch starting at prompt r: seed * 1_000_003 + 7919 * i + r (as before
    the runner took over); the resumed, staggered runs give the full forward's answers."""
    layers, seed, bs = [2, 0, 1], 5, 4
    r = necessity(tiny_model, target, "answers+query", layers, how="noise", noise_scale=3.0, relative=relative,
                  seed=seed, batch_size=bs, progress=False)
    pos = target.positions("answers+query").positions
    for i, l in enumerate(layers):
        hooks = lambda rows, i=i, l=l: [(iv.resid_name(tiny_model, l), iv.noise_hook(
            pos[rows], 3.0, seed=seed * 1_000_003 + 7919 * i + rows.start, relative=relative))]  # noqa: E731
        assert torch.equal(r.per_prompt[i], _hand_run(tiny_model, target, hooks, bs))
    assert r.meta["seed"] == seed and r.layers == layers


def test_ragged_necessity_corrupts_only_valid_entries(tiny_model, ragged):
    """Zero ablation of a ragged set equals a hand-made run that zeroes each valid entry."""
    r = necessity(tiny_model, ragged, "inputs", layers=[1], how="zero", progress=False)
    ps = ragged.positions("inputs")
    resid = runner.read_resid(tiny_model, ragged, None, [1])[0].clone()
    for i, j in ps.mask.nonzero().tolist():
        resid[i, ps.positions[i, j]] = 0
    manual = runner.run_final_logits(tiny_model, ragged, start_at_layer=1, resid=resid).argmax(-1)
    assert torch.equal(r.per_prompt[0], (manual == ragged.answer_tokens).float())
    zero_noise = necessity(tiny_model, ragged, "demo_tokens", how="noise", noise_scale=0.0, progress=False)
    assert torch.all(zero_noise.drop == 0)


def test_mean_ablation_writes_the_mean_over_prompts(tiny_model, target):
    r = necessity(tiny_model, target, "query", layers=[1], how="mean", progress=False)
    pos = target.positions("final").positions
    mean = runner.read_resid(tiny_model, target, pos, [1])[0].mean(0)
    with tiny_model.hooks(fwd_hooks=[(iv.resid_name(tiny_model, 1), iv.replace_hook(pos, mean))]):
        logits = tiny_model(target.tokens)[torch.arange(len(target)), target.final_positions]
    assert torch.equal(r.per_prompt[0], (logits.argmax(-1) == target.answer_tokens).float())
    one = target.select([2])  # the mean over one prompt is its own activation
    same = necessity(tiny_model, one, "answers+query", how="mean", progress=False)
    assert torch.all(same.values == same.baseline)


def test_final_residual_layer_is_the_unembedding_input(tiny_model, target):
    """Layer n_layers corrupts the final residual (blocks.{n-1}.hook_resid_post), as a full
    forward with that hook does."""
    n = tiny_model.cfg.n_layers
    r = necessity(tiny_model, target, "query", layers=[n], how="zero", progress=False)
    hooks = lambda rows: [(iv.resid_name(tiny_model, n), iv.ablate_hook(target.positions("query").positions[rows]))]  # noqa: E731
    # exact: a zeroed final residual unembeds to the same logits on both paths
    assert torch.equal(r.per_prompt[0], _hand_run(tiny_model, target, hooks, 64))


def test_a_list_of_position_names_is_their_union(tiny_model, target):
    a = necessity(tiny_model, target, ["answers", "query"], layers=[1], how="zero", progress=False)
    b = necessity(tiny_model, target, "answers+query", layers=[1], how="zero", progress=False)
    assert torch.equal(a.per_prompt, b.per_prompt) and a.position_set == "answers+query" and a.positions == b.positions


@pytest.mark.parametrize("tok_fixture", ["gpt2_tokenizer", "llama_tokenizer"])
def test_necessity_on_bpe_tokenizers(request, tok_fixture):
    tok = request.getfixturevalue(tok_fixture)
    model = make_tiny_model(d_vocab=len(tok), n_layers=2)
    tgt = build_prompts(tok, "antonym", 6, 3, seed=0)
    n = necessity(model, tgt, "demo_tokens+query", how="mean", progress=False)
    assert n.values.shape == (2,)


# ----------------------------------------------------------------------------- result, errors, figure
def test_necessity_result_and_errors(tiny_model, target, tmp_path):
    r = necessity(tiny_model, target, "query", how="zero", progress=False)
    back = NecessityResult.load(r.save(tmp_path / "n"))
    assert back.positions == ["query"] and {"drop", "drop_low", "drop_high"} <= set(back.to_dataframe().columns)
    assert torch.equal(back.per_prompt, r.per_prompt) and back.provenance["task"] == "antonym"
    assert back.provenance["model"] == tiny_model.cfg.model_name and back.provenance["n_prompts"] == len(target)
    with pytest.raises(ValueError, match="how must be"):
        necessity(tiny_model, target, how="blur", progress=False)
    with pytest.raises(ValueError, match="noise_scale must be non-negative"):
        necessity(tiny_model, target, noise_scale=-1, progress=False)
    with pytest.raises(ValueError, match="layers must be an integer in \\[0, 2\\]"):
        necessity(tiny_model, target, layers=[3], progress=False)
    with pytest.raises(ValueError, match="layers must name at least one layer"):
        necessity(tiny_model, target, layers=[], progress=False)
    with pytest.raises(ValueError, match="unknown position set 'nowhere'"):
        necessity(tiny_model, target, "nowhere", progress=False)


def test_figure(tiny_model, target):
    n = necessity(tiny_model, target, "query", progress=False)
    assert "Necessity" in plots.necessity(n).layout.title.text


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_runner(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    return CliRunner()


def test_cli_necessity_json_and_out(cli_runner, tiny_model, tmp_path):
    args = ["necessity", "--task", "antonym", "--demos", "3", "--prompts", "6", "--positions", "answers,query",
            "--how", "mean", "--layers", "0,1", "--seed", "1", "--json", "--out", str(tmp_path)]
    res = cli_runner.invoke(cli_mod.cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    direct = necessity(tiny_model, build_prompts(tiny_model, "antonym", 6, 3, seed=1), "query", [0, 1], how="mean",
                       seed=1, progress=False)
    assert set(data["positions"]) == {"answers", "query"} and data["how"] == "mean"
    assert data["positions"]["query"]["drop"] == [round(v, 4) for v in direct.drop.tolist()]
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()
    back = NecessityResult.load(tmp_path / "necessity_query")
    assert torch.equal(back.per_prompt, direct.per_prompt)


def test_cli_necessity_errors_are_clear(cli_runner):
    res = cli_runner.invoke(cli_mod.cli, ["necessity", "--task", "antonym", "--demos", "2", "--prompts", "3",
                                          "--positions", "bogus"])
    assert res.exit_code != 0 and "unknown position set 'bogus'" in res.output
    res = cli_runner.invoke(cli_mod.cli, ["necessity", "--task", "antonym", "--layers", "x"])
    assert res.exit_code != 0 and "--layers" in res.output
