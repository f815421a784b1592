"""Logit lens and task alignment: the lens at the final layer is the model's own prediction, an
injected vector is read, candidates, alignment identities, the vector lens as a Result, figures,
clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core.metrics import correct
from icl_circuits.core.runner import final_logits, unembed_resid
from icl_circuits.methods.logit_lens import (
    LogitLensResult, VectorLensResult, alignment_chance, logit_lens, task_alignment, vector_logit_lens,
)
from icl_circuits.methods.vectors import TaskVector
from icl_circuits.viz import logit_lens as plots


def test_logit_lens_at_the_final_layer_is_the_models_prediction_over_labels(tiny_model):
    batch = build_prompts(tiny_model, "number", 16, 4, seed=0)
    res = logit_lens(tiny_model, batch)
    assert res.layers == [0, 1, 2] and res.n_candidates == 2
    own = correct(final_logits(tiny_model, batch), batch.answer_tokens, batch.label_token_ids).float()
    assert torch.equal(res.per_prompt[-1], own)  # 0/1 outcomes: label-logit gaps >= 1.8e-2 here, float32 noise ~1e-6


def test_logit_lens_with_an_added_vector_reads_the_injected_state(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 8, 0, variant="zero_shot")
    gold = tiny_model.W_U[:, batch.answer_tokens[0]].detach()
    tv = TaskVector(torch.stack([gold, gold]) * 1e4, [1, 2], "add", "gold", "antonym", model="tiny")
    res = logit_lens(tiny_model, batch, vectors=tv)
    assert res.layers == [1, 2] and res.injected == "gold"
    first = (batch.answer_tokens == batch.answer_tokens[0]).float()
    assert torch.equal(res.per_prompt[1], first)  # a huge gold-direction vector wins where it is the gold


def test_non_categorization_candidates_are_the_batch_gold_tokens(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 12, 0, variant="zero_shot")
    res = logit_lens(tiny_model, batch)
    assert res.n_candidates == len(set(batch.answer_tokens.tolist()))
    gold = batch.candidate_tokens("gold")
    assert torch.equal(logit_lens(tiny_model, batch, candidates=gold).per_prompt, res.per_prompt)


def test_alignment_of_a_label_unembedding_is_one_and_of_an_orthogonal_vector_zero(tiny_model):
    labels = torch.tensor([5, 17, 40])
    assert float(task_alignment(tiny_model, tiny_model.W_U[:, 17].detach(), labels)) == pytest.approx(1, abs=1e-5)
    B = tiny_model.W_U[:, labels].detach().double()
    v = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    orth = v - B @ torch.linalg.lstsq(B, v[:, None]).solution[:, 0]
    assert float(task_alignment(tiny_model, orth.float(), labels)) == pytest.approx(0, abs=1e-5)
    tv = TaskVector(torch.randn(3, 32), [0, 1, 2], "add", "r", "t", model="tiny")
    assert task_alignment(tiny_model, tv, labels[None].expand(4, -1)).shape == (3,)
    assert alignment_chance(tiny_model, labels) == pytest.approx(np.sqrt(3 / 32))


def test_vector_logit_lens_is_a_result_with_the_top_tokens(tiny_model, tmp_path):
    tv = TaskVector(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 3, [0, 1, 2], "add", "random",
                    "antonym", model="tiny")
    top = vector_logit_lens(tiny_model, tv, k=3)
    df = top.to_dataframe()
    assert len(df) == 9 and set(df.columns) >= {"layer", "rank", "token", "token_str", "logit", "model"}
    full = unembed_resid(tiny_model, tv.vectors).detach()
    assert torch.equal(top.tokens[1], full[1].topk(3).indices) and list(df.layer.unique()) == [0, 1, 2]
    assert (df.groupby("layer").logit.diff().dropna() <= 0).all()  # descending within a layer
    back = VectorLensResult.load(top.save(tmp_path / "vl"))
    assert back.to_dataframe().equals(df)


def test_logit_lens_round_trip_and_figure(tiny_model, tmp_path):
    batch = build_prompts(tiny_model, "antonym", 8, 0, variant="zero_shot")
    res = logit_lens(tiny_model, batch)
    back = LogitLensResult.load(res.save(tmp_path / "lens"))
    assert torch.equal(back.per_prompt, res.per_prompt) and back.provenance["n_prompts"] == 8
    assert "tiny" in plots.logit_lens(res).layout.title.text


def test_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="zero vector"):
        task_alignment(tiny_model, torch.zeros(32), [1, 2])
    with pytest.raises(ValueError, match="token ids in"):
        task_alignment(tiny_model, torch.ones(32), [10 ** 6])
    with pytest.raises(ValueError, match="width 16"):
        task_alignment(tiny_model, torch.ones(16), [1])
    batch = build_prompts(tiny_model, "antonym", 4, 0, variant="zero_shot")
    tv = TaskVector(torch.randn(1, 32), [1], "add", "r", "antonym", model="tiny")
    with pytest.raises(ValueError, match="not among the task vector's layers"):
        logit_lens(tiny_model, batch, layers=[0], vectors=tv)
    with pytest.raises(ValueError, match="candidates must be"):
        logit_lens(tiny_model, batch, candidates=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        vector_logit_lens(tiny_model, tv, k=0)
