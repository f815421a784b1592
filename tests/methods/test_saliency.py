"""Label words as anchors: saliency flow, attention isolation, anchor re-weighting, figures, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import icl_circuits.cli.common as cli_common
import icl_circuits.cli.main as cli_mod
import icl_circuits.methods.saliency as sal_mod
from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.methods.anchors import isolate_attention, isolation_mask
from icl_circuits.methods.reweighting import reweighted_logits, train_anchor_reweighting
from icl_circuits.methods.saliency import SaliencyResult, flow_masks, saliency_flow, saliency_terms
from icl_circuits.viz import anchors as iso_plots
from icl_circuits.viz import reweighting as rw_plots
from icl_circuits.viz import saliency as plots
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)  # prompts of different lengths


# ----------------------------------------------------------------------------- saliency flow
def _manual_saliency(model, batch):
    """Independent: retain_grad on each layer's pattern, label-word cross-entropy, one backward."""
    pats = []

    def keep(p, hook):
        p.retain_grad()
        pats.append(p)
        return p

    hooks = [(iv.pattern_name(l), keep) for l in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        logits = model(batch.tokens)[torch.arange(len(batch)), batch.final_positions]
    lab = logits.gather(1, batch.label_token_ids)
    gold = (batch.label_token_ids == batch.answer_tokens[:, None]).long().argmax(1)
    (-lab.log_softmax(-1)[torch.arange(len(batch)), gold]).sum().backward()
    return torch.stack([(p * p.grad).sum(1).abs().detach() for p in pats])  # [layer, batch, q, k]


def test_saliency_equals_layer_by_layer_autograd(batch):
    model = make_tiny_model(seed=3)  # a fresh model: the manual check writes .grad on its parameters
    expected = _manual_saliency(model, batch)
    got = saliency_terms(model, batch).sum(2).abs()
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-6


def test_flows_equal_loops_over_pairs(tiny_model, batch):
    res = saliency_flow(tiny_model, batch, progress=False)
    sal = saliency_terms(tiny_model, batch).sum(2).abs()
    for b in (0, 2):
        q, ans = int(batch.final_positions[b]), batch.answer_positions[b].tolist()
        wp = [(p, j) for p in ans for j in range(p)]
        pq = [(q, p) for p in ans]
        ww = [(i, j) for i in range(q + 1) for j in range(i) if (i, j) not in wp and (i, j) not in pq]
        for f, pairs in enumerate((wp, pq, ww)):
            want = torch.stack([sal[:, b, i, j] for i, j in pairs]).mean(0)
            assert torch.allclose(res.per_prompt[f, :, b], want, atol=1e-7)


def test_parameters_get_no_gradient_and_stay_trainable(tiny_model, batch):
    saliency_flow(tiny_model, batch, per_head=True, progress=False)
    assert all(p.grad is None and p.requires_grad for p in tiny_model.parameters())


def test_hooks_removed_and_params_restored_on_error(tiny_model, batch, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(sal_mod, "answer_loss", boom)
    with pytest.raises(RuntimeError, match="boom"):
        saliency_flow(tiny_model, batch, progress=False)
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_final_position_attending_only_to_labels_gives_s_pq_above_s_ww(tiny_model, batch):
    last = tiny_model.cfg.n_layers - 1
    b, p = batch.tokens.shape
    only_labels = torch.zeros(b, p, p, dtype=torch.bool)
    only_labels[torch.arange(b), batch.final_positions] = True
    only_labels[torch.arange(b)[:, None], batch.final_positions[:, None], batch.answer_positions] = False
    with tiny_model.hooks(fwd_hooks=[(iv.attn_scores_name(last), iv.block_attention_hook(only_labels))]):
        res = saliency_flow(tiny_model, batch, "full_vocab", progress=False)
    assert res.flow("S_pq")[last] > 0 and res.flow("S_ww")[last] == 0 and res.flow("S_wp")[last] == 0


def test_padded_batch_equals_prompts_one_at_a_time(tiny_model, batch):
    together = saliency_flow(tiny_model, batch, per_head=True, batch_size=4, progress=False)
    for i in range(len(batch)):
        alone = saliency_flow(tiny_model, batch.select([i]), per_head=True, progress=False)
        assert torch.allclose(together.per_prompt[..., i], alone.per_prompt[..., 0], rtol=1e-4, atol=1e-8)
    n = together.example_final_positions[1] + 1
    alone = saliency_flow(tiny_model, batch.select([1]), progress=False)
    assert torch.allclose(together.matrices[1, :, :n, :n], alone.matrices[0], rtol=1e-4, atol=1e-8)


def test_proportions_sum_to_one_and_head_flows_have_heads(tiny_model, batch):
    res = saliency_flow(tiny_model, batch, proportions=True, per_head=True, progress=False)
    assert torch.allclose(res.flows.sum(0), torch.ones(2)) and res.head_flows.shape == (3, 2, 4)
    assert torch.allclose(res.head_flows.sum(0), torch.ones(2, 4))


def test_flow_masks_partition_the_lower_triangle(batch):
    m = flow_masks(batch)
    assert not (m[0] & m[1]).any() and not (m[0] & m[2]).any() and not (m[1] & m[2]).any()
    q = int(batch.final_positions[0])
    assert int(m[:, 0].sum()) == q * (q + 1) // 2 and not m[:, 0, q + 1 :].any()
    assert not flow_masks(batch, exclude_bos=True)[:, :, :, 0].any()


def test_non_categorization_task_uses_the_answers_in_the_batch(tiny_model):
    ant = build_prompts(tiny_model, "antonym", 4, 2, seed=0)
    cand = sal_mod.label_candidates(ant)
    assert set(cand[0].tolist()) == set(ant.answer_tokens.tolist()) | set(ant.demo_answer_tokens.flatten().tolist())
    assert saliency_flow(tiny_model, ant, progress=False).flows.shape == (3, 2)


def test_save_load_round_trip(tiny_model, batch, tmp_path):
    for per_head in (False, True):
        res = saliency_flow(tiny_model, batch, per_head=per_head, progress=False)
        back = SaliencyResult.load(res.save(tmp_path / f"s{per_head}"))
        assert torch.equal(back.flows, res.flows) and back.example_tokens == res.example_tokens
        assert (back.head_flows is None) == (not per_head)
    assert set(back.to_dataframe().flow) == {"S_wp", "S_pq", "S_ww"}


# ----------------------------------------------------------------------------- errors
def test_batch_without_demos_is_refused(tiny_model):
    zs = build_prompts(tiny_model, "number", 2, 0, variant="zero_shot")
    for call in (lambda: saliency_flow(tiny_model, zs, progress=False),
                 lambda: isolate_attention(tiny_model, zs, [0], progress=False),
                 lambda: train_anchor_reweighting(tiny_model, zs, zs, progress=False)):
        with pytest.raises(ValueError, match="no demonstrations"):
            call()


@pytest.fixture(scope="module")
def bpe_model(gpt2_tokenizer, tmp_path_factory):
    """A random 2-layer model on the byte-level BPE fixture tokenizer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("bpe_tok")
    gpt2_tokenizer.save_pretrained(d)
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=256,
                                  d_vocab=len(tok), act_fn="gelu", normalization_type="LN",
                                  positional_embedding_type="rotary", rotary_dim=8, seed=0, model_name="tiny-bpe")
    return HookedTransformer(cfg, tokenizer=tok).eval()


def _bpe_task(pool):
    from icl_circuits.core.tasks import CategorizationTask

    return CategorizationTask("bpe-number", "a number -> >= 50", [str(i) for i in range(100)],
                              lambda x: int(int(x) >= 50), 2, pool)


@pytest.fixture(scope="module")
def multi_token_labels(bpe_model):
    """Label words "apple" (2 tokens on this tokenizer: 'ap' 'ple') and "tiger" (one token)."""
    b = build_prompts(bpe_model, _bpe_task(("apple", "tiger")), 6, 3, template="{x}:{y}", seed=0)
    width = b.answer_spans[..., 1] - b.answer_spans[..., 0]
    assert int(width.max()) == 2 and int(width.min()) == 1  # the fixture has both kinds
    return b


def test_multi_token_label_words_score_their_first_token(bpe_model, multi_token_labels):
    """The label word is its first token: as the position p_k and as the candidate of the loss."""
    b = multi_token_labels
    first = {w: b.tokenizer(":" + w, add_special_tokens=False)["input_ids"][1] for w in ("apple", "tiger")}
    assert sorted(b.label_token_ids[0].tolist()) == sorted(first.values())
    assert torch.equal(sal_mod.label_candidates(b), b.label_token_ids)
    expected = _manual_saliency(copy.deepcopy(bpe_model), b)  # a copy: the manual check writes .grad
    got = saliency_terms(bpe_model, b).sum(2).abs()
    assert (got - expected).abs().max() < 1e-6
    res = saliency_flow(bpe_model, b, progress=False)
    masks = flow_masks(b)
    i = int((b.answer_spans[..., 1] - b.answer_spans[..., 0] == 2).any(-1).nonzero()[0])
    for s, e in b.answer_spans[i].tolist():  # S_pq pairs: (q, first token of each label word), never a later one
        assert masks[1, i, int(b.final_positions[i]), s] and not masks[1, i, :, s + 1 : e].any()
    assert torch.isfinite(res.flows).all() and res.flows.shape == (3, 2)
    rw = train_anchor_reweighting(bpe_model, b, b, epochs=1, progress=False)
    assert rw.beta.shape == (2, 4, 3)


def test_random_isolation_control_avoids_every_token_of_a_label_word(multi_token_labels):
    b = multi_token_labels
    rows = isolation_mask(b, "label_from_text", "random", seed=0).any(-1)
    for i in range(len(b)):
        label = {p for s, e in b.answer_spans[i].tolist() for p in range(s, e)}
        assert not set(rows[i].nonzero().flatten().tolist()) & label


def test_label_words_sharing_their_first_token_are_refused(bpe_model):
    b = build_prompts(bpe_model, _bpe_task(("chair", "cloud")), 2, 2, template="{x}:{y}", seed=0)  # both 'c' ...
    with pytest.raises(ValueError, match="share their first token"):
        saliency_flow(bpe_model, b, progress=False)
    saliency_flow(bpe_model, b, "full_vocab", progress=False)  # the full vocabulary needs no distinct label words


@pytest.mark.parametrize("kwargs, match", [
    ({"label_ids": torch.tensor([5, 6])}, "not a label word"),
    ({"label_ids": torch.tensor([5])}, "at least 2 candidate"),
    ({"loss": "kl"}, "loss must be 'label_words' or 'full_vocab'"),
])
def test_bad_label_sets_are_clear(tiny_model, batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        saliency_flow(tiny_model, batch, progress=False, **kwargs)


def test_layer_out_of_range_and_mismatched_demos(tiny_model, batch):
    with pytest.raises(ValueError, match=r"layers must be an integer in \[0, 1\]"):
        isolate_attention(tiny_model, batch, [0, 2], progress=False)
    other = build_prompts(tiny_model, "letter-string", 4, 2, seed=1)
    with pytest.raises(ValueError, match="same n_demos"):
        train_anchor_reweighting(tiny_model, batch, other, progress=False)
    with pytest.raises(ValueError, match="beta must have shape"):
        reweighted_logits(tiny_model, batch, torch.zeros(2, 4, 2))


# ----------------------------------------------------------------------------- figures and CLI
def test_figures_build(tiny_model, batch):
    res = saliency_flow(tiny_model, batch, progress=False)
    assert len(plots.flows(res).data) == 6
    hm = plots.heatmap(res, example=1)
    assert len(hm.data) == 2 and len(hm.layout.sliders[0].steps) == 2 and hm.data[0].x[-1].endswith("→")
    with pytest.raises(ValueError, match="example must be in"):
        plots.heatmap(res, example=9)
    iso = isolate_attention(tiny_model, batch, [[0], [1]], progress=False)
    assert len(iso_plots.isolation(iso).data) == 4
    rw = train_anchor_reweighting(tiny_model, batch, batch, epochs=1, progress=False)
    assert len(rw_plots.reweighting(rw).data) == 1


def test_cli_saliency_json_and_out(monkeypatch, tiny_model, tmp_path):
    from click.testing import CliRunner

    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli_mod.cli, ["saliency", "--task", "number", "--demos", "2", "--prompts", "4",
                                           "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert len(data["S_wp"]) == len(data["S_pq"]) == len(data["S_ww"]) == 2 and data["layers"] == [0, 1]
    assert (tmp_path / "result.json").exists() and (tmp_path / "figure.html").exists()
    bad = CliRunner().invoke(cli_mod.cli, ["saliency", "--task", "nope"])
    assert bad.exit_code != 0 and "unknown task 'nope'" in bad.output


def test_candidates_are_the_batch_candidate_tokens(tiny_model, batch):
    ant = build_prompts(tiny_model, "antonym", 4, 2, seed=0)
    assert torch.equal(sal_mod.label_candidates(ant), ant.candidate_tokens(fallback="answers"))
    assert torch.equal(sal_mod.label_candidates(batch), batch.candidate_tokens())
    assert sal_mod.label_candidates(batch, "full_vocab") is None
