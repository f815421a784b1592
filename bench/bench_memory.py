"""Peak memory (process RSS) of saliency flow and of an interchange sweep, ours vs a naive
``run_with_cache`` implementation, on long prompts.

Each of the four runs is a fresh subprocess (``--child MODE``): it loads the model, builds the
prompts, returns freed heap to the OS (``malloc_trim``), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the analysis and
reads the peak (``VmHWM``); ``extra_mb`` = peak - RSS just before the run (model, prompts and
libraries excluded), ``peak_mb`` the process's peak after the reset.

- ``saliency_ours``: ``saliency_flow(model, batch, loss="full_vocab")`` (minibatches of 16
  prompts, one gate per attention pattern, only the final positions unembedded, flows kept).
- ``saliency_naive``: TransformerLens's caching hooks on every hook point, forward and backward
  (``model.get_caching_hooks(incl_bwd=True)``, what ``run_with_cache`` does plus gradients), the
  whole batch in one pass with full logits, then ``|sum_h A * dL/dA|`` per layer from the cache
  and the same flows (masks ``saliency.flow_masks``). The parameters are frozen in both.
- ``interchange_ours``: ``interchange(model, source, target, "answers", layers, per_prompt_source=True)``
  (source prompt i into target prompt i, as the naive loop does; source residuals
  read at the answer positions only, runs resumed at each layer, final rows unembedded).
- ``interchange_naive``: ``run_with_cache(source.tokens)`` (every activation), then per layer a
  full forward of the target with ``blocks.{l}.hook_resid_pre`` replaced at the answer positions
  by the cached source residual, full logits.

Both implementations of a pair are checked to give the same numbers (flows: max |relative
difference|; interchange: the same predicted tokens). The last line printed is one JSON object.

    python bench/bench_memory.py [--model smollm2-135m] [--prompts 16] [--demos 16] [--layer-stride 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from timing import parse_only  # bench/timing.py, next to this script

MODES = ("saliency_ours", "saliency_naive", "interchange_ours", "interchange_naive")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _saliency_naive(model, batch):
    from icl_circuits.methods.saliency import flow_masks

    L = model.cfg.n_layers
    cache, fwd, bwd = model.get_caching_hooks(names_filter=None, incl_bwd=True)

    def leaf(x, hook):  # parameters are frozen: the embedding is the leaf the gradients start from
        return x.detach().requires_grad_(True)

    tokens = batch.tokens.to(model.cfg.device)
    rows = torch.arange(len(batch))
    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)] + fwd, bwd_hooks=bwd):
        logits = model(tokens)  # [batch, pos, d_vocab]
        loss = torch.nn.functional.cross_entropy(logits[rows, batch.final_positions].float(),
                                                 batch.answer_tokens.to(logits.device), reduction="sum")
        loss.backward()
    masks = flow_masks(batch).float()  # [flow, batch, q, k]
    sal = torch.stack([(cache[f"blocks.{l}.attn.hook_pattern"] * cache[f"blocks.{l}.attn.hook_pattern_grad"])
                       .sum(1).abs().float().cpu() for l in range(L)])  # [layer, batch, q, k]
    count = masks.sum((-1, -2)).clamp_min(1)
    return torch.einsum("lbqk,fbqk->flb", sal, masks) / count[:, None]  # [flow, layer, batch]


def _interchange_naive(model, src, tgt, layers):
    _, cache = model.run_with_cache(src.tokens.to(model.cfg.device))
    ps, pt = src.positions("answers").positions, tgt.positions("answers").positions
    rows = torch.arange(len(tgt))[:, None].expand_as(pt)
    preds = []
    for l in layers:
        name = f"blocks.{l}.hook_resid_pre"

        def hook(act, hook, name=name):
            act[rows, pt] = cache[name][rows, ps]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(tgt.tokens.to(model.cfg.device), fwd_hooks=[(name, hook)])
        preds.append(logits[torch.arange(len(tgt)), tgt.final_positions].argmax(-1).cpu())
    return torch.stack(preds)


def child(args) -> dict:
    torch.set_num_threads(args.threads)
    from icl_circuits import build_prompts, load_model
    from icl_circuits.core.pairs import paired_batches

    model = load_model(args.model, device=args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    tmpl = None if args.model == "toy-icl" else "{x} -> {y}"
    L = model.cfg.n_layers
    layers = list(range(0, L, args.layer_stride))
    if args.child.startswith("saliency"):
        batch = build_prompts(model, args.task, args.prompts, args.demos, tmpl, seed=0)
        width = int(batch.tokens.shape[1])
    else:
        src, tgt = paired_batches(model, args.source_task, args.task, args.prompts, args.demos, template=tmpl, seed=0)
        width = int(max(src.tokens.shape[1], tgt.tokens.shape[1]))
    import gc

    gc.collect()
    try:  # hand the loader's freed heap back to the OS, so that no run starts with free memory inside its RSS
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base = _status_mb("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    if args.child == "saliency_ours":
        from icl_circuits.methods.saliency import saliency_flow

        out = saliency_flow(model, batch, loss="full_vocab", progress=False).per_prompt
    elif args.child == "saliency_naive":
        out = _saliency_naive(model, batch)
    elif args.child == "interchange_ours":
        from icl_circuits.methods.interchange import interchange

        out = interchange(model, src, tgt, "answers", layers=layers, per_prompt_source=True, return_logits=True,
                          exclude_ambiguous=False, progress=False).logits.argmax(-1)
    else:
        out = _interchange_naive(model, src, tgt, layers)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    return {"mode": args.child, "base_mb": round(base, 1), "peak_mb": round(peak, 1),
            "extra_mb": round(peak - base, 1), "peak_reset": reset, "seconds": round(seconds, 2),
            "tokens": width, "n_prompts": args.prompts, "n_demos": args.demos, "layers": layers,
            "out": out.tolist()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--task", default="antonym")
    ap.add_argument("--source-task", default="english-french", help="interchange: the source task")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--demos", type=int, default=16)
    ap.add_argument("--layer-stride", type=int, default=6, help="interchange: every k-th layer")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parse_only(args)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    runs = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--device", args.device,
               "--task", args.task, "--source-task", args.source_task, "--prompts", str(args.prompts),
               "--demos", str(args.demos), "--layer-stride", str(args.layer_stride), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = runs[mode]
        print(f"{mode:18s} extra {r['extra_mb']:8.1f} MB  peak {r['peak_mb']:8.1f} MB  (base {r['base_mb']:.0f} MB, "
              f"{r['seconds']:.1f} s, {r['tokens']} tokens)", flush=True)
    out: dict = {"bench": "memory", "model": args.model, "device": args.device, "threads": args.threads,
                 "n_prompts": args.prompts, "n_demos": args.demos}
    for what in ("saliency", "interchange"):
        a, b = runs.get(f"{what}_ours"), runs.get(f"{what}_naive")
        for k, r in (("ours", a), ("naive", b)):
            if r is not None:
                out[f"{what}_{k}"] = {x: r[x] for x in ("extra_mb", "peak_mb", "base_mb", "seconds", "tokens")}
        if a and b:
            out[f"{what}_extra_ratio"] = b["extra_mb"] / max(a["extra_mb"], 1e-9)
            out[f"{what}_peak_ratio"] = b["peak_mb"] / a["peak_mb"]
            x, y = torch.tensor(a["out"]), torch.tensor(b["out"])
            if what == "saliency":
                out["saliency_max_rel_diff"] = float(((x - y).abs() / y.abs().clamp_min(1e-12)).max())
            else:
                out["interchange_same_predictions"] = bool(torch.equal(x, y))
                out["interchange_prediction_agreement"] = float((x == y).float().mean())
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
