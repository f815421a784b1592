"""TaskVector contract and evaluate_vector: identities, prefix reuse equals the naive run, errors."""

from __future__ import annotations

import pytest
import torch

from icl_circuits.core import runner
from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.core.metrics import correct
from icl_circuits.methods.vectors import TaskVector, evaluate_vector
from icl_circuits.methods.sweeps import SweepResult


@pytest.fixture(scope="module")
def zs(tiny_model):
    return build_prompts(tiny_model, "antonym", 8, 0, seed=0, variant="zero_shot")


def test_replacing_with_own_activation_is_the_identity(tiny_model, zs):
    one = zs.select([0])
    own = runner.read_resid(tiny_model, one, one.positions("final").positions)[:, 0, 0]  # [layer, d]
    tv = TaskVector(own, list(range(tiny_model.cfg.n_layers + 1)), "replace", "own", "antonym", model="tiny")
    res = evaluate_vector(tiny_model, tv, one)
    assert torch.all(res.values == res.baseline)


def test_prefix_reuse_equals_naive_injection(tiny_model, zs):
    torch.manual_seed(0)
    v = torch.randn(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model) * 20
    tv = TaskVector(v, list(range(tiny_model.cfg.n_layers + 1)), "add", "random", "antonym", model="tiny")
    res = evaluate_vector(tiny_model, tv, zs)
    pos = zs.positions("final").positions
    for i, l in enumerate(tv.layers):
        name = iv.resid_name(tiny_model, l)
        with tiny_model.hooks(fwd_hooks=[(name, iv.add_hook(pos, v[i]))]):
            logits = tiny_model(zs.tokens)[torch.arange(len(zs)), zs.final_positions]
        # 0/1 outcomes compared exactly: resumed vs full forward differ by ~1e-6, |gold - best other| >= 0.9 here
        assert torch.equal(res.per_prompt[i], correct(logits, zs.answer_tokens).float())


def test_save_load_round_trip_and_width_check(tiny_model, tmp_path):
    from tests.conftest import make_tiny_model

    tv = TaskVector(torch.randn(2, 32), [0, 1], "add", "function", "antonym", model="tiny", meta={"heads": [[1, 2]]})
    back = TaskVector.load(tv.save(tmp_path / "tv"))
    assert torch.equal(back.vectors, tv.vectors) and back.layers == [0, 1] and back.meta == tv.meta
    with pytest.raises(ValueError, match="width 32 but the model's d_model is 48"):
        back.check_model(make_tiny_model(d_model=48))
    with pytest.raises(ValueError, match="vectors must have shape"):
        TaskVector(torch.randn(3, 32), [0, 1], "add", "x", "t", model="m")
    df = SweepResult.load(evaluate_vector(tiny_model, tv, build_prompts(tiny_model, "antonym", 4, 0,
                                                                        variant="zero_shot")).save(tmp_path / "s")).to_dataframe()
    assert list(df.layer) == [0, 1] and {"value", "low", "high"} <= set(df.columns)
