"""The task library: ``list_tasks()``, ``get_task(name)``.

Word-pair tasks are JSON tables in ``tasks/data/`` (written for this project). Categorization
tasks (METHODS.md section 4) have one fixed rule each and draw their two label words per prompt
from ``LABEL_POOL``. Algorithmic tasks apply a rule to a list of common words or letters.
"""

from __future__ import annotations

import json
import string
from functools import lru_cache
from importlib import resources

import numpy as np

from .base import CategorizationTask, Episode, RuleTask, Task, TaskKind, WordPairTask

__all__ = [
    "Task", "Episode", "TaskKind", "WordPairTask", "RuleTask", "CategorizationTask",
    "LABEL_POOL", "list_tasks", "get_task", "common_words",
]

#: Words that name the classes of categorization tasks; two are drawn for every prompt.
LABEL_POOL: tuple[str, ...] = (
    "apple", "river", "chair", "cloud", "tiger", "piano", "lemon", "stone",
    "robot", "candle", "ocean", "pencil", "garden", "rocket", "violin", "castle",
)

_WORD_PAIR_FILES = {
    "antonym": "antonym.json",
    "country-capital": "country_capital.json",
    "capitalize": "capitalize.json",
    "english-french": "english_french.json",
    "present-past": "present_past.json",
    "singular-plural": "singular_plural.json",
    "english-spanish": "english_spanish.json",
    "english-german": "english_german.json",
}

LETTERS = string.ascii_lowercase


@lru_cache(maxsize=1)
def common_words() -> tuple[str, ...]:
    """The common lowercase words that algorithmic tasks are applied to."""
    text = resources.files("icl_circuits.tasks").joinpath("data", "common_words.json").read_text("utf-8")
    return tuple(json.loads(text)["words"])


def _letter_strings(n: int = 1200, seed: int = 1234) -> list[str]:
    """A fixed domain of letter strings "k q z" (2 to 5 letters, space separated)."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        length = int(rng.integers(2, 6))
        out[" ".join(LETTERS[i] for i in rng.integers(0, 26, size=length))] = None
    return list(out)


def _letter_string_class(x: str) -> int | None:
    parts = x.split(" ")
    if not (2 <= len(parts) <= 5) or any(len(p) != 1 or p not in LETTERS for p in parts):
        return None
    return int(parts[0] > "m")


def _number_class(x: str) -> int | None:
    if not x.isdigit() or not 0 <= int(x) <= 99 or str(int(x)) != x:
        return None
    return int(int(x) >= 50)


def _point_class(x: str) -> int | None:
    parts = x.split(" ")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 1 for p in parts):
        return None
    a, b = int(parts[0]), int(parts[1])
    return None if a == b else int(a > b)


def _next_letter(x: str) -> str | None:
    return LETTERS[LETTERS.index(x) + 1] if len(x) == 1 and x in LETTERS[:-1] else None


def _build(name: str) -> Task:
    if name in _WORD_PAIR_FILES:
        return WordPairTask.from_json(_WORD_PAIR_FILES[name])
    word_rules = {
        "uppercase": ("a word -> the word in capitals", str.upper),
        "first-letter": ("a word -> its first letter", lambda w: w[0]),
        "last-letter": ("a word -> its last letter", lambda w: w[-1]),
        "repeat-word": ("a word -> the same word", lambda w: w),
    }
    if name in word_rules:
        description, rule = word_rules[name]
        return RuleTask(name, description, common_words(), rule)
    if name == "next-letter":
        return RuleTask(name, "a letter -> the next letter of the alphabet", LETTERS, _next_letter)
    if name == "letter-string":
        return CategorizationTask(
            name, "letters 'k q z' -> class of the first letter (a-m vs n-z)",
            _letter_strings(), _letter_string_class, 2, LABEL_POOL,
            nuisance=lambda x: len(x.split(" ")), nuisance_name="length",
        )
    if name == "number":
        return CategorizationTask(
            name, "a number 0-99 -> whether it is >= 50",
            [str(i) for i in range(100)], _number_class, 2, LABEL_POOL,
            nuisance=lambda x: int(x) % 2, nuisance_name="parity",
        )
    if name == "point":
        return CategorizationTask(
            name, "a point 'a b' (digits) -> which side of the diagonal a = b it lies on",
            [f"{a} {b}" for a in range(10) for b in range(10)], _point_class, 2, LABEL_POOL,
            nuisance=lambda x: (int(x[0]) + int(x[2])) % 2, nuisance_name="sum_parity",
        )
    raise AssertionError(name)


_KINDS: dict[str, TaskKind] = {
    **{n: "knowledge" for n in _WORD_PAIR_FILES},
    **{n: "algorithmic" for n in ("uppercase", "first-letter", "last-letter", "next-letter", "repeat-word")},
    **{n: "categorization" for n in ("letter-string", "number", "point")},
}


def list_tasks(kind: TaskKind | None = None) -> list[str]:
    """Names of every task in the library (optionally only those of one kind)."""
    if kind is not None and kind not in ("knowledge", "categorization", "algorithmic"):
        raise ValueError(f"kind must be 'knowledge', 'categorization' or 'algorithmic', got {kind!r}")
    return [n for n, k in _KINDS.items() if kind is None or k == kind]


@lru_cache(maxsize=None)
def get_task(name: str) -> Task:
    """The task called ``name`` (see ``list_tasks()``)."""
    if isinstance(name, Task):
        return name
    if name not in _KINDS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(list_tasks())}")
    return _build(name)
