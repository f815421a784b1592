"""``icl-circuits interchange``, ``necessity`` and ``probe``: where the task identity lives (Cheng & Zhang)."""

from __future__ import annotations

import time

import click

from icl_circuits.cli import common
from icl_circuits.cli.common import (
    cli,
    demos_option,
    emit_json,
    json_option,
    layer_list,
    layers_option,
    model_option,
    out_option,
    prompts_option,
    seed_option,
    task_option,
    task_valued_option,
    threads_option,
    write_out,
)


@cli.command("interchange")
@model_option
@threads_option
@task_valued_option("--source", preset="interchange_pair", index=0, fallback="antonym",
                    help="Source task A (whose activations are written in): a task name or JSON task file.")
@task_valued_option("--target", preset="interchange_pair", index=1, fallback="english-french",
                    help="Target task B (whose prompts are run): a task name or JSON task file.")
@demos_option(8)
@prompts_option(50)
@click.option("--positions", default="answers,answer_0,answer_-1,demo_tokens,query", show_default=True,
              help="Comma-separated position sets, each run separately (join names with '+' for a union).")
@layers_option(show_default="every block input, 0..n_layers-1")
@seed_option()
@json_option()
@out_option()
def interchange_cmd(model: str, source: str, target: str, n_demos: int, n_prompts: int, positions: str,
                    layers: str | None, seed: int, as_json: bool, out: str | None) -> None:
    """Multi-position interchange (Cheng & Zhang): transfer / preserve / neither rate per layer.

    --prompts target prompts (seed) and as many source prompts (seed + 1). --out writes the rates of every
    position set to DIR/result.json, and each set's result to DIR/interchange_<set>.json(+.safetensors)."""
    import re

    from icl_circuits.core.pairs import paired_batches
    from icl_circuits.methods.interchange import interchange
    sets = [p.strip() for p in positions.split(",") if p.strip()]
    if not sets:
        raise click.BadParameter("expected at least one position set", param_hint="--positions")
    m = common.load(model)
    t0 = time.time()
    try:
        src, tgt = paired_batches(m, source, target, n_prompts, n_demos, seed=seed)
        results = [interchange(m, src, tgt, s, layer_list(layers), seed=seed, progress=False) for s in sets]
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

        write_out(out, {"figure.html": plot(results, outcomes=("transfer", "preserve"))}, summary=summary,
                   results={"interchange_" + re.sub(r"[^\w.-]+", "_", r.position_set): r for r in results})
    if as_json:
        emit_json(summary)


@cli.command("necessity")
@model_option
@threads_option
@task_option(preset="interchange_pair", index=1, fallback="english-french")
@demos_option(8)
@prompts_option(50)
@click.option("--positions", default="answer_-1,answers,demo_tokens,query", show_default=True,
              help="Comma-separated position sets, each corrupted separately (join names with '+' for a union).")
@click.option("--how", default="noise", show_default=True, type=click.Choice(["noise", "zero", "mean"]),
              help="Corruption: relative Gaussian noise (as large as the activation), zero or mean ablation.")
@click.option("--noise-scale", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Noise standard deviation relative to ||h|| / sqrt(d_model) (--how noise).")
@layers_option(show_default="every block input, 0..n_layers-1")
@seed_option()
@json_option()
@out_option()
def necessity_cmd(model: str, task: str, n_demos: int, n_prompts: int, positions: str, how: str, noise_scale: float,
                  layers: str | None, seed: int, as_json: bool, out: str | None) -> None:
    """Necessity test (Cheng & Zhang): first-token accuracy drop per layer with a position set corrupted.

    --task defaults to the interchange target task. --out writes the drops of every position set to
    DIR/result.json, and each set's result to DIR/necessity_<set>.json(+.safetensors)."""
    import re

    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.necessity import necessity
    sets = [p.strip() for p in positions.split(",") if p.strip()]
    if not sets:
        raise click.BadParameter("expected at least one position set", param_hint="--positions")
    m = common.load(model)
    t0 = time.time()
    try:
        batch = build_prompts(m, task, n_prompts, n_demos, seed=seed)
        results = [necessity(m, batch, s, layer_list(layers), how=how, noise_scale=noise_scale, seed=seed,
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

        write_out(out, {"figure.html": plot(results)}, summary=summary,
                   results={"necessity_" + re.sub(r"[^\w.-]+", "_", r.position_set): r for r in results})
    if as_json:
        emit_json(summary)


@cli.command("probe")
@model_option
@threads_option
@task_valued_option("--tasks", preset="accuracy_tasks", fallback=("antonym", "english-french", "english-german"),
                    many=True,
                    help="Comma-separated tasks (names or JSON task files) whose identity the probe decodes.")
@click.option("--position", default="answer", show_default=True,
              help="Position set: answer, separator, delimiter, final, or a single position like answer_-1.")
@demos_option(8)
@prompts_option(50, minimum=2)
@layers_option(show_default="0..n_layers")
@click.option("--cv", default=5, show_default=True, type=click.IntRange(min=2), help="Cross-validation folds.")
@seed_option()
@json_option()
@out_option()
def probe_cmd(model: str, tasks: list[str], position: str, n_demos: int, n_prompts: int, layers: str | None, cv: int,
              seed: int, as_json: bool, out: str | None) -> None:
    """Linear probes decoding the task identity from the residual stream, per layer.

    --prompts prompts per task of --tasks."""
    from icl_circuits.core.prompts import build_prompts
    from icl_circuits.methods.probing import probe_by_layer

    names = list(dict.fromkeys(tasks))
    if len(names) < 2:
        raise click.BadParameter(f"name at least two tasks to decode the task identity, got {names}",
                                 param_hint="--tasks")
    m = common.load(model)
    t0 = time.time()
    try:
        data = {t: build_prompts(m, t, n_prompts, n_demos, seed=seed) for t in names}  # one batch per task
        res = probe_by_layer(m, data, position, layer_list(layers), seed=seed, cv=cv, progress=False)
    except ValueError as err:
        raise click.UsageError(str(err))
    click.echo(f"task-identity probe on {model} at {position} ({len(names)} tasks x {n_prompts} prompts x "
               f"{n_demos} demos, {cv}-fold CV, seed {seed}, {time.time() - t0:.1f}s); chance {res.chance:.2f}")
    click.echo(res.to_dataframe()[["layer", "accuracy", "low", "high", "control"]].round(3).to_string(index=False))
    if out:
        from icl_circuits.viz.interchange import probe_vs_transfer

        write_out(out, {"figure.html": probe_vs_transfer(res)}, results={"result": res})
    if as_json:
        emit_json({"model": model, "tasks": names, "position": position, "seed": seed, "n_prompts": n_prompts,
                   "n_demos": n_demos, "cv": cv, "chance": res.chance, "layers": res.layers,
                   **{k: [round(v, 4) for v in t.tolist()] for k, t in (("accuracy", res.accuracy), ("low", res.low),
                                                                         ("high", res.high), ("shuffled_control", res.control))}})
