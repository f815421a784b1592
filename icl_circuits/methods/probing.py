"""Linear probes on the residual stream per layer and position (METHODS.md section 5).

A probe is a standardized logistic regression (scikit-learn) that decodes the task identity (one
batch of prompts per task) or a per-prompt label from the residual stream at the input of block l
(``blocks.{l}.hook_resid_pre``; ``l = n_layers`` is the final residual) at a position set
(a ``PromptBatch.positions`` spec: ``answer``, ``separator``, ``delimiter``, ``final``,
``answer_-1``..., unions with ``+``). Accuracy is held out: stratified K-fold cross-validation,
grouped by prompt so that positions of one prompt never sit on both sides of a split.

Probe accuracy is not causal evidence (Cheng & Zhang 2026): single answer positions decode the
task at ~100% although overwriting them transfers nothing. Put ``ProbeResult`` next to
``InterchangeResult`` (``viz.interchange.probe_vs_transfer``) to see both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.positions import check_batch
from icl_circuits.core.checks import check_layer
from icl_circuits.core.runner import read_resid
from icl_circuits.core.metrics import wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.types import HookedModel

__all__ = ["ProbeResult", "probe_by_layer"]

Combine = Literal["pool", "mean", "concat"]


@dataclass(frozen=True)
class ProbeResult(Result):
    """Held-out probe accuracy per layer.

    accuracy, low, high: [layer] fraction of samples whose cross-validated prediction is right, with
    its Wilson 95% interval (samples from one prompt are not independent when ``combine="pool"``);
    fold_std: [layer] standard deviation of the per-fold accuracies; control: [layer] the same
    probe on labels shuffled across prompts (NaN when not run); predictions: [layer, sample] class
    index predicted out of fold; labels, groups: [sample] class index and prompt index.
    chance: the majority-class rate. classes: the class names (index -> name). Stamped
    (``core.results.stamp``) with the model and the first batch (``provenance``'s ``task`` and
    ``n_prompts`` over all batches).
    Where the states carry no label information at all (e.g. the same token in every prompt at
    layer 0), the shuffled control can fall *below* chance: held-out folds of a stratified split
    are biased against the training majority.
    """

    accuracy: Float[Tensor, "layer"]
    low: Float[Tensor, "layer"]
    high: Float[Tensor, "layer"]
    fold_std: Float[Tensor, "layer"]
    control: Float[Tensor, "layer"]
    predictions: Int[Tensor, "layer sample"]
    labels: Int[Tensor, "sample"]
    groups: Int[Tensor, "sample"]
    layers: list[int]
    positions: list[str]
    position_set: str
    classes: list[str]
    chance: float
    task: str
    combine: str = "pool"
    cv: int = 5
    seed: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        return self.layers[int(self.accuracy.argmax())]

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({
            "layer": self.layers, "accuracy": self.accuracy.tolist(), "low": self.low.tolist(),
            "high": self.high.tolist(), "fold_std": self.fold_std.tolist(), "control": self.control.tolist(),
            "chance": self.chance, "n": int(self.labels.numel()), "position_set": self.position_set,
            "combine": self.combine, "task": self.task, "model": self.model,
        })


def _features(model, batches: list[PromptBatch], spec, layers, combine: Combine, batch_size: int):
    """[layer, sample, feature], the position names, and the prompt index of each sample.

    With ``combine="pool"`` or ``"mean"`` the batches may resolve a multi-token set to different
    columns (one task's answers are longer than another's, ``demo_0.answer[2]`` exists in one batch
    only): the names returned are their union, in order of appearance. ``"concat"`` needs the same
    columns in every prompt of every batch.
    """
    feats, groups, names0, offset = [], [], None, 0
    for b in batches:
        ps = b.positions(spec)
        names = ps.names
        if names0 is not None and names != names0:
            if combine == "concat":
                raise ValueError(f"combine='concat' needs the same columns in every batch, but positions {spec!r} "
                                 f"resolve to different roles in different batches ({names0} vs {names}); "
                                 "use combine='pool' or 'mean'")
            names = names0 + [n for n in names if n not in names0]
        names0 = names
        x = read_resid(model, b, ps.positions, layers, batch_size=batch_size).float()  # [layer, batch, n, d]
        L, B, n, d = x.shape
        if combine == "pool":  # one sample per valid (prompt, column)
            keep = ps.mask.reshape(-1)
            x, g = x.reshape(L, B * n, d)[:, keep], torch.arange(B).repeat_interleave(n)[keep]
        elif combine == "mean":  # over each prompt's valid columns
            m = ps.mask.to(x.dtype)[None, :, :, None]
            x, g = (x.mean(2) if not ps.ragged else (x * m).sum(2) / m.sum(2).clamp(min=1)), torch.arange(B)
        else:
            if ps.ragged:
                raise ValueError(f"combine='concat' needs the same columns in every prompt, but positions {spec!r} "
                                 "have multi-token spans of different lengths; use combine='pool' or 'mean'")
            x, g = x.reshape(L, B, n * d), torch.arange(B)
        feats.append(x)
        groups.append(g + offset)
        offset += B
    return torch.cat(feats, 1), names0, torch.cat(groups)


def probe_by_layer(
    model: HookedModel,
    data: Mapping[str, PromptBatch] | tuple[PromptBatch, Sequence[Any]],
    positions: str | Sequence[str] = "answer",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    cv: int = 5,
    *,
    combine: Combine = "pool",
    C: float = 1.0,
    shuffle_control: bool = True,
    blas_threads: int | None = 1,
    batch_size: int = 64,
    progress: bool = True,
) -> ProbeResult:
    """Decode a label from the residual stream at each layer (default 0..n_layers).

    ``data``: ``{label: batch}`` (e.g. one batch per task: the label is the task identity) or
    ``(batch, labels)`` with one label per prompt; for a task-identity probe build one batch per
    task with the same seed and template, ``{t: build_prompts(model, t, n, k, seed=s) for t in tasks}``.
    Each column of ``positions`` (a ``PromptBatch.positions`` spec) in each prompt
    is one sample (``combine="pool"``), or the columns are averaged (``"mean"``) or concatenated
    (``"concat"``) into one sample per prompt. Probe: StandardScaler + LogisticRegression(C),
    ``cv``-fold StratifiedGroupKFold (shuffled with ``seed``, grouped by prompt); the same splits
    for every layer. ``shuffle_control`` also fits probes on labels permuted across prompts.
    ``blas_threads`` limits the BLAS threads of the fits (1 is fastest for probes this small and
    on a shared CPU; ``None`` leaves the default).
    """
    if isinstance(data, Mapping):
        if len(data) < 2:
            raise ValueError(f"data must hold at least two labels (batches), got {len(data)}")
        batches = list(data.values())
        for k, b in data.items():
            check_batch(b, f"data[{k!r}]")
        prompt_labels = [str(k) for k, b in data.items() for _ in range(len(b))]
        task = "+".join(b.task for b in batches)
    elif isinstance(data, tuple) and len(data) == 2:
        batch, labels = data
        check_batch(batch, "data[0]")
        if len(labels) != len(batch):
            raise ValueError(f"data: {len(labels)} labels for a batch of {len(batch)} prompts")
        batches, prompt_labels, task = [batch], [str(v) for v in labels], batch.task
    else:
        raise TypeError("data must be a dict {label: PromptBatch} or a tuple (PromptBatch, labels)")
    if combine not in ("pool", "mean", "concat"):
        raise ValueError(f"combine must be 'pool', 'mean' or 'concat', got {combine!r}")
    classes = sorted(set(prompt_labels))
    if len(classes) < 2:
        raise ValueError(f"the labels must take at least two values, got {classes}")
    y_prompt = np.array([classes.index(v) for v in prompt_labels])
    counts = np.bincount(y_prompt)
    if not isinstance(cv, int) or cv < 2 or cv > counts.min():
        raise ValueError(f"cv must be an integer between 2 and the smallest class size in prompts "
                         f"({int(counts.min())}), got {cv!r}")
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else [check_layer(model, l, arg="layers") for l in layers]
    if not layers:
        raise ValueError("layers must name at least one layer")

    spec = positions
    X, names, groups = _features(model, batches, spec, layers, combine, batch_size)
    g = groups.numpy()
    y = y_prompt[g]
    perm = np.random.default_rng(seed).permutation(len(y_prompt))
    y_shuf = y_prompt[perm][g]
    splits = list(StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, g))

    def fit_predict(x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, list[float]]:
        pred, accs = np.empty_like(target), []
        for train, test in splits:
            if len(np.unique(target[train])) < 2:  # a fold with one class: predict it
                pred[test] = target[train][0]
            else:
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
                pred[test] = clf.fit(x[train], target[train]).predict(x[test])
            accs.append(float((pred[test] == target[test]).mean()))
        return pred, accs

    preds, acc, low, high, std, ctrl = [], [], [], [], [], []
    with threadpool_limits(limits=blas_threads):
        for i, _ in enumerate(tqdm(layers, desc=f"probe {spec}", disable=not progress)):
            x = X[i].double().numpy()
            p, accs = fit_predict(x, y)
            r = wilson(int((p == y).sum()), len(y))
            preds.append(torch.as_tensor(p))
            acc.append(r.value), low.append(r.low), high.append(r.high), std.append(float(np.std(accs)))
            ctrl.append(float((fit_predict(x, y_shuf)[0] == y_shuf).mean()) if shuffle_control else float("nan"))
    return ProbeResult(
        accuracy=torch.tensor(acc), low=torch.tensor(low), high=torch.tensor(high), fold_std=torch.tensor(std),
        control=torch.tensor(ctrl), predictions=torch.stack(preds).long(), labels=torch.as_tensor(y).long(),
        groups=groups.long(), layers=layers, positions=names,
        position_set=spec if isinstance(spec, str) else "+".join(spec), classes=classes,
        chance=float(np.bincount(y).max() / len(y)), task=task,
        combine=combine, cv=cv, seed=seed, meta={"C": C, "n_prompts": len(y_prompt)},
        **stamp(model, batches[0], task=task, n_prompts=len(y_prompt)),
    )
