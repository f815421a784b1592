"""Task definitions: what an ICL task is and how examples are drawn from it.

A task maps an input string ``x`` to an output string ``y``. Three kinds:

- ``"knowledge"``: a fixed table of word pairs (antonyms, capitals, translations, ...). The
  demonstrations only tell the model *which* table to use.
- ``"categorization"``: a fixed rule assigns each input one of a few classes; the words that name
  the classes are re-drawn from a pool for every prompt, so the binding of class to label word
  can only come from the context.
- ``"algorithmic"``: a rule computed from the input (uppercase, first letter, ...).

Every draw takes a seed; the same seed gives the same examples.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Literal, Sequence

import numpy as np

TaskKind = Literal["knowledge", "categorization", "algorithmic"]


@dataclass(frozen=True)
class Episode:
    """Examples drawn for one prompt.

    pairs: the (input, output) examples, all under the same label binding.
    label_words: for categorization tasks, the word naming each class in this episode
        (``label_words[c]`` names class ``c``); ``None`` for other kinds.
    """

    pairs: list[tuple[str, str]]
    label_words: tuple[str, ...] | None = None


def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


class Task(ABC):
    """An ICL task: a name, a kind, a sampler and the function it computes."""

    name: str
    kind: TaskKind
    description: str

    @abstractmethod
    def inputs(self) -> list[str]:
        """Every input the task is defined on, in a fixed order."""

    @abstractmethod
    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        """The task's output for input ``x`` (``None`` if ``x`` is outside its domain).

        For categorization tasks the output is the word naming ``x``'s class under
        ``label_words`` (default: the first words of the label pool).
        """

    @property
    def label_words(self) -> list[str] | None:
        """The fixed set of words outputs are drawn from, if the task has one."""
        return None

    def outputs(self) -> list[str]:
        """Every output the task can produce (sorted, unique)."""
        if self.label_words is not None:
            return list(self.label_words)
        return sorted({y for x in self.inputs() if (y := self.apply(x)) is not None})

    def __len__(self) -> int:
        return len(self.inputs())

    def sample_episode(self, n: int, seed: int | np.random.Generator) -> Episode:
        """Draw ``n`` examples with distinct inputs for one prompt."""
        rng = _as_rng(seed)
        xs = self.inputs()
        if n > len(xs):
            raise ValueError(
                f"n={n} examples requested but task {self.name!r} has only {len(xs)} distinct inputs"
            )
        idx = rng.choice(len(xs), size=n, replace=False)
        pairs = [(xs[i], self.apply(xs[i])) for i in idx]
        return Episode(pairs=[(x, y) for x, y in pairs if y is not None])

    def sample(self, n: int, seed: int = 0) -> list[tuple[str, str]]:
        """``n`` (input, output) examples with distinct inputs; one label binding for all."""
        return self.sample_episode(n, seed).pairs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, size={len(self)})"


class WordPairTask(Task):
    """A fixed table of (input, output) pairs, loaded from ``tasks/data/<name>.json``."""

    def __init__(self, name: str, kind: TaskKind, description: str, pairs: Sequence[Sequence[str]]):
        if not pairs:
            raise ValueError(f"task {name!r} has no pairs")
        self.name, self.kind, self.description = name, kind, description
        table: dict[str, str] = {}
        for x, y in pairs:
            if x in table and table[x] != y:
                raise ValueError(f"task {name!r}: input {x!r} has two outputs {table[x]!r}, {y!r}")
            table[x] = y
        self._table = table
        self._inputs = list(table)

    @classmethod
    def from_json(cls, filename: str) -> "WordPairTask":
        text = resources.files("icl_circuits.tasks").joinpath("data", filename).read_text("utf-8")
        spec = json.loads(text)
        return cls(spec["name"], spec["kind"], spec["description"], spec["pairs"])

    def inputs(self) -> list[str]:
        return list(self._inputs)

    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        return self._table.get(x)


class RuleTask(Task):
    """An algorithmic task: ``rule`` applied to inputs from a fixed domain."""

    def __init__(
        self,
        name: str,
        description: str,
        domain: Sequence[str],
        rule: Callable[[str], str | None],
        kind: TaskKind = "algorithmic",
    ):
        self.name, self.kind, self.description = name, kind, description
        self._rule = rule
        self._inputs = [x for x in dict.fromkeys(domain) if rule(x) is not None]
        if not self._inputs:
            raise ValueError(f"task {name!r} has an empty domain")
        self._domain = set(self._inputs)

    def inputs(self) -> list[str]:
        return list(self._inputs)

    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        return self._rule(x) if x in self._domain else None


class CategorizationTask(Task):
    """A fixed rule maps each input to a class; class names are drawn per episode from a pool.

    ``classify(x)`` gives the class index (or ``None`` outside the domain). ``nuisance(x)`` gives
    a feature of the input that the label does not depend on (string length, parity, ...), used
    by dPCA to separate what the model stores about the input from what it stores about the label.
    """

    kind: TaskKind = "categorization"

    def __init__(
        self,
        name: str,
        description: str,
        domain: Sequence[str],
        classify: Callable[[str], int | None],
        n_classes: int,
        label_pool: Sequence[str],
        nuisance: Callable[[str], int] | None = None,
        nuisance_name: str | None = None,
    ):
        if len(label_pool) < n_classes:
            raise ValueError(f"task {name!r}: label pool smaller than the number of classes")
        self.name, self.description = name, description
        self.n_classes = n_classes
        self._classify = classify
        self._pool = list(label_pool)
        self._inputs = [x for x in dict.fromkeys(domain) if classify(x) is not None]
        self._by_class = [[x for x in self._inputs if classify(x) == c] for c in range(n_classes)]
        self._nuisance = nuisance
        self.nuisance_name = nuisance_name

    @property
    def label_words(self) -> list[str]:
        return list(self._pool)

    def inputs(self) -> list[str]:
        return list(self._inputs)

    def classify(self, x: str) -> int | None:
        """Class index of ``x`` under the fixed rule."""
        return self._classify(x)

    def nuisance(self, x: str) -> int:
        """The nuisance feature of ``x`` (raises if the task defines none)."""
        if self._nuisance is None:
            raise ValueError(f"task {self.name!r} defines no nuisance feature")
        return self._nuisance(x)

    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        c = self._classify(x)
        if c is None:
            return None
        words = list(label_words) if label_words is not None else self._pool[: self.n_classes]
        return words[c]

    def sample_episode(self, n: int, seed: int | np.random.Generator) -> Episode:
        """Draw a label binding (distinct words from the pool), then ``n`` inputs.

        Inputs are drawn with classes balanced in expectation (a class, then an input of it).
        """
        rng = _as_rng(seed)
        if n > len(self._inputs):
            raise ValueError(
                f"n={n} examples requested but task {self.name!r} has only {len(self._inputs)} inputs"
            )
        words = tuple(self._pool[i] for i in rng.choice(len(self._pool), self.n_classes, replace=False))
        chosen: list[str] = []
        seen: set[str] = set()
        while len(chosen) < n:
            c = int(rng.integers(self.n_classes))
            x = self._by_class[c][int(rng.integers(len(self._by_class[c])))]
            if x not in seen:
                seen.add(x)
                chosen.append(x)
        return Episode(pairs=[(x, self.apply(x, words)) for x in chosen], label_words=words)
