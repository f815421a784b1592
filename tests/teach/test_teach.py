"""The exercise checks (icl_circuits.teach): the right answer passes; each common mistake a check
diagnoses gets its own message (not "Correct", not another mistake's); the placeholder ``...`` gets
"Not done yet"; an argument that is no answer at all raises an error naming it. All on toy-icl,
with small batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from icl_circuits.core.pairs import paired_batches, task_vector_prompts
from icl_circuits.core.prompts import build_prompts
from icl_circuits.core.runner import final_logits, read_resid
from icl_circuits.methods.dpca.states import collect_label_states
from icl_circuits.methods.head_ablation import ablate_heads
from icl_circuits.methods.heads import head_ablation_scan
from icl_circuits.methods.interchange import interchange
from icl_circuits.methods.saliency import saliency_flow
from icl_circuits.methods.task_vectors import vanilla_task_vector
from icl_circuits.teach import (
    CheckResult, check_head_ablation_effect, check_marginal_variance, check_position_set, check_s_wp,
    check_transfer_rate, check_vanilla_task_vector,
)


def _says(result: CheckResult, capsys, *parts: str) -> None:
    """The check printed exactly its message, which is wrong and contains every part."""
    out = capsys.readouterr().out
    assert out.strip() == result.message
    assert result.status == "wrong" and not result, result.message
    for p in parts:
        assert p in result.message, result.message


def _correct(result: CheckResult, capsys) -> None:
    assert capsys.readouterr().out.startswith("Correct.")
    assert result and result.correct and result.status == "correct", result.message


def _not_done(result: CheckResult, capsys) -> None:
    assert capsys.readouterr().out.startswith("Not done yet:")
    assert not result and result.status == "not_done"


# ----------------------------------------------------------------------------- positions
#: word pairs whose inputs have one or two tokens on the toy's word-level tokenizer (a ragged batch)
PAIRS = [("big house", "small"), ("hot", "cold"), ("new work", "old"), ("dry", "wet"), ("low", "high"), ("few", "many")]


@pytest.fixture(scope="module")
def target(toy):
    return paired_batches(toy, "antonym", "english-french", n_prompts=6, n_demos=4, seed=0)[1]


def test_position_set_correct_in_every_form(target, capsys):
    _correct(check_position_set(target.positions("demo_tokens"), target), capsys)
    _correct(check_position_set("inputs+separators+answers+delimiters", target), capsys)
    _correct(check_position_set([f"demo_{k}" for k in range(4)], target), capsys)
    _correct(check_position_set(torch.arange(1, 17).expand(6, -1), target), capsys)  # <bos> at 0, query at 17-18
    _not_done(check_position_set(..., target), capsys)


@pytest.mark.parametrize("answer, parts", [
    ("demo_tokens+query", ["you included the query"]),
    (["inputs", "separators", "answers", "delimiters", "final"], ["you included the query"]),
    ("inputs+answers", ["you left out", "separators", "delimiters"]),
    ("demo_0+demo_1+demo_2", ["you left out demo 3 entirely"]),
    ("answers", ["you left out", "demo inputs"]),
], ids=["query", "query-list", "no-separators", "demo-off-by-one", "answers-only"])
def test_position_set_mistakes(target, capsys, answer, parts):
    _says(check_position_set(answer, target), capsys, *parts)


def test_position_set_start_and_outside_and_refused(target, capsys):
    _says(check_position_set(torch.arange(0, 17).expand(6, -1), target), capsys, "start of the prompt")
    _says(check_position_set(torch.arange(1, 30).expand(6, -1), target), capsys, "outside their prompt")
    _says(check_position_set("demo_tokens+nonsense", target), capsys, "refused", "unknown position set")
    _says(check_position_set(torch.arange(1, 17), target), capsys, "shape")


def test_position_set_multi_token_mistakes(toy, capsys):
    """A ragged set: a batch whose demo inputs have different token counts (built by hand from a
    real batch: the toy's tokenizer has one token per word, so a two-word input is two tokens)."""
    from icl_circuits.core.tasks import task_from_pairs

    task = task_from_pairs("teach-two-words", PAIRS)
    b = build_prompts(toy, task, n_prompts=4, n_demos=3, seed=0)
    ps = b.positions("inputs")
    assert ps.ragged
    _correct(check_position_set(ps, b, "inputs"), capsys)
    _says(check_position_set("input_first", b, "inputs"), capsys, "only the first token")
    _says(check_position_set(ps.positions, b, "inputs"), capsys, "masked entries")
    _says(check_position_set(torch.cat([ps.positions, ps.positions[:, :1]], 1), b, "inputs"), capsys, "appears more than once")


def test_position_set_bad_arguments(toy, target):
    with pytest.raises(TypeError, match="answer must be a PositionSet"):
        check_position_set(toy, target)
    with pytest.raises(TypeError, match="answer must be"):
        check_position_set(torch.ones(6, 3), target)
    with pytest.raises(TypeError, match="batch must be a PromptBatch"):
        check_position_set("demo_tokens", toy)


# ----------------------------------------------------------------------------- vanilla task vector
@pytest.fixture(scope="module")
def dummy(toy):
    return task_vector_prompts(toy, "english-french", n_demos=4, n_prompts=6, seed=0).dummy_query


def test_vanilla_task_vector(toy, dummy, capsys):
    resid = read_resid(toy, dummy, None, [1, 2])
    rows, q = torch.arange(len(dummy)), dummy.final_positions
    _correct(check_vanilla_task_vector(resid[0][rows, q].mean(0), toy, dummy, 1), capsys)
    _correct(check_vanilla_task_vector(vanilla_task_vector(toy, dummy).at(1).numpy(), toy, dummy, 1), capsys)
    _not_done(check_vanilla_task_vector(..., toy, dummy, 1), capsys)
    at = resid[0]
    for answer, part in [
        (at[rows, q], "one vector per prompt"),
        (at[rows, q].sum(0), "you summed"),
        (at.mean((0, 1)), "every position"),
        (at.mean(0), "kept every position"),
        (at[rows, q - 1].mean(0), "the token before the final one"),
        (resid[1][rows, q].mean(0), "layer 2 (the output of block 1"),
        (at[rows, q].mean(0) + 1, "right shape but not the right values"),
        (at[rows, q].mean(0)[:10], "shape (10,)"),
    ]:
        _says(check_vanilla_task_vector(answer, toy, dummy, 1), capsys, part)
    _says(check_vanilla_task_vector(read_resid(toy, dummy, None, [0])[0][rows, q].mean(0), toy, dummy, 1), capsys,
          "layer 0 (the input of block 0)")


def test_vanilla_task_vector_padding_mistake(toy, capsys):
    """Position -1 is padding in the shorter prompts of a ragged batch."""
    from icl_circuits.core.tasks import task_from_pairs

    task = task_from_pairs("teach-tv-ragged", PAIRS)
    b = build_prompts(toy, task, n_prompts=6, n_demos=2, seed=0, variant="dummy_query")
    assert len(set(b.final_positions.tolist())) > 1
    at = read_resid(toy, b, None, [1])[0]
    _says(check_vanilla_task_vector(at[:, -1].mean(0), toy, b, 1), capsys, "position -1")
    _correct(check_vanilla_task_vector(at[torch.arange(6), b.final_positions].mean(0), toy, b, 1), capsys)


def test_vanilla_task_vector_bad_arguments(toy, dummy):
    with pytest.raises(TypeError, match="answer must be a task vector"):
        check_vanilla_task_vector(toy, toy, dummy, 1)
    with pytest.raises(TypeError, match="model must be a loaded model"):
        check_vanilla_task_vector(torch.zeros(3), dummy, dummy, 1)
    with pytest.raises(TypeError, match="batch must be a PromptBatch"):
        check_vanilla_task_vector(torch.zeros(3), toy, toy, 1)
    with pytest.raises(ValueError, match="layer must be an integer"):
        check_vanilla_task_vector(torch.zeros(3), toy, dummy, 99)


# ----------------------------------------------------------------------------- transfer rate
@pytest.fixture(scope="module")
def run(toy):
    src, tgt = paired_batches(toy, "antonym", "english-french", n_prompts=12, n_demos=4, seed=0)
    return interchange(toy, src, tgt, "demo_tokens", [0, 1, 3], source_task="antonym", target_task="english-french",
                       progress=False)


def test_transfer_rate(run, capsys):
    i = run.layers.index(1)
    hits = (run.predictions[i] == run.transfer_tokens) & run.valid
    _correct(check_transfer_rate(hits.sum() / run.valid.sum(), run, 1), capsys)
    _correct(check_transfer_rate(float(run.rate("transfer")[i]), run, 1), capsys)
    _not_done(check_transfer_rate(..., run, 1), capsys)
    _says(check_transfer_rate(hits.sum(), run, 1), capsys, "count")
    _says(check_transfer_rate(100 * float(run.rate("transfer")[i]), run, 1), capsys, "percentage")
    _says(check_transfer_rate(hits.double(), run, 1), capsys, "one value per prompt")


def _made_up(run):
    """The run with made-up predictions on its 12 prompts (3 invalid), chosen so that every mistake
    gives another number: prompt i transfers at layer 0 / 1 / 3 when i < 7 / 9 / 4, else it keeps B
    (layers 0, 3) or says a third token (layer 1); the clean run transfers when i < 5."""
    valid = torch.arange(12) >= 3
    ta, tb = run.transfer_tokens, run.preserve_tokens
    other = torch.full_like(ta, int(torch.cat([ta, tb]).max()) + 1)
    pred = torch.stack([torch.where(torch.arange(12) < 7, ta, tb), torch.where(torch.arange(12) < 9, ta, other),
                        torch.where(torch.arange(12) < 4, ta, tb)])
    t, p = (pred == ta) & valid, (pred == tb) & valid
    rates = torch.stack([t.sum(1), p.sum(1), (~(pred == ta) & ~(pred == tb) & valid).sum(1)]) / 9
    return replace(run, valid=valid, predictions=pred, rates=rates.float(),
                   clean_predictions=torch.where(torch.arange(12) < 5, ta, tb))


def test_transfer_rate_mistakes(run, capsys):
    r = _made_up(run)
    assert run.layers == [0, 1, 3] and len(run.valid) == 12
    _correct(check_transfer_rate(6 / 9, r, 1), capsys)
    for answer, part in [
        (0.0, "preserve rate"),
        (3 / 9, "neither rate"),
        (9 / 12, "only the 9 valid ones count"),
        (6 / 12, "you divided by all 12"),
        (2 / 9, "clean run"),
        (6, "count"),
        (4 / 9, "the rate at layer 0"),
        (1 / 9, "the rate at layer 3"),
        ((4 / 9 + 6 / 9 + 1 / 9) / 3, "averaged over every layer"),
        (0.5 * 6 / 9 + 0.01, "times the right one"),
    ]:
        _says(check_transfer_rate(answer, r, 1), capsys, part)


def test_transfer_rate_bad_arguments(toy, run):
    with pytest.raises(TypeError, match="run must be an InterchangeResult"):
        check_transfer_rate(0.5, toy, 1)
    with pytest.raises(ValueError, match="layer must be one of the run's layers"):
        check_transfer_rate(0.5, run, 2)
    with pytest.raises(TypeError, match="answer must be a rate"):
        check_transfer_rate("0.5", run, 1)


# ----------------------------------------------------------------------------- S_wp
@pytest.fixture(scope="module")
def sal(toy):
    batch = build_prompts(toy, "number", n_prompts=4, n_demos=4, seed=0)
    return saliency_flow(toy, batch, loss="label_words", progress=False, keep_examples=2)


def test_s_wp(sal, capsys):
    layer, I = 1, sal.matrices[1, 1]
    ans = sal.example_answer_positions[1]
    pairs = torch.cat([I[p, :p] for p in ans])
    _correct(check_s_wp(pairs.mean(), sal, layer, example=1), capsys)
    _correct(check_s_wp(float(sal.per_prompt[0, 1, 1]), sal, layer, 1), capsys)
    _not_done(check_s_wp(..., sal, layer, 1), capsys)
    q = sal.example_final_positions[1]
    lower = torch.tril(torch.ones(q + 1, q + 1, dtype=torch.bool), -1)
    for answer, part in [
        (I[: q + 1, : q + 1][lower].mean(), "you averaged over all pairs (i, j) with j < i"),
        (I.mean(), "the whole matrix"),
        (torch.cat([I[p, : p + 1] for p in ans]).mean(), "you included j = p_k"),
        (torch.stack([I[p, :p].mean() for p in ans]).mean(), "each label word's row first"),
        (torch.stack([I[p, :p].mean() for p in ans]), "one number per label word"),
        (pairs.sum(), "you summed"),
        (torch.cat([I[p + 1 : q + 1, p] for p in ans]).mean(), "you read column p_k"),
        (I[q, ans].mean(), "that is S_pq"),
        (sal.per_prompt[2, 1, 1], "that is S_ww"),
        (torch.cat([I[p, 1:p] for p in ans]).mean(), "you left out the first token"),
        (torch.cat([I[:p, p] for p in ans]).mean(), "above the diagonal"),
        (sal.per_prompt[0, 0, 1], "that is S_wp at layer 0"),
        (pairs.mean() * 2, "2 times the right one"),
    ]:
        _says(check_s_wp(answer, sal, layer, 1), capsys, part)


def test_s_wp_bad_arguments(toy, sal):
    with pytest.raises(TypeError, match="saliency must be a SaliencyResult"):
        check_s_wp(0.1, toy, 1)
    with pytest.raises(TypeError, match="answer must be S_wp"):
        check_s_wp(toy, sal, 1)
    with pytest.raises(ValueError, match="layer must be one of"):
        check_s_wp(0.1, sal, 7)
    with pytest.raises(ValueError, match="example must be an integer"):
        check_s_wp(0.1, sal, 1, example=2)


# ----------------------------------------------------------------------------- head ablation effect
@pytest.fixture(scope="module")
def heads_batch(toy):
    return build_prompts(toy, "antonym", 8, 4, seed=0)


def _ld(logits, batch):
    return logits[torch.arange(len(batch)), batch.answer_tokens] - logits.mean(-1)


def test_head_ablation_effect(toy, heads_batch, capsys):
    b = heads_batch
    clean = final_logits(toy, b)
    ablated = ablate_heads(toy, b, [(0, 3)], how="mean").logits
    effect = (_ld(ablated, b) - _ld(clean, b)).mean()
    _correct(check_head_ablation_effect(effect, toy, b, 0, 3), capsys)
    scan = head_ablation_scan(toy, b, how="mean", metric="logit_diff_to_mean", layers=[0], progress=False)
    _correct(check_head_ablation_effect(scan.effect[0, 3], toy, b, 0, 3), capsys)  # the scan's number
    _not_done(check_head_ablation_effect(..., toy, b, 0, 3), capsys)
    gold = lambda lg: lg[torch.arange(len(b)), b.answer_tokens]  # noqa: E731
    logp = lambda lg: lg.log_softmax(-1)[torch.arange(len(b)), b.answer_tokens]  # noqa: E731
    zero = ablate_heads(toy, b, [(0, 3)], how="zero").logits
    for answer, part in [
        (-effect, "the sign is flipped"),
        ((gold(ablated) - gold(clean)).mean(), "the gold logits alone"),
        ((logp(ablated) - logp(clean)).mean(), "log-probabilities"),
        (_ld(ablated, b) - _ld(clean, b), "one value per prompt"),
        (_ld(ablated, b).mean(), "the ablated logit difference itself"),
        (_ld(clean, b).mean(), "that is the clean logit difference"),
        (_ld(ablated, b).mean() / _ld(clean, b).mean(), "ratio"),
        ((_ld(zero, b) - _ld(clean, b)).mean(), "zero-ablation"),
    ]:
        _says(check_head_ablation_effect(answer, toy, b, 0, 3), capsys, part)
    srt = ablated.sort(-1, descending=True)
    best_other = lambda lg: torch.where(lg.argmax(-1) == b.answer_tokens, lg.topk(2, -1).values[:, 1],  # noqa: E731
                                        lg.max(-1).values)
    mistaken = ((gold(ablated) - best_other(ablated)) - (gold(clean) - best_other(clean))).mean()
    del srt
    _says(check_head_ablation_effect(mistaken, toy, b, 0, 3), capsys, "best other token")


def test_head_ablation_effect_bad_arguments(toy, heads_batch):
    with pytest.raises(TypeError, match="answer must be the ablation effect"):
        check_head_ablation_effect(heads_batch, toy, heads_batch, 0, 3)
    with pytest.raises(TypeError, match="model must be a loaded model"):
        check_head_ablation_effect(0.1, heads_batch, heads_batch, 0, 3)
    with pytest.raises(ValueError, match="head must be an integer"):
        check_head_ablation_effect(0.1, toy, heads_batch, 0, 99)
    with pytest.raises(ValueError, match="how must be"):
        check_head_ablation_effect(0.1, toy, heads_batch, 0, 3, how="resample")


# ----------------------------------------------------------------------------- dPCA variance
@pytest.fixture(scope="module")
def X(toy):
    batch = build_prompts(toy, "number", n_prompts=16, n_demos=8, seed=0)
    return collect_label_states(toy, batch, layers=[1]).conditions(1).X


def test_marginal_variance(X, capsys):
    Xc = X - X.mean((1, 2), keepdims=True)
    lab = Xc.mean(1, keepdims=True)
    par = Xc.mean(2, keepdims=True)
    total = (Xc**2).sum()
    frac = lambda part: float((np.broadcast_to(part, X.shape) ** 2).sum() / total)  # noqa: E731
    inter = Xc - lab - par
    _correct(check_marginal_variance(frac(lab), X), capsys)
    _correct(check_marginal_variance(torch.tensor(frac(par)), torch.tensor(X), "nuisance"), capsys)
    _correct(check_marginal_variance(frac(inter), X, "interaction"), capsys)
    _not_done(check_marginal_variance(..., X), capsys)
    for answer, part in [
        (float((np.broadcast_to(lab, X.shape) ** 2).sum() / (X**2).sum()), "without centring"),
        (float((lab**2).sum() / total), "counted each label mean once"),
        (frac(par), "that is the nuisance marginalization"),
        (frac(lab) + frac(inter), "you included the interaction"),
        (float((np.broadcast_to(X.mean(1, keepdims=True), X.shape) ** 2).sum() / total), "subtract the grand mean"),
        (np.sqrt(frac(lab)), "ratio of norms"),
        (100 * frac(lab), "percentage"),
        (frac(lab) / 3, "0.333 times"),
    ]:
        _says(check_marginal_variance(answer, X), capsys, part)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_feature = np.nanmean((np.broadcast_to(lab, X.shape) ** 2).sum((1, 2)) / (Xc**2).sum((1, 2)))
    _says(check_marginal_variance(per_feature, X), capsys, "per feature")
    _says(check_marginal_variance(frac(lab) + frac(par), X, "interaction"), capsys, "nuisance + label")


def test_marginal_variance_agrees_with_dpca_by_layer(toy):
    """The check's reference is the number dpca_by_layer reports."""
    from icl_circuits.methods.dpca.analysis import dpca_from_states

    batch = build_prompts(toy, "number", n_prompts=16, n_demos=8, seed=0)
    states = collect_label_states(toy, batch, layers=[1])
    res = dpca_from_states(states, n_null=0, regularizer=None, progress=False)
    r = check_marginal_variance(float(res.variance_table().loc[1, "label"]), states.conditions(1), "label")
    assert r, r.message  # float32 storage of the table: within RTOL? no: compared below at 1e-6
    del r


def test_marginal_variance_bad_arguments(toy, X):
    with pytest.raises(TypeError, match="X must be a condition tensor"):
        check_marginal_variance(0.5, toy)
    with pytest.raises(TypeError, match="X must be a condition tensor"):
        check_marginal_variance(0.5, X[:, 0])
    with pytest.raises(ValueError, match="marginalization must be one of"):
        check_marginal_variance(0.5, X, "parity")
    with pytest.raises(TypeError, match="answer must be a fraction"):
        check_marginal_variance(toy, X)


def test_result_is_truthy_only_when_correct_and_shows_nothing_twice(capsys):
    from icl_circuits.teach.checks import verdict

    r = verdict("x", "wrong", "no.", quiet=True)
    assert not r and str(r) == "Not quite: no." and r._ipython_display_() is None
    assert capsys.readouterr().out == ""
