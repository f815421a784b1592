"""The shipped bundled model against its own card (docs/toy_model.md, toy/weights/card.json)."""

from __future__ import annotations

import json

import pytest

from icl_circuits import accuracy_by_demos, build_prompts, demo_sweep, icl_accuracy, load_model
from icl_circuits.core.metrics import wilson
from icl_circuits.core.tasks import WordPairTask, get_task
from icl_circuits.toy import TOY_TASKS, WEIGHTS_DIR
from icl_circuits.toy.train import training_stages

CARD = json.loads((WEIGHTS_DIR / "card.json").read_text())


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-icl")


def test_loads_offline_with_the_packaged_tokenizer(toy):
    assert toy.cfg.model_name == "toy-icl" and toy.cfg.d_model == 128 and toy.cfg.n_ctx >= 256
    assert toy.tokenizer.padding_side == "right"


def test_accuracy_with_8_demos_matches_the_card(toy):
    """Same seed and prompt count as the card: within 5 points for every task."""
    df = accuracy_by_demos(toy, demo_sweep(toy, TOY_TASKS, [8], CARD["n_prompts"], seed=CARD["seed"])).to_dataframe()
    for row in df[df.metric == "first_token"].itertuples():
        assert abs(row.value - CARD["accuracy"][row.task]["8"]) <= 0.05, row.task


def test_zero_shot_categorization_is_at_chance(toy):
    """Label words are drawn per prompt, so without demos the model cannot know them."""
    for task in [t for t in TOY_TASKS if get_task(t).kind == "categorization"]:
        batch = build_prompts(toy, task, 200, 0, seed=11, variant="icl")
        acc = icl_accuracy(toy, batch, restrict_to_labels=True)
        r = wilson(round(acc * 200), 200)
        assert r.low <= 0.5 <= r.high, (task, acc)
        assert icl_accuracy(toy, batch) < 0.2  # over the whole vocabulary: at most the pool's share


@pytest.mark.parametrize("a, b", [("antonym", "english-french"), ("english-french", "english-german")])
def test_task_identity_comes_from_the_demos(toy, a, b):
    """The same query words get task A's answer under A's demos and B's under B's (>= 90%)."""
    shared = sorted(set(get_task(a).inputs()) & set(get_task(b).inputs()))
    for name in (a, b):
        t = get_task(name)
        sub = WordPairTask(name, t.kind, "", [(x, t.apply(x)) for x in shared])
        assert icl_accuracy(toy, build_prompts(toy, sub, 64, 8, seed=5)) >= 0.9


def test_knowledge_accuracy_rises_with_demos(toy):
    df = accuracy_by_demos(toy, demo_sweep(toy, ["english-french", "uppercase"], [0, 1, 8], 64, seed=3)).to_dataframe()
    for _, g in df.groupby("task"):
        acc = g.sort_values("n_demos").value.tolist()
        assert acc[0] < 0.5 <= 0.9 <= acc[2] and acc[0] < acc[1]


@pytest.mark.parametrize("task", ["number", "point"])
def test_categorization_is_learned_in_context(toy, task):
    """The label binding comes from the demos: chance without them, >= 90% with 8 (card: letter-string is not)."""
    df = accuracy_by_demos(toy, demo_sweep(toy, [task], [0, 2, 8], 100, seed=7)).to_dataframe()
    label = df[df.metric == "label"].sort_values("n_demos").value.tolist()
    assert wilson(round(label[0] * 100), 100).low <= 0.5 and label[0] < label[1] < label[2] and label[2] >= 0.9


def test_retraining_script_runs_the_recorded_stages():
    """scripts/train_bundled_model.sh must run exactly the commands training.json records, in order."""
    from pathlib import Path

    script = (Path(__file__).parents[2] / "scripts" / "train_bundled_model.sh").read_text().replace("\\\n", " ")
    run = [" ".join(line.split()).replace("$PY -m", "python -m") for line in script.splitlines()
           if line.startswith("$PY -m icl_circuits.toy.train")]
    stages = training_stages(json.loads((WEIGHTS_DIR / "training.json").read_text()))
    assert run == [s["command"] for s in stages]
