"""The commands for attention isolation, anchor re-weighting and OV circuits / key heads: their --json
equals the analysis called directly on the same prompts, --out writes results and figures, bad options
are usage errors naming the option."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
from icl_circuits.cli.main import cli
from icl_circuits.core.prompts import build_prompts


@pytest.fixture
def run(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)

    def invoke(*args: str):
        res = CliRunner().invoke(cli, list(args))
        assert res.exit_code == 0, res.output
        return json.loads(res.output.strip().splitlines()[-1])

    return invoke


def _close(a, b) -> bool:
    """Nested equality of JSON numbers (NaN equals NaN)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, abs=1e-6) if isinstance(a, float) else a == b


def test_isolation_json_is_isolate_attention(run, tiny_model):
    from icl_circuits.methods.anchors import isolate_attention

    data = run("isolation", "--task", "number", "--demos", "2", "--prompts", "6", "--layers", "0-1,1",
               "--mode", "query_from_label", "--seed", "3", "--json")
    batch = build_prompts(tiny_model, "number", 6, 2, seed=3)
    ref = isolate_attention(tiny_model, batch, [[0, 1], [1]], "query_from_label", seed=3, progress=False)
    assert data["ranges"] == ["0-1", "1"] and data["layer_ranges"] == [[0, 1], [1]]
    assert data["baseline_accuracy"] == pytest.approx(ref.baseline_accuracy)
    for j, t in enumerate(ref.targets):
        for k in ("accuracy", "accuracy_low", "accuracy_high", "loyalty", "word_loyalty"):
            assert _close(data["targets"][t][k], getattr(ref, k)[:, j].tolist()), (t, k)


def test_isolation_each_layer_by_default_and_no_control(run):
    data = run("isolation", "--task", "number", "--demos", "2", "--prompts", "3", "--no-control", "--json")
    assert data["layer_ranges"] == [[0], [1]] and list(data["targets"]) == ["label"]


def test_reweight_json_is_train_anchor_reweighting(run, tiny_model):
    from icl_circuits.methods.reweighting import train_anchor_reweighting

    data = run("reweight", "--task", "number", "--demos", "2", "--prompts", "6", "--eval-prompts", "5",
               "--epochs", "2", "--lr", "0.05", "--batch-size", "4", "--seed", "1", "--json")
    train, ev = build_prompts(tiny_model, "number", 6, 2, seed=1), build_prompts(tiny_model, "number", 5, 2, seed=2)
    ref = train_anchor_reweighting(tiny_model, train, ev, lr=0.05, epochs=2, batch_size=4, seed=1, progress=False)
    assert data["eval_seed"] == 2 and data["restrict_to_labels"] is True  # auto: the task has label words
    for k in ("accuracy_before", "accuracy_after", "train_loss_before", "train_loss_after", "eval_loss_before",
              "eval_loss_after", "accuracy_after_low", "accuracy_after_high"):
        assert data[k] == pytest.approx(getattr(ref, k), abs=1e-6), k
    assert _close(data["beta"], ref.beta.tolist()) and _close(data["epoch_losses"], ref.epoch_losses.tolist())
    assert any(x != 0 for layer in data["beta"] for head in layer for x in head)  # trained away from the identity


def test_ov_json_is_the_decomposition_reconstruction_and_ablation(run, tiny_model):
    from icl_circuits.methods.key_heads import key_head_ablation, key_heads
    from icl_circuits.methods.ov_circuits import ov_contributions, reconstruct
    from icl_circuits.methods.task_vectors import vanilla_task_vector

    data = run("ov", "--vector", "vanilla", "--task", "antonym", "--demos", "2", "--prompts", "6", "--layer", "1", "--ks", "1,2",
               "--n-random", "3", "--how", "mean", "--source", "exact", "--json")
    tv = vanilla_task_vector(tiny_model, build_prompts(tiny_model, "antonym", 6, 2, seed=0, variant="dummy_query"), [1])
    zs = build_prompts(tiny_model, "antonym", 6, 0, seed=1, variant="zero_shot")
    ov = ov_contributions(tiny_model, zs, tv, 1, keep_head_vectors=False)
    rec = reconstruct(tiny_model, zs, tv, 1, ov=ov)
    kh = key_heads(tiny_model, zs, tv, 1, source="exact", ov=ov)
    ab = key_head_ablation(tiny_model, zs, tv, 1, ks=[1, 2], how="mean", ranking=kh, n_random=3, seed=0, progress=False)
    assert data["mode"] == "replace" and data["layer"] == 1 and data["theta_norm"] == pytest.approx(float(tv.at(1).norm()))
    assert _close(data["heads"]["exact_dla"], ov.exact_dla.mean(-1).tolist())
    assert _close(data["heads"]["ov_dla"], ov.ov_dla.mean(-1).tolist())
    assert _close({c: v["accuracy"] for c, v in data["reconstruction"].items()}, dict(zip(rec.conditions, rec.values.tolist())))
    assert data["key_heads"]["ranking"] == kh.ranking and _close(data["key_heads"]["scores"], kh.scores.tolist())
    a = data["ablation"]
    assert a["top_heads"] == ab.top_heads and a["random_heads"] == ab.random_heads
    assert _close(a["top"], ab.top.tolist()) and _close(a["random"], ab.random.tolist())
    assert a["vector_accuracy"] == pytest.approx(ab.vector_accuracy)


def test_ov_trains_a_learned_vector_by_default(run, tiny_model):
    from icl_circuits.methods.learned import train_task_vector
    from icl_circuits.methods.ov_circuits import ov_contributions

    data = run("ov", "--task", "antonym", "--prompts", "4", "--train", "8", "--val", "2",
               "--epochs", "1", "--layer", "1", "--ks", "1", "--n-random", "2", "--json")
    tv = train_task_vector(tiny_model, build_prompts(tiny_model, "antonym", 10, 0, seed=0, variant="zero_shot"), 1,
                           n_val=2, epochs=1, seed=0, progress=False)
    ov = ov_contributions(tiny_model, build_prompts(tiny_model, "antonym", 4, 0, seed=1, variant="zero_shot"), tv, 1)
    assert data["mode"] == "add" and data["theta_norm"] == pytest.approx(float(tv.at(1).norm()), rel=1e-5)
    assert _close(data["heads"]["ov_dla"], ov.ov_dla.mean(-1).tolist())
    assert data["identity_error"] < 1e-4


@pytest.mark.parametrize("args, files", [
    (["isolation", "--task", "number", "--demos", "2", "--prompts", "3"], ["result.json", "result.safetensors"]),
    (["reweight", "--task", "number", "--demos", "2", "--prompts", "3", "--eval-prompts", "3", "--epochs", "1"],
     ["result.json", "result.safetensors"]),
    (["ov", "--vector", "vanilla", "--demos", "2", "--prompts", "3", "--ks", "1", "--n-random", "1"],
     ["result.json", "reconstruction.json", "key_heads.json", "ablation.json", "vector.safetensors"]),
], ids=["isolation", "reweight", "ov"])
def test_out_writes_results_and_a_figure(monkeypatch, tiny_model, tmp_path, args, files):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    for f in [*files, "figure.html"]:
        assert (tmp_path / "o" / f).exists(), f
    assert "plotly" in (tmp_path / "o" / "figure.html").read_text()


@pytest.mark.parametrize("args, match", [
    (["isolation", "--layers", "0-x"], "--layers"),
    (["isolation", "--layers", "2"], "[0, 1]"),
    (["isolation", "--layers", "1-0"], "inclusive spans"),
    (["isolation", "--mode", "nope"], "--mode"),
    (["isolation", "--task", "antonym", "--restrict-to-labels"], "--restrict-to-labels"),
    (["isolation", "--task", "nope"], "unknown task 'nope'"),
    (["reweight", "--task", "antonym", "--accuracy-over", "labels"], "--accuracy-over"),
    (["reweight", "--lr", "0"], "--lr"),
    (["reweight", "--demos", "0"], "--demos"),
    (["ov", "--layer", "2"], "--layer"),
    (["ov", "--ks", "1,a"], "--ks"),
    (["ov", "--layer", "1", "--ks", "5"], "--ks"),
    (["ov", "--ks", "0"], "--ks"),
    (["ov", "--vector", "vanilla", "--epochs", "3"], "--vector ltv"),
    (["ov", "--vector", "nope"], "--vector"),
    (["ov", "--how", "nope"], "--how"),
    (["ov", "--task", "number", "--restrict-to-labels", "--layer", "1", "--ablate-positions", "nope", "--prompts", "2",
      "--demos", "2", "--ks", "1", "--n-random", "1"], "nope"),
])
def test_bad_options_are_usage_errors_naming_them(monkeypatch, tiny_model, args, match):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and match in res.output, res.output
    assert "Traceback" not in res.output
