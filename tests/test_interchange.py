"""Interchange and necessity: exact positions, identities, the source mean, Wilson rates, errors, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from statsmodels.stats.proportion import proportion_confint

import icl_circuits.cli as cli_mod
from icl_circuits import build_prompts, final_logits
from icl_circuits import interventions as iv
from icl_circuits.interchange import (
    InterchangeResult, NecessityResult, interchange, interchange_controls, necessity, paired_batches,
    resolve_positions, task_answer_tokens,
)
from icl_circuits.plots import interchange as plots


@pytest.fixture(scope="module")
def target(tiny_model):
    return build_prompts(tiny_model, "antonym", 6, 3, seed=0)


@pytest.fixture(scope="module")
def pair(tiny_model):
    return paired_batches(tiny_model, "english-french", "antonym", 8, 3, seed=0)


def _decode(batch, pos, i=0):
    return [batch.tokenizer.decode([int(batch.tokens[i, p])]) for p in pos[i]]


# ----------------------------------------------------------------------------- positions
def test_single_token_sets_resolve_to_the_right_tokens(target):
    for i in range(len(target)):
        demos = target.demos[i]
        assert _decode(target, resolve_positions(target, "answers")[0], i) == [y for _, y in demos]
        assert _decode(target, resolve_positions(target, "inputs")[0], i) == [x for x, _ in demos]
        assert _decode(target, resolve_positions(target, "separators")[0], i) == [":"] * 3
        assert _decode(target, resolve_positions(target, "delimiters")[0], i) == ["\n"] * 3
        assert _decode(target, resolve_positions(target, "answer_-1")[0], i) == [demos[-1][1]]
        assert _decode(target, resolve_positions(target, "query")[0], i) == [":"]
    pos, names = resolve_positions(target, "last_demo_token")
    assert names == ["last_demo_token"] and torch.equal(pos[:, 0], target.query_spans[:, 0] - 1)
    assert resolve_positions(target, "answer_-1")[1] == ["answer_2"]


def test_demo_tokens_are_every_token_from_the_first_input_to_the_query(target):
    pos, names = resolve_positions(target, "demo_tokens")
    for i in range(len(target)):
        start, end = int(target.input_spans[i, 0, 0]), int(target.query_spans[i, 0])
        assert pos[i].tolist() == list(range(start, end))
    assert names[:4] == ["demo_0.input[0]", "demo_0.sep[0]", "demo_0.answer[0]", "demo_0.delim[0]"]
    assert resolve_positions(target, "demo_1")[1] == [n for n in names if n.startswith("demo_1.")]


def test_multi_token_separator_is_mapped_by_role(tiny_model):
    b = build_prompts(tiny_model, "antonym", 3, 2, template="{x}->{y}", seed=0)
    pos, names = resolve_positions(b, "demo_0")
    assert names == ["demo_0.input[0]", "demo_0.sep[0]", "demo_0.sep[1]", "demo_0.answer[0]", "demo_0.delim[0]"]
    assert _decode(b, pos)[1:3] == ["-", ">"]
    assert _decode(b, resolve_positions(b, "separator_0")[0]) == [">"]


def test_variable_length_inputs_use_first_and_last_tokens_or_raise(tiny_model):
    b = build_prompts(tiny_model, "letter-string", 6, 3, seed=0)
    first, last = resolve_positions(b, "input_first")[0], resolve_positions(b, "input_last")[0]
    for i in range(len(b)):
        assert _decode(b, first, i) == [x.split(" ")[0] for x, _ in b.demos[i]]
        assert _decode(b, last, i) == [x.split(" ")[-1] for x, _ in b.demos[i]]
    with pytest.raises(ValueError, match="the input of demo 0 spans .* tokens in different prompts"):
        resolve_positions(b, "inputs")


@pytest.mark.parametrize("spec, match", [
    ("answer_3", "outside the prompt: the batch has 3 demos"),
    ("demo_0.input[1]", "outside the prompt"),
    ("answer_0,query", "join position names with '\\+'"),
    ("nope", "unknown position set 'nope'"),
    ("delimiter_2+last_demo_token", "are the same token"),
])
def test_bad_position_specs_are_clear_errors(target, spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_positions(target, spec)


# ----------------------------------------------------------------------------- interchange
@pytest.mark.parametrize("spec", ["demo_tokens", "query", "answers+query"])
def test_interchanging_a_batch_with_itself_changes_nothing(tiny_model, target, spec):
    r = interchange(tiny_model, target, target, spec, layers=[0, 1, 2], per_prompt_source=True,
                    exclude_ambiguous=False, return_logits=True, progress=False)
    clean = final_logits(tiny_model, target)
    assert (r.logits - clean).abs().max() <= 1e-5
    assert torch.equal(r.predictions, r.clean_predictions.expand_as(r.predictions))
    for o in ("transfer", "preserve", "neither"):
        assert torch.all(r.rate(o) == r.baseline[o])


def test_averaging_over_one_source_prompt_equals_per_prompt(tiny_model, pair):
    src, tgt = pair[0].select([0]), pair[1].select([1])
    a = interchange(tiny_model, src, tgt, "answers", return_logits=True, progress=False)
    b = interchange(tiny_model, src, tgt, "answers", per_prompt_source=True, return_logits=True, progress=False)
    assert torch.equal(a.logits, b.logits)


def test_interchange_writes_the_source_mean_at_the_target_positions(tiny_model, pair):
    src, tgt = pair
    r = interchange(tiny_model, src, tgt, "answers+query", layers=[1], return_logits=True, progress=False)
    ps, pt = resolve_positions(src, "answers+query")[0], resolve_positions(tgt, "answers+query")[0]
    mean = iv.read_resid(tiny_model, src, ps, [1])[0].mean(0)  # [n, d]
    with tiny_model.hooks(fwd_hooks=[(iv.resid_name(tiny_model, 1), iv.replace_hook(pt, mean))]):
        manual = tiny_model(tgt.tokens)[torch.arange(len(tgt)), tgt.final_positions]
    assert (r.logits[0] - manual).abs().max() <= 1e-4


def test_scores_and_wilson_intervals(tiny_model, pair):
    src, tgt = pair
    r = interchange(tiny_model, src, tgt, "query", progress=False)
    ta = task_answer_tokens(tgt, "english-french")
    assert torch.equal(r.transfer_tokens, ta) and torch.equal(r.preserve_tokens, tgt.answer_tokens)
    assert r.valid.all() and r.n == len(tgt)
    for i in range(len(r.layers)):
        k = int((r.predictions[i] == ta).sum())
        low, high = proportion_confint(k, r.n, method="wilson")
        assert int(r.counts[0, i]) == k and r.low[0, i] == pytest.approx(low) and r.high[0, i] == pytest.approx(high)
    assert torch.allclose(r.rates.sum(0), torch.ones(len(r.layers)))  # exclusive when answers differ


def test_transfer_token_is_the_source_answer_rendered_in_the_target_prompt(tiny_model, pair):
    src, tgt = pair
    for i, q in enumerate(tgt.queries):
        from icl_circuits.tasks import get_task
        assert tgt.tokenizer.decode([int(task_answer_tokens(tgt, "english-french")[i])]) == get_task("english-french").apply(q)
    num = build_prompts(tiny_model, "number", 5, 2, seed=0)  # categorization: the prompt's own binding
    assert torch.equal(task_answer_tokens(num, "number"), num.answer_tokens)
    assert (task_answer_tokens(num, "point") == -1).all()


def test_paired_batches_keep_only_distinguishable_queries(pair):
    src, tgt = pair
    ta = task_answer_tokens(tgt, src.task)
    assert len(tgt) == 8 and (ta >= 0).all() and (ta != tgt.answer_tokens).all()


def test_controls(tiny_model, pair):
    src, tgt = pair
    third = build_prompts(tiny_model, "uppercase", 8, 3, seed=5)
    out = interchange_controls(tiny_model, src, tgt, third, "answers", layers=[0], progress=False)
    assert set(out) == {"interchange", "third_task", "norm_matched_noise", "shuffled_positions"}
    assert out["third_task"].source_task == "english-french" and out["third_task"].meta["source_prompts_task"] == "uppercase"
    assert out["shuffled_positions"].control == "shuffled_positions"
    with pytest.raises(ValueError, match="at least 2 positions"):
        interchange(tiny_model, src, tgt, "query", control="shuffled_positions", progress=False)


def test_interchange_errors(tiny_model, pair, target):
    src, tgt = pair
    with pytest.raises(ValueError, match="same number of demos"):
        interchange(tiny_model, build_prompts(tiny_model, "english-french", 4, 2), tgt, progress=False)
    with pytest.raises(ValueError, match="layers must be an integer in \\[0, 2\\]"):
        interchange(tiny_model, src, tgt, layers=[3], progress=False)
    with pytest.raises(ValueError, match="source_batch is empty"):
        interchange(tiny_model, dataclasses.replace(src, tokens=src.tokens[:0]), tgt, progress=False)
    with pytest.raises(ValueError, match="same template"):
        interchange(tiny_model, build_prompts(tiny_model, "english-french", 4, 3, template="{x}={y}"), tgt, progress=False)
    with pytest.raises(ValueError, match="no target prompt can be scored"):
        interchange(tiny_model, target, target, progress=False)
    with pytest.raises(ValueError, match="domains do not overlap"):
        paired_batches(tiny_model, "number", "antonym", 4, 2)


def test_result_round_trip_and_dataframe(tiny_model, pair, tmp_path):
    r = interchange(tiny_model, *pair, "answers", progress=False)
    back = InterchangeResult.load(r.save(tmp_path / "r"))
    assert torch.equal(back.rates, r.rates) and back.positions == r.positions and back.logits is None
    df = back.to_dataframe()
    assert len(df) == 3 * len(r.layers) and {"layer", "outcome", "value", "low", "high", "k", "n"} <= set(df.columns)


# ----------------------------------------------------------------------------- necessity
def test_necessity_with_zero_noise_changes_nothing(tiny_model, target):
    r = necessity(tiny_model, target, "demo_tokens+query", layers=[0, 1, 2], how="noise", noise_scale=0.0, progress=False)
    clean = (final_logits(tiny_model, target).argmax(-1) == target.answer_tokens).float()
    assert torch.equal(r.per_prompt, clean.expand_as(r.per_prompt)) and torch.all(r.drop == 0)


def test_mean_ablation_writes_the_mean_over_prompts(tiny_model, target):
    r = necessity(tiny_model, target, "query", layers=[1], how="mean", progress=False)
    pos = target.positions("final")
    mean = iv.read_resid(tiny_model, target, pos, [1])[0].mean(0)
    with tiny_model.hooks(fwd_hooks=[(iv.resid_name(tiny_model, 1), iv.replace_hook(pos, mean))]):
        logits = tiny_model(target.tokens)[torch.arange(len(target)), target.final_positions]
    assert torch.equal(r.per_prompt[0], (logits.argmax(-1) == target.answer_tokens).float())
    one = target.select([2])  # the mean over one prompt is its own activation
    same = necessity(tiny_model, one, "answers+query", how="mean", progress=False)
    assert torch.all(same.values == same.baseline)


def test_necessity_result_and_errors(tiny_model, target, tmp_path):
    r = necessity(tiny_model, target, "query", how="zero", progress=False)
    back = NecessityResult.load(r.save(tmp_path / "n"))
    assert back.positions == ["query"] and {"drop", "drop_low", "drop_high"} <= set(back.to_dataframe().columns)
    with pytest.raises(ValueError, match="how must be"):
        necessity(tiny_model, target, how="blur", progress=False)
    with pytest.raises(ValueError, match="noise_scale must be non-negative"):
        necessity(tiny_model, target, noise_scale=-1, progress=False)


# ----------------------------------------------------------------------------- figures and CLI
def test_figures(tiny_model, pair, target):
    rs = [interchange(tiny_model, *pair, s, progress=False) for s in ("answers", "query")]
    assert len(plots.interchange(rs).data) == 2 * 2 * 3  # band + line per outcome and set
    n = necessity(tiny_model, target, "query", progress=False)
    assert "Necessity" in plots.necessity(n).layout.title.text


@pytest.fixture
def runner(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_mod, "_load", lambda name: tiny_model)
    return CliRunner()


def test_cli_interchange_json_and_out(runner, tmp_path):
    res = runner.invoke(cli_mod.cli, ["interchange", "--source", "english-french", "--target", "antonym", "--demos", "3",
                                      "--prompts", "6", "--positions", "answers,answer_-1,query", "--json",
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert set(data["positions"]) == {"answers", "answer_-1", "query"}
    assert len(data["positions"]["answers"]["transfer"]["value"]) == 2
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()


def test_cli_interchange_errors_are_clear(runner):
    res = runner.invoke(cli_mod.cli, ["interchange", "--source", "antonym", "--target", "english-french",
                                      "--demos", "2", "--prompts", "3", "--positions", "bogus"])
    assert res.exit_code != 0 and "unknown position set 'bogus'" in res.output
