"""Hugging Face config -> HookedTransformerConfig for the checkpoint families ``load_model`` converts
offline (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Gemma 3 text; TransformerLens's weight converters), and the
per-model choice of a BOS token at the start of a prompt (:func:`bos_rule`)."""

from __future__ import annotations

from typing import Any, Callable


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
        normalization_type="LN",
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
    return _llama_like_cfg(hf)


def _gemma3_cfg(hf: Any) -> dict[str, Any]:
    """Gemma 3 (text): TransformerLens 3.9's own Gemma 3 settings, read off the checkpoint's config:
    (1 + w) RMSNorm before and after attention and MLP (the converter adds the 1), QK-norm, local
    sliding-window and global layers (``layer_types``) with their own rotary bases, the embedding
    scaled by sqrt(d_model) (folded into ``W_E`` by the converter), ``1/sqrt(query_pre_attn_scalar)``
    attention scale. ``n_ctx`` is capped at 8192 as TransformerLens's config does (memory for the
    rotary tables; the model was trained to 32k)."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
    global_theta = full.get("rope_theta") or getattr(hf, "rope_theta", None) or 1_000_000.0
    local_theta = local.get("rope_theta") or getattr(hf, "rope_local_base_freq", None) or 10_000.0
    for kind, p in (("global", full), ("local", local)):
        _require((p.get("rope_type") or "default") == "default",
                 f"scaled rotary embeddings on {kind} layers")
    _require(getattr(hf, "attn_logit_softcapping", None) is None, "attention logit soft-capping")
    _require(not getattr(hf, "use_bidirectional_attention", False), "bidirectional attention")
    layer_types = list(getattr(hf, "layer_types", None) or [])
    _require(len(layer_types) == hf.num_hidden_layers
             and set(layer_types) <= {"sliding_attention", "full_attention"}, f"layer types {layer_types}")
    cfg = dict(
        d_model=hf.hidden_size, d_head=hf.head_dim, n_heads=hf.num_attention_heads,
        n_key_value_heads=hf.num_key_value_heads, d_mlp=hf.intermediate_size, n_layers=hf.num_hidden_layers,
        n_ctx=min(int(hf.max_position_embeddings), 8192), eps=hf.rms_norm_eps, act_fn=hf.hidden_activation,
        normalization_type="RMS", final_rms=True, gated_mlp=True, use_normalization_before_and_after=True,
        use_qk_norm=True, positional_embedding_type="rotary", rotary_dim=hf.head_dim,
        rotary_adjacent_pairs=False, rotary_base=float(global_theta), rotary_base_local=float(local_theta),
        use_local_attn=True, window_size=hf.sliding_window,
        attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types],
        use_attn_scale=True, attn_scale=float(hf.query_pre_attn_scalar) ** 0.5,
    )
    if getattr(hf, "final_logit_softcapping", None):
        cfg["output_logits_soft_cap"] = float(hf.final_logit_softcapping)
    return cfg


def _require(ok: Any, feature: str) -> None:
    if not ok:
        raise ValueError(f"unsupported checkpoint feature for HookedTransformer conversion: {feature}")


def converters() -> dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[..., dict]]]:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights, convert_gpt2_weights, convert_llama_weights, convert_neox_weights,
        convert_qwen2_weights,
    )
    return {
        "GPT2LMHeadModel": (_gpt2_cfg, convert_gpt2_weights),
        "GPTNeoXForCausalLM": (_neox_cfg, convert_neox_weights),
        "LlamaForCausalLM": (_llama_cfg, convert_llama_weights),
        "Qwen2ForCausalLM": (_qwen2_cfg, convert_qwen2_weights),
        "Gemma3ForCausalLM": (_gemma3_cfg, convert_gemma_weights),
    }


SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM",
                           "Gemma3ForCausalLM")
MODEL_TYPES = dict(zip(("gpt2", "gpt_neox", "llama", "qwen2", "gemma3_text"), SUPPORTED_ARCHITECTURES))


def attention_layout(path: Any) -> dict[str, Any]:
    """Which attention each layer of the checkpoint directory ``path`` has, for ``model_info``:
    ``{"layer_types": ["sliding_attention" | "full_attention", ...], "sliding_window": n}`` when its
    config.json states layer types (Gemma 3: five local layers per global one), else ``{}``."""
    import json
    from pathlib import Path

    raw = json.loads((Path(path) / "config.json").read_text())
    if not raw.get("layer_types"):
        return {}
    return {"layer_types": list(raw["layer_types"]), "sliding_window": raw.get("sliding_window")}


def bos_rule(tokenizer: Any, arch: str) -> tuple[bool, str]:
    """(default_prepend_bos, why): what the model saw at the start of a text in training.

    True when the tokenizer adds its BOS itself (``tokenizer(text)`` starts with ``bos_token_id``
    and ``add_special_tokens=False`` drops it); True for GPT-2 (documents separated by its BOS
    ``<|endoftext|>``, TransformerLens's convention) when it has a BOS; otherwise False.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False, "the tokenizer has no BOS token"
    probe = "a b"
    with_special = list(tokenizer(probe).input_ids)
    plain = list(tokenizer(probe, add_special_tokens=False).input_ids)
    if with_special[:1] == [bos] and len(with_special) > len(plain):
        return True, "the tokenizer adds its BOS token itself"
    if arch == "GPT2LMHeadModel":
        return True, "GPT-2: trained on documents separated by its BOS <|endoftext|> (TransformerLens's convention)"
    return False, "the tokenizer adds no BOS token of its own"


__all__ = ["SUPPORTED_ARCHITECTURES", "MODEL_TYPES", "converters", "bos_rule", "attention_layout"]
