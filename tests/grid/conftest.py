"""Shared pieces of the grid tests: the toy model loaded once, a small grid, the test analyses."""

from pathlib import Path

import pytest

from icl_circuits.grid.registry import import_analyses

ANALYSES = Path(__file__).with_name("analyses.py")


@pytest.fixture(scope="session")
def toy():
    from icl_circuits import load_model

    return load_model("toy-icl")


@pytest.fixture(scope="session")
def test_analyses():
    """Registers slow_accuracy, fragile and die_once (tests/grid/analyses.py)."""
    return import_analyses(str(ANALYSES))


def small_grid(**kw):
    from icl_circuits.grid import Grid

    base = dict(models=["toy-icl"], tasks=["antonym", "country-capital"], analyses=["accuracy", "task_vector"],
                seeds=[0, 1], n_demos=[4], n_prompts=8, params={"task_vector": {"layers": [0, 2]}}, name="small")
    base.update(kw)
    return Grid(**base)
