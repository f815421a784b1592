"""The task library: ``list_tasks()``, ``get_task(name)``, ``register_task(task)``.

Word-pair tasks are JSON tables in ``tasks/data/`` (written for this project). Categorization
tasks (METHODS.md section 4) have one fixed rule each. ``letter-string``, ``number`` and ``point``
draw their two label words per prompt from ``LABEL_POOL`` (arbitrary labels: the binding can only
come from the demos); ``sentiment`` and ``animal-plant`` have fixed, meaningful label words
(``negative`` / ``positive``, ``animal`` / ``plant``: the SST-2-style setting that a small
pretrained model can solve) and are JSON task files (``tasks/custom.py``, the format users write
their own tasks in). Algorithmic tasks apply a rule to a list of common words or letters.

Tasks of your own: ``register_task(task_from_pairs(name, pairs))`` or
``register_task("my_task.json")``; ``get_task(name)`` and ``list_tasks()`` then find them.
"""

from __future__ import annotations

import json
import string
from functools import lru_cache
from importlib import resources

import numpy as np

from pathlib import Path

from icl_circuits.core.tasks.base import CategorizationTask, Episode, RuleTask, Task, TaskKind, WordPairTask
from icl_circuits.core.tasks.custom import load_task, task_from_dict, task_from_pairs

__all__ = [
    "Task", "Episode", "TaskKind", "WordPairTask", "RuleTask", "CategorizationTask",
    "LABEL_POOL", "list_tasks", "get_task", "common_words", "task_from_pairs", "load_task",
    "register_task", "unregister_task",
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

#: Categorization tasks with fixed natural label words, as JSON task files (``tasks/custom.py``).
_NATURAL_FILES = {
    "sentiment": "sentiment.json",
    "animal-plant": "animal_plant.json",
}

LETTERS = string.ascii_lowercase


@lru_cache(maxsize=1)
def common_words() -> tuple[str, ...]:
    """The common lowercase words that algorithmic tasks are applied to."""
    text = resources.files("icl_circuits.core.tasks").joinpath("data", "common_words.json").read_text("utf-8")
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
    if name in _NATURAL_FILES:
        text = resources.files("icl_circuits.core.tasks").joinpath("data", _NATURAL_FILES[name]).read_text("utf-8")
        return task_from_dict(json.loads(text), f"tasks/data/{_NATURAL_FILES[name]}")
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
    **{n: "categorization" for n in ("letter-string", "number", "point", *_NATURAL_FILES)},
}

#: Tasks added with ``register_task`` (this process only).
_REGISTERED: dict[str, Task] = {}


def list_tasks(kind: TaskKind | None = None) -> list[str]:
    """Names of every task in the library, then the registered ones (optionally of one kind)."""
    if kind is not None and kind not in ("knowledge", "categorization", "algorithmic"):
        raise ValueError(f"kind must be 'knowledge', 'categorization' or 'algorithmic', got {kind!r}")
    kinds = {**_KINDS, **{n: t.kind for n, t in _REGISTERED.items()}}
    return [n for n, k in kinds.items() if kind is None or k == kind]


def get_task(name: str) -> Task:
    """The task called ``name`` (see ``list_tasks()``); a ``Task`` is returned as it is."""
    if isinstance(name, Task):
        return name
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _KINDS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(list_tasks())}")
    return _builtin(name)


@lru_cache(maxsize=None)
def _builtin(name: str) -> Task:
    return _build(name)


def register_task(task: Task | str | Path, *, overwrite: bool = False) -> Task:
    """Make ``task`` (a ``Task``, or the path of a JSON task file, see ``tasks/custom.py``) findable
    by ``get_task(task.name)`` and ``list_tasks()`` in this process; returns it.

    A built-in task's name cannot be taken; registering a name again needs ``overwrite=True``.
    """
    if isinstance(task, (str, Path)):
        task = load_task(task)
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task or the path of a JSON task file, got {type(task).__name__}")
    if task.name in _KINDS:
        raise ValueError(f"task name {task.name!r} is a built-in task; choose another name")
    if task.name in _REGISTERED and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it")
    if task.kind not in ("knowledge", "categorization", "algorithmic"):
        raise ValueError(f"task {task.name!r} has kind {task.kind!r}; expected knowledge, categorization or algorithmic")
    _REGISTERED[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task added with ``register_task`` (built-in tasks cannot be removed)."""
    if name not in _REGISTERED:
        raise ValueError(f"no registered task named {name!r} (registered: {', '.join(_REGISTERED) or 'none'})")
    del _REGISTERED[name]
