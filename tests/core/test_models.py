"""Tests for icl_circuits.core.models: offline conversion of tiny random HF checkpoints, the toy loader
and the error paths. Everything is built on the fly in tmp dirs; nothing touches the network."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
    OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
)
from transformer_lens import HookedTransformer, HookedTransformerConfig

from icl_circuits.core import models
from icl_circuits.core.models import check_hooked_interface, load_model, model_info, processing_mismatch

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Input: cat Output: dog\nInput: sun Output: moon",
    "apple -> red; banana -> yellow; lime -> green",
    "Q: France? A: Paris\nQ: Japan? A: Tokyo",
]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained on a few sentences."""
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


def _hf_configs(vocab: int) -> dict:
    small = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                 vocab_size=vocab, max_position_embeddings=64)
    return {
        "gpt2": (GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=vocab,
                                              n_positions=64)),
        "pythia": (GPTNeoXForCausalLM, GPTNeoXConfig(**small, use_parallel_residual=True,
                                                     rotary_pct=0.25)),
        "llama": (LlamaForCausalLM, LlamaConfig(**small, num_key_value_heads=2)),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**small, num_key_value_heads=2)),
    }


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Large random weights everywhere (norm gains around 1) so a mis-mapped tensor shows in logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1 + noise if "norm" in name or "ln" in name.split(".")[-2] else noise)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    # Reloaded from disk: TL's set_tokenizer needs init_kwargs["name_or_path"], which an in-memory
    # PreTrainedTokenizerFast(tokenizer_object=...) lacks.
    path = tmp_path_factory.mktemp("tokenizer")
    _tokenizer().save_pretrained(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """name -> (checkpoint dir, HF model) for each supported family."""
    out = {}
    for i, (name, (cls, cfg)) in enumerate(_hf_configs(len(tokenizer)).items()):
        torch.manual_seed(i)
        hf = cls(cfg).eval()
        _randomize(hf, seed=i)
        path = tmp_path_factory.mktemp("ckpt") / f"tiny-{name}"
        hf.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = (path, hf)
    return out


def _tokens(tokenizer) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, len(tokenizer), (2, 24), generator=g),
            tokenizer(TEXTS, padding=True, return_tensors="pt").input_ids[:, :16]]


def _centred(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over the vocabulary: what center_unembed leaves unchanged."""
    return logits - logits.mean(-1, keepdim=True)


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama", "qwen2"])
def test_local_checkpoint_logits_match_hf(checkpoints, tokenizer, family):
    """Unprocessed: the HF logits exactly; processed (the default): up to a constant per position."""
    path, hf = checkpoints[family]
    raw = load_model(path, device="cpu", processing=False)
    processed = load_model(path, device="cpu")
    for model in (raw, processed):
        assert isinstance(model, HookedTransformer)
        assert model.cfg.model_name == f"tiny-{family}"
        assert not model.training
    for toks in _tokens(tokenizer):
        with torch.no_grad():
            expected = hf(toks).logits
            got, got_processed = raw(toks), processed(toks)
        assert expected.std() > 0.3  # logits are not trivially tiny, so atol is meaningful
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_centred(got_processed), _centred(expected), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_processed.log_softmax(-1), expected.log_softmax(-1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_processing_changes_weights_not_logprobs_or_attention(checkpoints, tokenizer, family):
    """fold_ln / center_writing_weights / center_unembed / fold_value_biases are exact identities on
    log-probabilities and attention patterns (random GPT-2 with biases, random Llama with GQA)."""
    path, _ = checkpoints[family]
    raw = load_model(path, device="cpu", processing=False)
    processed = load_model(path, device="cpu")
    # the processing really happened: norm gains folded away, W_U centred (and, under LayerNorm,
    # every embedding centred and the value biases folded into b_O)
    assert processed.cfg.normalization_type == {"gpt2": "LNPre", "llama": "RMSPre"}[family]
    assert raw.cfg.normalization_type == {"gpt2": "LN", "llama": "RMS"}[family]
    assert processed.W_U.mean(-1).abs().max() < 1e-5 < raw.W_U.mean(-1).abs().max()
    if family == "gpt2":
        assert processed.W_E.mean(-1).abs().max() < 1e-5 < raw.W_E.mean(-1).abs().max()
        assert processed.b_V.abs().max() == 0 < raw.b_V.abs().max()
    names = lambda n: n.endswith("hook_pattern")  # noqa: E731
    for toks in _tokens(tokenizer):
        with torch.no_grad():
            logits_raw, cache_raw = raw.run_with_cache(toks, names_filter=names)
            logits_proc, cache_proc = processed.run_with_cache(toks, names_filter=names)
        torch.testing.assert_close(logits_proc.log_softmax(-1), logits_raw.log_softmax(-1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_centred(logits_proc), _centred(logits_raw), atol=1e-4, rtol=1e-4)
        assert len(cache_raw) == raw.cfg.n_layers
        for name in cache_raw:
            torch.testing.assert_close(cache_proc[name], cache_raw[name], atol=1e-5, rtol=1e-4)


def test_processing_flags_recorded(checkpoints):
    gpt2, llama = checkpoints["gpt2"][0], checkpoints["llama"][0]
    everything = dict.fromkeys(models.PROCESSING_FLAGS, True)
    info = model_info(load_model(gpt2, device="cpu"))
    assert info["processing"] == everything and not info["processing_inferred"]
    assert info["architecture"] == "GPT2LMHeadModel" and info["path"] == str(gpt2.resolve())
    assert info["dtype"] == "float32" and info["transformer_lens"] and info["n_layers"] == 2
    # TransformerLens does not centre writing weights under RMSNorm: recorded as not applied
    assert model_info(load_model(llama, device="cpu"))["processing"] == {**everything, "center_writing_weights": False}
    assert model_info(load_model(gpt2, device="cpu", processing=False))["processing"] == dict.fromkeys(everything, False)
    one_off = model_info(load_model(gpt2, device="cpu", center_unembed=False))["processing"]
    assert one_off == {**everything, "center_unembed": False}
    only_fold = model_info(load_model(gpt2, device="cpu", processing=False, fold_ln=True))["processing"]
    assert only_fold == {**dict.fromkeys(everything, False), "fold_ln": True}
    with pytest.raises(TypeError, match="fold_ln must be True, False or None"):
        load_model(gpt2, fold_ln="yes")


def test_model_info_inferred_for_models_not_loaded_here(checkpoints, tokenizer):
    """Without a record, the processing is read off the weights, and agrees with the record."""
    processed = load_model(checkpoints["gpt2"][0], device="cpu")
    recorded = model_info(processed)["processing"]
    delattr(processed, models.MODEL_INFO_ATTR)
    info = model_info(processed)
    assert info["processing_inferred"] and info["source"] == "not loaded by icl_circuits.load_model"
    # folded value biases are zero, as are absent ones: the weights cannot tell, so None
    assert info["processing"] == {**recorded, "fold_value_biases": None}
    bare = model_info(_tiny_hooked(tokenizer, normalization_type="LN"))
    assert bare["processing"]["fold_ln"] is False and bare["processing"]["center_unembed"] is False
    assert bare["processing_inferred"] and bare["processing"]["fold_value_biases"] is None  # zero-initialised b_V


def test_task_vector_refused_by_differently_processed_model(checkpoints, tmp_path):
    from icl_circuits.methods.vectors import TaskVector

    path = checkpoints["gpt2"][0]
    processed, raw = load_model(path, device="cpu"), load_model(path, device="cpu", processing=False)
    tv = TaskVector(torch.zeros(1, 32), [1], "add", "vanilla", "antonym", model="tiny-gpt2",
                    model_info=model_info(processed))
    tv.check_model(processed)
    assert processing_mismatch(tv.model_info["processing"], raw)["fold_ln"] == (True, False)
    with pytest.raises(ValueError, match=r"processed differently \(fold_ln: vector True, model False.*"
                                         r"load_model\(\.\.\., fold_ln=True, center_writing_weights=True"):
        tv.check_model(raw)
    TaskVector(torch.zeros(1, 32), [1], "add", "vanilla", "antonym", model="old save").check_model(raw)  # no record
    loaded = TaskVector.load(tv.save(tmp_path / "tv"))  # the record survives a save
    assert loaded.model_info == tv.model_info
    with pytest.raises(ValueError, match="processed differently"):
        loaded.check_model(raw)


def _bos_adding_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    """The same BPE, with a post-processor that puts <|endoftext|> (its BOS) first, as Llama-2's does."""
    from tokenizers import processors

    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    bos = tokenizer.bos_token_id
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<pad>")


def test_start_of_prompt_follows_the_tokenizer(checkpoints, tokenizer, tmp_path):
    """BOS first only where the model saw one in training (module docstring's rule)."""
    llama = load_model(checkpoints["llama"][0], device="cpu")
    assert tokenizer("a b").input_ids == tokenizer("a b", add_special_tokens=False).input_ids
    assert llama.cfg.default_prepend_bos is False
    assert model_info(llama)["prepend_bos"] is False
    assert model_info(llama)["prepend_bos_rule"] == "the tokenizer adds no BOS token of its own"
    text = "Input: cat Output: dog"
    assert llama.to_tokens(text)[0].tolist() == tokenizer(text).input_ids  # nothing prepended
    gpt2 = load_model(checkpoints["gpt2"][0], device="cpu")
    assert gpt2.cfg.default_prepend_bos is True and "GPT-2" in model_info(gpt2)["prepend_bos_rule"]
    assert gpt2.to_tokens(text)[0, 0].item() == tokenizer.bos_token_id
    for family in ("pythia", "qwen2"):
        assert load_model(checkpoints[family][0], device="cpu").cfg.default_prepend_bos is False
    # a Llama whose tokenizer adds its BOS itself (Llama-2 style) gets one
    path = tmp_path / "llama-bos"
    LlamaForCausalLM(_hf_configs(len(tokenizer))["llama"][1]).save_pretrained(path)
    bos_tok = _bos_adding_tokenizer(tokenizer)
    assert bos_tok("a b").input_ids[0] == tokenizer.bos_token_id
    bos_tok.save_pretrained(path)
    with_bos = load_model(path, device="cpu")
    assert with_bos.cfg.default_prepend_bos is True
    assert model_info(with_bos)["prepend_bos_rule"] == "the tokenizer adds its BOS token itself"


def test_family_specific_config(checkpoints):
    pythia = load_model(checkpoints["pythia"][0], device="cpu")
    assert pythia.cfg.parallel_attn_mlp and pythia.cfg.rotary_dim == 2  # 0.25 * d_head 8
    llama = load_model(checkpoints["llama"][0], device="cpu")
    assert llama.cfg.n_key_value_heads == 2 and llama.cfg.gated_mlp
    gpt2 = load_model(checkpoints["gpt2"][0], device="cpu")
    assert gpt2.cfg.positional_embedding_type == "standard" and gpt2.cfg.n_ctx == 64


def test_tokenizer_attached_and_dtype(checkpoints, tokenizer):
    model = load_model(str(checkpoints["qwen2"][0]), device="cpu", dtype="float64")
    assert model.W_U.dtype == torch.float64
    text = "Input: cat Output: dog"
    assert model.to_tokens(text, prepend_bos=False)[0].tolist() == tokenizer(text).input_ids
    assert model.to_string(model.to_tokens(text, prepend_bos=False)[0]) == text
    check_hooked_interface(model)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'xyz'.*'toy-icl', 'smollm2-135m'.*local Hugging Face "
                                         "checkpoint.*TransformerLens model name"):
        load_model("xyz")


@pytest.mark.parametrize("bad", ["/nonexistent", "./no/such/dir", "~/no-such-model-dir", "weights.safetensors"])
def test_missing_path_says_so(bad):
    with pytest.raises(FileNotFoundError, match=f"model path '{bad}' does not exist.*'smollm2-135m'"):
        load_model(bad)


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not a Hugging Face checkpoint directory"):
        load_model(tmp_path / "weights.bin")


def test_unsupported_architecture(tmp_path):
    cfg = OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                    vocab_size=64, max_position_embeddings=32, word_embed_proj_dim=16)
    OPTForCausalLM(cfg).save_pretrained(tmp_path / "opt")
    with pytest.raises(ValueError, match="OPTForCausalLM.*GPT2LMHeadModel.*LlamaForCausalLM"):
        load_model(tmp_path / "opt")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unsupported architecture model_type 'bert'"):
        load_model(tmp_path / "bert")


@pytest.mark.parametrize("bad", ["float33", "int8", 3])
def test_bad_dtype(checkpoints, bad):
    with pytest.raises(ValueError, match="dtype"):
        load_model(checkpoints["gpt2"][0], dtype=bad)


def test_toy_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "TOY_WEIGHTS_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="weights are missing.*icl-circuits train-toy"):
        load_model("toy-icl")


def _tiny_hooked(tokenizer, **extra) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=32,
                                  d_vocab=len(tokenizer), act_fn="gelu", device="cpu", seed=0, **extra)
    return HookedTransformer(cfg, tokenizer=tokenizer)


def test_toy_loader(tmp_path, monkeypatch, tokenizer):
    """The toy loader on a fake bundle with the same layout as icl_circuits/toy."""
    from safetensors.torch import save_file

    ref = _tiny_hooked(tokenizer, normalization_type="LN")
    weights, tok_dir = tmp_path / "weights", tmp_path / "tokenizer"
    weights.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, weights / "model.safetensors")
    (weights / "config.json").write_text(json.dumps(dict(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=32, d_vocab=len(tokenizer),
        act_fn="gelu", normalization_type="LN", model_name="whatever")))
    tokenizer.save_pretrained(tok_dir)
    monkeypatch.setattr(models, "TOY_WEIGHTS_DIR", weights)
    monkeypatch.setattr(models, "TOY_TOKENIZER_DIR", tok_dir)

    model = load_model("toy-icl", device="cpu")
    assert model.cfg.model_name == "toy-icl" and not model.training
    # unprocessed by default: the toy's documented numbers were measured that way
    assert model_info(model)["processing"] == dict.fromkeys(models.PROCESSING_FLAGS, False)
    assert model.cfg.normalization_type == "LN" and model_info(model)["prepend_bos"] is True
    assert model.tokenizer is not None and model.W_E.dtype == torch.float32
    toks = torch.randint(0, len(tokenizer), (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(toks), ref(toks))
    assert load_model("toy-icl", device="cpu", dtype=torch.float64).W_E.dtype == torch.float64
    processed = load_model("toy-icl", device="cpu", processing=True)
    assert processed.cfg.normalization_type == "LNPre"
    assert model_info(processed)["processing"] == dict.fromkeys(models.PROCESSING_FLAGS, True)
    with torch.no_grad():
        torch.testing.assert_close(processed(toks).log_softmax(-1), ref(toks).log_softmax(-1), atol=1e-5, rtol=1e-4)


def test_transformer_lens_name_routes_to_from_pretrained(monkeypatch, tokenizer):
    calls = []

    def fake_from_pretrained(name, device=None, dtype=None, **flags):
        calls.append((name, device, dtype, flags))
        return _tiny_hooked(tokenizer, normalization_type="LNPre" if flags["fold_ln"] else "LN")

    monkeypatch.setattr(HookedTransformer, "from_pretrained", fake_from_pretrained)
    load_model("pythia-70m", device="cpu", dtype="bf16")
    model = load_model("gpt2", processing=False, center_unembed=True)
    everything = dict.fromkeys(models.PROCESSING_FLAGS, True)
    assert calls[0] == ("pythia-70m", "cpu", torch.bfloat16, everything)  # from_pretrained's defaults
    assert calls[1][0] == "gpt2" and calls[1][2] == torch.float32
    assert calls[1][3] == {**dict.fromkeys(everything, False), "center_unembed": True}
    assert model_info(model)["processing"] == calls[1][3]
    assert model_info(model)["source"] == "TransformerLens from_pretrained"


def test_check_hooked_interface(tokenizer):
    check_hooked_interface(_tiny_hooked(tokenizer))

    class NotHooked(torch.nn.Module):
        cfg = tokenizer = None

        def to_tokens(self): ...

    with pytest.raises(TypeError, match="'run_with_hooks'"):
        check_hooked_interface(NotHooked())
