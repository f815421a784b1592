"""Positions, patching, heads, OV circuits, necessity, LTV, propagation, dPCA and resuming: one small
run each on both bundled real models (``pytest -m real_model``), each checked against an identity that
holds on any model or against a hand computation.

What SmolLM2-135M brings that the toy does not: a byte-level BPE that splits words into several tokens
(uppercase answers, capitals, French words, sentiment phrases), no BOS token, RMSNorm with its weight
folded into the next matrices, rotary positions and grouped-query attention (9 query heads share 3
key/value heads). What Gemma 3 270M adds: a SentencePiece vocabulary of 262,144 pieces, ``<bos>`` first,
one key/value head for 4 query heads, QK-norm, an RMSNorm after attention and after the MLP (heads reach
the residual through it: ``Backend.attn_out_gain``), local sliding-window and global layers. Layers are
picked by depth (``_at``), so the same test reads the same part of both models. Few prompts and layers
keep the file to seconds per model once it is loaded.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_circuits.core import runner
from icl_circuits import build_prompts, final_logits
from icl_circuits.core import interventions as iv
from icl_circuits.methods.ov_circuits import ov_contributions
from icl_circuits.methods.dpca.analysis import dpca_by_layer
from icl_circuits.methods.heads import head_ablation_scan
from icl_circuits.methods.head_ablation import ablate_heads
from icl_circuits.methods.necessity import necessity
from icl_circuits.methods.learned import train_task_vector
from icl_circuits.methods.patching import patch_grid
from icl_circuits.methods.sweeps import layer_sweep
from icl_circuits.methods.propagation import final_deltas, fit_linear_propagation, propagation_by_layer
from icl_circuits.core.runner import backend_for, resume
from icl_circuits.methods.vectors import TaskVector
from tests.core.test_prompts import FIELD, TEMPLATE, _check, _pairs

pytestmark = pytest.mark.real_model

ARROW = "{x} -> {y}"
TOL = 1e-4


@pytest.fixture(scope="module")
def model(any_real_model):
    """SmolLM2-135M-Instruct, then Gemma 3 270M (session fixtures of tests/conftest.py: each skips where its
    wheel is missing)."""
    return any_real_model


def _at(model, *fractions: float) -> list[int]:
    """Block indices at the given fractions of the depth (1.0: the final residual, n_layers)."""
    n = model.cfg.n_layers
    return [min(n, round(f * n)) for f in fractions]


def _bos(model) -> list[int]:
    """The tokens a prompt starts with before its text: ``[<bos>]`` on Gemma, nothing on SmolLM2."""
    return [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []


@pytest.fixture(scope="module")
def capitals(model):
    """3 country-capital prompts, 3 demos: multi-token countries and capitals, different lengths."""
    return build_prompts(model, "country-capital", 3, 3, template=ARROW, seed=0)


def _final_resid(model, tokens, final, hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        x = model(tokens, stop_at_layer=model.cfg.n_layers)
    return x[torch.arange(len(final)), final]


def _gold_logit(lg, b):
    return lg.gather(1, b.answer_tokens[:, None].to(lg.device))[:, 0]


# ----------------------------------------------------------------------------- positions
@pytest.mark.parametrize("task", ["uppercase", "country-capital", "english-french", "sentiment"])
def test_spans_decode_to_their_fields_on_the_real_tokenizer(model, task):
    """Every input/answer/query span decodes to its field (the answer with its leading space), the
    final position is the last real token, and the gold answer's tokens are those it gets in the text."""
    tok = model.tokenizer
    b = build_prompts(model, task, 4, 3, template=ARROW, seed=0)
    assert b.tokens[:, : len(_bos(model))].tolist() == [_bos(model)] * len(b)  # the model's own start rule
    assert tok.bos_token_id not in b.tokens[:, len(_bos(model)):].flatten().tolist()
    dec = lambda ids: tok.decode(ids)  # noqa: E731
    widths = []
    for i in range(len(b)):
        ids = b.tokens[i].tolist()
        final = int(b.final_positions[i])
        for d, (x, y) in enumerate(b.demos[i]):
            s, e = b.input_spans[i, d].tolist()
            assert dec(ids[s:e]) == x
            s, e = b.answer_spans[i, d].tolist()
            assert dec(ids[s:e]) == " " + y
            assert b.separator_positions[i, d] == s - 1 and dec(ids[s - 1 : s]) == " ->"
            assert b.demo_answer_tokens[i, d] == ids[s]
            widths.append(e - s)
        s, e = b.query_spans[i].tolist()
        assert dec(ids[s:e]) == b.queries[i]
        assert final == e and dec(ids[final : final + 1]) == " ->"
        assert b.attention_mask[i, : final + 1].all() and not b.attention_mask[i, final + 1 :].any()
        assert dec(ids[len(_bos(model)) : final + 1]) == b.texts[i]
        # the gold answer: its tokens in the full text, first token = answer_tokens
        full = _bos(model) + tok(b.texts[i] + " " + b.answers[i], add_special_tokens=False)["input_ids"]
        assert full[: final + 1] == ids[: final + 1] and full[final + 1 :] == b.answer_token_ids[i]
        assert dec(b.answer_token_ids[i]) == " " + b.answers[i] and b.answer_tokens[i] == b.answer_token_ids[i][0]
    if task != "sentiment":  # the label words are one token each; the others split words
        assert max(widths) > 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=TEMPLATE, pairs=_pairs(FIELD), n_demos=st.integers(0, 3))
def test_spans_decode_exactly_on_the_real_tokenizer(model, template, pairs, n_demos):
    """The property test of tests/core/test_prompts.py (GPT-2-style BPE) on the model's own tokenizer."""
    _check(model.tokenizer, template, pairs, n_demos)


# ----------------------------------------------------------------------------- resume, sweeps, patching
def test_resume_equals_the_full_forward(model, capitals):
    b = capitals
    full = _final_resid(model, b.tokens, b.final_positions)
    for l in _at(model, 0, 1 / 3, 0.97, 1):
        resid = runner.read_resid(model, b, None, [l])[0]
        with torch.no_grad():
            x = resume(model, resid, l, tokens=b.tokens)
        assert (x[torch.arange(len(b)), b.final_positions] - full).abs().max() <= TOL, l


def test_layer_sweep_without_intervention_equals_the_full_forward(model, capitals):
    gold = _gold_logit(final_logits(model, capitals), capitals)
    res = layer_sweep(model, capitals, lambda l, rows, mb: [], _at(model, 0, 0.5, 0.97, 1), metric=_gold_logit,
                      layers_per_forward=2)
    assert res.per_prompt.shape == (4, 3)
    assert (res.per_prompt - gold[None]).abs().max() <= TOL and abs(res.baseline - float(gold.mean())) <= TOL


def test_patching_clean_into_clean_changes_nothing(model, capitals):
    """Every cell rerun (skip_identical=False), from the cached keys/values of the positions before
    it (suffix replay on rotary + GQA): the gold logit does not move."""
    b = capitals
    gold = _gold_logit(final_logits(model, b), b)
    res = patch_grid(model, b, b, lambda lg: _gold_logit(lg, b).mean(), layers=_at(model, 0, 0.47, 0.97), positions="answer",
                     skip_identical=False)
    assert res.values.shape == (3, 3) and res.position_names == ["answer_0", "answer_1", "answer_2"]
    assert res.meta["suffix_only"] == backend_for(model).supports_suffix_replay and res.meta["n_cells_skipped"] == 0
    assert abs(res.clean_value - float(gold.mean())) <= TOL and abs(res.corrupted_value - res.clean_value) <= TOL
    assert (res.values - res.clean_value).abs().max() <= TOL


def test_patch_grid_cells_equal_handwritten_hooks(model):
    """A real corruption (another country): each cell is the corrupted run with the clean residual
    written at (layer, position) by a hook on the full forward."""
    texts = ["France -> Paris\nJapan -> Tokyo\nGermany ->", "France -> Paris\nJapan -> Tokyo\nItaly ->"]
    clean, corr = (model.to_tokens(t) for t in texts)
    assert clean.shape == corr.shape and int((clean != corr).sum()) == 1
    berlin = model.to_single_token(" Berlin")
    metric = lambda lg: lg[:, berlin].mean()  # noqa: E731
    layers, cols = _at(model, 0.1, 2 / 3), [int((clean != corr).nonzero()[0, 1]), clean.shape[1] - 1]
    res = patch_grid(model, clean, corr, metric, layers=layers, positions=cols)
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    final = torch.tensor([corr.shape[1] - 1])
    for i, l in enumerate(layers):
        for j, p in enumerate(cols):
            name = iv.resid_name(model, l)

            def put(act, hook, p=p, name=name):
                act[:, p] = cache[name][:, p]
                return act

            with torch.no_grad():
                want = metric(runner.unembed_resid(model, _final_resid(model, corr, final, [(name, put)])))
            assert abs(float(res.values[i, j]) - float(want)) <= TOL
    assert res.corrupted_value < float(res.values[0, 0])  # Germany at the query restores Berlin


# ----------------------------------------------------------------------------- heads
def test_head_scan_shapes_and_one_cell_by_hand(model, capitals):
    b = capitals
    H, (l0, l1) = model.cfg.n_heads, _at(model, 0.07, 2 / 3)
    scan = head_ablation_scan(model, b, "zero", metric="gold_prob", layers=[l0, l1], progress=False)
    assert scan.values.shape == scan.effect.shape == (2, H) and scan.per_prompt.shape == (2, H, 3)
    assert scan.effect.abs().max() > 0
    one = ablate_heads(model, b, [(l1, H - 1)], "zero", metric="gold_prob")
    assert (scan.per_prompt[1, H - 1] - one.per_prompt).abs().max() <= 1e-5
    assert (scan.clean - one.clean).abs().max() <= 1e-5


def test_ablating_no_heads_and_own_mean_changes_nothing(model, capitals):
    """No heads: the clean run. Mean ablation of one prompt with its own mean (per position, or at
    the final position): every head's output is replaced by itself."""
    none = ablate_heads(model, capitals, [], "zero", metric="gold_prob")
    assert (none.logits - final_logits(model, capitals)).abs().max() <= TOL
    one = capitals.select([1])
    for positions in ("all", "final"):
        scan = head_ablation_scan(model, one, "mean", metric="gold_prob", positions=positions, layers=_at(model, 0.17, 0.83),
                                  progress=False)
        assert (scan.per_prompt - scan.clean).abs().max() <= 1e-5, positions


# ----------------------------------------------------------------------------- OV circuits
def test_gqa_value_path_reconstructs_each_heads_output(model, capitals):
    """z[q, h] = sum_p A_h[q, p] (ln1(x_p) W_V[h] + b_V[h]) and attn_out = gain * sum_h z_h W_O[h] + b_O
    with TL's per-query-head W_V (SmolLM2: each of 3 key/value heads shared by 3 query heads; Gemma: one
    key/value head for all 4) and the post-attention norm's gain where there is one (Gemma): the OV
    formula of ``circuits`` reads the right value head, and the heads sum to the block's output."""
    b = capitals.select([0])
    q = int(b.final_positions[0])
    cfg, be = model.cfg, backend_for(model)
    assert (cfg.n_heads, cfg.n_key_value_heads) in ((9, 3), (4, 1))
    assert be.W_V(0).shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert (be.attn_out_gain(0, torch.zeros(cfg.n_heads, cfg.d_head)) is None) == (cfg.n_heads == 9)
    for l in _at(model, 0.13, 0.73):
        names = {iv.resid_name(model, l), f"blocks.{l}.attn.hook_pattern", iv.z_name(l), f"blocks.{l}.hook_attn_out"}
        attn = model.blocks[l].attn
        with torch.no_grad():
            _, c = model.run_with_cache(b.tokens, names_filter=lambda n: n in names)
            v = torch.einsum("pD,hDe->phe", be.ln1(l)(c[iv.resid_name(model, l)][0]), be.W_V(l)) + attn.b_V
            z = torch.einsum("hp,phe->he", c[f"blocks.{l}.attn.hook_pattern"][0, :, q], v)
            gain = be.attn_out_gain(l, c[iv.z_name(l)][0, q])
            out = torch.einsum("he,hed->d", c[iv.z_name(l)][0, q], be.W_O(l)) * (1 if gain is None else gain) + attn.b_O
        assert (z - c[iv.z_name(l)][0, q]).abs().max() <= 1e-4 * (1 + z.abs().max())
        assert (out - c[f"blocks.{l}.hook_attn_out"][0, q]).abs().max() <= 1e-4 * (1 + out.abs().max())


def test_ov_decomposition_sums_to_the_measured_change(model, capitals):
    """delta h_L(q) = d(q) + sum of per-head changes z'W_O - zW_O + sum of MLP changes, and the heads
    of a layer sum to its attention output change (b_O cancels), at the last two blocks."""
    b = capitals.select([0, 2])
    L, H, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    h = runner.read_resid(model, b, b.positions("final").positions, [L - 2])[0, :, 0]
    theta = torch.randn(d, generator=torch.Generator().manual_seed(0)) * float(h.norm(dim=-1).mean()) / 24
    r = ov_contributions(model, b, theta, L - 2)
    assert r.layers == [L - 2, L - 1] and r.head_exact.shape == (2, H, 2, d) and r.exact_dla.shape == (2, H, 2)
    scale = float(r.total.abs().max())
    assert scale > 1e-2
    assert r.identity_error() <= 1e-4 * (1 + scale)
    assert (r.attn_layers - r.head_exact.sum(1)).abs().max() <= 1e-4 * (1 + scale)
    assert torch.isfinite(r.ov_dla).all() and torch.isfinite(r.cosine).all()


# ----------------------------------------------------------------------------- necessity
def test_necessity_known_answers_and_empty_corruptions(model):
    """Zeroing every demo input token (multi-token, ragged spans) at the final residual cannot reach
    the final position's logits; zeroing the final position there leaves every logit equal. Mean
    ablation of one prompt with its own mean and noise of scale 0 change no prediction."""
    b = build_prompts(model, "uppercase", 3, 4, template=ARROW, seed=0)
    L = model.cfg.n_layers
    res = necessity(model, b, "inputs", layers=[0, L], how="zero", progress=False)
    assert res.values.shape == (2,) and res.per_prompt.shape == (2, 3) and res.baseline == 1.0
    assert ((res.low <= res.values) & (res.values <= res.high)).all()
    assert torch.equal(res.per_prompt[1], torch.ones(3))
    assert necessity(model, b, "query", layers=[L], how="zero", progress=False).values.tolist() == [0.0]
    one = b.select([2])
    for how, kw in (("mean", {}), ("noise", {"noise_scale": 0.0})):
        r = necessity(model, one, "inputs+query", layers=_at(model, 0, 0.5), how=how, progress=False, **kw)
        assert r.baseline == 1.0 and r.values.tolist() == [1.0, 1.0], how


# ----------------------------------------------------------------------------- learned task vectors
def test_ltv_one_epoch_leaves_the_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    train = build_prompts(model, "antonym", 8 + 4, 0, template=ARROW, seed=0, variant="zero_shot",
                         prepend_bos=True)  # as LTVs are trained on SmolLM2 (no BOS: the query is the sink)
    layer = _at(model, 2 / 3)[0]
    tv = train_task_vector(model, train, layer, n_val=4, epochs=1, batch_size=4, lr=0.05, progress=False)
    assert tv.vectors.shape == (1, model.cfg.d_model) and torch.isfinite(tv.vectors).all() and tv.layers == [layer]
    assert tv.meta["epochs_run"] == 1 and tv.meta["steps"] == 2 and len(tv.meta["train_loss"]) == 2
    assert tv.meta["train_loss"][1] < tv.meta["train_loss"][0]  # gradients reach theta through the frozen model
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- propagation
def test_propagation_smallest_run(model):
    zs = build_prompts(model, "antonym", 2, 0, template=ARROW, seed=0, variant="zero_shot")
    L, d = model.cfg.n_layers, model.cfg.d_model
    X = torch.cat([torch.zeros(1, d), torch.randn(2, d, generator=torch.Generator().manual_seed(1))])
    dl = final_deltas(model, zs, L - 2, X)
    assert dl.shape == (3, 2, d) and dl[0].abs().max() <= TOL  # resuming at L - 2 with nothing added
    assert torch.equal(final_deltas(model, zs, L, X), X[:, None].expand(-1, 2, -1))  # at the final residual
    lp = fit_linear_propagation(model, zs, L - 2, n_vectors=8)
    assert lp.W.shape == (d, d) and torch.isfinite(lp.W).all() and lp.n_fit == 6 and lp.n_heldout == 2
    assert lp.r2 <= 1 and lp.ridge > 0  # 6 vectors in d_model dimensions: ridge on
    theta = torch.randn(2, d, generator=torch.Generator().manual_seed(2)) * 5
    tv = TaskVector(theta, [L - 2, L], "add", "random", "antonym", model=model.cfg.model_name)
    ev = build_prompts(model, "antonym", 4, 0, template=ARROW, seed=1, variant="zero_shot")
    res = propagation_by_layer(model, zs, ev, tv, n_vectors=8, progress=False)
    assert res.layers == [L - 2, L] and res.stretch.shape == (2, d) and torch.isfinite(res.gain).all()
    # at the final residual the map is the identity: W theta = theta, and adding it there is the injection
    assert res.gain[1] == pytest.approx(1.0) and res.cos_theta_wtheta[1] == pytest.approx(1.0)
    assert res.acc_reconstructed[1] == res.acc_injected[1]


# ----------------------------------------------------------------------------- dPCA
def test_dpca_smallest_run(model):
    layers = _at(model, 1 / 3, 2 / 3)
    res = dpca_by_layer(model, build_prompts(model, "sentiment", 8, 4, seed=0), layers=layers, n_components=2,
                        regularizer=None, n_null=2, progress=False)
    L, M = 2, len(res.marginalizations)
    assert res.layers == layers and res.total_marginal_variance.shape == (L, M)
    assert torch.allclose(res.total_marginal_variance.sum(1), torch.ones(L), atol=1e-5)
    ev = res.explained_variance
    assert ev.shape == (L, M, 2)
    real = ev[~ev.isnan()]
    assert len(real) > 0 and (real >= -1e-6).all() and (real <= 1 + 1e-6).all()
    assert (ev.nan_to_num(0).sum((1, 2)) <= 1 + 1e-5).all()
    # topic and label have two levels each: one axis per marginalization holds all its variance
    assert (res.n_axes == 1).all() and (ev[..., 0] - res.total_marginal_variance).abs().max() <= 1e-4
    assert res.null_distances.shape[:2] == (2, L) and res.decoders.shape == (L, M, model.cfg.d_model, 2)
