"""The bundled model's tokenizer: word level over the task library's vocabulary.

Spaces separate words and are dropped; every other character that is not part of a word
(``:``, ``\\n``, ``-``, ``>``, ...) is a token of its own. Offsets point into the original text, so
``build_prompts`` locates positions exactly as it does for byte-level BPE or sentencepiece
tokenizers. Words outside the vocabulary become ``<unk>``.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from icl_circuits.core.tasks import LABEL_POOL, get_task
from icl_circuits.toy import TOY_TASKS

SPECIAL_TOKENS = ("<pad>", "<bos>", "<unk>")
TEMPLATE_WORDS = ("Input", "Output", "Q", "A")
PUNCTUATION = tuple(":,.;!?-><=()[]/|'\"\n")


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\w+|[^\w]"), behavior="isolated"),
        ]
    )


def toy_vocabulary() -> list[str]:
    """Every piece that the toy's tasks (``TOY_TASKS``), label pool and templates can produce, sorted."""
    pt = _pre_tokenizer()
    pieces: set[str] = set(string.ascii_letters) | {str(i) for i in range(100)}
    pieces |= set(PUNCTUATION) | set(TEMPLATE_WORDS) | set(LABEL_POOL)
    for name in TOY_TASKS:
        task = get_task(name)
        for text in [*task.inputs(), *task.outputs()]:
            pieces |= {p for p, _ in pt.pre_tokenize_str(text)}
    return sorted(pieces)


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer over ``toy_vocabulary()`` with <bos>, <pad> and <unk>."""
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *toy_vocabulary()])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = _pre_tokenizer()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # words joined by spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
        eos_token="<pad>", model_max_length=256,
    )


def save_toy_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer and save it to ``directory`` (``tokenizer.json`` + configs)."""
    tok = build_toy_tokenizer()
    tok.save_pretrained(str(directory))
    return tok
