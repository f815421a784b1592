"""Label words as anchors on SmolLM2-135M: the measured results of scripts/real_anchors.py
(docs/results/real/anchors.md), each on a few prompts (``pytest -m real_model``).

Each test asserts a qualitative result the full run measured (50 prompts, 3 seeds), as an ordering
that breaks if the science does: flows read at the wrong positions or layers, isolation of the
wrong positions, a re-weighting that scales the wrong attention entries.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from icl_circuits import build_prompts
from icl_circuits.methods.anchors import isolate_attention
from icl_circuits.methods.reweighting import train_anchor_reweighting
from icl_circuits.methods.saliency import saliency_flow

pytestmark = pytest.mark.real_model

N_LAYERS = 30
FIRST, LAST = list(range(10)), list(range(20, 30))  # first and last third of SmolLM2's 30 layers


@pytest.fixture(scope="module")
def script():
    """scripts/real_anchors.py as a module (its fixed-demonstration prompt builder)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    return importlib.import_module("real_anchors")


def test_text_to_label_flow_leads_early_and_label_to_query_late(real_model):
    """Wang et al.'s two phases: S_wp > S_pq summed over the first third, S_pq > S_wp over the last."""
    batch = build_prompts(real_model, "animal-plant", 6, 8, seed=0)
    res = saliency_flow(real_model, batch, "label_words", keep_examples=0, batch_size=6, progress=False)
    wp, pq = res.flow("S_wp"), res.flow("S_pq")
    assert len(res.layers) == N_LAYERS
    assert wp[FIRST].sum() > pq[FIRST].sum()
    assert pq[LAST].sum() > wp[LAST].sum()
    # per prompt too: S_pq is larger in most last-third layers of every prompt
    wp_p, pq_p = res.per_prompt[0], res.per_prompt[1]
    assert bool(((pq_p[LAST] > wp_p[LAST]).float().mean(0) > 0.5).all())


def test_isolating_label_words_early_breaks_the_top_words_not_late(real_model):
    """Label words cut off from the text in layers 0-9: the top-5 vocabulary changes far more than when as
    many random positions are cut off, or when the label words are cut off in layers 20-29."""
    batch = build_prompts(real_model, "animal-plant", 6, 8, seed=0)
    res = isolate_attention(real_model, batch, [FIRST, LAST], "label_from_text", restrict_to_labels=True,
                            seed=0, progress=False)
    w = {(r, t): float(res.word_loyalty[i, j]) for i, r in enumerate(res.range_names)
         for j, t in enumerate(res.targets)}
    assert w["0-9", "label"] < w["0-9", "random"]
    assert w["0-9", "label"] < w["20-29", "label"]


def test_isolating_answers_early_changes_a_knowledge_prediction(real_model):
    """present-past: cutting the demo answers off from their inputs in layers 0-9 changes the predicted
    token more often than cutting off random positions; in layers 20-29 it changes it less."""
    batch = build_prompts(real_model, "present-past", 4, 8, seed=0)
    res = isolate_attention(real_model, batch, [FIRST, LAST], "label_from_text", seed=0, progress=False)
    loyal = {(r, t): float(res.loyalty[i, j]) for i, r in enumerate(res.range_names)
             for j, t in enumerate(res.targets)}
    assert loyal["0-9", "label"] < loyal["0-9", "random"]
    assert loyal["0-9", "label"] < loyal["20-29", "label"]


def test_fixed_demonstrations_are_shared_and_held_out(real_model, script):
    """The re-weighting data: one demo per class, the same in every prompt; train and test queries disjoint
    from each other and from the demos."""
    d = script.fixed_demo_batches(real_model, "animal-plant", 0, 1, 4)
    train, test = d["train"], d["test"]
    assert sorted(y for _, y in d["demos"]) == ["animal", "plant"]
    assert all(p == d["demos"] for p in train.demos + test.demos)
    assert len(train) == 8 and len(set(train.queries)) == 8
    assert not set(train.queries) & set(test.queries)
    assert not {x for x, _ in d["demos"]} & (set(train.queries) | set(test.queries))
    assert (train.positions("answers").positions == train.positions("answers").positions[:1]).all()


def test_reweighting_lowers_the_held_out_loss(real_model, script):
    """Anchor re-weighting trained on 8 prompts (4 per class, the paper's size; here 2 full-batch Adam steps
    instead of the paper's 80 single-prompt ones) lowers the loss on held-out prompts with the same
    demonstrations."""
    d = script.fixed_demo_batches(real_model, "animal-plant", 0, 1, 4)
    test = d["test"].select(list(range(8)))
    res = train_anchor_reweighting(real_model, d["train"], test, lr=0.1, epochs=2, batch_size=8, seed=0,
                                   progress=False)
    assert res.train_loss_after < res.train_loss_before
    assert res.eval_loss_after < res.eval_loss_before
    assert res.beta.abs().sum() > 0
