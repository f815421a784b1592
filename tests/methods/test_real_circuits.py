"""Circuits of a learned task vector on SmolLM2-135M (scripts/real_circuits.py, docs/results/real/circuits.md).

Small N, one injection layer. The decomposition tests hold for any vector (identities that break if a hook
sits at the wrong layer or position); the claim tests use the LTV the script trained on its headline seed
(tests/methods/data/circuits_ltv.{json,safetensors}) and assert what the page measured.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.methods.ov_circuits import ov_contributions, reconstruct
from icl_circuits.methods.propagation import final_deltas
from icl_circuits.methods.vectors import TaskVector

pytestmark = pytest.mark.real_model

TASK = "present-past"
LTV_PATH = Path(__file__).parent / "data" / "circuits_ltv"


@pytest.fixture(scope="module")
def model(real_model):
    return real_model


@pytest.fixture(scope="module")
def zero_shot(model):
    """12 zero-shot prompts (`<|endoftext|>leave ->`), as the script builds them, on seeds it does not use."""
    return build_prompts(model, TASK, 12, 0, seed=77, variant="zero_shot", prepend_bos=True)


@pytest.fixture(scope="module")
def ltv(model):
    return TaskVector.load(LTV_PATH)


@pytest.fixture(scope="module")
def rec(model, zero_shot, ltv):
    return reconstruct(model, zero_shot, ltv, ltv.layers[0])


def test_decomposition_is_exact_and_matches_the_propagation_engine(model, zero_shot):
    """delta h_L = theta + heads + MLPs exactly, and the OV module's measured delta equals the one the
    propagation module measures with its own runner path (a hook at the wrong layer or position in either
    would break the agreement: the same vector one block later changes the output differently)."""
    b = zero_shot.select(range(6))
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(model.cfg.d_model, generator=g)
    theta = 50 * theta / theta.norm()
    ov = ov_contributions(model, b, theta, 12)
    scale = float(ov.total.norm(dim=-1).max())
    assert scale > 1.0  # the vector does change the final residual
    assert ov.identity_error() < 1e-4 * scale
    torch.testing.assert_close(ov.direct, theta.expand_as(ov.direct))  # injected at the final position itself
    other = final_deltas(model, b, 12, theta[None])[0]
    torch.testing.assert_close(ov.total, other, atol=1e-3 * scale, rtol=1e-3)
    later = final_deltas(model, b, 13, theta[None])[0]
    assert (later - ov.total).norm() > 0.05 * ov.total.norm()


def test_full_reconstruction_is_the_vector_run(ltv, rec):
    """theta + every head's and MLP's exact change, added at the final residual, gives the vector run's
    accuracy prompt by prompt (the reconstruction adds at the right place, with the right sign)."""
    layer = ltv.layers[0]
    i_full = rec.conditions.index(f"theta at layer {layer}")
    i_sum = rec.conditions.index("theta + heads + MLPs (exact) at final")
    # 0/1 outcomes compared exactly: the two paths differ by float32 rounding only
    assert torch.equal(rec.per_prompt[i_full], rec.per_prompt[i_sum])
    assert float(rec.values[i_full]) > float(rec.values[0])  # the LTV moves the output above zero-shot


def test_the_heads_alone_do_not_carry_the_layer0_vector(ltv, rec):
    """Measured on the page (claim 1, not reproduced at the headline layer 0): θ plus every head's change,
    added at the final residual, recovers little of the LTV's accuracy; adding the MLPs' changes recovers
    all of it. If the reconstruction added the heads' vectors at the wrong place, or the decomposition
    attributed the MLPs' share to heads, the first would not stay low while the second is exact."""
    layer = ltv.layers[0]
    assert layer == 0
    acc = dict(zip(rec.conditions, rec.values.tolist()))
    full = acc[f"theta at layer {layer}"]
    assert full >= 0.75 and acc["no vector"] == 0.0
    assert acc["theta + heads (OV) at final"] <= 0.25 * full
    assert acc["theta + heads (exact) at final"] <= 0.25 * full
    assert acc["theta at final"] <= 0.25 * full
    assert acc["theta + heads + MLPs (exact) at final"] == full
