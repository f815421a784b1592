"""Task vectors on SmolLM2-135M (docs/results/real/task_vectors.md), small N.

Measured with scripts/real_task_vectors.py. The regression behind the page: without a start
token a zero-shot prompt ``x ->`` begins with its query word, which is then the attention sink of
this Llama-family model; the vanilla task vector transferred 0.00 at every layer and learned
vectors did not train. ``load_model("smollm2-135m")`` now names ``<|endoftext|>`` (the pretraining
document separator) as the BOS and ``task_vector_prompts`` prepends it by default.
"""

from __future__ import annotations

import pytest

from icl_circuits import build_prompts
from icl_circuits.core.pairs import task_vector_prompts
from icl_circuits.methods.task_vectors import vanilla_task_vector
from icl_circuits.methods.vectors import evaluate_vector

pytestmark = pytest.mark.real_model

TASK, N = "present-past", 16
EARLY, LATE = 3, 21  # vanilla vectors transfer late in this model (layer 21 of 30), not early


@pytest.fixture(scope="module")
def prompts(real_model):
    return task_vector_prompts(real_model, TASK, n_demos=8, n_prompts=N, seed=0)


def test_smollm2_bos_is_the_pretraining_document_separator(real_model, prompts):
    tok = real_model.tokenizer
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id == 0
    assert not real_model.cfg.default_prepend_bos  # other analyses' prompts are unchanged
    for b in (prompts.dummy_query, prompts.icl, prompts.shuffled, prompts.zero_shot, prompts.icl_eval):
        assert (b.tokens[:, 0] == 0).all(), b.variant
    plain = task_vector_prompts(real_model, TASK, n_demos=8, n_prompts=2, seed=0, prepend_bos=False)
    assert (plain.zero_shot.tokens[:, 0] != 0).all()
    assert int(plain.zero_shot.final_positions[0]) == int(prompts.zero_shot.final_positions[0]) - 1


def test_vanilla_task_vector_transfers_late_only_with_a_start_token(real_model, prompts):
    tv = vanilla_task_vector(real_model, prompts.dummy_query, [EARLY, LATE])
    with_bos = evaluate_vector(real_model, tv, prompts.zero_shot)
    assert with_bos.baseline == 0.0  # zero-shot: the model does not do the task
    assert with_bos.values[1] >= 0.5, with_bos.values.tolist()
    assert with_bos.values[0] == 0.0, with_bos.values.tolist()  # the wrong (early) layer does nothing
    # the same vector (extracted with BOS) into prompts whose query word is the first token: nothing
    no_bos = build_prompts(real_model, TASK, N, 0, seed=1, variant="zero_shot", prepend_bos=False)
    assert evaluate_vector(real_model, tv, no_bos, layers=[LATE]).values[0] <= 0.1


def test_ltv_training_warns_when_the_query_is_the_first_token(real_model):
    from icl_circuits.methods.learned import train_task_vector

    plain = build_prompts(real_model, TASK, 4, 0, seed=3, variant="zero_shot", prepend_bos=False)
    with pytest.warns(UserWarning, match="attention sink"):
        tv = train_task_vector(real_model, plain, 29, n_val=0, epochs=1, batch_size=4, progress=False)
    assert tv.meta["resid_norm"] > 0
    with_bos = build_prompts(real_model, TASK, 4, 0, seed=3, variant="zero_shot", prepend_bos=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_task_vector(real_model, with_bos, 29, n_val=0, epochs=1, batch_size=4, progress=False)


#: The top-10 function-vector heads (layer, head) of scripts/real_task_vectors.py (CIE averaged over
#: the 4 solved tasks, seed 0, N = 50): all in layers 14-24 of 30.
FV_HEADS = [(20, 5), (24, 4), (20, 6), (14, 1), (17, 5), (23, 3), (22, 5), (17, 3), (18, 6), (18, 2)]


def test_function_vector_transfers_in_the_middle_not_at_the_end(real_model):
    import torch

    from icl_circuits.methods.function_vectors import fv_from_heads, mean_head_outputs
    from icl_circuits.methods.vectors import TaskVector

    p = task_vector_prompts(real_model, "singular-plural", n_demos=8, n_prompts=12, seed=0)
    fv = fv_from_heads(real_model, mean_head_outputs(real_model, p.icl), FV_HEADS)
    tv = TaskVector(torch.stack([fv, fv]), [16, 29], "add", "function", p.icl.task, model=real_model.cfg.model_name)
    r = evaluate_vector(real_model, tv, p.zero_shot, layers=[16, 29])
    assert r.baseline == 0.0
    assert r.values[0] >= 0.5, r.values.tolist()  # added in the middle (layer 16): the model pluralizes
    assert r.values[1] <= 0.1, r.values.tolist()  # added after the heads that read it: nothing
    neg = TaskVector((-fv)[None], [16], "add", "function", p.icl.task, model=real_model.cfg.model_name)
    assert evaluate_vector(real_model, neg, p.zero_shot).values[0] == 0.0  # the sign matters
