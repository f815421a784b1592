"""Grid analyses of docs/results/real/propagation_fit.md: held-out R² of linear propagation fits.

    icl-circuits grid run scripts/grids/propagation_fit.yaml --store docs/results/real/grids/propagation_fit \
        --executor ray --import scripts/studies/propagation_fit.py
    python scripts/real_propagation_fit.py run      # the same, then: python scripts/real_propagation_fit.py render

One cell = one injection layer x one vector norm (``propagation_fit@<label>``; its ``layer`` and
``scale`` are the cell's params). The cell draws ``n_test + max(n_fit)`` random vectors (directions
from ``torch.Generator().manual_seed(seed)``, norms uniform in [0.5, 1.5] x scale x the learned
task vector's norm), reads their effect on the final residual (``propagation.final_deltas``,
prompt-averaged) on ``n_prompts`` zero-shot prompts of seed ``prompt_seed_offset + seed``, fits
``delta_h_L ~ W x`` on the first ``n_fit`` vectors after the ``n_test`` held-out ones for each
fixed ridge ``lam x mean(x²) x n_fit`` and for the cross-validated one (``propagation.cv_ridge``
with ``seed``), and returns the held-out R² of each fit as a ``TableResult`` row.

Everything a worker runs is in this file and ``icl_circuits`` (Ray pickles this module by value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from icl_circuits.core.prompts import PromptBatch, build_prompts
from icl_circuits.core.results import stamp
from icl_circuits.grid import Cell, Grid, TableResult, register_analysis

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "scripts" / "grids" / "propagation_fit.yaml"


def fit_prompts(model: Any, cell: Cell) -> dict[str, PromptBatch]:
    """The zero-shot prompts the vectors are injected into (seed ``prompt_seed_offset + seed``)."""
    return {"fit": build_prompts(model, cell.task, cell.n_prompts, cell.n_demos, template=cell.template,
                                 seed=cell.params["prompt_seed_offset"] + cell.seed, variant="zero_shot",
                                 prepend_bos=cell.prepend_bos)}


def propagation_fit(model: Any, batches: dict[str, PromptBatch], *, layer: int, scale: float, n_fit: list[int],
                    n_test: int, lams: list[float], ltv: str, prompt_seed_offset: int) -> TableResult:
    """Held-out R² of ``delta_h_L ~ W x`` at ``layer`` for vectors of ``scale`` x the LTV's norm
    (module docstring); rows: n_fit, fit ("lam" or "cv"), lam (for "cv": the chosen ridge / (mean(x²) n_fit)), r2."""
    from icl_circuits.core.runner import read_resid
    from icl_circuits.methods.propagation import cv_ridge, final_deltas, fit_linear_map, r2
    from icl_circuits.methods.vectors import TaskVector

    fit = batches["fit"]
    seed = fit.seed - prompt_seed_offset  # the cell's seed: random vectors and cross-validation folds
    tv = TaskVector.load(ROOT / ltv)
    norm0 = float(tv.at(tv.layers[0]).norm())
    d = model.cfg.d_model
    resid = read_resid(model, fit, None, [layer])[0]
    g = torch.Generator().manual_seed(seed)
    n = n_test + max(n_fit)
    dirs = torch.randn(n, d, generator=g)
    X = dirs / dirs.norm(dim=-1, keepdim=True) * norm0 * scale * (0.5 + torch.rand(n, 1, generator=g))
    Y = final_deltas(model, fit, layer, X, resid=resid).mean(1)
    rows = []
    for nf in n_fit:
        Xf, Yf = X[n_test:n_test + nf], Y[n_test:n_test + nf]
        msq = float((Xf.double() ** 2).mean())
        for lam in lams:
            W = fit_linear_map(Xf, Yf, ridge=lam * msq * nf)
            rows.append({"layer": layer, "scale": scale, "n_fit": nf, "fit": "lam", "lam": lam,
                         "r2": r2(Y[:n_test], X[:n_test].double() @ W.T)})
        choice = cv_ridge(Xf, Yf, seed=seed)  # what fit_linear_propagation(ridge="cv") does
        rows.append({"layer": layer, "scale": scale, "n_fit": nf, "fit": "cv", "lam": choice.ridge / (msq * nf),
                     "r2": r2(Y[:n_test], X[:n_test].double() @ fit_linear_map(Xf, Yf, ridge=choice.ridge).T)})
    return TableResult(rows=rows, meta={"ltv_norm": norm0, "d_model": d, "n_test": n_test, "vector_seed": seed,
                                        "prompt_seed": fit.seed},
                       **stamp(model, fit, layer=layer, scale=scale))


#: analysis families of this study: a grid names each cell's analysis "<family>" or "<family>@<label>"
FAMILIES = {"propagation_fit": (propagation_fit, fit_prompts)}


for _family, (_run, _prompts) in FAMILIES.items():  # a grid names each cell's analysis <family>@<label>
    register_analysis(_family, _run, _prompts, replace=True)
