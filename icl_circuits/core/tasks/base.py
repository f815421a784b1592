"""Task definitions: what an ICL task is and how examples are drawn from it.

A task maps an input string ``x`` to an output string ``y``. Three kinds:

- ``"knowledge"``: a fixed table of word pairs (antonyms, capitals, translations, ...). The
  demonstrations only tell the model *which* table to use.
- ``"categorization"``: a fixed rule assigns each input one of a few classes. The words that name
  the classes are either re-drawn from a pool for every prompt (arbitrary labels: the binding of
  class to label word can only come from the context) or fixed and meaningful (natural labels,
  ``fixed_labels=True``: ``sentiment`` -> ``negative`` / ``positive``, as in SST-2).
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

    #: For a task cut from a larger one by ``subset`` (e.g. ``single_token_task``): the number of
    #: inputs of the task it was cut from; ``None`` for a whole task.
    source_size: int | None = None

    def subset(self, inputs: Sequence[str], description: str | None = None) -> "Task":
        """The same task (same name, kind and outputs) restricted to ``inputs``.

        ``source_size`` of the result is ``len(self)``; an input outside the task is an error.
        """
        keep = list(dict.fromkeys(inputs))
        unknown = sorted(set(keep) - set(self.inputs()))
        if unknown:
            raise ValueError(f"inputs: {unknown[:5]} are not inputs of task {self.name!r}")
        if not keep:
            raise ValueError(f"inputs: no input left of task {self.name!r}")
        sub = self._subset(keep, self.description if description is None else description)
        sub.source_size = len(self) if self.source_size is None else self.source_size
        return sub

    def _subset(self, inputs: list[str], description: str) -> "Task":
        raise NotImplementedError(f"{type(self).__name__} does not support subset()")

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
        text = resources.files("icl_circuits.core.tasks").joinpath("data", filename).read_text("utf-8")
        spec = json.loads(text)
        return cls(spec["name"], spec["kind"], spec["description"], spec["pairs"])

    def inputs(self) -> list[str]:
        return list(self._inputs)

    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        return self._table.get(x)

    def _subset(self, inputs: list[str], description: str) -> "WordPairTask":
        return WordPairTask(self.name, self.kind, description, [(x, self._table[x]) for x in inputs])


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

    def _subset(self, inputs: list[str], description: str) -> "RuleTask":
        return RuleTask(self.name, description, inputs, self._rule, self.kind)


class CategorizationTask(Task):
    """A fixed rule maps each input to a class; the words naming the classes are drawn per
    episode from a pool (arbitrary labels) or fixed (natural labels).

    ``classify(x)`` gives the class index (or ``None`` outside the domain). ``nuisance(x)`` gives
    a feature of the input that the label does not depend on (string length, parity, topic, ...),
    used by dPCA to separate what the model stores about the input from what it stores about the
    label.

    ``fixed_labels=False`` (arbitrary labels): every episode draws ``n_classes`` distinct words
    from ``label_pool``. ``fixed_labels=True`` (natural labels): ``label_pool`` holds exactly
    ``n_classes`` words, ``label_pool[c]`` names class ``c`` in every episode (a meaningful word
    such as ``"positive"``, which a pretrained model can use without demos).
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
        *,
        fixed_labels: bool = False,
    ):
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"task {name!r}: n_classes must be an integer >= 2, got {n_classes!r}")
        if len(set(label_pool)) != len(label_pool):
            raise ValueError(f"task {name!r}: label words must be distinct, got {list(label_pool)}")
        if len(label_pool) < n_classes:
            raise ValueError(f"task {name!r}: label pool smaller than the number of classes")
        if fixed_labels and len(label_pool) != n_classes:
            raise ValueError(f"task {name!r}: fixed_labels=True needs exactly one label word per class "
                             f"({n_classes}), got {list(label_pool)}")
        self.name, self.description = name, description
        self.n_classes = n_classes
        self.fixed_labels = fixed_labels
        self._classify = classify
        self._pool = list(label_pool)
        self._inputs = [x for x in dict.fromkeys(domain) if classify(x) is not None]
        self._by_class = [[x for x in self._inputs if classify(x) == c] for c in range(n_classes)]
        self._nuisance = nuisance
        self.nuisance_name = nuisance_name
        if not self._inputs:
            raise ValueError(f"task {name!r} has an empty domain")
        empty = [c for c in range(n_classes) if not self._by_class[c]]
        if empty:
            raise ValueError(f"task {name!r}: class(es) {empty} have no input")

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
        if self.fixed_labels:
            words = tuple(self._pool)
        else:
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

    def _subset(self, inputs: list[str], description: str) -> "CategorizationTask":
        return self.with_labels(self._pool, inputs=inputs, description=description)

    def with_labels(
        self, label_pool: Sequence[str], *, inputs: Sequence[str] | None = None, description: str | None = None,
    ) -> "CategorizationTask":
        """The same rule (and nuisance) with another label pool (and optionally fewer inputs)."""
        return CategorizationTask(
            self.name, self.description if description is None else description,
            self._inputs if inputs is None else inputs, self._classify, self.n_classes, label_pool,
            self._nuisance, self.nuisance_name, fixed_labels=self.fixed_labels,
        )
