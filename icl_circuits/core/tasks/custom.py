"""Tasks defined by their examples: from a list of pairs (``task_from_pairs``) or a JSON file
(``load_task``), registered so that ``get_task(name)`` finds them (``register_task``).

A JSON task file (the bundled ``sentiment`` and ``animal-plant`` tasks are written this way)::

    {
      "name": "sentiment",                      # required; no whitespace
      "kind": "categorization",                 # "knowledge" (default), "algorithmic" or "categorization"
      "description": "a short review -> its sentiment",
      "labels": ["negative", "positive"],       # categorization only: the label word of class c is labels[c]
      "nuisance_name": "topic",                 # optional (categorization): each pair then has a third
                                                #   element, an integer feature the label does not depend on
      "pairs": [["a delightful comedy", "positive", 0], ["the soup was cold", "negative", 1], ...]
    }

Inputs and outputs are non-empty strings without leading or trailing whitespace (the template
decides the spacing); an input has one output. A categorization task built here has fixed,
meaningful label words (``fixed_labels=True``): every prompt names class ``c`` by ``labels[c]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from icl_circuits.core.tasks.base import CategorizationTask, Task, TaskKind, WordPairTask

KINDS: tuple[str, ...] = ("knowledge", "algorithmic", "categorization")
_JSON_KEYS = {"name", "kind", "description", "labels", "nuisance_name", "pairs"}


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"name must be a non-empty string without whitespace, got {name!r}")
    return name


def _check_field(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, got {value!r}")
    if value != value.strip():
        raise ValueError(f"{where} {value!r} has leading or trailing whitespace; the template decides the spacing")
    return value


def task_from_pairs(
    name: str,
    pairs: Sequence[Sequence[Any]],
    *,
    kind: TaskKind | None = None,
    description: str = "",
    labels: Sequence[str] | None = None,
    nuisance: Mapping[str, int] | Callable[[str], int] | None = None,
    nuisance_name: str | None = None,
) -> Task:
    """A task from its examples ``pairs`` = ``[(input, output), ...]``.

    ``kind`` defaults to ``"categorization"`` when ``labels`` or ``nuisance_name`` is given, else
    ``"knowledge"``.
    A ``"knowledge"`` or ``"algorithmic"`` task is the table of pairs (a ``WordPairTask``). A
    ``"categorization"`` task (a ``CategorizationTask`` with ``fixed_labels=True``) takes the class
    of ``x`` to be ``labels.index(output)``; ``labels`` defaults to the sorted distinct outputs.
    Its ``nuisance`` (for dPCA) is a mapping input -> int or a function, or a third element of
    every pair, and needs ``nuisance_name``. Malformed input raises ``ValueError`` naming the
    argument and the offending pair.
    """
    name = _check_name(name)
    if kind is None:
        kind = "categorization" if labels is not None or nuisance_name is not None else "knowledge"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(description, str):
        raise ValueError(f"description must be a string, got {type(description).__name__}")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"pairs of task {name!r} must be a non-empty list of [input, output] pairs")
    width = 3 if nuisance_name is not None and nuisance is None else 2
    shape = "[input, output, nuisance]" if width == 3 else "[input, output]"
    table: dict[str, str] = {}
    extra: dict[str, int] = {}
    for i, p in enumerate(pairs):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != width:
            raise ValueError(f"pairs[{i}] of task {name!r} must be {shape}, got {p!r}")
        x, y = _check_field(p[0], f"pairs[{i}][0] (input)"), _check_field(p[1], f"pairs[{i}][1] (output)")
        if x in table and table[x] != y:
            raise ValueError(f"pairs[{i}] of task {name!r}: input {x!r} has two outputs {table[x]!r} and {y!r}")
        table[x] = y
        if width == 3:
            if isinstance(p[2], bool) or not isinstance(p[2], int):
                raise ValueError(f"pairs[{i}][2] (nuisance {nuisance_name!r}) of task {name!r} must be an "
                                 f"integer, got {p[2]!r}")
            extra[x] = p[2]

    if kind != "categorization":
        if labels is not None or nuisance is not None or nuisance_name is not None:
            raise ValueError(f"labels, nuisance and nuisance_name are for kind='categorization', not {kind!r}")
        return WordPairTask(name, kind, description, list(table.items()))

    outputs = sorted(set(table.values()))
    labels = outputs if labels is None else list(labels)
    for j, w in enumerate(labels):
        _check_field(w, f"labels[{j}]")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels of task {name!r} must be at least two distinct words, got {labels}")
    stray = sorted(set(outputs) - set(labels))
    if stray:
        raise ValueError(f"pairs of task {name!r} have outputs {stray} that are not in labels {labels}")
    unused = [w for w in labels if w not in outputs]
    if unused:
        raise ValueError(f"labels {unused} of task {name!r} name no input (every class needs examples)")
    if nuisance is not None and nuisance_name is None:
        raise ValueError(f"task {name!r}: a nuisance needs a nuisance_name (e.g. 'length')")
    if isinstance(nuisance, Mapping):
        missing = [x for x in table if x not in nuisance]
        if missing:
            raise ValueError(f"nuisance of task {name!r} has no value for the inputs {missing[:5]}")
        extra = {x: int(nuisance[x]) for x in table}
    feature = extra.get if extra else nuisance
    classes = {x: labels.index(y) for x, y in table.items()}
    return CategorizationTask(
        name, description, list(table), classes.get, len(labels), labels,
        nuisance=feature, nuisance_name=nuisance_name, fixed_labels=True,
    )


def task_from_dict(spec: Mapping[str, Any], source: str = "task") -> Task:
    """A task from the JSON layout of the module docstring (already parsed)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: a task file holds a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _JSON_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; expected {sorted(_JSON_KEYS)}")
    for key in ("name", "pairs"):
        if key not in spec:
            raise ValueError(f"{source}: missing required key {key!r}")
    try:
        return task_from_pairs(
            spec["name"], spec["pairs"], kind=spec.get("kind"), description=spec.get("description", ""),
            labels=spec.get("labels"), nuisance_name=spec.get("nuisance_name"),
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def load_task(path: str | Path) -> Task:
    """Read a task from a JSON file (layout in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no task file at {str(path)!r}")
    try:
        spec = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return task_from_dict(spec, str(path))
