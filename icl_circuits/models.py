"""Load models as TransformerLens ``HookedTransformer`` s.

Three kinds of names are accepted by :func:`load_model`: the bundled ``"toy-icl"``, a local
Hugging Face checkpoint directory (converted offline, weights unprocessed so logits match the
HF model), or a TransformerLens model name (downloaded by TransformerLens itself).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

TOY_NAME = "toy-icl"
TOY_DIR = Path(__file__).resolve().parent / "toy"
TOY_WEIGHTS_DIR = TOY_DIR / "weights"
TOY_TOKENIZER_DIR = TOY_DIR / "tokenizer"

REQUIRED_ATTRIBUTES = (
    "cfg", "to_tokens", "tokenizer", "run_with_hooks", "run_with_cache", "hooks",
    "W_V", "W_O", "W_U", "ln_final", "forward",
)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ValueError(f"dtype: unknown dtype {dtype!r}; expected a torch.dtype or one of {sorted(_DTYPES)}")


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _new_model(cfg: HookedTransformerConfig, tokenizer: Any) -> HookedTransformer:
    with warnings.catch_warnings():  # TL 3.x flags HookedTransformer itself as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)


def check_hooked_interface(model: Any) -> None:
    """Raise TypeError naming the first attribute of the HookedTransformer interface ``model`` lacks."""
    for name in REQUIRED_ATTRIBUTES:
        # Look on the class first so that properties such as W_V are not evaluated.
        if not (hasattr(type(model), name) or hasattr(model, name)):
            raise TypeError(
                f"{type(model).__name__} lacks attribute {name!r}: expected a TransformerLens "
                "HookedTransformer (or a model with the same interface)"
            )


def _load_toy(device: str, dtype: torch.dtype | None) -> HookedTransformer:
    """Build the bundled "toy-icl" model from ``toy/weights`` and ``toy/tokenizer``."""
    weights, config = TOY_WEIGHTS_DIR / "model.safetensors", TOY_WEIGHTS_DIR / "config.json"
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(
                f"the bundled model's weights are missing: {f} ; train them with "
                "`icl-circuits train-toy`"
            )
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    kwargs = json.loads(config.read_text())
    kwargs["dtype"] = dtype or _resolve_dtype(kwargs.get("dtype")) or torch.float32
    kwargs.update(device=device, init_weights=False, model_name=TOY_NAME)
    cfg = HookedTransformerConfig(**kwargs)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TOY_TOKENIZER_DIR))
    model = _new_model(cfg, tokenizer)
    # strict for parameters; deterministic buffers (masks, rotary tables) may be left out
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    params = dict(model.named_parameters())
    bad = sorted(unexpected) + sorted(k for k in missing if k in params)
    if bad:
        raise RuntimeError(f"{weights} does not match {config}: mismatched keys {bad}")
    model.move_model_modules_to_device()
    model.cfg.model_name = TOY_NAME
    return model.eval()


# --- local Hugging Face checkpoints ------------------------------------------------------

def _rope(hf: Any) -> tuple[float, str, dict[str, Any]]:
    """(theta, rope type, parameters) across transformers 4.x (rope_theta/rope_scaling) and 5.x."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    params.update(getattr(hf, "rope_scaling", None) or {})
    theta = params.get("rope_theta") or getattr(hf, "rope_theta", None)
    theta = theta or getattr(hf, "rotary_emb_base", None) or 10000.0
    return float(theta), params.get("rope_type") or params.get("type") or "default", params


def _partial_rotary(hf: Any, params: dict[str, Any]) -> float:
    return float(getattr(hf, "rotary_pct", None) or params.get("partial_rotary_factor") or 1.0)


def _gpt2_cfg(hf: Any) -> dict[str, Any]:
    return dict(
        d_model=hf.n_embd, d_head=hf.n_embd // hf.n_head, n_heads=hf.n_head,
        d_mlp=hf.n_inner or 4 * hf.n_embd, n_layers=hf.n_layer, n_ctx=hf.n_positions,
        eps=hf.layer_norm_epsilon, act_fn=hf.activation_function,
        use_attn_scale=getattr(hf, "scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=getattr(hf, "scale_attn_by_inverse_layer_idx", False),
        normalization_type="LN", positional_embedding_type="standard",
    )


def _neox_cfg(hf: Any) -> dict[str, Any]:
    theta, rope_type, params = _rope(hf)
    _require(rope_type == "default", f"rope type {rope_type!r}")
    _require(getattr(hf, "attention_bias", True), "attention_bias=False")
    d_head = hf.hidden_size // hf.num_attention_heads
    return dict(
        d_model=hf.hidden_size, d_head=d_head, n_heads=hf.num_attention_heads,
        d_mlp=hf.intermediate_size, n_layers=hf.num_hidden_layers,
        n_ctx=hf.max_position_embeddings, eps=hf.layer_norm_eps, act_fn=hf.hidden_act,
        parallel_attn_mlp=getattr(hf, "use_parallel_residual", True),
        positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=int(d_head * _partial_rotary(hf, params)), rotary_base=theta,
        normalization_type="LN", default_prepend_bos=False,
    )


def _llama_like_cfg(hf: Any) -> dict[str, Any]:
    theta, rope_type, params = _rope(hf)
    _require(rope_type in ("default", "llama3"), f"rope type {rope_type!r}")
    _require(not getattr(hf, "mlp_bias", False), "mlp_bias=True")
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    n_kv = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    cfg = dict(
        d_model=hf.hidden_size, d_head=d_head, n_heads=hf.num_attention_heads,
        n_key_value_heads=n_kv, d_mlp=hf.intermediate_size, n_layers=hf.num_hidden_layers,
        n_ctx=hf.max_position_embeddings, eps=hf.rms_norm_eps, act_fn=hf.hidden_act,
        normalization_type="RMS", final_rms=True, gated_mlp=True,
        positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=int(d_head * _partial_rotary(hf, params)), rotary_base=theta,
    )
    if rope_type == "llama3":  # NTK-by-parts scaling, as TransformerLens maps it
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=params.get("original_max_position_embeddings", cfg["n_ctx"]),
            NTK_by_parts_low_freq_factor=params.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=params.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=params.get("factor", 1.0),
        )
    return cfg


def _llama_cfg(hf: Any) -> dict[str, Any]:
    _require(not getattr(hf, "attention_bias", False), "attention_bias=True")
    cfg = _llama_like_cfg(hf)
    if cfg["n_key_value_heads"] == cfg["n_heads"]:  # TL's llama converter: None means plain MHA
        cfg["n_key_value_heads"] = None
    return cfg


def _qwen2_cfg(hf: Any) -> dict[str, Any]:
    layer_types = getattr(hf, "layer_types", None) or []
    _require(not getattr(hf, "use_sliding_window", False) or set(layer_types) <= {"full_attention"},
             "sliding-window attention")
    return {**_llama_like_cfg(hf), "default_prepend_bos": False}


def _require(ok: Any, feature: str) -> None:
    if not ok:
        raise ValueError(f"unsupported checkpoint feature for HookedTransformer conversion: {feature}")


def _converters() -> dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[..., dict]]]:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gpt2_weights, convert_llama_weights, convert_neox_weights, convert_qwen2_weights,
    )
    return {
        "GPT2LMHeadModel": (_gpt2_cfg, convert_gpt2_weights),
        "GPTNeoXForCausalLM": (_neox_cfg, convert_neox_weights),
        "LlamaForCausalLM": (_llama_cfg, convert_llama_weights),
        "Qwen2ForCausalLM": (_qwen2_cfg, convert_qwen2_weights),
    }


SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = dict(zip(("gpt2", "gpt_neox", "llama", "qwen2"), SUPPORTED_ARCHITECTURES))


def _load_hf_dir(path: Path, device: str, dtype: torch.dtype | None) -> HookedTransformer:
    """Convert a local HF checkpoint directory to a HookedTransformer without any network access."""
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a Hugging Face checkpoint directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    raw = json.loads(config_file.read_text())
    arch = (raw.get("architectures") or [_MODEL_TYPES.get(raw.get("model_type"))])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        shown = arch or f"model_type {raw.get('model_type')!r}"
        raise ValueError(
            f"unsupported architecture {shown} in {config_file}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    make_cfg, convert = _converters()[arch]
    dtype = dtype or torch.float32
    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(f"could not load a tokenizer from {path}: {e}") from e
    cfg = HookedTransformerConfig(
        **make_cfg(hf_config), d_vocab=hf_config.vocab_size, original_architecture=arch,
        model_name=path.resolve().name, tokenizer_name=str(path), device=device, dtype=dtype,
        init_weights=False,
    )
    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    hf_model.eval().requires_grad_(False)
    state_dict = convert(hf_model, cfg)
    model = _new_model(cfg, tokenizer)
    unexpected = set(state_dict) - set(model.state_dict())
    if unexpected:
        raise RuntimeError(f"weight conversion produced unexpected keys: {sorted(unexpected)}")
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    del hf_model, state_dict
    model.move_model_modules_to_device()
    return model.eval()


def _official_name(name: str) -> str | None:
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    return make_model_alias_map().get(name.lower())


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> HookedTransformer:
    """Load ``"toy-icl"``, a local HF checkpoint directory or a TransformerLens model name.

    Returns an eval-mode ``HookedTransformer`` on ``device`` (default: CUDA if available, else
    CPU) in ``dtype`` (default float32, or the toy config's dtype). Local checkpoints are loaded
    offline and unprocessed (logits equal the HF model's); TransformerLens names go through
    ``HookedTransformer.from_pretrained`` with its default weight processing and need hub access.
    """
    torch_dtype = _resolve_dtype(dtype)
    device = _resolve_device(device)
    name = os.fspath(name_or_path)
    if name == TOY_NAME:
        model = _load_toy(device, torch_dtype)
    elif Path(name).exists():
        model = _load_hf_dir(Path(name), device, torch_dtype)
    elif _official_name(name) is not None:
        model = HookedTransformer.from_pretrained(name, device=device, dtype=torch_dtype or torch.float32)
        model.eval()
    else:
        raise ValueError(
            f"unknown model {name!r}: expected {TOY_NAME!r}, a local Hugging Face checkpoint "
            "directory, or a TransformerLens model name (e.g. 'gpt2', 'pythia-70m')"
        )
    check_hooked_interface(model)
    return model


__all__ = ["load_model", "check_hooked_interface", "SUPPORTED_ARCHITECTURES", "TOY_NAME"]
