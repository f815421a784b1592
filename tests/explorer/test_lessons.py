"""The explorer's guided lessons on the bundled toy model: each runs, draws a figure with data, writes
numbers that are its Result's own, and shows the direction of its claim where toy-icl reproduces it
(no Dash needed: lessons only call methods and ``ic.viz`` builders)."""

from __future__ import annotations

import pytest

import icl_circuits as ic
from icl_circuits.explorer.inputs import ExplorerInputError
from icl_circuits.explorer.lessons import LESSONS, LessonRun, edge_layers, lesson, run_lesson
from icl_circuits.explorer.session import Explorer
from icl_circuits.methods.attribution import scan_agreement


@pytest.fixture(scope="module")
def model():
    return ic.load_model("toy-icl")


@pytest.fixture(scope="module")
def explorer(model):
    return Explorer(model)


@pytest.fixture(scope="module")
def runs(explorer) -> dict[str, LessonRun]:
    return {item.key: run_lesson(explorer, item.key) for item in LESSONS}


def _iv(value: float, low: float, high: float) -> str:
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


# ----------------------------------------------------------------------------- the catalogue
def test_six_lessons_with_every_text_filled():
    assert len(LESSONS) == 6
    assert len({item.key for item in LESSONS}) == 6
    for item in LESSONS:
        for name in ("key", "title", "paper", "claim", "paper_number", "predict", "look_for"):
            assert isinstance(getattr(item, name), str) and getattr(item, name).strip(), (item.key, name)
        assert callable(item.run)
        assert lesson(item.key) is item


def test_unknown_key_names_it_and_the_choices():
    with pytest.raises(ValueError) as err:
        lesson("no-such-lesson")
    assert "no-such-lesson" in str(err.value)
    assert all(item.key in str(err.value) for item in LESSONS)
    assert isinstance(err.value, ExplorerInputError)  # the page shows its message


def test_edge_layers():
    assert edge_layers(4) == ([0, 1], [2, 3])
    assert edge_layers(48) == ([0, 1, 2, 3, 4], [43, 44, 45, 46, 47])  # Wang et al.: 5 of GPT2-XL's 48
    assert edge_layers(2) == ([0], [1])


# ----------------------------------------------------------------------------- every run
def test_every_lesson_draws_a_figure_with_data(runs):
    for key, run in runs.items():
        assert isinstance(run, LessonRun)
        assert run.figure.data, key
        assert any(t.y is not None and len(t.y) > 0 for t in run.figure.data), key
        assert "N = " in run.measured and "seed 0" in run.measured, key


def test_run_lesson_caches_the_run(explorer, runs):
    for item in LESSONS:
        assert run_lesson(explorer, item.key) is runs[item.key]


def test_runs_are_seeded(model, runs):
    """A fresh explorer measures exactly the same numbers (every random choice takes a fixed seed)."""
    fresh = Explorer(model)
    for item in LESSONS:
        assert item.run(fresh).measured == runs[item.key].measured, item.key


def test_a_model_without_the_tasks_gets_a_clear_refusal(model):
    ex = Explorer(model)
    ex.tasks = []
    for item in LESSONS:
        with pytest.raises(ExplorerInputError, match="cannot represent"):
            run_lesson(ex, item.key)
    assert not ex._memo  # a refusal is not cached


# ----------------------------------------------------------------------------- each claim
def test_saliency(runs):
    run = runs["anchors-saliency"]
    res = run.result
    wp, pq, ww = res.flow("S_wp"), res.flow("S_pq"), res.flow("S_ww")
    i, j = res.flow_names.index("S_wp"), int(wp.argmax())
    assert (f"peaks at layer {res.layers[j]}: {float(res.flows[i, j]):.2e} "
            f"[{float(res.low[i, j]):.2e}, {float(res.high[i, j]):.2e}]") in run.measured
    k = int(pq.argmax())
    assert f"S_pq (label words -> final position) peaks at layer {res.layers[k]}: {float(pq[k]):.2e}" in run.measured
    assert f"S_pq > S_ww in {int((pq > ww).sum())} of 4 layers" in run.measured
    assert len(res.per_prompt[0, 0]) == 32
    # toy-icl (notebook 04): S_wp is largest in the shallow layers and exactly 0 in the last one (only the
    # final position reaches the loss there); S_pq's mean is above S_ww's in every layer. Its layer-to-layer
    # shape (a deep peak) does not clear the 95% bands at N = 32, so it is not asserted.
    assert j < 2
    assert float(wp[-1]) == 0.0
    assert bool((pq > ww).all())


def test_isolation(runs):
    run = runs["anchors-isolation"]
    res = run.result
    acc, lo, hi = res.accuracy, res.accuracy_low, res.accuracy_high
    assert res.layer_ranges == [[0, 1], [2, 3]] and res.targets == ["label", "random"]
    for r in range(2):
        for t in range(2):
            assert _iv(float(acc[r, t]), float(lo[r, t]), float(hi[r, t])) in run.measured
    assert f"No isolation: {res.baseline_accuracy:.2f}" in run.measured
    assert res.correct.shape[-1] == 32
    # toy-icl (notebook 04): isolating the label words in layers 0-1 drops accuracy to chance (0.50, two label
    # words) while as many random positions, or the same isolation in layers 2-3, leave it at 1.00; the
    # Wilson intervals separate.
    assert float(hi[0, 0]) < float(lo[0, 1])
    assert float(hi[0, 0]) < float(lo[1, 0])
    assert float(acc[1, 0]) == res.baseline_accuracy


def test_distributed_template(runs):
    run = runs["distributed-template"]
    single, every = run.result
    assert (single.position_set, every.position_set) == ("answer_-1", "demo_tokens")
    for r in (single, every):
        i = int(r.rate("transfer").argmax())
        assert _iv(float(r.rates[0, i]), float(r.low[0, i]), float(r.high[0, i])) in run.measured
    assert f"N = {every.n} target prompts" in run.measured and every.n == 24
    # toy-icl (notebook 03): the last demo answer alone never transfers; all demo tokens transfer at the
    # early layers (0.96-1.00 at layers 0-2, the Wilson lower bound above 0.8) and stop at the last layer.
    assert float(single.rate("transfer").max()) == 0.0
    assert float(every.low[0].max()) > 0.8
    assert float(every.rate("transfer")[-1]) <= 0.1


def test_task_vectors(runs):
    run = runs["task-vectors"]
    df = run.result.to_dataframe()
    best = {m: df[df.method == m].loc[df[df.method == m].accuracy.idxmax()] for m in df.method.unique()}
    for m in ("zero-shot", "icl", "vanilla", "function"):
        r = best[m]
        assert _iv(r.accuracy, r.low, r.high) in run.measured, m
    assert f"at layer {int(best['function'].layer)}" in run.measured
    assert set(df.n) == {32}
    zero = best["zero-shot"]
    # toy-icl (docs/results/task_vectors.md, notebook 02): the vanilla task vector does NOT reproduce Hendel et
    # al. here: it is at zero-shot at layer 0 (the separator's own embedding) and below it at every later layer;
    # the added function vector reaches ICL accuracy, its interval above zero-shot's.
    vanilla = df[df.method == "vanilla"]
    assert bool((vanilla.accuracy <= zero.accuracy).all())
    assert "above zero-shot at 0 of 5 layers" in run.measured
    assert best["function"].low > zero.high


def test_heads(runs):
    run = runs["heads-attribution"]
    exact, approx, agree = run.result
    again = scan_agreement(exact, approx)
    assert agree.spearman == again.spearman and agree.top_k_overlap == again.top_k_overlap
    assert f"Spearman {agree.spearman:.2f}, top-5 overlap {agree.top_k_overlap:.2f}" in run.measured
    i = int(exact.effect.abs().flatten().argmax())
    l, h = divmod(i, exact.n_heads)
    e, a = float(exact.effect[l, h]), float(approx.effect[l, h])
    assert f"L{l}H{h}: {e:+.2f}" in run.measured and f"attribution estimates {a:+.2f}" in run.measured
    assert exact.per_prompt.shape[-1] == 16
    # toy-icl (notebook 05): the ranking agrees (Spearman ~0.94-0.96), the largest effect is a layer-0 head, and
    # attribution underestimates it several-fold (attention saturation).
    assert agree.spearman > 0.8
    assert l == 0
    assert abs(a) < abs(e) / 2 and (a < 0) == (e < 0)


def test_dpca(runs):
    run = runs["dpca"]
    res = run.result
    share = res.total_marginal_variance
    assert res.marginalizations[:2] == ["parity", "label"]
    assert f"Nuisance (parity): {float(share[0, 0]):.2f} at layer 0" in run.measured
    lo, hi = int(share[:, 0].argmin()), int(share[:, 1].argmax())
    assert f"lowest {float(share[lo, 0]):.2f} at layer {res.layers[lo]}" in run.measured
    assert f"highest {float(share[hi, 1]):.2f} at layer {res.layers[hi]}" in run.measured
    assert f"({res.projections.shape[-1]} answer positions)" in run.measured
    # toy-icl (notebook 06, docs/results/dpca.md): parity holds a large share at layer 0 and fades by layer 2,
    # while the label's share grows to above 0.9 at layers 2-3.
    assert float(share[0, 0]) > 3 * float(share[2, 0])
    assert float(share[2, 1]) > 0.9 > float(share[0, 1])
