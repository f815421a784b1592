"""The metric registry: names, aliases, applicability errors, known values on constructed logits,
and the interval each summary uses."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from icl_circuits import build_prompts
from icl_circuits.core.metrics import (
    Metric, auto_metric, get_metric, list_metrics, logit_diff_to_mean, metrics_table, register_metric, summarize, wilson,
)


@pytest.fixture(scope="module")
def batches(tiny_model):
    return {t: build_prompts(tiny_model, t, 4, 2, seed=0) for t in ("antonym", "number")}


def test_registry_lists_every_metric_once():
    names = list_metrics()
    assert {"first_token", "label", "exact_match", "answer_logprob", "gold_prob", "logit_diff"} <= set(names)
    assert len(names) == len(set(names)) and list(metrics_table().name) == names


@pytest.mark.parametrize("alias, name", [
    ("accuracy", "first_token"), ("label_accuracy", "label"), ("gold_probability", "gold_prob"),
    ("logit_difference", "logit_diff"), ("label_margin", "logit_diff"), ("exact_match", "exact_match"),
])
def test_aliases_resolve(alias, name):
    assert get_metric(alias).name == name


def test_auto_picks_label_only_with_label_words(batches):
    assert get_metric("auto", batches["number"]).name == "label"
    assert get_metric("auto", batches["antonym"]).name == "first_token"
    with pytest.raises(ValueError, match="'auto' needs a batch"):
        get_metric("auto")


def test_unknown_and_inapplicable_metrics_are_clear_errors(batches):
    with pytest.raises(ValueError, match="unknown metric 'top1'; choose from: first_token, label"):
        get_metric("top1")
    for name in ("label", "label_accuracy"):
        with pytest.raises(ValueError, match=f"metric='{get_metric(name).name}' needs label words but task 'antonym'"):
            get_metric(name, batches["antonym"])
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("first_token", "", "final_logits", "rate", fn=lambda lg, b: lg[:, 0]))
    with pytest.raises(ValueError, match="from greedy, not from final-position logits"):
        get_metric("exact_match").from_logits(torch.zeros(4, 10), batches["antonym"])


def test_final_logit_metrics_on_constructed_logits(batches):
    """Logits that put the gold token first in prompts 0-1 and a wrong label word first in 2-3."""
    b = batches["number"]
    gold, labels = b.answer_tokens, b.label_token_ids
    wrong = torch.where(labels[:, 0] == gold, labels[:, 1], labels[:, 0])
    logits = torch.zeros(len(b), 2000)
    logits[torch.arange(4), gold] = 2.0
    logits[[2, 3], wrong[[2, 3]]] = 5.0
    logits[[2], 7] = 9.0  # a non-label token beats everything in prompt 2
    get = lambda n: get_metric(n).from_logits(logits, b).tolist()  # noqa: E731
    assert get("first_token") == [1, 1, 0, 0] and get("label") == [1, 1, 0, 0]
    assert get("logit_diff") == [2, 2, -3, -3] and get("label_margin") == get("logit_diff")  # best other label
    assert get("logit_diff_to_mean") == [2, 2, -3, -3]  # two label words: the mean of the other one is that one
    p = get("gold_prob")
    assert math.isclose(p[0], math.exp(2) / (math.exp(2) + 1999), rel_tol=1e-5)


def test_logit_diff_without_labels_subtracts_the_vocabulary_mean():
    logits = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    assert logit_diff_to_mean(logits, torch.tensor([3])).item() == 3.0


def test_logit_diff_is_the_margin_over_the_best_other_candidate(batches, tiny_model):
    """logit_diff > 0 exactly when the candidate argmax is right (label words, else the vocabulary)."""
    from icl_circuits.core.runner import final_logits

    for b in batches.values():
        lg = final_logits(tiny_model, b)
        right = get_metric("auto", b).from_logits(lg, b).bool()
        assert torch.equal(get_metric("logit_diff").from_logits(lg, b) > 0, right)


def test_contrast_is_paired_and_refused_without_the_corrupted_batch(batches):
    b = batches["antonym"]
    c = build_prompts(b.tokenizer, "antonym", 4, 2, seed=1)
    lg = torch.randn(len(b), 2000)
    want = lg[torch.arange(4), b.answer_tokens] - lg[torch.arange(4), c.answer_tokens]
    assert torch.allclose(get_metric("contrast").from_logits(lg, b, c), want)
    with pytest.raises(ValueError, match="give corrupted="):
        get_metric("contrast").from_logits(lg, b)


def test_patching_resolves_names_through_the_registry(batches, tiny_model):
    """sweeps.prompt_metric names a metric by its registry name (aliases and "auto" resolved, the
    latter by auto_metric) and computes the registry's numbers."""
    from icl_circuits.core.runner import final_logits
    from icl_circuits.methods.sweeps import prompt_metric

    for b in batches.values():
        lg = final_logits(tiny_model, b)
        for name, canonical in (("accuracy", "first_token"), ("gold_probability", "gold_prob"),
                                ("auto", auto_metric(b)), ("logit_diff", "logit_diff")):
            got_name, fn = prompt_metric(name, b)
            assert got_name == canonical == get_metric(name, b).name
            assert torch.allclose(fn(lg, b).float(), get_metric(name, b).from_logits(lg, b))


def test_auto_is_decided_in_one_place(batches):
    """auto_metric: label for prompts / tasks with label words, else first_token; get_metric("auto") uses it."""
    assert [auto_metric(t) for t in ("number", "antonym")] == ["label", "first_token"]
    for task, b in batches.items():
        assert auto_metric(b) == auto_metric(task) == get_metric("auto", b).name, task


def test_rates_get_wilson_and_means_get_t_intervals():
    r = summarize(torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 1]), "first_token")
    w = wilson(6, 8)
    assert (r.value, r.low, r.high, r.n, r.interval) == (0.75, w.low, w.high, 8, "wilson")
    x = torch.tensor([-3.0, -1.5, -2.25, -0.5, -4.0], dtype=torch.float64)
    s = summarize(x, "answer_logprob")
    lo, hi = stats.t.interval(0.95, 4, loc=float(x.mean()), scale=float(x.std()) / 5**0.5)
    assert s.interval == "t" and math.isclose(s.low, lo, rel_tol=1e-9) and math.isclose(s.high, hi, rel_tol=1e-9)
    one = summarize(torch.tensor([-2.0]), "answer_logprob")
    assert one.value == -2.0 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="is a rate: values must be 0 or 1"):
        summarize(torch.tensor([0.5]), "exact_match")
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.tensor([]), "first_token")


def test_candidate_tokens_are_the_label_words_or_the_named_fallback(batches):
    num, ant = batches["number"], batches["antonym"]
    assert torch.equal(num.candidate_tokens(), num.label_token_ids)
    assert torch.equal(num.candidate_tokens("answers"), num.label_token_ids)  # labels win over fallbacks
    assert ant.candidate_tokens() is None
    gold = ant.candidate_tokens("gold")
    assert gold.shape[0] == len(ant) and set(gold[0].tolist()) == set(ant.answer_tokens.tolist())
    every = ant.candidate_tokens("answers")
    assert set(every[1].tolist()) == set(ant.answer_tokens.tolist()) | set(ant.demo_answer_tokens.flatten().tolist())
    with pytest.raises(ValueError, match="fallback"):
        ant.candidate_tokens("vocab")
