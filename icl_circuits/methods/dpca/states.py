"""Hidden states at label positions of categorization prompts, the samples of the dPCA analysis
(arXiv 2406.16007; METHODS.md sections 4 and 9).

``collect_label_states(model, batch)`` reads the residual stream at the demo answer (label
word) positions (or separators, delimiters, the query) of a ``PromptBatch`` -> ``LabelStates``:
one sample per demo, labelled by its input's nuisance feature, its class and the label word.
``dpca.analysis`` fits dPCA to them.

The label factor is the CLASS index, not the label word: words are re-drawn for every prompt,
so a class-coding axis is an abstract "which class is this demo" representation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_circuits.core.checks import check_layer
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import read_resid
from icl_circuits.core.tasks import CategorizationTask, Task, get_task, list_tasks
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.dpca.conditions import ConditionData, condition_tensor

__all__ = ["LabelStates", "collect_label_states", "STATE_POSITIONS", "FACTORS"]

#: Where states are read: one sample per demo (answer, separator, delimiter) or per prompt (final).
STATE_POSITIONS = ("answer", "separator", "delimiter", "final")
#: The same positions in the plural / ``batch.positions`` names, accepted as aliases.
_ALIASES = {"answers": "answer", "separators": "separator", "delimiters": "delimiter", "query": "final"}
FACTORS = ("nuisance", "label", "word")


def categorization_task(task: Task | str, who: str) -> CategorizationTask:
    """The registered categorization task ``task`` (a name or a Task), refused (naming ``who``) if
    it is of another kind or has no nuisance feature."""
    t = get_task(task) if isinstance(task, str) else task
    if not isinstance(t, CategorizationTask) or t.nuisance_name is None:
        raise ValueError(f"{who} needs a categorization task with a nuisance feature; task "
                         f"{getattr(t, 'name', t)!r} is of kind {getattr(t, 'kind', '?')!r} "
                         f"(use one of {', '.join(list_tasks('categorization'))})")
    return t


@dataclass(frozen=True)
class LabelStates(Result):
    """Residual stream at one kind of position of categorization prompts; one row per sample.

    states: [layer, sample, d_model] input of block ``layers[i]`` (``n_layers``: final residual)
    nuisance: [sample] the input's nuisance value (e.g. string length); label: [sample] its class;
    word: [sample] index of the label word in ``word_names`` (-1 if not in the pool);
    prompt, demo, position: [sample] prompt index, demo index (``n_demos`` for the query) and the
    token position read. Samples are prompt-major (prompt i, demo j is row ``i * n + j``).
    """

    states: Float[Tensor, "layer sample d_model"]
    nuisance: Int[Tensor, "sample"]
    label: Int[Tensor, "sample"]
    word: Int[Tensor, "sample"]
    prompt: Int[Tensor, "sample"]
    demo: Int[Tensor, "sample"]
    position: Int[Tensor, "sample"]
    layers: list[int]
    position_kind: str
    task: str
    nuisance_name: str
    word_names: list[str]
    n_demos: int
    seed: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.states.ndim != 3 or self.states.shape[0] != len(self.layers) or self.states.shape[1] == 0:
            raise ValueError(f"states must have shape [len(layers)={len(self.layers)}, sample >= 1, d_model], "
                             f"got {tuple(self.states.shape)}")
        n = self.states.shape[1]
        for name in ("nuisance", "label", "word", "prompt", "demo", "position"):
            v = getattr(self, name)
            if v.shape != (n,):
                raise ValueError(f"{name} must have shape [sample={n}] like states, got {tuple(v.shape)}")
        if not torch.isfinite(self.states).all():
            raise ValueError("states contains NaN or inf")
        if self.nuisance_name in ("label", "word", "interaction", ""):
            raise ValueError(f"nuisance_name must be a non-empty name other than label/word/interaction, "
                             f"got {self.nuisance_name!r}")

    def __len__(self) -> int:
        return int(self.states.shape[1])

    def at(self, layer: int) -> np.ndarray:
        """Samples of ``layer`` as a float64 array (sample, d_model)."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} not among the collected layers {self.layers}")
        return self.states[self.layers.index(layer)].double().numpy()

    def factor(self, name: str) -> np.ndarray:
        """Values of factor ``name`` ("nuisance", "label" or "word") per sample."""
        if name not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {name!r}")
        return getattr(self, name).numpy()

    def factor_label(self, name: str) -> str:
        """Display name of a factor: the nuisance is called by its name (e.g. "length")."""
        return self.nuisance_name if name == "nuisance" else name

    def conditions(self, layer: int, factors: Sequence[str] = ("nuisance", "label"), *,
                   n_trials: int | None = None, min_trials: int = 2, seed: int = 0) -> ConditionData:
        """``dpca.condition_tensor`` of ``layer``: X (d_model, n_1, ..., n_k) of per-condition means of
        all samples, and balanced seeded trials (n_trials, *X.shape) for cross-validation."""
        return condition_tensor(self.at(layer), [self.factor(f) for f in factors],
                                [self.factor_label(f) for f in factors],
                                n_trials=n_trials, min_trials=min_trials, seed=seed)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per sample: prompt, demo, position, nuisance, label, word (no states)."""
        return pd.DataFrame({k: getattr(self, k).tolist() for k in
                             ("prompt", "demo", "position", "nuisance", "label", "word")})


def collect_label_states(
    model: HookedModel, batch: PromptBatch, layers: Sequence[int] | None = None, position: str = "answer", *,
    batch_size: int = 64,
) -> LabelStates:
    """Residual stream (input of each block in ``layers``, default 0..n_layers; ``n_layers``: the
    final residual) of the ICL prompts ``batch`` of a categorization task at ``position``:
    ``batch.positions(position)`` with ``position`` one of ``STATE_POSITIONS`` ("answer": the label
    word's first token, "separator", "delimiter": one sample per demo, labelled by its input x:
    nuisance(x), classify(x) and its label word; "final": one sample per prompt, labelled by the
    query). The plural names ("answers", "separators", "delimiters") and "query" are aliases."""
    t = categorization_task(batch.task, "collect_label_states")
    position = _ALIASES.get(position, position)
    if position not in STATE_POSITIONS:
        raise ValueError(f"position must be one of {STATE_POSITIONS} (or {', '.join(_ALIASES)}), got {position!r}")
    if position != "final" and batch.n_demos < 1:
        raise ValueError(f"batch has no demos (n_demos={batch.n_demos}); reading demo {position} positions needs "
                         "n_demos >= 1")
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else [check_layer(model, l, arg="layers")
                                                                         for l in layers]
    if not layers:
        raise ValueError("layers is empty; give at least one layer (or None for all)")
    pos = batch.positions(position).positions
    states = read_resid(model, batch, pos, layers, batch_size=batch_size)  # [layer, batch, n, d]
    pool = t.label_words
    rows = []
    for i in range(len(batch)):
        pairs = [(batch.queries[i], batch.answers[i])] if position == "final" else batch.demos[i]
        for j, (x, y) in enumerate(pairs):
            rows.append((t.nuisance(x), t.classify(x), pool.index(y) if y in pool else -1, i,
                         batch.n_demos if position == "final" else j, int(pos[i, j])))
    cols = torch.tensor(rows, dtype=torch.long).T
    return LabelStates(
        states=states.reshape(len(layers), -1, states.shape[-1]).float().contiguous(),
        nuisance=cols[0], label=cols[1], word=cols[2], prompt=cols[3], demo=cols[4], position=cols[5],
        layers=layers, position_kind=position, task=t.name,
        nuisance_name=str(t.nuisance_name), word_names=list(pool), n_demos=batch.n_demos, seed=batch.seed,
        **stamp(model, batch),
    )
