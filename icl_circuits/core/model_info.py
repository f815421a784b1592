"""How a model was loaded, for every result to record: :func:`model_info` (name, source,
architecture, dtype, BOS rule, weight-processing flags, TransformerLens version) and
:func:`processing_mismatch` (which processing flags differ between a saved result and a model).
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import torch
from icl_circuits.core.types import HookedModel

__all__ = ["model_info", "processing_mismatch", "PROCESSING_FLAGS"]


MODEL_INFO_ATTR = "icl_model_info"


PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def tl_version() -> str:
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def record_load(model: HookedModel, *, source: str, path: str | None, processing: dict[str, bool],
            bos_rule: str, **extra: Any) -> None:
    """Store how ``model`` was loaded on it (read back with :func:`model_info`)."""
    cfg = model.cfg
    info = {
        "name": cfg.model_name, "source": source, "path": path,
        "architecture": cfg.original_architecture, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
        "n_heads": cfg.n_heads, "n_key_value_heads": cfg.n_key_value_heads, "d_vocab": cfg.d_vocab,
        "dtype": str(cfg.dtype).removeprefix("torch."), "prepend_bos": bool(cfg.default_prepend_bos),
        "prepend_bos_rule": bos_rule, "processing": {k: bool(processing[k]) for k in PROCESSING_FLAGS},
        "processing_inferred": False, "transformer_lens": tl_version(), **extra,
    }
    object.__setattr__(model, MODEL_INFO_ATTR, info)


def applied_processing(flags: dict[str, bool], cfg: Any, *, ln_folded: bool) -> dict[str, bool]:
    """The processing ``flags`` as a loader actually applied them, by TransformerLens's rules: norms
    folded only where the loader folded them (``ln_folded``), writing weights centred only under
    LayerNorm (not with a final RMSNorm), the unembedding not centred under a logit soft-cap."""
    norm = str(getattr(cfg, "normalization_type", None) or "")
    return {
        "fold_ln": bool(flags["fold_ln"] and ln_folded),
        "center_writing_weights": bool(flags["center_writing_weights"] and norm.upper() in ("LN", "LNPRE")
                                       and not getattr(cfg, "final_rms", False)),
        "center_unembed": bool(flags["center_unembed"] and not (getattr(cfg, "output_logits_soft_cap", None) or 0) > 0),
        "fold_value_biases": bool(flags["fold_value_biases"]),
    }


def infer_processing(model: HookedModel) -> dict[str, bool | None]:
    """Processing read off the weights of a model not loaded by :func:`load_model` (None: cannot tell).

    fold_ln: the norms have no gains (``LNPre``/``RMSPre``); center_writing_weights: LayerNorm and
    every embedding row has mean 0 over d_model; center_unembed: every row of ``W_U`` has mean 0
    over the vocabulary; fold_value_biases: False when some value bias is nonzero, None when all are
    zero (folded, or a model without value biases: the same model either way).
    """
    cfg = model.cfg
    norm = getattr(cfg, "normalization_type", None)

    def centred(w: torch.Tensor) -> bool:
        w = w.detach().float()
        return bool(w.mean(-1).abs().max() <= 1e-5 * max(float(w.abs().mean()), 1e-12))

    out: dict[str, bool | None] = {"fold_ln": norm in ("LNPre", "RMSPre")}
    try:
        out["center_writing_weights"] = bool(norm in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)
                                             and centred(model.W_E))
    except (AttributeError, RuntimeError):
        out["center_writing_weights"] = None
    try:
        out["center_unembed"] = centred(model.W_U)
    except (AttributeError, RuntimeError):
        out["center_unembed"] = None
    try:
        b_v = model.b_V
        out["fold_value_biases"] = None if not bool(b_v.detach().abs().max() > 0) else False
    except (AttributeError, RuntimeError):
        out["fold_value_biases"] = None
    return out


def model_info(model: HookedModel) -> dict[str, Any]:
    """How ``model`` was loaded, as a JSON-ready dict for a result's metadata.

    Keys: name, source, path, architecture, n_layers, d_model, n_heads, n_key_value_heads,
    d_vocab, dtype, prepend_bos (``cfg.default_prepend_bos`` now), prepend_bos_rule, processing
    (``{fold_ln, center_writing_weights, center_unembed, fold_value_biases}`` as applied),
    processing_inferred, transformer_lens (its version), and for the bundled real models and GGUF files
    the checkpoint's and the GGUF's sha256, the licence and bos_token (the token ``prepend_bos=True`` puts first). A model :func:`load_model` did not load gets a best-effort dict: processing
    read off its weights (``processing_inferred`` True; a flag is None where the weights cannot tell).
    """
    cfg = model.cfg
    stored = getattr(model, MODEL_INFO_ATTR, None)
    if isinstance(stored, dict):
        info = json.loads(json.dumps(stored))  # a copy the caller may change
    else:
        info = {
            "name": getattr(cfg, "model_name", None), "source": "not loaded by icl_circuits.load_model",
            "path": None, "architecture": getattr(cfg, "original_architecture", None),
            "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": getattr(cfg, "n_heads", None),
            "n_key_value_heads": getattr(cfg, "n_key_value_heads", None),
            "d_vocab": getattr(cfg, "d_vocab", None), "prepend_bos_rule": "unknown (the model's cfg)",
            "processing": infer_processing(model), "processing_inferred": True,
            "transformer_lens": tl_version(),
        }
    info["dtype"] = str(getattr(cfg, "dtype", "")).removeprefix("torch.") or None
    info["prepend_bos"] = bool(getattr(cfg, "default_prepend_bos", True))
    return info


def processing_mismatch(recorded: dict[str, Any] | None, model: HookedModel) -> dict[str, tuple[Any, Any]]:
    """Flags on which ``recorded`` (a saved ``model_info()["processing"]``) and ``model`` differ.

    Returns ``{flag: (recorded value, model's value)}``; flags unknown on either side (None, or an
    empty record from an older save) are not compared.
    """
    if not recorded:
        return {}
    now = model_info(model)["processing"]
    return {k: (recorded.get(k), now.get(k)) for k in PROCESSING_FLAGS
            if recorded.get(k) is not None and now.get(k) is not None and recorded[k] != now[k]}
