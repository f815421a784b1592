"""The task library: registry, sizes, determinism, rules, errors."""

from __future__ import annotations

import pytest

from icl_circuits.tasks import LABEL_POOL, get_task, list_tasks

WORD_PAIR = ["antonym", "country-capital", "capitalize", "english-french", "present-past",
             "singular-plural", "english-spanish", "english-german"]


def test_registry_has_every_kind():
    assert set(WORD_PAIR) <= set(list_tasks("knowledge"))
    assert set(list_tasks("categorization")) == {"letter-string", "number", "point"}
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
