"""Runner backends (``core.runner.backend``): the TransformerBridge backend of TransformerLens 4 gives
the hooked backend's numbers (stored from TransformerLens 3.9 by ``scripts/backend_reference.py``),
and refuses attention edits its adapter would ignore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icl_circuits.core.runner.backend import available_backends, resolve_backend

DATA = Path(__file__).parent / "data"
ON_TL4 = available_backends() == ("bridge",)
needs_tl4 = pytest.mark.skipif(not ON_TL4, reason="TransformerBridge backend tests need transformer-lens 4.x "
                               "(3.x runs the hooked backend, whose numbers are the stored reference)")


def test_unavailable_backend_is_a_clear_error():
    other = "hooked" if ON_TL4 else "bridge"
    with pytest.raises(ValueError, match=f"backend='{other}' is not available with transformer-lens"):
        resolve_backend(other)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("jax")
    assert resolve_backend(None) == available_backends()[0]


def _compare(name: str, model) -> None:
    from safetensors.torch import load_file

    from tests.core.backend_suite import EXACT, TOLERANCE, run_suite

    ref = load_file(str(DATA / f"backend_reference_{name}.safetensors"))
    got = run_suite(model)
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        if k in EXACT:
            assert torch.equal(got[k], ref[k]), k
        elif k == "read_resid":  # residual coordinates: relative to their size (SmolLM2's final residual ~ 5e3)
            assert (got[k] - ref[k]).abs().max() <= TOLERANCE * max(1.0, float(ref[k].abs().max())), k
        else:
            assert (got[k] - ref[k]).abs().max() <= TOLERANCE, (k, float((got[k] - ref[k]).abs().max()))


@needs_tl4
def test_bridge_matches_hooked_on_toy(toy_bridge):
    """Core runner paths, head scan, interchange, patching, saliency and task vectors on toy-icl."""
    assert type(toy_bridge).__name__ == "TransformerBridge"
    _compare("toy-icl", toy_bridge)


@needs_tl4
@pytest.mark.real_model
def test_bridge_matches_hooked_on_smollm2():
    from icl_circuits import load_model

    pytest.importorskip("gguf")
    _compare("smollm2-135m", load_model("smollm2-135m", device="cpu"))


@needs_tl4
def test_attention_edit_on_post_hoc_adapter_is_refused(toy_bridge):
    """toy-icl's native attention runs hook_pattern inside the computation but fires hook_attn_scores on the
    returned weights: editing scores there would change nothing, so the runner refuses, naming the adapter
    (blocking scores is the exception: it is applied exactly to the pattern, see the parity test)."""
    from icl_circuits import build_prompts
    from icl_circuits.core.interventions import Intervention, Site
    from icl_circuits.core.runner import read_activations, run_final_logits

    b = build_prompts(toy_bridge, "antonym", 2, 2, seed=0)
    iv = Intervention(Site(1, "attn_scores"), "apply", fn=lambda s: s * 0.5)
    with pytest.raises(NotImplementedError, match="AttentionBridge around NativeAttention"):
        run_final_logits(toy_bridge, b, lambda r, mb: [iv])
    with pytest.raises(NotImplementedError, match="a read would not see the scores"):  # post-softmax there
        read_activations(toy_bridge, b, ["blocks.1.attn.hook_attn_scores"])
    # a pattern edit takes effect there: zeroing block 1's pattern changes the logits
    zero = Intervention(Site(1, "pattern"), "apply", fn=torch.zeros_like)
    assert not torch.allclose(run_final_logits(toy_bridge, b, lambda r, mb: [zero]), run_final_logits(toy_bridge, b))


def test_gqa_value_weights_are_per_query_head():
    """A GQA bridge's W_V has n_key_value_heads rows; the backend's weight views repeat them as
    HookedTransformer does (query head h reads key/value head h // (n_heads // n_kv_heads))."""
    from icl_circuits.core.runner.backend import TransformerLensBackend

    class Cfg:
        n_heads = 6

    class M:
        cfg = Cfg()

    be = TransformerLensBackend(M())
    w = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(2, 3, 4)
    out = be.per_head(w)
    assert out.shape == (6, 3, 4) and torch.equal(out[2], w[0]) and torch.equal(out[3], w[1])
    assert be.per_head(out) is out
    with pytest.raises(ValueError, match="does not divide n_heads=6"):
        be.per_head(torch.zeros(4, 3, 4))


@pytest.fixture(scope="module")
def toy_bridge():
    from icl_circuits import load_model

    return load_model("toy-icl", device="cpu", backend="bridge")


@needs_tl4
def test_bridge_greedy_decoding_with_a_key_value_cache_equals_the_uncached_loop(toy_bridge):
    """toy-icl's native modules take no cache (the backend says so: uncached decoding); the answers
    are the reference loop's either way."""
    from icl_circuits import build_prompts
    from icl_circuits.core.evaluation import greedy_answers
    from icl_circuits.core.runner import backend_for

    assert backend_for(toy_bridge).new_kv_cache(2) is None
    b = build_prompts(toy_bridge, "country-capital", 6, 3, seed=0)
    assert greedy_answers(toy_bridge, b).generated_ids == greedy_answers(toy_bridge, b, use_cache=False).generated_ids


def _suffix_replay_equals_full_width(model) -> None:
    """patch_grid replays the corrupted run's recorded keys and values (suffix only) on the bridge and
    gets the full-width numbers."""
    from icl_circuits import build_prompts
    from icl_circuits.core.runner import backend_for
    from icl_circuits.methods.patching import patch_grid

    assert backend_for(model).supports_suffix_replay
    icl = build_prompts(model, "antonym", 3, 3, "{x} -> {y}", seed=0)
    rand = build_prompts(model, "antonym", 3, 3, "{x} -> {y}", seed=0, variant="random_answers")
    suffix = patch_grid(model, icl, rand, layers=[0, 15], suffix_only=True)
    full = patch_grid(model, icl, rand, layers=[0, 15], suffix_only=False)
    assert suffix.meta["suffix_only"] and not full.meta["suffix_only"]
    torch.testing.assert_close(suffix.values, full.values, rtol=0, atol=1e-5)  # attention over a cache vs full: kernels differ


@needs_tl4
@pytest.mark.real_model
def test_bridge_decoding_and_suffix_replay_use_hugging_face_cache_on_smollm2():
    """SmolLM2 on the bridge decodes with Hugging Face's DynamicCache (extended by the re-implemented
    attention) and generates exactly the tokens of the uncached per-prompt loop; patch_grid's suffix-only
    replay over that cache gives the full-width numbers."""
    from icl_circuits import build_prompts, load_model
    from icl_circuits.core.evaluation import greedy_answers
    from icl_circuits.core.runner import backend_for

    pytest.importorskip("gguf")
    model = load_model("smollm2-135m", device="cpu")
    _suffix_replay_equals_full_width(model)
    cache = backend_for(model).new_kv_cache(1)
    assert cache is not None
    b = build_prompts(model, "country-capital", 6, 3, "{x} -> {y}", seed=0)
    tok = b.tokens[:1, : int(b.lengths[0])]
    full = backend_for(model).forward(tok)
    backend_for(model).decode(tok[:, :-1], cache)
    last = backend_for(model).decode(tok[:, -1:], cache)
    assert cache.get_seq_length() == tok.shape[1]
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=1e-4, atol=1e-3)  # cached vs full attention: kernels differ
    assert greedy_answers(model, b, batch_size=4).generated_ids == greedy_answers(model, b, use_cache=False).generated_ids
