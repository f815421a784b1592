"""Function vectors: batched CIE equals one head at a time, the FV is its heads' mean outputs
through W_O, the CIE result round-trips, errors."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.core import runner
from icl_circuits.methods.function_vectors import HeadCIEResult, function_vector, fv_from_heads, head_cie, mean_head_outputs
from icl_circuits.methods.vectors import TaskVector


@pytest.fixture(scope="module")
def clean(tiny_model):
    return build_prompts(tiny_model, "antonym", 5, 3, seed=0)


@pytest.fixture(scope="module")
def shuffled(tiny_model):
    return build_prompts(tiny_model, "antonym", 5, 3, seed=0, variant="shuffled_labels")


def test_head_cie_batched_over_heads_equals_one_head_at_a_time(tiny_model, clean, shuffled):
    """The Intervention-based staggered path equals one raw hook per head on a full forward."""
    mean_z = mean_head_outputs(tiny_model, clean)
    res = head_cie(tiny_model, clean, shuffled, mean_z, batch_size=2, tokens_per_forward=100)
    pos, gold = shuffled.positions("final").positions, shuffled.answer_tokens
    p0 = runner.run_final_logits(tiny_model, shuffled).softmax(-1)[torch.arange(5), gold]
    for l in range(2):
        for h in range(4):
            hook = [(iv.z_name(l), iv.replace_hook(pos, mean_z[l, h], head=h))]
            p = runner.run_final_logits(tiny_model, shuffled, lambda rows, mb: hook).softmax(-1)[torch.arange(5), gold]
            assert (res.per_prompt[l, h] - (p - p0)).abs().max() <= 1e-6
    assert abs(res.baseline - float(p0.mean())) <= 1e-6


def test_mean_head_outputs_is_the_mean_of_hook_z_at_the_final_position(tiny_model, clean):
    z = runner.read_activations(tiny_model, clean, [iv.z_name(1)], clean.positions("final").positions)[iv.z_name(1)]
    assert torch.allclose(mean_head_outputs(tiny_model, clean)[1], z[:, 0].mean(0), atol=1e-6)


def test_function_vector_is_the_sum_of_its_heads_mean_outputs_through_w_o(tiny_model, clean, shuffled, tmp_path):
    fv = function_vector(tiny_model, clean, shuffled, top_k=3)
    mean_z = mean_head_outputs(tiny_model, clean)
    expected = sum(mean_z[l, h] @ tiny_model.W_O[l, h] for l, h in fv.meta["heads"])
    assert fv.mode == "add" and fv.layers == [0, 1, 2] and len(fv.meta["heads"]) == 3
    assert torch.allclose(fv.at(1), expected.detach(), atol=1e-5)
    assert torch.allclose(fv_from_heads(tiny_model, mean_z, [tuple(h) for h in fv.meta["heads"]]), fv.at(0))
    cie = torch.tensor(fv.meta["cie"])
    assert sorted(fv.meta["head_cie"], reverse=True) == fv.meta["head_cie"] == [float(cie[l, h]) for l, h in fv.meta["heads"]]
    assert fv.meta["seed"] == 0 and fv.meta["n_prompts"] == 5 and fv.meta["default_layer"] == 1
    assert TaskVector.load(fv.save(tmp_path / "fv")).meta["heads"] == fv.meta["heads"]
    assert function_vector(tiny_model, clean, shuffled, top_k=3, layer=2).layers == [2]


def test_head_cie_result_top_and_dataframe(tiny_model, clean, shuffled, tmp_path):
    res = head_cie(tiny_model, clean, shuffled)
    back = HeadCIEResult.load(res.save(tmp_path / "cie"))
    assert back.top(2) == res.top(2) and len(back.to_dataframe()) == 8
    with pytest.raises(ValueError, match="top_k must be in"):
        res.top(0)


@pytest.mark.parametrize("call, match", [
    (lambda m, c, s: head_cie(m, c, s, torch.zeros(2, 4, 3)), r"mean_z must have shape \[n_layers=2, n_heads=4, d_head=8\]"),
    (lambda m, c, s: function_vector(m, c, s, top_k=9), r"top_k must be an integer in \[1, 8\]"),
    (lambda m, c, s: function_vector(m, c, s, top_k=2, layer=3), r"layer must be an integer in \[0, 2\]"),
    (lambda m, c, s: head_cie(m, c, s, layers=[2]), r"layers must be an integer in \[0, 1\]"),
])
def test_clear_errors(tiny_model, clean, shuffled, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model, clean, shuffled)


def test_function_vector_needs_batches(tiny_model, clean):
    with pytest.raises(TypeError, match="corrupted must be a PromptBatch"):
        function_vector(tiny_model, clean, "antonym", top_k=2)


def test_layers_restrict_the_heads_scanned_and_vector_layers_the_rows(tiny_model, clean, shuffled):
    """``layers=`` ranks only the heads of those blocks (``head_cie(..., layers=)``); ``vector_layers=``
    the layers the vector is returned for (the same vector in every row)."""
    fv = function_vector(tiny_model, clean, shuffled, top_k=2, layers=[1], vector_layers=[0, 2])
    cie = head_cie(tiny_model, clean, shuffled, layers=[1])
    heads = cie.top(2)
    assert fv.meta["heads"] == [list(h) for h in heads] and {l for l, _ in heads} == {1}
    assert fv.meta["cie_layers"] == [1] and fv.meta["cie_prompts"] == len(shuffled)
    assert fv.meta["head_cie"] == [float(cie.values[0, h]) for _, h in heads]
    assert fv.layers == [0, 2] and torch.equal(fv.vectors[0], fv.vectors[1])
    # the same computations on the same batches (5 prompts: one minibatch at either batch size): bit for bit
    assert torch.equal(fv.vectors[0], fv_from_heads(tiny_model, mean_head_outputs(tiny_model, clean), heads))


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_k=5, layers=[1]), r"top_k must be an integer in \[1, 4\]"),
    (dict(top_k=2, layers=[2]), r"layers must be an integer in \[0, 1\]"),
    (dict(top_k=2, layer=1, vector_layers=[0]), "give layer or vector_layers, not both"),
    (dict(top_k=2, vector_layers=[3]), r"vector_layers must be an integer in \[0, 2\]"),
])
def test_layers_options_clear_errors(tiny_model, clean, shuffled, kwargs, match):
    with pytest.raises(ValueError, match=match):
        function_vector(tiny_model, clean, shuffled, **kwargs)
