"""Loading anything that is not a readable result raises ResultLoadError naming the file and what is wrong.

One test per failure kind, for the Result base (every analysis result, TaskVector among them) and for
the dPCA fit, which saves .npz arrays instead of safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icl_circuits.core.results import FORMAT_VERSION, ResultLoadError, ResultNotFoundError
from icl_circuits.methods.dpca.numpy_dpca import DPCAResult, demixed_pca
from icl_circuits.methods.sweeps import SweepResult
from icl_circuits.methods.vectors import TaskVector


def _sweep() -> SweepResult:
    v = torch.arange(3.0)
    return SweepResult(values=v, per_prompt=v[:, None].repeat(1, 2), low=v - 1, high=v + 1, layers=[0, 1, 2],
                       metric="first_token", method="m", task="t", model="m")


@pytest.fixture
def saved(tmp_path):
    return _sweep().save(tmp_path / "r")


def _edit_spec(stem, edit) -> dict:
    """Rewrite ``stem.json`` with ``edit(spec)`` applied; returns the spec as it was."""
    path = stem.with_suffix(".json")
    spec = json.loads(path.read_text())
    before = json.loads(json.dumps(spec))
    edit(spec)
    path.write_text(json.dumps(spec))
    return before


def test_a_missing_result_names_the_path_and_is_also_a_file_not_found_error(tmp_path):
    path = tmp_path / "nonexistent" / "dir" / "tv"
    with pytest.raises(ResultNotFoundError, match=r"nonexistent/dir/tv\.json: no such file; expected a TaskVector"):
        TaskVector.load(path)
    with pytest.raises(FileNotFoundError):  # callers that catch the OS error keep working
        TaskVector.load(path)
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ResultLoadError, match=r"d\.json: it is a directory"):
        SweepResult.load(tmp_path / "d")


def test_a_missing_tensor_file_names_it(saved):
    saved.with_suffix(".safetensors").unlink()
    with pytest.raises(ResultNotFoundError, match=r"r\.safetensors: no such file; .*r\.json was saved with it"):
        SweepResult.load(saved)


@pytest.mark.parametrize("cut", [0, 1, 40, -2])
def test_a_truncated_json_names_the_file(saved, cut):
    p = saved.with_suffix(".json")
    p.write_text(p.read_text()[:cut])
    with pytest.raises(ResultLoadError, match=r"r\.json is truncated or not JSON"):
        SweepResult.load(saved)


def test_json_that_is_not_an_object_or_has_no_fields(saved):
    p = saved.with_suffix(".json")
    p.write_text("[1, 2]")
    with pytest.raises(ResultLoadError, match=r"r\.json holds a JSON list, not an object"):
        SweepResult.load(saved)
    p.write_text(json.dumps({"class": "SweepResult"}))
    with pytest.raises(ResultLoadError, match=r"r\.json has no 'fields' object"):
        SweepResult.load(saved)


def test_a_result_of_another_class_names_both_classes(saved):
    with pytest.raises(ResultLoadError, match=r"r\.json holds a 'SweepResult' result, not a TaskVector; load it with SweepResult\.load"):
        TaskVector.load(saved)


def test_a_truncated_or_altered_tensor_file_fails_its_digest(saved):
    p = saved.with_suffix(".safetensors")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultLoadError, match=r"r\.safetensors is not the file .*r\.json was saved with \(SHA-256 differs\)"):
        SweepResult.load(saved)


def test_an_unreadable_tensor_file_without_a_digest_is_named(saved):
    """Files from before digests were recorded: safetensors' own error is wrapped, naming the file."""
    _edit_spec(saved, lambda spec: spec.pop("tensors_sha256"))
    saved.with_suffix(".safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ResultLoadError, match=r"r\.safetensors is not a readable safetensors file"):
        SweepResult.load(saved)


def test_fields_that_do_not_fit_the_class_are_named(saved):
    _edit_spec(saved, lambda spec: spec["fields"].update(no_such_field=1))
    with pytest.raises(ResultLoadError, match=r"r\.json: its fields do not fit SweepResult .*no_such_field"):
        SweepResult.load(saved)


def test_a_file_written_by_a_newer_version_says_so(saved):
    before = _edit_spec(saved, lambda spec: spec.update(format_version=FORMAT_VERSION + 1))
    assert before["format_version"] == FORMAT_VERSION and before["written_by"].startswith("icl-circuits")
    with pytest.raises(ResultLoadError, match=r"r\.json was written by a newer icl-circuits .*upgrade icl-circuits"):
        SweepResult.load(saved)


def test_an_older_file_without_a_format_version_still_loads(saved):
    _edit_spec(saved, lambda spec: [spec.pop("format_version"), spec.pop("written_by")])
    back = SweepResult.load(saved)
    assert torch.equal(back.values, _sweep().values)  # same bytes read back: exact


def test_errors_are_value_errors_and_leave_no_file_behind(tmp_path, saved):
    before = sorted(p.name for p in tmp_path.iterdir())
    saved.with_suffix(".json").write_text("{")
    with pytest.raises(ValueError):  # ResultLoadError is a ValueError: one type to catch
        SweepResult.load(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------- dPCA fits (.npz + .json)
@pytest.fixture
def dpca_saved(tmp_path):
    X = np.random.default_rng(0).normal(size=(5, 3, 2))
    fit = demixed_pca(X, n_components=1, labels=("a", "b"), regularizer=1e-3)
    npz, _ = fit.save(tmp_path / "fit")
    return npz.with_suffix("")


def test_dpca_missing_truncated_altered_and_newer_files_are_named(dpca_saved):
    with pytest.raises(ResultNotFoundError, match=r"nofit\.json: no such file; expected a dPCA fit"):
        DPCAResult.load(dpca_saved.with_name("nofit"))
    npz, js = dpca_saved.with_suffix(".npz"), dpca_saved.with_suffix(".json")
    good_npz, good_js = npz.read_bytes(), js.read_text()
    npz.write_bytes(good_npz[:100])
    with pytest.raises(ResultLoadError, match=r"fit\.npz is not the file .*fit\.json was saved with"):
        DPCAResult.load(dpca_saved)
    npz.write_bytes(good_npz)
    js.write_text(good_js[:30])
    with pytest.raises(ResultLoadError, match=r"fit\.json is truncated or not JSON"):
        DPCAResult.load(dpca_saved)
    meta = json.loads(good_js)
    meta["format_version"] += 1
    js.write_text(json.dumps(meta))
    with pytest.raises(ResultLoadError, match=r"fit\.json was written by a newer icl-circuits"):
        DPCAResult.load(dpca_saved)
    js.write_text(json.dumps({"class": "SweepResult", "fields": {}}))
    with pytest.raises(ResultLoadError, match=r"fit\.json is not a dPCA fit \(it has no marginalization_names\)"):
        DPCAResult.load(dpca_saved)
    js.write_text(good_js)
    assert DPCAResult.load(dpca_saved).labels == ("a", "b")
