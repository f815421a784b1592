"""Layer sweeps and activation patching: equal to the naive loops and to TransformerLens, exactly; errors."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.patching import get_act_patch_resid_pre

from icl_circuits.core import runner
from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.methods.patching import PatchGridResult, patch_grid
from icl_circuits.methods.sweeps import layer_sweep
from icl_circuits.core.runner import Entry, run_staggered
from icl_circuits.methods.sweeps import SweepResult


@pytest.fixture(scope="module")
def zs(tiny_model):
    return build_prompts(tiny_model, "antonym", 7, 0, seed=0, variant="zero_shot")


@pytest.fixture(scope="module")
def pair(tiny_model):
    """Clean ICL prompts and their random-answer twins (same token shape, prompts of different lengths)."""
    clean = build_prompts(tiny_model, "letter-string", 4, 3, seed=0)
    corr = build_prompts(tiny_model, "letter-string", 4, 3, seed=0, variant="random_answers")
    assert clean.tokens.shape == corr.tokens.shape and len(set(clean.final_positions.tolist())) > 1
    return clean, corr


def _gold_prob(logits, batch):
    return logits.softmax(-1)[torch.arange(len(batch)), batch.answer_tokens]


def _naive_sweep(model, batch, make, layers):
    out = []
    for l in layers:
        with torch.no_grad(), model.hooks(fwd_hooks=make(l, slice(0, len(batch)), batch)):
            logits = model(batch.tokens)[torch.arange(len(batch)), batch.final_positions]
        out.append(_gold_prob(logits, batch))
    return torch.stack(out)


@pytest.mark.parametrize("per_forward, batch_size", [(1, 64), (2, 3), (None, 64), (None, 2)])
def test_layer_sweep_equals_naive_loop(tiny_model, zs, per_forward, batch_size):
    """Prefix reuse and several layers per forward give the naive one-forward-per-layer numbers."""
    torch.manual_seed(0)
    v = torch.randn(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model) * 5
    pos = zs.positions("final").positions

    def make(l, rows, mb):
        return [(iv.resid_name(tiny_model, l), iv.add_hook(pos[rows], v[l]))]

    res = layer_sweep(tiny_model, zs, make, metric=_gold_prob, layers_per_forward=per_forward, batch_size=batch_size)
    naive = _naive_sweep(tiny_model, zs, make, range(tiny_model.cfg.n_layers + 1))
    assert isinstance(res, SweepResult) and res.layers == [0, 1, 2]
    # gold probabilities in [0, 1]; different batch shapes (prefix reuse, layers per forward) -> different
    # float32 kernels; 1e-6 absolute is ~100 float32 ulps of a probability near 1
    assert (res.per_prompt - naive).abs().max() <= 1e-6


def test_layer_sweep_hooks_of_later_blocks_and_heads(tiny_model, zs):
    """An intervention at layer l may hook block l's attention (one head, per-copy rows)."""
    pos = zs.positions("final").positions

    def make(l, rows, mb):
        return [(iv.z_name(l), iv.ablate_hook(pos[rows], "zero", head=l + 1))]

    res = layer_sweep(tiny_model, zs, make, layers=[1, 0], metric=_gold_prob, layers_per_forward=2)
    naive = _naive_sweep(tiny_model, zs, make, [1, 0])
    assert res.layers == [1, 0] and (res.per_prompt - naive).abs().max() <= 1e-6  # as above: probabilities, float32


def test_layer_sweep_accuracy_has_wilson_bands_and_baseline(tiny_model, zs):
    res = layer_sweep(tiny_model, zs, lambda l, rows, mb: [])
    assert torch.all(res.values == res.baseline) and res.metric == "first_token"
    assert torch.all(res.low <= res.values + 1e-9) and torch.all(res.values <= res.high + 1e-9)


def test_layer_sweep_rejects_hooks_before_the_resumed_block(tiny_model, zs):
    pos = zs.positions("final").positions
    with pytest.raises(ValueError, match="earlier block"):
        layer_sweep(tiny_model, zs, lambda l, rows, mb: [(iv.resid_name(tiny_model, 0), iv.add_hook(pos[rows], torch.ones(32)))],
                    layers=[1])
    with pytest.raises(ValueError, match="after the last block"):
        layer_sweep(tiny_model, zs, lambda l, rows, mb: [("ln_final.hook_normalized", lambda a, hook: a)], layers=[2])


@pytest.mark.parametrize("kw, match", [
    (dict(layers=[5]), r"layers must be an integer in \[0, 2\]"),
    (dict(layers=[]), "layers is empty"),
    (dict(layers_per_forward=0), "layers_per_forward must be positive"),
    (dict(metric="nope"), "unknown metric 'nope'"),
    (dict(metric="label_accuracy"), "needs label words"),
])
def test_layer_sweep_errors(tiny_model, zs, kw, match):
    with pytest.raises(ValueError, match=match):
        layer_sweep(tiny_model, zs, lambda l, rows, mb: [], **kw)


def _tl_grid(model, clean, corr, metric):
    rows, final = torch.arange(len(corr)), corr.final_positions
    _, cache = model.run_with_cache(clean.tokens)
    return get_act_patch_resid_pre(model, corr.tokens, cache, lambda logits: metric(logits[rows, final]))


@pytest.mark.parametrize("kw", [{}, dict(skip_identical=False), dict(suffix_only=False), dict(tokens_per_forward=40)])
def test_patch_grid_equals_transformer_lens(tiny_model, pair, kw):
    """Same numbers as TL's get_act_patch_resid_pre, whatever the speed-ups."""
    clean, corr = pair

    def metric(logits):
        return logits.softmax(-1)[torch.arange(len(clean)), clean.answer_tokens].mean()

    ours = patch_grid(tiny_model, clean, corr, metric, **kw)
    tl = _tl_grid(tiny_model, clean, corr, metric)
    assert ours.values.shape == tl.shape == (tiny_model.cfg.n_layers, clean.tokens.shape[1])
    # mean gold probability; suffix-only replay / skipped cells / other widths vs TL's full runs: float32
    # over different shapes and orders, so not exact; 1e-4 absolute is far below any patching effect here
    assert (ours.values - tl).abs().max() <= 1e-4
    if kw == {}:
        assert ours.meta["suffix_only"] and ours.meta["n_cells_skipped"] > 0


def test_patch_grid_on_raw_tokens_equals_transformer_lens(tiny_model):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, tiny_model.cfg.d_vocab, (3, 12), generator=g)
    corr = clean.clone()
    corr[:, 5] = (corr[:, 5] + 7) % tiny_model.cfg.d_vocab

    def metric(logits):
        return logits[:, 3].mean()

    ours = patch_grid(tiny_model, clean, corr, metric)
    _, cache = tiny_model.run_with_cache(clean)
    tl = get_act_patch_resid_pre(tiny_model, corr, cache, lambda lg: metric(lg[:, -1]))
    assert (ours.values - tl).abs().max() <= 1e-4  # a logit averaged over rows; float32, different shapes
    assert ours.meta["n_cells_skipped"] >= 5 * 2  # positions before the change are identical at every layer


def test_patching_clean_into_clean_changes_no_logit(tiny_model, pair):
    """Identity, with every cell actually rerun: no final logit moves by more than 1e-5."""
    clean, _ = pair
    ref = None

    def metric(logits):
        nonlocal ref
        ref = logits if ref is None else ref
        return (logits - ref).abs().max()

    res = patch_grid(tiny_model, clean, clean, metric, skip_identical=False)
    assert res.values.abs().max() <= 1e-5 and res.meta["n_cells_skipped"] == 0


def test_patch_grid_per_prompt_positions_and_dataframe(tiny_model, pair, tmp_path):
    """A position kind patches each prompt at its own answer positions; columns are named."""
    clean, corr = pair
    res = patch_grid(tiny_model, clean, corr, "gold_probability", positions="answer")
    pos = corr.positions("answer").positions
    name = iv.resid_name(tiny_model, 1)
    own = runner.read_activations(tiny_model, clean, [name], pos[:, 2:3])[name]
    one = runner.run_final_logits(tiny_model, corr, lambda rows, mb: [(name, iv.replace_hook(pos[rows, 2:3], own[rows]))])
    expected = one.softmax(-1)[torch.arange(len(corr)), clean.answer_tokens].mean()
    assert abs(float(res.values[1, 2]) - float(expected)) <= 1e-5
    assert res.position_names == ["answer_0", "answer_1", "answer_2"]
    df = PatchGridResult.load(res.save(tmp_path / "g")).to_dataframe()
    assert len(df) == 2 * 3 and {"layer", "position_name", "value", "normalized"} <= set(df.columns)


@pytest.mark.parametrize("kw, match", [
    (dict(positions=[0, 99]), r"positions \[99\] are outside the prompts"),
    (dict(positions="nope"), "unknown position set 'nope'"),
    (dict(positions=torch.tensor([[40]] * 4)), "outside prompt"),
    (dict(layers=[2]), r"layers must be an integer in \[0, 1\]"),
    (dict(metric="nope"), "unknown metric 'nope'"),
])
def test_patch_grid_errors(tiny_model, pair, kw, match):
    clean, corr = pair
    with pytest.raises(ValueError, match=match):
        patch_grid(tiny_model, clean, corr, **({"metric": "gold_probability"} | kw))


def test_patch_grid_needs_identical_shapes(tiny_model, pair):
    clean, _ = pair
    other = build_prompts(tiny_model, "letter-string", 4, 2, seed=0)
    with pytest.raises(ValueError, match="identical token shapes"):
        patch_grid(tiny_model, clean, other)
    with pytest.raises(ValueError, match="needs gold answers"):
        patch_grid(tiny_model, clean.tokens, clean.tokens, "gold_probability")


def test_staggered_entries_with_past_keys_equal_full_runs(tiny_model, pair):
    """Rows joining at different blocks, some with cached keys/values of their prefix, match full runs."""
    from icl_circuits.core.runner import cache_resid

    _, corr = pair
    res, logits, kv = cache_resid(tiny_model, corr.tokens, [0, 1], corr.final_positions, record_kv=True)
    p0 = 4
    past = [(kv[b][0][:, :p0], kv[b][1][:, :p0]) for b in range(2)]
    out = run_staggered(tiny_model, [Entry(1, res[1][:, p0:], corr.final_positions - p0, past=past),
                                     Entry(0, res[0][:, p0:], corr.final_positions - p0, past=past)])
    # logits (|x| up to ~10) from a cached-prefix, staggered run vs one full forward: float32 over different
    # shapes and summation orders; 1e-4 absolute is ~1e-5 relative
    assert (out - torch.cat([logits, logits])).abs().max() <= 1e-4
