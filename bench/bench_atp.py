"""Benchmark: AtP* (attribution patching with the QK fix and GradDrop) against the exact head scan.

For each model and ablation (zero, mean; every position; metric ``logit_diff_to_mean``): the exact
scan ``head_ablation_scan`` and ``head_attribution`` plain, ``qk_fix=True``, ``graddrop=True`` and
both; for each estimate its agreement with the exact scan (``scan_agreement``, k = 10: Spearman of
the signed effects, top-10 overlap by |effect|, plus the Spearman of |effect|, the ranking GradDrop
is meant for) and its time as a ratio to the exact scan's (best of ``--repeats``, one thread).

Models: ``toy-icl`` (antonym, 32 prompts x 8 demos) and ``smollm2-135m`` (16 prompts x 4 demos,
template "{x} -> {y}", ``--task``), unless ``--models`` says otherwise. The last line printed is one
JSON object: ``{model: {how: {variant: {spearman, spearman_abs, top10_overlap, time_ratio, seconds}}}}``
plus the settings.

    python bench/bench_atp.py [--models toy-icl smollm2-135m] [--task antonym] [--repeats 1] [--cpu-time]
"""

from __future__ import annotations

import argparse
import json
import warnings
from functools import partial

import torch

from timing import best_of, parse_only  # bench/timing.py, next to this script

VARIANTS = {"atp": {}, "qk": {"qk_fix": True}, "graddrop": {"graddrop": True}, "qk+graddrop": {"qk_fix": True, "graddrop": True}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["toy-icl", "smollm2-135m"])
    ap.add_argument("--task", default="antonym")
    ap.add_argument("--toy-prompts", type=int, default=32)
    ap.add_argument("--toy-demos", type=int, default=8)
    ap.add_argument("--real-prompts", type=int, default=16)
    ap.add_argument("--real-demos", type=int, default=4)
    ap.add_argument("--how", nargs="+", default=["zero", "mean"], choices=["zero", "mean"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cpu-time", action="store_true", help="time with the process CPU clock (busy machine)")
    args = ap.parse_args(argv)
    parse_only(args)
    torch.set_num_threads(args.threads)
    timed = partial(best_of, cpu_time=args.cpu_time)
    warnings.simplefilter("ignore", UserWarning)  # scan_agreement's disagreement warning: the numbers say it

    from scipy.stats import spearmanr

    from icl_circuits import build_prompts, load_model
    from icl_circuits.methods.attribution import head_attribution, scan_agreement
    from icl_circuits.methods.heads import head_ablation_scan

    out: dict = {"task": args.task, "metric": "logit_diff_to_mean", "positions": "all", "threads": args.threads,
                 "clock": "cpu" if args.cpu_time else "wall", "device": args.device, "repeats": args.repeats}
    for name in args.models:
        model = load_model(name, device=args.device)
        toy = name == "toy-icl"
        n, d = (args.toy_prompts, args.toy_demos) if toy else (args.real_prompts, args.real_demos)
        batch = build_prompts(model, args.task, n, d, None if toy else "{x} -> {y}", seed=0)
        res: dict = {"n_prompts": n, "n_demos": d, "tokens": int(batch.tokens.shape[1]),
                     "heads": model.cfg.n_layers * model.cfg.n_heads}
        for how in args.how:
            t_ex, ex = timed(lambda: head_ablation_scan(model, batch, how, metric="logit_diff_to_mean", progress=False),
                             args.repeats)
            row: dict = {"exact_seconds": t_ex, "clean": float(ex.clean.mean())}
            for v in args.variants:
                t, est = timed(lambda: head_attribution(model, batch, how, metric="logit_diff_to_mean", **VARIANTS[v]),
                               args.repeats)
                ag = scan_agreement(ex, est, k=10)
                sp_abs = float(spearmanr(ex.effect.abs().flatten(), est.effect.abs().flatten())[0])
                row[v] = {"spearman": round(ag.spearman, 4), "spearman_abs": round(sp_abs, 4),
                          "top10_overlap": ag.top_k_overlap, "time_ratio": round(t / t_ex, 4), "seconds": round(t, 3)}
                print(f"{name} {how:4s} {v:12s} Spearman {ag.spearman:6.3f} |.| {sp_abs:6.3f} top-10 "
                      f"{ag.top_k_overlap:.2f}  {t:7.2f} s = {t / t_ex:.3f} x exact ({t_ex:.2f} s)", flush=True)
            res[how] = row
        out[name] = res
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
