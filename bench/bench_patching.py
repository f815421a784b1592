"""Benchmark: activation patching and layer sweeps, ours against the obvious baselines, in one run.

1. ``patch_grid`` vs TransformerLens's ``patching.get_act_patch_resid_pre`` on identical inputs
   (clean ICL prompts vs the same prompts with random demo answers, same token shape), same metric
   (mean probability of the clean gold token at the final position); checks max |difference|.
2. ``layer_sweep`` vs a naive loop with one full forward per layer (hook at block l), injecting a
   random vector at the final position of each prompt at every layer 0..n_layers; checks that the
   per-prompt metric is the same.

The model is a random GPT-2-shaped HookedTransformer (6 layers, d_model 512, 8 heads, vocab 20k;
``--full``: GPT-2 small, 12 layers, d_model 768, 12 heads, vocab 50257) with the toy tokenizer,
prompts of ~32 tokens, batch 4. ``--quick``: the default width with 2 layers and one repeat,
to check the script works (``--cpu-time`` times with the CPU clock on a busy machine). The last line printed is one JSON object with the timings and ratios.

    python bench/bench_patching.py [--quick | --full] [--threads N]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

from timing import best_of  # bench/timing.py, next to this script


def make_model(full: bool, quick: bool):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from transformers import PreTrainedTokenizerFast

    from icl_circuits.toy import TOKENIZER_DIR

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    if quick:
        shape = dict(n_layers=2, d_model=512, n_heads=8, d_vocab=20000)
    elif full:
        shape = dict(n_layers=12, d_model=768, n_heads=12, d_vocab=50257)
    else:
        shape = dict(n_layers=6, d_model=512, n_heads=8, d_vocab=20000)
    d = shape["d_model"]
    cfg = HookedTransformerConfig(
        **shape, d_head=d // shape["n_heads"], d_mlp=4 * d, n_ctx=64, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard", seed=0, model_name="random-gpt2-shape",
    )
    model = HookedTransformer(cfg, tokenizer=tok)
    model.eval()
    return model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small model, one repeat: checks the script runs")
    g.add_argument("--full", action="store_true", help="GPT-2 small size")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock instead of the wall clock (for a busy machine)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats, best kept (default 2; quick 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 2)
    timed = partial(best_of, cpu_time=args.cpu_time)

    from transformer_lens.patching import get_act_patch_resid_pre

    from icl_circuits import build_prompts
    from icl_circuits.core import interventions as iv
    from icl_circuits.methods.patching import patch_grid
    from icl_circuits.methods.sweeps import layer_sweep

    model = make_model(args.full, args.quick)
    # ~32 tokens: 6 demos of a number categorization task; random answers keep the token shape
    clean = build_prompts(model, "number", 4, 7, seed=0)
    corr = build_prompts(model, "number", 4, 7, seed=0, variant="random_answers")
    assert clean.tokens.shape == corr.tokens.shape
    B, P = clean.tokens.shape
    rows, final, gold = torch.arange(B), corr.final_positions, clean.answer_tokens
    print(f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {model.cfg.n_heads} heads, "
          f"vocab {model.cfg.d_vocab}; batch {B} x {P} tokens; {args.threads} thread(s)")

    # ---- 1. activation patching grid
    def ours_metric(logits):  # final-position logits [batch, d_vocab] -> scalar
        return logits.softmax(-1)[rows, gold].mean()

    def tl_metric(logits):  # TL hands the metric the full logits [batch, pos, d_vocab]
        return ours_metric(logits[rows, final])

    def run_tl():
        with torch.no_grad():
            _, cache = model.run_with_cache(clean.tokens)
            return get_act_patch_resid_pre(model, corr.tokens, cache, tl_metric)

    import tqdm.auto  # silence TL's progress bar in the timing

    orig = tqdm.auto.tqdm.__init__

    def quiet(self, *a, **k):
        k["disable"] = True
        orig(self, *a, **k)

    tqdm.auto.tqdm.__init__ = quiet
    t_tl, tl = timed(run_tl, repeats)
    t_ours, ours = timed(lambda: patch_grid(model, clean, corr, ours_metric), repeats)
    t_noskip, noskip = timed(lambda: patch_grid(model, clean, corr, ours_metric, skip_identical=False), repeats)
    tqdm.auto.tqdm.__init__ = orig
    diff = float((tl.cpu() - ours.values).abs().max())
    diff_noskip = float((tl.cpu() - noskip.values).abs().max())
    print(f"patch grid [{model.cfg.n_layers} x {P}]: TL get_act_patch_resid_pre {t_tl:.2f}s | ours {t_ours:.2f}s "
          f"({t_tl / t_ours:.1f}x; {ours.meta['n_cells_skipped']} of {ours.meta['n_cells']} cells identical, "
          f"{ours.meta['n_forwards']} forwards) | ours without skipping {t_noskip:.2f}s ({t_tl / t_noskip:.1f}x); "
          f"max |diff| {diff:.2e} / {diff_noskip:.2e}")

    # ---- 2. layer sweep: inject a random vector at the final position at every layer
    n = model.cfg.n_layers
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(n + 1, model.cfg.d_model, generator=g) * 3
    pos = clean.positions("final").positions

    def hooks(l, rws, mb):
        return [(iv.resid_name(model, l), iv.add_hook(pos[rws], vec[l]))]

    def naive():
        out = []
        with torch.no_grad():
            for l in range(n + 1):
                with model.hooks(fwd_hooks=hooks(l, slice(0, B), clean)):
                    logits = model(clean.tokens)[rows, clean.final_positions]
                out.append(logits.softmax(-1)[rows, gold])
        return torch.stack(out)

    def gp(logits, batch):
        return logits.softmax(-1)[torch.arange(len(batch)), batch.answer_tokens]

    rep = 3 * repeats  # short runs: more repeats
    t_naive, ref = timed(naive, rep)
    t_sweep, sw = timed(lambda: layer_sweep(model, clean, hooks, metric=gp), rep)
    t_sweep1, sw1 = timed(lambda: layer_sweep(model, clean, hooks, metric=gp, layers_per_forward=1), rep)
    sdiff = float(max((ref - sw.per_prompt).abs().max(), (ref - sw1.per_prompt).abs().max()))
    print(f"layer sweep [{n + 1} layers]: naive {t_naive:.3f}s | ours {t_sweep:.3f}s ({t_naive / t_sweep:.1f}x) | "
          f"ours one layer per forward {t_sweep1:.3f}s ({t_naive / t_sweep1:.1f}x); max |diff| {sdiff:.2e}")

    out = {
        "bench": "patching", "mode": "quick" if args.quick else ("full" if args.full else "default"),
        "threads": args.threads, "clock": "cpu" if args.cpu_time else "wall", "n_layers": n, "d_model": model.cfg.d_model, "d_vocab": model.cfg.d_vocab,
        "batch": B, "pos": P,
        "patch_grid": {"tl_s": t_tl, "ours_s": t_ours, "ratio": t_tl / t_ours, "ours_noskip_s": t_noskip,
                       "ratio_noskip": t_tl / t_noskip, "max_abs_diff": max(diff, diff_noskip),
                       "cells": ours.meta["n_cells"], "cells_skipped": ours.meta["n_cells_skipped"]},
        "layer_sweep": {"naive_s": t_naive, "ours_s": t_sweep, "ratio": t_naive / t_sweep,
                        "ours_one_layer_per_forward_s": t_sweep1, "ratio_one_layer_per_forward": t_naive / t_sweep1,
                        "max_abs_diff": sdiff},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
