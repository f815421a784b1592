"""Attention isolation (Wang et al. 2023): masks, the runner path, the random control, results."""

from __future__ import annotations

import pytest
import torch

from icl_circuits.core import interventions as iv
from icl_circuits.core.runner import run_final_logits
from icl_circuits.methods.anchors import IsolationResult, isolate_attention, isolation_mask, random_control_positions
from icl_circuits import build_prompts


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


def test_empty_layer_range_changes_nothing(tiny_model, batch):
    res = isolate_attention(tiny_model, batch, [], progress=False)
    assert res.range_names == ["none"] and torch.all(res.loyal == 1) and torch.all(res.word_loyalty == 1)
    assert torch.all(res.accuracy == res.baseline_accuracy)


@pytest.mark.parametrize("mode", ["label_from_text", "query_from_label"])
def test_isolation_zeroes_exactly_the_blocked_weights(tiny_model, batch, mode):
    mask = isolation_mask(batch, mode)
    name = iv.pattern_name(0)
    with tiny_model.hooks(fwd_hooks=[(iv.attn_scores_name(0), iv.block_attention_hook(mask))]):
        _, cache = tiny_model.run_with_cache(batch.tokens, names_filter=[name])
    pat = cache[name]  # [batch, head, q, k]
    causal = torch.ones(pat.shape[-2:], dtype=torch.bool).tril()[None]
    assert torch.all(pat.permute(1, 0, 2, 3)[:, mask] == 0)
    assert torch.all(pat.permute(1, 0, 2, 3)[:, causal & ~mask] > 0)
    b, p = 0, int(batch.answer_positions[0, 1])
    if mode == "label_from_text":  # the label word keeps itself and BOS, loses the text before it
        assert mask[b, p].nonzero().flatten().tolist() == list(range(1, p))
    else:
        q = int(batch.final_positions[b])
        assert mask[b, q].nonzero().flatten().tolist() == batch.answer_positions[b].tolist()
    assert int(mask.sum()) == int(isolation_mask(batch, mode, "label", keep_bos=False).sum()) - (
        batch.n_demos * len(batch) if mode == "label_from_text" else 0)


def test_random_control_avoids_labels_final_and_bos_and_is_seeded(batch):
    m = isolation_mask(batch, "label_from_text", "random", seed=1)
    rows = m.any(-1)  # [batch, pos]: the isolated positions (those with some earlier text)
    for b in range(len(batch)):
        picked = set(rows[b].nonzero().flatten().tolist())
        assert not picked & set(batch.answer_positions[b].tolist()) and 0 not in picked
        assert int(batch.final_positions[b]) not in picked
    assert torch.equal(m, isolation_mask(batch, "label_from_text", "random", seed=1))
    assert not torch.equal(m, isolation_mask(batch, "label_from_text", "random", seed=2))


def test_isolation_result_rows_and_save(tiny_model, batch, tmp_path):
    res = isolate_attention(tiny_model, batch, [[0], [1], [0, 1]], "query_from_label", progress=False)
    df = IsolationResult.load(res.save(tmp_path / "iso")).to_dataframe()
    assert list(df.layers) == ["0", "0", "1", "1", "0-1", "0-1"] and list(df.target[:2]) == ["label", "random"]
    assert ((df.accuracy_low <= df.accuracy) & (df.accuracy <= df.accuracy_high)).all()




# ----------------------------------------------------------------------------- specs, positions
def test_block_attention_spec_equals_the_raw_hook(tiny_model, batch):
    """The Intervention the analysis hands the runner is the hook the method used to attach itself."""
    m = isolation_mask(batch, "label_from_text")
    spec = run_final_logits(tiny_model, batch, lambda rows, mb: [
        iv.Intervention(iv.Site(l, "attn_scores"), "block_attention", value=m[rows]) for l in (0, 1)], batch_size=4)
    raw = run_final_logits(tiny_model, batch, lambda rows, mb: [
        (iv.attn_scores_name(l), iv.block_attention_hook(m[rows])) for l in (0, 1)], batch_size=4)
    assert torch.equal(spec, raw)  # exact: the same hook on forwards of the same shapes


def test_positions_spec_chooses_what_is_isolated(batch):
    assert torch.equal(isolation_mask(batch, "query_from_label", positions="answers"),
                       isolation_mask(batch, "query_from_label"))
    last = isolation_mask(batch, "query_from_label", positions="answer_-1")
    for b in range(len(batch)):
        q = int(batch.final_positions[b])
        assert last[b, q].nonzero().flatten().tolist() == [int(batch.answer_positions[b, -1])]
    assert int(last.sum()) == len(batch)
    sep = random_control_positions(batch, 2, seed=0, exclude=["answer_tokens", "separators"])
    for b in range(len(batch)):
        assert not set(sep[b].tolist()) & set(batch.separator_positions[b].tolist())
    with pytest.raises(ValueError, match="unknown position set"):
        isolation_mask(batch, positions="labels")


def test_isolate_attention_takes_positions(tiny_model, batch):
    res = isolate_attention(tiny_model, batch, [[0, 1]], "query_from_label", positions="answer_-1", progress=False)
    assert res.meta["positions"] == "answer_-1" and res.provenance["model"] == tiny_model.cfg.model_name
    assert res.correct.shape == (1, 2, len(batch))
