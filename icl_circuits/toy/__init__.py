"""The bundled ICL model "toy-icl": a small HookedTransformer trained by ``icl_circuits.toy.train``.

Files shipped in the package:
``weights/model.safetensors`` (state dict), ``weights/config.json`` (HookedTransformerConfig
keyword arguments), ``weights/training.json`` (the recipe's arguments, command and training log)
and ``tokenizer/`` (a word-level ``PreTrainedTokenizerFast``).
"""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = TOY_DIR / "weights"
TOKENIZER_DIR = TOY_DIR / "tokenizer"

__all__ = ["TOY_DIR", "WEIGHTS_DIR", "TOKENIZER_DIR"]
