"""Result helpers that every analysis shares."""

import numpy as np
import pandas as pd

from icl_circuits.core.results import markdown_table


def test_markdown_table_rounds_floats_only_and_keeps_column_order():
    df = pd.DataFrame({"layer": [0, 1], "task": ["a", "b"], "acc": [0.12345, np.float64(1.0)]})
    assert markdown_table(df).split("\n") == [
        "| layer | task | acc |", "|---|---|---|", "| 0 | a | 0.123 |", "| 1 | b | 1.000 |"]
    assert markdown_table(df, 1).split("\n")[2] == "| 0 | a | 0.1 |"


def test_markdown_table_never_prints_a_small_nonzero_float_as_zero():
    df = pd.DataFrame({"flow": [2.5e-6, 0.0, -0.0004, 0.0005]})
    assert [r.strip("| ") for r in markdown_table(df).split("\n")[2:]] == ["2.50e-06", "0.000", "-4.00e-04", "0.001"]


# ----------------------------------------------------------------------------- atomic save
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from icl_circuits.core import results as results_mod  # noqa: E402
from icl_circuits.methods.sweeps import SweepResult


def _sweep(value: float) -> SweepResult:
    v = torch.full((3,), value)
    return SweepResult(values=v, per_prompt=v[:, None].repeat(1, 2), low=v - 1, high=v + 1, layers=[0, 1, 2],
                       metric="first_token", method=f"m{value}", task="t", model="m")


def _loads_old_or_nothing(path, old):
    try:
        back = SweepResult.load(path)
    except (ValueError, OSError):
        return True
    return back.method == old.method and torch.equal(back.values, old.values)


def test_save_interrupted_while_writing_the_json_leaves_the_previous_result(tmp_path, monkeypatch):
    old, new = _sweep(1.0), _sweep(2.0)
    old.save(tmp_path / "r")

    def boom(*a, **k):
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(results_mod.json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "r")
    monkeypatch.undo()
    back = SweepResult.load(tmp_path / "r")
    assert back.method == old.method and torch.equal(back.values, old.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.safetensors"]  # no temporary files left


def test_save_interrupted_between_the_two_files_loads_nothing_mixed(tmp_path, monkeypatch):
    from tests.conftest import interrupt_nth_replace

    old, new = _sweep(1.0), _sweep(2.0)
    old.save(tmp_path / "r")
    interrupt_nth_replace(monkeypatch, results_mod, 2)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "r")
    monkeypatch.undo()
    assert _loads_old_or_nothing(tmp_path / "r", old)


def test_save_load_round_trip_records_the_tensor_file_digest(tmp_path):
    r = _sweep(3.0)
    r.save(tmp_path / "r")
    spec = json.loads((tmp_path / "r.json").read_text())
    assert len(spec["tensors_sha256"]) == 64
    back = SweepResult.load(tmp_path / "r")
    assert torch.equal(back.values, r.values) and back.method == r.method


# ----------------------------------------------------------------------------- provenance
def test_every_result_class_carries_model_info_keyword_only():
    """model_info is a keyword-only field of the Result base, so every analysis result has it."""
    import dataclasses
    import importlib
    import pkgutil

    import icl_circuits

    classes = set()
    for m in pkgutil.walk_packages(icl_circuits.__path__, "icl_circuits."):
        if m.name.endswith("__main__"):
            continue
        try:
            mod = importlib.import_module(m.name)
        except ModuleNotFoundError as e:  # the explorer's Dash modules without the [explore] extra (make test-lowest)
            if e.name != "dash":
                raise
            continue
        classes |= {c for c in vars(mod).values()
                    if isinstance(c, type) and issubclass(c, results_mod.Result) and c is not results_mod.Result}
    assert len(classes) >= 20
    for c in classes:
        fields = {x.name: x for x in dataclasses.fields(c)}
        assert all(fields[k].kw_only for k in ("model", "model_info", "provenance")), c.__name__
        assert "model_name" not in fields, c.__name__  # one name for the model, from the base
        assert fields["model"].default is dataclasses.MISSING, c.__name__  # required: every result names its model


def test_analysis_results_record_how_the_model_was_loaded_and_keep_it_through_save(tiny_model, tmp_path):
    from icl_circuits import build_prompts
    from icl_circuits.methods.necessity import necessity
    from icl_circuits.core.models import model_info
    from icl_circuits.methods.saliency import saliency_flow
    from icl_circuits.methods.task_vectors import vanilla_task_vector

    batch = build_prompts(tiny_model, "antonym", 3, 2, seed=0)
    expected = model_info(tiny_model)
    assert expected["processing"] and "prepend_bos" in expected
    for res in (saliency_flow(tiny_model, batch), necessity(tiny_model, batch, "query", layers=[0, 1]),
                vanilla_task_vector(tiny_model, build_prompts(tiny_model, "antonym", 3, 2, seed=0,
                                                              variant="dummy_query"))):
        assert res.model_info == expected, type(res).__name__
        back = type(res).load(res.save(tmp_path / type(res).__name__))
        assert back.model_info == expected


def test_every_analysis_records_its_provenance(tiny_model):
    """Results say what they were computed on: the model, and from the batch the task, demos, template,
    variant, seed and number of prompts (core.results.provenance), written once by every analysis."""
    from icl_circuits import build_prompts
    from icl_circuits.methods.accuracy import accuracy_by_demos, demo_sweep
    from icl_circuits.methods.heads import head_ablation_scan
    from icl_circuits.methods.saliency import saliency_flow
    from icl_circuits.methods.task_vectors import vanilla_task_vector
    from icl_circuits.methods.vectors import evaluate_vector

    batch = build_prompts(tiny_model, "number", 6, 3, seed=5)
    zs = build_prompts(tiny_model, "number", 6, 0, seed=6)
    tv = vanilla_task_vector(tiny_model, build_prompts(tiny_model, "number", 6, 3, seed=7, variant="dummy_query"))
    results = [saliency_flow(tiny_model, batch, progress=False), head_ablation_scan(tiny_model, batch, progress=False),
               tv, evaluate_vector(tiny_model, tv, zs)]
    for r in results:
        assert r.provenance["model"] == tiny_model.cfg.model_name, type(r).__name__
        assert r.provenance["task"] == "number" and r.provenance["n_prompts"] == 6, type(r).__name__
    assert results[0].provenance["seed"] == 5 and results[0].provenance["template"] == batch.template.example
    assert results[3].provenance["n_demos"] == 0 and results[3].provenance["seed"] == 6
    acc = accuracy_by_demos(tiny_model, demo_sweep(tiny_model, ["number"], [0, 2], 4, seed=3))
    assert acc.provenance["tasks"] == ["number"] and acc.provenance["n_demos"] == [0, 2] and acc.provenance["seed"] == 3
    assert all(r.provenance["single_token"] is False for r in results + [acc])


def test_single_token_prompts_are_recorded_in_provenance_and_survive_select_and_save(tiny_model, tmp_path):
    """A result computed on prompts drawn from the one-token examples only says so (and one on all examples
    says that too), so two saved results on the 'same' task can be told apart."""
    from icl_circuits import build_prompts
    from icl_circuits.methods.accuracy import accuracy_by_demos
    from icl_circuits.methods.saliency import saliency_flow

    one = build_prompts(tiny_model, "antonym", 4, 2, seed=0, single_token=True)
    assert one.single_token and one.select([0, 2]).single_token and one.to("cpu").single_token
    assert not build_prompts(tiny_model, "antonym", 4, 2, seed=0).single_token
    res = saliency_flow(tiny_model, one, progress=False)
    assert res.provenance["single_token"] is True
    assert type(res).load(res.save(tmp_path / "s")).provenance["single_token"] is True
    acc = accuracy_by_demos(tiny_model, [one, build_prompts(tiny_model, "antonym", 4, 2, seed=0)])
    assert acc.provenance["single_token"] == [True, False]


# ----------------------------------------------------------------------------- the stamp
def test_stamp_is_what_every_result_records(tiny_model):
    """``stamp(model, batch)`` gives ``model`` (the name), ``model_info`` and ``provenance``, and an
    analysis result carries exactly that (``**stamp_of(result)`` copies it to a derived result)."""
    from icl_circuits import build_prompts
    from icl_circuits.core.model_info import model_info
    from icl_circuits.methods.task_vectors import vanilla_task_vector

    batch = build_prompts(tiny_model, "antonym", 3, 2, seed=0, variant="dummy_query")
    st = results_mod.stamp(tiny_model, batch, extra=1)
    assert set(st) == {"model", "model_info", "provenance"} and st["model"] == tiny_model.cfg.model_name
    assert st["model_info"] == model_info(tiny_model) and st["provenance"] == results_mod.provenance(tiny_model, batch, extra=1)
    tv = vanilla_task_vector(tiny_model, batch)
    assert results_mod.stamp_of(tv) == results_mod.stamp(tiny_model, batch)
    assert tv.to_dataframe().model.unique().tolist() == [tiny_model.cfg.model_name]


# saved by icl-circuits before issue 25 (a TaskVector with ``model_name``, no format_version): tests/methods/data
OLD_TASK_VECTOR = Path(__file__).parents[1] / "methods" / "data" / "circuits_ltv"


def test_a_result_saved_in_the_old_layout_loads_with_model():
    """A file written before ``model`` was the Result base's field (``model_name`` in the class's
    own fields) loads; ``model_name`` still reads, with a DeprecationWarning."""
    from icl_circuits.methods.vectors import TaskVector

    spec = json.loads(OLD_TASK_VECTOR.with_suffix(".json").read_text())
    assert "model_name" in spec["fields"] and "model" not in spec["fields"]  # the old layout, as saved
    tv = TaskVector.load(OLD_TASK_VECTOR)
    assert tv.model == spec["fields"]["model_name"] == "smollm2-135m" and tv.vectors.shape[0] == len(tv.layers)
    assert tv.model_info == spec["fields"]["model_info"] and tv.to_dataframe().model.unique().tolist() == ["smollm2-135m"]
    with pytest.warns(DeprecationWarning, match="model_name is deprecated: use .model"):
        assert tv.model_name == "smollm2-135m"


def test_old_layouts_upgrade_on_load_and_unpickle(tmp_path):
    """``model_name`` becomes ``model``; a file with neither takes the name from its provenance (else its
    model_info, else ""); the same upgrade applies to a pickled result (a script's saved state)."""
    import pickle

    res = _sweep(0.5)
    stem = res.save(tmp_path / "r")
    spec = json.loads(stem.with_suffix(".json").read_text())
    for fields, name in (({"model_name": "old"}, "old"), ({"provenance": {"model": "p"}}, "p"),
                         ({"model_info": {"name": "i"}}, "i"), ({}, "")):
        spec["fields"] = {**{k: v for k, v in spec["fields"].items() if k not in ("model", "model_name", "model_info", "provenance")},
                          **fields}
        stem.with_suffix(".json").write_text(json.dumps(spec))
        back = SweepResult.load(stem)
        assert back.model == name and torch.equal(back.values, res.values), fields
    state = {k: v for k, v in res.__dict__.items() if k not in ("model", "meta")}
    old = SweepResult.__new__(SweepResult)
    old.__setstate__({**state, "model_name": "pickled"})
    assert old.model == "pickled" and old.meta == {} and "model_name" not in old.__dict__
    again = pickle.loads(pickle.dumps(res))
    assert again.model == "m" and torch.equal(again.values, res.values)
