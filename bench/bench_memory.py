"""Peak memory (process RSS) of each analysis, beside the naive full forward that returns logits at
every position (``model(tokens)``: batch x pos x d_vocab floats; 2.2 GB for Gemma 3 270M at 24
prompts x 16 demos).

Each analysis runs in a fresh subprocess (``--one NAME``), one torch thread: the child loads the
model, builds the prompts (``build_prompts(model, task, prompts, demos, seed=0)`` and whatever else
the analysis needs), returns freed heap to the OS (``malloc_trim``), reads ``VmRSS`` (the baseline:
model, prompts and libraries), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs
the analysis and reads the peak (``VmHWM``). ``extra_mb`` = peak - baseline is the analysis's own
increment (MB = 2**20 bytes); without the reset (not Linux) the peak includes loading, as the table says.

Analyses (``--layers``: default the quarter points of the model's depth):

- ``accuracy``: ``icl_accuracy`` (first token); ``answer_logprob``: teacher-forced whole-answer log
  probability; ``exact_match``: ``greedy_answers`` (key/value cache);
- ``saliency``: ``saliency_flow(loss="full_vocab")``, every layer (one backward);
- ``interchange``: answer-position residuals of source prompt i into target prompt i at ``--layers``
  (source: the same task with other demos and queries, or ``--source-task`` through ``paired_batches``);
- ``patching``: ``patch_grid`` against random-answer twins, middle layer of ``--layers``, demo answers;
- ``head_scan``: exact zero-ablation scan of the heads of the last of ``--layers``;
  ``attribution``: AtP (``head_attribution``) at ``--layers``;
- ``task_vector``: Hendel et al.'s vector at ``--layers`` and its zero-shot evaluation there;
- ``logit_lens``: final-position logit lens at ``--layers``; ``ov``: ``ov_contributions`` of that
  vector injected at the last of ``--layers``;
- ``full_forward``: the naive figure, ``model(tokens)`` on the whole batch at once;
- ``saliency_run_with_cache``, ``interchange_run_with_cache`` (not run by default): naive
  implementations of saliency (TransformerLens's caching hooks forward and backward on every hook
  point, full logits) and interchange (``run_with_cache(source)``, one full hooked forward per layer);
  when run beside ``saliency`` / ``interchange`` the bench checks both give the same numbers.

Prints a table, then as its last line one JSON object:
``{bench, model, task, n_prompts, n_demos, tokens, logits_mb, analyses: {name: {...}}, ...}``.

    python bench/bench_memory.py --model gemma3-270m [--demos 16] [--prompts 24] [--task country-capital]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from timing import parse_only  # bench/timing.py, next to this script

if TYPE_CHECKING:
    from icl_circuits import PromptBatch
    from icl_circuits.core.types import HookedModel

Run = Callable[[], torch.Tensor]
Prepared = tuple[str, Run]  # (what runs, for the table; the measured call)


# ----------------------------------------------------------------------------- /proc readings
def _status_mb(key: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS counter ``VmHWM`` to the current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _settle() -> float:
    """Free what Python and the allocator hold but no longer use; the RSS after that, in MB."""
    gc.collect()
    try:  # hand the loader's freed heap back to the OS, so that no run starts with free memory inside its RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _status_mb("VmRSS")


# ----------------------------------------------------------------------------- the analyses
def _layers(model: HookedModel, args: Namespace) -> list[int]:
    """``--layers``, or the quarter points of the model's depth."""
    L = model.cfg.n_layers
    return list(args.layers) if args.layers else sorted({L // 4, L // 2, 3 * L // 4})


def _names(layers: list[int]) -> str:
    """Layers for a label: ``4, 9, 13``."""
    return ", ".join(map(str, layers))


def _source(model: HookedModel, batch: PromptBatch, args: Namespace) -> tuple[PromptBatch, PromptBatch]:
    """Interchange prompts: (source, target) of ``--source-task`` into ``--task``, or the same task's
    prompts of seed 1 into ``batch``."""
    from icl_circuits import build_prompts
    from icl_circuits.core.pairs import paired_batches

    if args.source_task:
        return paired_batches(model, args.source_task, args.task, args.prompts, args.demos, seed=0)
    return build_prompts(model, args.task, args.prompts, args.demos, seed=1), batch


def _accuracy(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """First-token ICL accuracy."""
    from icl_circuits import icl_accuracy

    return "icl_accuracy (first token)", lambda: torch.tensor(icl_accuracy(model, batch))


def _answer_logprob(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Whole-answer log probability, teacher-forced."""
    from icl_circuits import answer_logprob

    return "answer_logprob (teacher forcing)", lambda: answer_logprob(model, batch)


def _exact_match(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Whole-answer exact match, greedy decoding with the key/value cache."""
    from icl_circuits import greedy_answers

    return "greedy_answers (exact match)", lambda: greedy_answers(model, batch).correct.float()


def _saliency(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Saliency flows of every layer, full-vocabulary loss at the final positions."""
    from icl_circuits.methods.saliency import saliency_flow

    return ("saliency_flow (full_vocab, all layers)",
            lambda: saliency_flow(model, batch, loss="full_vocab", progress=False).per_prompt)


def _interchange(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Interchange at the answer positions, source prompt i into target prompt i."""
    from icl_circuits.methods.interchange import interchange

    src, tgt = _source(model, batch, args)

    def run() -> torch.Tensor:
        return interchange(model, src, tgt, "answers", layers=layers, per_prompt_source=True, exclude_ambiguous=False,
                           progress=False).predictions

    return f"interchange (answers, layers {_names(layers)})", run


def _patching(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Activation patching from ICL prompts into their random-answer twins, one layer, demo answers."""
    from icl_circuits.core.pairs import random_answer_twins
    from icl_circuits.methods.patching import patch_grid

    clean, corrupted, _ = random_answer_twins(model, batch)
    layer = layers[len(layers) // 2]
    return (f"patch_grid (layer {layer} x answers, {len(clean)} prompts)",
            lambda: patch_grid(model, clean, corrupted, layers=[layer], positions="answers").values)


def _head_scan(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Exact zero-ablation scan of one layer's heads."""
    from icl_circuits.methods.heads import head_ablation_scan

    return (f"head_ablation_scan (zero, layer {layers[-1]})",
            lambda: head_ablation_scan(model, batch, layers=layers[-1:], progress=False).per_prompt)


def _attribution(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Attribution patching (AtP) of the heads of ``layers``."""
    from icl_circuits.methods.attribution import head_attribution

    return (f"head_attribution (AtP, layers {_names(layers)})",
            lambda: head_attribution(model, batch, layers=layers).per_prompt)


def _task_vector(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Vanilla task vector extracted at ``layers`` and evaluated on zero-shot prompts there."""
    from icl_circuits import build_prompts
    from icl_circuits.methods.task_vectors import evaluate_task_vector, vanilla_task_vector

    dummy = build_prompts(model, args.task, args.prompts, args.demos, seed=0, variant="dummy_query")
    zero = build_prompts(model, args.task, args.prompts, 0, seed=1, variant="zero_shot")

    def run() -> torch.Tensor:
        tv = vanilla_task_vector(model, dummy, layers)
        return evaluate_task_vector(model, tv, zero, layers=layers).values

    return f"vanilla_task_vector + evaluate_task_vector (layers {_names(layers)})", run


def _logit_lens(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Logit lens at the final position of ``layers``."""
    from icl_circuits.methods.logit_lens import logit_lens

    return f"logit_lens (layers {_names(layers)})", lambda: logit_lens(model, batch, layers).accuracy


def _ov(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """OV decomposition of a vanilla task vector injected at the last of ``layers`` (vector made beforehand)."""
    from icl_circuits import build_prompts
    from icl_circuits.methods.ov_circuits import ov_contributions
    from icl_circuits.methods.task_vectors import vanilla_task_vector

    dummy = build_prompts(model, args.task, args.prompts, args.demos, seed=0, variant="dummy_query")
    tv = vanilla_task_vector(model, dummy, layers[-1:])
    return (f"ov_contributions (layer {layers[-1]}, final position)",
            lambda: ov_contributions(model, batch, tv, layers[-1], keep_head_vectors=False).exact_dla)


def _full_forward(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """The naive figure: one forward of the whole batch with logits at every position."""
    tokens = batch.tokens.to(model.cfg.device)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(tokens)[torch.arange(len(batch)), batch.final_positions].argmax(-1)

    return "naive: model(tokens), logits at every position", run


def _saliency_run_with_cache(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Saliency flows from TransformerLens's caching hooks (forward and backward, every hook point), full logits."""
    from icl_circuits.methods.saliency import flow_masks

    def leaf(x: torch.Tensor, hook: object) -> torch.Tensor:
        """Parameters are frozen: the embedding is the leaf the gradients start from."""
        return x.detach().requires_grad_(True)

    def run() -> torch.Tensor:
        cache, fwd, bwd = model.get_caching_hooks(names_filter=None, incl_bwd=True)
        tokens = batch.tokens.to(model.cfg.device)
        rows = torch.arange(len(batch))
        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)] + fwd, bwd_hooks=bwd):
            logits = model(tokens)  # [batch, pos, d_vocab]
            loss = torch.nn.functional.cross_entropy(logits[rows, batch.final_positions].float(),
                                                     batch.answer_tokens.to(logits.device), reduction="sum")
            loss.backward()
        masks = flow_masks(batch).float()  # [flow, batch, q, k]
        sal = torch.stack([(cache[f"blocks.{l}.attn.hook_pattern"] * cache[f"blocks.{l}.attn.hook_pattern_grad"])
                           .sum(1).abs().float().cpu() for l in range(model.cfg.n_layers)])  # [layer, batch, q, k]
        count = masks.sum((-1, -2)).clamp_min(1)
        return torch.einsum("lbqk,fbqk->flb", sal, masks) / count[:, None]  # [flow, layer, batch]

    return "naive saliency: caching hooks fwd + bwd, full logits", run


def _interchange_run_with_cache(model: HookedModel, batch: PromptBatch, layers: list[int], args: Namespace) -> Prepared:
    """Interchange from ``run_with_cache(source)`` and one full hooked forward of the target per layer."""
    src, tgt = _source(model, batch, args)
    ps, pt = src.positions("answers").positions, tgt.positions("answers").positions
    rows = torch.arange(len(tgt))[:, None].expand_as(pt)

    def run() -> torch.Tensor:
        _, cache = model.run_with_cache(src.tokens.to(model.cfg.device))
        preds = []
        for l in layers:
            name = f"blocks.{l}.hook_resid_pre"

            def hook(act: torch.Tensor, hook: object, name: str = name) -> torch.Tensor:
                act[rows, pt] = cache[name][rows, ps]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(tgt.tokens.to(model.cfg.device), fwd_hooks=[(name, hook)])
            preds.append(logits[torch.arange(len(tgt)), tgt.final_positions].argmax(-1).cpu())
        return torch.stack(preds)

    return f"naive interchange: run_with_cache + full forwards (layers {_names(layers)})", run


ANALYSES: dict[str, Callable[..., Prepared]] = {
    "accuracy": _accuracy, "answer_logprob": _answer_logprob, "exact_match": _exact_match, "saliency": _saliency,
    "interchange": _interchange, "patching": _patching, "head_scan": _head_scan, "attribution": _attribution,
    "task_vector": _task_vector, "logit_lens": _logit_lens, "ov": _ov, "full_forward": _full_forward,
    "saliency_run_with_cache": _saliency_run_with_cache, "interchange_run_with_cache": _interchange_run_with_cache,
}
DEFAULT = [n for n in ANALYSES if not n.endswith("_run_with_cache")]
#: analyses checked against their naive twin: (ours, naive)
PAIRS = (("saliency", "saliency_run_with_cache"), ("interchange", "interchange_run_with_cache"))


# ----------------------------------------------------------------------------- one analysis, in this process
def child(args: Namespace) -> dict:
    """Load, prepare, settle, reset the peak, run ``args.one``; its memory and time."""
    torch.set_num_threads(args.threads)
    from icl_circuits import build_prompts, load_model

    model = load_model(args.model, device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    batch = build_prompts(model, args.task, args.prompts, args.demos, seed=0)
    layers = _layers(model, args)
    label, run = ANALYSES[args.one](model, batch, layers, args)
    base = _settle()
    reset = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_mb("VmHWM")
    return {"analysis": args.one, "label": label, "base_mb": round(base, 1), "peak_mb": round(peak, 1),
            "extra_mb": round(peak - base, 1), "peak_reset": reset, "seconds": round(seconds, 2),
            "cpu_s": round(cpu, 2), "tokens": list(batch.tokens.shape), "d_vocab": model.cfg.d_vocab,
            "out": out.detach().float().cpu().tolist()}


# ----------------------------------------------------------------------------- the driver
def _spawn(name: str, args: Namespace) -> dict:
    """``args`` with ``--one name`` in a fresh interpreter; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--task", args.task,
           "--prompts", str(args.prompts), "--demos", str(args.demos), "--threads", str(args.threads)]
    cmd += ["--layers", *map(str, args.layers)] if args.layers else []
    cmd += ["--source-task", args.source_task] if args.source_task else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"analysis": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict, naive_extra: float | None) -> str:
    """One table line."""
    if "error" in r:
        return f"| {r['analysis']} | failed: {r['error']} | | | | | | |"
    ratio = f"{r['extra_mb'] / naive_extra:.2f}x" if naive_extra else "-"
    peak = f"{r['peak_mb']:,.0f}" + ("" if r["peak_reset"] else " (not reset: includes loading)")
    return (f"| {r['analysis']} | {r['label']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['base_mb']:,.0f} | "
            f"{peak} | {r['extra_mb']:,.0f} | {ratio} |")


def _checks(runs: dict[str, dict]) -> dict:
    """Same numbers from each analysis and its naive twin, where both ran."""
    out = {}
    for ours, naive in PAIRS:
        a, b = runs.get(ours, {}), runs.get(naive, {})
        if "out" in a and "out" in b:
            x, y = torch.tensor(a["out"]), torch.tensor(b["out"])
            out[f"{ours}_vs_{naive}"] = (float(((x - y).abs() / y.abs().clamp_min(1e-12)).max())
                                         if ours == "saliency" else bool(torch.equal(x, y)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--task", default="country-capital")
    ap.add_argument("--source-task", default=None,
                    help="interchange source task (paired_batches); default: the task itself, other prompts")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--demos", type=int, default=16)
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: the quarter points of the depth")
    ap.add_argument("--analyses", nargs="+", default=DEFAULT, choices=list(ANALYSES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", choices=list(ANALYSES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parse_only(args)
    if args.one:
        print(json.dumps(child(args)))
        return {}
    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    for name in args.analyses:  # one after the other: each peak is its own, and one heavy process at a time
        runs[name] = _spawn(name, args)
        r = runs[name]
        print(f"{name}: " + (f"failed: {r['error']}" if "error" in r else
                             f"extra {r['extra_mb']:,.0f} MB, peak {r['peak_mb']:,.0f} MB, {r['seconds']:.1f} s"),
              flush=True)
    ok = [r for r in runs.values() if "error" not in r]
    B, W = ok[0]["tokens"] if ok else (0, 0)
    logits_mb = B * W * (ok[0]["d_vocab"] if ok else 0) * 4 / 2**20
    naive_extra = runs.get("full_forward", {}).get("extra_mb")
    print(f"\n{args.model}, task {args.task}, {args.prompts} prompts x {args.demos} demos ({B} x {W} tokens), "
          f"{args.threads} torch thread(s); full-vocabulary logits at every position: {logits_mb:,.0f} MB\n")
    print("| analysis | what runs | s | CPU s | baseline RSS MB | peak RSS MB | extra MB | extra / naive extra |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs.values():
        print(_row(r, naive_extra))
    out = {"bench": "memory", "model": args.model, "task": args.task, "n_prompts": args.prompts,
           "n_demos": args.demos, "threads": args.threads, "tokens": [B, W], "logits_mb": round(logits_mb, 1),
           "analyses": {n: {k: v for k, v in r.items() if k not in ("out", "analysis")} for n, r in runs.items()},
           "checks": _checks(runs), "total_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any("error" in r for r in result.get("analyses", {}).values()) else 0)
