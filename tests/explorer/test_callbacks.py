"""The explorer's views called in-process, as the callbacks call them: each shows what the project's
methods compute on the prompt (checked against the method called directly), and every bad input,
including a tampered settings store, becomes a message in the page instead of an exception."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("dash", reason="the explorer needs Dash: pip install -e '.[explore]'")

from dash import no_update  # noqa: E402

import icl_circuits as ic  # noqa: E402
from icl_circuits.explorer.app import make_app  # noqa: E402
from icl_circuits.explorer.callbacks import INTERNAL_ERROR  # noqa: E402
from icl_circuits.explorer.inputs import MAX_CUSTOM_PAIRS, ExplorerInputError, parse_pairs  # noqa: E402
from icl_circuits.methods.attribution import head_attribution  # noqa: E402
from icl_circuits.methods.head_ablation import ablate_heads  # noqa: E402
from icl_circuits.methods.interchange import interchange  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return make_app("toy-icl")


@pytest.fixture(scope="module")
def views(app):
    return app.views


@pytest.fixture(scope="module")
def stored(views):
    data, box, message = views.settings("antonym", 6, 3, "default", "")
    assert message == "" and box == {"display": "none"}
    return data


def _message(out: tuple) -> str:
    """The message output of a view's result (its last string output), and every other output unchanged."""
    assert all(o is no_update for o in out[:-1]), out
    return out[-1]


# ----------------------------------------------------------------------------- the prompt view
def test_prompt_view_is_the_models_own_prediction(app, views, stored):
    strip, roles, selection, answer, fig, message = views.prompt(stored)
    assert message == "" and selection == []
    ex = app.explorer
    batch = ic.build_prompts(ex.model, "antonym", 1, 6, seed=3)
    n = int(batch.final_positions[0]) + 1
    assert len(strip) == n and roles == batch.roles(0)
    probs = torch.softmax(ic.final_logits(ex.model, batch)[0], -1)
    top = probs.topk(5)
    shown = fig.data[0]
    # same computation on the same shapes: the exact numbers
    assert list(shown.x) == [float(p) for p in top.values]
    assert list(shown.y) == [repr(batch.tokenizer.decode([int(i)])) for i in top.indices]
    view = ex.prompt(ex.settings("antonym", 6, 3))
    assert view.first_token_correct == (int(top.indices[0]) == int(batch.answer_tokens[0]))
    assert view.whole_answer_correct == bool(ic.greedy_answers(ex.model, batch).correct[0])
    assert view.gold == batch.answers[0] and view.query == batch.queries[0]


def test_clicked_tokens_are_exactly_the_positions_patched(app, stored):
    ex = app.explorer
    s = ex.settings("antonym", 6, 3)
    names = ex.position_names(s)
    clicked = [i for i, n in enumerate(names) if n is not None][:: 5] + [len(names) - 1]
    spec = ex.position_spec(s, clicked)
    ps = ex.batch(s).positions(spec)
    assert sorted(ps.positions[0].tolist()) == sorted(clicked)
    with pytest.raises(ExplorerInputError, match="token 0 is not a demo token"):
        ex.position_spec(s, [0])  # BOS has no name in the position language
    with pytest.raises(ExplorerInputError, match="token must be"):
        ex.position_spec(s, [10_000])


def test_token_clicks_toggle_the_selection(views):
    roles = ["bos", "demo_0.input", "template+separator", "demo_0.answer"]
    sel, classes = views.toggle([0, 1, 0, 0], [], roles, {"type": "token", "index": 1})
    assert sel == [1] and "selected" in classes[1] and "selected" not in classes[0]
    sel, classes = views.toggle([0, 2, 0, 0], sel, roles, {"type": "token", "index": 1})
    assert sel == [] and not any("selected" in c for c in classes)
    # a fresh strip (no clicks yet) or a forged index changes nothing
    assert views.toggle([0, 0, 0, 0], [3], roles, {"type": "token", "index": 2})[0] == [3]
    assert views.toggle([1, 0, 0, 0], [], roles, {"type": "token", "index": 99})[0] == []


# ----------------------------------------------------------------------------- attention and saliency
def test_attention_view_shows_the_heads_pattern(app, views, stored):
    att, sal, message = views.attention(stored, 2, 3)
    assert message == ""
    ex = app.explorer
    batch = ic.build_prompts(ex.model, "antonym", 1, 6, seed=3)
    from icl_circuits.core.runner.forward import read_activations

    ref = read_activations(ex.model, batch, ["blocks.2.attn.hook_pattern"])["blocks.2.attn.hook_pattern"][0, 3]
    n = int(batch.final_positions[0]) + 1
    torch.testing.assert_close(torch.tensor(att.data[0].z, dtype=torch.float32), ref[:n, :n].float(),
                               rtol=0, atol=1e-7)  # the same forward; float32 -> numpy -> float32 round trip
    assert [t.name for t in sal.data if t.mode == "lines+markers"] != []
    assert abs(float(torch.tensor(att.data[0].z).sum(-1).mean()) - 1) < 1e-5  # rows of a pattern sum to 1


def test_attention_rejects_layers_and_heads_out_of_range(views, stored):
    assert "layer must be a whole number from 0 to 3" in _message(views.attention(stored, 4, 0))
    assert "head must be a whole number from 0 to 3" in _message(views.attention(stored, 0, -1))
    assert "head must be" in _message(views.attention(stored, 0, "1e9"))


# ----------------------------------------------------------------------------- interventions
def test_interchange_view_is_the_method_on_this_prompt(app, views, stored):
    opts, value, message = views.sources(stored, None)
    assert message == "" and value in opts
    panel, fig, message = views.interchange(stored, value, "all demo tokens", [], 1)
    assert message == ""
    ex = app.explorer
    s = ex.settings("antonym", 6, 3)
    src = ic.build_prompts(ex.model, value, ex.source_prompts, 6, seed=4)
    tgt = ic.build_prompts(ex.model, "antonym", 1, 6, seed=3)
    ref = interchange(ex.model, src, tgt, "demo_tokens", source_task=value, progress=False)
    got = ex.interchange(s, value, "demo_tokens")
    assert torch.equal(got.predictions, ref.predictions) and torch.equal(got.rates, ref.rates)
    text = str(panel.children)
    moved = ex.batch(s).tokenizer.decode([int(ref.predictions[1, 0])])
    assert repr(moved) in text and "layer 1" in text


def test_interchange_inputs_are_checked(views, stored):
    opts, _, _ = views.sources(stored, None)
    assert "source task must be one of" in _message(views.interchange(stored, "no-such-task", "all answers", [], 0))
    assert "position set must be one of" in _message(views.interchange(stored, opts[0], "everything", [], 0))
    assert "click at least one token" in _message(views.interchange(stored, opts[0], "clicked tokens", [], 0))
    assert "layer must be" in _message(views.interchange(stored, opts[0], "all answers", [], 9))
    zero, _, _ = views.settings("antonym", 0, 3, "default", "")
    assert "at least 1 demo" in _message(views.interchange(zero, opts[0], "all answers", [], 0))


# ----------------------------------------------------------------------------- heads
def test_heads_grid_is_attribution_and_a_click_ablates_exactly(app, views, stored):
    grid, message = views.heads(stored, "mean")
    assert message == ""
    ex = app.explorer
    s = ex.settings("antonym", 6, 3)
    batch, mean_batch = ex.batch(s), ex.mean_batch(s)
    ref = head_attribution(ex.model, batch, "mean", metric="logit_diff", mean_batch=mean_batch)
    assert torch.equal(torch.tensor(grid.data[0].z, dtype=torch.float32), ref.effect.float())
    panel, layer_fig, message = views.head_click(stored, "mean", {"points": [{"x": "H2", "y": "L1"}]})
    assert message == ""
    abl = ablate_heads(ex.model, batch, [(1, 2)], "mean", mean_batch=mean_batch, metric="logit_diff")
    exact = ex.head_scan(s, "mean", 1)
    # the staggered scan and the single ablation run other shapes (kernels may differ): float32 rounding
    assert abs(float(exact.effect[0, 2]) - (abl.value - abl.clean_value)) < 1e-4
    shown = f"{float(exact.clean[0]):.3f} -> {float(exact.values[0, 2]):.3f}"
    assert shown in str(panel.children)
    assert f"attribution estimate {float(ref.effect[1, 2]):+.3f}" in str(panel.children)
    assert [t.name for t in layer_fig.data] == ["exact ablation", "attribution estimate"]


def test_head_clicks_and_choices_are_checked(views, stored):
    panel, fig, message = views.head_click(stored, "zero", {"points": [{"x": "nonsense"}]})
    assert message == "" and "Click a head" in str(panel.children)
    assert "head must be" in _message(views.head_click(stored, "zero", {"points": [{"x": "H9", "y": "L0"}]}))
    assert "ablation must be one of" in _message(views.heads(stored, "resample"))
    assert views.scan_all(stored, "zero", 0, "scan-all")[1] == {"display": "none"}  # not clicked: hidden
    fig, style, message = views.scan_all(stored, "zero", 1, "scan-all")
    assert style == {"display": "block"} and message == ""


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, expected", [
    (("antonym", 17, 0, "default", ""), "demos must be a whole number from 0 to 16"),
    (("antonym", "3; rm -rf", 0, "default", ""), "demos must be"),
    (("antonym", None, 0, "default", ""), "demos must be"),
    (("antonym", 3, -1, "default", ""), "seed must be"),
    (("antonym", 3, 10**12, "default", ""), "seed must be"),
    (("/etc/passwd", 3, 0, "default", ""), "task must be one of"),
    (("smollm2-135m", 3, 0, "default", ""), "task must be one of"),
    (("antonym", 3, 0, "{x} {y} {__class__}", ""), "template must be one of"),
    (("custom", 3, 0, "default", "a -> b"), "at least 4 pairs"),
    (("custom", 1, 0, "default", "a b"), "write 'input -> output'"),
    (("custom", 1, 0, "default", "a -> b\na -> c"), "every input must be different"),
    (("custom", 1, 0, "default", "a -> " + "x" * 41), "1 to 40 printable characters"),
    (("custom", 1, 0, "default", "a\x07 -> b\nc -> d"), "printable"),
    (("custom", 1, 0, "default", "\n".join(f"w{i} -> v{i}" for i in range(MAX_CUSTOM_PAIRS + 1))), "at most 40"),
    (("custom", 1, 0, "default", ["a -> b"]), "must be text"),
])
def test_bad_settings_are_messages(views, args, expected):
    data, box, message = views.settings(*args)
    assert data is no_update and expected in message


def test_custom_pairs_build_a_prompt(views, app):
    data, box, message = views.settings("custom", 2, 0, "default", "hot -> cold\nbig -> small\nup -> down\n")
    assert message == "" and box == {"display": "block"}
    strip, roles, _, answer, _, message = views.prompt(data)
    assert message == "" and roles.count("demo_0.input") >= 1
    assert parse_pairs("a -> b\n\n c , d \n") == (("a", "b"), ("c", "d"))


def test_a_tampered_settings_store_is_checked_again(views):
    forged = {"task": "antonym", "n_demos": 10**6, "seed": 0, "template": "default"}
    assert "demos must be" in _message(views.prompt(forged))
    assert "choose a task" in _message(views.attention("not a dict", 0, 0))
    assert "task must be" in _message(views.heads({"task": ["x"], "n_demos": 1}, "zero"))


def test_an_internal_error_is_logged_not_shown(app, views, stored, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("secret internals /home/user/model.py line 3")

    monkeypatch.setattr(app.explorer, "head_attribution", boom)
    with caplog.at_level("ERROR", logger="icl_circuits.explorer"):
        out = views.heads(stored, "zero")
    assert _message(out) == INTERNAL_ERROR and "secret" not in INTERNAL_ERROR
    assert "secret internals" in caplog.text  # the server's log has it


def test_lesson_view_describes_then_runs(views):
    from icl_circuits.explorer.lessons import LESSONS

    text, fig, style, message = views.lesson(LESSONS[0].key, 0, "lesson")
    assert message == "" and style == {"display": "none"} and LESSONS[0].paper_number in str(text)
    text, fig, style, message = views.lesson(LESSONS[0].key, 1, "lesson-run")
    assert message == "" and style == {"display": "block"} and len(fig.data) > 0 and "Measured here" in str(text)
    assert "lesson" in _message(views.lesson("../../etc", 1, "lesson-run"))


# ----------------------------------------------------------------------------- the model side
def test_cache_is_bounded_and_threads_get_the_same_numbers(app):
    ex = app.explorer
    for seed in range(ex.cache_size + 4):
        ex.prompt(ex.settings("antonym", 2, seed))
    assert len(ex._cache) <= ex.cache_size
    s = ex.settings("country-capital", 4, 7)
    ex.clear()
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(ex.head_attribution(s, "zero"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and all(o is out[0] for o in out)  # computed once under the lock, then cached


def test_the_app_serves_only_its_model(app):
    """No component takes a model name: the page's inputs are the prompt's settings and view choices."""
    ids = {str(getattr(c, "id", "")) for c in app.layout._traverse() if getattr(c, "id", None)}
    assert not any("model" in i for i in ids)
    assert app.explorer.name == "toy-icl"
