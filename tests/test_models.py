"""Tests for icl_circuits.models: offline conversion of tiny random HF checkpoints, the toy loader
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

from icl_circuits import models
from icl_circuits.models import check_hooked_interface, load_model

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


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama", "qwen2"])
def test_local_checkpoint_logits_match_hf(checkpoints, tokenizer, family):
    path, hf = checkpoints[family]
    model = load_model(path, device="cpu")
    assert isinstance(model, HookedTransformer)
    assert model.cfg.model_name == f"tiny-{family}"
    assert not model.training
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, len(tokenizer), (2, 24), generator=g),
              tokenizer(TEXTS, padding=True, return_tensors="pt").input_ids[:, :16]]
    for toks in tokens:
        with torch.no_grad():
            expected = hf(toks).logits
            got = model(toks)
        assert expected.std() > 0.3  # logits are not trivially tiny, so atol is meaningful
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


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
    with pytest.raises(ValueError, match="unknown model 'xyz'.*toy-icl.*local Hugging Face checkpoint"
                                         ".*TransformerLens model name"):
        load_model("xyz")


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
    """_load_toy on a fake bundle with the same layout as icl_circuits/toy."""
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
    assert model.tokenizer is not None and model.W_E.dtype == torch.float32
    toks = torch.randint(0, len(tokenizer), (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(toks), ref(toks))
    assert load_model("toy-icl", device="cpu", dtype=torch.float64).W_E.dtype == torch.float64


def test_transformer_lens_name_routes_to_from_pretrained(monkeypatch, tokenizer):
    calls = []

    def fake_from_pretrained(name, device=None, dtype=None):
        calls.append((name, device, dtype))
        return _tiny_hooked(tokenizer)

    monkeypatch.setattr(HookedTransformer, "from_pretrained", fake_from_pretrained)
    load_model("pythia-70m", device="cpu", dtype="bf16")
    load_model("gpt2")
    assert calls[0] == ("pythia-70m", "cpu", torch.bfloat16)
    assert calls[1][0] == "gpt2" and calls[1][2] == torch.float32


def test_check_hooked_interface(tokenizer):
    check_hooked_interface(_tiny_hooked(tokenizer))

    class NotHooked(torch.nn.Module):
        cfg = tokenizer = None

        def to_tokens(self): ...

    with pytest.raises(TypeError, match="'run_with_hooks'"):
        check_hooked_interface(NotHooked())
