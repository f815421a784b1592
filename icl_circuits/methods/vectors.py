"""Task vectors and their evaluation per layer: the contract every task-vector method shares.

A ``TaskVector`` holds one d_model vector per layer (``vectors[i]`` belongs to ``layers[i]``),
meant to be injected into the residual stream at the input of that block
(``blocks.{l}.hook_resid_pre``) at the final position of a prompt, either by replacing the
activation (Hendel et al.'s vanilla vectors) or by adding to it (function vectors, learned
vectors). ``evaluate_vector`` measures accuracy per layer and returns a ``SweepResult`` (``methods.sweeps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.checks import check_layer, check_vector
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.model_info import processing_mismatch
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.sweeps import SweepResult, layer_sweep

Mode = Literal["replace", "add"]


@dataclass(frozen=True)
class TaskVector(Result):
    """One vector per layer, to inject at the input of that layer.

    vectors: [layer, d_model]; layers: the block index of each row; mode: "replace" or "add";
    method: "vanilla" | "function" | "learned" | ...; position: where it is injected ("final");
    model, model_info: the model it was made on (``core.results.stamp``; ``model_info`` empty when
    unknown): ``check_model`` refuses a model whose weight processing differs from it.
    """

    vectors: Float[Tensor, "layer d_model"]
    layers: list[int]
    mode: str
    method: str
    task: str
    position: str = "final"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(
                f"vectors must have shape [len(layers)={len(self.layers)}, d_model], got {tuple(self.vectors.shape)}"
            )
        if self.mode not in ("replace", "add"):
            raise ValueError(f"mode must be 'replace' or 'add', got {self.mode!r}")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per layer: ``layer``, ``norm`` (the L2 norm of its vector), ``mode``, ``method``,
        ``position``, ``task``, ``model``."""
        return pd.DataFrame({
            "layer": self.layers, "norm": self.vectors.float().norm(dim=-1).tolist(), "mode": self.mode,
            "method": self.method, "position": self.position, "task": self.task, "model": self.model,
        })

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def at(self, layer: int) -> Float[Tensor, "d_model"]:
        """The vector for ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} not in this task vector's layers {self.layers}")
        return self.vectors[self.layers.index(layer)]

    def check_model(self, model: HookedModel) -> None:
        """Refuse a model of another width, with fewer layers than the vector needs, or whose
        weight processing differs from the model the vector was made on (residual coordinates and
        head outputs depend on it; see ``models.load_model``)."""
        check_vector(model, self.vectors, arg=f"task vector ({self.method}, {self.model})")
        for l in self.layers:
            check_layer(model, l, arg="task vector layer")
        diff = processing_mismatch(self.model_info.get("processing"), model)
        if diff:
            shown = ", ".join(f"{k}: vector {a}, model {b}" for k, a, b in ((k, *v) for k, v in diff.items()))
            fix = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
            raise ValueError(
                f"task vector ({self.method}, {self.model}) was made on a model processed differently "
                f"({shown}); load the model with load_model(..., {fix}) to apply it"
            )


def evaluate_vector(
    model: HookedModel,
    vector: TaskVector,
    batch: PromptBatch,
    *,
    layers: Sequence[int] | None = None,
    mode: Mode | None = None,
    scale: float = 1.0,
    batch_size: int = 64,
    metric: str = "first_token",
) -> SweepResult:
    """Accuracy of ``batch`` (usually zero-shot prompts) with ``vector`` injected at each layer.

    At layer l the vector replaces (or, ``mode="add"``, is added ``scale`` times to) the residual
    stream at the input of block l, at each prompt's final position (``batch.positions("final")``),
    as ``Intervention(Site(l), mode, ...)``. Runs through
    ``sweeps.layer_sweep``: the clean prefix is computed once, every patched run resumes at
    block l (``start_at_layer``) and several layers share one forward. ``metric``: "first_token"
    (default), "label", "auto", "gold_prob"... (see ``sweeps.prompt_metric``). The result is
    stamped with ``model`` and ``batch``; ``method`` and ``task`` are the vector's.
    """
    from dataclasses import replace


    vector.check_model(model)
    if len(batch) == 0:
        raise ValueError("batch is empty")
    mode = mode or vector.mode
    if mode not in ("replace", "add"):
        raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")
    layers = list(vector.layers if layers is None else layers)
    pos = batch.positions("final").positions

    def make(l: int, rows: slice, mb: PromptBatch) -> list[Intervention]:
        return [Intervention(Site(l), mode, positions=pos[rows], value=vector.at(l),
                             scale=scale if mode == "add" else 1.0)]

    res = layer_sweep(model, batch, make, layers, metric, batch_size=batch_size)
    return replace(res, method=vector.method, task=vector.task,
                   meta={"mode": mode, "scale": scale, "variant": batch.variant})
