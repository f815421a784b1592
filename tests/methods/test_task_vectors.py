"""Vanilla and local task vectors and their comparison: identities, the Intervention path equals the
hook path, the comparison's Result, errors. (Function vectors: test_function_vectors.py.)"""

from __future__ import annotations

import pytest
import torch

from icl_circuits.core import runner
from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.core.pairs import NoLengthMatchedAnswers, random_answer_twins, task_vector_prompts
from icl_circuits.methods.function_vectors import head_cie
from icl_circuits.methods.task_vectors import (
    TaskVectorComparison, compare_task_vectors, evaluate_task_vector, local_task_vectors, vanilla_task_vector,
)
from icl_circuits.core.tasks import WordPairTask
from icl_circuits.methods.vectors import TaskVector, evaluate_vector


@pytest.fixture(scope="module")
def clean(tiny_model):
    return build_prompts(tiny_model, "antonym", 5, 3, seed=0)


@pytest.fixture(scope="module")
def shuffled(tiny_model):
    return build_prompts(tiny_model, "antonym", 5, 3, seed=0, variant="shuffled_labels")


def _dq(model, seed=0):
    return build_prompts(model, "antonym", 4, 3, seed=seed, variant="dummy_query")


def _compare(model, task, n_demos, n_prompts, seed=0, eval_seed=None, **kw):
    return compare_task_vectors(model, task_vector_prompts(model, task, n_demos, n_prompts, seed, eval_seed=eval_seed),
                                **kw).to_dataframe()


def test_vanilla_vector_is_the_mean_final_residual_of_dummy_query_prompts(tiny_model):
    dq = _dq(tiny_model)
    tv = vanilla_task_vector(tiny_model, dq)
    r = runner.read_resid(tiny_model, dq, dq.positions("final").positions)[:, :, 0].mean(1)
    assert tv.layers == [0, 1, 2] and tv.mode == "replace" and torch.allclose(tv.vectors, r, atol=1e-6)


def test_vanilla_vector_of_one_prompt_replaces_with_itself(tiny_model):
    """The TV of a one-prompt batch, put back into that prompt, changes nothing at any layer."""
    one = build_prompts(tiny_model, "antonym", 1, 3, seed=4, variant="dummy_query")
    res = evaluate_vector(tiny_model, vanilla_task_vector(tiny_model, one), one, metric="gold_probability")
    assert (res.values - res.baseline).abs().max() <= 1e-6


def test_evaluate_task_vector_records_zero_shot_and_icl_and_refuses_the_extraction_seed(tiny_model):
    tv = vanilla_task_vector(tiny_model, _dq(tiny_model))
    zs = build_prompts(tiny_model, "antonym", 4, 3, seed=1, variant="zero_shot")
    res = evaluate_task_vector(tiny_model, tv, zs, build_prompts(tiny_model, "antonym", 4, 3, seed=1))
    assert res.meta["eval_seed"] == 1 and res.meta["zero_shot"] == res.baseline and 0 <= res.meta["icl"] <= 1
    with pytest.raises(ValueError, match="seed the vector was extracted with"):
        evaluate_task_vector(tiny_model, tv, build_prompts(tiny_model, "antonym", 4, 3, seed=0, variant="zero_shot"))


def test_evaluate_vector_intervention_path_equals_the_hook_path(tiny_model):
    """Replacing / adding through Intervention(Site(l), ...) gives the logits of the raw hooks."""
    tv = vanilla_task_vector(tiny_model, _dq(tiny_model))
    zs = build_prompts(tiny_model, "antonym", 4, 3, seed=1, variant="zero_shot")
    pos = zs.positions("final").positions
    for mode in ("replace", "add"):
        res = evaluate_vector(tiny_model, tv, zs, mode=mode, scale=0.5, metric="gold_probability")
        for l in tv.layers:
            hook = (iv.replace_hook(pos, tv.at(l)) if mode == "replace" else iv.add_hook(pos, tv.at(l), 0.5))
            lg = runner.run_final_logits(tiny_model, zs, lambda rows, mb: [(iv.resid_name(tiny_model, l), hook)])
            expected = lg.softmax(-1)[torch.arange(4), zs.answer_tokens]
            assert (res.per_prompt[tv.layers.index(l)] - expected).abs().max() <= 1e-6


def test_task_vector_dataframe_has_one_row_per_layer_with_its_norm(tiny_model, tmp_path):
    tv = vanilla_task_vector(tiny_model, _dq(tiny_model))
    df = TaskVector.load(tv.save(tmp_path / "tv")).to_dataframe()
    assert df.layer.tolist() == tv.layers and df.norm.tolist() == pytest.approx(tv.vectors.norm(dim=-1).tolist())
    assert set(df.method) == {"vanilla"} and set(df["mode"]) == {"replace"} and set(df.task) == {"antonym"}
    assert set(df.model) == {tiny_model.cfg.model_name}


def test_local_vectors_equal_one_patch_per_layer(tiny_model):
    """Layer l: the ICL prompt's answer-position states overwrite its random-answer twin's, at l only."""
    batch = build_prompts(tiny_model, "letter-string", 4, 3, seed=0)
    res = local_task_vectors(tiny_model, batch, metric="gold_probability")
    icl, dummy, _ = random_answer_twins(tiny_model, batch, "letter-string", seed=0)
    pos = icl.positions("answer").positions
    for l in (0, 1):
        name = iv.resid_name(tiny_model, l)
        own = runner.read_activations(tiny_model, icl, [name], pos)[name]
        logits = runner.run_final_logits(tiny_model, dummy, lambda rows, mb: [(name, iv.replace_hook(pos[rows], own[rows]))])
        expected = logits.softmax(-1)[torch.arange(4), dummy.answer_tokens]
        assert (res.per_prompt[l] - expected).abs().max() <= 1e-6
    assert res.layers == [0, 1] and res.meta["n_dropped"] == 0 and res.method == "local"


def test_random_answers_are_matched_by_token_length(tiny_model):
    """Every twin keeps the demo inputs, the query and every position; each random answer is an output
    of the task with as many tokens as the real one (two-token answers get two-token answers)."""
    task = WordPairTask("mixed", "knowledge", "a letter -> letters", [
        ("a", "k"), ("b", "q"), ("c", "z"), ("d", "k q"), ("e", "q z"), ("f", "z k")])
    icl = build_prompts(tiny_model, task, 12, 3, seed=0)
    width = icl.answer_spans[..., 1] - icl.answer_spans[..., 0]
    assert set(width.flatten().tolist()) == {1, 2}  # the fixture has both lengths
    kept, twin, dropped = random_answer_twins(tiny_model, icl, task, seed=0)
    assert len(kept) == 12 and dropped == {"no_match": 0, "tokenization": 0} and twin.variant == "random_answers"
    assert torch.equal(kept.answer_spans, twin.answer_spans) and kept.tokens.shape == twin.tokens.shape
    assert torch.equal(kept.input_spans, twin.input_spans) and torch.equal(kept.final_positions, twin.final_positions)
    assert twin.queries == kept.queries and torch.equal(twin.answer_tokens, kept.answer_tokens)
    changed = 0
    for i in range(12):
        for (x, y), (x2, y2) in zip(kept.demos[i], twin.demos[i]):
            assert x2 == x and y2 in task.outputs() and len(y2.split()) == len(y.split())
            changed += y2 != y
    assert changed > 0
    again = random_answer_twins(tiny_model, icl, task, seed=0)[1]
    assert again.demos == twin.demos and random_answer_twins(tiny_model, icl, task, seed=1)[1].demos != twin.demos


def _lengths_task():
    """Every output a different number of tokens: no demo answer has a length-matched alternative."""
    return WordPairTask("lengths", "knowledge", "a letter -> letters", [
        ("a", "k"), ("b", "k q"), ("c", "k q z"), ("d", "k q z a"), ("e", "k q z a b")])


def test_local_vectors_without_length_matched_answers_raise_and_compare_skips_them(tiny_model):
    task = _lengths_task()
    with pytest.raises(NoLengthMatchedAnswers, match="no prompt .* another answer with as many tokens"):
        local_task_vectors(tiny_model, build_prompts(tiny_model, task, 4, 2, seed=0), task=task)
    with pytest.warns(UserWarning, match="local task vectors skipped: .*as many tokens"):
        df = _compare(tiny_model, task, 2, 4, top_k=2)
    assert set(df.method) == {"vanilla", "function", "zero-shot", "icl"} and "local" in df.attrs["skipped"]
    with pytest.warns(UserWarning, match="local task vectors skipped"):
        only = _compare(tiny_model, task, 2, 4, methods=["local"])
    assert set(only.method) == {"zero-shot", "icl"} and sorted(set(only.layer)) == [0, 1, 2]
    ls = build_prompts(tiny_model, "letter-string", 4, 3, seed=0)
    for spec in ("final", "answer+query"):
        with pytest.raises(ValueError, match="not 'final'"):
            local_task_vectors(tiny_model, ls, positions=spec)


def test_local_vectors_take_a_position_spec(tiny_model):
    """positions="answer_-1" patches the last demo's answer only: the same as patching it by hand."""
    batch = build_prompts(tiny_model, "letter-string", 4, 3, seed=0)
    res = local_task_vectors(tiny_model, batch, [1], positions="answer_-1", metric="gold_probability")
    icl, dummy, _ = random_answer_twins(tiny_model, batch, seed=0)
    pos = icl.positions("answer_2").positions
    name = iv.resid_name(tiny_model, 1)
    own = runner.read_activations(tiny_model, icl, [name], pos)[name]
    lg = runner.run_final_logits(tiny_model, dummy, lambda rows, mb: [(name, iv.replace_hook(pos[rows], own[rows]))])
    assert (res.per_prompt[0] - lg.softmax(-1)[torch.arange(4), dummy.answer_tokens]).abs().max() <= 1e-6


def test_compare_task_vectors_methods(tiny_model):
    df = _compare(tiny_model, "number", 3, 4, methods=("vanilla",))
    assert set(df.method) == {"vanilla", "zero-shot", "icl"} and df.attrs["fv_heads"] is None
    loc = _compare(tiny_model, "number", 3, 4, methods=["local"])
    assert set(loc.method) == {"local", "zero-shot", "icl", "random-answers"} and set(loc.metric) == {"label"}
    with pytest.raises(ValueError, match="methods must name some of vanilla, local, function, got \\['global'\\]"):
        _compare(tiny_model, "number", 3, 4, methods=["global"])
    with pytest.raises(ValueError, match="methods must name some of"):
        _compare(tiny_model, "number", 3, 4, methods=())
    with pytest.raises(TypeError, match="prompts must be a TaskVectorPrompts"):
        compare_task_vectors(tiny_model, "number")


def test_compare_task_vectors_is_one_tidy_table(tiny_model):
    res = compare_task_vectors(tiny_model, task_vector_prompts(tiny_model, "number", 3, 4, 0), top_k=2)
    df = res.to_dataframe()
    assert {"vanilla", "function", "local", "zero-shot", "icl", "random-answers"} == set(df.method)
    assert {"method", "layer", "accuracy", "low", "high", "n", "model"} <= set(df.columns) and set(df.metric) == {"label"}
    assert len(df.attrs["fv_heads"]) == 2 and df.attrs["eval_seed"] == 1 and df.attrs["n_eval"] == 4


def test_task_vector_comparison_save_load_round_trip(tiny_model, tmp_path):
    res = compare_task_vectors(tiny_model, task_vector_prompts(tiny_model, "antonym", 3, 4, 0), top_k=2)
    back = TaskVectorComparison.load(res.save(tmp_path / "cmp"))
    a, b = res.to_dataframe(), back.to_dataframe()
    assert a.equals(b) and a.attrs == b.attrs and back.accuracy.dtype == torch.float64


@pytest.mark.parametrize("call, match", [
    (lambda m, c, s: vanilla_task_vector(m, c, layers=[7]), r"layers must be an integer in \[0, 2\]"),
    (lambda m, c, s: local_task_vectors(m, build_prompts(m, "letter-string", 4, 3), layers=[2]),
     r"layers must be an integer in \[0, 1\]"),
    (lambda m, c, s: task_vector_prompts(m, "number", 3, 4, seed=1, eval_seed=1), "eval_seed must differ"),
])
def test_clear_errors(tiny_model, clean, shuffled, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model, clean, shuffled)


def test_a_task_name_is_not_a_batch(tiny_model):
    for call in (lambda: vanilla_task_vector(tiny_model, "antonym"), lambda: local_task_vectors(tiny_model, "antonym")):
        with pytest.raises(TypeError, match="must be a PromptBatch"):
            call()


def test_wrong_width_vector_is_refused(tiny_model, clean):
    tv = TaskVector(torch.zeros(3, 48), [0, 1, 2], "replace", "vanilla", "antonym", model="other")
    with pytest.raises(ValueError, match="width 48 but the model's d_model is 32"):
        evaluate_task_vector(tiny_model, tv, build_prompts(tiny_model, "antonym", 2, 3, seed=1, variant="zero_shot"))


def test_figures_have_titles_bands_and_hover(tiny_model, clean, shuffled):
    from icl_circuits.methods.patching import patch_grid
    from icl_circuits.viz import sweeps

    tv = vanilla_task_vector(tiny_model, _dq(tiny_model))
    zs = build_prompts(tiny_model, "antonym", 4, 3, seed=1, variant="zero_shot")
    fig = sweeps.sweep([evaluate_task_vector(tiny_model, tv, zs, build_prompts(tiny_model, "antonym", 4, 3, seed=1))])
    assert "tiny" in fig.layout.title.text and any(t.fill == "toself" for t in fig.data)
    corr = build_prompts(tiny_model, "letter-string", 3, 2, seed=0, variant="random_answers")
    grid = patch_grid(tiny_model, build_prompts(tiny_model, "letter-string", 3, 2, seed=0), corr)
    heat = sweeps.patch_grid(grid)
    assert list(heat.layout.xaxis.ticktext) == grid.position_names and "gold_prob" in heat.data[0].hovertext[0][0]
    cie = sweeps.cie_heatmap(head_cie(tiny_model, clean, shuffled), top_k=3)
    assert len(cie.data[1].x) == 3 and "CIE" in cie.data[0].hovertext[0][0]


def test_cli_task_vectors_json_and_out(monkeypatch, tiny_model, tmp_path):
    import json

    from click.testing import CliRunner

    import icl_circuits.cli.common as cli_common
    import icl_circuits.cli.main as cli_mod

    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["task-vectors", "--task", "number", "--demos", "3", "--prompts", "4",
                                           "--top-k", "2", "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["metric"] == "label" and set(data["per_layer"]["vanilla"]) == {"0", "1", "2"}
    assert (tmp_path / "o" / "result.json").exists() and (tmp_path / "o" / "figure.html").exists()
    bad = CliRunner().invoke(cli_mod.cli, ["task-vectors", "--task", "nope"])
    assert bad.exit_code != 0 and "unknown task 'nope'" in bad.output
    one = CliRunner().invoke(cli_mod.cli, ["task-vectors", "--task", "number", "--demos", "3", "--prompts", "4",
                                           "--methods", "vanilla", "--json"])
    assert one.exit_code == 0, one.output
    assert set(json.loads(one.output.strip().splitlines()[-1])["per_layer"]) == {"vanilla", "zero-shot", "icl"}
    bad = CliRunner().invoke(cli_mod.cli, ["task-vectors", "--methods", "vanilla,global"])
    assert bad.exit_code != 0 and "--methods" in bad.output and "global" in bad.output
