"""Cheng & Zhang's distributed templates on SmolLM2-135M (docs/results/real/cheng_zhang.md), small N.

Measured with scripts/real_cheng_zhang.py (N = 50, seed 0, 8 demos) on present-past -> uppercase
(its transfer tokens, ` gave` vs ` GIVE`, cannot be confused; uppercase -> first-letter can: ` R`
vs ` r`): all demo tokens patched at a middle layer transfer the source task while the last demo
answer alone transfers nothing, and late (layer 27) all demo tokens transfer nothing (the task has
left the demos); random vectors of the same norm transfer nothing; the query is necessary where a
single demo answer is not; a task-identity probe reads the task at the separator ` ->` (the same
token in every task) from the middle layers, at layer 0 not at all.
"""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core.pairs import paired_batches
from icl_circuits.methods.interchange import interchange
from icl_circuits.methods.necessity import necessity
from icl_circuits.methods.probing import probe_by_layer

pytestmark = pytest.mark.real_model

N, DEMOS = 12, 8
MID, LATE = 12, 27  # a middle layer where all demo tokens transfer; a late one where nothing does
NEC = 18  # where noise at the query costs most (of layers 0, 6, ..., 24)


@pytest.fixture(scope="module")
def pair(real_model):
    return paired_batches(real_model, "present-past", "uppercase", N, DEMOS, seed=0)


def test_all_demo_tokens_transfer_mid_depth_single_position_does_not(real_model, pair):
    src, tgt = pair
    demo = interchange(real_model, src, tgt, "demo_tokens", [MID, LATE], progress=False)
    single = interchange(real_model, src, tgt, "answer_-1", [MID], progress=False)
    t = demo.rate("transfer")
    assert demo.baseline["transfer"] == 0.0
    assert t[0] >= 0.5, f"all demo tokens at layer {MID} should carry the task: {t.tolist()}"
    assert t[1] <= 0.1, f"at layer {LATE} the query already holds the task: {t.tolist()}"
    assert demo.rate("preserve")[1] >= 0.5  # late patching leaves the target task in place
    assert single.rate("transfer")[0] <= 0.1
    assert single.rate("preserve")[0] >= 0.5
    # words of several tokens (` BOTTLE`): the set is ragged and only real tokens are written
    assert tgt.positions("demo_tokens").ragged and demo.meta["written_fraction"] < 1.0


def test_norm_matched_noise_and_all_answer_tokens(real_model, pair):
    src, tgt = pair
    noise = interchange(real_model, src, tgt, "demo_tokens", [MID], control="norm_matched_noise", progress=False)
    assert noise.rate("transfer")[0] <= 0.1
    # every token of every demo answer (ragged: ` GIVE` is 1 token, ` BOTTLE` 3) runs and writes exactly
    # the target tokens whose column (demo, offset) some source prompt has (past tenses are shorter)
    ans = interchange(real_model, src, tgt, "answer_tokens", [MID], progress=False)
    t_pos, s_pos = tgt.positions("answer_tokens"), src.positions("answer_tokens")
    has = dict(zip(s_pos.names, s_pos.mask.any(0).tolist()))
    expected = t_pos.mask & torch.tensor([has.get(name, False) for name in t_pos.names])
    assert t_pos.ragged and 0 < expected.float().mean() < t_pos.mask.float().mean()
    assert ans.meta["written_fraction"] == pytest.approx(float(expected.float().mean()))


def test_query_is_necessary_single_demo_answer_is_not(real_model):
    # measured (N = 50, the script's first-letter targets, noise as large as the activation): the query
    # costs 0.70 of accuracy at layer 18, the last demo answer 0.08
    _, tgt = paired_batches(real_model, "uppercase", "first-letter", N, DEMOS, seed=0)
    q = necessity(real_model, tgt, "query", [NEC], how="noise", seed=0, progress=False)
    a = necessity(real_model, tgt, "answer_-1", [NEC], how="noise", seed=0, progress=False)
    assert q.baseline >= 0.5
    assert float(q.drop[0]) >= 0.4
    assert float(q.drop[0]) >= float(a.drop[0]) + 0.3


def test_probe_reads_task_at_separator_from_context(real_model):
    data = {t: build_prompts(real_model, t, N, DEMOS, seed=0) for t in ("uppercase", "first-letter", "singular-plural")}
    p = probe_by_layer(real_model, data, "separator_-1", [0, MID], seed=0, progress=False)
    # layer 0 is the embedding of ` ->`, identical in every task: nothing to read
    assert p.accuracy[0] <= p.chance + 0.1
    assert p.accuracy[1] >= p.chance + 0.4
    assert torch.isfinite(p.control).all()
