"""Benchmark: what the installed runner backend does with a key/value cache, against running without one.

TransformerLens 3.x gives the hooked backend (``HookedTransformer``), 4.x the bridge backend
(``TransformerBridge``); run this script in each venv (``.venv``, ``.venv-tl4``) to compare them side by
side on the same machine. For each model:

- **greedy decoding**: ``greedy_answers`` with the backend's key/value cache (batched, one position per
  forward) against the uncached per-prompt reference loop (``use_cache=False``, the whole sequence re-run
  for every new token), and whether both generate the same tokens;
- **patching**: ``patch_grid`` with suffix-only replay over the corrupted run's recorded keys and values
  against full-width runs (``suffix_only=False``), and the largest difference of their values;
- **report accuracy section** (``--report-section``): the SmolLM2 report's accuracy section as the report
  runs it (``report.suite.run_suite(only=["accuracy"])``), its time on this backend.

Times are process CPU seconds (best of ``--repeats``), one torch thread. The last line printed is one
JSON object: ``{backend, transformer_lens, models: {model: {greedy: {...}, patching: {...}}}, report_accuracy_s}``.

    python bench/bench_backends.py [--models toy-icl smollm2-135m] [--prompts 24] [--demos 4] [--report-section]
"""

from __future__ import annotations

import argparse
import json
import warnings
from importlib.metadata import version

import torch

from timing import best_of, parse_only  # bench/timing.py, next to this script


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["toy-icl", "smollm2-135m"])
    ap.add_argument("--task", default="country-capital", help="greedy decoding task (multi-token answers)")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--demos", type=int, default=4)
    ap.add_argument("--patch-prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--report-section", action="store_true", help="also time the SmolLM2 report's accuracy section")
    args = ap.parse_args(argv)
    parse_only(args)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    from icl_circuits import build_prompts, load_model
    from icl_circuits.core.evaluation import greedy_answers
    from icl_circuits.core.runner import backend_for
    from icl_circuits.methods.patching import patch_grid

    out: dict = {"transformer_lens": version("transformer-lens"), "models": {}, "settings": vars(args)}
    for name in args.models:
        model = load_model(name, device="cpu")
        be = backend_for(model)
        out["backend"] = be.name
        tmpl = None if name == "toy-icl" else "{x} -> {y}"
        batch = build_prompts(model, args.task, args.prompts, args.demos, tmpl, seed=0)
        cached_s, cached = best_of(lambda: greedy_answers(model, batch), args.repeats, cpu_time=True)
        plain_s, plain = best_of(lambda: greedy_answers(model, batch, use_cache=False), args.repeats, cpu_time=True)
        greedy = {"cached_s": round(cached_s, 3), "uncached_s": round(plain_s, 3),
                  "speedup": round(plain_s / cached_s, 2), "has_cache": be.new_kv_cache(1) is not None,
                  "same_tokens": cached.generated_ids == plain.generated_ids}
        icl = build_prompts(model, "antonym", args.patch_prompts, args.demos, tmpl, seed=0)
        rnd = build_prompts(model, "antonym", args.patch_prompts, args.demos, tmpl, seed=0, variant="random_answers")
        layers = sorted({0, model.cfg.n_layers // 2, model.cfg.n_layers - 1})
        suf_s, suf = best_of(lambda: patch_grid(model, icl, rnd, layers=layers, suffix_only=True), args.repeats,
                             cpu_time=True)
        full_s, full = best_of(lambda: patch_grid(model, icl, rnd, layers=layers, suffix_only=False), args.repeats,
                               cpu_time=True)
        patching = {"suffix_s": round(suf_s, 3), "full_width_s": round(full_s, 3), "speedup": round(full_s / suf_s, 2),
                    "suffix_replayed": bool(suf.meta["suffix_only"]),
                    "max_abs_diff": float((suf.values - full.values).abs().max())}
        out["models"][name] = {"greedy": greedy, "patching": patching}
        print(name, be.name, "greedy", greedy, "patching", patching, flush=True)
        if args.report_section and name == "smollm2-135m":
            from icl_circuits.report.config import ReportConfig
            from icl_circuits.report.suite import run_suite

            cfg = ReportConfig.for_model(name)
            sec_s, _ = best_of(lambda: run_suite(model, cfg, only=["accuracy"], progress=False), 1, cpu_time=True)
            out["report_accuracy_s"] = round(sec_s, 1)
            print("report accuracy section", out["report_accuracy_s"], "s", flush=True)
        del model
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
