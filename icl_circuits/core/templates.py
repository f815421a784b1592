"""Templates and the tokenizer side of prompt building: how an example is rendered, which
template a tokenizer gets by default, and how a field's characters map to token spans.

``Template`` renders ``prefix + x_1 SEP y_1 + joiner + ... + x_q SEP``. The default depends on the
tokenizer (``default_template``): ``"{x}:{y}"`` for the bundled word-level model, whose tokenizer
drops spaces, and ``"{x} -> {y}"`` for subword tokenizers (byte-level BPE, metaspace), where a space
before the answer makes its first token the whole-word token the model saw in pretraining.
A field's token span is the set of tokens whose character offsets overlap the field
(``token_span``); a token that mixes a field with non-whitespace template text is an error
(``TokenizationBoundaryError``), never a silent approximation.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Template", "default_template", "COMPACT_TEMPLATE", "SPACED_TEMPLATE", "TokenizationBoundaryError",
           "UnrepresentableTextError", "Rendered", "render", "token_span", "get_tokenizer", "tokenize_with_offsets",
           "unknown_words"]


class UnrepresentableTextError(ValueError):
    """The tokenizer maps part of a prompt to its unknown token: the model cannot read the task."""


class TokenizationBoundaryError(ValueError):
    """A token straddles a field (input or answer) and the template text around it."""


@dataclass(frozen=True)
class Template:
    """How one example is rendered and how examples are joined.

    example: a format string with exactly one ``{x}`` and one ``{y}``, ``{x}`` first
        (e.g. ``"{x}:{y}"``, ``"Input: {x}\\nOutput: {y}"``, ``"{x} -> {y}"``).
    joiner: text between consecutive examples.
    prefix: text before the first example (an instruction, or nothing).
    """

    example: str = "{x}:{y}"
    joiner: str = "\n"
    prefix: str = ""

    def __post_init__(self) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.example) if f is not None]
        if sorted(fields) != ["x", "y"] or self.example.index("{x}") > self.example.index("{y}"):
            raise ValueError(
                f"template must contain exactly one '{{x}}' followed by one '{{y}}' and no other "
                f"fields, got {self.example!r}"
            )
        if not self.joiner:
            raise ValueError("template joiner must be non-empty (examples would run together)")

    @property
    def parts(self) -> tuple[str, str, str]:
        """(text before x, separator between x and y, text after y)."""
        before, rest = self.example.split("{x}")
        sep, after = rest.split("{y}")
        return before, sep, after

    @classmethod
    def coerce(cls, template: "Template | str | dict | None") -> "Template":
        if template is None:
            return cls()
        if isinstance(template, Template):
            return template
        if isinstance(template, str):
            return cls(example=template)
        if isinstance(template, dict):
            return cls(**template)
        raise TypeError(f"template must be a Template, a format string or a dict, got {type(template).__name__}")


@dataclass
class Rendered:
    """A rendered prompt text and the character span ``[start, end)`` of every field in it."""

    text: str
    input_chars: list[tuple[int, int]]
    answer_chars: list[tuple[int, int]]  # last one is the query's gold answer


def render(template: Template, demos: Sequence[tuple[str, str]], query: tuple[str, str]) -> Rendered:
    """The text ``prefix + x_1 SEP y_1 + joiner + ... + x_q SEP y_q`` of ``demos`` then ``query`` (its gold
    answer included) and each field's character span: ``input_chars`` and ``answer_chars``, one per
    example in order, the last one the query's."""
    before, sep, after = template.parts
    text = template.prefix
    inputs, answers = [], []
    for i, (x, y) in enumerate([*demos, query]):
        if i > 0:
            text += template.joiner
        text += before
        inputs.append((len(text), len(text) + len(x)))
        text += x + sep
        answers.append((len(text), len(text) + len(y)))
        text += y + after
    return Rendered(text, inputs, answers)


def token_span(offsets: Sequence[tuple[int, int]], text: str, a: int, b: int, what: str) -> tuple[int, int]:
    """[first, last+1) of the tokens overlapping characters [a, b); checks clean boundaries."""
    idx = [t for t, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
    if not idx:
        raise TokenizationBoundaryError(f"no token covers the {what} {text[a:b]!r}")
    first, last = idx[0], idx[-1]
    s0, e1 = offsets[first][0], offsets[last][1]
    if text[s0:a].strip() or text[b:e1].strip():
        raise TokenizationBoundaryError(
            f"the tokenizer merges the {what} {text[a:b]!r} with the template text around it "
            f"(tokens cover {text[s0:e1]!r}); positions would be ambiguous. Put a space or a "
            f"different separator between the fields in the template."
        )
    return first, last + 1


def get_tokenizer(model_or_tokenizer: Any) -> tuple[Any, int | None, bool]:
    """(tokenizer, n_ctx or None, whether a BOS token is prepended by default)."""
    tok = getattr(model_or_tokenizer, "tokenizer", None)
    cfg = getattr(model_or_tokenizer, "cfg", None)
    if tok is None and cfg is None:
        tok = model_or_tokenizer
    if tok is None:
        raise ValueError("model_or_tokenizer: the model has no tokenizer attached")
    try:
        tok("a b", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        ok = getattr(tok, "is_fast", True)
    except Exception:  # slow tokenizers raise NotImplementedError, others TypeError/KeyError
        ok = False
    if not ok:
        raise ValueError(
            f"model_or_tokenizer: {type(tok).__name__} cannot return offset mappings, which exact "
            "positions need; use a fast (Rust-backed) tokenizer, e.g. load it with use_fast=True"
        )
    n_ctx = getattr(cfg, "n_ctx", None) if cfg is not None else None
    prepend = bool(getattr(cfg, "default_prepend_bos", True)) if cfg is not None else True
    return tok, n_ctx, prepend and tok.bos_token_id is not None


#: The default template where spaces carry no information (the bundled word-level model).
COMPACT_TEMPLATE = Template("{x}:{y}")


#: The default template of subword tokenizers: the answer is preceded by a space.
SPACED_TEMPLATE = Template("{x} -> {y}")


def default_template(model_or_tokenizer: Any) -> Template:
    """The template ``build_prompts`` uses when given ``template=None``, decided by the tokenizer.

    If inserting a space before a word does not change the token ids (``"hot:cold"`` and
    ``"hot: cold"`` tokenize alike: a word-level tokenizer that drops whitespace, like the bundled
    ``toy-icl``'s), spaces are meaningless and the compact ``COMPACT_TEMPLATE`` (``"{x}:{y}"``, the
    format ``toy-icl`` was trained on) is used. Otherwise (byte-level BPE as in GPT-2, metaspace /
    sentencepiece as in Llama, SmolLM2) ``SPACED_TEMPLATE`` (``"{x} -> {y}"``, joiner ``"\\n"``): a
    space before the answer makes its first token the whole-word token (``" cold"``) that such
    models produce after a space in ordinary text.
    """
    tok = get_tokenizer(model_or_tokenizer)[0]
    compact = tokenize_with_offsets(tok, "hot:cold")[0] == tokenize_with_offsets(tok, "hot: cold")[0]
    return COMPACT_TEMPLATE if compact else SPACED_TEMPLATE


def tokenize_with_offsets(tok: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``(token ids, character offsets (start, end) of each token)`` of ``text``, without special tokens."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def unknown_words(tok: Any, text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The pieces of ``text`` the tokenizer maps to its unknown token (none for byte-level tokenizers)."""
    unk = getattr(tok, "unk_token_id", None)
    return [] if unk is None else [text[a:b] for t, (a, b) in zip(ids, offsets) if t == unk]
