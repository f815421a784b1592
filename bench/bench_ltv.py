"""Learned task vectors: training steps with the cached prefix vs through the full model.

For each injection layer l (input of block l; l = n_layers is the final residual) we time N
training steps (forward, backward to theta, AdamW step; process CPU time, since the machine is
shared) on the same minibatch, once resuming at
block l from the residual read once (``ltv_loss(..., resid=...)``, what ``train_task_vector``
does) and once running the whole frozen model, and compare the gradients of the two paths.
Zero-shot prompts (the published setting) and 8-demo prompts (longer sequences) are both timed.
Runs on the bundled toy-icl when its weights exist, else on a random model of the same shape;
``--model smollm2-135m`` (any ``load_model`` name; template "{x} -> {y}") on that model, at the
injection layers ``--layers`` (default all). Per layer it prints the FLOP-model limit of the
speed-up (``bench/flops.py``: the backward to theta runs through blocks l.. in both paths) and the
issue's target 0.8 L / (L - l).

    .venv/bin/python bench/bench_ltv.py [--model smollm2-135m --layers 0 6 12 18 24 30 --steps 10 --demos 0 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402  (bench/flops.py)
from timing import parse_only  # noqa: E402

STEPS = 30
BATCH = 32


class Stepper:
    """One training step at a time (forward, backward to theta, AdamW step) on one path."""

    def __init__(self, model, batch, layer, resid):
        self.model, self.batch, self.layer, self.resid = model, batch, layer, resid
        self.theta = torch.nn.Parameter(torch.zeros(1, model.cfg.d_model))
        self.opt = torch.optim.AdamW([self.theta], lr=5e-3, weight_decay=0.01)

    def __call__(self) -> float:
        from icl_circuits.methods.learned import ltv_loss

        t0 = time.process_time()
        loss, _ = ltv_loss(self.model, self.batch, self.theta, [self.layer], resid=self.resid)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.process_time() - t0


def bench(model, batch, layers, steps=STEPS):
    from icl_circuits.core.runner import read_resid
    from icl_circuits.methods.learned import ltv_loss

    out, grad_diff = {}, 0.0
    for l in layers:
        resid = read_resid(model, batch, None, [l])[0]
        theta = (torch.rand(1, model.cfg.d_model, generator=torch.Generator().manual_seed(l)) * 0.2 - 0.1).requires_grad_()
        (g_c,) = torch.autograd.grad(ltv_loss(model, batch, theta, [l], resid=resid)[0], theta)
        (g_f,) = torch.autograd.grad(ltv_loss(model, batch, theta, [l])[0], theta)
        grad_diff = max(grad_diff, float((g_c - g_f).abs().max()))
        cached, full = Stepper(model, batch, l, resid), Stepper(model, batch, l, None)
        cached(), full()  # warm-up
        # Process CPU time (1 thread), not wall time: the machine is shared, and other processes'
        # load would otherwise dominate. Steps alternate between the paths; medians resist spikes.
        tc, tf = zip(*[(cached(), full()) for _ in range(steps)])
        out[l] = (statistics.median(tc), statistics.median(tf))
    return out, grad_diff


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a load_model name; default toy-icl (random weights if missing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="injection layers (default 0..n_layers)")
    ap.add_argument("--demos", type=int, nargs="+", default=[0, 8], help="demo counts (0: zero-shot)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    parse_only(args)
    torch.set_num_threads(args.threads)
    from icl_circuits import build_prompts
    from icl_circuits.toy import toy_or_untrained

    if args.model is None:
        model, trained = toy_or_untrained(args.device)
        what = "toy-icl" if trained else "random model of toy-icl's shape (weights not found)"
    else:
        from icl_circuits import load_model

        model, what = load_model(args.model, device=args.device), args.model
    tmpl = None if args.model in (None, "toy-icl") else "{x} -> {y}"
    L = model.cfg.n_layers
    layers = list(range(L + 1)) if args.layers is None else args.layers
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"model: {what}; {args.steps} alternating steps per path (median CPU time), batch {args.batch}, "
          f"{args.threads} thread(s)")
    result: dict = {"model": what, "device": args.device, "threads": args.threads, "steps": args.steps,
                    "batch": args.batch, "layers": layers}
    grad_diff = 0.0
    for k in args.demos:
        batch = build_prompts(model, "antonym", args.batch, k, tmpl, seed=0, variant="zero_shot" if k == 0 else "icl")
        width = int(batch.tokens.shape[1])
        timings, gd = bench(model, batch, layers, args.steps)
        grad_diff = max(grad_diff, gd)
        print(f"\n{k} demos (prompt length {int(batch.final_positions.max()) + 1} tokens)")
        print(f"{'layer':>5} {'cached CPU ms':>15} {'full CPU ms':>13} {'speed-up':>9} {'limit':>7} {'target':>7}")
        rows = {}
        for l, (c, f) in timings.items():
            lim = flops.ltv_limit(model, l, width)
            target = 0.8 * L / (L - l) if l < L else float("inf")
            print(f"{l:>5} {c * 1e3:>15.2f} {f * 1e3:>13.2f} {f / c:>8.2f}x {lim:>6.2f}x {target:>6.2f}x")
            rows[str(l)] = {"cached_ms": round(c * 1e3, 3), "full_ms": round(f * 1e3, 3), "speedup": round(f / c, 3),
                            "flop_limit": round(lim, 3), "target": round(target, 3) if l < L else None}
        result[f"{k}_demos"] = {"tokens": width, "by_layer": rows}
        # the keys of the earlier toy-icl runs
        result["ltv_speedup_by_layer" if k == 0 else f"ltv_speedup_by_layer_{k}demos"] = {
            l: r["speedup"] for l, r in rows.items()}
    print(f"\nmax |grad cached - grad full| over layers and prompt kinds: {grad_diff:.2e}")
    result["ltv_max_grad_diff"] = grad_diff
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
