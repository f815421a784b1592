"""Result helpers that every analysis shares."""

import numpy as np
import pandas as pd

from icl_circuits.results import markdown_table


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

import pytest  # noqa: E402
import torch  # noqa: E402

from icl_circuits import results as results_mod  # noqa: E402
from icl_circuits.vectors import SweepResult  # noqa: E402


def _sweep(value: float) -> SweepResult:
    v = torch.full((3,), value)
    return SweepResult(values=v, per_prompt=v[:, None].repeat(1, 2), low=v - 1, high=v + 1, layers=[0, 1, 2],
                       metric="accuracy", method=f"m{value}", task="t", model_name="m")


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
    import os

    old, new = _sweep(1.0), _sweep(2.0)
    old.save(tmp_path / "r")
    real, calls = os.replace, []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted")
        return real(src, dst)

    monkeypatch.setattr(results_mod.os, "replace", replace_once)
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
