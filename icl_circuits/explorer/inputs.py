"""What the explorer accepts from a browser, checked before any model call.

Everything a page sends arrives here first: a task name from the server's list or custom pairs,
a demo count, a seed, a template from a fixed list, layers and heads within the model's bounds,
position sets from a fixed list or tokens of the prompt. A bad value raises ``ExplorerInputError``
whose message is shown in the page; nothing from the browser names a file, a model or a module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CUSTOM",
    "MAX_CUSTOM_PAIRS",
    "MAX_FIELD_CHARS",
    "MAX_SEED",
    "NAMED_POSITION_SETS",
    "TEMPLATES",
    "ExplorerInputError",
    "PromptSettings",
    "check_choice",
    "check_int",
    "parse_pairs",
]

#: The task value that means "the pairs typed in the page".
CUSTOM = "custom"
#: Custom pairs: at most this many, each side at most this many characters.
MAX_CUSTOM_PAIRS = 40
MAX_FIELD_CHARS = 40
MAX_SEED = 1_000_000
#: The templates a page may pick, by key. "default" is the model's own (``default_template``).
TEMPLATES: dict[str, str | None] = {"default": None, "arrow": "{x} -> {y}", "colon": "{x}:{y}",
                                    "qa": "Q: {x}\nA: {y}"}
#: The named position sets of the interventions view (``PromptBatch.positions`` specs), by label.
NAMED_POSITION_SETS: dict[str, str] = {
    "last answer": "answer_-1",
    "all answers": "answers",
    "all separators": "separators",
    "all demo tokens": "demo_tokens",
    "the query": "query",
}
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")


class ExplorerInputError(ValueError):
    """An input from the page that the explorer does not accept; its message is shown to the user."""


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; a numeric string or an integral float is accepted
    (what an input box sends), anything else raises ``ExplorerInputError`` naming ``name``."""
    if isinstance(value, bool):
        raise ExplorerInputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not re.fullmatch(r"-?\d{1,9}", value):
            raise ExplorerInputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise ExplorerInputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Any) -> Any:
    """``value`` if it is one of ``choices``, else ``ExplorerInputError`` naming ``name``."""
    choices = list(choices)
    if value not in choices:
        shown = ", ".join(map(str, choices[:12])) + (", ..." if len(choices) > 12 else "")
        raise ExplorerInputError(f"{name} must be one of {shown}; got {str(value)[:60]!r}")
    return value


def parse_pairs(text: Any) -> tuple[tuple[str, str], ...]:
    """Custom pairs typed one per line as ``input -> output`` (or ``input, output`` / a tab):
    at most ``MAX_CUSTOM_PAIRS`` lines, each side 1-``MAX_FIELD_CHARS`` printable characters,
    inputs distinct. Blank lines are skipped."""
    if not isinstance(text, str):
        raise ExplorerInputError("custom pairs must be text, one 'input -> output' per line")
    pairs: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        for sep in ("->", "\t", ","):
            if sep in line:
                x, _, y = line.partition(sep)
                break
        else:
            raise ExplorerInputError(f"custom pairs, line {n}: write 'input -> output', got {line[:60]!r}")
        x, y = x.strip(), y.strip()
        for side, v in (("input", x), ("output", y)):
            if not v or len(v) > MAX_FIELD_CHARS or not _PRINTABLE.match(v):
                raise ExplorerInputError(f"custom pairs, line {n}: the {side} must be 1 to {MAX_FIELD_CHARS} "
                                         f"printable characters, got {v[:60]!r}")
        pairs.append((x, y))
        if len(pairs) > MAX_CUSTOM_PAIRS:
            raise ExplorerInputError(f"custom pairs: at most {MAX_CUSTOM_PAIRS} pairs")
    if len({x for x, _ in pairs}) != len(pairs):
        raise ExplorerInputError("custom pairs: every input must be different")
    return tuple(pairs)


@dataclass(frozen=True)
class PromptSettings:
    """One prompt of the explorer: a task (a name, or ``CUSTOM`` with ``pairs``), its number of
    demos, the seed that draws demos and query, and a template key of ``TEMPLATES``. Hashable: the
    explorer caches everything computed on a prompt under its settings."""

    task: str
    n_demos: int
    seed: int = 0
    template: str = "default"
    pairs: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.task}, {self.n_demos} demos, seed {self.seed}, template {self.template}"
