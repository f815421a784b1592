"""Learned task vectors (Yang, Cho, Ding & Inoue 2025, "Task Vectors, Learned Not Extracted").

One vector theta in R^d per injection layer is *added* to the residual stream at the input of that
block (``blocks.{l}.hook_resid_pre``; ``l == n_layers`` is the final residual, before
``ln_final``) at the prompt's final position, and trained by gradient descent with the model
frozen, on the cross-entropy of the gold first answer token at the final position:

    theta* = argmin_theta  mean_i  -log softmax(f_{l..L}(h_l(x_i) + theta e_q))[y_i]

Because the model is frozen, the residual ``h_l(x_i)`` at the first injection layer does not
depend on theta: it is read once (``runner.read_resid``) and every training step runs only
blocks l..L from it (``runner.resume_final_logits``, which also gives the blocks the shortformer
positions or attention mask a full forward would) and unembeds only the final position. The
vectors enter as ``Intervention(Site(l), "add", positions=batch.positions(position).positions)``.
``ltv_loss(..., resid=None)`` runs the full model instead; both give the same gradients
(``tests/methods/test_learned.py``, ``bench/bench_ltv.py``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.checks import check_layer, check_vector
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import Rate, wilson
from icl_circuits.core.positions import PositionSet
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import stamp, stamp_of
from icl_circuits.core.runner import final_logits_with_grad, frozen, read_resid, resume_final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.vectors import TaskVector

__all__ = ["train_task_vector", "train_per_layer", "ltv_loss", "joint_accuracy", "split_by_query"]


# ----------------------------------------------------------------------------- positions and splits
def _spec(position: str | Sequence[str]) -> list[str]:
    """The position spec as a list of names (a string may join several with "+")."""
    items = position.split("+") if isinstance(position, str) else [str(p) for p in position]
    if not items or any(not p.strip() for p in items):
        raise ValueError(f"position must name a position set or a non-empty list of them "
                         f"(as PromptBatch.positions reads them: 'final', 'answer', ...), got {position!r}")
    return list(dict.fromkeys(p.strip() for p in items))


def _injections(layers: Sequence[int], vectors: Tensor, ps: PositionSet, rows: Tensor | slice | None = None,
                ) -> list[Intervention]:
    """``vectors[i]`` added at every position of ``ps`` (rows ``rows``) of layer ``layers[i]``."""
    pos = ps.positions if rows is None else ps.positions[rows]
    mask = None if not ps.ragged else (ps.mask if rows is None else ps.mask[rows])
    return [Intervention(Site(l), "add", positions=pos, value=vectors[i], mask=mask) for i, l in enumerate(layers)]


def split_by_query(batch: PromptBatch, n_val: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train rows, validation rows): whole queries are held out, so validation queries are unseen.

    Distinct queries are shuffled (``seed``) and moved to the validation side until it holds at
    least ``n_val`` prompts; sizes are therefore ``n_val`` plus at most the prompts of one query.
    """
    queries = list(dict.fromkeys(batch.queries))
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed)).tolist()
    held: set[str] = set()
    n_held = 0
    counts = {q: 0 for q in queries}
    for q in batch.queries:
        counts[q] += 1
    for i in order:
        if n_held >= n_val:
            break
        held.add(queries[i])
        n_held += counts[queries[i]]
    val = [i for i, q in enumerate(batch.queries) if q in held]
    train = [i for i, q in enumerate(batch.queries) if q not in held]
    return train, val


# ----------------------------------------------------------------------------- the forward pass
def ltv_loss(
    model: HookedModel,
    batch: PromptBatch,
    vectors: Float[Tensor, "layer d_model"],
    layers: Sequence[int],
    position: str | Sequence[str] = "final",
    *,
    resid: Float[Tensor, "batch pos d_model"] | None = None,
) -> tuple[Float[Tensor, ""], Float[Tensor, "batch d_vocab"]]:
    """(mean cross-entropy of the gold first answer token, final-position logits) with ``vectors[i]``
    added at every position of ``batch.positions(position)`` at layer ``layers[i]``.

    ``resid``: the residual at the input of block ``min(layers)`` for ``batch`` (from
    ``read_resid``); then only blocks ``min(layers)..L`` run (``runner.resume_final_logits``).
    Without it the full model runs (``runner.final_logits_with_grad``). Gradients flow to
    ``vectors`` (and to the model's parameters if they require grad).
    """
    layers = [check_layer(model, l, arg="layers") for l in layers]
    check_vector(model, vectors, arg="vectors")
    ivs = _injections(layers, vectors, batch.positions(_spec(position)))
    if resid is not None:
        logits = resume_final_logits(model, resid[:, : batch.tokens.shape[1]], min(layers), tokens=batch.tokens,
                                     final_positions=batch.final_positions, interventions=ivs)
    else:
        logits = final_logits_with_grad(model, batch, ivs).float()
    return F.cross_entropy(logits, batch.answer_tokens.to(logits.device)), logits


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class _Split:
    """One split's prompts, their residual at the first injection layer (read once: the model is
    frozen, so it does not depend on the vectors) and the injection positions."""

    batch: PromptBatch
    resid: Tensor
    pos: PositionSet

    def __len__(self) -> int:
        return len(self.batch)


def _split(model: HookedModel, batch: PromptBatch, first: int, spec: list[str], batch_size: int) -> _Split:
    return _Split(batch, read_resid(model, batch, None, [first], batch_size=batch_size)[0], batch.positions(spec))


def _split_logits(model: HookedModel, sp: _Split, vectors: Tensor, layers: list[int], rows: Tensor) -> Tensor:
    """Final-position logits of rows ``rows`` of a split, resumed at the first injection layer."""
    fin = sp.batch.final_positions[rows]
    width = int(fin.max()) + 1
    return resume_final_logits(model, sp.resid[rows, :width], min(layers), tokens=sp.batch.tokens[rows, :width],
                               final_positions=fin, interventions=_injections(layers, vectors, sp.pos, rows))


@torch.no_grad()
def _evaluate(model: HookedModel, sp: _Split, vectors: Tensor, layers: list[int], batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy over the full vocabulary) of a split."""
    loss, ok = 0.0, 0
    for s in range(0, len(sp), batch_size):
        rows = torch.arange(s, min(s + batch_size, len(sp)))
        lg = _split_logits(model, sp, vectors, layers, rows)
        ans = sp.batch.answer_tokens[rows].to(lg.device)
        loss += float(F.cross_entropy(lg, ans, reduction="sum"))
        ok += int((lg.argmax(-1) == ans).sum())
    return loss / len(sp), ok / len(sp)


def _warn_query_first(batch: PromptBatch) -> None:
    """Warn when zero-shot prompts start with their query word although the tokenizer has a BOS.

    In Llama-family models the first position is an attention sink that later positions barely
    read; a prompt ``x ->`` without a start token hides its query there. On SmolLM2-135M no LTV
    trained from such prompts (present-past, layers 9 and 15: 0.00) while with ``<|endoftext|>``
    first they reach ~0.97 (docs/results/real/task_vectors.md)."""
    bos = getattr(batch.tokenizer, "bos_token_id", None)
    if batch.n_demos == 0 and bos is not None and bool((batch.query_spans[:, 0] == 0).any()):
        warnings.warn(
            f"train_task_vector: the prompts of {batch.task!r} start with their query word (no BOS); it is then the "
            "attention sink and the model barely reads it. Build them with build_prompts(..., prepend_bos=True)",
            UserWarning, stacklevel=3)


def _resolve_layers(model: HookedModel, layer: int | None, layers: Sequence[int] | None) -> list[int]:
    if layer is not None and layers is not None:
        raise ValueError("give either layer (one injection layer) or layers (several), not both")
    if layer is None and layers is None:
        raise ValueError("layer: an injection layer is required (or layers=[...] for several)")
    ls = [layer] if layers is None else list(layers)
    if not ls:
        raise ValueError("layers must be a non-empty list of layer indices")
    out = [check_layer(model, l, arg="layer" if layers is None else "layers") for l in ls]
    if len(set(out)) != len(out):
        raise ValueError(f"layers must not repeat a layer, got {out}")
    return out


def train_task_vector(
    model: HookedModel,
    batch: PromptBatch,
    layer: int | None = None,
    *,
    position: str | Sequence[str] = "final",
    layers: Sequence[int] | None = None,
    n_val: int = 64,
    epochs: int = 10,
    lr: float = 5e-3,
    weight_decay: float = 0.01,
    batch_size: int = 8,
    patience: int = 3,
    init_scale: float = 0.1,
    init: Float[Tensor, "... d_model"] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TaskVector:
    """Train a learned task vector (LTV) with the model frozen; returns a ``TaskVector`` (mode "add").

    Data: the prompts of ``batch``, usually zero-shot (``build_prompts(model, task, n_train + n_val,
    0, seed=seed, variant="zero_shot")``: ``x_q SEP``) or ICL prompts; ``split_by_query`` (with
    ``seed``) holds out whole queries for ``n_val`` validation prompts (0: no validation split),
    the rest train. Parameters: one theta per layer in ``layers`` (or the single ``layer``), init
    ``U(-init_scale, init_scale)`` drawn with ``seed`` (or ``init``: ``[d_model]`` or
    ``[n_layers_given, d_model]``), added (``Intervention(Site(l), "add")``) at every position of
    ``batch.positions(position)`` (default "final"; e.g. ``["final", "answer"]`` or
    ``"final+separator"``; the same theta at each). Objective: cross-entropy of the gold first answer token at the final position
    over the full vocabulary. AdamW(lr, weight_decay), minibatches shuffled with ``seed``; after
    each epoch the loss and accuracy on both splits are measured and the vector with the lowest
    validation loss is kept; training stops after ``patience`` epochs without improvement.

    Step size: Adam moves each coordinate by about ``lr`` per step, so the vector's norm grows by at
    most ~``lr * sqrt(d) * steps``; where the residual is large (on toy-icl ~50-90 after block 0
    versus ~2 at the embedding) use more steps (smaller ``batch_size``, more data) or a larger ``lr``.

    The model's parameters get no gradient (``requires_grad`` is switched off and restored
    afterwards, also on error). ``meta`` holds the curve (epoch 0 = the untrained vector):
    ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy`` per epoch, ``best_epoch``,
    ``val_accuracy_best``, split sizes, steps and seconds.
    """
    ls = _resolve_layers(model, layer, layers)
    kinds = _spec(position)
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"batch must be a PromptBatch (build_prompts), got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("batch is empty (an empty training set cannot train)")
    batch.positions(kinds)  # an unknown or absent position set fails here, before any forward
    for name, v, low in (("n_val", n_val, 0), ("epochs", epochs, 1), ("batch_size", batch_size, 1), ("patience", patience, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        why = " (lr=0 would return the random initialization as a learned vector)" if lr == 0 else ""
        raise ValueError(f"lr must be a finite number > 0{why}, got {lr!r}")
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if (isinstance(init_scale, bool) or not isinstance(init_scale, (int, float))
            or not math.isfinite(init_scale) or init_scale < 0):
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    if init is not None:
        check_vector(model, init, arg="init")
        theta0 = init.detach().float().cpu().reshape(-1, d)
        if theta0.shape[0] == 1:
            theta0 = theta0.expand(len(ls), d)
        if theta0.shape[0] != len(ls):
            raise ValueError(f"init must have shape [d_model] or [{len(ls)}, d_model], got {tuple(init.shape)}")
    else:
        theta0 = (torch.rand(len(ls), d, generator=g) * 2 - 1) * init_scale
    train_rows, val_rows = split_by_query(batch, n_val, seed) if n_val else (list(range(len(batch))), [])
    if not train_rows:
        raise ValueError(
            f"task {batch.task!r} is too small: holding out {n_val} validation prompts with unseen queries "
            f"left no training prompts (the {len(batch)} prompts have {len(set(batch.queries))} distinct queries); "
            "lower n_val or give more prompts"
        )
    first = min(ls)
    bs_eval = max(batch_size, 128)
    _warn_query_first(batch)
    t0 = time.time()
    with frozen(model):
        train = _split(model, batch.select(train_rows), first, kinds, bs_eval)
        val = _split(model, batch.select(val_rows), first, kinds, bs_eval) if val_rows else None
        resid_norm = float(train.resid[torch.arange(len(train)), train.batch.final_positions].norm(dim=-1).mean())
        theta = torch.nn.Parameter(theta0.clone().to(model.cfg.device))
        opt = torch.optim.AdamW([theta], lr=lr, weight_decay=weight_decay)
        curve: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [], "val_loss": [], "val_accuracy": []}

        def measure() -> float:
            tl, ta = _evaluate(model, train, theta, ls, bs_eval)
            vl, va = _evaluate(model, val, theta, ls, bs_eval) if val is not None else (tl, ta)
            for k, v in zip(curve, (tl, ta, vl, va)):
                curve[k].append(v)
            return vl

        best_loss, best_epoch, best = measure(), 0, theta.detach().clone()
        steps, stale = 0, 0
        bar = tqdm(range(1, epochs + 1), desc=f"LTV {batch.task} layers {ls}", disable=not progress, leave=False)
        for epoch in bar:
            order = torch.randperm(len(train), generator=g)
            for s in range(0, len(train), batch_size):
                rows = order[s: s + batch_size]
                logits = _split_logits(model, train, theta, ls, rows)
                loss = F.cross_entropy(logits, train.batch.answer_tokens[rows].to(logits.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            vl = measure()
            bar.set_postfix(train=f"{curve['train_loss'][-1]:.3f}", val=f"{vl:.3f}", acc=f"{curve['val_accuracy'][-1]:.2f}")
            if vl < best_loss - 1e-6:
                best_loss, best_epoch, best, stale = vl, epoch, theta.detach().clone(), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    meta = {
        **curve, "best_epoch": best_epoch, "val_accuracy_best": curve["val_accuracy"][best_epoch],
        "train_accuracy_best": curve["train_accuracy"][best_epoch], "n_train": len(train_rows),
        "n_val": len(val_rows), "with_demos": batch.n_demos, "variant": batch.variant, "epochs_run": len(curve["train_loss"]) - 1,
        "steps": steps, "seconds": time.time() - t0, "lr": lr, "weight_decay": weight_decay,
        "batch_size": batch_size, "init_scale": init_scale, "seed": seed, "positions": kinds,
        "norm": [float(v) for v in best.norm(dim=-1)], "resid_norm": resid_norm,
    }
    return TaskVector(
        vectors=best.cpu(), layers=ls, mode="add", method="learned", task=batch.task,
        position="+".join(kinds), meta=meta, **stamp(model, batch),
    )


def joint_accuracy(model: HookedModel, tv: TaskVector, batch: PromptBatch, *, position: str | Sequence[str] | None = None,
                   batch_size: int = 64) -> Rate:
    """Accuracy with *all* of ``tv``'s layers added at once (``vectors.evaluate_vector`` injects one
    layer at a time), at the positions it was trained at (``tv.position``, a spec joined by "+"),
    or at ``batch.positions(position)``."""
    tv.check_model(model)
    if len(batch) == 0:
        raise ValueError("batch is empty")
    if tv.mode != "add":
        raise ValueError(f"joint_accuracy adds vectors; tv.mode is {tv.mode!r}")
    kinds = position if position is not None else tv.position.split("+")
    ok = 0
    with torch.no_grad():
        for s in range(0, len(batch), batch_size):
            mb = batch.select(range(s, min(s + batch_size, len(batch))))
            _, logits = ltv_loss(model, mb, tv.vectors.to(model.cfg.device), tv.layers, kinds)
            ok += int((logits.argmax(-1).cpu() == mb.answer_tokens).sum())
    return wilson(ok, len(batch))


def train_per_layer(model: HookedModel, batch: PromptBatch, layers: Sequence[int] | None = None, *,
                    progress: bool = True, **options: Any) -> TaskVector:
    """One LTV trained *independently* at each layer in ``layers`` (default 0..n_layers), stacked into
    one TaskVector (evaluate it with ``vectors.evaluate_vector``, which injects one layer at a time).

    ``options`` go to ``train_task_vector``; ``meta["per_layer"]`` holds each layer's meta.
    """
    layers = list(range(model.cfg.n_layers + 1)) if layers is None else list(layers)
    if not layers:
        raise ValueError("layers must be a non-empty list of layer indices")
    tvs = [train_task_vector(model, batch, l, progress=False, **options)
           for l in tqdm(layers, desc="LTV per layer", disable=not progress, leave=False)]
    first = tvs[0]
    return TaskVector(
        vectors=torch.cat([t.vectors for t in tvs]), layers=layers, mode="add", method="learned", task=first.task,
        position=first.position, **stamp_of(first),
        meta={"per_layer": {str(l): t.meta for l, t in zip(layers, tvs)},
              "val_accuracy_best": [t.meta["val_accuracy_best"] for t in tvs]},
    )
