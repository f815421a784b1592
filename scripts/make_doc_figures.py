"""Write the docs' figures (docs/figures/*.html) from the report suite on the bundled model.

    python scripts/make_doc_figures.py

Each figure is an HTML fragment page that loads the one shared docs/figures/plotly.min.js, so the
built site works offline; the method pages embed them with an iframe.
"""

from __future__ import annotations

from pathlib import Path

import torch

from icl_circuits.core.models import load_model
from icl_circuits.report.suite import ReportConfig, run_suite

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    sections = run_suite(load_model("toy-icl"), ReportConfig(), progress=False)
    for s in sections:
        if s.error:
            raise RuntimeError(f"section {s.key} failed: {s.error}")
        for j, fig in enumerate(s.figures):
            path = OUT / f"{s.key}_{j}.html"
            fig.write_html(str(path), include_plotlyjs="directory", full_html=True, config={"displaylogo": False})
            print("wrote", path)


if __name__ == "__main__":
    main()
