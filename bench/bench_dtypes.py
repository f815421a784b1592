"""Which numbers change when a model runs in bfloat16 or float16 instead of float32, and by how much.

The same prompts through the same analyses on the same weights loaded in each dtype (``load_model(...,
dtype=)``); every difference is against float32:

- first-token accuracy (``icl_accuracy``): the rate, and how many prompts change verdict;
- the exact head-ablation scan (zero ablation, every position, ``logit_diff_to_mean``): max |effect
  difference|, relative to the mean |clean metric|, Spearman of the effects, same top head;
- interchange (answers, two layers): max |transfer-rate difference|;
- ``patch_grid`` (clean vs random-answer twin, gold probability): max |difference|;
- saliency flow (proportions): max |difference| of the three flows;
- a vanilla task vector's accuracy sweep: max |accuracy difference|.

The last line printed is one JSON object ``{dtype: {number: value}}`` plus the settings.

    python bench/bench_dtypes.py [--model toy-icl] [--prompts 64] [--demos 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from timing import parse_only  # bench/timing.py, next to this script


def run_all(model, args) -> dict:
    from scipy.stats import spearmanr  # noqa: F401  (imported once, outside the timings)

    from icl_circuits import build_prompts, score
    from icl_circuits.core.pairs import paired_batches
    from icl_circuits.methods import heads, interchange, patching, saliency, task_vectors, vectors

    t, n, k = args.task, args.prompts, args.demos
    tmpl = None if str(model.cfg.model_name) == "toy-icl" else "{x} -> {y}"
    icl = build_prompts(model, t, n, k, tmpl, seed=0)
    small = build_prompts(model, t, max(4, n // 4), k, tmpl, seed=0)
    rand = build_prompts(model, t, max(4, n // 4), k, tmpl, seed=0, variant="random_answers")
    src, tgt = paired_batches(model, "english-french", t, n, k, template=tmpl, seed=0)
    dq = build_prompts(model, t, n, k, tmpl, seed=1, variant="dummy_query")
    zs = build_prompts(model, t, n, 0, tmpl, seed=2, variant="zero_shot")
    L = model.cfg.n_layers
    layers = sorted({0, L // 2, L - 1})
    out = {}
    t0 = time.perf_counter()
    out["correct"] = score(model, icl, ["first_token"])["first_token"].bool()
    out["scan"] = heads.head_ablation_scan(model, small, "zero", metric="logit_diff_to_mean", progress=False)
    out["interchange"] = interchange.interchange(model, src, tgt, "answers", layers=layers, progress=False)
    out["patch"] = patching.patch_grid(model, small, rand, layers=layers)
    out["saliency"] = saliency.saliency_flow(model, small, loss="full_vocab", proportions=True, progress=False)
    tv = task_vectors.vanilla_task_vector(model, dq, layers)
    out["tv"] = vectors.evaluate_vector(model, tv, zs)
    out["seconds"] = time.perf_counter() - t0
    return out


def compare(ref: dict, low: dict) -> dict:
    from scipy.stats import spearmanr

    a, b = ref["scan"].effect.flatten(), low["scan"].effect.flatten()
    c_r, c_l = ref["correct"], low["correct"]
    return {
        "accuracy": float(c_l.float().mean()),
        "accuracy_diff": float(c_l.float().mean() - c_r.float().mean()),
        "accuracy_verdicts_changed": int((c_r != c_l).sum()),
        "scan_clean_mean": float(low["scan"].clean.mean()),
        "scan_clean_mean_diff": float(low["scan"].clean.mean() - ref["scan"].clean.mean()),
        "scan_max_abs_effect_diff": float((a - b).abs().max()),
        "scan_max_abs_effect_diff_rel_clean": float((a - b).abs().max() / ref["scan"].clean.abs().mean()),
        "scan_spearman": float(spearmanr(a, b)[0]),
        "scan_same_top_head": int(a.abs().argmax()) == int(b.abs().argmax()),
        "interchange_max_abs_rate_diff": float((ref["interchange"].rates - low["interchange"].rates).abs().max()),
        "patch_grid_max_abs_diff": float((ref["patch"].values - low["patch"].values).abs().max()),
        "saliency_max_abs_flow_diff": float((ref["saliency"].flows - low["saliency"].flows).abs().max()),
        "task_vector_max_abs_acc_diff": float((ref["tv"].values - low["tv"].values).abs().max()),
        "seconds": round(low["seconds"], 2),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-icl")
    ap.add_argument("--task", default="antonym")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    parse_only(args)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    from icl_circuits import load_model

    ref = run_all(load_model(args.model, device=args.device, dtype="float32"), args)
    out: dict = {"bench": "dtypes", "model": args.model, "task": args.task, "n_prompts": args.prompts,
                 "n_demos": args.demos, "threads": args.threads, "device": args.device,
                 "float32": {"accuracy": float(ref["correct"].float().mean()),
                             "scan_clean_mean": float(ref["scan"].clean.mean()), "seconds": round(ref["seconds"], 2)}}
    for dt in args.dtypes:
        low = run_all(load_model(args.model, device=args.device, dtype=dt), args)
        out[dt] = compare(ref, low)
        print(dt, out[dt], flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
