"""Grid analyses of docs/results/real/label_words_local.md: label words as local task vectors (arXiv 2406.16007).

    icl-circuits grid run scripts/grids/label_words_local.yaml --store docs/results/real/grids/label_words_local \
        --executor ray --import scripts/studies/label_words_local.py
    python scripts/real_label_words_local.py run     # the same, then: python scripts/real_label_words_local.py render

Every cell is one task of the grid (seed s = the grid's seed, ``n_prompts`` prompts, ``n_demos`` demos,
``task_vector_prompts``: extraction prompts of seed s, held-out evaluation prompts of seed s + 1):

- ``local_vectors``: local task vectors (``local_task_vectors``, answer positions of the held-out ICL
  prompts patched into their random-answer twins) at layers 0, stride, 2 stride, ... -> SweepResult.
- ``global_vector``: the vanilla vector of the dummy-query prompts replacing the final residual of the
  held-out zero-shot prompts (``evaluate_task_vector``) at every layer (or ``layers``) -> SweepResult.
- ``convergence``: per layer, the cosines of the (centred) answer-position states within a prompt and
  across tasks, and of the mean local vector with the global vectors. Centring and the across-task null
  need every task of ``tasks``, so each cell reads all of them and returns its own task's rows.
- ``saliency``: S_wp / S_pq / S_ww (``saliency_flow``) on the first ``saliency_prompts`` held-out ICL
  prompts -> SaliencyResult.
- ``extra_seed@<label>``: the headline numbers again for seed ``seed`` with ``n_prompts`` prompts, local
  and global vectors at the task's ``layers`` (the layers chosen on the headline seed: the renderer checks
  them against its cells), and the saliency peak layers -> TableResult.
- ``dpca@<label>``: dPCA of the label-position states (``collect_label_states`` at ``position``,
  ``dpca_from_states`` with ``null_draws`` null draws) -> DPCALayerResult.
- ``ablation@<label>``: the label subspace of the answer-position dPCA fit (refitted here without null
  draws: the fit does not depend on them) projected out at ``layer`` on held-out prompts (seed s + 1),
  against ``random_subspaces`` random subspaces -> SubspaceAblationResult.

``dpca`` and ``ablation`` apply to the categorization tasks of their ``tasks`` param; in a cell of another
task they compute nothing and return an empty TableResult saying so (a grid crosses every analysis
with every task). Everything a worker runs is in this file and ``icl_circuits`` (Ray pickles this
module by value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from icl_circuits.core.metrics import auto_metric
from icl_circuits.core.pairs import task_vector_prompts
from icl_circuits.core.prompts import PromptBatch, build_prompts
from icl_circuits.core.results import stamp
from icl_circuits.core.tasks import get_task
from icl_circuits.grid import Cell, Grid, TableResult, register_analysis

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "scripts" / "grids" / "label_words_local.yaml"
Batches = dict[str, PromptBatch]


def _tv_prompts(model: Any, cell: Cell, n: int | None = None, seed: int | None = None) -> Any:
    return task_vector_prompts(model, cell.task, cell.n_demos, cell.n_prompts if n is None else n,
                               cell.seed if seed is None else seed, template=cell.template,
                               prepend_bos=cell.prepend_bos)


def _skipped(model: Any, cell: Cell) -> Batches | None:
    """A one-prompt placeholder batch for a cell whose task is not in its ``tasks`` param, else None."""
    if cell.task in cell.params["tasks"]:
        return None
    return {"skipped": build_prompts(model, cell.task, 1, 0, template=cell.template, seed=cell.seed)}


def _skip_result(model: Any, batch: PromptBatch, tasks: list[str]) -> TableResult:
    return TableResult(rows=[], meta={"skipped": f"{batch.task} is not one of this analysis's tasks {tasks}"},
                       **stamp(model, batch))


# ----------------------------------------------------------------------------- local and global vectors
def local_prompts(model: Any, cell: Cell) -> Batches:
    return {"icl_eval": _tv_prompts(model, cell).icl_eval}


def local_vectors(model: Any, batches: Batches, *, stride: int) -> Any:
    """Local task vectors at layers 0, stride, 2 stride, ... < n_layers (metric: label for
    categorization tasks, else first token)."""
    from icl_circuits.methods.task_vectors import local_task_vectors

    b = batches["icl_eval"]
    return local_task_vectors(model, b, list(range(0, model.cfg.n_layers, stride)), task=get_task(b.task),
                              metric=auto_metric(b.task))


def global_prompts(model: Any, cell: Cell) -> Batches:
    p = _tv_prompts(model, cell)
    return {"dummy": p.dummy_query, "zero_shot": p.zero_shot}


def global_vector(model: Any, batches: Batches, *, layers: list[int] | None = None) -> Any:
    """The vanilla vector (every layer) REPLACING the final residual of the held-out zero-shot prompts,
    at ``layers`` (None: 0..n_layers-1)."""
    from icl_circuits.methods.task_vectors import evaluate_task_vector, vanilla_task_vector

    vec = vanilla_task_vector(model, batches["dummy"])
    task = batches["zero_shot"].task
    return evaluate_task_vector(model, vec, batches["zero_shot"], None,
                                layers=list(range(model.cfg.n_layers)) if layers is None else layers,
                                metric=auto_metric(task))


# ----------------------------------------------------------------------------- convergence
def convergence_prompts(model: Any, cell: Cell) -> Batches:
    out = {"own": _tv_prompts(model, cell).icl_eval}
    for t in cell.params["tasks"]:
        p = task_vector_prompts(model, t, cell.n_demos, cell.n_prompts, cell.seed, template=cell.template,
                                prepend_bos=cell.prepend_bos)
        out[f"{t}/icl_eval"], out[f"{t}/dummy"] = p.icl_eval, p.dummy_query
    return out


def convergence(model: Any, batches: Batches, *, tasks: list[str]) -> TableResult:
    """Per layer, for the cell's task t: mean cosine between the (centred) answer-position states of
    different demos of one prompt ("within"); the same between demos of prompts of t and of each other
    task, averaged over the other tasks ("across tasks", the null); the cosine of t's mean local vector
    with its own global (vanilla) vector and with the other tasks' (mean). Centring: at each layer the
    mean answer-position state (global: the mean vector) over ``tasks`` is subtracted."""
    from icl_circuits.core.runner import read_resid
    from icl_circuits.methods.task_vectors import vanilla_task_vector

    own = batches["own"].task
    H, G = {}, {}
    for t in tasks:
        b = batches[f"{t}/icl_eval"]
        H[t] = read_resid(model, b, b.positions("answer").positions).double()  # [layer, batch, demo, d]
        G[t] = vanilla_task_vector(model, batches[f"{t}/dummy"]).vectors.double()
    n_l, n_demos = H[own].shape[0], H[own].shape[2]
    mu = torch.stack([H[t].mean((1, 2)) for t in tasks]).mean(0)  # [layer, d]
    mu_g = torch.stack([G[t] for t in tasks]).mean(0)
    unit = {t: torch.nn.functional.normalize(H[t] - mu[:, None, None], dim=-1) for t in tasks}
    n_b = min(u.shape[1] for u in unit.values())
    off = ~torch.eye(n_demos, dtype=torch.bool)
    u = unit[own]
    within = torch.einsum("lbjd,lbkd->lbjk", u, u)[..., off].mean((1, 2))
    across = torch.stack([torch.einsum("lbjd,lbkd->lbjk", u[:, :n_b], unit[o][:, :n_b]).mean((1, 2, 3))
                          for o in tasks if o != own]).mean(0)
    loc = torch.nn.functional.normalize(H[own].mean((1, 2)) - mu, dim=-1)
    cos_g = {o: (loc * torch.nn.functional.normalize(G[o] - mu_g, dim=-1)).sum(-1) for o in tasks}
    mine, other = cos_g[own], torch.stack([cos_g[o] for o in tasks if o != own]).mean(0)
    rows = [{"task": own, "layer": l, "within": float(within[l]), "across tasks": float(across[l]),
             "local-global own": float(mine[l]), "local-global other tasks": float(other[l])} for l in range(n_l)]
    return TableResult(rows=rows, meta={"tasks": tasks}, **stamp(model, batches["own"]))


# ----------------------------------------------------------------------------- saliency
def saliency_prompts(model: Any, cell: Cell) -> Batches:
    b = _tv_prompts(model, cell).icl_eval
    return {"icl": b.select(range(min(cell.params["saliency_prompts"], len(b))))}


def saliency(model: Any, batches: Batches, *, saliency_prompts: int, loss: str, batch_size: int,
             keep_examples: int = 4) -> Any:
    """S_wp, S_pq, S_ww per layer on the first ``saliency_prompts`` held-out ICL prompts (with the
    saliency matrices of ``keep_examples`` of them, for heatmaps)."""
    from icl_circuits.methods.saliency import saliency_flow

    return saliency_flow(model, batches["icl"], loss, batch_size=batch_size, keep_examples=keep_examples,
                         progress=False)


# ----------------------------------------------------------------------------- extra seeds
def extra_seed_prompts(model: Any, cell: Cell) -> Batches:
    p = _tv_prompts(model, cell, cell.params["n_prompts"], cell.params["seed"])
    return {"icl_eval": p.icl_eval, "dummy": p.dummy_query, "zero_shot": p.zero_shot}


def extra_seed(model: Any, batches: Batches, *, seed: int, n_prompts: int, layers: dict[str, list[int]],
               saliency_prompts: int, loss: str, batch_size: int) -> TableResult:
    """The headline numbers for one more seed: ICL, random-answer and zero-shot rates (raw means and
    N), local and global vectors at the task's ``layers``, the peak layers of S_pq and S_wp."""
    from icl_circuits.methods.saliency import saliency_flow
    from icl_circuits.methods.task_vectors import evaluate_task_vector, local_task_vectors, vanilla_task_vector

    b = batches["icl_eval"]
    task, metric, lay = b.task, auto_metric(b.task), layers[b.task]
    loc = local_task_vectors(model, b, lay, task=get_task(task), metric=metric)
    vec = vanilla_task_vector(model, batches["dummy"])
    van = evaluate_task_vector(model, vec, batches["zero_shot"], None, layers=lay, metric=metric)
    sal = saliency_flow(model, b.select(range(min(saliency_prompts, len(b)))), loss, batch_size=batch_size,
                        progress=False)
    k = int(loc.per_prompt.shape[1])
    rows = [{"kind": "icl", "layer": None, "value": loc.meta["icl"], "n": k},
            {"kind": "random", "layer": None, "value": loc.baseline, "n": k},
            {"kind": "zero", "layer": None, "value": van.baseline, "n": len(batches["zero_shot"])}]
    rows += [{"kind": "local", "layer": l, "value": float(v), "n": k} for l, v in zip(loc.layers, loc.values)]
    rows += [{"kind": "vanilla", "layer": l, "value": float(v), "n": len(batches["zero_shot"])}
             for l, v in zip(van.layers, van.values)]
    rows += [{"kind": f"peak {f}", "layer": int(sal.flow(f).argmax()), "value": None,  # argmax over sal.layers
              "n": min(saliency_prompts, len(b))} for f in ("S_pq", "S_wp")]
    return TableResult(rows=rows, meta={"metric": metric, "n_dropped": loc.meta["n_dropped"]},
                       **stamp(model, b))


# ----------------------------------------------------------------------------- dPCA and subspace ablation
def _lambda_grid(regularizer: Any, lambda_logspace: list[float] | None) -> Any:
    return np.logspace(*lambda_logspace) if regularizer == "auto" and lambda_logspace is not None else None


def dpca_prompts(model: Any, cell: Cell) -> Batches:
    return _skipped(model, cell) or {"icl": build_prompts(model, cell.task, cell.n_prompts, cell.n_demos,
                                                          template=cell.template, seed=cell.seed,
                                                          prepend_bos=cell.prepend_bos)}


def dpca(model: Any, batches: Batches, *, tasks: list[str], position: str, layers: list[int], null_draws: int,
         regularizer: Any, lambda_logspace: list[float] | None) -> Any:
    """dPCA (nuisance x label) of the states at ``position`` of each demo, at ``layers``, with
    ``null_draws`` null draws; lambda cross-validated on ``np.logspace(*lambda_logspace)``."""
    from icl_circuits.methods.dpca.analysis import dpca_from_states
    from icl_circuits.methods.dpca.states import collect_label_states

    if "skipped" in batches:
        return _skip_result(model, batches["skipped"], tasks)
    b = batches["icl"]
    st = collect_label_states(model, b, layers, position)
    return dpca_from_states(st, regularizer=regularizer, n_null=null_draws, seed=b.seed, progress=False,
                            lambda_grid=_lambda_grid(regularizer, lambda_logspace))


def ablation_prompts(model: Any, cell: Cell) -> Batches:
    skipped = _skipped(model, cell)
    if skipped:
        return skipped
    b = lambda n, s: build_prompts(model, cell.task, n, cell.n_demos, template=cell.template, seed=s,  # noqa: E731
                                   prepend_bos=cell.prepend_bos)
    return {"fit": b(cell.n_prompts, cell.seed), "held_out": b(cell.params["n_prompts"], cell.seed + 1)}


def ablation(model: Any, batches: Batches, *, tasks: list[str], layer: int, dpca_layers: list[int],
             regularizer: Any, lambda_logspace: list[float] | None, n_prompts: int, random_subspaces: int) -> Any:
    """The label subspace of the answer-position dPCA fit (at ``dpca_layers``, as the ``dpca`` cells
    fit it, without null draws) projected out at the demo answer positions at ``layer`` of the
    held-out prompts, against ``random_subspaces`` random subspaces (seed: the held-out prompts')."""
    from icl_circuits.methods.dpca.ablation import ablate_subspace
    from icl_circuits.methods.dpca.analysis import dpca_from_states
    from icl_circuits.methods.dpca.states import collect_label_states

    if "skipped" in batches:
        return _skip_result(model, batches["skipped"], tasks)
    fit, held = batches["fit"], batches["held_out"]
    st = collect_label_states(model, fit, dpca_layers, "answer")
    res = dpca_from_states(st, regularizer=regularizer, n_null=0, seed=fit.seed, progress=False,
                           lambda_grid=_lambda_grid(regularizer, lambda_logspace))
    return ablate_subspace(model, held, res, "label", [layer], n_random=random_subspaces, seed=held.seed,
                           progress=False)


# ----------------------------------------------------------------------------- registration
#: analysis families of this study: a grid names each cell's analysis "<family>" or "<family>@<label>"
FAMILIES = {
    "local_vectors": (local_vectors, local_prompts), "global_vector": (global_vector, global_prompts),
    "convergence": (convergence, convergence_prompts), "label_saliency": (saliency, saliency_prompts),
    "extra_seed": (extra_seed, extra_seed_prompts), "dpca": (dpca, dpca_prompts),
    "ablation": (ablation, ablation_prompts),
}


for _family, (_run, _prompts) in FAMILIES.items():  # a grid names each cell's analysis <family>@<label>
    register_analysis(_family, _run, _prompts, replace=True)
