"""Linear probes per layer: a separable case, chance on shuffled labels, grouping, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
from icl_circuits import build_prompts
from icl_circuits.viz.interchange import probe_vs_transfer
from icl_circuits.methods.probing import ProbeResult, probe_by_layer


@pytest.fixture(scope="module")
def templates(tiny_model):
    """Two prompt sets whose separator tokens differ (':' vs '='): separable at layer 0 by construction."""
    return {"colon": build_prompts(tiny_model, "antonym", 15, 3, seed=0),
            "equals": build_prompts(tiny_model, "antonym", 15, 3, seed=1, template="{x}={y}")}


@pytest.fixture(scope="module")
def separable(tiny_model, templates):
    return probe_by_layer(tiny_model, templates, "separator", layers=[0, 1], progress=False)


def test_probe_decodes_a_separable_label_perfectly(separable):
    assert separable.accuracy[0] == 1.0 and separable.low[0] > 0.9
    assert separable.chance == 0.5 and separable.positions == ["separator_0", "separator_1", "separator_2"]


def test_shuffled_labels_are_at_chance(separable):
    """Labels permuted across prompts (layer 1, where the states vary from prompt to prompt)."""
    assert abs(float(separable.control[1]) - 0.5) < 0.2


def test_random_labels_per_prompt_are_at_chance(tiny_model, templates):
    """Averaged over 20 label draws: one draw of 15 prompts is too noisy to judge (its held-out accuracy
    ranged 0.27-1.0 over draws, and scikit-learn < 1.6 shuffles StratifiedGroupKFold differently, so a
    single draw's verdict depended on the library version). A probe that leaked labels across folds
    would sit near 1; at chance the mean is ~0.5 with a standard error of ~0.04 over 20 draws."""
    b = templates["colon"]
    accs = []
    for s in range(20):
        labels = np.random.default_rng(s).integers(0, 2, len(b))
        if np.bincount(labels, minlength=2).min() < 3:  # cv=3 needs 3 prompts of each label
            continue
        r = probe_by_layer(tiny_model, (b, labels.tolist()), "final", layers=[2], cv=3, shuffle_control=False,
                           progress=False)
        assert torch.isnan(r.control).all()
        accs.append(float(r.accuracy[0]))
    assert len(accs) >= 15 and 0.35 < np.mean(accs) < 0.68, accs


def test_pooled_positions_of_one_prompt_stay_in_one_fold(separable):
    assert separable.labels.numel() == 30 * 3 and separable.groups.unique().numel() == 30
    assert torch.equal(separable.labels, separable.groups.ge(15).long())  # dict order: colon then equals


@pytest.mark.parametrize("combine, n", [("mean", 30), ("concat", 30), ("pool", 90)])
def test_combine_modes(tiny_model, templates, combine, n):
    r = probe_by_layer(tiny_model, templates, "answer", layers=[0], combine=combine, shuffle_control=False, progress=False)
    assert r.labels.numel() == n and r.predictions.shape == (1, n)


def test_single_position_and_seed_determinism(tiny_model, templates):
    a = probe_by_layer(tiny_model, templates, "separator_-1", layers=[1], seed=3, shuffle_control=False, progress=False)
    b = probe_by_layer(tiny_model, templates, "separator_-1", layers=[1], seed=3, shuffle_control=False, progress=False)
    assert a.positions == ["separator_2"] and torch.equal(a.predictions, b.predictions)


def test_round_trip_dataframe_and_figure(separable, tiny_model, tmp_path):
    back = ProbeResult.load(separable.save(tmp_path / "p"))
    assert torch.equal(back.accuracy, separable.accuracy) and back.classes == ["colon", "equals"]
    assert list(back.to_dataframe().layer) == [0, 1] and set(back.to_dataframe().model) == {tiny_model.cfg.model_name}
    assert back.model == tiny_model.cfg.model_name and back.provenance["n_prompts"] == 30
    assert back.provenance["task"] == "antonym+antonym" and back.provenance["n_demos"] == 3
    assert "Probe accuracy" in probe_vs_transfer(back).layout.title.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(data="one"), "at least two labels"),
    (dict(cv=20), "cv must be an integer between 2 and the smallest class size"),
    (dict(layers=[5]), "layers must be an integer in \\[0, 2\\]"),
    (dict(positions="nowhere"), "unknown position set 'nowhere'"),
    (dict(data="bad_labels"), "3 labels for a batch of 15 prompts"),
])
def test_errors_are_clear(tiny_model, templates, kwargs, match):
    data = {"data": templates}
    if kwargs.get("data") == "one":
        data["data"] = {"colon": templates["colon"]}
    elif kwargs.get("data") == "bad_labels":
        data["data"] = (templates["colon"], [0, 1, 0])
    args = {**{"positions": "separator"}, **{k: v for k, v in kwargs.items() if k != "data"}, **data}
    with pytest.raises(ValueError, match=match):
        probe_by_layer(tiny_model, progress=False, **args)


def test_cli_probe_json(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["probe", "--tasks", "antonym,english-french", "--position", "answer",
                                           "--demos", "2", "--prompts", "6", "--cv", "3", "--layers", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["layers"] == [0] and len(data["accuracy"]) == 1 and data["chance"] == 0.5


def test_ragged_positions_pool_only_valid_tokens(tiny_model):
    """Inputs of 2 to 5 tokens: one sample per valid (prompt, token); concatenation is refused."""

    b = build_prompts(tiny_model, "letter-string", 12, 2, seed=0)
    labels = [i % 2 for i in range(len(b))]
    r = probe_by_layer(tiny_model, (b, labels), "inputs", layers=[0], cv=2, shuffle_control=False, progress=False)
    mask = b.positions("inputs").mask
    assert r.labels.numel() == int(mask.sum()) and torch.equal(r.groups, mask.nonzero()[:, 0])
    with pytest.raises(ValueError, match="combine='concat' needs the same columns"):
        probe_by_layer(tiny_model, (b, labels), "inputs", layers=[0], cv=2, combine="concat", progress=False)


def test_batches_with_different_multi_token_columns_pool_together(tiny_model):
    """A task with 2-5 token inputs and one with 1-token inputs: "inputs" resolves to other columns in
    each batch; pooling keeps every valid token of both and names the union of the columns."""

    data = {"letters": build_prompts(tiny_model, "letter-string", 6, 2, seed=0),
            "words": build_prompts(tiny_model, "antonym", 6, 2, seed=0)}
    sets = {k: b.positions("inputs") for k, b in data.items()}
    assert sets["letters"].names != sets["words"].names
    r = probe_by_layer(tiny_model, data, "inputs", layers=[0], cv=2, shuffle_control=False, progress=False)
    assert r.labels.numel() == sum(int(s.mask.sum()) for s in sets.values())
    assert r.positions == sets["letters"].names + [n for n in sets["words"].names if n not in sets["letters"].names]
    m = probe_by_layer(tiny_model, data, "inputs", layers=[0], cv=2, combine="mean", shuffle_control=False, progress=False)
    assert m.labels.numel() == 12


def test_a_file_saved_with_model_name_still_loads(separable, tmp_path):
    """Results saved before the provenance column was called ``model`` (field ``model_name``)."""
    stem = separable.save(tmp_path / "old")
    spec = json.loads(stem.with_suffix(".json").read_text())
    fields = spec["fields"]
    fields["model_name"] = fields.pop("model")
    del fields["provenance"]
    stem.with_suffix(".json").write_text(json.dumps(spec))
    back = ProbeResult.load(stem)
    assert back.model == separable.model
    with pytest.warns(DeprecationWarning, match="model_name is deprecated"):
        assert back.model_name == separable.model


def test_position_lists_and_unions_are_one_spec(tiny_model, templates):
    a = probe_by_layer(tiny_model, templates, ["separator_0", "answer_-1"], layers=[1], shuffle_control=False,
                       progress=False)
    b = probe_by_layer(tiny_model, templates, "separator_0+answer_-1", layers=[1], shuffle_control=False,
                       progress=False)
    assert a.positions == b.positions == ["separator_0", "answer_2"] and torch.equal(a.predictions, b.predictions)
    assert a.position_set == "separator_0+answer_-1"


def test_cli_probe_needs_two_tasks(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["probe", "--tasks", "antonym", "--prompts", "6"])
    assert res.exit_code != 0 and "at least two tasks" in res.output
