"""Analysis subcommands of the ``icl-circuits`` command line (registered on ``cli.cli``).

Each takes ``--model`` (default toy-icl), ``--json`` (the last printed line is one JSON object)
and ``--out DIR`` (writes the result and ``figure.html``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from icl_circuits.cli import common as _cli
from icl_circuits.cli.common import _check_task, cli, emit_json, model_option


def out_problem(path: str | Path, *, directory: bool = True) -> str | None:
    """Why ``path`` cannot be written (None if it can): for ``directory=True`` ``path`` is a directory
    to create or fill, else a file whose directory is created. The nearest existing ancestor must be
    a writable directory (checked before an analysis runs, so that it does not fail at the end)."""
    p = Path(path).expanduser()
    if directory and p.exists() and not p.is_dir():
        return f"{str(path)!r} is a file, not a directory"
    if not directory and p.is_dir():
        return f"{str(path)!r} is a directory, not a file"
    anc = p if directory else p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        return f"cannot create {str(path)!r}: {str(anc)!r} is a file, not a directory"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"cannot create {str(path)!r}: {str(anc)!r} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{str(path)!r} is not writable"
    return None


class _OutDir(click.Path):
    """A ``--out DIR`` that must be creatable and writable: checked when the options are parsed."""

    def __init__(self) -> None:
        super().__init__(file_okay=False)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        value = super().convert(value, param, ctx)
        problem = out_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        return value


OUT_DIR = _OutDir()


def _write_out(out: str, figures: dict[str, Any], results: dict[str, Any] | None = None,
               summary: dict | None = None) -> None:
    """Write ``--out DIR``: each result by ``Result.save(DIR/stem)``, ``summary`` as ``result.json``, and
    each figure (or list of figures, one page) as self-contained HTML; then say what was written."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    if summary is not None:
        (d / "result.json").write_text(json.dumps(summary, indent=1, default=float))
    for stem, res in (results or {}).items():
        res.save(d / stem)
    for name, fig in figures.items():
        if isinstance(fig, list):
            html = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(fig))
            (d / name).write_text(f"<html><head><meta charset='utf-8'></head><body>{html}</body></html>")
        else:
            fig.write_html(str(d / name), include_plotlyjs=True)
    files = [str(d / "result.json"), *(str(d / name) for name in figures)]
    click.echo(f"wrote {', '.join(files[:-1])} and {files[-1]}")

@cli.command("dpca")
@model_option
@click.option("--task", default="letter-string", show_default=True, help="A categorization task (letter-string, number, point).")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=128, show_default=True, type=click.IntRange(min=1), help="Number of prompts.")
@click.option("--position", default="answer", show_default=True,
              type=click.Choice(["answer", "separator", "delimiter", "final"]), help="Where states are read.")
@click.option("--components", "n_components", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--regularizer", default="auto", show_default=True, help="'auto' (cross-validated), 'none' or a float lambda.")
@click.option("--n-null", "n_null", default=20, show_default=True, type=click.IntRange(min=0),
              help="Null draws (condition labels redrawn, whole fit repeated) for the p-values; 20 lets p reach "
                   "1/21 < 0.05. Fitting time grows about (1 + N)-fold; 0 skips the null.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer numbers.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json(+.safetensors) and DIR/figure.html.")
def dpca_cmd(model: str, task: str, n_demos: int, n_prompts: int, position: str, n_components: int,
             regularizer: str, n_null: int, seed: int, as_json: bool, out: str | None) -> None:
    """dPCA of label-position states per layer: variance per marginalization, cluster distances."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.dpca.analysis import dpca_by_layer
    from icl_circuits.methods.dpca.states import categorization_task

    _check_task(task)
    if regularizer.lower() in ("auto", "none"):
        reg: Any = None if regularizer.lower() == "none" else "auto"
    else:
        try:
            reg = float(regularizer)
        except ValueError:
            raise click.BadParameter(f"expected 'auto', 'none' or a float, got {regularizer!r}", param_hint="--regularizer")
    m = _cli._load(model)
    t0 = time.time()
    try:
        categorization_task(task, "dpca")  # refused before any prompt is drawn
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        res = dpca_by_layer(m, batch, n_components=n_components, regularizer=reg, position=position,
                            n_null=n_null, seed=seed, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"dPCA of {model}, task {task}, {position} positions ({n_prompts} prompts x {n_demos} demos, "
               f"seed {seed}, {n_null} null draws, {time.time() - t0:.1f}s)")
    click.echo("fraction of condition-mean variance per marginalization:")
    click.echo(res.variance_table().round(3).to_string())
    own = {f: f if f in res.marginalizations else "dpca" for f in res.factors}
    dist = res.distance_table("full").add_suffix(" (full)")
    for f in res.factors:
        dist[f"{f} ({own[f]} subspace)"] = res.distance_table(own[f])[f]
    click.echo("mean Mahalanobis distance between clusters:")
    click.echo(dist.round(3).to_string())
    if out:
        from icl_circuits.viz.dpca import summary

        _write_out(out, {"figure.html": summary(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "task": task, "position": position, "seed": seed, "n_prompts": n_prompts,
                   "n_demos": n_demos, "n_null": n_null, "marginalizations": res.marginalizations, "factors": res.factors,
                   "layers": res.summary()})


@cli.command("saliency")
@model_option
@click.option("--task", default="number", show_default=True, help="Task name.")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=64, show_default=True, type=click.IntRange(min=1), help="Number of prompts.")
@click.option("--loss", default="label_words", show_default=True, type=click.Choice(["label_words", "full_vocab"]),
              help="Softmax of the loss over the label words or the whole vocabulary.")
@click.option("--proportions", is_flag=True, help="Report each layer's flows as fractions of their sum.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with S_wp, S_pq, S_ww per layer.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json(+.safetensors), DIR/figure.html and DIR/heatmap.html.")
def saliency_cmd(model: str, task: str, n_demos: int, n_prompts: int, loss: str, proportions: bool,
                 batch_size: int, seed: int, as_json: bool, out: str | None) -> None:
    """Saliency flow (label words as anchors): S_wp, S_pq, S_ww per layer."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.saliency import saliency_flow

    _check_task(task)
    m = _cli._load(model)
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        res = saliency_flow(m, batch, loss, proportions=proportions, batch_size=batch_size, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"saliency flow of {model}, task {task} ({n_prompts} prompts x {n_demos} demos, loss {loss}, "
               f"seed {seed}, {time.time() - t0:.1f}s)")
    table = res.to_dataframe().pivot(index="layer", columns="flow", values="value")[res.flow_names]
    click.echo(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if out:
        from icl_circuits.viz.saliency import flows, heatmap

        _write_out(out, {"figure.html": flows(res), "heatmap.html": heatmap(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "n_prompts": n_prompts, "n_demos": n_demos,
                   "loss": loss, "proportions": proportions, "layers": res.layers,
                   **{name: res.flow(name).tolist() for name in res.flow_names}})


def _interchange_layers(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,1,2, got {value!r}", param_hint="--layers")


@cli.command("interchange")
@model_option
@click.option("--source", required=True, help="Source task A (whose activations are written in).")
@click.option("--target", required=True, help="Target task B (whose prompts are run).")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=50, show_default=True, type=click.IntRange(min=1), help="Target (and source) prompts.")
@click.option("--positions", default="answers,answer_0,answer_-1,demo_tokens,query", show_default=True,
              help="Comma-separated position sets, each run separately (join names with '+' for a union).")
@click.option("--layers", default=None, help="Comma-separated layers (default: every block input).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer rates.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json (+ one result per set) and DIR/figure.html.")
def interchange_cmd(model: str, source: str, target: str, n_demos: int, n_prompts: int, positions: str,
                    layers: str | None, seed: int, as_json: bool, out: str | None) -> None:
    """Multi-position interchange (Cheng & Zhang): transfer / preserve / neither rate per layer."""
    import re
    from icl_circuits.methods.interchange import interchange
    from icl_circuits.core.pairs import paired_batches
    _check_task(source), _check_task(target)
    sets = [p.strip() for p in positions.split(",") if p.strip()]
    if not sets:
        raise click.BadParameter("expected at least one position set", param_hint="--positions")
    m = _cli._load(model)
    t0 = time.time()
    try:
        src, tgt = paired_batches(m, source, target, n_prompts, n_demos, seed=seed)
        results = [interchange(m, src, tgt, s, _interchange_layers(layers), seed=seed, progress=False) for s in sets]
    except ValueError as err:
        raise click.UsageError(str(err))
    r0 = results[0]
    click.echo(f"interchange {source} -> {target} on {model} ({n_prompts} prompts x {n_demos} demos, n={r0.n}, "
               f"seed {seed}, {time.time() - t0:.1f}s); clean: transfer {r0.baseline['transfer']:.2f}, "
               f"preserve {r0.baseline['preserve']:.2f}")
    click.echo("transfer rate [Wilson 95%] per layer:")
    for r in results:
        cells = "  ".join(f"L{l} {v:.2f} [{a:.2f},{b:.2f}]" for l, v, a, b in
                          zip(r.layers, r.rate("transfer").tolist(), r.low[0].tolist(), r.high[0].tolist()))
        click.echo(f"  {r.position_set:<16} {cells}")
    summary = {"model": model, "source": source, "target": target, "n_demos": n_demos, "n_prompts": n_prompts,
               "seed": seed, "n_scored": r0.n, "clean": r0.baseline,
               "positions": {r.position_set: {"layers": r.layers, "n": r.n, **{
                   o: {k: [round(v, 4) for v in t[j].tolist()] for k, t in (("value", r.rates), ("low", r.low), ("high", r.high))}
                   for j, o in enumerate(("transfer", "preserve", "neither"))}} for r in results}}
    if out:
        from icl_circuits.viz.interchange import interchange as plot

        _write_out(out, {"figure.html": plot(results, outcomes=("transfer", "preserve"))}, summary=summary,
                   results={"interchange_" + re.sub(r"[^\w.-]+", "_", r.position_set): r for r in results})
    if as_json:
        emit_json(summary)


@cli.command("necessity")
@model_option
@click.option("--task", default="english-french", show_default=True, help="Task name.")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=50, show_default=True, type=click.IntRange(min=1), help="Number of prompts.")
@click.option("--positions", default="answer_-1,answers,demo_tokens,query", show_default=True,
              help="Comma-separated position sets, each corrupted separately (join names with '+' for a union).")
@click.option("--how", default="noise", show_default=True, type=click.Choice(["noise", "zero", "mean"]),
              help="Corruption: relative Gaussian noise (as large as the activation), zero or mean ablation.")
@click.option("--noise-scale", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Noise standard deviation relative to ||h|| / sqrt(d_model) (--how noise).")
@click.option("--layers", default=None, help="Comma-separated layers (default: every block input).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer accuracy drop.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json (+ one result per set) and DIR/figure.html.")
def necessity_cmd(model: str, task: str, n_demos: int, n_prompts: int, positions: str, how: str, noise_scale: float,
                  layers: str | None, seed: int, as_json: bool, out: str | None) -> None:
    """Necessity test (Cheng & Zhang): first-token accuracy drop per layer with a position set corrupted."""
    import re
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.necessity import necessity
    _check_task(task)
    sets = [p.strip() for p in positions.split(",") if p.strip()]
    if not sets:
        raise click.BadParameter("expected at least one position set", param_hint="--positions")
    m = _cli._load(model)
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        results = [necessity(m, batch, s, _interchange_layers(layers), how=how, noise_scale=noise_scale, seed=seed,
                             progress=False) for s in sets]
    except ValueError as err:
        raise click.UsageError(str(err))
    r0 = results[0]
    click.echo(f"necessity ({how}) on {task} with {model} ({n_prompts} prompts x {n_demos} demos, seed {seed}, "
               f"{time.time() - t0:.1f}s); clean first-token accuracy {r0.baseline:.2f}")
    click.echo("accuracy drop [Wilson 95%] per layer:")
    for r in results:
        cells = "  ".join(f"L{l} {d:.2f} [{r.baseline - h:.2f},{r.baseline - lo:.2f}]" for l, d, lo, h in
                          zip(r.layers, r.drop.tolist(), r.low.tolist(), r.high.tolist()))
        click.echo(f"  {r.position_set:<16} {cells}")
    summary = {"model": model, "task": task, "n_demos": n_demos, "n_prompts": n_prompts, "how": how,
               "noise_scale": noise_scale, "seed": seed, "metric": "first_token", "clean": r0.baseline,
               "positions": {r.position_set: {"layers": r.layers, "accuracy": [round(v, 4) for v in r.values.tolist()],
                                              "drop": [round(v, 4) for v in r.drop.tolist()],
                                              "drop_low": [round(r.baseline - v, 4) for v in r.high.tolist()],
                                              "drop_high": [round(r.baseline - v, 4) for v in r.low.tolist()]}
                             for r in results}}
    if out:
        from icl_circuits.viz.interchange import necessity as plot

        _write_out(out, {"figure.html": plot(results)}, summary=summary,
                   results={"necessity_" + re.sub(r"[^\w.-]+", "_", r.position_set): r for r in results})
    if as_json:
        emit_json(summary)


@cli.command("probe")
@model_option
@click.option("--tasks", default="antonym,english-french,english-german", show_default=True,
              help="Comma-separated tasks whose identity the probe decodes.")
@click.option("--position", default="answer", show_default=True,
              help="Position set: answer, separator, delimiter, final, or a single position like answer_-1.")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=50, show_default=True, type=click.IntRange(min=2), help="Prompts per task.")
@click.option("--layers", default=None, help="Comma-separated layers (default: 0..n_layers).")
@click.option("--cv", default=5, show_default=True, type=click.IntRange(min=2), help="Cross-validation folds.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer accuracy.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json(+.safetensors) and DIR/figure.html.")
def probe_cmd(model: str, tasks: str, position: str, n_demos: int, n_prompts: int, layers: str | None, cv: int,
              seed: int, as_json: bool, out: str | None) -> None:
    """Linear probes decoding the task identity from the residual stream, per layer."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.probing import probe_by_layer

    names = [_check_task(t.strip()) for t in tasks.split(",") if t.strip()]
    if len(names) < 2:
        raise click.BadParameter(f"name at least two tasks to decode the task identity, got {names}",
                                 param_hint="--tasks")
    m = _cli._load(model)
    t0 = time.time()
    try:
        data = {t: build_prompts(m, t, n_prompts, n_demos, seed=seed) for t in names}  # one batch per task
        res = probe_by_layer(m, data, position, _interchange_layers(layers), seed=seed, cv=cv, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"task-identity probe on {model} at {position} ({len(names)} tasks x {n_prompts} prompts x "
               f"{n_demos} demos, {cv}-fold CV, seed {seed}, {time.time() - t0:.1f}s); chance {res.chance:.2f}")
    click.echo(res.to_dataframe()[["layer", "accuracy", "low", "high", "control"]].round(3).to_string(index=False))
    if out:
        from icl_circuits.viz.interchange import probe_vs_transfer

        _write_out(out, {"figure.html": probe_vs_transfer(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "tasks": names, "position": position, "seed": seed, "n_prompts": n_prompts,
                   "n_demos": n_demos, "cv": cv, "chance": res.chance, "layers": res.layers,
                   **{k: [round(v, 4) for v in t.tolist()] for k, t in (("accuracy", res.accuracy), ("low", res.low),
                                                                         ("high", res.high), ("shuffled_control", res.control))}})


@cli.command("heads")
@model_option
@click.option("--task", default="antonym", show_default=True, help="Task name.")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=0), help="Demos per prompt.")
@click.option("--prompts", "n_prompts", default=32, show_default=True, type=click.IntRange(min=1), help="Number of prompts.")
@click.option("--how", default="zero", show_default=True, type=click.Choice(["zero", "mean"]), help="Ablation.")
@click.option("--metric", default="logit_diff_to_mean", show_default=True,
              type=click.Choice(["logit_diff_to_mean", "logit_diff", "gold_prob", "accuracy"]),
              help="Scan metric (core.metrics; attribution uses logit_diff_to_mean when this is accuracy).")
@click.option("--positions", default="all", show_default=True, type=click.Choice(["all", "final"]), help="Positions ablated.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-head numbers.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json(+.safetensors) and DIR/figure.html.")
def heads_cmd(model: str, task: str, n_demos: int, n_prompts: int, how: str, metric: str, positions: str, seed: int,
              as_json: bool, out: str | None) -> None:
    """Ablate each attention head alone (exact, batched) and estimate it by attribution patching."""
    from icl_circuits.methods.attribution import head_attribution, scan_agreement
    from icl_circuits.methods.heads import head_ablation_scan
    from icl_circuits.core.prompts import build_prompts

    _check_task(task)
    m = _cli._load(model)
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        scan = head_ablation_scan(m, batch, how, metric=metric, positions=positions, progress=False)
        t_scan = time.time() - t0
        attr_metric = "logit_diff_to_mean" if metric == "accuracy" else metric
        exact_for_attr = scan if attr_metric == metric else head_ablation_scan(
            m, batch, how, metric=attr_metric, positions=positions, progress=False)
        t1 = time.time()
        attr = head_attribution(m, batch, how, metric=attr_metric, positions=positions)
        t_attr = time.time() - t1
    except ValueError as err:
        raise click.UsageError(str(err))
    import dataclasses
    import warnings

    with warnings.catch_warnings():  # said on stdout below, next to the numbers
        warnings.simplefilter("ignore", UserWarning)
        agree = scan_agreement(exact_for_attr, attr)
    attr = dataclasses.replace(attr, meta={**attr.meta, "agreement": agree})
    click.echo(f"Head ablation ({how}, {positions} positions) of {model}, task {task} ({n_prompts} prompts x "
               f"{n_demos} demos, seed {seed}); clean {metric} {float(scan.clean.mean()):.3f}; "
               f"scan {t_scan:.1f}s, attribution {t_attr:.2f}s")
    df = scan.to_dataframe()[["layer", "head", "value", "effect"]]
    df["attribution"] = attr.to_dataframe()["effect"].values
    if attr_metric != metric:
        df["exact_" + attr_metric] = exact_for_attr.to_dataframe()["effect"].values
    click.echo(df.round(4).to_string(index=False))
    k = agree["top_k"]
    click.echo(f"attribution vs exact ({agree['ablation']}): Spearman {agree['spearman']:.3f}, "
               f"Pearson {agree['pearson']:.3f}, top-{k} overlap {agree['top_k_overlap']:.2f}")
    if agree["disagree"]:
        click.echo(f"WARNING: attribution and the exact scan disagree on the top {k} heads ({agree['ablation']}): "
                   f"overlap {agree['top_k_overlap']:.2f} (warns below {agree['min_overlap']} or when the most "
                   f"important head is missed); the exact scan's heads it misses (layer, head): {agree['missed']}. "
                   "Rank heads by the exact scan.")
    if out:
        from icl_circuits.viz.heads import head_scan, scan_vs_attribution

        figs = [head_scan(scan), head_scan(attr), scan_vs_attribution(exact_for_attr, attr)]
        _write_out(out, {"figure.html": figs}, results={"result": scan, "attribution": attr})
    if as_json:
        emit_json({"model": model, "task": task, "how": how, "metric": metric, "positions": positions, "seed": seed,
                   "n_prompts": n_prompts, "n_demos": n_demos, "clean": float(scan.clean.mean()),
                   "layers": scan.layers, "scan_effect": scan.effect.tolist(), "scan_value": scan.values.tolist(),
                   "attribution_metric": attr_metric, "attribution_effect": attr.effect.tolist(),
                   "exact_effect_for_attribution": exact_for_attr.effect.tolist(),
                   "spearman": agree["spearman"], "pearson": agree["pearson"], "agreement": agree,
                   "seconds": {"scan": t_scan, "attribution": t_attr}})


def _ltv_layers(value: str, n_layers: int) -> list[int]:
    if value.strip().lower() == "all":
        return list(range(n_layers + 1))
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or any(not 0 <= v <= n_layers for v in out):
        raise click.BadParameter(f"expected 'all' or comma-separated layers in [0, {n_layers}], got {value!r}",
                                 param_hint="--layer")
    return out


def _ltv_options(f):
    for opt in reversed([
        model_option,
        click.option("--task", default="antonym", show_default=True, help="Task name (see `icl-circuits tasks`)."),
        click.option("--layer", "layer_spec", default="all", show_default=True,
                     help="Injection layer(s): 'all' (0..n_layers, one LTV trained per layer) or e.g. 1,2."),
        click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1)),
        click.option("--train", "n_train", default=128, show_default=True, type=click.IntRange(min=1), help="Training prompts."),
        click.option("--val", "n_val", default=32, show_default=True, type=click.IntRange(min=0), help="Validation prompts."),
        click.option("--with-demos", default=0, show_default=True, type=click.IntRange(min=0), help="Demos in the prompts (0: zero-shot)."),
        click.option("--lr", default=5e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="AdamW learning rate."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1)),
        click.option("--eval-prompts", "n_eval", default=64, show_default=True, type=click.IntRange(min=1)),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer numbers."),
        click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json(+.safetensors) and DIR/figure.html."),
    ]):
        f = opt(f)
    return f


def _train_ltv(m: Any, task: str, layer_spec: str, epochs: int, n_train: int, n_val: int, with_demos: int, seed: int,
               lr: float, batch_size: int):
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.learned import train_per_layer

    layers = _ltv_layers(layer_spec, m.cfg.n_layers)
    try:
        batch = build_prompts(m, task, n_train + n_val, with_demos, seed=seed,
                              variant="zero_shot" if with_demos == 0 else "icl")
        return train_per_layer(m, batch, layers, epochs=epochs, n_val=n_val, seed=seed, lr=lr, batch_size=batch_size,
                               progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))


@cli.command("ltv")
@_ltv_options
def ltv_cmd(model: str, task: str, layer_spec: str, epochs: int, n_train: int, n_val: int, with_demos: int,
            lr: float, batch_size: int, n_eval: int, seed: int, as_json: bool, out: str | None) -> None:
    """Train learned task vectors (one per layer) and their accuracy on fresh prompts."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.vectors import evaluate_vector

    _check_task(task)
    m = _cli._load(model)
    t0 = time.time()
    tv = _train_ltv(m, task, layer_spec, epochs, n_train, n_val, with_demos, seed, lr, batch_size)
    ev = build_prompts(m, task, n_eval, with_demos, seed=seed + 1, variant="zero_shot" if with_demos == 0 else "icl")
    sweep = evaluate_vector(m, tv, ev)
    click.echo(f"Learned task vectors of {model}, task {task} ({with_demos} demos, {n_eval} test prompts, "
               f"seed {seed}, {time.time() - t0:.1f}s); accuracy without a vector {sweep.baseline:.3f}")
    click.echo(f"{'layer':>5} {'val acc':>8} {'test acc':>9} {'95% CI':>15} {'epochs':>6} {'norm':>7}")
    per = tv.meta["per_layer"]
    for i, l in enumerate(tv.layers):
        pm = per[str(l)]
        click.echo(f"{l:>5} {pm['val_accuracy_best']:>8.3f} {float(sweep.values[i]):>9.3f} "
                   f"[{float(sweep.low[i]):.2f}, {float(sweep.high[i]):.2f}] {pm['epochs_run']:>6} {pm['norm'][0]:>7.2f}")
    if out:
        from icl_circuits.viz.propagation import layer_curves

        _write_out(out, {"figure.html": layer_curves([sweep])}, results={"result": tv, "sweep": sweep})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "with_demos": with_demos, "n_eval": n_eval,
                   "baseline": sweep.baseline, "layers": tv.layers,
                   "accuracy": {str(l): float(v) for l, v in zip(tv.layers, sweep.values)},
                   "val_accuracy": {str(l): per[str(l)]["val_accuracy_best"] for l in tv.layers}})


@cli.command("propagation")
@_ltv_options
@click.option("--vectors", "n_vectors", default=256, show_default=True, type=click.IntRange(min=2),
              help="Random vectors for fitting each layer's linear map.")
@click.option("--fit-prompts", "n_fit", default=16, show_default=True, type=click.IntRange(min=1))
def propagation_cmd(model: str, task: str, layer_spec: str, epochs: int, n_train: int, n_val: int, with_demos: int,
                    lr: float, batch_size: int, n_eval: int, seed: int, as_json: bool, out: str | None, n_vectors: int,
                    n_fit: int) -> None:
    """Train LTVs per layer, then fit the linear map to the final residual: rotation vs scaling,
    logit lens, task alignment, accuracy of the reconstructed vector W theta."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.propagation import propagation_by_layer

    _check_task(task)
    m = _cli._load(model)
    t0 = time.time()
    tv = _train_ltv(m, task, layer_spec, epochs, n_train, n_val, with_demos, seed, lr, batch_size)
    variant = "zero_shot" if with_demos == 0 else "icl"
    try:
        fit = build_prompts(m, task, n_fit, with_demos, seed=seed, variant=variant)
        ev = build_prompts(m, task, n_eval, with_demos, seed=seed + 1, variant=variant)
        res = propagation_by_layer(m, fit, ev, tv, n_vectors=n_vectors, seed=seed, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    df = res.to_dataframe().set_index("layer")
    cols = ["r2", "rotation_cos", "cos_theta_wtheta", "gain", "stretch_cv", "alignment_theta", "alignment_wtheta",
            "lens_injected", "acc_injected", "acc_reconstructed"]
    click.echo(f"Propagation of learned task vectors in {model}, task {task} (seed {seed}, {time.time() - t0:.1f}s); "
               f"no-vector accuracy {res.baseline:.3f}, alignment of a random vector ~{res.alignment_chance:.2f}")
    click.echo(df[cols].round(3).to_string())
    if out:
        from icl_circuits.viz.propagation import propagation_summary

        _write_out(out, {"figure.html": propagation_summary(res)}, results={"result": res, "ltv": tv})
    if as_json:
        emit_json({"model": model, "task": task, "seed": seed, "baseline": res.baseline,
                   "alignment_chance": res.alignment_chance, "layers": res.layers,
                   "by_layer": {str(l): {c: float(df.loc[l, c]) for c in cols} for l in res.layers}})


@cli.command("task-vectors")
@model_option
@click.option("--task", default="antonym", show_default=True, help="Task name (see `icl-circuits tasks`).")
@click.option("--demos", "n_demos", default=8, show_default=True, type=click.IntRange(min=1), help="Demos per ICL prompt.")
@click.option("--prompts", "n_prompts", default=32, show_default=True, type=click.IntRange(min=1),
              help="Prompts for extraction and (another seed) for evaluation.")
@click.option("--top-k", "top_k", default=10, show_default=True, type=click.IntRange(min=1), help="Heads in the function vector.")
@click.option("--metric", default="auto", show_default=True, type=click.Choice(["auto", "accuracy", "label_accuracy"]),
              help="auto: label_accuracy for categorization tasks, else accuracy.")
@click.option("--seed", default=0, show_default=True, type=int, help="Extraction seed; evaluation uses seed + 1.")
@click.option("--methods", default="vanilla,local,function", show_default=True,
              help="Comma-separated methods to compare (vanilla, local, function).")
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON object with the per-layer numbers.")
@click.option("--out", default=None, type=OUT_DIR, help="Write DIR/result.json and DIR/figure.html.")
def task_vectors_cmd(model: str, task: str, n_demos: int, n_prompts: int, top_k: int, metric: str, seed: int,
                     methods: str, as_json: bool, out: str | None) -> None:
    """Vanilla vs local vs function vectors per layer, on held-out prompts."""
    import warnings

    from icl_circuits.core.pairs import task_vector_prompts
    from icl_circuits.methods.task_vectors import METHODS, compare_task_vectors

    _check_task(task)
    chosen = [v.strip() for v in methods.split(",") if v.strip()]
    if not chosen or any(v not in METHODS for v in chosen):
        raise click.BadParameter(f"expected comma-separated names among {', '.join(METHODS)}, got {methods!r}",
                                 param_hint="--methods")
    m = _cli._load(model)
    t0 = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a skipped method is reported below
            prompts = task_vector_prompts(m, task, n_demos, n_prompts, seed)
            df = compare_task_vectors(m, prompts, top_k=top_k, metric=metric, methods=chosen).to_dataframe()
    except ValueError as err:
        raise click.UsageError(str(err))
    table = df.pivot(index="layer", columns="method", values="accuracy")
    click.echo(f"Task vectors of {model}, task {task} ({df.metric.iloc[0]}; {n_prompts} prompts x {n_demos} demos, "
               f"seed {seed}, evaluation seed {df.attrs['eval_seed']}, {time.time() - t0:.1f}s)")
    click.echo(table.round(3).to_string())
    if df.attrs["fv_heads"] is not None:
        click.echo(f"function-vector heads (layer, head): {df.attrs['fv_heads']}")
    for meth, why in df.attrs["skipped"].items():
        click.echo(f"skipped {meth}: {why}")
    summary = {"model": model, "task": task, "metric": str(df.metric.iloc[0]), "seed": seed, "n_prompts": n_prompts,
               "n_demos": n_demos, **{k: v for k, v in df.attrs.items() if k not in ("seed", "n_demos", "n_prompts")},
               "per_layer": {meth: {str(int(r.layer)): {"accuracy": r.accuracy, "low": r.low, "high": r.high}
                                    for r in g.itertuples()} for meth, g in df.groupby("method", sort=False)}}
    if out:
        from icl_circuits.viz.sweeps import sweep

        _write_out(out, {"figure.html": sweep(df)}, summary=summary)
    if as_json:
        emit_json(summary)
