"""The ``icl-circuits`` command line: the general commands (tasks, evaluate, report, demo, train-toy)
and ``main``, the entry point.

Every command takes ``--threads`` (torch threads, default 1); every analysis subcommand takes
``--model`` (default: the bundled ``toy-icl``) and ``--json``; with ``--json`` the last line
printed is one JSON object with the numbers. The analysis subcommands live in one module per
command group (``dpca``, ``saliency`` (with ``isolation``, ``reweight``), ``interchange`` (with
``necessity``, ``probe``), ``heads`` (with ``ov``), ``vectors`` (``task-vectors``, ``ltv``,
``propagation``)); importing them here registers them on ``common.cli``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from icl_circuits.cli import common, dpca, explore, grid, heads, interchange, saliency, vectors  # noqa: F401  (register their commands on `cli`)
from icl_circuits.cli.common import (
    cli,
    demos_option,
    emit_json,
    json_option,
    model_option,
    model_option_with_default,
    out_problem,
    prompts_option,
    report_out_option,
    seed_option,
    task_option,
    threads_option,
)


@cli.command("tasks")
@threads_option
@json_option()
def tasks_cmd(as_json: bool) -> None:
    """List the tasks with their kind and size (with --json: one JSON object instead of the table)."""
    from icl_circuits.core.tasks import get_task, list_tasks

    rows = [{"task": n, "kind": get_task(n).kind, "size": len(get_task(n)), "description": get_task(n).description}
            for n in list_tasks()]
    if as_json:
        emit_json({"tasks": rows})
        return
    for r in rows:
        click.echo(f"{r['task']:<16} {r['kind']:<15} {r['size']:>5}  {r['description']}")


def _metric_list(_ctx: Any, param: click.Parameter, value: str | None) -> list[str] | None:
    from icl_circuits.core.metrics import get_metric

    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter("expected comma-separated metric names like first_token,exact_match", param=param)
    try:
        return list(dict.fromkeys(get_metric(n).name for n in names))
    except ValueError as err:
        raise click.BadParameter(str(err), param=param)


@cli.command("evaluate")
@model_option
@threads_option
@task_option(dest="task_names", multiple=True, show_default="every task the model's tokenizer can read")
@demos_option("0,1,2,4,8", dest="demos", sweep=True)
@prompts_option(64)
@click.option("--metrics", default=None, callback=_metric_list,
              help="Comma-separated metrics (first_token, label, exact_match, answer_logprob, gold_prob, logit_diff, "
                   "logit_diff_to_mean). Default: first_token,exact_match, plus label for tasks with label words.")
@click.option("--template", default=None, help="Example template, e.g. '{x} -> {y}' (default: build_prompts' default).")
@click.option("--max-new-tokens", default=None, type=click.IntRange(min=1),
              help="Greedy decoding budget for exact_match (default: longest gold answer in tokens + 3).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@seed_option()
@json_option()
def evaluate_cmd(model: str, task_names: tuple[str, ...], demos: list[int], n_prompts: int, metrics: list[str] | None,
                 template: str | None, max_new_tokens: int | None, batch_size: int, seed: int, as_json: bool) -> None:
    """ICL scores of MODEL per task and number of demos: first-token and whole-answer (greedy exact
    match) accuracy by default, with 95% intervals (Wilson for rates, Student t for means).

    One cell per task (--task, repeatable) and number of demos (each of --demos), of --prompts prompts
    each; --json adds every metric's interval and N."""
    import pandas as pd

    from icl_circuits.core.task_filters import representable_tasks
    from icl_circuits.core.tasks import get_task
    from icl_circuits.methods.accuracy import accuracy_by_demos, demo_sweep

    names = list(task_names)
    m = common.load(model)
    names = names or representable_tasks(m)
    t0 = time.time()
    frames = []
    try:
        for name in names:
            wanted = metrics or ["first_token", "exact_match"] + (["label"] if get_task(name).label_words is not None else [])
            batches = demo_sweep(m, name, demos, n_prompts, seed=seed, template=template)
            frames.append(accuracy_by_demos(m, batches, metrics=wanted, batch_size=batch_size,
                                            max_new_tokens=max_new_tokens).to_dataframe())
    except ValueError as err:
        raise click.UsageError(str(err))
    df = pd.concat(frames, ignore_index=True)
    tpl = df.template.iloc[0] if len(df) else template
    click.echo(f"ICL scores of {model} (template {tpl!r}, {n_prompts} prompts per cell, seed {seed}, {time.time() - t0:.1f}s)")
    for metric, g in df.groupby("metric", sort=False):
        table = g.pivot(index="task", columns="n_demos", values="value")
        click.echo(f"\n{metric} (mean over prompts; 95% {g.interval.iloc[0]} intervals in --json)")
        click.echo(table.loc[[t for t in names if t in table.index]].round(3).to_string())
    if as_json:
        scores: dict = {}
        for r in df.itertuples():
            scores.setdefault(r.task, {}).setdefault(str(r.n_demos), {})[r.metric] = {
                "value": r.value, "low": r.low, "high": r.high, "n": int(r.n), "interval": r.interval}
        from icl_circuits.core.model_info import model_info

        emit_json({"model": model, "seed": seed, "n_prompts": n_prompts, "template": tpl,
                   "metrics": list(dict.fromkeys(df.metric)), "scores": scores, "model_info": model_info(m)})


@cli.command("report")
@model_option
@report_out_option()
@click.option("--quick", is_flag=True, help="Fewer prompts and tasks: a fast look.")
@seed_option()
@click.option("--only", default=None, help="Comma-separated section keys to run (default: all).")
@click.option("--keep-going", is_flag=True,
              help="Exit 0 even when a section failed (the page shows its error either way).")
@threads_option
def report_cmd(model: str, out: str, quick: bool, seed: int, only: str | None, keep_going: bool = False) -> None:
    """Run the analysis suite on MODEL and write one self-contained HTML report.

    A section that raises is shown with its error in the page, and the command then exits 1 naming
    the failed sections (unless --keep-going)."""
    from icl_circuits.report.suite import failed_sections, write_report

    problem = out_problem(out, directory=False)  # before the suite runs, not after
    if problem:
        raise click.BadParameter(problem, param_hint="--out")
    import torch

    threads = torch.get_num_threads()  # set by --threads (common.threads_option) when the options were parsed
    t0 = time.perf_counter()
    m = common.load(model)
    try:
        sections = write_report(model, out, quick=quick, seed=seed, model=m, threads=threads,
                                load_seconds=time.perf_counter() - t0,
                                only=[s.strip() for s in only.split(",")] if only else None)
    except ValueError as err:
        raise click.UsageError(str(err))
    failed = failed_sections(sections)
    if failed and not keep_going:
        raise click.ClickException(f"{len(failed)} report section(s) failed: {', '.join(failed)} "
                                   f"(errors shown in {out}; --keep-going to exit 0 anyway)")


@cli.command("demo")
@model_option_with_default("smollm2-135m")
@report_out_option()
@threads_option
def demo_cmd(model: str, out: str) -> None:
    """The main job (`make demo`): the full report on MODEL (default the real SmolLM2-135M), written to
    OUT; prints each section's wall and CPU time and the total analysis time.

    On the real SmolLM2 the analysis takes about 3 min on 2 cores; --model toy-icl is the fast path."""
    click.get_current_context().invoke(report_cmd, model=model, out=out, quick=False, seed=0, only=None,
                                       keep_going=False)


@cli.command("train-toy", context_settings={"ignore_unknown_options": True})
@threads_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_toy_cmd(args: tuple[str, ...]) -> None:
    """Train the bundled model (arguments as for `python -m icl_circuits.toy.train --help`; --threads is
    passed on to it)."""
    import torch

    from icl_circuits.toy.train import main as train_main

    train_main(["--threads", str(torch.get_num_threads()), *args])  # set by --threads; a later --threads in ARGS wins


def main() -> None:
    cli(prog_name="icl-circuits")


if __name__ == "__main__":
    sys.exit(main())
