"""A Result for analyses whose output is a table: :class:`TableResult`.

A study's own analysis (registered with ``register_analysis``) often measures a few numbers per layer or
per condition rather than one of the methods' Result types. ``TableResult(rows=[{...}, ...], meta={...},
**stamp(model, batch))`` stores them like any Result (atomic save, digests, provenance): ``rows`` are
JSON records, one per row of ``to_dataframe()``; ``meta`` holds what is not a row (settings, counts).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from icl_circuits.core.results import Result

__all__ = ["TableResult"]


def _plain(v: Any, where: str) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy / torch scalars
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None if math.isnan(v) else v
    if isinstance(v, (list, tuple)):
        return [_plain(x, where) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x, where) for k, x in v.items()}
    raise TypeError(f"{where}: a TableResult holds JSON values (numbers, strings, bools, None, lists, dicts), "
                    f"got {type(v).__name__}")


@dataclasses.dataclass(frozen=True)
class TableResult(Result):
    """Rows of numbers from one grid cell (module docstring). ``rows``: list of records with the same
    keys; ``meta``: anything else worth keeping (JSON values). NaN is stored as null."""

    rows: list
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rows, list) or any(not isinstance(r, dict) for r in self.rows):
            raise TypeError(f"rows must be a list of dicts, got {type(self.rows).__name__}")
        object.__setattr__(self, "rows", [_plain(r, f"rows[{i}]") for i, r in enumerate(self.rows)])
        object.__setattr__(self, "meta", _plain(dict(self.meta), "meta"))

    def to_dataframe(self) -> pd.DataFrame:
        """One row per record (columns: the union of the records' keys)."""
        return pd.DataFrame.from_records(self.rows)
