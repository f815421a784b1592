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

#: The tasks toy-icl's vocabulary and training cover, in the recipe's order (the task library as
#: it stood when the bundled weights were trained; tasks added to the library later, such as the
#: natural-label ``sentiment``, are for pretrained models and are not in the toy's vocabulary).
TOY_TASKS: tuple[str, ...] = (
    "antonym", "country-capital", "capitalize", "english-french", "present-past", "singular-plural",
    "english-spanish", "english-german", "uppercase", "first-letter", "last-letter", "next-letter",
    "repeat-word", "letter-string", "number", "point",
)

__all__ = ["TOY_DIR", "WEIGHTS_DIR", "TOKENIZER_DIR", "TOY_TASKS", "toy_or_untrained"]


def toy_or_untrained(device: str = "cpu"):
    """``(model, trained)``: ``load_model("toy-icl")``, or, in a tree whose weights are not trained
    yet, an untrained model of the recipe's shape named "random-toy-shape" (for benchmarks and
    scripts that must run either way)."""
    from icl_circuits.core.models import load_model

    try:
        return load_model("toy-icl", device=device), True
    except FileNotFoundError:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformers import PreTrainedTokenizerFast

        from icl_circuits.toy.train import ToyRecipe, model_config

        tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
        kwargs = {**model_config(ToyRecipe(), len(tok)), "model_name": "random-toy-shape"}
        return HookedTransformer(HookedTransformerConfig(**kwargs, seed=0, device=device), tokenizer=tok).eval(), False
