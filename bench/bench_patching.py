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

``--model smollm2-135m`` (or ``toy-icl``, or any ``load_model`` name): the real model on a real ICL
batch (``--prompts`` x ``--demos``, template "{x} -> {y}" for subword tokenizers) with its
random-answer twin (``pairs.random_answer_twins``: same token positions); the grid is every
``--layer-stride``-th layer x every ``--pos-stride``-th position (TL's ``generic_activation_patch``
with the same ``index_df``, so TL runs only those cells), and the layer sweep injects at every
demo answer position and the final one (multi-position). Both print the FLOP-model limit of their
ratio (``bench/flops.py``).

    python bench/bench_patching.py [--quick | --full | --model smollm2-135m] [--threads N] [--cpu-time]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

import flops  # bench/flops.py
from timing import best_of, parse_only  # bench/timing.py, next to this script


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
    ap.add_argument("--model", default=None,
                    help="a load_model name (e.g. smollm2-135m); default: the random GPT-2-shaped model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--task", default=None, help="ICL task (default: number for the random model, antonym otherwise)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--demos", type=int, default=7)
    ap.add_argument("--layer-stride", type=int, default=1, help="patch every k-th layer (grid rows)")
    ap.add_argument("--pos-stride", type=int, default=1, help="patch every k-th position (grid columns)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock instead of the wall clock (for a busy machine)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats, best kept (default 2; quick 1)")
    ap.add_argument("--sweep-repeats", type=int, default=None, help="layer-sweep timing repeats (default 3 x repeats)")
    args = ap.parse_args(argv)
    parse_only(args)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 2)
    timed = partial(best_of, cpu_time=args.cpu_time)

    import pandas as pd
    from transformer_lens.patching import generic_activation_patch, layer_pos_patch_setter

    from icl_circuits import build_prompts, load_model
    from icl_circuits.core import interventions as iv
    from icl_circuits.core.pairs import random_answer_twins
    from icl_circuits.methods.patching import patch_grid
    from icl_circuits.methods.sweeps import layer_sweep

    if args.model is None:
        model = make_model(args.full, args.quick).to(args.device)
        # ~32 tokens: 6 demos of a number categorization task; random answers keep the token shape
        task = args.task or "number"
        clean = build_prompts(model, task, args.prompts, args.demos, seed=0)
        corr = build_prompts(model, task, args.prompts, args.demos, seed=0, variant="random_answers")
    else:
        model = load_model(args.model, device=args.device)
        task = args.task or "antonym"
        tmpl = None if args.model == "toy-icl" else "{x} -> {y}"
        icl = build_prompts(model, task, args.prompts, args.demos, tmpl, seed=0)
        clean, corr, _ = random_answer_twins(model, icl, seed=0)  # same token positions, prompt by prompt
    assert clean.tokens.shape == corr.tokens.shape
    B, P = clean.tokens.shape
    grid_layers = list(range(0, model.cfg.n_layers, args.layer_stride))
    grid_pos = list(range(0, P, args.pos_stride))
    cells = [(l, p) for l in grid_layers for p in grid_pos]
    full_grid = len(cells) == model.cfg.n_layers * P
    rows, final, gold = torch.arange(B), corr.final_positions, clean.answer_tokens
    print(f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {model.cfg.n_heads} heads, "
          f"vocab {model.cfg.d_vocab}; batch {B} x {P} tokens; {args.threads} thread(s)")

    # ---- 1. activation patching grid
    def ours_metric(logits):  # final-position logits [batch, d_vocab] -> scalar
        return logits.softmax(-1)[rows, gold].mean()

    def tl_metric(logits):  # TL hands the metric the full logits [batch, pos, d_vocab]
        return ours_metric(logits[rows, final])

    index_df = pd.DataFrame(cells, columns=["layer", "pos"])

    def run_tl():  # = get_act_patch_resid_pre on the full grid, restricted to the same cells
        with torch.no_grad():
            _, cache = model.run_with_cache(clean.tokens)
            out = generic_activation_patch(model, corr.tokens, cache, tl_metric, patch_setter=layer_pos_patch_setter,
                                           activation_name="resid_pre", index_df=index_df)
            return out.reshape(len(grid_layers), len(grid_pos))

    import tqdm.auto  # silence TL's progress bar in the timing

    orig = tqdm.auto.tqdm.__init__

    def quiet(self, *a, **k):
        k["disable"] = True
        orig(self, *a, **k)

    tqdm.auto.tqdm.__init__ = quiet
    t_tl, tl = timed(run_tl, repeats)
    grid_kw = dict(layers=grid_layers, positions=grid_pos)
    t_ours, ours = timed(lambda: patch_grid(model, clean, corr, ours_metric, **grid_kw), repeats)
    t_noskip, noskip = timed(lambda: patch_grid(model, clean, corr, ours_metric, skip_identical=False, **grid_kw),
                             repeats)
    grid_limit = flops.patch_grid_limit(model, B, P, cells)
    tqdm.auto.tqdm.__init__ = orig
    diff = float((tl.cpu() - ours.values).abs().max())
    diff_noskip = float((tl.cpu() - noskip.values).abs().max())
    print(f"patch grid [{len(grid_layers)} x {len(grid_pos)} of {model.cfg.n_layers} x {P}]: TL {t_tl:.2f}s | ours {t_ours:.2f}s "
          f"({t_tl / t_ours:.1f}x; {ours.meta['n_cells_skipped']} of {ours.meta['n_cells']} cells identical, "
          f"{ours.meta['n_forwards']} forwards) | ours without skipping {t_noskip:.2f}s ({t_tl / t_noskip:.1f}x); "
          f"max |diff| {diff:.2e} / {diff_noskip:.2e}; FLOP-model limit without skipping {grid_limit['limit']:.2f}x")

    # ---- 2. layer sweep: inject a random vector at the final position at every layer
    n = model.cfg.n_layers
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(n + 1, model.cfg.d_model, generator=g) * 3
    # the random model: the final position (as measured before); a real model: every demo answer and the final one
    pos = clean.positions("final" if args.model is None else "answers+final").positions
    sweep_limit = flops.layer_sweep_limit(model, B, P, range(n + 1))

    def hooks(l, rws, mb):
        return [(iv.resid_name(model, l), iv.add_hook(pos[rws], vec[l]))]

    def naive():
        out = []
        with torch.no_grad():
            for l in range(n + 1):
                with model.hooks(fwd_hooks=hooks(l, slice(0, B), clean)):
                    logits = model(clean.tokens)[rows, clean.final_positions]
                out.append(logits.softmax(-1)[rows, gold].cpu())
        return torch.stack(out)

    def gp(logits, batch):
        return logits.softmax(-1)[torch.arange(len(batch)), batch.answer_tokens]

    rep = args.sweep_repeats or 3 * repeats  # short runs: more repeats
    t_naive, ref = timed(naive, rep)
    t_sweep, sw = timed(lambda: layer_sweep(model, clean, hooks, metric=gp), rep)
    t_sweep1, sw1 = timed(lambda: layer_sweep(model, clean, hooks, metric=gp, layers_per_forward=1), rep)
    sdiff = float(max((ref - sw.per_prompt).abs().max(), (ref - sw1.per_prompt).abs().max()))
    print(f"layer sweep [{n + 1} layers]: naive {t_naive:.3f}s | ours {t_sweep:.3f}s ({t_naive / t_sweep:.1f}x) | "
          f"ours one layer per forward {t_sweep1:.3f}s ({t_naive / t_sweep1:.1f}x); max |diff| {sdiff:.2e}; "
          f"FLOP-model limit {sweep_limit['limit']:.2f}x ({pos.shape[1]} positions per prompt)")

    out = {
        "bench": "patching", "mode": "quick" if args.quick else ("full" if args.full else "default"),
        "model": args.model or "random-gpt2-shape", "task": task, "device": args.device, "threads": args.threads, "clock": "cpu" if args.cpu_time else "wall", "n_layers": n, "d_model": model.cfg.d_model, "d_vocab": model.cfg.d_vocab,
        "batch": B, "pos": P,
        "patch_grid": {"tl_s": t_tl, "ours_s": t_ours, "ratio": t_tl / t_ours, "ours_noskip_s": t_noskip,
                       "ratio_noskip": t_tl / t_noskip, "max_abs_diff": max(diff, diff_noskip),
                       "cells": ours.meta["n_cells"], "cells_skipped": ours.meta["n_cells_skipped"],
                       "grid": [len(grid_layers), len(grid_pos)], "full_grid": full_grid,
                       "flop_limit_noskip": grid_limit["limit"], "tl_gflop": grid_limit["tl_gflop"],
                       "ours_noskip_gflop": grid_limit["ours_gflop"],
                       "fraction_of_limit_noskip": t_tl / t_noskip / grid_limit["limit"]},
        "layer_sweep": {"naive_s": t_naive, "ours_s": t_sweep, "ratio": t_naive / t_sweep,
                        "ours_one_layer_per_forward_s": t_sweep1, "ratio_one_layer_per_forward": t_naive / t_sweep1,
                        "max_abs_diff": sdiff, "positions_per_prompt": int(pos.shape[1]),
                        "flop_limit": sweep_limit["limit"], "fraction_of_limit": t_naive / t_sweep / sweep_limit["limit"]},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
