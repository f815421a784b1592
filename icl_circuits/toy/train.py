"""Training recipe for the bundled ICL model (``python -m icl_circuits.toy.train``).

A HookedTransformer is trained from scratch on ICL sequences of the task library, rendered with
the toolkit's default template (``<bos>x1:y1\\nx2:y2\\n...``), with the loss on every answer token:
answer i is predicted from the i demonstrations before it, so one sequence trains every number of
demos at once. Knowledge and algorithmic tasks are fixed mappings the model must memorize (the
demos only identify the task); categorization tasks draw their two label words per sequence from
a pool of 16, so the class-to-word binding can only come from the context.

Curriculum (see ../shared/TOY_MODEL_NOTES.md): categorization only for the first
``curriculum_steps``, then all tasks. Optionally a format bridge: for the first ``bridge_steps``
the categorization sequences are written in ``bridge_example`` (e.g. ``"{x} {y}"``, no separator
token, where matching a query to the demos of its class needs one composition less; see
scripts/toy_separator_experiment.py), then in the template's own format. Optionally an order
among the categorization tasks: for the first ``early_task_steps`` only ``early_tasks`` are drawn
(e.g. ``number``, whose class is read off one token, before ``letter-string`` and ``point``,
whose class needs two tokens combined). Weights are saved at every evaluation. AdamW with warmup, a
flat learning rate, and a linear decay over the last ``decay_fraction`` of the steps. Deterministic for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from icl_circuits.core.prompts import Template
from icl_circuits.core.tasks import Task, get_task
from icl_circuits.toy import TOKENIZER_DIR, TOY_TASKS, WEIGHTS_DIR
from icl_circuits.toy.tokenizer import build_toy_tokenizer


@dataclass
class ToyRecipe:
    """Every choice of the recipe; saved next to the weights."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 256
    steps: int = 9000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    decay_fraction: float = 0.25
    curriculum_steps: int = 3000
    pairs_per_sequence: int = 13
    categorization_fraction: float = 0.4
    eval_every: int = 500
    seed: int = 0
    threads: int = 1
    init_from: str = ""  # a weights directory to start from (a second training stage), "" = scratch
    example: str = "{x}:{y}"  # the template's example format; "{x} {y}" drops the separator token
    tasks: str = ""  # comma-separated task names to train on, "" = the whole task library
    bridge_example: str = ""  # categorization sequences use this format for the first bridge_steps
    bridge_steps: int = 0
    early_tasks: str = ""  # comma-separated categorization tasks that alone are drawn for the first early_task_steps
    early_task_steps: int = 0


def model_config(recipe: ToyRecipe, d_vocab: int) -> dict:
    """HookedTransformerConfig keyword arguments for the recipe (saved as config.json)."""
    d_head = recipe.d_model // recipe.n_heads
    return dict(
        n_layers=recipe.n_layers, d_model=recipe.d_model, n_heads=recipe.n_heads, d_head=d_head,
        d_mlp=recipe.d_mlp, n_ctx=recipe.n_ctx, d_vocab=d_vocab, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=d_head,
        default_prepend_bos=True, model_name="toy-icl",
    )


class SequenceSampler:
    """Token ids of ICL sequences in the default template, assembled from cached word ids.

    The toy tokenizer is word level, so the ids of a rendered prompt are the concatenation of the
    ids of its pieces; ``tests/test_toy.py`` checks this against ``build_prompts``.
    """

    def __init__(self, tokenizer, template: Template = Template()):
        self.tok = tokenizer
        self._cache: dict[str, list[int]] = {}
        before, sep, after = template.parts
        self.before, self.sep, self.after = self.ids(before), self.ids(sep), self.ids(after)
        self.joiner = self.ids(template.joiner)
        self.prefix = self.ids(template.prefix)

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        return self._cache[text]

    def sequence(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """(ids, indices of every answer token) for one sequence of (x, y) pairs."""
        ids = [self.tok.bos_token_id, *self.prefix]
        answer_idx: list[int] = []
        for i, (x, y) in enumerate(pairs):
            if i:
                ids += self.joiner
            ids += self.before + self.ids(x) + self.sep
            answer_idx += list(range(len(ids), len(ids) + len(self.ids(y))))
            ids += self.ids(y) + self.after
        return ids, answer_idx


def _batch(sampler: SequenceSampler, tasks: list[Task], n: int, n_pairs: int, rng: np.random.Generator):
    seqs = [sampler.sequence(tasks[int(rng.integers(len(tasks)))].sample_episode(n_pairs, rng).pairs) for _ in range(n)]
    width = max(len(s) for s, _ in seqs)
    tokens = torch.full((n, width), sampler.tok.pad_token_id, dtype=torch.long)
    targets = torch.full((n, width), -100, dtype=torch.long)  # target at t = token t+1 if an answer
    for b, (s, ans) in enumerate(seqs):
        tokens[b, : len(s)] = torch.tensor(s)
        for a in ans:
            targets[b, a - 1] = s[a]
    return tokens, targets


def answer_logits(model: HookedTransformer, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logits at the positions that predict an answer token (unembedding only those)."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    sel = resid[targets != -100][None]
    return model.unembed(model.ln_final(sel))[0]


def _n_categorization(r: ToyRecipe, step: int, has_cat: bool, has_mapping: bool) -> int:
    """How many sequences of the batch are categorization (curriculum first, then the mix)."""
    if not has_mapping or (has_cat and step < r.curriculum_steps):
        return r.batch_size
    return int(round(r.batch_size * r.categorization_fraction)) if has_cat else 0


def _early_tasks(r: ToyRecipe, cat: list[Task]) -> list[Task]:
    """The categorization tasks drawn alone for the first ``early_task_steps`` (default: all of them)."""
    if not r.early_tasks:
        return cat
    names = [n.strip() for n in r.early_tasks.split(",")]
    by_name = {t.name: t for t in cat}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"early_tasks must name categorization tasks the recipe trains on "
                         f"({', '.join(by_name) or 'none'}), got {', '.join(unknown)}")
    return [by_name[n] for n in names]


def _lr_at(step: int, r: ToyRecipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    decay_start = int(r.steps * (1 - r.decay_fraction))
    if step < decay_start:
        return r.lr
    return r.lr * max(0.0, (r.steps - step) / max(1, r.steps - decay_start))


@torch.no_grad()
def evaluate_sequences(model, sampler, tasks: list[Task], n_seq: int, n_pairs: int, seed: int) -> dict:
    """Accuracy of the first answer token at every pair index (= number of demos), per task."""
    out = {}
    for t in tasks:
        rng = np.random.default_rng([seed, 7])
        tokens, targets = _batch(sampler, [t], n_seq, n_pairs, rng)
        # only the first token of each answer counts, and the pair index is its demo count
        logits = model(tokens)
        correct = np.zeros(n_pairs)
        for b in range(n_seq):
            idx = (targets[b] != -100).nonzero().flatten().tolist()
            firsts = [i for j, i in enumerate(idx) if j == 0 or idx[j - 1] != i - 1]
            for k, i in enumerate(firsts[:n_pairs]):
                correct[k] += float(logits[b, i].argmax() == targets[b, i])
        out[t.name] = (correct / n_seq).round(3).tolist()
    return out


def first_step_reaching(evals: list[dict], task: str, threshold: float = 0.9, n_demos: int = 8,
                        trained_format: bool = False) -> int | None:
    """The first evaluation step of a training log at which ``task`` reached ``threshold`` with ``n_demos``
    demos (None if never): in the final format, or with ``trained_format`` in the format trained at that
    step (the bridge format while bridging)."""
    for e in evals:
        acc = e.get("acc_by_demos_bridge", e["acc_by_demos"]) if trained_format else e["acc_by_demos"]
        if task in acc and acc[task][n_demos] >= threshold:
            return e["step"]
    return None


def train(recipe: ToyRecipe, out_dir: str | Path, progress: bool = True) -> HookedTransformer:
    """Train the toy model by ``recipe`` and save weights, config and log to ``out_dir``."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    tok = build_toy_tokenizer()
    cfg = HookedTransformerConfig(**model_config(recipe, len(tok)), seed=recipe.seed)
    model = HookedTransformer(cfg)
    if recipe.init_from:  # continue from an earlier stage's weights (same architecture)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(recipe.init_from) / "model.safetensors")), strict=False)
    sampler = SequenceSampler(tok, Template(example=recipe.example))
    bridge = SequenceSampler(tok, Template(example=recipe.bridge_example)) if recipe.bridge_steps else sampler
    names = [n.strip() for n in recipe.tasks.split(",")] if recipe.tasks else list(TOY_TASKS)
    tasks = [get_task(n) for n in names]
    cat = [t for t in tasks if t.kind == "categorization"]
    mapping = [t for t in tasks if t.kind != "categorization"]
    early = _early_tasks(recipe, cat)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    rng = np.random.default_rng(recipe.seed)
    log: list[dict] = []
    losses: list[float] = []
    t0 = time.time()
    for step in range(recipe.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe)
        # categorization and mapping sequences differ in length: pad each sub-batch on its own
        n_cat = _n_categorization(recipe, step, bool(cat), bool(mapping))
        cat_sampler = bridge if step < recipe.bridge_steps else sampler
        cat_now = early if step < recipe.early_task_steps else cat
        parts = [_batch(cat_sampler, cat_now, n_cat, recipe.pairs_per_sequence, rng)] if n_cat else []
        if n_cat < recipe.batch_size:
            parts.append(_batch(sampler, mapping, recipe.batch_size - n_cat, recipe.pairs_per_sequence, rng))
        n_targets = sum(int((y != -100).sum()) for _, y in parts)
        loss = sum(
            F.cross_entropy(answer_logits(model, t, y), y[y != -100], reduction="sum") for t, y in parts
        ) / n_targets
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        if progress and (step % 100 == 0 or step == recipe.steps - 1):
            el = time.time() - t0
            print(f"step {step:5d} loss {loss.item():.4f} lr {_lr_at(step, recipe):.2e} "
                  f"{el / (step + 1):.3f}s/step elapsed {el / 60:.1f}min", flush=True)
        if (step + 1) % recipe.eval_every == 0 or step == recipe.steps - 1:
            model.eval()
            acc = evaluate_sequences(model, sampler, cat + mapping, 32, 9, seed=recipe.seed + 1)
            entry = {"step": step + 1, "loss": round(loss.item(), 4), "acc_by_demos": acc}
            if step < recipe.bridge_steps and cat:  # also in the format categorization is trained in now
                entry["acc_by_demos_bridge"] = evaluate_sequences(model, bridge, cat, 32, 9, seed=recipe.seed + 1)
            model.train()
            log.append(entry)
            # a checkpoint at every evaluation, so a long run that is stopped still leaves weights
            save(model, tok, recipe, out_dir, {"evals": log, "losses": losses}, time.time() - t0)
            if progress:
                print(f"eval step {step + 1}: acc with 8 demos "
                      + " ".join(f"{k}={v[8]:.2f}" for k, v in acc.items()), flush=True)
                if "acc_by_demos_bridge" in entry:
                    print("  in the bridge format: "
                          + " ".join(f"{k}={v[8]:.2f}" for k, v in entry["acc_by_demos_bridge"].items()), flush=True)
    model.eval()
    save(model, tok, recipe, out_dir, {"evals": log, "losses": losses}, time.time() - t0)
    return model


def save(model: HookedTransformer, tok, recipe: ToyRecipe, out_dir: str | Path, log: dict, seconds: float) -> None:
    """Write model.safetensors, config.json and training.json to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(model_config(recipe, len(tok)), indent=2))
    record = {"recipe": asdict(recipe), "command": recipe_command(recipe, out), "seconds": round(seconds, 1),
              "torch": torch.__version__, "log": log}
    previous = Path(recipe.init_from) / "training.json"
    if recipe.init_from and previous.exists():  # the stage before this one, so the chain stays on record
        record["previous_stage"] = json.loads(previous.read_text())
    (out / "training.json").write_text(json.dumps(record, indent=2))


def training_stages(record: dict) -> list[dict]:
    """The training records of a weights directory's stages, first to last (``previous_stage`` links them)."""
    chain = [record]
    while "previous_stage" in chain[0]:
        chain.insert(0, chain[0]["previous_stage"])
    return chain


def recipe_command(recipe: ToyRecipe, out_dir: str | Path) -> str:
    """The shell command that trains ``recipe`` into ``out_dir`` (only options that differ from the defaults)."""
    flags = [f"--out {shlex.quote(str(out_dir))}"]
    for name, value in asdict(recipe).items():
        if value != getattr(ToyRecipe, name):
            flags.append(f"--{name.replace('_', '-')} {shlex.quote(str(value))}")
    return "python -m icl_circuits.toy.train " + " ".join(flags)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="directory for the weights (default: the package's)")
    for f, v in asdict(ToyRecipe()).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--save-tokenizer", action="store_true", help=f"also write the tokenizer to {TOKENIZER_DIR}")
    a = vars(p.parse_args(argv))
    out, save_tok = a.pop("out"), a.pop("save_tokenizer")
    if save_tok:
        build_toy_tokenizer().save_pretrained(str(TOKENIZER_DIR))
    train(ToyRecipe(**a), out)


if __name__ == "__main__":
    main()
