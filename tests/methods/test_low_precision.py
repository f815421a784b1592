"""Every main analysis runs end to end on a bfloat16 (and float16) model, on the test device.

The bundled toy-icl is loaded in the low-precision dtype on ``ICL_CIRCUITS_TEST_DEVICE`` (default
CPU) and each analysis runs on a few prompts. What must hold whatever the dtype: the analysis
finishes, its result tensors are on the CPU (the runner's contract) and finite wherever float32's
are (some results pad with NaN, e.g. dPCA's missing axes), and the model
comes back untouched (same dtype, same device: nothing silently upcasts or moves it). How much the
numbers move against float32 is measured by ``bench/bench_dtypes.py`` (docs/performance.md); one
test here checks a number against float32 within bfloat16's precision.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from icl_circuits import build_prompts, load_model
from icl_circuits.core.pairs import paired_batches
from icl_circuits.methods import (
    accuracy, anchors, attribution, function_vectors, heads, interchange, key_heads, learned, logit_lens, necessity,
    ov_circuits, patching, probing, propagation, reweighting, saliency, task_vectors, vectors,
)
from icl_circuits.methods.dpca import analysis as dpca
from tests.conftest import TEST_DEVICE

TASK = "antonym"


def _load(dtype: torch.dtype):
    try:
        return load_model("toy-icl", device=TEST_DEVICE, dtype=dtype)
    except FileNotFoundError as e:  # a tree whose toy weights are not trained yet
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def bf16():
    return _load(torch.bfloat16)


@pytest.fixture(scope="module")
def f32():
    return _load(torch.float32)


@pytest.fixture(scope="module")
def inputs(bf16):
    m = bf16
    src, tgt = paired_batches(m, "english-french", TASK, 6, 3, seed=0)
    dq = build_prompts(m, TASK, 6, 3, seed=0, variant="dummy_query")
    return {
        "icl": build_prompts(m, TASK, 6, 3, seed=0),
        "zs": build_prompts(m, TASK, 6, 0, seed=1, variant="zero_shot"),
        "zs2": build_prompts(m, TASK, 6, 0, seed=3, variant="zero_shot"),
        "shuffled": build_prompts(m, TASK, 6, 3, seed=0, variant="shuffled_labels"),
        "random": build_prompts(m, TASK, 6, 3, seed=0, variant="random_answers"),
        "equals": build_prompts(m, TASK, 6, 3, seed=1, template="{x}={y}"),
        "labels": build_prompts(m, "letter-string", 12, 4, seed=0),
        "src": src, "tgt": tgt,
        "tv": task_vectors.vanilla_task_vector(m, dq, [1, 2]),
        "ltv": learned.train_task_vector(m, build_prompts(m, TASK, 12, 0, seed=2, variant="zero_shot"), 2, n_val=4,
                                         epochs=1, progress=False),
    }


ANALYSES = {
    "accuracy": lambda m, b: accuracy.accuracy_by_demos(m, accuracy.demo_sweep(m, TASK, [0, 2], 6, seed=0)),
    "saliency_flow": lambda m, b: saliency.saliency_flow(m, b["icl"], loss="full_vocab", progress=False),
    "task_vector": lambda m, b: vectors.evaluate_vector(m, b["tv"], b["zs"]),
    "local_task_vectors": lambda m, b: task_vectors.local_task_vectors(m, b["icl"], [1, 2], task=TASK),
    "function_vector": lambda m, b: function_vectors.function_vector(m, b["icl"], b["shuffled"], top_k=3),
    "learned_task_vector": lambda m, b: vectors.evaluate_vector(m, b["ltv"], b["zs"]),
    "interchange": lambda m, b: interchange.interchange(m, b["src"], b["tgt"], "answers", layers=[0, 2], progress=False),
    "necessity": lambda m, b: necessity.necessity(m, b["icl"], "query", layers=[0, 2], progress=False),
    "probing": lambda m, b: probing.probe_by_layer(m, {"colon": b["icl"], "equals": b["equals"]}, "separator",
                                                   layers=[1], cv=2, progress=False),
    "dpca": lambda m, b: dpca.dpca_by_layer(m, b["labels"], layers=[2], regularizer=1e-3, n_null=1, seed=0,
                                                 progress=False),
    "propagation": lambda m, b: propagation.propagation_by_layer(m, b["zs"], b["zs2"], b["tv"], n_vectors=24,
                                                                 progress=False),
    "attention_isolation": lambda m, b: anchors.isolate_attention(m, b["labels"], [[0, 1]], progress=False),
    "anchor_reweighting": lambda m, b: reweighting.train_anchor_reweighting(m, b["labels"], b["labels"], epochs=1,
                                                                            progress=False),
    "logit_lens": lambda m, b: logit_lens.logit_lens(m, b["icl"]),
    "patch_grid": lambda m, b: patching.patch_grid(m, b["icl"], b["random"]),
    "head_ablation_scan": lambda m, b: heads.head_ablation_scan(m, b["icl"], "mean", metric="logit_diff_to_mean",
                                                                progress=False),
    "head_attribution_atp_star": lambda m, b: attribution.head_attribution(
        m, b["icl"], "zero", metric="logit_diff_to_mean", qk_fix=True, graddrop=True),
    "ov_reconstruction": lambda m, b: ov_circuits.reconstruct(m, b["zs"], b["ltv"], 2),
    "key_head_ablation": lambda m, b: key_heads.key_head_ablation(m, b["zs"], b["ltv"], 2, ks=[1], n_random=2,
                                                                  progress=False),
}


def _tensors(result) -> dict[str, torch.Tensor]:
    """Every tensor field of a result (dataclass) or a bare tensor."""
    if isinstance(result, torch.Tensor):
        return {"value": result}
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
            if isinstance(getattr(result, f.name), torch.Tensor)}


def _state(model) -> set[tuple[torch.dtype, str]]:
    return {(p.dtype, str(p.device)) for p in model.parameters()}


@pytest.mark.parametrize("name", list(ANALYSES))
def test_analysis_runs_in_bfloat16(bf16, f32, inputs, name):
    """Each analysis finishes on a bf16 model with CPU results of float32's shapes, finite where
    float32's are, leaving the model in bf16 where it was."""
    before = _state(bf16)
    assert before == {(torch.bfloat16, str(bf16.W_E.device))}
    tensors = _tensors(ANALYSES[name](bf16, inputs))
    assert _state(bf16) == before, f"{name} changed the model's dtype or device"
    reference = _tensors(ANALYSES[name](f32, inputs))
    assert tensors and tensors.keys() == reference.keys(), f"{name} returned other fields in bfloat16"
    for field, t in tensors.items():
        ref = reference[field]
        assert t.device.type == "cpu", f"{name}.{field} is on {t.device}"
        assert t.shape == ref.shape, f"{name}.{field}: shape {tuple(t.shape)} in bf16, {tuple(ref.shape)} in float32"
        if t.is_floating_point():
            assert torch.equal(torch.isfinite(t), torch.isfinite(ref)), f"{name}.{field} has non-finite values in bf16"


def test_float16_runs_the_scan_and_attribution_end_to_end():
    """float16 (narrower range than bf16) through the two analyses with gradients and resumed runs."""
    m = _load(torch.float16)
    batch = build_prompts(m, TASK, 6, 3, seed=0)
    scan = heads.head_ablation_scan(m, batch, "zero", metric="logit_diff_to_mean", progress=False)
    atp = attribution.head_attribution(m, batch, "zero", metric="logit_diff_to_mean")
    assert torch.isfinite(scan.per_prompt).all() and torch.isfinite(atp.per_prompt).all()
    assert {p.dtype for p in m.parameters()} == {torch.float16}


def test_bfloat16_head_scan_matches_float32_within_its_precision(bf16, f32):
    """The exact head scan in bf16 gives float32's per-head effects to within bf16's ~3 significant
    digits accumulated over 4 blocks (|diff| <= 0.05 * the clean logit difference), and the same
    most important head: low precision changes digits, not the finding."""
    batch = build_prompts(f32, TASK, 16, 8, seed=0)
    kw = dict(metric="logit_diff_to_mean", progress=False)
    a = heads.head_ablation_scan(f32, batch, "zero", **kw)
    b = heads.head_ablation_scan(bf16, batch, "zero", **kw)
    scale = float(a.clean.abs().mean())
    assert float((a.effect - b.effect).abs().max()) <= 0.05 * scale
    assert int(a.effect.abs().argmax()) == int(b.effect.abs().argmax())
    assert float((a.effect - b.effect).abs().max()) > 0  # the run really was in bf16
