"""The "adding a backend" checklist of docs/architecture.md, proven: a third backend (``hf_backend.py``:
a plain ``transformers`` Llama with torch hooks, no TransformerLens) registered from outside the
package runs the runner and an interchange, and its numbers are the Hugging Face model's own.

The parity subset it claims: final logits, the residual stream read at block inputs, a run resumed
mid-model, and a single-position-set interchange (checked against the same patch written by hand
with torch hooks on the Hugging Face model). What it does not claim (attention hooks, key/value
replay, decoding with a cache, backward hooks) is refused with a clear error."""

from __future__ import annotations

import pytest
import torch

from icl_circuits.core.runner import backend_for, register_backend, unregister_backend
from tests.core.hf_backend import HFModel, HFTorchHooksBackend


@pytest.fixture(scope="module")
def hf_model(toy_tokenizer):
    register_backend(HFTorchHooksBackend)
    yield HFModel(toy_tokenizer, seed=0)
    unregister_backend(HFTorchHooksBackend)


@pytest.fixture(scope="module")
def batch(hf_model):
    from icl_circuits import build_prompts

    return build_prompts(hf_model, "antonym", 6, 3, seed=0)


def _hf_logits(model, batch):
    with torch.no_grad():
        logits = model.hf(batch.tokens).logits
    return logits[torch.arange(len(batch)), batch.final_positions]


def test_the_model_gets_the_registered_backend_once(hf_model):
    be = backend_for(hf_model)
    assert isinstance(be, HFTorchHooksBackend) and backend_for(hf_model) is be


def test_final_logits_are_the_hugging_face_models(hf_model, batch):
    from icl_circuits.core.runner import final_logits

    # block-by-block forward vs Hugging Face's own: the same kernels on the same shapes, mask built differently
    torch.testing.assert_close(final_logits(hf_model, batch), _hf_logits(hf_model, batch), rtol=1e-5, atol=1e-5)


def test_residual_reads_are_the_hidden_states(hf_model, batch):
    from icl_circuits.core.runner import read_resid

    with torch.no_grad():
        hidden = hf_model.hf(batch.tokens, output_hidden_states=True).hidden_states  # [0]: embeddings, [l]: after block l-1
    L = hf_model.cfg.n_layers
    got = read_resid(hf_model, batch, layers=list(range(L)))  # the last hidden state is normed: compare block inputs
    for l in range(L):
        want = hidden[l][:, : batch.tokens.shape[1]]
        torch.testing.assert_close(got[l], want, rtol=1e-5, atol=1e-5)  # same computation, different mask build


def test_resumed_run_equals_the_full_forward(hf_model, batch):
    from icl_circuits.core.runner import cache_resid, final_logits, run_final_logits

    cached, clean, _ = cache_resid(hf_model, batch.tokens, [1], batch.final_positions)
    resumed = run_final_logits(hf_model, batch, start_at_layer=1, resid=cached[1])
    torch.testing.assert_close(resumed, final_logits(hf_model, batch), rtol=1e-5, atol=1e-5)  # same blocks, resumed
    torch.testing.assert_close(clean, final_logits(hf_model, batch), rtol=1e-5, atol=1e-5)


def test_interchange_equals_the_patch_written_by_hand(hf_model):
    """interchange(source, target, "answers") at layer l replaces the target's residual at its answer
    positions with the source's mean there; the same patch as a torch pre-hook on the Hugging Face
    layer gives the same logits."""
    from icl_circuits.core.pairs import paired_batches
    from icl_circuits.methods.interchange import interchange

    src, tgt = paired_batches(hf_model, "english-french", "antonym", 6, 3, seed=0)
    layers = [0, 1]
    res = interchange(hf_model, src, tgt, "answers", layers=layers, return_logits=True, progress=False)
    with torch.no_grad():
        hidden = hf_model.hf(src.tokens, output_hidden_states=True).hidden_states
    s, t = src.positions("answers"), tgt.positions("answers")
    for i, l in enumerate(layers):
        h = hidden[l]
        rows = torch.arange(len(src))
        # column j: the mean over the source prompts that have a token there (ragged spans are masked)
        v = torch.stack([h[rows[s.mask[:, j]], s.positions[s.mask[:, j], j]].mean(0) for j in range(len(s.names))])

        def patch(module, args, kwargs, v=v):
            x = (args[0] if args else kwargs["hidden_states"]).clone()
            for j in range(len(t.names)):
                ok = t.mask[:, j]
                x[torch.arange(len(tgt))[ok], t.positions[ok, j]] = v[j]
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        handle = hf_model.hf.model.layers[l].register_forward_pre_hook(patch, with_kwargs=True)
        try:
            want = _hf_logits(hf_model, tgt)
        finally:
            handle.remove()
        # staggered runner batches vs one Hugging Face forward: other shapes, kernels may differ
        torch.testing.assert_close(res.logits[i], want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(res.predictions[0], res.clean_predictions)  # the patch moves predictions: not vacuous
    assert res.provenance["model"] == "hf-llama-tiny" and res.model_info["backend"] == "hf-torch-hooks"


def test_weight_views_are_per_query_head(hf_model):
    be = backend_for(hf_model)
    cfg = hf_model.cfg
    assert be.W_Q(0).shape == be.W_K(0).shape == be.W_V(0).shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert be.W_O(0).shape == (cfg.n_heads, cfg.d_head, cfg.d_model) and be.W_U().shape == (cfg.d_model, cfg.d_vocab)
    assert torch.equal(be.W_V(0)[0], be.W_V(0)[1])  # 4 query heads share 2 key/value heads: heads 0 and 1 read kv 0
    # head h's output is z_h @ W_O[h]: the concatenation of heads through o_proj
    z = torch.randn(cfg.n_heads, cfg.d_head)
    by_head = torch.einsum("he,hed->d", z, be.W_O(0))
    torch.testing.assert_close(by_head, hf_model.hf.model.layers[0].self_attn.o_proj(z.reshape(1, -1))[0],
                               rtol=1e-5, atol=1e-6)  # a sum in a different order


def test_what_the_backend_does_not_claim_is_refused(hf_model, batch):
    from icl_circuits.core.evaluation import greedy_answers
    from icl_circuits.core.interventions import Intervention, Site
    from icl_circuits.core.runner import cache_resid, run_final_logits

    iv = Intervention(Site(0, "pattern"), "apply", fn=torch.zeros_like)
    with pytest.raises(NotImplementedError, match="hook point 'blocks.0.attn.hook_pattern' is not supported"):
        run_final_logits(hf_model, batch, lambda r, mb: [iv])
    with pytest.raises(NotImplementedError, match="suffix-only replay"):
        cache_resid(hf_model, batch.tokens, [1], batch.final_positions, record_kv=True)
    # no key/value cache: greedy decoding takes the uncached reference loop
    assert backend_for(hf_model).new_kv_cache(1) is None
    assert len(greedy_answers(hf_model, batch, max_new_tokens=2).generated_ids) == len(batch)
