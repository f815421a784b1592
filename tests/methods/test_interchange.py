"""Interchange: exact positions, identities, the source mean, Wilson rates, controls, errors, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from statsmodels.stats.proportion import proportion_confint

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
from icl_circuits.core import runner
from icl_circuits import build_prompts, final_logits
from icl_circuits.core import interventions as iv
from icl_circuits.methods.interchange import InterchangeControlsResult, InterchangeResult, interchange, interchange_controls
from icl_circuits.core.positions import masked_mean
from icl_circuits.core.pairs import paired_batches, task_answer_tokens
from icl_circuits.viz import interchange as plots
from tests.conftest import make_tiny_model


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
        assert _decode(target, target.positions("answers").positions, i) == [y for _, y in demos]
        assert _decode(target, target.positions("inputs").positions, i) == [x for x, _ in demos]
        assert _decode(target, target.positions("separators").positions, i) == [":"] * 3
        assert _decode(target, target.positions("delimiters").positions, i) == ["\n"] * 3
        assert _decode(target, target.positions("answer_-1").positions, i) == [demos[-1][1]]
        assert _decode(target, target.positions("query").positions, i) == [":"]
    ps = target.positions("last_demo_token")
    pos, names = ps.positions, ps.names
    assert names == ["last_demo_token"] and torch.equal(pos[:, 0], target.query_spans[:, 0] - 1)
    assert target.positions("answer_-1").names == ["answer_2"]


def test_demo_tokens_are_every_token_from_the_first_input_to_the_query(target):
    ps = target.positions("demo_tokens")
    pos, names = ps.positions, ps.names
    assert not ps.ragged and ps.mask.all()
    for i in range(len(target)):
        start, end = int(target.input_spans[i, 0, 0]), int(target.query_spans[i, 0])
        assert pos[i].tolist() == list(range(start, end))
    assert names[:4] == ["demo_0.input[0]", "demo_0.sep[0]", "demo_0.answer[0]", "demo_0.delim[0]"]
    assert target.positions("demo_1").names == [n for n in names if n.startswith("demo_1.")]


def test_multi_token_separator_is_mapped_by_role(tiny_model):
    b = build_prompts(tiny_model, "antonym", 3, 2, template="{x}->{y}", seed=0)
    ps = b.positions("demo_0")
    pos, names = ps.positions, ps.names
    assert names == ["demo_0.input[0]", "demo_0.sep[0]", "demo_0.sep[1]", "demo_0.answer[0]", "demo_0.delim[0]"]
    assert _decode(b, pos)[1:3] == ["-", ">"]
    assert _decode(b, b.positions("separator_0").positions) == [">"]


@pytest.fixture(scope="module")
def ragged(tiny_model):
    """letter-string inputs are 2 to 5 tokens ("k q z"): spans differ in length across prompts."""
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)


def test_variable_length_inputs_first_and_last_tokens(ragged):
    b = ragged
    first, last = b.positions("input_first"), b.positions("input_last")
    assert not first.ragged and not last.ragged
    for i in range(len(b)):
        assert _decode(b, first.positions, i) == [x.split(" ")[0] for x, _ in b.demos[i]]
        assert _decode(b, last.positions, i) == [x.split(" ")[-1] for x, _ in b.demos[i]]


def test_ragged_role_sets_align_by_offset_with_a_mask(ragged):
    """demo_k.input[o] is the o-th token of the input, o up to the longest input; the mask is False
    exactly where a prompt's input is shorter (there the position is 0)."""
    b = ragged
    ps = b.positions("inputs")
    assert ps.ragged and ps.positions.shape == ps.mask.shape == (len(b), len(ps.names))
    for j, name in enumerate(ps.names):
        d, o = int(name[5]), int(name.split("[")[1][:-1])
        for i in range(len(b)):
            letters = b.demos[i][d][0].split(" ")
            assert bool(ps.mask[i, j]) == (o < len(letters))
            if o < len(letters):
                assert b.tokenizer.decode([int(b.tokens[i, ps.positions[i, j]])]) == letters[o]
            else:
                assert int(ps.positions[i, j]) == 0
    lengths = [len(x.split(" ")) for d in b.demos for x, _ in d[:1]]
    assert b.positions("demo_0.input[4]").mask[:, 0].tolist() == [n > 4 for n in lengths]
    assert [n for n in b.positions("demo_0").names if ".input[" in n] == \
        [f"demo_0.input[{o}]" for o in range(max(lengths))]
    with pytest.raises(ValueError, match="outside the prompt: the input of demo 0 has at most"):
        b.positions("demo_0.input[9]")


def test_answer_tokens_and_answer_last(tiny_model):
    b = build_prompts(tiny_model, "country-capital", 8, 3, seed=1)  # some capitals are two words
    tokens, last = b.positions("answer_tokens"), b.positions("answer_last")
    for i in range(len(b)):
        for d, (_, y) in enumerate(b.demos[i]):
            cols = [j for j, n in enumerate(tokens.names) if n.startswith(f"demo_{d}.answer[") and tokens.mask[i, j]]
            assert " ".join(_decode(b, tokens.positions[:, cols], i)) == y
            assert _decode(b, last.positions, i)[d] == y.split(" ")[-1]


@pytest.mark.parametrize("spec, match", [
    ("answer_3", "outside the prompt: the batch has 3 demos"),
    ("demo_0.input[1]", "outside the prompt"),
    ("answer_0,query", "join position names with '\\+'"),
    ("nope", "unknown position set 'nope'"),
    ("delimiter_2+last_demo_token", "are the same token"),
])
def test_bad_position_specs_are_clear_errors(target, spec, match):
    with pytest.raises(ValueError, match=match):
        target.positions(spec)


# ----------------------------------------------------------------------------- masked writes
def test_masked_hooks_leave_masked_entries_untouched():
    """A constructed case: only the entries where the mask is True are written, by every hook."""
    act = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[1, 3], [2, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    vals = torch.full((2, 4), 7.0)
    for hook in (iv.replace_hook(pos, vals, mask=mask), iv.ablate_hook(pos, "zero", mask=mask),
                 iv.noise_hook(pos, 1.0, seed=3, mask=mask), iv.add_hook(pos, torch.ones(4), mask=mask)):
        out = hook(act)
        changed = (out != act).any(-1)
        assert changed.tolist() == [[False, True, False, True, False], [False, False, True, False, False]]
    full = iv.noise_hook(pos, 1.0, seed=3)(act)  # the same noise on the entries that are written
    masked = iv.noise_hook(pos, 1.0, seed=3, mask=mask)(act)
    assert torch.equal(masked[0], full[0]) and torch.equal(masked[1, 2], full[1, 2]) and torch.equal(masked[1, 0], act[1, 0])
    with pytest.raises(ValueError, match="mask has shape"):
        iv.replace_hook(pos, vals, mask=mask[:, :1])


def test_an_all_true_mask_is_exactly_no_mask(target):
    """Equal span lengths: every entry valid, and masked code gives the unmasked numbers exactly."""
    act = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(1))
    pos, mask = torch.tensor([[0, 2], [1, 5], [3, 4]]), torch.ones(3, 2, dtype=torch.bool)
    for kw in (dict(values=torch.randn(2, 8)),):
        assert torch.equal(iv.replace_hook(pos, **kw, mask=mask)(act), iv.replace_hook(pos, **kw)(act))
    assert torch.equal(iv.noise_hook(pos, 0.5, seed=2, relative=True, mask=mask)(act),
                       iv.noise_hook(pos, 0.5, seed=2, relative=True)(act))
    values = torch.randn(2, 3, 4, 8)
    mean, has = masked_mean(values, torch.ones(3, 4, dtype=torch.bool))
    assert torch.equal(mean, values.mean(-3)) and has.all()


def test_masked_mean_is_over_the_valid_prompts_of_each_column():
    values = torch.arange(24, dtype=torch.float).reshape(3, 2, 4)  # [batch, n, d]
    mask = torch.tensor([[True, False], [True, False], [False, False]])
    mean, has = masked_mean(values, mask)
    assert torch.equal(mean[0], values[:2, 0].mean(0)) and torch.equal(mean[1], torch.zeros(4))  # integers: exact
    assert has.tolist() == [True, False]


# ----------------------------------------------------------------------------- interchange
@pytest.mark.parametrize("spec", ["demo_tokens", "query", "answers+query"])
def test_interchanging_a_batch_with_itself_changes_nothing(tiny_model, target, spec):
    r = interchange(tiny_model, target, target, spec, layers=[0, 1, 2], per_prompt_source=True,
                    exclude_ambiguous=False, return_logits=True, progress=False)
    clean = final_logits(tiny_model, target)
    assert (r.logits - clean).abs().max() <= 1e-5
    # exact on argmax tokens: the logits agree to 1e-5 (above) and their top-2 gaps are >= 6e-3 here
    assert torch.equal(r.predictions, r.clean_predictions.expand_as(r.predictions))
    for o in ("transfer", "preserve", "neither"):
        assert torch.all(r.rate(o) == r.baseline[o])


def test_ragged_interchange_of_a_batch_with_itself_changes_nothing(tiny_model, ragged):
    r = interchange(tiny_model, ragged, ragged, "demo_tokens", layers=[0, 2], per_prompt_source=True,
                    exclude_ambiguous=False, return_logits=True, progress=False)
    assert ragged.positions("demo_tokens").ragged and r.meta["written_fraction"] < 1
    assert (r.logits - final_logits(tiny_model, ragged)).abs().max() <= 1e-5


def test_ragged_interchange_writes_the_valid_source_mean_only_where_the_target_is_valid(tiny_model):
    """Constructed by hand, one entry at a time: column j gets the mean over the source prompts that
    have it, written only in target prompts that have it; every other position is untouched."""
    src = build_prompts(tiny_model, "letter-string", 5, 2, seed=3)
    tgt = build_prompts(tiny_model, "letter-string", 4, 2, seed=4)
    r = interchange(tiny_model, src, tgt, "inputs", layers=[1], exclude_ambiguous=False, return_logits=True,
                    progress=False)
    ps, pt = src.positions("inputs"), tgt.positions("inputs")
    resid = runner.read_resid(tiny_model, src, None, [1])[0]  # [batch, pos, d]
    patched = runner.read_resid(tiny_model, tgt, None, [1])[0].clone()
    for j, name in enumerate(pt.names):
        rows = [s for s in range(len(src)) if name in ps.names and ps.mask[s, ps.column(name)]]
        for t in range(len(tgt)):
            if pt.mask[t, j] and rows:
                vals = torch.stack([resid[s, ps.positions[s, ps.column(name)]] for s in rows])
                patched[t, pt.positions[t, j]] = vals.mean(0)
    manual = runner.run_final_logits(tiny_model, tgt, start_at_layer=1, resid=patched)
    assert (r.logits[0] - manual).abs().max() <= 1e-5
    assert r.positions == pt.names


@pytest.mark.parametrize("tok_fixture", ["gpt2_tokenizer", "llama_tokenizer"])
def test_demo_tokens_run_on_bpe_tokenizers(request, tok_fixture):
    """Every demo token of multi-token BPE words (ragged spans) on a random model with the
    fixture's vocabulary: interchange and its clean-into-clean identity (necessity: test_necessity.py)."""
    tok = request.getfixturevalue(tok_fixture)
    model = make_tiny_model(d_vocab=len(tok), n_layers=2)
    src = build_prompts(tok, "english-french", 6, 3, seed=1)
    tgt = build_prompts(tok, "antonym", 6, 3, seed=0)
    assert tgt.positions("demo_tokens").ragged and tgt.template.example == "{x} -> {y}"
    same = interchange(model, tgt, tgt, "demo_tokens", per_prompt_source=True, exclude_ambiguous=False,
                       return_logits=True, progress=False)
    assert (same.logits - final_logits(model, tgt)).abs().max() <= 1e-5
    r = interchange(model, src, tgt, "demo_tokens", source_task="english-french", exclude_ambiguous=False,
                    progress=False)
    assert r.rates.shape == (3, 2) and 0 < r.meta["written_fraction"] <= 1


@pytest.mark.real_model
def test_ragged_demo_tokens_on_the_real_model(real_model):
    """SmolLM2: review phrases of different token counts; patching clean into clean changes nothing."""
    b = build_prompts(real_model, "sentiment", 2, 3, seed=0)
    assert b.positions("demo_tokens").ragged
    r = interchange(real_model, b, b, "demo_tokens", layers=[0, 15], per_prompt_source=True, exclude_ambiguous=False,
                    return_logits=True, progress=False)
    assert (r.logits - final_logits(real_model, b)).abs().max() <= 1e-4


def test_averaging_over_one_source_prompt_equals_per_prompt(tiny_model, pair):
    src, tgt = pair[0].select([0]), pair[1].select([1])
    a = interchange(tiny_model, src, tgt, "answers", return_logits=True, progress=False)
    b = interchange(tiny_model, src, tgt, "answers", per_prompt_source=True, return_logits=True, progress=False)
    assert torch.equal(a.logits, b.logits)  # exact: the mean of one prompt is its value; the same forwards and shapes


def test_interchange_writes_the_source_mean_at_the_target_positions(tiny_model, pair):
    src, tgt = pair
    r = interchange(tiny_model, src, tgt, "answers+query", layers=[1], return_logits=True, progress=False)
    ps, pt = src.positions("answers+query").positions, tgt.positions("answers+query").positions
    mean = runner.read_resid(tiny_model, src, ps, [1])[0].mean(0)  # [n, d]
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
        from icl_circuits.core.tasks import get_task
        assert tgt.tokenizer.decode([int(task_answer_tokens(tgt, "english-french")[i])]) == get_task("english-french").apply(q)
    num = build_prompts(tiny_model, "number", 5, 2, seed=0)  # categorization: the prompt's own binding
    assert torch.equal(task_answer_tokens(num, "number"), num.answer_tokens)
    assert (task_answer_tokens(num, "point") == -1).all()


def test_paired_batches_keep_only_distinguishable_queries(pair):
    src, tgt = pair
    ta = task_answer_tokens(tgt, src.task)
    assert len(tgt) == 8 and (ta >= 0).all() and (ta != tgt.answer_tokens).all()


def test_controls(tiny_model, pair, tmp_path):
    src, tgt = pair
    third = build_prompts(tiny_model, "uppercase", 8, 3, seed=5)
    out = interchange_controls(tiny_model, src, tgt, third, "answers", layers=[0, 1], seed=3, progress=False)
    assert isinstance(out, InterchangeControlsResult)
    assert list(out) == ["interchange", "third_task", "norm_matched_noise", "shuffled_positions"]
    assert out["third_task"].source_task == "english-french" and out["third_task"].meta["source_prompts_task"] == "uppercase"
    assert out["shuffled_positions"].control == "shuffled_positions" and out.third_task == "uppercase"
    direct = {"interchange": interchange(tiny_model, src, tgt, "answers", [0, 1], seed=3, progress=False),
              "third_task": interchange(tiny_model, third, tgt, "answers", [0, 1], source_task="english-french", seed=3,
                                        progress=False),
              "norm_matched_noise": interchange(tiny_model, src, tgt, "answers", [0, 1], control="norm_matched_noise",
                                                seed=3, progress=False)}
    for name, d in direct.items():  # each run is the interchange it names
        assert torch.equal(out[name].predictions, d.predictions) and torch.equal(out[name].rates, d.rates)
        assert out[name].meta == d.meta and out[name].control == d.control
    back = InterchangeControlsResult.load(out.save(tmp_path / "c"))
    assert torch.equal(back.rates, out.rates) and back.runs == out.runs and back["third_task"].meta == out["third_task"].meta
    df = back.to_dataframe()
    assert len(df) == 4 * 3 * 2 and list(df.run.unique()) == out.runs
    single = interchange_controls(tiny_model, src, tgt, third, "query", layers=[0], progress=False)
    assert "shuffled_positions" not in single and len(single) == 3
    assert len(plots.interchange(single).data) == 3 * 2 * 3  # band + line per outcome and run
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


# ----------------------------------------------------------------------------- figures and CLI
def test_figures(tiny_model, pair):
    rs = [interchange(tiny_model, *pair, s, progress=False) for s in ("answers", "query")]
    assert len(plots.interchange(rs).data) == 2 * 2 * 3  # band + line per outcome and set


@pytest.fixture
def cli_runner(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    return CliRunner()


def test_cli_interchange_json_and_out(cli_runner, tmp_path):
    res = cli_runner.invoke(cli_mod.cli, ["interchange", "--source", "english-french", "--target", "antonym", "--demos", "3",
                                      "--prompts", "6", "--positions", "answers,answer_-1,query", "--json",
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert set(data["positions"]) == {"answers", "answer_-1", "query"}
    assert len(data["positions"]["answers"]["transfer"]["value"]) == 2
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()


def test_cli_interchange_errors_are_clear(cli_runner):
    res = cli_runner.invoke(cli_mod.cli, ["interchange", "--source", "antonym", "--target", "english-french",
                                      "--demos", "2", "--prompts", "3", "--positions", "bogus"])
    assert res.exit_code != 0 and "unknown position set 'bogus'" in res.output
