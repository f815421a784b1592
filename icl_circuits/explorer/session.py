"""The explorer's model side: one loaded model, the prompt a page describes, and the project's
methods run on it, cached per prompt.

``Explorer(model)`` holds the model the server was started with (no other model is ever loaded).
Every page interaction names a prompt by its ``PromptSettings``; whatever is computed on that prompt
(the batch, its final logits, attention patterns, saliency, head scans, interchanges) is kept in a
bounded least-recently-used cache keyed by the settings, so moving a slider or clicking a head
reads a cached tensor or runs one small forward. Model calls are serialized by one lock: the
runner attaches hooks to the shared model, so two requests must never run on it at once.

No analysis logic lives here: each view calls a method (``saliency_flow``, ``interchange``,
``head_ablation_scan``, ``head_attribution``, ``greedy_answers``) or a runner
read (``final_logits``, ``read_activations``) and returns its Result.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.evaluation import greedy_answers
from icl_circuits.core.model_info import model_info
from icl_circuits.core.pairs import task_answer_tokens
from icl_circuits.core.prompts import PromptBatch, Template, build_prompts, default_template
from icl_circuits.core.runner import final_logits
from icl_circuits.core.runner.forward import read_activations
from icl_circuits.core.task_filters import representable_tasks
from icl_circuits.core.tasks import get_task, task_from_pairs
from icl_circuits.explorer.inputs import (
    CUSTOM,
    MAX_SEED,
    NAMED_POSITION_SETS,
    TEMPLATES,
    ExplorerInputError,
    PromptSettings,
    check_choice,
    check_int,
    parse_pairs,
)
from icl_circuits.methods.attribution import head_attribution
from icl_circuits.methods.heads import HeadScanResult, head_ablation_scan
from icl_circuits.methods.interchange import InterchangeResult, interchange
from icl_circuits.methods.saliency import SaliencyResult, saliency_flow

__all__ = ["Explorer", "PromptView", "HEAD_METRIC"]

#: The metric of the heads view: gold first-token logit minus the largest other candidate's
#: (label words for categorization tasks, the whole vocabulary otherwise), differentiable, so the
#: exact ablation and its attribution estimate measure the same thing.
HEAD_METRIC = "logit_diff"
MAX_DEMOS = 16


@dataclass(frozen=True)
class PromptView:
    """What the prompt view shows: the tokens and their roles, the model's answer and its top-5.

    first_token_correct: argmax at the final position is the gold answer's first token;
    whole_answer_correct: greedy decoding gives exactly the gold answer (``greedy_answers``);
    top: the 5 most likely next tokens with their softmax probabilities.
    """

    tokens: list[str]
    roles: list[str]
    names: list[str | None]  # the position name of each token (``PromptBatch.positions``), None if it has none
    query: str
    gold: str
    generated: str
    first_token_correct: bool
    whole_answer_correct: bool
    top: list[tuple[str, float]]
    label_words: tuple[str, ...] | None
    text: str


class Explorer:
    """The model behind an explorer app and the methods it runs, cached per prompt.

    ``model``: a loaded model (``load_model``); ``name``: how the page names it (default: its
    ``model_info`` name); ``cache_size``: prompts kept; ``source_prompts`` / ``mean_prompts``: prompts
    of the source task averaged by the interchange, and of the prompt's task whose head outputs
    mean ablation uses (both drawn with seed ``seed + 1`` so they never contain this prompt).
    """

    def __init__(self, model: Any, *, name: str | None = None, cache_size: int = 16,
                 source_prompts: int = 4, mean_prompts: int = 8) -> None:
        self.model = model
        self.name = name or model_info(model)["name"]
        self.n_layers = int(model.cfg.n_layers)
        self.n_heads = int(model.cfg.n_heads)
        self.tasks = representable_tasks(model)
        self.cache_size = cache_size
        self.source_prompts = source_prompts
        self.mean_prompts = mean_prompts
        self.lock = threading.RLock()
        self._cache: OrderedDict[PromptSettings, dict[str, Any]] = OrderedDict()
        self._templates: dict[str, Template] = {}
        self._memo: dict[Any, Any] = {}

    # ----------------------------------------------------------------------------- inputs
    def settings(self, task: Any, n_demos: Any, seed: Any = 0, template: Any = "default",
                 pairs: Any = "") -> PromptSettings:
        """Checked ``PromptSettings`` from a page's raw values (``ExplorerInputError`` otherwise)."""
        task = check_choice(task, "task", [*self.tasks, CUSTOM])
        n_demos = check_int(n_demos, "demos", 0, MAX_DEMOS)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        template = check_choice(template, "template", TEMPLATES)
        parsed = parse_pairs(pairs or "") if task == CUSTOM else ()
        if task == CUSTOM and len(parsed) < n_demos + 1:
            raise ExplorerInputError(f"custom pairs: {n_demos} demos and a query need at least {n_demos + 1} "
                                     f"pairs, got {len(parsed)}")
        return PromptSettings(task, n_demos, seed, template, parsed)

    def layer(self, value: Any, *, final: bool = False) -> int:
        """A checked layer index (0..n_layers-1, or up to n_layers with ``final``)."""
        return check_int(value, "layer", 0, self.n_layers if final else self.n_layers - 1)

    def head(self, value: Any) -> int:
        return check_int(value, "head", 0, self.n_heads - 1)

    # ----------------------------------------------------------------------------- caching
    def _entry(self, s: PromptSettings) -> dict[str, Any]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        entry: dict[str, Any] = {}
        self._cache[s] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def _cached(self, s: PromptSettings, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (prompt, key), under the model lock; errors of the methods
        (``ValueError``: a prompt they cannot use) become ``ExplorerInputError``."""
        with self.lock:
            entry = self._entry(s)
            if key not in entry:
                try:
                    entry[key] = compute()
                except ExplorerInputError:
                    raise
                except ValueError as e:
                    raise ExplorerInputError(str(e)) from None
            return entry[key]

    def clear(self) -> None:
        """Forget every cached prompt."""
        with self.lock:
            self._cache.clear()

    # ----------------------------------------------------------------------------- prompts
    def template(self, key: str) -> Template:
        if key not in self._templates:
            spec = TEMPLATES[key]
            self._templates[key] = default_template(self.model) if spec is None else Template.coerce(spec)
        return self._templates[key]

    def task(self, s: PromptSettings):
        return task_from_pairs("custom", [list(p) for p in s.pairs]) if s.task == CUSTOM else get_task(s.task)

    def batches(self, s: PromptSettings, n: int, seed: int, task: Any = None) -> PromptBatch:
        """``n`` prompts of ``task`` (default: the prompt's) with the prompt's demos count and template."""
        return build_prompts(self.model, self.task(s) if task is None else task, n, s.n_demos,
                             self.template(s.template), seed=seed)

    def batch(self, s: PromptSettings) -> PromptBatch:
        """The one prompt ``s`` describes (prompt 0 of ``build_prompts`` with its seed)."""
        return self._cached(s, "batch", lambda: self.batches(s, 1, s.seed))

    def prompt(self, s: PromptSettings) -> PromptView:
        """The prompt view: tokens and roles, top-5 next tokens, first-token and whole-answer scoring."""
        def compute() -> PromptView:
            b = self.batch(s)
            logits = final_logits(self.model, b)[0].float()
            probs = torch.softmax(logits, -1)
            top = probs.topk(5)
            greedy = greedy_answers(self.model, b)
            tok = b.tokenizer
            n = int(b.final_positions[0]) + 1
            return PromptView(
                tokens=[tok.decode([t]) for t in b.tokens[0, :n].tolist()], roles=b.roles(0),
                names=self.position_names(s), query=b.queries[0], gold=b.answers[0],
                generated=greedy.generated[0],
                first_token_correct=bool(int(logits.argmax()) == int(b.answer_tokens[0])),
                whole_answer_correct=bool(greedy.correct[0]),
                top=[(tok.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)],
                label_words=b.label_words[0], text=b.texts[0])
        return self._cached(s, "prompt", compute)

    def position_names(self, s: PromptSettings) -> list[str | None]:
        """For every token of the prompt, its name in the position language (``"demo_2.answer[0]"``,
        ``"query"`` for the final token), or None (BOS, the query's input)."""
        def compute() -> list[str | None]:
            b = self.batch(s)
            names: list[str | None] = [None] * (int(b.final_positions[0]) + 1)
            if b.n_demos:
                ps = b.positions("demo_tokens")
                for j, name in enumerate(ps.names):
                    if bool(ps.mask[0, j]):
                        names[int(ps.positions[0, j])] = name
            names[-1] = "query"
            return names
        return self._cached(s, "names", compute)

    def position_spec(self, s: PromptSettings, selection: str | Sequence[int]) -> str:
        """A position spec from a named set (a label of ``NAMED_POSITION_SETS``) or clicked token
        indices of the prompt (each must have a name: a demo token or the final token)."""
        if isinstance(selection, str):
            return NAMED_POSITION_SETS[check_choice(selection, "position set", NAMED_POSITION_SETS)]
        names = self.position_names(s)
        if not selection:
            raise ExplorerInputError("click at least one token of the demos (or the final token), or pick a named set")
        picked = []
        for i in selection:
            i = check_int(i, "token", 0, len(names) - 1)
            if names[i] is None:
                raise ExplorerInputError(f"token {i} is not a demo token or the final token; it cannot be patched")
            picked.append(names[i])
        return "+".join(dict.fromkeys(picked))

    # ----------------------------------------------------------------------------- attention and saliency
    def attention(self, s: PromptSettings, layer: int, head: int) -> Float[Tensor, "query_pos key_pos"]:
        """Head ``head`` of block ``layer``'s attention pattern on the prompt (one forward per prompt
        reads every layer's ``hook_pattern``)."""
        layer, head = self.layer(layer), self.head(head)

        def compute() -> Tensor:
            b = self.batch(s)
            names = [f"blocks.{l}.attn.hook_pattern" for l in range(self.n_layers)]
            acts = read_activations(self.model, b, names)
            n = int(b.final_positions[0]) + 1
            return torch.stack([acts[nm][0, :, :n, :n].float() for nm in names])  # [layer, head, q, k]
        return self._cached(s, "attention", compute)[layer, head]

    def saliency(self, s: PromptSettings) -> SaliencyResult:
        """``saliency_flow`` on the prompt (label-word loss; per head too)."""
        return self._cached(s, "saliency", lambda: saliency_flow(
            self.model, self.batch(s), per_head=True, keep_examples=1, progress=False))

    # ----------------------------------------------------------------------------- interventions
    def sources(self, s: PromptSettings) -> list[str]:
        """The tasks that can be interchanged into this prompt: defined on its query, with a first
        answer token different from the prompt's own (so transfer and preserve differ)."""
        def compute() -> list[str]:
            b = self.batch(s)
            gold = int(b.answer_tokens[0])
            out = []
            for t in self.tasks:
                try:
                    a = int(task_answer_tokens(b, t)[0])
                except ValueError:
                    continue
                if a >= 0 and a != gold:
                    out.append(t)
            return out
        return self._cached(s, "sources", compute)

    def interchange(self, s: PromptSettings, source: Any, spec: str) -> InterchangeResult:
        """Cheng & Zhang's interchange into this prompt at every layer: the mean residual of
        ``source_prompts`` prompts of task ``source`` at the positions ``spec`` replaces the
        prompt's own; scored transfer / preserve / neither."""
        source = check_choice(source, "source task", self.tasks)

        def compute() -> InterchangeResult:
            tgt = self.batch(s)
            if int(task_answer_tokens(tgt, source)[0]) < 0:
                raise ExplorerInputError(f"source task {source!r} is not defined on the query "
                                         f"{tgt.queries[0]!r}; pick another source task or seed")
            src = self.batches(s, self.source_prompts, s.seed + 1, task=source)
            try:
                src.positions(spec)
            except ValueError as e:  # a clicked token the source prompts do not have (a longer word here)
                raise ExplorerInputError(f"the {source} prompts averaged as the source lack a position you chose "
                                         f"({e}); click the first token of a word, or pick a named set") from None
            res = interchange(self.model, src, tgt, spec, source_task=source, progress=False)
            if res.n == 0:
                raise ExplorerInputError(f"source task {source!r} gives the same first answer token as "
                                         f"{s.task!r} on this query, so transfer and preserve cannot be told "
                                         "apart; pick another source task or seed")
            return res
        return self._cached(s, ("interchange", source, spec), compute)

    # ----------------------------------------------------------------------------- heads
    def mean_batch(self, s: PromptSettings) -> PromptBatch:
        return self._cached(s, "mean_batch", lambda: self.batches(s, self.mean_prompts, s.seed + 1))

    def head_attribution(self, s: PromptSettings, how: str) -> HeadScanResult:
        """Every head's ablation effect on ``HEAD_METRIC`` estimated by attribution patching
        (``head_attribution``: one forward and one backward pass): the heads grid."""
        how = check_choice(how, "ablation", ("zero", "mean"))
        return self._cached(s, ("attribution", how), lambda: head_attribution(
            self.model, self.batch(s), how, metric=HEAD_METRIC,
            mean_batch=self.mean_batch(s) if how == "mean" else None))

    def head_scan(self, s: PromptSettings, how: str, layer: Any | None = None) -> HeadScanResult:
        """The exact effect of ablating each head alone (``head_ablation_scan``), of one layer's
        heads (one staggered forward from that layer) or, with ``layer=None``, of every head."""
        how = check_choice(how, "ablation", ("zero", "mean"))
        layers = None if layer is None else [self.layer(layer)]
        return self._cached(s, ("scan", how, None if layers is None else layers[0]), lambda: head_ablation_scan(
            self.model, self.batch(s), how, metric=HEAD_METRIC, layers=layers,
            mean_batch=self.mean_batch(s) if how == "mean" else None, progress=False))

    # ----------------------------------------------------------------------------- lessons
    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """A value computed once per explorer (a lesson's run), under the model lock, kept apart
        from the prompts' cache (a lesson's result is never evicted)."""
        with self.lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]
