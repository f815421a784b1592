"""Benchmark: head ablation scans, batched vs naive, and attribution patching vs the exact scan.

On the bundled model ``toy-icl`` (4 layers, d_model 128, 4 heads; when its weights are missing, a
random model of the same shape with the toy tokenizer), with 8-demo ICL prompts of one task:

1. the exact scan ``head_ablation_scan`` (heads of a layer stacked in one forward that resumes at
   that layer from the cached clean prefix) vs a naive loop (one full forward per ablated head);
   prints whether both give the same per-prompt metric and the max |difference| (float32 rounding
   where the shapes make the kernels sum in another order);
2. ``head_attribution`` (one forward + one backward) vs the exact scan; Spearman rank correlation
   of the per-head effects (scipy).

Metric: ``logit_diff_to_mean``; zero and mean ablation at every position. The last line printed is one JSON
object with ``scan_speedup_vs_naive``, ``attribution_speedup_vs_exact`` and ``attribution_spearman``
for zero ablation, and the same keys suffixed ``_mean`` for mean ablation. On a busy machine use
``--cpu-time`` (process CPU clock; one thread).

``--model smollm2-135m`` (any ``load_model`` name) runs on that model instead (template "{x} -> {y}"
for subword tokenizers). The FLOP-model limits are printed beside the ratios (``bench/flops.py``):
scan vs naive ``(1 + L H) / (1 + H (L + 1) / 2)``; attribution vs the exact scan
``(1 + H (L + 1) / 2) / 3`` (one forward and one backward of about two forwards).

    python bench/bench_heads.py [--model smollm2-135m] [--task antonym] [--prompts 64] [--how zero mean] [--repeats 2] [--cpu-time]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

import flops  # bench/flops.py
from timing import best_of, parse_only  # bench/timing.py, next to this script


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a load_model name; default toy-icl (random weights if missing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--task", default="antonym")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--how", nargs="+", default=["zero", "mean"], choices=["zero", "mean"],
                    help="ablations to measure; the first one's numbers get the unsuffixed JSON keys")
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats, best kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true", help="time with the process CPU clock (busy machine)")
    args = ap.parse_args(argv)
    parse_only(args)
    torch.set_num_threads(args.threads)
    timed = partial(best_of, cpu_time=args.cpu_time)

    from icl_circuits import build_prompts
    from icl_circuits.methods.attribution import head_attribution, scan_agreement
    from icl_circuits.methods.heads import head_ablation_scan
    from icl_circuits.toy import toy_or_untrained

    if args.model is None:
        model, trained = toy_or_untrained(args.device)
    else:
        from icl_circuits import load_model

        model, trained = load_model(args.model, device=args.device), True
    tmpl = None if args.model in (None, "toy-icl") else "{x} -> {y}"
    batch = build_prompts(model, args.task, args.prompts, args.demos, tmpl, seed=0)
    limit = flops.head_scan_limit(model)
    attr_limit = limit["scan_forwards"] / 3
    kw = dict(metric="logit_diff_to_mean", progress=False)
    print(f"model {model.cfg.model_name} ({'trained' if trained else 'random weights'}), task {args.task}, "
          f"{args.prompts} prompts x {args.demos} demos ({batch.tokens.shape[1]} tokens), "
          f"{model.cfg.n_layers * model.cfg.n_heads} heads, {'CPU' if args.cpu_time else 'wall'} clock")
    out = {"model": str(model.cfg.model_name), "trained": trained, "task": args.task, "n_prompts": args.prompts,
           "n_demos": args.demos, "tokens": int(batch.tokens.shape[1]), "device": args.device, "threads": args.threads,
           "clock": "cpu" if args.cpu_time else "wall", "scan_flop_limit": limit["limit"],
           "attribution_flop_limit": attr_limit}
    for how in args.how:
        t_naive, naive = timed(lambda: head_ablation_scan(model, batch, how, batched=False, **kw), args.repeats)
        t_scan, scan = timed(lambda: head_ablation_scan(model, batch, how, **kw), args.repeats)
        t_attr, attr = timed(lambda: head_attribution(model, batch, how, metric="logit_diff_to_mean"), args.repeats)
        same = torch.equal(scan.per_prompt, naive.per_prompt)
        diff = float((scan.per_prompt - naive.per_prompt).abs().max())
        agree = scan_agreement(scan, attr)
        print(f"[{how} ablation] naive scan (one forward per head): {t_naive:.3f}s")
        print(f"[{how} ablation] batched scan: {t_scan:.3f}s ({t_naive / t_scan:.2f}x of a {limit['limit']:.2f}x limit; "
              f"identical: {same}, max diff {diff:.1e})")
        print(f"[{how} ablation] attribution patching: {t_attr:.3f}s ({t_scan / t_attr:.2f}x faster than the exact scan, "
              f"limit ~{attr_limit:.0f}x); "
              f"vs exact: Spearman {agree['spearman']:.3f}, Pearson {agree['pearson']:.3f}, top-5 overlap {agree['top5_overlap']:.2f}")
        sfx = "" if how == args.how[0] else f"_{how}"
        out.update({
            f"how{sfx}": how, f"naive_s{sfx}": t_naive, f"scan_s{sfx}": t_scan, f"attribution_s{sfx}": t_attr,
            f"scan_identical{sfx}": same, f"scan_max_abs_diff{sfx}": diff, f"scan_speedup_vs_naive{sfx}": t_naive / t_scan,
            f"attribution_speedup_vs_exact{sfx}": t_scan / t_attr, f"attribution_spearman{sfx}": agree["spearman"],
            f"attribution_pearson{sfx}": agree["pearson"],
        })
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
