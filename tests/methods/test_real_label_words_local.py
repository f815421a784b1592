"""Label words as local task vectors (arXiv 2406.16007) on SmolLM2-135M: the measured results of
scripts/real_label_words_local.py (docs/results/real/label_words_local.md) at small N.

Each test states what was measured at N=50 and asserts it on <= 16 prompts, in a form that a wrong
position set, a hook at the wrong layer or a swapped factor would break."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core.pairs import random_answer_twins
from icl_circuits.methods.dpca.analysis import dpca_from_states
from icl_circuits.methods.dpca.states import collect_label_states
from icl_circuits.methods.task_vectors import local_task_vectors

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    import scipy.linalg  # noqa: F401  (load the BLAS libraries before limiting them)
    import sklearn.covariance  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def test_animal_plant_label_at_answer_position_is_the_token_and_at_separator_is_computed(real_model):
    """Measured (N=50): at the demo answer position the label share of the dPCA condition-mean
    variance is ~1.000 from layer 1 on (the position holds the label word itself: token identity);
    at the separator just before it the label share starts low (the input has not been classified
    yet) and the label clusters move apart with depth. A position set shifted by one token, or the
    factors swapped, breaks both halves."""
    b = build_prompts(real_model, "animal-plant", 16, 8, seed=1, prepend_bos=True)
    share = {}
    dist = {}
    for pos in ("answer", "separator"):
        st = collect_label_states(real_model, b, [1, 20], pos)
        r = dpca_from_states(st, regularizer=1e-2, n_null=0, progress=False)
        share[pos] = r.variance_table()["label"]
        dist[pos] = r.distance_table("full")["label"]
    assert share["answer"][1] > 0.99  # token identity
    assert share["separator"][1] < 0.3  # not yet computed
    assert share["separator"][20] > 2 * share["separator"][1]
    assert dist["separator"][20] > 3 * dist["separator"][1]


def test_singular_plural_local_vectors_carry_the_task_until_mid_depth_only_at_answer_positions(real_model):
    """Measured (12 prompts, seed 1): random-answer demos 0.50, ICL 1.00; the ICL prompt's states
    at the demo answer positions patched into the twin at layer 15 restore 1.00, at layer 24 no
    longer (0.50: the query has read the answers by then); the same patch at the separator
    positions restores nothing. A hook at the wrong layer or on the wrong positions breaks it."""
    b = build_prompts(real_model, "singular-plural", 12, 8, seed=1, prepend_bos=True)
    ans = local_task_vectors(real_model, b, [15, 24])
    sep = local_task_vectors(real_model, b, [15], positions="separator")
    assert ans.meta["icl"] >= 0.9 and ans.baseline <= 0.7
    assert ans.values[0] >= 0.9  # layer 15: restored
    assert ans.values[1] <= ans.baseline + 0.15  # layer 24: gone
    assert sep.values[0] <= sep.baseline + 0.15  # separators do not carry it


def test_random_answer_twins_start_like_their_icl_prompts(real_model):
    """Regression: SmolLM2 prompts built with prepend_bos=True (task_vector_prompts' default) got
    twins without BOS, every twin was one token off and all were dropped (NoLengthMatchedAnswers)."""
    bos = real_model.tokenizer.bos_token_id
    for prepend in (True, False):
        b = build_prompts(real_model, "singular-plural", 6, 8, seed=1, prepend_bos=prepend)
        icl, twin, dropped = random_answer_twins(real_model, b, seed=1)
        assert len(twin) == 6 and dropped == {"no_match": 0, "tokenization": 0}
        assert bool((twin.tokens[:, 0] == bos).all()) is prepend
        assert torch.equal(twin.answer_spans, icl.answer_spans)
