"""Candidate grids that cross-validation chooses from (dPCA's lambda, propagation's ridge): one check of a
grid, and one rule for a choice on its edge, which is a bound rather than an optimum.

numpy only, so that ``methods.dpca.numpy_dpca`` stays importable without torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["check_grid", "grid_edge"]


def check_grid(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a float64 array, or a ValueError naming ``name``: a grid must hold at least 3 finite,
    positive, strictly increasing values (an edge choice is flagged, so a grid needs an interior)."""
    grid = np.array(values, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid) & (grid > 0)) or np.any(np.diff(grid) <= 0):
        raise ValueError(f"{name} must be at least 3 finite, positive, strictly increasing values (an edge "
                         f"choice is flagged, so a grid needs an interior), got {values!r}")
    return grid


def grid_edge(value: float, grid: Sequence[float] | None) -> str | None:
    """"lowest" or "highest" when ``value`` is the first or last value of the increasing ``grid`` it was
    chosen from, else None (also without a grid: nothing was chosen)."""
    if grid is None or len(grid) == 0:
        return None
    return "lowest" if value == float(grid[0]) else "highest" if value == float(grid[-1]) else None
