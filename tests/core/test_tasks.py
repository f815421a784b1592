"""The task library: registry, sizes, determinism, rules, errors."""

from __future__ import annotations

import pytest

import json
from collections import Counter

from icl_circuits.core.tasks import (
    LABEL_POOL, CategorizationTask, WordPairTask, get_task, list_tasks, load_task, register_task,
    task_from_pairs, unregister_task,
)

WORD_PAIR = ["antonym", "country-capital", "capitalize", "english-french", "present-past",
             "singular-plural", "english-spanish", "english-german"]


def test_registry_has_every_kind():
    assert set(WORD_PAIR) <= set(list_tasks("knowledge"))
    assert set(list_tasks("categorization")) == {"letter-string", "number", "point", "sentiment", "animal-plant"}
    assert len(list_tasks("algorithmic")) >= 4
    assert sorted(list_tasks()) == sorted(set(list_tasks()))


@pytest.mark.parametrize("name", WORD_PAIR)
def test_word_pair_tasks_have_60_distinct_pairs(name):
    task = get_task(name)
    assert task.kind == "knowledge" and len(task) >= 60
    for x in task.inputs():
        y = task.apply(x)
        assert y and y != x and x.strip() == x and y.strip() == y


def test_shared_inputs_give_task_dependent_outputs():
    ant, fr = get_task("antonym"), get_task("english-french")
    shared = set(ant.inputs()) & set(fr.inputs())
    assert len(shared) >= 30
    assert all(ant.apply(x) != fr.apply(x) for x in shared)


def test_sampling_is_seeded_and_distinct():
    t = get_task("english-french")
    assert t.sample(10, seed=4) == t.sample(10, seed=4) != t.sample(10, seed=5)
    xs = [x for x, _ in t.sample(30, seed=0)]
    assert len(set(xs)) == 30


def test_algorithmic_rules():
    assert get_task("uppercase").apply("house") == "HOUSE"
    assert get_task("first-letter").apply("house") == "h"
    assert get_task("next-letter").apply("c") == "d" and get_task("next-letter").apply("z") is None
    assert get_task("repeat-word").apply("house") == "house"
    assert get_task("uppercase").apply("not-in-domain") is None


def test_categorization_rules_are_fixed_and_labels_drawn_per_episode():
    num, pt, ls = get_task("number"), get_task("point"), get_task("letter-string")
    assert num.classify("49") == 0 and num.classify("50") == 1 and num.classify("100") is None
    assert pt.classify("7 2") == 1 and pt.classify("2 7") == 0 and pt.classify("3 3") is None
    assert ls.classify("a q z") == 0 and ls.classify("n a") == 1
    assert ls.nuisance("k q z") == 3 and num.nuisance("37") == 1
    bindings = {num.sample_episode(8, seed=s).label_words for s in range(20)}
    assert len(bindings) > 5 and all(set(b) <= set(LABEL_POOL) and len(set(b)) == 2 for b in bindings)
    ep = num.sample_episode(8, seed=0)
    assert all(y == num.apply(x, ep.label_words) for x, y in ep.pairs)


def test_unknown_task_and_oversized_sample_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="only 25"):
        get_task("next-letter").sample(40)
    with pytest.raises(ValueError, match="kind must be"):
        list_tasks("bogus")


# ----------------------------------------------------------------------------- natural-label tasks
@pytest.mark.parametrize("name, labels, nuisance", [
    ("sentiment", ("negative", "positive"), "topic"), ("animal-plant", ("animal", "plant"), "long_word"),
])
def test_natural_tasks_have_fixed_labels_and_a_crossed_nuisance(name, labels, nuisance):
    """>= 100 examples; the label words are the same meaningful words in every episode; every
    (nuisance, class) cell holds >= 20 examples, so dPCA can separate the two factors."""
    t = get_task(name)
    assert isinstance(t, CategorizationTask) and t.fixed_labels and len(t) >= 100
    assert tuple(t.label_words) == labels and t.nuisance_name == nuisance
    assert {t.sample_episode(6, seed=s).label_words for s in range(10)} == {labels}
    ep = t.sample_episode(20, seed=3)
    assert all(y == labels[t.classify(x)] for x, y in ep.pairs)
    cells = Counter((t.nuisance(x), t.classify(x)) for x in t.inputs())
    assert len(cells) == 4 and min(cells.values()) >= 20
    sizes = Counter(t.classify(x) for x in t.inputs())
    assert abs(sizes[0] - sizes[1]) <= 0.2 * len(t)
    assert all(x == x.strip() and x for x in t.inputs())


def test_sentiment_is_balanced_and_animal_plant_nuisance_is_word_length():
    s = get_task("sentiment")
    assert Counter((s.nuisance(x), s.classify(x)) for x in s.inputs()) == Counter({c: 30 for c in
                                                                                   [(0, 0), (0, 1), (1, 0), (1, 1)]})
    ap = get_task("animal-plant")
    assert ap.apply("otter") == "animal" and ap.apply("tulip") == "plant"
    assert all(ap.nuisance(x) == int(len(x) >= 6) for x in ap.inputs())


# ----------------------------------------------------------------------------- tasks of your own
def test_task_from_pairs_knowledge_and_categorization():
    t = task_from_pairs("opposites", [("hot", "cold"), ("big", "small"), ("up", "down")])
    assert isinstance(t, WordPairTask) and t.kind == "knowledge" and t.apply("big") == "small" and len(t) == 3
    c = task_from_pairs("fruit-veg", [("apple", "fruit"), ("leek", "vegetable"), ("pear", "fruit"), ("kale", "vegetable")],
                        nuisance={"apple": 1, "leek": 0, "pear": 0, "kale": 1}, nuisance_name="parity")
    assert c.kind == "categorization" and c.fixed_labels and c.label_words == ["fruit", "vegetable"]
    assert c.classify("leek") == 1 and c.nuisance("apple") == 1 and c.apply("pear") == "fruit"
    assert c.sample_episode(4, seed=0).label_words == ("fruit", "vegetable")
    ordered = task_from_pairs("yn", [("a", "yes"), ("b", "no")], labels=["yes", "no"])
    assert ordered.classify("a") == 0 and ordered.label_words == ["yes", "no"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(pairs=[]), "non-empty list"),
    (dict(pairs=[("hot", "cold", "x")]), r"pairs\[0\] of task 't' must be \[input, output\]"),
    (dict(pairs=[("hot", "cold"), ("big",)]), r"pairs\[1\]"),
    (dict(pairs=[("hot", "")]), r"pairs\[0\]\[1\] \(output\) must be a non-empty string"),
    (dict(pairs=[(" hot", "cold")]), "leading or trailing whitespace"),
    (dict(pairs=[("hot", "cold"), ("hot", "warm")]), "two outputs"),
    (dict(pairs=[("a", "x")], kind="magic"), "kind must be one of"),
    (dict(pairs=[("a", "x"), ("b", "y")], labels=["x", "z"]), r"outputs \['y'\] that are not in labels"),
    (dict(pairs=[("a", "x"), ("b", "x")], labels=["x", "y"]), r"labels \['y'\] .* name no input"),
    (dict(pairs=[("a", "x"), ("b", "x")], kind="categorization"), "at least two distinct words"),
    (dict(pairs=[("a", "x"), ("b", "y")], nuisance_name="n"), r"must be \[input, output, nuisance\]"),
    (dict(pairs=[("a", "x", 1.5), ("b", "y", 0)], kind="categorization", nuisance_name="n"), "must be an integer"),
    (dict(pairs=[("a", "x"), ("b", "y")], labels=["x", "y"], nuisance={"a": 0}, nuisance_name="n"), "no value"),
    (dict(pairs=[("a", "x")], labels=["x"], kind="knowledge"), "are for kind='categorization'"),
    (dict(name="two words", pairs=[("a", "x")]), "name must be a non-empty string without whitespace"),
])
def test_task_from_pairs_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        task_from_pairs(**({"name": "t"} | kwargs))


def test_json_task_file_round_trip_and_errors(tmp_path):
    spec = {"name": "colors", "kind": "categorization", "description": "a thing -> its color", "labels": ["red", "green"],
            "nuisance_name": "size", "pairs": [["cherry", "red", 0], ["grass", "green", 1], ["ruby", "red", 1],
                                               ["lime", "green", 0]]}
    (tmp_path / "colors.json").write_text(json.dumps(spec))
    t = load_task(tmp_path / "colors.json")
    assert t.name == "colors" and t.classify("lime") == 1 and t.nuisance("ruby") == 1 and t.description == spec["description"]
    bad = [({**spec, "labelz": []}, r"unknown key\(s\) \['labelz'\]"), ({"name": "x"}, "missing required key 'pairs'"),
           ({**spec, "pairs": [["cherry", "blue", 0]]}, r"bad2.json: pairs of task .colors. have outputs \[.blue.\] that are not in labels"), ([1, 2], "a JSON object")]
    for i, (content, match) in enumerate(bad):
        (tmp_path / f"bad{i}.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=match):
            load_task(tmp_path / f"bad{i}.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_task(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="no task file"):
        load_task(tmp_path / "missing.json")


@pytest.fixture
def registered():
    names: list[str] = []
    yield names
    for n in names:
        unregister_task(n)


def test_register_task_makes_it_findable(registered, tmp_path):
    t = register_task(task_from_pairs("my-opposites", [("hot", "cold"), ("big", "small")]))
    registered.append("my-opposites")
    assert get_task("my-opposites") is t and "my-opposites" in list_tasks("knowledge")
    (tmp_path / "f.json").write_text(json.dumps({"name": "from-file", "pairs": [["a", "b"]]}))
    register_task(tmp_path / "f.json")
    registered.append("from-file")
    assert get_task("from-file").apply("a") == "b"
    with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
        register_task(task_from_pairs("my-opposites", [("up", "down")]))
    assert register_task(task_from_pairs("my-opposites", [("up", "down")]), overwrite=True).apply("up") == "down"
    with pytest.raises(ValueError, match="'antonym' is a built-in task"):
        register_task(task_from_pairs("antonym", [("up", "down")]))
    with pytest.raises(ValueError, match="no registered task named 'nope'"):
        unregister_task("nope")


def test_subset_keeps_the_task_and_counts_the_source():
    ant = get_task("antonym")
    sub = ant.subset(ant.inputs()[:5])
    assert sub.name == "antonym" and len(sub) == 5 and sub.source_size == len(ant)
    assert all(sub.apply(x) == ant.apply(x) for x in sub.inputs())
    num = get_task("number").subset(["3", "70", "71"])
    assert num.label_words == list(LABEL_POOL) and num.classify("70") == 1 and num.source_size == 100
    with pytest.raises(ValueError, match="not inputs of task 'antonym'"):
        ant.subset(["not-a-word"])
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no input"):
        get_task("number").subset(["3", "4"])
