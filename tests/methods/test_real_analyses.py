"""Saliency, anchors, task vectors and probes: one small run each on both bundled real models
(SmolLM2-135M, Gemma 3 270M; ``pytest -m real_model``).

Real tokenizers (multi-token label words, length-matched random answers), grouped-query attention, and
on Gemma ``<bos>`` first, one key/value head and post-attention norms: shapes, no errors, and identities
that hold on any model. Few prompts and three layers (0, a third and two thirds of the depth) keep the
file to seconds per model after it is loaded.
"""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts, evaluate_vector, final_logits
from icl_circuits.methods.anchors import isolate_attention
from icl_circuits.methods.reweighting import reweighted_logits
from icl_circuits.methods.probing import probe_by_layer
from icl_circuits.methods.saliency import label_candidates, saliency_flow
from icl_circuits.core.pairs import random_answer_twins, task_vector_prompts
from icl_circuits.methods.function_vectors import head_cie
from icl_circuits.methods.task_vectors import (
    compare_task_vectors, local_task_vectors, vanilla_task_vector,
)
from icl_circuits.core.tasks import CategorizationTask

pytestmark = pytest.mark.real_model

TEMPLATE = "{x} -> {y}"
@pytest.fixture(scope="module")
def model(any_real_model):
    """SmolLM2-135M-Instruct, then Gemma 3 270M (session fixtures of tests/conftest.py: each skips where its
    wheel is missing)."""
    return any_real_model


def _layers(model) -> list[int]:
    """Layer 0, a third and two thirds of the depth (SmolLM2: 0, 10, 20; Gemma: 0, 6, 12)."""
    n = model.cfg.n_layers
    return [0, round(n / 3), round(2 * n / 3)]


@pytest.fixture(scope="module")
def uneven_labels(model):
    """number (>= 50?) named by "aardvark" (several tokens: SmolLM2 ' a' 'ard' 'v' 'ark') and "zebra" (one)."""
    task = CategorizationTask("number-aardvark", "a number -> >= 50", [str(i) for i in range(100)],
                              lambda x: int(int(x) >= 50), 2, ("aardvark", "zebra"))
    batch = build_prompts(model, task, 2, 4, template=TEMPLATE, seed=0)
    width = batch.answer_spans[..., 1] - batch.answer_spans[..., 0]
    assert int(width.max()) > 1 and int(width.min()) == 1  # both kinds of label word are present
    return task, batch


def test_saliency_on_multi_token_label_words(model, uneven_labels):
    """The label word is its first token; flows are finite, and in the last block only the final
    position's attention reaches the logits, so S_wp (label rows) is exactly zero there."""
    _, batch = uneven_labels
    first = [model.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("aardvark", "zebra")]
    assert sorted(label_candidates(batch)[0].tolist()) == sorted(first)
    res = saliency_flow(model, batch, progress=False)
    L = model.cfg.n_layers
    assert res.flows.shape == (3, L) and torch.isfinite(res.flows).all() and (res.flows >= 0).all()
    assert res.flow("S_wp")[L - 1] == 0 and res.flow("S_pq")[L - 1] > 0
    assert res.flows[:, : L - 1].sum() > 0


def test_anchor_identities(model, uneven_labels):
    """Isolating nothing and re-weighting by exp(0) change no prediction and no logit."""
    _, batch = uneven_labels
    iso = isolate_attention(model, batch, [[]], control=False, progress=False)
    assert float(iso.loyalty[0, 0]) == 1.0 and float(iso.accuracy[0, 0]) == iso.baseline_accuracy
    beta = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, batch.n_demos)
    assert torch.allclose(reweighted_logits(model, batch, beta), final_logits(model, batch), atol=1e-5)


def test_vanilla_vector_of_a_prompts_own_state_changes_nothing(model):
    """theta_l of a one-prompt batch, put back into that prompt at layer l, is the identity."""
    one = build_prompts(model, "antonym", 1, 4, template=TEMPLATE, seed=0, variant="dummy_query")
    tv = vanilla_task_vector(model, one, layers=_layers(model))
    assert tv.vectors.shape == (3, model.cfg.d_model)
    res = evaluate_vector(model, tv, one, metric="gold_probability")
    assert res.layers == _layers(model) and (res.values - res.baseline).abs().max() <= 1e-5


def test_head_cie_of_a_prompt_into_itself_is_zero(model):
    """A head's mean output over one prompt is its own output: patching it in changes nothing."""
    one = build_prompts(model, "antonym", 1, 4, template=TEMPLATE, seed=1)
    res = head_cie(model, one, one, layers=_layers(model)[1:])
    assert res.values.shape == (2, model.cfg.n_heads) and res.values.abs().max() <= 1e-5


def test_local_vectors_on_length_matched_twins(model, uneven_labels):
    icl = build_prompts(model, "antonym", 2, 4, template=TEMPLATE, seed=2)
    kept, twin, dropped = random_answer_twins(model, icl, "antonym", seed=2)
    assert torch.equal(kept.answer_spans, twin.answer_spans) and torch.equal(kept.final_positions, twin.final_positions)
    assert sum(dropped.values()) + len(kept) == 2
    res = local_task_vectors(model, icl, _layers(model))
    assert res.layers == _layers(model) and res.per_prompt.shape == (3, len(kept)) and res.meta["dropped"] == dropped
    task, _ = uneven_labels  # no label word has a length-matched alternative: local is skipped, not fatal
    with pytest.warns(UserWarning, match="local task vectors skipped"):
        df = compare_task_vectors(model, task_vector_prompts(model, task, 4, 2, seed=0, template=TEMPLATE),
                                  methods=("local",)).to_dataframe()
    assert set(df.method) == {"zero-shot", "icl"} and "local" in df.attrs["skipped"]


def test_task_identity_probe(model):
    """At layer 0 the final position holds only the separator's embedding, the same in every prompt:
    the probe cannot beat chance there."""
    data = {t: build_prompts(model, t, 4, 4, template=TEMPLATE, seed=0) for t in ("antonym", "present-past")}
    res = probe_by_layer(model, data, "final", _layers(model), cv=2, progress=False)
    assert res.accuracy.shape == (3,) and res.predictions.shape == (3, 8) and res.layers == _layers(model)
    assert float(res.accuracy[0]) <= res.chance
    ans = probe_by_layer(model, data, "answer", _layers(model)[2:], cv=2, shuffle_control=False, progress=False)
    assert ans.labels.shape == (8 * 4,) and 0 <= float(ans.accuracy[0]) <= 1
