"""Weights stored column-major for TransformerLens's forward (core.weight_layout): bit-identical
forwards (the same computation on the same shapes and strides, so exact on any one machine), no copy of
the stored matrices, and ``load_model`` applies it."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts, load_model
from icl_circuits.core.weight_layout import store_for_forward
from tests.conftest import TEST_DEVICE, make_tiny_model


def _gated(seed: int = 0):
    """A tiny Llama-shaped model: RMSNorm, gated SiLU MLP, grouped-query attention."""
    return make_tiny_model(n_layers=2, d_model=32, n_heads=4, seed=seed, act_fn="silu", gated_mlp=True,
                           normalization_type="RMS", n_key_value_heads=2)


def test_forward_and_gradients_are_bit_identical(toy_tokenizer):
    model = _gated()
    batch = build_prompts(model, "antonym", 4, 3, seed=0)
    tokens = batch.tokens.to(model.cfg.device)
    with torch.no_grad():
        before = model(tokens)
    theta = torch.zeros(model.cfg.d_model, requires_grad=True, device=model.cfg.device)
    hook = [("blocks.1.hook_resid_pre", lambda x, hook: x + theta)]
    (g_before,) = torch.autograd.grad(model.run_with_hooks(tokens, fwd_hooks=hook)[:, -1].logsumexp(-1).sum(), theta)
    assert store_for_forward(model) == 2 * (3 + 4) + 1  # W_in, W_gate, W_out, W_Q, _W_K, _W_V, W_O of 2 blocks; W_U
    assert model.unembed.W_U.T.is_contiguous() and model.blocks[0].mlp.W_gate.T.is_contiguous()
    assert model.unembed.W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)  # same shape, same values
    with torch.no_grad():
        after = model(tokens)
    (g_after,) = torch.autograd.grad(model.run_with_hooks(tokens, fwd_hooks=hook)[:, -1].logsumexp(-1).sum(), theta)
    assert torch.equal(before, after) and torch.equal(g_before, g_after)
    assert store_for_forward(model) == 0  # idempotent


def test_contiguous_copies_nothing_after_storing():
    """The point of the layout: TL's ``W.T.contiguous()`` returns the stored tensor itself."""
    model = _gated()
    store_for_forward(model)
    w = model.blocks[0].mlp.W_out
    assert w.T.contiguous().data_ptr() == w.data_ptr()
    import einops

    o = model.blocks[0].attn.W_O  # TL's output projection reads d_model (head d_head), then .contiguous()
    assert einops.rearrange(o, "h d m -> m (h d)").contiguous().data_ptr() == o.data_ptr()
    q = model.blocks[0].attn.W_Q  # and the query projection (head d_head) d_model
    assert einops.rearrange(q, "h m d -> (h d) m").data_ptr() == q.data_ptr()


def test_plain_mlp_is_left_alone_and_load_model_applies_it():
    tiny = make_tiny_model()
    assert store_for_forward(tiny) == 2 * 4 + 1  # attention and W_U: a plain MLP reads its weights as stored
    assert tiny.blocks[0].mlp.W_in.is_contiguous()
    try:
        toy = load_model("toy-icl", device=TEST_DEVICE)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert toy.unembed.W_U.T.is_contiguous()


@pytest.mark.real_model
def test_real_model_is_stored_for_the_forward(real_model):
    blk = real_model.blocks[0].mlp
    assert all(getattr(blk, n).T.is_contiguous() for n in ("W_in", "W_gate", "W_out"))
    assert real_model.unembed.W_U.T.is_contiguous()
