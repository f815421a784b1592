"""The base of every analysis result: a dataclass of tensors and metadata that saves without pickle.

``save(path)`` writes ``path.safetensors`` (every tensor field) and ``path.json`` (every other
field, which must be JSON-serializable: numbers, strings, lists, dicts, None). ``load(path)``
reads both back into the same class.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

R = TypeVar("R", bound="Result")


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


class Result:
    """Mixin for frozen dataclasses holding tensors plus plain metadata."""

    def _split(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = {}, {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().cpu().contiguous()
            else:
                meta[f.name] = v
        return tensors, meta

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns the stem path."""
        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._split()
        save_file(tensors, str(stem.with_suffix(".safetensors")))
        stem.with_suffix(".json").write_text(
            json.dumps({"class": type(self).__name__, "fields": meta}, indent=1, default=_jsonable)
        )
        return stem

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by ``save``."""
        stem = _stem(path)
        spec = json.loads(stem.with_suffix(".json").read_text())
        if spec.get("class") != cls.__name__:
            raise ValueError(f"{stem}.json holds a {spec.get('class')}, not a {cls.__name__}")
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        return cls(**spec["fields"], **tensors)  # type: ignore[call-arg]

    def to_dataframe(self) -> pd.DataFrame:  # pragma: no cover - every result overrides it
        raise NotImplementedError


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if hasattr(v, "item"):
        return v.item()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    raise TypeError(f"cannot save a {type(v).__name__} in a result's JSON metadata")


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """``df`` as a Markdown table (floats to ``digits`` places, or in scientific notation where that would
    print a nonzero value as zero), without pandas' optional tabulate."""

    def cell(v) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:.{max(digits - 1, 1)}e}" if 0 < abs(v) < 0.5 * 10**-digits else f"{v:.{digits}f}"

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
