"""Label words as anchors (Wang et al. 2023): attention isolation.

A label word of several tokens (BPE) is its *first* token, as in ``saliency``: that position is
isolated (``batch.positions("answers")``), and its gold token is the first one.

``isolate_attention`` blocks, in a range of layers, either the label words (demo answer
positions) from attending to the text before them (``"label_from_text"``) or the final position
from attending to the label words (``"query_from_label"``), by setting those pre-softmax scores
to -inf (``Intervention(Site(l, "attn_scores"), "block_attention", value=mask)``, run by
``runner.run_final_logits``). Compared with blocking as many random non-label positions
(seeded). Published: isolating label words in the first layers hurts far more than in the last
ones. Anchor re-weighting lives in ``reweighting.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.core.checks import check_layer
from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import correct, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import run_final_logits
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.saliency import check_demos, has_bos

IsolationMode = Literal["label_from_text", "query_from_label"]
TARGETS = ["label", "random"]


# ----------------------------------------------------------------------------- isolation
def _label_from_text(batch: PromptBatch, rows_pos: Tensor, keep_bos: bool) -> Bool[Tensor, "batch pos pos"]:
    """Block each position in ``rows_pos`` [batch, n] from every earlier key (itself kept; BOS kept
    when ``keep_bos`` and the prompt starts with one)."""
    b, p = batch.tokens.shape
    ar = torch.arange(p)
    earlier = ar[None, None, :] < rows_pos[:, :, None]  # [batch, n, key]
    if keep_bos:
        earlier &= ~((ar == 0)[None, None, :] & has_bos(batch)[:, None, None])
    blocked = torch.zeros(b, p, p, dtype=torch.bool)
    rows = torch.arange(b)[:, None].expand_as(rows_pos)
    blocked[rows, rows_pos] = earlier
    return blocked


def _query_from(batch: PromptBatch, keys: Tensor) -> Bool[Tensor, "batch pos pos"]:
    """Block the final position (``batch.positions("query")``) from attending to ``keys`` [batch, n]."""
    b, p = batch.tokens.shape
    blocked = torch.zeros(b, p, p, dtype=torch.bool)
    blocked[torch.arange(b)[:, None], batch.positions("query").positions, keys] = True
    return blocked


def random_control_positions(
    batch: PromptBatch, n: int, seed: int, exclude: Sequence[str] = ("answer_tokens",),
) -> Int[Tensor, "batch n"]:
    """``n`` random positions per prompt (sorted), drawn with ``torch.Generator().manual_seed(seed)``
    from ``1 .. final - 1`` minus the valid positions of every spec in ``exclude`` (each resolved
    by ``batch.positions``; default: every token of every label word, multi-token ones included):
    never the final position or a leading BOS (position 0 is never drawn: it has no earlier text
    to be isolated from)."""
    g = torch.Generator().manual_seed(seed)
    excluded = [batch.positions(spec) for spec in exclude]
    final = batch.positions("query").positions[:, 0]
    out = []
    for b in range(len(batch)):
        fin = int(final[b])
        label = {int(p) for ex in excluded for p in ex.positions[b][ex.mask[b]]}
        pool = sorted(set(range(1, fin)) - label)
        if len(pool) < n:
            raise ValueError(f"prompt {b} has only {len(pool)} non-label positions, fewer than the {n} to isolate")
        pick = torch.randperm(len(pool), generator=g)[:n]
        out.append(torch.tensor(pool)[pick].sort().values)
    return torch.stack(out)


def _label_positions(batch: PromptBatch, positions: str | Sequence[str]) -> Int[Tensor, "batch n"]:
    """``batch.positions(positions)``, refusing multi-token sets whose columns some prompts lack."""
    ps = batch.positions(positions)
    if ps.ragged:
        raise ValueError(f"positions {positions!r} has columns some prompts lack (multi-token spans of different "
                         "lengths); isolation needs one position per column in every prompt, e.g. 'answers'")
    return ps.positions


def isolation_mask(
    batch: PromptBatch, mode: IsolationMode = "label_from_text", target: str = "label", *,
    keep_bos: bool = True, seed: int = 0, positions: str | Sequence[str] = "answers",
) -> Bool[Tensor, "batch pos pos"]:
    """Which (query, key) attention scores ``isolate_attention`` sets to -inf for each prompt.

    ``target="label"`` isolates ``batch.positions(positions)`` (default ``"answers"``: the label
    words, i.e. the first token of each demo answer); ``"random"`` as many random positions that
    are neither a token of a label word nor one of those positions (``random_control_positions``,
    seeded; never the final position or BOS).
    """
    check_demos(batch)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    pos = _label_positions(batch, positions)
    if target == "random":
        excl = ["answer_tokens", *([positions] if isinstance(positions, str) else positions)]
        pos = random_control_positions(batch, pos.shape[1], seed, exclude=excl)
    if mode == "label_from_text":
        return _label_from_text(batch, pos, keep_bos)
    if mode == "query_from_label":
        return _query_from(batch, pos)
    raise ValueError(f"mode must be 'label_from_text' or 'query_from_label', got {mode!r}")


@dataclass(frozen=True)
class IsolationResult(Result):
    """Accuracy and loyalty under attention isolation, per layer range and target.

    accuracy / loyalty: [range, target] with Wilson 95% low/high; ``loyalty`` (label loyalty) is the
    fraction of prompts whose prediction equals the un-isolated run's; word_loyalty: mean Jaccard
    overlap of the top-``top_k`` tokens with the un-isolated run's. correct / loyal: [range,
    target, batch] per prompt (0/1). targets: "label" (the label words) and "random" (as many
    random non-label positions); baseline_accuracy: the un-isolated accuracy.
    """

    accuracy: Float[Tensor, "range target"]
    accuracy_low: Float[Tensor, "range target"]
    accuracy_high: Float[Tensor, "range target"]
    loyalty: Float[Tensor, "range target"]
    loyalty_low: Float[Tensor, "range target"]
    loyalty_high: Float[Tensor, "range target"]
    word_loyalty: Float[Tensor, "range target"]
    correct: Float[Tensor, "range target batch"]
    loyal: Float[Tensor, "range target batch"]
    baseline_accuracy: float
    layer_ranges: list[list[int]]
    targets: list[str]
    mode: str
    task: str
    n_demos: int
    keep_bos: bool
    restrict_to_labels: bool
    top_k: int
    seed: int
    meta: dict = field(default_factory=dict)

    @property
    def range_names(self) -> list[str]:
        """``"0-1"`` for layers [0, 1], ``"none"`` for an empty range."""
        return [_range_name(r) for r in self.layer_ranges]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer range, target)."""
        return pd.DataFrame([
            {"layers": name, "target": t, "accuracy": float(self.accuracy[i, j]),
             "accuracy_low": float(self.accuracy_low[i, j]), "accuracy_high": float(self.accuracy_high[i, j]),
             "loyalty": float(self.loyalty[i, j]), "loyalty_low": float(self.loyalty_low[i, j]),
             "loyalty_high": float(self.loyalty_high[i, j]), "word_loyalty": float(self.word_loyalty[i, j]),
             "baseline_accuracy": self.baseline_accuracy, "mode": self.mode, "task": self.task,
             "model": self.model, "n": int(self.correct.shape[-1])}
            for i, name in enumerate(self.range_names) for j, t in enumerate(self.targets)
        ])


def _range_name(r: Sequence[int]) -> str:
    r = list(r)
    if not r:
        return "none"
    if r == list(range(r[0], r[-1] + 1)):
        return f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0])
    return ",".join(map(str, r))


def _ranges(model: HookedModel, layers: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    items = list(layers)
    if not items or not isinstance(items[0], (list, tuple, range)):
        items = [items]
    out = []
    for r in items:
        if not isinstance(r, (list, tuple, range)):
            raise ValueError(f"layers must be a list of layers or a list of layer lists, got {layers!r}")
        out.append([check_layer(model, l, allow_final=False, arg="layers") for l in r])
    return out


def _top_k_jaccard(a: Tensor, b: Tensor, k: int) -> Tensor:
    ta, tb = a.topk(k, -1).indices, b.topk(k, -1).indices
    inter = (ta[:, :, None] == tb[:, None, :]).any(-1).sum(-1).float()
    return inter / (2 * k - inter)


def isolate_attention(
    model: HookedModel,
    batch: PromptBatch,
    layers: Sequence[int] | Sequence[Sequence[int]],
    mode: IsolationMode = "label_from_text",
    *,
    control: bool = True,
    keep_bos: bool = True,
    restrict_to_labels: bool = False,
    top_k: int = 5,
    seed: int = 0,
    positions: str | Sequence[str] = "answers",
    batch_size: int = 64,
    progress: bool = True,
) -> IsolationResult:
    """Attention isolation (Wang et al. 2023) in one or several layer ranges.

    ``layers`` is one range (``[0, 1]``) or a list of ranges (``[[0, 1], [2, 3]]``). In every layer
    of a range, the pre-softmax scores of the blocked pairs are set to -inf
    (``blocks.{l}.attn.hook_attn_scores``), per prompt:
    ``"label_from_text"`` blocks each label word (``batch.positions(positions)``, default
    ``"answers"``: the first token of each demo answer) from every earlier key,
    keeping itself and, with ``keep_bos`` (default), a leading BOS token (so the row keeps the
    attention sink most models rely on and only the *text* is cut off; the paper's GPT-2 prompts
    had no BOS); ``"query_from_label"`` blocks the final position from the label words.
    ``control=True`` repeats it with as many random non-label positions (``seed``).
    Reports accuracy (argmax over the vocabulary, or the label words with
    ``restrict_to_labels``), label loyalty (same prediction as the un-isolated run) and word
    loyalty (Jaccard overlap of the top-``top_k`` vocabulary tokens).
    """
    check_demos(batch)
    ranges = _ranges(model, layers)
    targets = ["label", "random"] if control else ["label"]
    masks = {t: isolation_mask(batch, mode, t, keep_bos=keep_bos, seed=seed, positions=positions) for t in targets}
    cand = None
    if restrict_to_labels:
        if batch.label_token_ids is None:
            raise ValueError(f"restrict_to_labels=True but task {batch.task!r} has no label words")
        cand = batch.label_token_ids

    def pred(logits: Tensor) -> Tensor:
        if cand is None:
            return logits.argmax(-1)
        return cand.gather(1, logits.gather(1, cand).argmax(-1, keepdim=True))[:, 0]

    base = run_final_logits(model, batch, batch_size=batch_size)
    base_pred = pred(base)
    ok, loyal, word = [], [], []
    todo = [(r, t) for r in ranges for t in targets]
    for r, t in tqdm(todo, desc="isolation", disable=not progress):
        m = masks[t]
        make = lambda rows, mb, r=r, m=m: [  # noqa: E731
            Intervention(Site(l, "attn_scores"), "block_attention", value=m[rows]) for l in r]
        logits = run_final_logits(model, batch, make, batch_size=batch_size)
        ok.append(correct(logits, batch.answer_tokens, cand).float())
        loyal.append((pred(logits) == base_pred).float())
        word.append(_top_k_jaccard(logits, base, top_k).mean())
    shape = (len(ranges), len(targets))
    ok_t, loyal_t = torch.stack(ok).reshape(*shape, -1), torch.stack(loyal).reshape(*shape, -1)
    rate = lambda x: [wilson(int(v.sum()), v.numel()) for v in x.reshape(-1, x.shape[-1])]  # noqa: E731
    acc_r, loy_r = rate(ok_t), rate(loyal_t)
    col = lambda rs, a: torch.tensor([getattr(x, a) for x in rs]).reshape(shape)  # noqa: E731
    return IsolationResult(
        accuracy=col(acc_r, "value"), accuracy_low=col(acc_r, "low"), accuracy_high=col(acc_r, "high"),
        loyalty=col(loy_r, "value"), loyalty_low=col(loy_r, "low"), loyalty_high=col(loy_r, "high"),
        word_loyalty=torch.stack(word).reshape(shape), correct=ok_t, loyal=loyal_t,
        baseline_accuracy=float(correct(base, batch.answer_tokens, cand).float().mean()),
        layer_ranges=ranges, targets=targets, mode=mode, task=batch.task,
        n_demos=batch.n_demos, keep_bos=keep_bos, restrict_to_labels=restrict_to_labels, top_k=top_k, seed=seed,
        **stamp(model, batch), meta={"positions": positions, "prompt_seed": batch.seed},
    )
