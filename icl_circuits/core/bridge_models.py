"""Loading models as TransformerLens 4 ``TransformerBridge`` s in compatibility mode (``load_model(...,
backend="bridge")``), offline.

- a local Hugging Face directory (and ``smollm2-135m``): the model and tokenizer are loaded with
  ``local_files_only=True`` and handed to ``TransformerBridge.boot_transformers``; then
  ``enable_compatibility_mode`` registers the TransformerLens 3 hook names and applies the same
  weight processing ``load_model`` applies on TransformerLens 3 (``fold_ln``,
  ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``).
- ``toy-icl`` (a ``HookedTransformer`` state dict): booted natively (``TransformerBridgeConfig`` +
  ``TransformerBridge.boot_native``) and loaded with TransformerLens's ``convert_tl_checkpoint``.
  TransformerLens 3 rotates the toy's query/key pairs ``(i, i + d_head/2)`` (GPT-NeoX layout);
  the native attention rotates adjacent pairs ``(2i, 2i+1)``. Permuting the columns of ``W_Q``,
  ``W_K``, ``b_Q``, ``b_K`` by ``[0, d/2, 1, d/2+1, ...]`` maps one onto the other (both queries
  and keys are permuted, so ``q . k``, the pattern and everything after it are unchanged; only
  the coordinates of ``hook_q``/``hook_k`` are reordered).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from icl_circuits.core.hf_configs import bos_rule
from icl_circuits.core.model_info import applied_processing


def _bridge_cls() -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def _compat(bridge: Any, flags: dict[str, bool]) -> dict[str, bool]:
    """``enable_compatibility_mode`` with ``flags``; returns the flags as applied (``fold_ln`` and
    ``center_writing_weights`` follow TransformerLens 3's rules: norms folded only for LN/RMS models,
    writing weights centred only under LayerNorm)."""
    if not any(flags.values()):
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    else:
        bridge.enable_compatibility_mode(disable_warnings=True, **flags)
    norm = str(getattr(bridge.cfg, "normalization_type", None) or "")
    return applied_processing(flags, bridge.cfg, ln_folded=norm.upper() in ("LN", "RMS", "LNPRE", "RMSPRE"))


def load_hf_dir_bridge(path: Path, device: str, dtype: torch.dtype | None, flags: dict[str, bool], *,
                       arch: str, name: str | None = None) -> tuple[Any, dict[str, bool], str]:
    """A local Hugging Face checkpoint directory as a TransformerBridge in compatibility mode.
    Returns ``(bridge, processing as applied, BOS rule)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(f"could not load a tokenizer from {path}: {e}") from e
    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    hf_model.eval().requires_grad_(False)
    bridge = _bridge_cls().boot_transformers(str(path), hf_model=hf_model, tokenizer=tokenizer, device=device,
                                              dtype=dtype)
    applied = _compat(bridge, flags)
    prepend_bos, why = bos_rule(tokenizer, arch)
    bridge.cfg.default_prepend_bos = prepend_bos
    bridge.cfg.model_name = name or path.resolve().name
    bridge.cfg.original_architecture = arch
    bridge.tokenizer.padding_side = "right"  # PromptBatch pads right; positions come from the batch
    bridge.eval().requires_grad_(False)
    return bridge, applied, why


def _neox_to_adjacent(d_head: int, rotary_dim: int) -> torch.Tensor:
    """Column order that turns GPT-NeoX rotary pairs ``(i, i + r/2)`` into adjacent pairs ``(2i, 2i+1)``
    over the first ``rotary_dim`` coordinates of a head (the rest stay in place)."""
    half = rotary_dim // 2
    perm = torch.stack([torch.arange(half), torch.arange(half) + half], 1).reshape(-1)
    return torch.cat([perm, torch.arange(rotary_dim, d_head)])


def load_toy_bridge(weights: Path, config: Path, tokenizer: Any, device: str, dtype: torch.dtype | None,
                    flags: dict[str, bool], name: str) -> tuple[Any, dict[str, bool]]:
    """The bundled HookedTransformer state dict booted natively as a TransformerBridge."""
    from safetensors.torch import load_file
    from transformer_lens import TransformerBridgeConfig
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    kw = json.loads(config.read_text())
    if kw.get("positional_embedding_type") not in ("rotary", "standard", None):
        raise ValueError(f"the native bridge cannot run positional_embedding_type={kw['positional_embedding_type']!r}")
    dtype = dtype or torch.float32
    cfg = TransformerBridgeConfig(
        d_model=kw["d_model"], n_layers=kw["n_layers"], d_mlp=kw["d_mlp"], d_head=kw["d_head"], n_heads=kw["n_heads"],
        n_ctx=kw["n_ctx"], d_vocab=kw["d_vocab"], act_fn=kw["act_fn"], normalization_type=kw["normalization_type"],
        positional_embedding_type=kw.get("positional_embedding_type", "standard"),
        rotary_dim=kw.get("rotary_dim"), default_prepend_bos=kw.get("default_prepend_bos", True),
        architecture="TransformerLensNative", init_weights=False,
    )
    bridge = _bridge_cls().boot_native(cfg, tokenizer=tokenizer, device=device, dtype=dtype, model_name=name)
    sd = {k: v.to(dtype) for k, v in load_file(str(weights)).items()
          if not k.endswith((".mask", ".IGNORE", "rotary_sin", "rotary_cos"))}
    if kw.get("positional_embedding_type") == "rotary" and not kw.get("rotary_adjacent_pairs", False):
        perm = _neox_to_adjacent(kw["d_head"], kw.get("rotary_dim") or kw["d_head"])
        for k in list(sd):
            if k.endswith((".W_Q", ".W_K", ".b_Q", ".b_K")):
                sd[k] = sd[k][..., perm].contiguous()
    converted = convert_tl_checkpoint(sd, bridge.cfg)
    result = bridge.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(("_cached", "causal_mask"))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{weights} does not match the native bridge: missing {missing}, "
                           f"unexpected {list(result.unexpected_keys)}")
    applied = _compat(bridge, flags)
    bridge.cfg.model_name = name
    bridge.cfg.original_architecture = "TransformerLensNative"
    bridge.eval().requires_grad_(False)
    return bridge, applied


def native_bridge(tokenizer: Any = None, *, device: str = "cpu", dtype: torch.dtype | None = None,
                  seed: int | None = 0, **cfg: Any) -> Any:
    """A randomly initialised TransformerLens-native TransformerBridge in compatibility mode (no
    processing) from HookedTransformerConfig-style keyword arguments (``n_layers``, ``d_model``,
    ``n_heads``, ``d_head``, ``d_mlp``, ``n_ctx``, ``d_vocab``, ``act_fn``, ``normalization_type``,
    ``positional_embedding_type``, ``rotary_dim``, ``attn_only``, ``model_name``...): the TransformerLens 4
    counterpart of ``HookedTransformer(HookedTransformerConfig(**cfg))`` for tests and small experiments
    (same structure, different random weights)."""
    from transformer_lens import TransformerBridgeConfig

    name = cfg.pop("model_name", "native")
    cfg.pop("device", None)
    cfg.pop("init_weights", None)
    bcfg = TransformerBridgeConfig(**cfg, seed=seed, architecture="TransformerLensNative")
    bridge = _bridge_cls().boot_native(bcfg, tokenizer=tokenizer, device=device, dtype=dtype, model_name=name)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.cfg.model_name = name
    bridge.cfg.original_architecture = "TransformerLensNative"
    return bridge.eval()


__all__ = ["load_hf_dir_bridge", "load_toy_bridge", "native_bridge"]
