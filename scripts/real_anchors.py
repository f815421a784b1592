"""Label words as anchors (Wang et al. 2023) on SmolLM2-135M: saliency flow, attention isolation,
anchor re-weighting, beside the paper's claims.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/real_anchors.py --seed 0 --seeds 1 2

Writes docs/results/real/anchors.md and docs/results/real/figures/anchors_*.png. The toy-model
counterpart is scripts/toy_saliency.py (docs/results/saliency.md). Tasks: the two categorization
tasks with natural label words (``sentiment``: negative / positive, the SST-2 setting;
``animal-plant``) and one knowledge task (``present-past``, outside the paper's setting: its
"label words" are the demos' answers, all different). A task carries claims only if the model
solves it at 8 demos (label-word accuracy, first-token accuracy for the knowledge task, >= 0.7).

Saliency and isolation run on ``--prompts`` prompts of 8 random demos each (seeded); re-weighting
follows the paper's code (lancopku/label-words-are-anchors, ``ReweightingArgs``): one demonstration
per class, fixed for all prompts of a seed, 4 training queries per class with the same demos, Adam
lr 0.1, 10 epochs, batch 1; evaluated on every other example of the task (held out).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_common import cell, parser, save_figures, setup, spread, table, write_page  # noqa: E402

from icl_circuits import build_prompts, get_task  # noqa: E402
from icl_circuits.core.evaluation import score  # noqa: E402
from icl_circuits.core.metrics import Rate, wilson  # noqa: E402
from icl_circuits.core.tasks import Episode, Task  # noqa: E402
from icl_circuits.methods.anchors import IsolationResult, isolate_attention  # noqa: E402
from icl_circuits.methods.reweighting import ReweightResult, train_anchor_reweighting  # noqa: E402
from icl_circuits.methods.saliency import SaliencyResult, saliency_flow  # noqa: E402

NAME = "anchors"
CATEGORIZATION = ("sentiment", "animal-plant")
KNOWLEDGE = "present-past"
DEMOS = 8
SOLVED = 0.7
# the paper's code (ReweightingArgs): 1 demo per class, 4 training queries per class, lr 0.1, 10 epochs, batch 1
RW_SHOT, RW_TRAIN, RW_LR, RW_EPOCHS = 1, 4, 0.1, 10
RW_TEST = 60  # held-out queries per seed (a random subset of the examples not used as demos or training)


# ----------------------------------------------------------------------------- helpers
def layer_sets(n_layers: int) -> dict[str, list[int]]:
    """First / last third of the layers (the issue's comparison) and first / last 5 (the paper's)."""
    k = n_layers // 3
    return {"first third": list(range(k)), "last third": list(range(n_layers - k, n_layers)),
            "first 5": list(range(5)), "last 5": list(range(n_layers - 5, n_layers))}


def rng_name(layers: Sequence[int]) -> str:
    return f"{layers[0]}-{layers[-1]}"


def metric_of(task: str) -> str:
    return "label" if task in CATEGORIZATION else "first_token"


class FixedDemos(Task):
    """``task`` with one fixed list of demonstrations shared by every prompt (the paper's re-weighting
    setting); prompt i asks ``queries[i]`` (``build_prompts`` draws prompts in order)."""

    def __init__(self, task: Task, demos: Sequence[tuple[str, str]], queries: Sequence[str]):
        self.name, self.kind, self.description = task.name, task.kind, task.description
        self._task, self._demos, self._queries, self._next = task, list(demos), list(queries), 0

    def inputs(self) -> list[str]:
        return [x for x, _ in self._demos] + self._queries

    def apply(self, x: str, label_words: Sequence[str] | None = None) -> str | None:
        return self._task.apply(x, label_words)

    @property
    def label_words(self) -> list[str] | None:
        return self._task.label_words

    def sample_episode(self, n: int, seed: Any) -> Episode:
        if n != len(self._demos) + 1:
            raise ValueError(f"FixedDemos has {len(self._demos)} demos; n must be {len(self._demos) + 1}, got {n}")
        x = self._queries[self._next % len(self._queries)]
        self._next += 1
        words = self.label_words
        return Episode(pairs=[*self._demos, (x, self.apply(x))], label_words=None if words is None else tuple(words))


def fixed_demo_batches(model: Any, task_name: str, seed: int, shot: int, train_per_class: int) -> dict[str, Any]:
    """The paper's re-weighting data for one seed: ``shot`` demos per class (random order), fixed for
    all prompts; ``train_per_class`` training queries per class; every other input held out.
    Also the "vanilla (shot + train) per class" prompts: the training examples used as demos."""
    task = get_task(task_name)
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    for x in task.inputs():
        by_label.setdefault(task.apply(x), []).append(x)
    demos, train, used = [], [], set()
    for y in sorted(by_label):
        xs = [by_label[y][i] for i in rng.permutation(len(by_label[y]))]
        demos += [(x, y) for x in xs[:shot]]
        train += xs[shot: shot + train_per_class]
        used |= set(xs[: shot + train_per_class])
    demos = [demos[i] for i in rng.permutation(len(demos))]
    train = [train[i] for i in rng.permutation(len(train))]
    rest = [x for x in task.inputs() if x not in used]
    test = [rest[i] for i in rng.permutation(len(rest))][:RW_TEST]
    many = demos + [(x, task.apply(x)) for x in train]
    many = [many[i] for i in rng.permutation(len(many))]
    mk = lambda d, q: build_prompts(model, FixedDemos(task, d, q), len(q), len(d), seed=seed)  # noqa: E731
    return {"train": mk(demos, train), "test": mk(demos, test), "many": mk(many, test), "demos": demos}


def per_prompt_rates(res: SaliencyResult, first: list[int], last: list[int]) -> tuple[Rate, Rate]:
    """Prompts where S_wp > S_pq in most first-third layers, and S_pq > S_wp in most last-third ones."""
    wp, pq = res.per_prompt[0], res.per_prompt[1]  # [layer, batch]
    n = wp.shape[-1]
    shallow = ((wp[first] > pq[first]).float().mean(0) > 0.5).sum()
    deep = ((pq[last] > wp[last]).float().mean(0) > 0.5).sum()
    return wilson(int(shallow), n), wilson(int(deep), n)


def share(res: SaliencyResult) -> torch.Tensor:
    """[flow, layer] shares of the prompt-averaged flows (each layer's three flows sum to 1)."""
    m = res.per_prompt.mean(-1)
    return m / m.sum(0, keepdim=True).clamp_min(1e-30)


def crossover(res: SaliencyResult) -> int | None:
    """First layer from which the mean S_pq exceeds the mean S_wp in every later layer."""
    m = res.per_prompt.mean(-1)
    above = (m[1] > m[0]).tolist()
    for l in range(len(above)):
        if all(above[l:]):
            return l
    return None


def mcnemar(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, float]:
    """Prompts fixed / broken by re-weighting and the exact two-sided McNemar p-value."""
    from scipy.stats import binomtest

    fixed, broken = int(((after > 0) & (before == 0)).sum()), int(((after == 0) & (before > 0)).sum())
    p = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return fixed, broken, float(p)


def cputime() -> float:
    return time.process_time()


# ----------------------------------------------------------------------------- sections
def qualify(model: Any, n: int, seed: int) -> tuple[list[list[str]], dict[str, Rate], dict[tuple[str, int], Rate]]:
    """Accuracy at 0, 2 and 8 demos; the task's metric at 8 demos decides whether it carries claims."""
    rows, at8, every = [], {}, {}
    for task in (*CATEGORIZATION, KNOWLEDGE):
        cells = []
        for k in (0, 2, DEMOS):
            b = build_prompts(model, task, n, k, seed=seed)
            names = ["label", "first_token"] if task in CATEGORIZATION else ["first_token"]
            s = score(model, b, names)
            r = {m: wilson(int(v.sum()), len(v)) for m, v in s.items()}
            cells.append(" / ".join(cell(r[m]) for m in names))
            every[task, k] = r[metric_of(task)]
            if k == DEMOS:
                at8[task] = r[metric_of(task)]
        solved = at8[task].value >= SOLVED
        rows.append([task, "label / first token" if task in CATEGORIZATION else "first token", *cells,
                     "solved" if solved else "**model cannot do the task** (excluded)"])
    return rows, at8, every


def run_saliency(model: Any, task: str, n: int, seed: int) -> SaliencyResult:
    b = build_prompts(model, task, n, DEMOS, seed=seed)
    return saliency_flow(model, b, "label_words", proportions=True, keep_examples=1, batch_size=16, progress=False)


def run_isolation(model: Any, task: str, n: int, seed: int, ranges: list[list[int]], mode: str) -> IsolationResult:
    b = build_prompts(model, task, n, DEMOS, seed=seed)
    return isolate_attention(model, b, ranges, mode, restrict_to_labels=task in CATEGORIZATION, seed=seed,
                             batch_size=32, progress=False)


def iso_rates(res: IsolationResult, name: str, target: str) -> Rate:
    i, j = res.range_names.index(name), res.targets.index(target)
    v = res.loyal[i, j]
    return wilson(int(v.sum()), v.numel())


def run_reweighting(model: Any, task: str, seed: int, vanilla_many: bool) -> tuple[ReweightResult, Rate | None, Any]:
    d = fixed_demo_batches(model, task, seed, RW_SHOT, RW_TRAIN)
    res = train_anchor_reweighting(model, d["train"], d["test"], lr=RW_LR, epochs=RW_EPOCHS, batch_size=1,
                                   seed=seed, progress=False)
    many = None
    if vanilla_many:
        s = score(model, d["many"], ["label"])["label"]
        many = wilson(int(s.sum()), len(s))
    return res, many, d


# ----------------------------------------------------------------------------- the page
def verdict_rates(rates: list[Rate], means: list[float]) -> str:
    """reproduced: every task's Wilson interval above 0.5 and its seed mean above 0.5; partly: some."""
    ok = [r.low > 0.5 and m > 0.5 for r, m in zip(rates, means)]
    return "**reproduced**" if all(ok) else "**partly**" if any(ok) else "**not reproduced**"


def figures(state: dict, seed: int) -> dict[str, Any]:
    """The page's figures from the results (seed ``seed``)."""
    from icl_circuits.viz import anchors as viz_anchors
    from icl_circuits.viz import reweighting as viz_rw
    from icl_circuits.viz import saliency as viz_sal

    n, figs = state["n"], {}
    for task in state["solved"]:
        figs[f"{NAME}_flows_{task}"] = viz_sal.flows(
            state["sal"][task, seed], title=f"Saliency flow shares per layer: SmolLM2-135M, {task}, {DEMOS} demos "
                                            f"(n={n}, seed {seed}; label-word loss)")
    for task in state["solved"]:
        figs[f"{NAME}_isolation_{task}"] = viz_anchors.isolation(
            state["iso"][task, seed], title=f"Isolating label words from the text: SmolLM2-135M, {task}, {DEMOS} "
                                            f"demos (n={n}, seed {seed}); label vs random positions")
    for task in state["solved_cat"]:
        res = state["rw"][task, seed][0]
        figs[f"{NAME}_reweighting_{task}"] = viz_rw.reweighting(
            res, title=f"Anchor re-weighting, 1 demo per class: SmolLM2-135M, {task} "
                       f"(held-out n={len(res.correct_before)}, seed {seed})")
    return figs


def replot(args: Any, state_path: Path, minutes: float) -> None:
    """Rebuild the page and figures from a saved state (``--replot``), with the original run's time."""
    import pickle
    from types import SimpleNamespace

    state = pickle.loads(state_path.read_bytes())
    links = save_figures(figures(state, args.seed), args.out)
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=state["n_layers"]))
    body = page(args, model, state["n"], state["seeds"], state["sets"], state["qual_rows"], state["at8"],
                state["every"], state["solved"], state["solved_cat"], state["sal"], state["iso"], state["rw"], links,
                state["cpu"])
    cmd = f"OMP_NUM_THREADS=1 .venv/bin/python scripts/real_anchors.py --seed {args.seed} --seeds " + " ".join(
        map(str, args.seeds)) + (f" --prompts {args.prompts}" if args.prompts != 50 else "")
    print(write_page(args.out, f"{NAME}.md", body, cmd, time.perf_counter() - 60 * minutes))


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--replot", type=Path, default=None, help="rebuild the page from a saved state (no model run)")
    p.add_argument("--minutes", type=float, default=0.0, help="with --replot: the original run's wall time")
    args = p.parse_args(argv)
    if args.replot is not None:
        return replot(args, args.replot, args.minutes)
    started = time.perf_counter()
    model = setup(args.threads)
    n_layers = model.cfg.n_layers
    sets = layer_sets(n_layers)
    first, last = sets["first third"], sets["last third"]
    seeds = [args.seed, *args.seeds]
    n = args.prompts
    cpu: dict[str, float] = {}

    # 0. which tasks the model solves
    t = cputime()
    qual_rows, at8, every = qualify(model, n, args.seed)
    solved = [task for task in (*CATEGORIZATION, KNOWLEDGE) if at8[task].value >= SOLVED]
    solved_cat = [task for task in CATEGORIZATION if task in solved]
    cpu["accuracy"] = cputime() - t
    print("solved:", solved, {k: str(v) for k, v in at8.items()}, flush=True)

    # 1. saliency flow
    t = cputime()
    sal: dict[tuple[str, int], SaliencyResult] = {}
    for task in solved:
        for s in seeds if task in CATEGORIZATION else [args.seed]:
            sal[task, s] = run_saliency(model, task, n, s)
            print("saliency", task, s, [str(r) for r in per_prompt_rates(sal[task, s], first, last)], flush=True)
    cpu["saliency"] = cputime() - t

    # 2. isolation
    t = cputime()
    iso: dict[tuple[str, int], IsolationResult] = {}
    full = [sets["first 5"], first, last, sets["last 5"]]
    for task in solved:
        for s in seeds if task in CATEGORIZATION else [args.seed]:
            iso[task, s] = run_isolation(model, task, n, s, full if s == args.seed else [first, last], "label_from_text")
            print("isolation", task, s, iso[task, s].to_dataframe()[["layers", "target", "loyalty", "word_loyalty"]]
                  .to_string(index=False), flush=True)
    cpu["isolation"] = cputime() - t

    # 3. re-weighting
    t = cputime()
    rw: dict[tuple[str, int], tuple[ReweightResult, Rate | None, Any]] = {}
    for task in solved_cat:
        for s in seeds:
            res_rw, many, d = run_reweighting(model, task, s, vanilla_many=s == args.seed)
            rw[task, s] = (res_rw, many, {"demos": d["demos"]})
            r = rw[task, s][0]
            print("reweighting", task, s, f"{r.accuracy_before:.3f} -> {r.accuracy_after:.3f}", flush=True)
    cpu["re-weighting"] = cputime() - t

    # everything the page needs, so a failure while writing it does not cost the run (see replot)
    import pickle

    state = dict(n_layers=n_layers, n=n, seeds=seeds, sets=sets, qual_rows=qual_rows, at8=at8, every=every,
                 solved=solved, solved_cat=solved_cat, sal=sal, iso=iso, rw=rw, cpu=cpu)
    Path("/tmp/real_anchors_state.pkl").write_bytes(pickle.dumps(state))
    links = save_figures(figures(state, args.seed), args.out)
    body = page(args, model, n, seeds, sets, qual_rows, at8, every, solved, solved_cat, sal, iso, rw, links, cpu)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python scripts/real_anchors.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    path = write_page(args.out, f"{NAME}.md", body, cmd.strip(), started)
    print(f"wrote {path}; CPU seconds per section: {cpu}")


def page(args: Any, model: Any, n: int, seeds: list[int], sets: dict, qual_rows: list, at8: dict, every: dict, solved: list,
         solved_cat: list, sal: dict, iso: dict, rw: dict, links: dict, cpu: dict) -> str:
    L = model.cfg.n_layers
    first, last = sets["first third"], sets["last third"]
    s0 = args.seed
    out = [
        "# Label words as anchors (Wang et al. 2023) on SmolLM2-135M",
        "",
        "Wang et al. (EMNLP 2023, *Label Words are Anchors*) claim on GPT2-XL (48 layers) and GPT-J (28 layers), "
        "classification with label words (SST-2, TREC, AGNews, EmoC): (1) in shallow layers information flows "
        "from the text into the label words (S_wp dominates); (2) in deep layers the prediction reads the label "
        "words (S_pq dominates); (3) isolating the label words from the text in the first layers destroys the "
        "prediction, in the last layers it barely matters, and isolating as many random non-label words barely "
        "matters; (4) a learned re-weighting of the query's attention to the label words improves 1-shot-per-class "
        "ICL (GPT2-XL, SST-2: 61.3% -> 90.1%). METHODS.md section 1 defines what we compute; the toy-model page "
        "is [docs/results/saliency.md](../saliency.md).",
        "",
        f"Model: SmolLM2-135M ({L} layers, 9 heads, 3 KV heads), float32, template `{{x}} -> {{y}}`. Headline "
        f"seed {s0}, extra seeds {', '.join(map(str, seeds[1:]))}; N = {n} prompts per task and seed unless stated. "
        "Intervals are Wilson 95% over prompts; `mean ± sd (min-max, seeds)` is the spread over seeds.",
        "",
        "## Summary",
        "",
    ]
    summary_at = len(out)
    out += ["", "## Which tasks the model solves", "",
            f"Accuracy over {n} prompts (seed {s0}); categorization tasks: label-word accuracy (argmax over the two "
            "label words, chance 0.5) / first-token accuracy (over the whole vocabulary); knowledge task: first-token "
            f"accuracy. A task carries claims if its metric at {DEMOS} demos is >= {SOLVED}.", "",
            table(["task", "metric", "0 demos", "2 demos", f"{DEMOS} demos", "status"], qual_rows), ""]
    high0 = [t for t in CATEGORIZATION if every[t, 0].low > 0.5]
    if high0:
        out += [f"Zero-shot label-word accuracy is already above chance for {', '.join(high0)} (" + "; ".join(
            f"{t}: {cell(every[t, 0])} at 0 demos vs {cell(every[t, DEMOS])} at {DEMOS}" for t in high0)
            + "): picking the better of the two label words needs no demonstration; the demos mainly teach the "
            "format (first-token accuracy at 0 demos in the table). The label-restricted metrics below (label "
            "loyalty, re-weighted accuracy) therefore measure a model that can partly answer from the query alone.",
            ""]

    # ---- saliency
    rows, rate_rows, cross = [], [], {}
    headline_sal: dict[str, dict] = {}
    for task in solved:
        res = sal[task, s0]
        sh = share(res)
        cross[task] = crossover(res)
        n_sh = int((sh[0, first] > sh[1, first]).sum())
        n_dp = int((sh[1, last] > sh[0, last]).sum())
        n_dp_dom = int(((sh[1, last] > sh[0, last]) & (sh[1, last] > sh[2, last])).sum())
        rs, rd = per_prompt_rates(res, first, last)
        task_seeds = [s for s in seeds if (task, s) in sal]
        per_seed = [per_prompt_rates(sal[task, s], first, last) for s in task_seeds]
        headline_sal[task] = {"shallow": rs, "deep": rd, "shallow_seeds": [a.value for a, _ in per_seed],
                              "deep_seeds": [b.value for _, b in per_seed]}
        rate_rows.append([task, cell(rs), spread(headline_sal[task]["shallow_seeds"]) if len(task_seeds) > 1 else "-",
                          cell(rd), spread(headline_sal[task]["deep_seeds"]) if len(task_seeds) > 1 else "-",
                          f"{n_sh}/{len(first)}", f"{n_dp}/{len(last)} ({n_dp_dom} where S_pq is the largest of the three)",
                          f"{cross[task]} ({cross[task] / L:.0%} of depth)" if cross[task] is not None else "none"])
        for j in range(L):
            rows.append([task, j, f"{sh[0, j]:.3f}", f"{sh[1, j]:.3f}", f"{sh[2, j]:.3f}",
                         f"{float(res.per_prompt[0, j].mean()):.3g}", f"{float(res.per_prompt[1, j].mean()):.3g}",
                         f"{float(res.per_prompt[2, j].mean()):.3g}"])
    out += ["## Claims 1 and 2: saliency flow per layer", "",
            "I_l = |sum_h A_{l,h} * dL/dA_{l,h}| with L the cross-entropy of the final position over the label "
            "words (the paper's code; for present-past over every answer first token in the batch); "
            "S_wp: text -> label words, S_pq: label words -> final position, S_ww: all other pairs (diagonal "
            f"excluded). The label word is the first token of each demo answer. {DEMOS} random demos per prompt; all "
            f"{L} layers. First third = layers {rng_name(first)}, last third = {rng_name(last)}.", "",
            "Per prompt: does S_wp exceed S_pq in most first-third layers (claim 1), and S_pq exceed S_wp in most "
            "last-third layers (claim 2)? Layer counts and the crossover layer use the prompt-averaged flows of "
            f"seed {s0}.", "",
            table(["task", f"prompts with S_wp > S_pq, first third (seed {s0})", "same, over seeds",
                   f"prompts with S_pq > S_wp, last third (seed {s0})", "same, over seeds",
                   "first-third layers where share wp > share pq", "last-third layers where share pq > share wp",
                   "crossover layer (S_pq > S_wp from here on)"], rate_rows), ""]
    for task in solved:
        if cross[task] is None:
            continue
        sh = share(sal[task, s0])
        odd = [j for j in range(cross[task]) if sh[1, j] > sh[0, j]]
        out.append(f"{task}: before the crossover, S_pq's share exceeds S_wp's in layer(s) "
                   + (", ".join(f"{j} ({sh[1, j]:.2f} vs {sh[0, j]:.2f})" for j in odd) if odd else "none") + ".")
    out += ["", *[links[f"{NAME}_flows_{task}"] for task in solved]]
    out += ["", "<details><summary>Shares and raw flows per layer (seed %d)</summary>" % s0, "",
            table(["task", "layer", "share wp", "share pq", "share ww", "S_wp", "S_pq", "S_ww"], rows), "",
            "</details>", ""]
    v1 = verdict_rates([headline_sal[t]["shallow"] for t in solved_cat],
                       [float(np.mean(headline_sal[t]["shallow_seeds"])) for t in solved_cat])
    v2 = verdict_rates([headline_sal[t]["deep"] for t in solved_cat],
                       [float(np.mean(headline_sal[t]["deep_seeds"])) for t in solved_cat])
    toy = ("On toy-icl (docs/results/saliency.md) S_pq held the largest share in every layer, including layer 0, "
           "so the shallow-layer half of the claim failed there; ")
    out += [f"**Verdict, claim 1 (shallow layers: text -> label words dominates): {v1}** on "
            f"{', '.join(solved_cat)}.", "",
            f"**Verdict, claim 2 (deep layers: label words -> query dominates): {v2}** on {', '.join(solved_cat)}.", "",
            toy + ("SmolLM2 shows the paper's shallow-layer S_wp phase: the toy and the real model disagree."
                   if v1 == "**reproduced**" else "SmolLM2 does not fully show it either."), ""]
    if KNOWLEDGE in solved:
        h = headline_sal[KNOWLEDGE]
        out += [f"Knowledge task {KNOWLEDGE} (outside the paper's setting, seed {s0} only): S_wp > S_pq in most "
                f"first-third layers for {cell(h['shallow'])} of prompts, S_pq > S_wp in most last-third layers "
                f"for {cell(h['deep'])}.", ""]

    # ---- isolation
    names = {k: rng_name(v) for k, v in sets.items()}
    iso_rows, head_iso = [], {}
    for task in solved:
        res = iso[task, s0]
        df = res.to_dataframe()
        for _, r in df.iterrows():
            i, j = res.range_names.index(r.layers), res.targets.index(r.target)
            lo = wilson(int(res.loyal[i, j].sum()), res.loyal.shape[-1])
            ac = wilson(int(res.correct[i, j].sum()), res.correct.shape[-1])
            iso_rows.append([task, r.layers, r.target, f"{r.baseline_accuracy:.2f}", cell(ac), cell(lo),
                             f"{r.word_loyalty:.2f}"])
    spread_rows = []
    for task in solved:
        task_seeds = [s for s in seeds if (task, s) in iso]
        vals = {(nm, tg): [iso_rates(iso[task, s], names[nm], tg).value for s in task_seeds]
                for nm in ("first third", "last third") for tg in ("label", "random")}
        words = {(nm, tg): [float(iso[task, s].word_loyalty[iso[task, s].range_names.index(names[nm]),
                                                            iso[task, s].targets.index(tg)]) for s in task_seeds]
                 for nm in ("first third", "last third") for tg in ("label", "random")}
        head_iso[task] = {k: (iso_rates(iso[task, s0], names[k[0]], k[1]), v) for k, v in vals.items()}
        head_iso[task]["words"] = words
        spread_rows.append([task] + [
            f"{cell(head_iso[task][k][0])}; {spread(v) if len(v) > 1 else '1 seed'}" for k, v in vals.items()]
            + [f"{np.mean(words['first third', 'label']):.2f} / {np.mean(words['first third', 'random']):.2f} / "
               f"{np.mean(words['last third', 'label']):.2f}"])
    out += ["## Claim 3: isolating the label words", "",
            "In every layer of a range, each label word (first token of each demo answer) may no longer attend to "
            "the text before it (pre-softmax scores set to -inf; it keeps itself; SmolLM2's prompts have no BOS). "
            f"Control (`random`): as many random non-label positions per prompt (seed = prompt seed), isolated the "
            "same way. Label loyalty: the prediction (argmax over the label words for categorization, over the "
            "vocabulary for present-past) is unchanged from the un-isolated run; word loyalty: Jaccard overlap of "
            f"the top-5 vocabulary tokens. Ranges: the issue's thirds ({names['first third']}, {names['last third']}) "
            f"and the paper's 5 layers ({names['first 5']}, {names['last 5']}; extra seeds: thirds only).", "",
            table(["task", "label loyalty: first third, label", "first third, random", "last third, label",
                   "last third, random", "word loyalty (seed mean): first third label / random / last third label"],
                  spread_rows), ""]
    out += [links[f"{NAME}_isolation_{task}"] for task in solved]
    out += ["", f"<details><summary>Every range, seed {s0}</summary>", "",
            table(["task", "layers", "isolated", "baseline acc.", "accuracy", "label loyalty", "word loyalty"], iso_rows),
            "", "</details>", ""]
    per_task = []
    for task in solved_cat:
        h = head_iso[task]
        fl, fr, ll = h["first third", "label"][0], h["first third", "random"][0], h["last third", "label"][0]
        per_task.append((fl.high < fr.low and fl.high < ll.low, fl.high < ll.low or fl.high < fr.low))
    v3l = ("reproduced" if per_task and all(a for a, _ in per_task) else
           "partly" if any(b for _, b in per_task) else "not reproduced")
    # word loyalty is a mean per run (no per-prompt values): compare the ranges over seeds
    per_word = []
    for task in solved_cat:
        w = head_iso[task]["words"]
        fl = max(w["first third", "label"])
        per_word.append((fl < min(w["first third", "random"]) and fl < min(w["last third", "label"]),
                         fl < min(w["first third", "random"]) or fl < min(w["last third", "label"])))
    v3w = ("reproduced" if per_word and all(a for a, _ in per_word) else
           "partly" if any(b for _, b in per_word) else "not reproduced")
    v3 = f"**{v3l} by label loyalty, {v3w} by word loyalty**"
    out += [f"**Verdict, claim 3 (shallow label isolation destroys the prediction, deep and random barely "
            f"matter): {v3l}** by label loyalty (reproduced = the first-third label isolation's Wilson interval lies "
            "below both the random control's and the last-third isolation's, on every solved categorization task); "
            f"**{v3w}** by word loyalty (reproduced = its largest value over seeds lies below the smallest of both "
            "comparisons). The paper reported both metrics falling under shallow isolation. On toy-icl "
            "(docs/results/saliency.md, 4 layers) isolating the label words in layers 0-1 cut loyalty to 0.44 / 0.47 "
            "(number / point) while random positions kept 1.00, and layers 2-3 kept 1.00.", ""]

    # ---- re-weighting
    rw_rows, gains, v4_parts = [], {}, []
    for task in solved_cat:
        res, many, d = rw[task, s0]
        fixed, broken, p = mcnemar(res.correct_before, res.correct_after)
        gains[task] = [rw[task, s][0].accuracy_after - rw[task, s][0].accuracy_before for s in seeds]
        befores = [rw[task, s][0].accuracy_before for s in seeds]
        afters = [rw[task, s][0].accuracy_after for s in seeds]
        ref = at8[task]
        rw_rows.append([task, len(res.correct_before),
                        f"{res.accuracy_before:.2f} [{res.accuracy_before_low:.2f}, {res.accuracy_before_high:.2f}]",
                        f"{res.accuracy_after:.2f} [{res.accuracy_after_low:.2f}, {res.accuracy_after_high:.2f}]",
                        f"+{fixed} / -{broken}, p = {p:.3g}", spread(befores), spread(afters), spread(gains[task]),
                        cell(many) if many is not None else "-", cell(ref)])
        sig = p < 0.05 and res.accuracy_after > res.accuracy_before
        v4_parts.append("reproduced" if sig and min(gains[task]) > 0 else
                        "partly" if float(np.mean(gains[task])) > 0 else "not reproduced")
    demo_txt = "; ".join(f"{t}: " + ", ".join(f"`{x} -> {y}`" for x, y in rw[t, s0][2]["demos"]) for t in solved_cat)
    out += ["## Claim 4: anchor re-weighting at one demonstration per class", "",
            "As in the paper's code (`ReweightingArgs`: 1 demo per class, `train_num_per_class=4`, Adam lr 0.1, "
            "10 epochs, batch 1): per seed, one demonstration per class in random order is fixed for every prompt "
            "(the paper's \"1-shot per class\"; the issue's \"1 demo\"); beta[layer, head, demo] (init 0, "
            f"{L}x9x2 = {L * 18} numbers) multiplies the final position's attention to each label word by exp(beta) "
            "(no renormalization) and is trained on 4 queries per class (8 prompts, same demos), the model frozen; "
            "loss: cross-entropy over the label words. Held out: every other example of the task (the prompts never "
            "seen in training, same demos). Accuracy: argmax over the two label words. Reference columns: the "
            "training examples used as demos instead (5 per class, vanilla ICL, the paper's comparison row; "
            f"seed {s0}) and the task's {DEMOS}-random-demo accuracy from the table above.",
            f"Demos of seed {s0}: {demo_txt}.", "",
            table(["task", "held-out N", f"before (seed {s0})", f"after (seed {s0})",
                   "fixed / broken (McNemar)", "before, over seeds", "after, over seeds", "gain, over seeds",
                   "vanilla 5 per class", f"{DEMOS} random demos"], rw_rows), ""]
    out += [links[f"{NAME}_reweighting_{task}"] for task in solved_cat]
    v4 = ("**reproduced**" if v4_parts and all(v == "reproduced" for v in v4_parts) else
          "**partly**" if any(v != "not reproduced" for v in v4_parts) else "**not reproduced**")
    out += ["", f"Verdict, claim 4: {v4} (" + "; ".join(f"{t}: {v}" for t, v in zip(solved_cat, v4_parts))
            + "; reproduced = significant held-out gain on the headline seed and a gain on every seed). The "
            "paper's 61.3% -> 90.1% started from a biased GPT2-XL; where our 1-shot baseline is already near the "
            f"{DEMOS}-demo accuracy the room for a gain is small, which the reference columns show. On toy-icl "
            "(docs/results/saliency.md; random demos per prompt, lr 0.01, 128 training prompts) re-weighting moved "
            "number at 1 demo from 0.844 to 0.859, within the interval.", ""]

    # ---- summary (inserted at the top)
    def h_s(task: str, key: str) -> str:
        return f"{cell(headline_sal[task][key])} (seeds: {spread(headline_sal[task][key + '_seeds'])})"

    summ = ["| claim | paper (model) | SmolLM2-135M | verdict |", "|---|---|---|---|"]
    summ.append("| 1. shallow layers: S_wp (text -> label words) dominates | GPT2-XL, GPT-J: S_wp high in shallow "
                "layers | " + "; ".join(f"{t}: {h_s(t, 'shallow')} of prompts" for t in solved_cat)
                + f" | {v1} |")
    summ.append("| 2. deep layers: S_pq (label words -> query) dominates | GPT2-XL, GPT-J: S_pq dominant in deep "
                "layers | " + "; ".join(f"{t}: {h_s(t, 'deep')} of prompts; crossover layer {cross[t]}" for t in solved_cat)
                + f" | {v2} |")
    summ.append("| 3. isolating label words: shallow >> deep, random | GPT2-XL, GPT-J: shallow (first 5) isolation "
                "drops loyalty, deep (last 5) and random barely | " + "; ".join(
                    f"{t}: loyalty first third {cell(head_iso[t]['first third', 'label'][0])} vs random "
                    f"{cell(head_iso[t]['first third', 'random'][0])} vs last third "
                    f"{cell(head_iso[t]['last third', 'label'][0])}" for t in solved_cat) + f" | {v3} |")
    summ.append("| 4. anchor re-weighting, 1 demo per class | GPT2-XL SST-2 61.3% -> 90.1% | " + "; ".join(
        f"{t}: {rw[t, s0][0].accuracy_before:.2f} -> {rw[t, s0][0].accuracy_after:.2f} (N="
        f"{len(rw[t, s0][0].correct_before)}; gain {spread(gains[t])})" for t in solved_cat) + f" | {v4} |")
    excluded = [t for t in (*CATEGORIZATION, KNOWLEDGE) if t not in solved]
    summ += ["", "Tasks the model cannot do (excluded): " + (", ".join(excluded) if excluded else "none") + ".",
             "CPU seconds per section: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + "."]
    out[summary_at:summary_at] = summ
    return "\n".join(out)


if __name__ == "__main__":
    main()
