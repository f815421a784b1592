"""Write the API reference pages (docs/api/*.md): one page per layer of the package, one section
per module, rendered from the docstrings by mkdocstrings when the site is built.

    python scripts/make_api_docs.py

Run it after adding or moving a module; tests/test_docs.py checks the pages are up to date.
"""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api"
LAYERS = {
    "core": ("Core", "Models, tasks, prompts and positions, intervention specs, the runner, metrics and results."),
    "methods": ("Methods", "One module per analysis: each takes a model and PromptBatch(es) and returns a Result."),
    "viz": ("Figures", "One module per method: each function reads a Result and returns a plotly Figure."),
    "grid": ("Grids", "Experiment grids: specs, content-addressed cells, executors (local, Ray, submitit), the store "
                      "and its table (load, query)."),
    "report": ("Report", "The suite of analyses written to one self-contained HTML file."),
    "teach": ("Teaching", "Exercise checks for the notebooks: each compares a learner's answer with the package's method "
                          "and names the common mistake it matches."),
    "explorer": ("Explorer", "The interactive app: the model side cached per prompt, checked inputs, the Dash page and "
                             "its callbacks, the lessons."),
    "cli": ("Command line", "The `icl-circuits` command."),
    "toy": ("The bundled model", "toy-icl: tokenizer, training recipe, weights."),
}


def modules(layer: str) -> list[str]:
    """Every module of ``icl_circuits.<layer>`` (packages included, ``__main__`` excluded), sorted."""
    sys.path.insert(0, str(ROOT))
    import importlib

    pkg = importlib.import_module(f"icl_circuits.{layer}")
    names = [m.name for m in pkgutil.walk_packages(pkg.__path__, f"icl_circuits.{layer}.")
             if not m.name.endswith("__main__") and not m.name.rsplit(".", 1)[1].startswith("_")]
    return sorted(names)


def page(layer: str) -> str:
    title, about = LAYERS[layer]
    lines = [f"# {title}: `icl_circuits.{layer}`", "", about, "",
             "<!-- written by scripts/make_api_docs.py; do not edit -->", ""]
    for name in modules(layer):
        lines += [f"## `{name}`", "", f"::: {name}", ""]
    return "\n".join(lines)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for layer in LAYERS:
        path = OUT / f"{layer}.md"
        path.write_text(page(layer))
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
