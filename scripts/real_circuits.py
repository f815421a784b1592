"""Circuits of learned task vectors on SmolLM2-135M (Yang, Cho, Ding & Inoue 2025, arXiv 2509.24169,
"Task Vectors, Learned Not Extracted"): OV-circuit reconstruction, key heads, key vs random head
ablation, linear propagation (held-out R², polar decomposition), logit lens and task alignment.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/real_circuits.py --seed 0 --seeds 1 2

Writes docs/results/real/circuits.md and docs/results/real/figures/circuits_*.png. Toy counterparts:
scripts/toy_heads.py (docs/results/heads.md) and scripts/toy_ltv.py (docs/results/ltv.md).

Everything starts from a learned task vector (LTV, ``icl_circuits.methods.learned``): one vector
added at the input of block l at the final position of zero-shot prompts (``x ->``), trained with
the model frozen. It is trained independently at every ``--stride``-th layer on the headline seed;
the layer with the best held-out-query validation accuracy (earliest on ties; chosen before any
circuit number is seen) carries the headline numbers, which are repeated on ``--seeds`` (a new LTV
trained on new prompts, new evaluation prompts). The circuit analyses run at every layer whose LTV
has an effect to decompose (its accuracy's Wilson interval above the zero-shot one); a layer without
one is shown and labelled, never read.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_common import cell, parser, save_figures, setup, spread, table, write_page  # noqa: E402

from icl_circuits import build_prompts  # noqa: E402
from icl_circuits.core.metrics import Rate, correct, wilson  # noqa: E402
from icl_circuits.core.runner import final_logits  # noqa: E402
from icl_circuits.methods.key_heads import KeyHeadsResult, key_head_ablation, key_heads  # noqa: E402
from icl_circuits.methods.learned import train_per_layer, train_task_vector  # noqa: E402
from icl_circuits.methods.ov_circuits import ov_contributions, reconstruct  # noqa: E402
from icl_circuits.methods.propagation import fit_linear_propagation, propagation_by_layer  # noqa: E402

#: The page was computed with the propagation default before issue 24 (least squares once there are >= d fit
#: vectors); pinned here so that the page is what this script computes until the study issue re-runs it with
#: the cross-validated default (ridge="cv").
RIDGE = "auto"
from icl_circuits.methods.vectors import TaskVector, evaluate_vector  # noqa: E402
from icl_circuits.report.verdicts import CLAIMS  # noqa: E402

NAME = "circuits"
TASK = "present-past"  # ICL 0.91 at 8 demos (docs/models, REAL_MODEL_NOTES); zero-shot 0.00
DEMOS = 8
SOLVED = 0.7
#: LTV training (the paper: AdamW lr ~5e-3, weight decay 0.01, up to 10 epochs, early stopping). The residual
#: at the final position of SmolLM2 grows from ~3 (embedding) to ~150 (block 12) and ~800 (block 30), and Adam
#: moves each coordinate by ~lr per step, so lr 5e-3 leaves the vector far below the residual's scale (norm 2.4
#: after 24 steps at layer 9, accuracy 0.00): lr 0.5 (measured before the run; see the page).
N_TRAIN, N_VAL = 160, 32
LTV = dict(lr=0.5, epochs=4, batch_size=16, patience=3, weight_decay=0.01)
KS = (1, 2, 4, 8)
N_RANDOM = 20
N_KEY = 10  # top key heads whose layers are located
N_FIT, N_VECTORS = 4, 960  # propagation: fit prompts, random vectors (25% held out for R²; 720 fitted > d = 576)
R2_READABLE = 0.2
BOS = True  # --bos


# ----------------------------------------------------------------------------- helpers
def rate(ok: torch.Tensor) -> Rate:
    return wilson(int(ok.sum()), ok.numel())


def rate_of(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, n: int, i: int) -> Rate:
    v = float(values[i])
    return Rate(int(round(v * n)), n, v, float(low[i]), float(high[i]))


def accuracy(model: Any, batch: Any) -> Rate:
    return rate(correct(final_logits(model, batch), batch.answer_tokens).float())


def train_ltv(model: Any, layers: list[int], seed: int) -> TaskVector:
    """LTVs trained independently at each of ``layers`` on N_TRAIN + N_VAL zero-shot prompts (seed ``seed``;
    validation holds out whole queries)."""
    train = build_prompts(model, TASK, N_TRAIN + N_VAL, 0, seed=seed, variant="zero_shot", prepend_bos=BOS)
    with torch.enable_grad():
        if len(layers) == 1:
            return train_task_vector(model, train, layers[0], n_val=N_VAL, seed=seed, progress=False, **LTV)
        return train_per_layer(model, train, layers, n_val=N_VAL, seed=seed, progress=False, **LTV)


def val_best(tv: TaskVector) -> list[float]:
    return tv.meta["val_accuracy_best"] if "per_layer" in tv.meta else [tv.meta["val_accuracy_best"]]


def works(vec: Rate, zero: Rate) -> bool:
    """The vector has an effect to decompose: its Wilson interval lies above the zero-shot one."""
    return vec.low > zero.high


def circuit(model: Any, ev: Any, tv: TaskVector, layer: int, seed: int, mean_too: bool = False) -> dict[str, Any]:
    """OV decomposition, reconstruction, key heads and key vs random ablation at one injection layer."""
    ov = ov_contributions(model, ev, tv, layer)
    rec = reconstruct(model, ev, tv, layer, ov=ov)
    kh = key_heads(model, ev, tv, layer, ov=ov)
    out = {"ov": ov, "rec": rec, "kh": kh,
           "zero": key_head_ablation(model, ev, tv, layer, ks=KS, how="zero", ranking=kh, n_random=N_RANDOM,
                                     seed=seed, progress=False)}
    if mean_too:
        out["mean"] = key_head_ablation(model, ev, tv, layer, ks=KS, how="mean", ranking=kh, n_random=N_RANDOM,
                                        seed=seed, progress=False)
    return out


def recovered(rec: Any, prefix: str) -> float:
    return next(r for c, r in zip(rec.conditions, rec.recovered) if c.startswith(prefix))


def rec_rate(rec: Any, prefix: str) -> Rate:
    i = next(i for i, c in enumerate(rec.conditions) if c.startswith(prefix))
    return rate(rec.per_prompt[i])


def key_layer_bands(kh: KeyHeadsResult, n_layers: int, n_heads: int, top: int = N_KEY) -> dict[str, float]:
    """Share of the top key heads (and of all candidate heads: chance) in the 3 blocks from the injection
    layer on ("just after") and in the last 3 blocks ("final"); a head in both counts once, as "just after"."""
    inj = kh.injection_layer
    def band(l: int) -> str:
        return "after" if l < inj + 3 else "final" if l >= n_layers - 3 else "middle"
    heads = [tuple(p) for p in kh.ranking[:top]]
    pool = [(l, h) for l in range(inj, n_layers) for h in range(n_heads)]
    out = {}
    for b in ("after", "final", "middle"):
        out[b] = sum(band(l) == b for l, _ in heads) / len(heads)
        out[f"{b}_chance"] = sum(band(l) == b for l, _ in pool) / len(pool)
    out["offsets"] = [l - inj for l, _ in heads]
    return out


def fmt_heads(hs: Any, k: int) -> str:
    return ", ".join(f"L{l}H{h}" for l, h in hs[:k])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--stride", type=int, default=6, help="LTV layers: every stride-th block input from 0")
    p.add_argument("--epochs", type=int, default=LTV["epochs"], help="LTV epochs (at most; early stopping)")
    p.add_argument("--train-prompts", type=int, default=N_TRAIN, help="LTV training prompts (plus validation)")
    p.add_argument("--draws", type=int, default=N_RANDOM, help="random head sets per k")
    p.add_argument("--bos", type=int, default=1, choices=(0, 1),
                   help="1: prompts start with <|endoftext|> (SmolLM2's document separator), 0: they do not")
    p.add_argument("--save-vector", type=Path, default=None,
                   help="also write the headline LTV (seed --seed) here (Result.save stem; the tests read it)")
    p.add_argument("--state", type=Path, default=Path("/tmp/real_circuits_state.pt"),
                   help="where the measured results are kept (the page can be rewritten from them)")
    p.add_argument("--from-state", type=Path, default=None,
                   help="write the page from a saved state instead of measuring (same arguments as that run)")
    p.add_argument("--vectors", type=int, default=N_VECTORS, help="random vectors of the propagation fit")
    args = p.parse_args(argv)
    LTV["epochs"] = args.epochs
    globals().update(N_TRAIN=args.train_prompts, N_RANDOM=args.draws, N_VECTORS=args.vectors, BOS=bool(args.bos))
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.from_state is None:
        model = setup(args.threads)
        L, H = model.cfg.n_layers, model.cfg.n_heads
        n = args.prompts
        layers = list(range(0, L, args.stride))
        seeds = [args.seed, *args.seeds]

        # -- the task: can the model do it? ------------------------------------------------------------
        ev = {s: build_prompts(model, TASK, n, 0, seed=1000 + s, variant="zero_shot", prepend_bos=BOS) for s in seeds}
        icl = {s: build_prompts(model, TASK, n, DEMOS, seed=1000 + s, prepend_bos=BOS) for s in seeds}
        acc_icl = {s: accuracy(model, icl[s]) for s in seeds}
        acc_zero = {s: accuracy(model, ev[s]) for s in seeds}
        solved = acc_icl[args.seed].value >= SOLVED
        log(f"ICL {acc_icl[args.seed]}, zero-shot {acc_zero[args.seed]}")

        # -- LTVs per layer (headline seed) --------------------------------------------------------------
        tv = train_ltv(model, layers, args.seed)
        sweep = evaluate_vector(model, tv, ev[args.seed])
        ltv_rates = [rate(sweep.per_prompt[i]) for i in range(len(layers))]
        vals = val_best(tv)
        head = layers[int(np.argmax(vals))]
        working = [l for l, r in zip(layers, ltv_rates) if works(r, acc_zero[args.seed])]
        log(f"LTV per layer {[round(r.value, 2) for r in ltv_rates]}, val {vals}; headline layer {head}; working {working}")
        if args.save_vector is not None:
            hi = layers.index(head)
            dataclasses.replace(tv, vectors=tv.vectors[hi: hi + 1].clone(), layers=[head],
                                meta={**tv.meta["per_layer"][str(head)], "bos": BOS, "eval_accuracy": ltv_rates[hi].value,
                                      "script": "scripts/real_circuits.py"}).save(args.save_vector)

        # -- circuits at every working layer (headline seed) ---------------------------------------------
        circ = {}
        for l in working:
            circ[l] = circuit(model, ev[args.seed], tv, l, args.seed, mean_too=l == head)
            log(f"circuits at layer {l}")
        # identity checks need no working vector: every LTV layer
        ident = {l: (circ[l]["ov"] if l in circ else ov_contributions(model, ev[args.seed], tv, l)) for l in layers}

        # -- propagation, logit lens, task alignment (headline seed) --------------------------------------
        fit = build_prompts(model, TASK, N_FIT, 0, seed=2000 + args.seed, variant="zero_shot", prepend_bos=BOS)
        prop = propagation_by_layer(model, fit, ev[args.seed], tv, n_vectors=N_VECTORS, seed=args.seed, progress=False,
                                    ridge=RIDGE)
        log("propagation")

        # -- headline numbers on the other seeds ------------------------------------------------------------
        hl: dict[str, list[float]] = {k: [] for k in ("ltv", "ov_rec", "final_rec", "top_drop", "rand_drop", "r2")}
        kmax = max(KS)

        def add_headline(acc: float, c: dict[str, Any] | None, r2: float) -> None:
            hl["ltv"].append(acc)
            hl["r2"].append(r2)
            if c is not None:
                hl["ov_rec"].append(recovered(c["rec"], "theta + heads (OV)"))
                hl["final_rec"].append(recovered(c["rec"], "theta at final"))
                hl["top_drop"].append(float(c["zero"].top_drop[-1]))
                hl["rand_drop"].append(float(c["zero"].random_drop[-1].mean()))

        hi = layers.index(head)
        add_headline(ltv_rates[hi].value, circ.get(head), float(prop.r2[hi]))
        seed_rows = []
        for s in args.seeds:
            tv_s = train_ltv(model, [head], s)
            acc_s = rate(evaluate_vector(model, tv_s, ev[s]).per_prompt[0])
            c_s = circuit(model, ev[s], tv_s, head, s) if works(acc_s, acc_zero[s]) else None
            fit_s = build_prompts(model, TASK, N_FIT, 0, seed=2000 + s, variant="zero_shot", prepend_bos=BOS)
            r2_s = fit_linear_propagation(model, fit_s, head, n_vectors=N_VECTORS, vectors=tv_s.at(head)[None], seed=s,
                                          ridge=RIDGE).r2
            add_headline(acc_s.value, c_s, r2_s)
            seed_rows.append((s, acc_icl[s], acc_zero[s], acc_s, val_best(tv_s)[0], c_s))
            log(f"seed {s}: LTV {acc_s}")

        state = {"acc_icl": acc_icl, "acc_zero": acc_zero, "solved": solved, "tv": tv, "sweep": sweep, "ltv_rates": ltv_rates, "vals": vals, "head": head, "working": working, "circ": circ, "ident": ident, "prop": prop, "hl": hl, "seed_rows": seed_rows, "layers": layers, "seeds": seeds, "n": n, "L": L, "H": H, "kmax": kmax, "elapsed": time.perf_counter() - started}
        torch.save(state, args.state)
        log(f"state saved to {args.state}")
    else:
        state = torch.load(args.from_state, weights_only=False)
        started -= state["elapsed"]
        (acc_icl, acc_zero, solved, tv, sweep, ltv_rates, vals, head, working, circ, ident, prop, hl, seed_rows, layers, seeds, n, L, H, kmax) = (state[k] for k in ("acc_icl", "acc_zero", "solved", "tv", "sweep", "ltv_rates", "vals", "head", "working", "circ", "ident", "prop", "hl", "seed_rows", "layers", "seeds", "n", "L", "H", "kmax"))

    # -- figures ------------------------------------------------------------------------------------------
    from icl_circuits.viz import _style
    from icl_circuits.viz import key_heads as vkh
    from icl_circuits.viz import logit_lens as vll
    from icl_circuits.viz import ov_circuits as vov
    from icl_circuits.viz import propagation as vprop

    figs: dict[str, Any] = {}
    f = vprop.layer_curves([sweep], f"LTV accuracy by injection layer, zero-shot {TASK}, SmolLM2-135M (N={n}, "
                                    f"seed {args.seed})")
    _style.reference_lines(f, [(f"ICL ({DEMOS} demos)", acc_icl[args.seed].value)])  # the sweep draws zero-shot
    figs[f"{NAME}_ltv_layers"] = f
    if head in circ:
        c = circ[head]
        figs[f"{NAME}_ov_heads"] = vov.ov_heads(c["ov"])
        figs[f"{NAME}_reconstruction"] = vov.reconstruction(c["rec"])
        figs[f"{NAME}_key_heads"] = vkh.key_heads(c["kh"])
        figs[f"{NAME}_key_vs_random_zero"] = vkh.key_vs_random(c["zero"])
        figs[f"{NAME}_key_vs_random_mean"] = vkh.key_vs_random(c["mean"])
    if circ:
        figs[f"{NAME}_key_layers"] = vkh.key_head_layers([circ[l]["kh"] for l in working], top=N_KEY)
    figs[f"{NAME}_propagation"] = vprop.propagation_summary(prop)
    figs[f"{NAME}_logit_lens"] = vll.logit_lens(prop)
    links = save_figures(figs, args.out, height=560)

    # -- the page -------------------------------------------------------------------------------------------
    s0 = args.seed
    cmd = (f"OMP_NUM_THREADS=1 .venv/bin/python scripts/real_circuits.py --seed {s0} --seeds "
           f"{' '.join(map(str, args.seeds))} --prompts {n} --stride {args.stride}"
           + "".join(f" --{k.replace('_', '-')} {v}" for k, v, d in (
               ("epochs", args.epochs, 4), ("train_prompts", args.train_prompts, 160), ("bos", args.bos, 1), ("draws", args.draws, 20),
               ("vectors", args.vectors, 960)) if v != d))
    out = [f"# Circuits of learned task vectors on SmolLM2-135M (Yang et al. 2025, arXiv 2509.24169)", "",
           f"Task **{TASK}**, template `{{x}} -> {{y}}`, "
           + ("every prompt starting with `<|endoftext|>` (SmolLM2's pretraining document separator; without it the "
              "first word of a 2-token zero-shot prompt is the first token and the attention sink), " if BOS else
              "no start token, ")
           + "first answer token, full-vocabulary argmax. Evaluation: "
           f"N = {n} zero-shot prompts (seed {1000 + s0}); ICL reference: the same queries with {DEMOS} demos. "
           f"LTV: one vector added at the input of block l, final position, trained with the model frozen on "
           f"{N_TRAIN} + {N_VAL} zero-shot prompts (seed {s0}; the {N_VAL} validation prompts hold out whole "
           f"queries), AdamW lr {LTV['lr']}, weight decay {LTV['weight_decay']}, batch {LTV['batch_size']}, up to "
           f"{LTV['epochs']} epochs, early stopping on validation loss (patience {LTV['patience']}); layers "
           f"{layers} (every {args.stride}th block input). Evaluation queries may also occur in training prompts "
           "(a vector of 576 numbers shared by all prompts; the held-out-query validation accuracy is shown "
           "beside it). Intervals: Wilson 95%. Toy counterparts: [heads](../heads.md), [ltv](../ltv.md).", ""]

    # task
    out += ["## Does the model do the task?", "",
            table(["seed", f"ICL ({DEMOS} demos)", "zero-shot"],
                  [[s, cell(acc_icl[s]), cell(acc_zero[s])] for s in seeds]), "",
            (f"ICL {acc_icl[s0].value:.2f} >= {SOLVED}: the task carries claims." if solved else
             f"**Model cannot do the task** (ICL {acc_icl[s0].value:.2f} < {SOLVED}): no claim below is read."), ""]

    # LTVs
    out += ["## The learned task vectors", "",
            "Without a vector that moves the output, nothing below has an effect to decompose; this section is the "
            "precondition of every circuit claim.", "",
            table(["layer", "LTV accuracy (N=%d)" % n, "val. accuracy (held-out queries)", "best epoch", "‖θ‖",
                   "effect to decompose"],
                  [[l, cell(r), f"{v:.2f}", tv.meta["per_layer"][str(l)]["best_epoch"],
                    f"{tv.meta['per_layer'][str(l)]['norm'][0]:.0f}", "yes" if l in working else "**no**"]
                   for l, r, v in zip(layers, ltv_rates, vals)]), "",
            f"Headline layer (best validation accuracy): **{head}** ({head / L:.0%} of depth). "
            f"Zero-shot {cell(acc_zero[s0])}, ICL {cell(acc_icl[s0])}. Across seeds the LTV at layer {head} reaches "
            f"{spread(hl['ltv'])}.", "", links[f"{NAME}_ltv_layers"], ""]
    if seed_rows:
        out += [table(["seed", "ICL", "zero-shot", f"LTV at layer {head}", "val. accuracy"],
                      [[s, cell(a), cell(z), cell(v), f"{vb:.2f}"] for s, a, z, v, vb, _ in seed_rows]), ""]

    # OV reconstruction
    out += ["## Claim 1: the heads' OV circuits carry the vector (OV reconstruction)", "",
            f"Paper ({CLAIMS['ov'].source}): {CLAIMS['ov'].paper}", "",
            "Method: the change of the final residual at the final position, caused by θ at block l, splits exactly "
            "into θ itself (direct path), each later head's change and each MLP's change (identity error below). "
            "A head's OV contribution keeps only θ's ride through its value/output matrices: "
            "A'[q, q] (LN1(h + θ) - LN1(h)) W_V W_O. Reconstruction adds θ + the heads' OV (or exact) contributions "
            "directly to the clean final residual; recovered = (acc - zero-shot) / (acc with θ at l - zero-shot). "
            "Control: θ alone added at the final residual.", "",
            table(["layer", "identity error (max)", "‖Δh_L‖ (mean)", "OV vs exact rel. error (mean over layers)"],
                  [[l, f"{ident[l].identity_error():.1e}", f"{float(ident[l].total.norm(dim=-1).mean()):.1f}",
                    f"{float(ident[l].ov_relative_error().mean()):.2f}"] for l in layers]), ""]
    if circ:
        rows = []
        for l in working:
            rec = circ[l]["rec"]
            rows.append([l, cell(rec_rate(rec, "theta at layer")), cell(rec_rate(rec, "theta + heads (OV)")),
                         f"{recovered(rec, 'theta + heads (OV)'):.2f}", cell(rec_rate(rec, "theta + heads (exact)")),
                         f"{recovered(rec, 'theta + heads (exact)'):.2f}", cell(rec_rate(rec, "theta at final")),
                         f"{recovered(rec, 'theta at final'):.2f}",
                         cell(rec_rate(rec, "theta + heads + MLPs"))])
        out += [table(["layer", "θ at l", "θ + heads OV at final", "recovered", "θ + heads exact", "recovered",
                       "θ alone at final", "recovered", "θ + heads + MLPs exact"], rows), ""]
        if head in circ:
            out += [f"Headline (layer {head}): OV recovered {spread(hl['ov_rec'])}; θ alone at final recovered "
                    f"{spread(hl['final_rec'])}.", "", links[f"{NAME}_reconstruction"], "", links[f"{NAME}_ov_heads"], ""]
    out += [verdict_ov(circ, working, hl), ""]

    # key heads
    out += ["## Claim 2: key heads sit just after the injection layer and in the final layers", "",
            f"Paper ({CLAIMS['heads'].source}): {CLAIMS['heads'].paper}", "",
            f"Heads of blocks >= l ranked by the mean DLA (gold minus mean logit direction) of their OV contribution. "
            f"Bands: 'after' = blocks l..l+2, 'final' = blocks {L - 3}..{L - 1}; chance = the share of all candidate "
            f"heads in the band.", ""]
    bands = {}
    if circ:
        rows = []
        for l in working:
            b = key_layer_bands(circ[l]["kh"], L, H)
            bands[l] = b
            rows.append([l, fmt_heads(circ[l]["kh"].ranking, 5),
                         f"{b['after']:.1f} ({b['after_chance']:.2f}; p {band_p(b['after'], b['after_chance']):.2f})",
                         f"{b['final']:.1f} ({b['final_chance']:.2f}; p {band_p(b['final'], b['final_chance']):.2f})", f"{b['middle']:.1f} ({b['middle_chance']:.2f})",
                         " ".join(f"+{o}" for o in b["offsets"])])
        out += [table(["layer", "top-5 key heads", f"top-{N_KEY} in 'after' (chance; p)", "in 'final' (chance; p)",
                       "in between (chance)", f"layer offsets of the top {N_KEY}"], rows), "",
                links[f"{NAME}_key_layers"], ""]
        if head in circ:
            out += [links[f"{NAME}_key_heads"], ""]
    out += [verdict_bands(bands), ""]

    # ablation
    out += ["## Claim 3: ablating the key heads hurts more than ablating random heads", "",
            f"Paper: {CLAIMS['heads'].paper}", "",
            f"With θ injected, the top-k key heads or k random heads of blocks >= l ({N_RANDOM} draws) are ablated at "
            "every position (zero: z = 0; mean: z = its mean over the same prompts with θ). Drop = accuracy with θ "
            "minus accuracy with θ and the heads ablated.", ""]
    if circ:
        rows = [[l, how, k, fmt_heads(ab.top_heads, k), f"{float(top):.2f}",
                 f"{float(rd.mean()):.2f} ± {float(rd.std(unbiased=True)):.2f}", f"{float(rd.max()):.2f}",
                 f"{float((rd >= top).float().mean()):.2f}"]
                for l, how, ab, k, top, rd in ablation_cells(circ, working)]
        out += [table(["layer", "ablation", "k", "top-k heads", "drop (key)", "drop (random, mean ± sd)",
                       "random max", "share of draws >= key"], rows), ""]
        if head in circ:
            out += [f"Headline (layer {head}, zero ablation, k = {kmax}): key {spread(hl['top_drop'])}, random mean "
                    f"{spread(hl['rand_drop'])}.", "", links[f"{NAME}_key_vs_random_zero"], "",
                    links[f"{NAME}_key_vs_random_mean"], ""]
    out += [verdict_ablation(circ, working, head, kmax, hl), ""]

    # propagation
    out += ["## Claim 4: linear propagation, rotation vs scaling", "",
            f"Paper ({CLAIMS['propagation'].source}): {CLAIMS['propagation'].paper}", "",
            f"W fitted by least squares from {N_VECTORS} random vectors of the LTV's norm (plus the LTV) added at block l "
            f"to their effect on the final residual, over {N_FIT} zero-shot prompts (seed {2000 + s0}); 25% of the random "
            f"vectors held out for R² (over vector x prompt pairs). Fits with held-out R² < {R2_READABLE} are "
            "**degenerate**: their polar decomposition is not shown as a reading. tr(U)/d and cos(θ, Wθ): 1 = no "
            "rotation; gain = ‖Wθ‖/‖θ‖; alignment: share of the vector in the span of the candidate tokens' "
            f"unembeddings (random vector ~{prop.alignment_chance:.2f}); lens: logit-lens accuracy over the "
            f"{prop.n_candidates} candidate tokens at layer l, clean / with θ; acc Wθ: accuracy with Wθ added at the "
            "final residual.", ""]
    rows = []
    for i, l in enumerate(prop.layers):
        ok = float(prop.r2[i]) >= R2_READABLE
        pol = (lambda v: f"{v:.2f}") if ok else (lambda v: "–")
        rows.append([l, f"{float(prop.r2[i]):.2f}" + ("" if ok else " (degenerate)"), pol(float(prop.rotation_cos[i])),
                     pol(float(prop.cos_theta_wtheta[i])), pol(float(prop.gain[i])), pol(float(prop.stretch_cv[i])),
                     f"{float(prop.alignment_theta[i]):.2f}", f"{float(prop.alignment_wtheta[i]):.2f}",
                     f"{float(prop.lens_clean[i]):.2f}", f"{float(prop.lens_injected[i]):.2f}",
                     f"{float(prop.acc_injected[i]):.2f}", f"{float(prop.acc_reconstructed[i]):.2f}"])
    out += [table(["layer", "R² (held-out)", "tr(U)/d", "cos(θ,Wθ)", "gain", "P spread", "align θ", "align Wθ",
                   "lens clean", "lens θ", "acc θ", "acc Wθ"], rows), "",
            f"Held-out R² at the headline layer {head} across seeds: {spread(hl['r2'])}.", "",
            links[f"{NAME}_propagation"], "", links[f"{NAME}_logit_lens"], "", verdict_prop(prop, working), ""]

    out += ["## Toy model vs SmolLM2", "", *toy_vs_real(hl, prop, verdict_ablation(circ, working, head, kmax, hl)), ""]
    out += ["## Summary", "", table(["claim", "paper (model)", "ours on SmolLM2-135M", "verdict"], summary_rows(
        hl, circ, working, head, bands, prop, kmax)), ""]
    text = "\n".join(out)
    path = write_page(args.out, f"{NAME}.md", text, cmd, started)
    log(f"wrote {path}")


# ----------------------------------------------------------------------------- verdicts
NO_LTV = ("**not testable here**: no LTV moves the output above zero-shot accuracy, so there is no effect to "
          "decompose (the LTV table above is the evidence)")


def verdict_ov(circ: dict, working: list[int], hl: dict) -> str:
    """Reproduced: the heads' OV contributions (plus θ) recover >= half of the LTV's effect at the final
    residual on every seed, and more than θ alone does; partly: >= half, but θ alone recovers as much."""
    if not circ or not hl["ov_rec"]:
        return "Verdict: " + NO_LTV + "."
    ov, fin = np.array(hl["ov_rec"]), np.array(hl["final_rec"])
    if (ov >= 0.5).all() and (ov > fin + 0.1).all():
        v = "**reproduced**: the heads' OV contributions recover most of the effect, beyond θ alone"
    elif (ov >= 0.5).all():
        v = ("**partly**: θ + the heads' OV contributions recover most of the effect, but θ added alone at the "
             "final residual recovers about as much, so the heads' OV circuits are not what carries it")
    else:
        v = ("**not reproduced**: θ + the heads' OV contributions recover less than half of the LTV's effect; the "
             "rest travels through the exact (non-OV: attention-pattern and MLP) changes")
    return (f"Verdict: {v} (headline layer, {len(ov)} seeds: OV recovered {spread(ov)}, θ alone {spread(fin)}).")


def band_p(share: float, chance: float, top: int = N_KEY) -> float:
    """One-sided binomial tail: P(at least share * top of `top` heads in a band holding `chance` of the heads)."""
    from scipy.stats import binom

    return float(binom.sf(round(share * top) - 1, top, chance))


def verdict_bands(bands: dict) -> str:
    """Reproduced: at most injection layers, both the 'after' and the 'final' band hold more of the top key heads
    than chance would put there (one-sided binomial p < 0.05, `top` heads drawn at the band's share of all heads);
    partly: one of the two bands; otherwise not reproduced (an excess within chance is not read as clustering)."""
    if not bands:
        return "Verdict: " + NO_LTV + "."
    after = sum(band_p(b["after"], b["after_chance"]) < 0.05 for b in bands.values())
    final = sum(band_p(b["final"], b["final_chance"]) < 0.05 for b in bands.values())
    m = len(bands)
    if after > m / 2 and final > m / 2:
        v = "**reproduced**"
    elif after > m / 2 or final > m / 2:
        v = "**partly**"
    else:
        v = "**not reproduced**"
    return (f"Verdict: {v}: the blocks just after the injection hold more top-{N_KEY} key heads than chance "
            f"(binomial p < 0.05) at {after} of {m} injection layers, the final blocks at {final} of {m} (one seed; "
            "p per layer in the table).")


def ablation_cells(circ: dict, working: list[int]):
    """Every (layer, ablation, k) cell of the key-vs-random ablation: (layer, "zero"/"mean", result, k,
    the key heads' drop, the random draws' drops)."""
    for l in working:
        for how in ("zero", "mean"):
            if how in circ[l]:
                ab = circ[l][how]
                for i, k in enumerate(ab.ks):
                    yield l, how, ab, k, ab.top_drop[i], ab.random_drop[i]


def verdict_ablation(circ: dict, working: list[int], head: int, kmax: int, hl: dict | None = None) -> str:
    """Over every (layer, ablation, k) cell: does ablating the top-k key heads drop accuracy by more than the
    random heads' mean + 2 sd? Reproduced: in most cells; partly: in at least a quarter of the headline layer's
    cells; otherwise not reproduced."""
    if head not in circ:
        return "Verdict: " + NO_LTV + "."
    cells, beyond, head_cells, head_beyond = 0, 0, 0, 0
    where = []
    for l, how, _, k, top, rd in ablation_cells(circ, working):
        hit = float(top) > float(rd.mean() + 2 * rd.std(unbiased=True))
        cells, beyond = cells + 1, beyond + hit
        if l == head:
            head_cells, head_beyond = head_cells + 1, head_beyond + hit
        if hit:
            where.append(f"L{l} {how} k={k}: {float(top):.2f} vs {float(rd.mean()):.2f} ± "
                         f"{float(rd.std(unbiased=True)):.2f}")
    if beyond > cells / 2:
        v = "**reproduced**"
    elif head_beyond >= head_cells / 4:
        v = "**partly**"
    else:
        v = "**not reproduced**"
    seeds = (f"; at layer {head}, k = {kmax}, zero ablation, over seeds: key {spread(hl['top_drop'])} vs random mean "
             f"{spread(hl['rand_drop'])}" if hl and hl["top_drop"] else "")
    return (f"Verdict: {v}: the key heads' drop exceeds the random mean + 2 sd in {beyond} of {cells} cells "
            f"(layer x ablation x k; {head_beyond} of {head_cells} at the headline layer {head})"
            + (": " + "; ".join(where) if where else "") + seeds
            + ". Elsewhere ablating the key heads costs no more accuracy than ablating random heads.")


def verdict_prop(prop: Any, working: list[int]) -> str:
    """Reproduced: among layers with a readable fit (held-out R² >= R2_READABLE), tr(U)/d rises from the earliest
    to the latest (rotation early, scaling late); degenerate when fewer than two fits are readable."""
    fitted = [i for i in range(len(prop.layers)) if float(prop.r2[i]) >= R2_READABLE]
    if len(fitted) < 2:
        return (f"Verdict: **not testable here (degenerate fits)**: held-out R² >= {R2_READABLE} at "
                f"{len(fitted)} of {len(prop.layers)} injection layers; a map that does not fit is not read as rotation "
                "or scaling (R² < 0: W predicts held-out vectors' effects worse than their mean; vectors of the LTV's "
                "size act on the final residual far from linearly)." + (
                    f" The one readable fit (L{prop.layers[fitted[0]]}, R² {float(prop.r2[fitted[0]]):.2f}) has "
                    f"tr(U)/d {float(prop.rotation_cos[fitted[0]]):.2f}; one layer cannot show a trend." if fitted else ""))
    rc = [float(prop.rotation_cos[i]) for i in fitted]
    ls = [prop.layers[i] for i in fitted]
    v = "**reproduced**" if rc[-1] > rc[0] else "**not reproduced**"
    return (f"Verdict: {v}: tr(U)/d at the readable layers " + ", ".join(f"L{l} {r:.2f}" for l, r in zip(ls, rc))
            + " (rotation = low, scaling = near 1).")


def toy_vs_real(hl: dict, prop: Any, ablation_verdict: str) -> list[str]:
    """Where toy-icl (docs/results/heads.md, ltv.md: 4 layers, LTVs at layer 1) and SmolLM2 agree or not."""
    out = []
    if hl["ov_rec"]:
        fin, ovr = float(np.mean(hl["final_rec"])), float(np.mean(hl["ov_rec"]))
        out.append("- OV reconstruction: on toy-icl θ added alone at the final residual already recovered almost all of "
                   "the LTV's effect and the heads' OV contributions added nothing ([heads](../heads.md)); on SmolLM2 "
                   + (f"θ alone recovers {fin:.2f} and θ + the heads' OV contributions {ovr:.2f} (mean over seeds): "
                      "**they disagree**: the effect is built by the later blocks (θ + heads + MLPs, exact, recovers "
                      "all of it), not carried by θ itself." if fin < 0.5 else
                      f"θ alone also recovers most ({fin:.2f}): they agree."))
        key_hurts = "**reproduced**" in ablation_verdict
        out.append("- Key heads: on toy-icl ablating the top key heads hurt no more than random heads; on SmolLM2 "
                   + ("they hurt more: **they disagree**." if key_hurts else
                      "they mostly do not either (claim 3): they agree."))
    readable = [i for i in range(len(prop.layers)) if float(prop.r2[i]) >= R2_READABLE]
    out.append("- Linear propagation: on toy-icl the map fitted well from layer 1 on (held-out R² 0.5-0.95) and barely "
               "rotated (tr(U)/d 0.96-0.99; layer 0 degenerate) ([ltv](../ltv.md)); on SmolLM2 the held-out R² is "
               + ", ".join(f"L{l} {float(r):.2f}" for l, r in zip(prop.layers, prop.r2))
               + (f", readable at {len(readable)} of {len(prop.layers)} layers." if readable else
                  ": no layer's map is readable, so the two cannot be compared beyond that."))
    return out


def summary_rows(hl: dict, circ: dict, working: list[int], head: int, bands: dict, prop: Any, kmax: int) -> list:
    rows = [["LTV moves the output (precondition)", CLAIMS["task_vectors"].paper.split("; ")[-1],
             f"layer {head}: {spread(hl['ltv'])}", "see the LTV table"]]
    rows.append(["OV reconstruction", "most of the LTV's accuracy (Llama3-8B)",
                 f"OV recovered {spread(hl['ov_rec'])}; θ alone {spread(hl['final_rec'])}" if hl["ov_rec"] else "–",
                 verdict_ov(circ, working, hl).split(":")[1].strip(" *")])
    rows.append(["key heads just after injection and in final layers", "qualitative (Llama3-8B)",
                 "; ".join(f"L{l}: after {b['after']:.1f} (chance {b['after_chance']:.2f}), final {b['final']:.1f} "
                           f"(chance {b['final_chance']:.2f})" for l, b in bands.items()) or "–",
                 verdict_bands(bands).split(":")[1].strip(" *")])
    rows.append([f"key vs random heads (k = {kmax}, zero)", "far more than random (Llama3-8B)",
                 f"key {spread(hl['top_drop'])} vs random mean {spread(hl['rand_drop'])}" if hl["top_drop"] else "–",
                 verdict_ablation(circ, working, head, kmax, hl).split(":")[1].strip(" *")])
    rows.append(["linear propagation: early rotated, late scaled", "tr(U)/d low early, ~1 late (Llama3-8B)",
                 f"held-out R² {', '.join(f'L{l} {float(r):.2f}' for l, r in zip(prop.layers, prop.r2))}; "
                 f"headline layer over seeds {spread(hl['r2'])}", verdict_prop(prop, working).split(":")[1].strip(" *")])
    return rows


if __name__ == "__main__":
    main()
