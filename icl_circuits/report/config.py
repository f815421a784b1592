"""What the report runs on and what a section returns: ``ReportConfig`` (with the per-model presets
``MODEL_PRESETS``), ``Context`` (the model, the config and a cache shared by the sections) and
``Section``. The bottom of the report package: the section modules and ``suite`` import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go

from icl_circuits.core.types import HookedModel

__all__ = ["ReportConfig", "MODEL_PRESETS", "Section", "Context", "SectionFn"]


@dataclass
class ReportConfig:
    """What the suite runs on. ``quick`` shrinks prompt counts for a fast look.

    ``ReportConfig.for_model(name)`` gives the tasks and sizes chosen for a model
    (``MODEL_PRESETS``): tasks the model solves (>= 0.7 on its primary metric) and prompt counts
    and a layer stride that keep the full report within about 3 minutes on 2 CPU cores.
    """

    model_name: str = "toy-icl"
    knowledge_task: str = "antonym"
    category_task: str = "letter-string"
    interchange_pair: tuple[str, str] = ("antonym", "english-french")
    #: tasks of the accuracy-vs-demos section (None: every task the tokenizer can carry)
    accuracy_tasks: tuple[str, ...] | None = None
    accuracy_demos: tuple[int, ...] = (0, 1, 2, 4, 8)
    #: prompts per cell of the accuracy section (None: ``n_prompts``)
    accuracy_prompts: int | None = None
    n_demos: int = 8
    n_prompts: int = 48
    #: every ``layer_stride``-th layer is analysed in per-layer sweeps (None: 1 up to 12 layers, else
    #: n_layers // 10); the final layer is always included
    layer_stride: int | None = None
    #: head ablation: the exact per-head scan of every head (expensive on real models) next to attribution
    exact_head_scan: bool = True
    #: function vectors: head CIE is measured in every ``fv_layer_stride``-th analysed layer of the first
    #: two thirds (each head costs one patched forward of the ICL prompts)
    fv_layer_stride: int = 1
    #: corrupted prompts the head CIE is averaged over (None: all of the section's prompts)
    fv_prompts: int | None = None
    #: LTV training epochs per layer and training prompts (the task-vector, OV and propagation sections)
    ltv_epochs: int = 8
    #: LTV learning rate (Adam). SmolLM2's final-position residual has norm 120-220: at 2e-2 and a few dozen
    #: steps the vector stays below norm 4 and moves nothing (measured: docs/results/real/task_vectors.md)
    ltv_lr: float = 2e-2
    #: LTVs are trained at every ``ltv_layer_stride``-th analysed block layer (training costs ~10 s of CPU per
    #: layer on SmolLM2); the propagation section fits at the same layers
    ltv_layer_stride: int = 1
    #: LTV training prompts per layer (None: 2 * prompts(32)); a quarter as many again are held out
    ltv_prompts: int | None = None
    #: random vectors of the propagation fit
    propagation_vectors: int = 160
    seed: int = 0
    quick: bool = False
    #: null draws of the dPCA section (``dpca_analysis.DEFAULT_N_NULL``: p-values can reach 1/21)
    dpca_n_null: int = 20
    #: dPCA at every ``dpca_layer_stride``-th analysed layer (each layer: a fit plus one per null draw)
    dpca_layer_stride: int = 1
    #: numbers of key heads ablated (vs as many random heads)
    key_head_ks: tuple[int, ...] = (1, 2, 4, 8)
    #: torch intra-op threads for the run (None: leave torch's setting); the header states the count.
    #: The CLI defaults to 1: on a busy 2-core machine torch's default count was ~48x slower.
    threads: int | None = None

    def prompts(self, n: int | None = None) -> int:
        """Prompts of a section that asks for ``n`` (None: ``n_prompts``): a third of it, at least 8, when ``quick``."""
        n = n or self.n_prompts
        return max(8, n // 3) if self.quick else n

    def layers(self, n_layers: int) -> list[int]:
        """The layers of per-layer sweeps: 0, s, 2s, ... and always ``n_layers`` (the final residual)."""
        s = self.layer_stride or (1 if n_layers <= 12 else max(1, n_layers // 10))
        return sorted(set(range(0, n_layers + 1, s)) | {n_layers})

    def block_layers(self, n_layers: int) -> list[int]:
        """``layers`` without the final residual (sweeps that intervene at the input of a block)."""
        return [l for l in self.layers(n_layers) if l < n_layers]

    @classmethod
    def for_model(cls, model_name: str, **overrides: Any) -> "ReportConfig":
        """The preset of ``model_name`` (``MODEL_PRESETS``; defaults for other models) with ``overrides``."""
        return cls(model_name=model_name, **{**MODEL_PRESETS.get(model_name, {}), **overrides})


#: Per-model choices. smollm2-135m: tasks it solves with 8 demos under "{x} -> {y}"
#: (docs/models/smollm2-135m.md: present-past 0.93, uppercase 0.86, first-letter 0.85, singular-plural
#: 0.96 first token; animal-plant 0.89 label accuracy), every 3rd of its 30 layers, and prompt counts
#: sized so that the whole report takes about 3 minutes on 2 CPU cores with 1 thread.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "toy-icl": {},
    "smollm2-135m": dict(
        knowledge_task="present-past", category_task="animal-plant", interchange_pair=("uppercase", "first-letter"),
        accuracy_tasks=("present-past", "singular-plural", "uppercase"), accuracy_demos=(0, 2, 8), accuracy_prompts=12,
        n_prompts=24, layer_stride=3, fv_layer_stride=2, fv_prompts=8, exact_head_scan=False, ltv_epochs=10, ltv_lr=0.1,
        ltv_layer_stride=3, ltv_prompts=24, propagation_vectors=48, dpca_n_null=10, dpca_layer_stride=2,
        key_head_ks=(1, 4, 8),
    ),
    #: gemma3-270m, from docs/models/gemma3-270m.md (k = 8, "{x} -> {y}", N = 100), by the same rule: vectors, heads,
    #: OV and propagation on country-capital (0.91 first token; 0.00 zero-shot); interchange uppercase -> first-letter
    #: (0.99, 0.85; SmolLM2's pair, so the two models are compared on one pair); dPCA on number, the solved
    #: categorization task the demos help most (label accuracy 0.50 -> 0.78; sentiment 0.95 -> 1.00, animal-plant
    #: 0.94 -> 0.94: zero-shot already there); accuracy on
    #: country-capital, english-french (0.75; SmolLM2 0.11) and present-past. Every 2nd of its 18 layers.
    "gemma3-270m": dict(
        knowledge_task="country-capital", category_task="number", interchange_pair=("uppercase", "first-letter"),
        accuracy_tasks=("country-capital", "english-french", "present-past"), accuracy_demos=(0, 2, 8),
        accuracy_prompts=12, n_prompts=24, layer_stride=2, fv_layer_stride=2, fv_prompts=8, exact_head_scan=False,
        ltv_epochs=10, ltv_lr=0.1, ltv_layer_stride=3, ltv_prompts=24, propagation_vectors=48, dpca_n_null=10,
        dpca_layer_stride=2, key_head_ks=(1, 4, 8),
    ),
}


@dataclass
class Section:
    """One part of the report: text, figures, optional table, and the time it took."""

    key: str
    title: str
    text: str
    figures: list[go.Figure] = field(default_factory=list)
    table: pd.DataFrame | None = None
    seconds: float = 0.0
    error: str | None = None
    #: prompts the section actually evaluated (read from its result, not the config); None: unknown
    n_prompts: int | None = None
    #: the full tidy data behind ``table``, offered as an embedded CSV download (not printed)
    data: pd.DataFrame | None = None
    #: why (part of) the result is degenerate or not readable, computed from its own numbers;
    #: shown above the figures so that nothing degenerate reads as a finding
    warnings: list[str] = field(default_factory=list)
    #: the claim tested, its source and the paper's number (``verdicts.CLAIMS[key]`` by default)
    claim: Any = None
    #: our number, to stand beside the paper's
    ours: str = ""
    #: what the numbers say, generated from them (shown after the table)
    reading: str = ""
    #: CPU seconds of the process while the section ran (wall time is ``seconds``)
    cpu_seconds: float = 0.0


@dataclass
class Context:
    """What every section gets: the model, the config, and a cache of results that several sections
    share (the accuracy section's task accuracies, the learned task vectors and their sweep, the key heads)."""

    model: HookedModel
    cfg: ReportConfig
    cache: dict = field(default_factory=dict)


#: A section: computes with the public API and returns its ``Section``.
SectionFn = Callable[[Context], Section]
