"""Accuracy vs number of demos: batches in, an AccuracyResult out."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts, icl_accuracy
from icl_circuits.methods.accuracy import AccuracyResult, accuracy_by_demos, demo_sweep


def test_accuracy_by_demos_is_tidy(tiny_model):
    sweep = demo_sweep(tiny_model, ["antonym", "number"], [0, 2], 5)
    assert [(b.task, b.n_demos) for b in sweep] == [("antonym", 0), ("antonym", 2), ("number", 0), ("number", 2)]
    df = accuracy_by_demos(tiny_model, sweep, metrics=["first_token", "exact_match", "answer_logprob"]).to_dataframe()
    assert len(df) == 2 * 2 * 3 and list(df.columns) == ["task", "n_demos", "metric", "value", "low", "high", "interval", "n", "template"]
    assert set(df[df.metric == "answer_logprob"].interval) == {"t"} and set(df[df.metric != "answer_logprob"].interval) == {"wilson"}
    assert (df.n == 5).all() and (df.low <= df.value).all() and (df.value <= df.high).all()
    default = accuracy_by_demos(tiny_model, demo_sweep(tiny_model, ["antonym", "number"], [2], 5)).to_dataframe()
    assert sorted(zip(default.task, default.metric)) == [("antonym", "first_token"), ("number", "first_token"), ("number", "label")]
    with pytest.raises(ValueError, match="'label' needs label words"):
        accuracy_by_demos(tiny_model, demo_sweep(tiny_model, ["antonym"], [2], 5), metrics=["label"])


def test_each_cell_is_the_accuracy_of_its_batch(tiny_model):
    """A cell's value is exactly icl_accuracy of the batch demo_sweep built for it (same seed, same prompts)."""
    res = accuracy_by_demos(tiny_model, demo_sweep(tiny_model, "antonym", [1, 3], 6, seed=4))
    for k, v in zip(res.n_demos, res.value.tolist()):
        assert v == icl_accuracy(tiny_model, build_prompts(tiny_model, "antonym", 6, k, seed=4))


def test_result_round_trips(tiny_model, tmp_path):
    res = accuracy_by_demos(tiny_model, build_prompts(tiny_model, "number", 4, 2, seed=1))
    back = AccuracyResult.load(res.save(tmp_path / "acc"))
    assert back.to_dataframe().equals(res.to_dataframe()) and torch.equal(back.value, res.value)
    assert back.model_info["name"] == res.model_info["name"]


def test_bad_input_is_named(tiny_model):
    with pytest.raises(ValueError, match="batches is empty"):
        accuracy_by_demos(tiny_model, [])
    with pytest.raises(TypeError, match=r"batches\[0\] must be a PromptBatch"):
        accuracy_by_demos(tiny_model, ["antonym"])
    with pytest.raises(ValueError, match="demos must be non-negative integers"):
        demo_sweep(tiny_model, "antonym", [-1])
