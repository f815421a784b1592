"""Learned task vectors: training steps with the cached prefix vs through the full model.

For each injection layer l (input of block l; l = n_layers is the final residual) we time N
training steps (forward, backward to theta, AdamW step; process CPU time, since the machine is
shared) on the same minibatch, once resuming at
block l from the residual read once (``ltv_loss(..., resid=...)``, what ``train_task_vector``
does) and once running the whole frozen model, and compare the gradients of the two paths.
Zero-shot prompts (the published setting) and 8-demo prompts (longer sequences) are both timed.
Runs on the bundled toy-icl when its weights exist, else on a random model of the same shape.

    .venv/bin/python bench/bench_ltv.py          # last line: one JSON object
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icl_circuits import build_prompts  # noqa: E402
from icl_circuits.core.runner import read_resid
from icl_circuits.methods.learned import ltv_loss  # noqa: E402
from icl_circuits.toy import toy_or_untrained  # noqa: E402

STEPS = 30
BATCH = 32


class Stepper:
    """One training step at a time (forward, backward to theta, AdamW step) on one path."""

    def __init__(self, model, batch, layer, resid):
        self.model, self.batch, self.layer, self.resid = model, batch, layer, resid
        self.theta = torch.nn.Parameter(torch.zeros(1, model.cfg.d_model))
        self.opt = torch.optim.AdamW([self.theta], lr=5e-3, weight_decay=0.01)

    def __call__(self) -> float:
        t0 = time.process_time()
        loss, _ = ltv_loss(self.model, self.batch, self.theta, [self.layer], resid=self.resid)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.process_time() - t0


def bench(model, batch):
    out, grad_diff = {}, 0.0
    for l in range(model.cfg.n_layers + 1):
        resid = read_resid(model, batch, None, [l])[0]
        theta = (torch.rand(1, model.cfg.d_model, generator=torch.Generator().manual_seed(l)) * 0.2 - 0.1).requires_grad_()
        (g_c,) = torch.autograd.grad(ltv_loss(model, batch, theta, [l], resid=resid)[0], theta)
        (g_f,) = torch.autograd.grad(ltv_loss(model, batch, theta, [l])[0], theta)
        grad_diff = max(grad_diff, float((g_c - g_f).abs().max()))
        cached, full = Stepper(model, batch, l, resid), Stepper(model, batch, l, None)
        cached(), full()  # warm-up
        # Process CPU time (1 thread), not wall time: the machine is shared, and other processes'
        # load would otherwise dominate. Steps alternate between the paths; medians resist spikes.
        tc, tf = zip(*[(cached(), full()) for _ in range(STEPS)])
        out[l] = (statistics.median(tc), statistics.median(tf))
    return out, grad_diff


def main() -> None:
    torch.set_num_threads(1)
    model, trained = toy_or_untrained()
    what = "toy-icl" if trained else "random model of toy-icl's shape (weights not found)"
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"model: {what}; {STEPS} alternating steps per path (median CPU time), batch {BATCH}, 1 thread")
    result = {}
    grad_diff = 0.0
    for k in (0, 8):
        batch = build_prompts(model, "antonym", BATCH, k, seed=0, variant="zero_shot" if k == 0 else "icl")
        timings, gd = bench(model, batch)
        grad_diff = max(grad_diff, gd)
        print(f"\n{k} demos (prompt length {int(batch.final_positions.max()) + 1} tokens)")
        print(f"{'layer':>5} {'cached CPU ms':>15} {'full CPU ms':>13} {'speed-up':>9}")
        for l, (c, f) in timings.items():
            print(f"{l:>5} {c * 1e3:>15.2f} {f * 1e3:>13.2f} {f / c:>8.2f}x")
        result[k] = {str(l): round(f / c, 3) for l, (c, f) in timings.items()}
    print(f"\nmax |grad cached - grad full| over layers and prompt kinds: {grad_diff:.2e}")
    print(json.dumps({"ltv_speedup_by_layer": result[0], "ltv_speedup_by_layer_8demos": result[8],
                      "ltv_max_grad_diff": grad_diff, "model": what}))


if __name__ == "__main__":
    main()
