"""Distributed output templates (Cheng & Zhang 2026) on SmolLM2-135M: multi-position interchange,
controls, necessity and probes, beside the paper's claims.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/real_cheng_zhang.py --seed 0 --seeds 1 2

Writes docs/results/real/cheng_zhang.md and docs/results/real/figures/cheng_zhang_*.png. The
toy-model counterpart is scripts/toy_interchange.py (docs/results/interchange.md).

Interchange (``methods.interchange``): the residual stream of task-A prompts at the input of block
l, averaged per position (matched by role and token offset, ``PositionSet.mask`` for words of
different token lengths) over the N source prompts, overwrites the same positions of N task-B
prompts (``core.pairs.paired_batches``: every target query is in A's domain with a different first
answer token). The prediction at the query is scored transfer (first token of A(query)), preserve
(of B(query)) or neither. Layers: every ``--stride``-th block input (0, 3, ..., 27 by default).
Position sets of the main pair: each of the first and last demo answer (first token), all answer
first tokens, all answer tokens, all demo input tokens, all separators, all demo tokens (inputs,
separators, answers and delimiters) and the query; the other pairs: the last demo answer and all
demo tokens. Controls (main pair, all demo tokens): a third task's prompts as the source,
norm-matched random vectors, source positions shuffled (a derangement). Necessity: first-token
accuracy of the main pair's target prompts with Gaussian noise as large as the activation added
at the query or at one demo answer. Probes: task identity (5 tasks) from the residual at the last
demo answer, the last demo separator and the query, every layer (5-fold CV grouped by prompt).
A pair carries claims only if the model solves both its tasks at 8 demos (first-token accuracy
>= 0.7 on the seed's N prompts).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_common import cell, parser, save_figures, setup, spread, table, write_page  # noqa: E402

from icl_circuits import build_prompts, icl_accuracy  # noqa: E402
from icl_circuits.core.metrics import Rate, wilson  # noqa: E402
from icl_circuits.core.pairs import paired_batches  # noqa: E402
from icl_circuits.methods.interchange import InterchangeResult, interchange  # noqa: E402
from icl_circuits.methods.necessity import necessity  # noqa: E402
from icl_circuits.methods.probing import probe_by_layer  # noqa: E402

NAME = "cheng_zhang"
DEMOS = 8
SOLVED = 0.7
#: (source task A, target task B); the first is the main pair (the issue's first probe, reversed roles).
PAIRS = [("uppercase", "first-letter"), ("present-past", "uppercase"), ("singular-plural", "capitalize")]
#: Pairs asked for whose domains may not overlap: tried, reported, skipped when they do not.
ASKED = [("present-past", "singular-plural")]
MAIN_SETS = ["answer_0", "answer_-1", "answers", "answer_tokens", "inputs", "separators", "demo_tokens", "query"]
OTHER_SETS = ["answer_-1", "demo_tokens"]
SET_LABELS = {"answer_0": "first demo answer (1 token)", "answer_-1": "last demo answer (1 token)",
              "answers": "all answer first tokens", "answer_tokens": "all answer tokens",
              "inputs": "demo inputs only", "separators": "separators (` ->`)",
              "demo_tokens": "all demo tokens", "query": "the query (final position)"}
THIRD = "singular-plural"
NECESSITY_SETS = ["query", "answer_0", "answer_-1"]
PROBE_TASKS = ["uppercase", "first-letter", "present-past", "singular-plural", "capitalize"]
PROBE_SETS = ["answer_-1", "separator_-1", "query"]
#: Cheng & Zhang: Llama-3.2-3B (28 layers), all demo tokens 96% [87, 99] at layer 8, N = 50.
PAPER_LAYER, PAPER_LAYERS = 8, 28


def cputime() -> float:
    return time.process_time()


def tcell(r: InterchangeResult, i: int, outcome: str = "transfer") -> str:
    from icl_circuits.methods.interchange import OUTCOMES

    j = OUTCOMES.index(outcome)
    return f"{float(r.rates[j, i]):.2f} [{float(r.low[j, i]):.2f}, {float(r.high[j, i]):.2f}]"


def summary(r: InterchangeResult, n_layers: int) -> dict[str, Any]:
    """Peak transfer (first layer of the maximum), its depth fraction, and the last layer whose
    transfer is >= 0.5 (None if none)."""
    t = r.rate("transfer").numpy()
    i = int(np.argmax(t))
    high = [l for l, v in zip(r.layers, t) if v >= 0.5]
    return {"peak": float(t[i]), "i": i, "layer": r.layers[i], "frac": r.layers[i] / n_layers,
            "last": high[-1] if high else None, "last_frac": high[-1] / n_layers if high else float("nan"),
            "max": float(t.max())}


def qualify(model: Any, n: int, seed: int) -> tuple[dict[str, Any], dict[str, Rate]]:
    """The probe batches (one per task, seed ``seed``) and each task's first-token accuracy on them."""
    batches = {t: build_prompts(model, t, n, DEMOS, seed=seed) for t in PROBE_TASKS}
    acc = {}
    for t, b in batches.items():
        a = icl_accuracy(model, b)
        acc[t] = wilson(int(round(a * len(b))), len(b))
    return batches, acc


def letter_tokens(tok: Any, st: dict[str, Any], seed: int) -> dict[tuple, Any]:
    """Per (pair, seed): [batch] True where the transfer token A(query) is a single letter (` R`).

    Such a token cannot tell "the source task" from "the target task's answer, capitalized"
    (uppercase -> first-letter: A(rich) = ` RICH` starts with ` R`, B(rich) = ` r`), so transfer on
    the other prompts (``strict``) is the clean measure for such pairs. Every run of one pair and
    seed has the same target prompts and transfer tokens."""
    import torch

    def mask(r: InterchangeResult) -> Any:
        words = [tok.decode([int(t)]).strip() if t >= 0 else "" for t in r.transfer_tokens]
        return torch.tensor([len(w) == 1 and w.isalpha() for w in words])

    out = {(k, seed): mask(next(iter(v.values()))) for k, v in st["runs"].items() if v}
    out.update({(st["pairs"][0], sd): mask(next(iter(v.values()))) for sd, v in st["per_seed"].items() if v})
    return out


def strict(r: InterchangeResult, letters: Any) -> tuple[list[Rate], int]:
    """Transfer per layer over the valid prompts whose transfer token is not a single letter."""
    keep = r.valid & ~letters
    n = int(keep.sum())
    hits = (r.predictions == r.transfer_tokens[None]) & keep[None]
    return [wilson(int(k), n) for k in hits.sum(-1).tolist()], n


def _col(r: Any, layer: int) -> int | None:
    return r.layers.index(layer) if layer in r.layers else None


def grid(results: dict[str, InterchangeResult], layers: list[int]) -> str:
    """Transfer / preserve per layer (the columns ``layers``; a run without that layer: blank)."""
    rows = []
    for s, r in results.items():
        cells = []
        for l in layers:
            i = _col(r, l)
            cells.append("" if i is None else f"{float(r.rate('transfer')[i]):.2f} / {float(r.rate('preserve')[i]):.2f}")
        rows.append([f"{SET_LABELS.get(s, s)} (`{s}`)"] + cells)
    return table(["position set"] + [f"L{l}" for l in layers], rows)


def compute(args: Any, state: Path) -> dict[str, Any]:
    """Every measurement of the page (the slow part), in order of priority, the state saved to
    ``state`` after each step (an interrupted run leaves a page-able state: ``--page-only``)."""
    import torch

    started = time.perf_counter()
    model = setup(args.threads)
    nl = model.cfg.n_layers
    layers, fine = list(range(0, nl, args.stride)), list(range(0, nl, args.fine_stride))
    n, seed = args.prompts, args.seed
    st: dict[str, Any] = {"n_layers": nl, "d_model": model.cfg.d_model, "layers": layers, "fine": fine, "runs": {},
                          "per_seed": {}, "controls": {}, "nec": {}, "probes": {}, "cpu": {}, "done": False}
    clock = {"t": cputime()}

    def save(section: str) -> None:
        now = cputime()
        st["cpu"][section] = st["cpu"].get(section, 0.0) + now - clock["t"]
        clock["t"] = now
        st["seconds"] = time.perf_counter() - started
        torch.save(st, state)

    def show(what: str, r: Any) -> None:
        v = r.rate("transfer") if isinstance(r, InterchangeResult) else getattr(r, "drop", getattr(r, "accuracy", None))
        print(f"[{(time.perf_counter() - started) / 60:.1f} min] {what}:", [round(float(x), 2) for x in v], flush=True)

    # 0. which tasks the model solves; probes on the same prompts
    batches, acc = qualify(model, n, seed)
    st["acc"], st["solved"] = acc, {k for k, v in acc.items() if v.value >= SOLVED}
    print("accuracy:", {k: str(v) for k, v in acc.items()}, flush=True)
    st["asked"] = []
    for a, b in ASKED:
        try:
            paired_batches(model, a, b, n, DEMOS, seed=seed)
            st["asked"].append((a, b, "pairs found"))
        except ValueError as err:
            st["asked"].append((a, b, str(err)))
    save("accuracy")
    for s in PROBE_SETS:
        st["probes"][s] = probe_by_layer(model, batches, s, list(range(nl + 1)), seed=seed, progress=False)
        show(f"probe {s}", st["probes"][s])
    save("probes")

    pairs = [(a, b) for a, b in PAIRS if a in st["solved"] and b in st["solved"]]
    if not pairs:
        raise SystemExit(f"no pair of {PAIRS} is solved: {acc}")
    st["pairs"] = pairs
    (a0, b0), runs = pairs[0], st["runs"]  # the main pair: the first solved one
    src, tgt = paired_batches(model, a0, b0, n, DEMOS, seed=seed)
    st["n_target"] = len(tgt)

    def ic(into: dict, name: str, key: Any, s: str, source: Any, target: Any, lays: list[int], section: str,
           **kw: Any) -> None:
        """One interchange, stored as ``into[name]`` and saved."""
        sd = kw.pop("seed", seed)
        into[name] = interchange(model, source, target, s, lays, seed=sd, progress=False, **kw)
        show(f"{key} {s} {kw.get('control', '')}", into[name])
        save(section)

    # 1. the headline sets on the main pair
    runs[a0, b0] = {}
    ic(runs[a0, b0], "demo_tokens", (a0, b0), "demo_tokens", src, tgt, fine, "interchange")
    for s in ("answer_-1", "answer_0"):
        ic(runs[a0, b0], s, (a0, b0), s, src, tgt, layers, "interchange")
    # 2. controls (all demo tokens)
    third = build_prompts(model, THIRD, n, DEMOS, seed=seed + 2)
    st["controls"]["interchange"] = runs[a0, b0]["demo_tokens"]
    ic(st["controls"], "third_task", "control", "demo_tokens", third, tgt, layers, "controls", source_task=a0)
    ic(st["controls"], "norm_matched_noise", "control", "demo_tokens", src, tgt, layers, "controls",
                                              control="norm_matched_noise")
    # 3. necessity: the query vs the last demo answer
    for s in ("query", "answer_-1"):
        st["nec"][s] = necessity(model, tgt, s, layers, how="noise", noise_scale=1.0, seed=seed, progress=False)
        show(f"necessity {s}", st["nec"][s])
        save("necessity")
    # 4. seeds
    st["per_seed"][seed] = {s: runs[a0, b0][s] for s in OTHER_SETS}
    for sd in args.seeds:
        s_src, s_tgt = paired_batches(model, a0, b0, n, DEMOS, seed=sd)
        st["per_seed"][sd] = {}
        for s in OTHER_SETS:
            ic(st["per_seed"][sd], s, ("seed", sd), s, s_src, s_tgt, fine if s == "demo_tokens" else layers, "seeds",
                                       seed=sd)
    # 5. the other pairs
    for a, b in pairs[1:]:
        p_src, p_tgt = paired_batches(model, a, b, n, DEMOS, seed=seed)
        runs[a, b] = {}
        for s in OTHER_SETS:
            ic(runs[a, b], s, (a, b), s, p_src, p_tgt, layers, "pairs")
    # 6. the other position sets of the main pair
    for s in MAIN_SETS:
        if s not in runs[a0, b0]:
            ic(runs[a0, b0], s, (a0, b0), s, src, tgt, layers, "position sets")
    # 7. the last control and the first demo answer's necessity
    ic(st["controls"], "shuffled_positions", "control", "demo_tokens", src, tgt, layers, "controls",
                                              control="shuffled_positions")
    st["nec"]["answer_0"] = necessity(model, tgt, "answer_0", layers, how="noise", noise_scale=1.0, seed=seed,
                                      progress=False)
    show("necessity answer_0", st["nec"]["answer_0"])
    st["done"] = True
    save("necessity")
    st["letters"] = letter_tokens(model.tokenizer, st, seed)
    return st


def compute_sets(args: Any, state: Path) -> None:
    """``--part sets``: steps 6-7 of ``compute`` alone (the other position sets of the main pair, the
    shuffled-positions control, the first demo answer's necessity), saved to ``state`` after each,
    on the same prompts (the same seed gives the same batches); ``--page-only`` merges them."""
    import torch

    started = time.perf_counter()
    model = setup(args.threads)
    layers, seed, n = list(range(0, model.cfg.n_layers, args.stride)), args.seed, args.prompts
    a0, b0 = PAIRS[0]
    src, tgt = paired_batches(model, a0, b0, n, DEMOS, seed=seed)
    out: dict[str, Any] = {"pair": (a0, b0), "runs": {}, "controls": {}, "nec": {}, "cpu": 0.0}
    t = cputime()
    for s in MAIN_SETS:
        if s in ("demo_tokens", "answer_-1", "answer_0"):
            continue
        out["runs"][s] = interchange(model, src, tgt, s, layers, seed=seed, progress=False)
        print(f"[{(time.perf_counter() - started) / 60:.1f} min] {s}:",
              [round(float(x), 2) for x in out["runs"][s].rate("transfer")], flush=True)
        out["cpu"] = cputime() - t
        torch.save(out, state)
    out["controls"]["shuffled_positions"] = interchange(model, src, tgt, "demo_tokens", layers,
                                                        control="shuffled_positions", seed=seed, progress=False)
    print("shuffled", [round(float(x), 2) for x in out["controls"]["shuffled_positions"].rate("transfer")], flush=True)
    out["cpu"] = cputime() - t
    torch.save(out, state)
    out["nec"]["answer_0"] = necessity(model, tgt, "answer_0", layers, how="noise", noise_scale=1.0, seed=seed,
                                       progress=False)
    out["cpu"] = cputime() - t
    out["done"] = True
    torch.save(out, state)


def compute_seeds(args: Any, state: Path, main_state: Path) -> None:
    """``--part seeds``: the per-seed runs of ``compute`` step 4 that ``main_state`` lacks (a run
    stopped early), saved to ``state`` after each; ``--page-only`` merges them."""
    import torch

    model = setup(args.threads)
    nl = model.cfg.n_layers
    layers, fine = list(range(0, nl, args.stride)), list(range(0, nl, args.fine_stride))
    have = torch.load(main_state, weights_only=False)["per_seed"] if main_state.exists() else {}
    out: dict[str, Any] = {"per_seed": {}, "cpu": 0.0}
    t = cputime()
    a0, b0 = PAIRS[0]
    for sd in args.seeds:
        todo = [s for s in OTHER_SETS if s not in have.get(sd, {})]
        if not todo:
            continue
        src, tgt = paired_batches(model, a0, b0, args.prompts, DEMOS, seed=sd)
        out["per_seed"][sd] = {}
        for s in todo:
            out["per_seed"][sd][s] = interchange(model, src, tgt, s, fine if s == "demo_tokens" else layers, seed=sd,
                                                 progress=False)
            print(f"seed {sd} {s}:", [round(float(x), 2) for x in out["per_seed"][sd][s].rate("transfer")], flush=True)
            out["cpu"] = cputime() - t
            torch.save(out, state)
    out["done"] = True
    torch.save(out, state)


def compute_pairs(args: Any, state: Path) -> None:
    """``--part pairs``: step 5 of ``compute`` alone (the last demo answer and all demo tokens on the
    other pairs), saved to ``state`` after each run; ``--page-only`` merges it."""
    import torch

    started = time.perf_counter()
    model = setup(args.threads)
    layers, seed, n = list(range(0, model.cfg.n_layers, args.stride)), args.seed, args.prompts
    out: dict[str, Any] = {"pairs": {}, "cpu": 0.0}
    t = cputime()
    for a, b in PAIRS[1:]:
        src, tgt = paired_batches(model, a, b, n, DEMOS, seed=seed)
        out["pairs"][a, b] = {}
        for s in OTHER_SETS:
            out["pairs"][a, b][s] = interchange(model, src, tgt, s, layers, seed=seed, progress=False)
            print(f"[{(time.perf_counter() - started) / 60:.1f} min] {a}->{b} {s}:",
                  [round(float(x), 2) for x in out["pairs"][a, b][s].rate("transfer")], flush=True)
            out["cpu"] = cputime() - t
            torch.save(out, state)
    out["done"] = True
    torch.save(out, state)


def merge(st: dict[str, Any], part: dict[str, Any], n_seeds: int) -> dict[str, Any]:
    """The state of ``compute`` with a ``compute_sets`` part added (what the first lacks)."""
    if "per_seed" in part:  # a compute_seeds part
        for sd, v in part["per_seed"].items():
            for k, r in v.items():
                st["per_seed"].setdefault(sd, {}).setdefault(k, r)
        st["cpu"]["seeds (fourth process)"] = part["cpu"]
        return st
    if "pairs" in part:  # a compute_pairs part
        for k, v in part["pairs"].items():
            if k in st.get("pairs", []) and len(v) >= len(st["runs"].get(k, {})):
                st["runs"][k] = v
        st["cpu"]["pairs (third process)"] = part["cpu"]
        return st
    key = tuple(part["pair"])
    if key not in st["runs"]:
        return st
    for s, r in part["runs"].items():
        st["runs"][key].setdefault(s, r)
    for c, r in part["controls"].items():
        st["controls"].setdefault(c, r)
    for s, r in part["nec"].items():
        st["nec"].setdefault(s, r)
    st["cpu"]["position sets (second process)"] = part["cpu"]
    if part.get("done") and len(st["per_seed"]) == n_seeds and len(st["runs"]) == len(st.get("pairs", [])):
        st["done"] = True  # everything compute does, in one of the two processes
    return st


def figures(args: Any, st: dict[str, Any]) -> dict[str, Any]:
    """The page's figures from whatever the state holds."""
    from icl_circuits.viz import interchange as viz

    runs, n, figs = st["runs"], args.prompts, {}
    if not runs:
        return figs
    (a0, b0), main = next(iter(runs.items()))
    order = [s for s in MAIN_SETS if s in main]
    figs[f"{NAME}_sets"] = viz.interchange(
        [main[s] for s in order], outcomes=["transfer"],
        title=f"Transfer per layer and position set: SmolLM2-135M, {a0} \u2192 {b0}, {DEMOS} demos "
              f"(n={main['demo_tokens'].n}, seed {args.seed})")
    figs[f"{NAME}_demo_tokens"] = viz.interchange(
        main["demo_tokens"], title=f"All demo tokens patched: transfer / preserve / neither, {a0} \u2192 {b0} "
                                   f"(n={main['demo_tokens'].n}, seed {args.seed})")
    if len(runs) > 1:
        figs[f"{NAME}_pairs"] = viz.interchange(
            [dataclasses.replace(r[s], position_set=f"{a} \u2192 {b}: {s}") for (a, b), r in runs.items()
             for s in OTHER_SETS if s in r],
            outcomes=["transfer"],
            title=f"Last demo answer vs all demo tokens, transfer per task pair (SmolLM2-135M, n={n} each, seed "
                  f"{args.seed})")
    if len(st["per_seed"]) > 1:
        figs[f"{NAME}_seeds"] = viz.interchange(
            [dataclasses.replace(r["demo_tokens"], position_set=f"demo_tokens, seed {sd}")
             for sd, r in st["per_seed"].items() if "demo_tokens" in r], outcomes=["transfer"],
            title=f"All demo tokens, {a0} \u2192 {b0}, transfer per seed (n={n} each)")
    if len(st["controls"]) > 1:
        figs[f"{NAME}_controls"] = viz.interchange(
            list(st["controls"].values()), outcomes=["transfer"],
            title=f"Controls, all demo tokens, {a0} \u2192 {b0} (transfer scored against {a0}; third task: {THIRD} "
                  f"prompts as the source; n={main['demo_tokens'].n}, seed {args.seed})")
    if st["nec"]:
        figs[f"{NAME}_necessity"] = viz.necessity(
            list(st["nec"].values()), title=f"Necessity: accuracy drop with noise as large as the activation, {b0} "
                                            f"prompts of the main pair (n={st['n_target']}, seed {args.seed})")
    if st["probes"]:
        figs[f"{NAME}_probes"] = viz.probe_vs_transfer(
            list(st["probes"].values()), [main[s] for s in ("answer_-1", "separators") if s in main],
            title=f"Task-identity probes ({len(PROBE_TASKS)} tasks, n={n} each) vs interchange transfer "
                  f"({a0} \u2192 {b0}) at the same positions, SmolLM2-135M")
    return figs


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--stride", type=int, default=6, help="layers of every run: every stride-th block input from 0")
    p.add_argument("--fine-stride", type=int, default=3,
                   help="layers of the all-demo-token runs of the main pair (every seed)")
    p.add_argument("--state", type=Path, default=None,
                   help="file of the measurements (default /tmp/cheng_zhang_seed<seed>_n<prompts>.pt)")
    p.add_argument("--part", choices=["all", "sets", "pairs", "seeds"], default="all",
                   help="sets: only the other position sets of the main pair, the shuffled control and the first "
                        "answer's necessity, into <state>.sets (a second process; --page-only merges it)")
    p.add_argument("--page-only", action="store_true",
                   help="rewrite the page and figures from --state without measuring again")
    args = p.parse_args(argv)
    import torch

    state = args.state or Path(f"/tmp/{NAME}_seed{args.seed}_n{args.prompts}_s{args.stride}_{args.fine_stride}.pt")
    if args.part == "sets":
        compute_sets(args, state.with_suffix(".sets"))
        return
    if args.part == "pairs":
        compute_pairs(args, state.with_suffix(".pairs"))
        return
    if args.part == "seeds":
        compute_seeds(args, state.with_suffix(".seeds"), state)
        return
    if args.page_only:
        st = torch.load(state, weights_only=False)
        for part in (".seeds", ".pairs", ".sets"):  # the sets part last: it decides "done"
            if state.with_suffix(part).exists():
                st = merge(st, torch.load(state.with_suffix(part), weights_only=False), 1 + len(args.seeds))
        from transformers import AutoTokenizer

        from icl_circuits.core.real_models import smollm2_checkpoint

        st["letters"] = letter_tokens(AutoTokenizer.from_pretrained(smollm2_checkpoint()), st, args.seed)
    else:
        st = compute(args, state)
    links = save_figures(figures(args, st), args.out)
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python scripts/real_cheng_zhang.py --seed {args.seed} --seeds "
               f"{' '.join(map(str, args.seeds))} --prompts {args.prompts} --stride {args.stride} --fine-stride {args.fine_stride}")
    body = page(args, st, links)
    path = write_page(args.out, f"{NAME}.md", body, command, time.perf_counter() - st["seconds"])
    print("wrote", path, f"(measurements {st['seconds'] / 60:.1f} min)")


def page(args: Any, st: dict[str, Any], links: dict[str, str]) -> str:
    nl, layers, fine, acc, solved = st["n_layers"], st["layers"], st["fine"], st["acc"], st["solved"]
    runs, per_seed, controls, nec, probes, cpu = (st[k] for k in ("runs", "per_seed", "controls", "nec", "probes", "cpu"))
    n = args.prompts
    (a0, b0), main = next(iter(runs.items()))
    paper_frac = PAPER_LAYER / PAPER_LAYERS
    link = lambda k: links.get(f"{NAME}_{k}", "")  # noqa: E731
    md = ["# Distributed templates (Cheng & Zhang 2026) on SmolLM2-135M", ""]
    if not st.get("done"):
        md += ["**Partial run**: the measurements stopped before the end (time); sections without data are "
               "marked so.", ""]
    md += ["Paper: *Single-Position Intervention Fails: Distributed Output Templates Drive ICL* (Cheng & Zhang "
           "2026), on Llama-3.2-3B (28 layers; issue #14 names Llama3-8B, METHODS.md and the 28 layers point to "
           "Llama-3.2-3B). Claims: patching one demo position transfers nothing at any layer; patching all demo "
           f"tokens transfers the source task, 96% [87, 99] at layer {PAPER_LAYER} of {PAPER_LAYERS} "
           f"(~{paper_frac:.0%} depth), N = 50; the query position is necessary and no single demo position is; "
           "probes decode the task at ~100% at single positions where patching does nothing.", "",
           f"Here: SmolLM2-135M ({nl} layers, d_model {st['d_model']}), template `{{x}} -> {{y}}`, {DEMOS} demos. "
           f"Interchange: N = {n} target prompts of task B per pair (`paired_batches`: the query is in A's domain "
           f"and A, B give different first tokens) and {n} source prompts of task A, whose residual stream is "
           "averaged per position and written over the same positions of every target prompt; transfer = the "
           "prediction is A(query)'s first token, preserve = B(query)'s, neither = anything else. Layer l = the "
           f"residual stream at the input of block l (layer 0 = the token embedding). Layers: every "
           f"{args.stride}th ({', '.join(map(str, layers))}), and every {args.fine_stride}rd "
           f"({', '.join(map(str, fine))}) for all demo tokens on the main pair (every seed), where the depth "
           f"is the claim. Seeds: {', '.join(map(str, per_seed))} (headline {args.seed}). Brackets: Wilson 95% "
           "intervals. Multi-token words: positions are matched by role and token offset and a target position "
           "is written only where source prompts have that token (`PositionSet.mask`), so all answer tokens and "
           "all demo tokens run on the real tokenizer.", ""]
    vtext, vrows = verdicts(args, st)
    md += ["## Summary", "", table(["claim", "paper", f"SmolLM2-135M (N = {n})", "verdict"], vrows), "",
           "## Which tasks the model solves (first-token accuracy, 8 demos)", "",
           table(["task", f"accuracy (N = {n}, seed {args.seed})", "carries claims"],
                 [[t, cell(r), "yes" if t in solved else "no: model cannot do the task"] for t, r in acc.items()]), ""]
    for a, b, why in st["asked"]:
        md += [f"The pair {a} \u2192 {b} (named in the issue) is **not testable here**: {why}. Regular verbs and "
               "countable nouns barely overlap in the task word lists.", ""]

    # --- interchange
    cols = sorted({l for r in main.values() for l in r.layers})
    ms = {s: summary(main[s], nl) for s in MAIN_SETS if s in main}
    key0 = ((a0, b0), args.seed)
    cm = {s: cs(st, key0, main[s]) for s in ms}
    md += ["## Interchange: which positions carry the task, at which layers", "",
           f"Main pair {a0} \u2192 {b0}. Cells: transfer / preserve (N = {main['demo_tokens'].n}; clean target run: "
           f"preserve {main['demo_tokens'].baseline['preserve']:.2f}, transfer "
           f"{main['demo_tokens'].baseline['transfer']:.2f}; blank: layer not run for that set).", "",
           grid({s: main[s] for s in ms}, cols), "", link("sets"), ""]
    letters = st.get("letters", {}).get(key0)
    if letters is not None and bool((letters & main["demo_tokens"].valid).any()):
        k = int((letters & main["demo_tokens"].valid).sum())
        n2 = next(iter(cm.values()))["n"]
        md += [f"**A confound of this pair.** On {k} of the {main['demo_tokens'].n} target prompts the first token "
               f"of {a0}(query) is a single capital letter (A(rich) = ` RICH` begins with ` R`; B(rich) = ` r`), so "
               f"a \"transfer\" there may be the {b0} answer capitalized. Transfer over the other {n2} prompts "
               "(the first token of A(query) is a longer piece of the word, e.g. ` BO`, ` WORK`), which the "
               "verdicts use for this pair:", "",
               table(["position set"] + [f"L{l}" for l in cols],
                     [[f"`{s}`"] + [f"{x['rates'][main[s].layers.index(l)].value:.2f}" if l in main[s].layers else ""
                                    for l in cols] for s, x in cm.items()]), ""]
    md += [table(["position set", "peak transfer [95% CI] (all prompts)", "at layer (depth)",
                  "layers with transfer >= 0.5", "peak transfer as the verdicts score it (n)"],
                 [[f"`{s}`", tcell(main[s], m["i"]), f"L{m['layer']} ({m['frac']:.2f})", _band_text(main[s], nl),
                   f"{cm[s]['cell']} at L{cm[s]['layer']} (n={cm[s]['n']})"] for s, m in ms.items()]), "",
           link("demo_tokens"), ""]
    missing = [s for s in MAIN_SETS if s not in main]
    if missing:
        md += [f"Not run (time): {', '.join(missing)}.", ""]
    if len(runs) > 1:
        rows = []
        for (a, b), r in runs.items():
            d = summary(r["demo_tokens"], nl) if "demo_tokens" in r else None
            rows.append([f"{a} \u2192 {b}", r[next(iter(r))].n,
                         f"{r[next(iter(r))].baseline['preserve']:.2f} / {r[next(iter(r))].baseline['transfer']:.2f}",
                         f"{tcell(r['demo_tokens'], d['i'])} at L{d['layer']} ({d['frac']:.2f})" if d else "not run",
                         _band_text(r["demo_tokens"], nl) if d else "",
                         _max_cell(r["answer_-1"])[1] + f" at L{_max_cell(r['answer_-1'])[2]}" if "answer_-1" in r else "not run"])
        md += ["All pairs:", "", table(["pair (A \u2192 B)", "N", "clean preserve / transfer",
                                        "all demo tokens: peak transfer at layer (depth)", "layers with transfer >= 0.5",
                                        "last demo answer alone: max transfer"], rows), "", link("pairs"), ""]
    if len(per_seed) > 1:
        sd = {k: cs(st, ((a0, b0), k), r["demo_tokens"]) for k, r in per_seed.items() if "demo_tokens" in r}
        sg = {k: cs(st, ((a0, b0), k), r["answer_-1"]) for k, r in per_seed.items() if "answer_-1" in r}
        md += [f"Across seeds (main pair, N = {n} each, new source and target prompts per seed; transfer as the "
               "verdicts score it, n = the prompts scored):", "",
               table(["seed", "all demo tokens: peak transfer [95% CI]", "(all prompts)", "peak layer",
                      "layers with transfer >= 0.5", "last demo answer: max transfer"],
                     [[k, f"{sd[k]['cell']} (n={sd[k]['n']})",
                       f"{float(per_seed[k]['demo_tokens'].rate('transfer').max()):.2f}", f"L{sd[k]['layer']}",
                       (f"L{sd[k]['on'][0]}-L{sd[k]['on'][-1]}" if sd[k]["on"] else "none"),
                       f"{sg[k]['cell']} at L{sg[k]['layer']}" if k in sg else "not run"] for k in sd]), "",
               f"- all demo tokens, peak transfer: {spread([v['peak'] for v in sd.values()])}",
               f"- its layer as a fraction of depth: {spread([v['frac'] for v in sd.values()])} "
               f"(paper: {PAPER_LAYER}/{PAPER_LAYERS} = {paper_frac:.2f})",
               f"- last layer with transfer >= 0.5, as a fraction of depth: "
               f"{spread([v['last_frac'] for v in sd.values()])}"]
        if sg:
            md += [f"- last demo answer alone, max transfer over layers: {spread([v['peak'] for v in sg.values()])}"]
        md += ["", link("seeds"), ""]

    # --- controls
    if len(controls) > 1:
        md += [f"## Controls (main pair, all demo tokens; transfer scored against {a0})", "",
               f"third_task: {THIRD} prompts (seed {args.seed + 2}) as the source; norm_matched_noise: each source "
               "vector replaced by a random direction of the same norm; shuffled_positions: the source columns "
               "written to a derangement of the target columns.", "",
               table(["run"] + [f"L{l}" for l in layers],
                     [[c] + [tcell(r, _col(r, l)) if _col(r, l) is not None else "" for l in layers]
                      for c, r in controls.items()]), "", link("controls"), ""]
    else:
        md += ["## Controls", "", "Not run (time).", ""]

    # --- necessity
    if nec:
        r0 = next(iter(nec.values()))
        md += ["## Necessity: the query vs single demo positions", "",
               f"First-token accuracy of the main pair's {b0} target prompts (clean {float(r0.baseline):.2f}, "
               f"N = {r0.per_prompt.shape[1]}) with h <- h + eps ||h|| / sqrt(d), eps ~ N(0, I) (noise as large as "
               "the activation), at the position set at the input of block l. Cells: accuracy drop [95% CI].", "",
               table(["position set"] + [f"L{l}" for l in layers],
                     [[f"`{s}`"] + [f"{float(r.drop[i]):.2f} [{float(r.baseline - r.high[i]):.2f}, "
                                    f"{float(r.baseline - r.low[i]):.2f}]" for i in range(len(r.layers))]
                      for s, r in nec.items()]), "", link("necessity"), ""]

    # --- probes
    if probes:
        p0 = next(iter(probes.values()))
        pl = p0.layers
        md += ["## Probes at positions where patching does nothing", "",
               f"Task identity of {len(PROBE_TASKS)} tasks ({', '.join(PROBE_TASKS)}; {n} prompts each, seed "
               f"{args.seed}) from the residual stream at one position, standardized logistic regression, 5-fold CV "
               f"grouped by prompt. Chance {p0.chance:.2f}. Cells: held-out accuracy / accuracy with labels shuffled "
               "across prompts. The last demo answer's *token* differs by task (` BOT` vs ` b`), so its probe is high "
               "already at layer 0; the last separator ` ->` and the query position hold the same token in every "
               "task, so what a probe reads there came from context.", "",
               table(["position"] + [f"L{l}" for l in pl[::3]],
                     [[f"`{s}`"] + [f"{float(p.accuracy[i]):.2f} / {float(p.control[i]):.2f}"
                                    for i in range(0, len(pl), 3)] for s, p in probes.items()]), "",
               link("probes"), ""]

    bands = "; ".join(f"{a}\u2192{b}: " + _band_text(r["demo_tokens"], nl) for (a, b), r in runs.items()
                      if "demo_tokens" in r)
    md += ["## Verdicts", "", vtext, "", "## Toy model vs SmolLM2", "", TOY_NOTE + " On SmolLM2 (30 layers) all demo "
           f"tokens transfer (>= 0.5, all prompts) at {bands}: the window where the demos alone carry the task is "
           "not a few early layers of a shallow model but a long stretch of depth, and it closes at a definite "
           "layer, after which the query position holds the task (patching the demos then changes nothing).", ""]
    if any("process" in k for k in cpu):
        md += ["To finish in time on a shared machine the measurements ran in several processes on the same prompts "
               "and seeds (`--part sets`: the other position sets of the main pair, the shuffled control and the first "
               "answer's necessity; `--part pairs`: the other pairs; `--part seeds`: a per-seed run the first process "
               "had not saved; `--page-only` merged them). Every run is seeded and deterministic, so the numbers are "
               "those of the single command above, which runs everything in one process.", ""]
    md += [
           "CPU time per section (s): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
           + f"; {sum(cpu.values()) / 60:.1f} min of CPU in all (the wall time below is that of the first process "
           "on a machine shared with other jobs, load ~10 on 2 cores).", ""]
    return "\n".join(md)


def _band_text(r: InterchangeResult, nl: int) -> str:
    on = [l for l, v in zip(r.layers, r.rate("transfer").tolist()) if v >= 0.5]
    return f"L{on[0]}-L{on[-1]} ({on[0] / nl:.2f}-{on[-1] / nl:.2f}; {len(on)} of {len(r.layers)} run)" if on else "none"


TOY_NOTE = ("On toy-icl (4 layers, docs/results/interchange.md) all demo tokens transfer at layers 0-2 "
            "(0.96-1.00) and nothing at layer 3, all answers transfer at layer 0 only, single answer positions "
            "transfer 0.00-0.12 (0.86 for the last answer at layer 0 of english-french -> english-german), "
            "the query is necessary only under mean ablation, and single-position probes read the task at "
            "~100%.")


def _max_cell(r: InterchangeResult, outcome: str = "transfer") -> tuple[float, str, int]:
    """The largest rate over layers, its Wilson cell and its layer."""
    i = int(np.argmax(r.rate(outcome).numpy()))
    return float(r.rate(outcome)[i]), tcell(r, i, outcome), r.layers[i]


def clean(st: dict[str, Any], key: tuple, r: InterchangeResult) -> tuple[list[Rate], int, bool]:
    """Transfer per layer as the verdicts score it: over prompts whose transfer token is not a single
    letter when the pair has such prompts (``strict``), else over every valid prompt. Returns the rates,
    their N and whether the strict subset was used."""
    letters = st.get("letters", {}).get(key)
    if letters is not None and bool((letters & r.valid).any()):
        rates, n = strict(r, letters)
        return rates, n, True
    return [wilson(int(k), r.n) for k in r.counts[0].tolist()], r.n, False


def csummary(rates: list[Rate], layers: list[int], nl: int) -> dict[str, Any]:
    """Peak (first layer of the maximum) and the band of layers with transfer >= 0.5 of a rate list."""
    v = [x.value for x in rates]
    i = int(np.argmax(v))
    on = [l for l, x in zip(layers, v) if x >= 0.5]
    return {"peak": v[i], "cell": cell(rates[i]), "layer": layers[i], "frac": layers[i] / nl, "on": on,
            "last_frac": on[-1] / nl if on else float("nan")}


def cs(st: dict[str, Any], key: tuple, r: InterchangeResult) -> dict[str, Any]:
    """``csummary`` of the ``clean`` transfer of one run, with its N and whether it is strict."""
    rates, n, used = clean(st, key, r)
    return {**csummary(rates, r.layers, st["n_layers"]), "n": n, "strict": used, "rates": rates}


def verdicts(args: Any, st: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """Plain verdicts from the measured numbers; the thresholds are stated in the text. Returns the
    Markdown and the summary rows (claim, paper, ours, verdict). Transfer is scored as ``clean``."""
    nl, runs, per_seed, controls, nec, probes = (st[k] for k in ("n_layers", "runs", "per_seed", "controls", "nec",
                                                                  "probes"))
    (a0, b0), main = next(iter(runs.items()))
    rows, md = [], []

    def pk(a: str, b: str) -> tuple:
        return ((a, b), args.seed)

    def c1() -> None:  # single positions
        singles = [(f"{a}\u2192{b} `{s}`", cs(st, pk(a, b), r[s])) for (a, b), r in runs.items()
                   for s in ("answer_0", "answer_-1") if s in r]
        seed_max = [cs(st, ((a0, b0), sd), r["answer_-1"])["peak"] for sd, r in per_seed.items() if "answer_-1" in r]
        worst = max(x["peak"] for _, x in singles)
        ours = "; ".join(f"{k}: max {x['cell']} at L{x['layer']} (n={x['n']})" for k, x in singles)
        v1 = ("reproduced" if worst <= 0.1 and max(seed_max, default=0.0) <= 0.1 else
              "partly" if worst < 0.5 else "not reproduced")
        md[len(md):] = [f"- **A single demo position transfers nothing: {v1}.** Largest transfer over layers ({ours}); "
                        f"last demo answer on the main pair over seeds: {spread(seed_max)}. (reproduced: <= 0.10 "
                        "everywhere; partly: some layer above 0.10 but below 0.50.)"]
        rows.append(["a single demo position transfers nothing at any layer", "0% (Llama-3.2-3B, N=50)",
                     f"max over layers: " + ", ".join(f"{k} {x['peak']:.2f}" for k, x in singles)
                     + f"; last answer on the main pair over seeds {spread(seed_max)}", v1])

    def c2() -> None:  # all demo tokens transfer
        peaks = {(a, b): cs(st, pk(a, b), r["demo_tokens"]) for (a, b), r in runs.items() if "demo_tokens" in r}
        sd = [cs(st, ((a0, b0), k), r["demo_tokens"]) for k, r in per_seed.items() if "demo_tokens" in r]
        v2 = ("reproduced" if all(p["peak"] >= 0.7 for p in peaks.values()) and all(x["peak"] >= 0.7 for x in sd) else
              "partly" if any(p["peak"] >= 0.5 for p in peaks.values()) else "not reproduced")
        md[len(md):] = [f"- **All demo tokens together transfer the source task: {v2}.** Peak transfer per pair: "
                        + "; ".join(f"{a}\u2192{b} {p['cell']} at L{p['layer']} (n={p['n']})" for (a, b), p in peaks.items())
                        + f". Main pair over seeds: {spread([x['peak'] for x in sd])}. Paper: 0.96 [0.87, 0.99]. "
                        "(reproduced: peak >= 0.7 on every pair and seed.)"]
        m = peaks[a0, b0]
        rows.append(["all demo tokens transfer the task", "96% [87, 99] at L8 (Llama-3.2-3B, N=50)",
                     f"{a0}\u2192{b0} {m['cell']} (n={m['n']}) at L{m['layer']}; seeds {spread([x['peak'] for x in sd])}; "
                     + ", ".join(f"{a}\u2192{b} {p['peak']:.2f}" for (a, b), p in peaks.items() if (a, b) != (a0, b0)), v2])

    def c3() -> None:  # where (depth)
        paper = PAPER_LAYER / PAPER_LAYERS
        bands = [(f"{a}\u2192{b}", cs(st, pk(a, b), r["demo_tokens"])["on"]) for (a, b), r in runs.items()
                 if "demo_tokens" in r]
        inside = all(on and on[0] / nl <= paper <= on[-1] / nl for _, on in bands)
        sd = [cs(st, ((a0, b0), k), r["demo_tokens"]) for k, r in per_seed.items() if "demo_tokens" in r]
        peak_fr = [x["frac"] for x in sd]
        near = all(abs(f - paper) <= 0.1 for f in peak_fr)
        v3 = "reproduced" if near and inside else "partly" if inside else "not reproduced"
        md[len(md):] = [f"- **The transfer peaks at ~30% depth: {v3}.** Peak layer / {nl} over seeds (main pair): "
                        f"{spread(peak_fr)} (paper {PAPER_LAYER}/{PAPER_LAYERS} = {paper:.2f}). Layers where all demo "
                        "tokens transfer >= 0.5: "
                        + "; ".join(f"{k}: " + (f"L{on[0]}-L{on[-1]} ({on[0] / nl:.2f}-{on[-1] / nl:.2f} of depth)" if on
                                                else "none") for k, on in bands)
                        + ". (reproduced: the peak within 0.10 of 0.29 on every seed and 0.29 inside every pair's "
                        "band; partly: only the latter. The transfer is a plateau here, so the argmax layer is loosely "
                        "defined: the band, and the layer where it stops, are the comparable numbers.)"]
        rows.append(["peak transfer at ~30% depth", f"L{PAPER_LAYER}/{PAPER_LAYERS} = {paper:.2f}",
                     f"peak at {spread(peak_fr)} of depth; transfer >= 0.5 ends at "
                     f"{spread([x['last_frac'] for x in sd])} of depth", v3])

    def c4() -> None:  # distributed over many positions (subsets of the main pair)
        subs = {s: cs(st, pk(a0, b0), main[s]) for s in MAIN_SETS if s in main}
        md[len(md):] = [f"- **Which position sets carry it ({a0}\u2192{b0}, max transfer over layers):** "
                        + "; ".join(f"`{s}` {x['cell']} at L{x['layer']}" for s, x in subs.items()) + "."]

    def c5() -> None:  # controls
        cm = {c: cs(st, pk(a0, b0), r) for c, r in controls.items()}
        nulls = [c for c in ("third_task", "norm_matched_noise") if c in cm]
        if not nulls:
            raise KeyError("controls")
        v5 = "reproduced" if all(cm[c]["peak"] <= 0.1 for c in nulls) else "not reproduced"
        md[len(md):] = [f"- **Controls transfer nothing (third task, norm-matched noise): {v5}.** Max transfer over "
                        "layers: " + "; ".join(f"{c} {x['cell']} at L{x['layer']}" for c, x in cm.items())
                        + ". Shuffled positions keep the demo tokens' values but write them to other positions of the "
                        "same set: its transfer says how much the *position* of each value matters. (reproduced: "
                        "<= 0.10.)"]
        rows.append(["controls (third task, norm-matched noise) transfer nothing", "no transfer",
                     ", ".join(f"{c} max {cm[c]['peak']:.2f}" for c in cm if c != "interchange"), v5])

    def c6() -> None:  # necessity
        qd = max(float(x) for x in nec["query"].drop)
        sd_ = {s: max(float(x) for x in nec[s].drop) for s in nec if s != "query"}
        v6 = ("reproduced" if qd >= 0.5 and all(v <= 0.1 for v in sd_.values()) else "partly" if qd >= 0.5
              else "not reproduced")
        md[len(md):] = [f"- **The query is necessary, no single demo position is: {v6}.** Largest accuracy drop over "
                        f"layers: query {qd:.2f}; " + "; ".join(f"`{s}` {v:.2f}" for s, v in sd_.items())
                        + " (noise as large as the activation; reproduced: query >= 0.5 and each single position "
                        "<= 0.10)."]
        rows.append(["the query is necessary, a single demo position is not", "qualitative (Llama-3.2-3B)",
                     f"max drop: query {qd:.2f}, " + ", ".join(f"{s} {v:.2f}" for s, v in sd_.items()), v6])

    def c7() -> None:  # probes where patching does nothing
        sep, ans = probes["separator_-1"], probes["answer_-1"]
        sep_best = float(sep.accuracy.max())
        sep_t = cs(st, pk(a0, b0), main["separators"])["peak"]
        ans_t = cs(st, pk(a0, b0), main["answer_-1"])["peak"]
        v7 = ("reproduced" if sep_best >= 0.9 and sep_t <= 0.1 and float(ans.accuracy.max()) >= 0.9 and ans_t <= 0.1
              else "partly" if sep_best >= 0.9 and min(sep_t, ans_t) <= 0.1 else "not reproduced")
        md[len(md):] = [f"- **Probes read the task where patching does nothing: {v7}.** Probe at the last separator: "
                        f"best {sep_best:.2f} (L{sep.best_layer}; layer 0: {float(sep.accuracy[0]):.2f}, the same token "
                        f"in every task); at the last demo answer: best {float(ans.accuracy.max()):.2f} (layer 0 "
                        f"{float(ans.accuracy[0]):.2f}: the answer token itself names the task). Patching all separators "
                        f"transfers at most {sep_t:.2f}, the last demo answer at most {ans_t:.2f} ({a0}\u2192{b0}). "
                        "(reproduced: probe >= 0.90 where patching <= 0.10.) Caveat: the tasks differ in their input "
                        "words too (verbs for present-past, nouns for singular-plural), so a probe can read the task "
                        "from the input word one layer after it is seen."]
        rows.append(["probes read the task (~100%) where patching does nothing", "~100% (Llama-3.2-3B)",
                     f"separator probe {sep_best:.2f} vs patching all separators {sep_t:.2f}; last-answer probe "
                     f"{float(ans.accuracy.max()):.2f} vs patching it {ans_t:.2f}", v7])

    for claim in (c1, c2, c3, c4, c5, c6, c7):
        try:
            claim()
        except (KeyError, ValueError, StopIteration) as err:  # a section not run (partial state)
            md.append(f"- {claim.__doc__ or claim.__name__}: not run yet ({err!r})")
    return "\n".join(md), rows


if __name__ == "__main__":
    main()
