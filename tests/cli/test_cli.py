"""The command line: help everywhere, tasks, evaluate (--json last line), clear errors."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
from icl_circuits.cli.main import cli


@pytest.fixture
def runner(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    return CliRunner()


def test_help_for_every_subcommand(runner):
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in cli.commands:
        sub = runner.invoke(cli, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output, name


def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()):
    """(path, command) of every command, the subcommands of a group (``grid run``) included."""
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_takes_threads(runner):
    """--threads (default 1) is listed in every command's --help, and 0 is refused naming it."""
    leaves = dict(_leaf_commands(cli))
    assert ("grid", "run") in leaves and ("evaluate",) in leaves
    for path, cmd in leaves.items():
        sub = runner.invoke(cli, [*path, "--help"])
        assert sub.exit_code == 0 and "--threads" in sub.output, path
        assert [p.default for p in cmd.params if p.name == "threads"] == [1], path
        bad = runner.invoke(cli, [*path, "--threads", "0"])
        assert bad.exit_code == 2 and "--threads" in bad.output, (path, bad.output)


@pytest.mark.parametrize("name", ["evaluate", "saliency", "isolation", "reweight", "ov", "dpca", "heads", "ltv",
                                  "interchange", "report"])
def test_threads_are_set_before_the_model_loads(monkeypatch, name, tmp_path):
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    seen, blas = [], []

    def load(model):
        seen.append(torch.get_num_threads())
        blas.extend(p["num_threads"] for p in threadpool_info())
        raise click.UsageError("stop here")

    monkeypatch.setattr(cli_common, "load", load)
    before = torch.get_num_threads()
    restore = threadpool_limits(limits=3)  # BLAS pools at 3, so the command's --threads 2 must change them
    extra = {"interchange": ["--source", "antonym", "--target", "english-french"],
             "report": ["--out", str(tmp_path / "r.html")]}.get(name, [])
    try:
        res = CliRunner().invoke(cli, [name, *extra, "--threads", "2"])
    finally:
        torch.set_num_threads(before)
        restore.restore_original_limits()
    assert "stop here" in res.output and seen == [2], res.output
    assert blas and set(blas) == {2}, blas  # numpy's BLAS (dPCA, probes, fits) is limited too


def test_train_toy_passes_threads_and_its_own_options_on(monkeypatch):
    from icl_circuits.toy import train

    got = []
    monkeypatch.setattr(train, "main", lambda argv: got.append(argv))
    res = CliRunner().invoke(cli, ["train-toy", "--threads", "3", "--steps", "5"])
    assert res.exit_code == 0, res.output
    assert got == [["--threads", "3", "--steps", "5"]]


def test_tasks_json(runner):
    res = runner.invoke(cli, ["tasks", "--json"])
    data = json.loads(res.output.strip().splitlines()[-1])
    assert {"antonym", "number", "uppercase"} <= {t["task"] for t in data["tasks"]}


def test_evaluate_json_last_line(runner):
    """First-token and whole-answer (exact match) accuracy per task and demos, with intervals and N."""
    res = runner.invoke(cli, ["evaluate", "--task", "antonym", "--task", "number", "--demos", "0,2", "--prompts", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    scores = data["scores"]
    assert set(scores) == {"antonym", "number"} and set(scores["antonym"]) == {"0", "2"}
    assert set(scores["antonym"]["2"]) == {"first_token", "exact_match"} and set(scores["number"]["2"]) == {"first_token", "exact_match", "label"}
    cell = scores["antonym"]["2"]["exact_match"]
    assert cell["n"] == 4 and cell["interval"] == "wilson" and cell["low"] <= cell["value"] <= cell["high"]
    assert {"name", "processing", "prepend_bos"} <= set(data["model_info"])


def test_evaluate_metrics_option(runner):
    res = runner.invoke(cli, ["evaluate", "--task", "antonym", "--demos", "1", "--prompts", "3", "--metrics",
                              "accuracy,answer_logprob", "--template", "{x} -> {y}", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["metrics"] == ["first_token", "answer_logprob"] and data["template"] == "{x} -> {y}"
    assert data["scores"]["antonym"]["1"]["answer_logprob"]["interval"] == "t"


@pytest.mark.parametrize("args, match", [
    (["evaluate", "--task", "nope"], "unknown task 'nope'"),
    (["evaluate", "--demos", "a,b"], "comma-separated integers"),
    (["evaluate", "--task", "next-letter", "--demos", "40"], "n_demos=40"),
    (["evaluate", "--task", "antonym", "--metrics", "nope"], "unknown metric 'nope'"),
    (["evaluate", "--task", "antonym", "--metrics", "label"], "'label' needs label words"),
    (["report", "--only", "nope", "--out", "x.html"], "unknown sections"),
])
def test_bad_arguments_are_clear(runner, args, match, tmp_path):
    res = runner.invoke(cli, args)
    assert res.exit_code != 0 and match in res.output


def test_unknown_model_is_a_clear_error():
    res = CliRunner().invoke(cli, ["evaluate", "--model", "no-such-model", "--task", "antonym"])
    assert res.exit_code != 0 and "unknown model 'no-such-model'" in res.output


# ----------------------------------------------------------------------------- --out checked first
OUT_COMMANDS = [
    ["dpca", "--task", "number"], ["saliency"], ["interchange", "--source", "antonym", "--target", "english-french"],
    ["probe"], ["heads"], ["ltv"], ["propagation"], ["task-vectors"], ["necessity"], ["isolation"], ["reweight"], ["ov"],
]


def test_out_commands_are_every_analysis_with_out():
    with_out = {n for n, c in cli.commands.items() if any(p.name == "out" for p in c.params)} - {"report", "demo"}
    assert with_out == {a[0] for a in OUT_COMMANDS}


@pytest.mark.parametrize("args", OUT_COMMANDS, ids=lambda a: a[0])
def test_out_below_a_file_is_refused_before_the_analysis_runs(monkeypatch, tmp_path, args):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_model(name):  # the analysis must not even load the model
        raise AssertionError("the analysis ran before --out was checked")

    monkeypatch.setattr(cli_common, "load", no_model)
    res = CliRunner().invoke(cli, [*args, "--out", str(blocker / "sub")])
    assert res.exit_code != 0 and "--out" in res.output and "a_file" in res.output, res.output
    assert "Traceback" not in res.output


def test_out_that_is_a_file_is_refused(monkeypatch, tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    monkeypatch.setattr(cli_common, "load", lambda name: (_ for _ in ()).throw(AssertionError("ran")))
    res = CliRunner().invoke(cli, ["dpca", "--out", str(f)])
    assert res.exit_code != 0 and "--out" in res.output


def test_out_in_a_read_only_directory_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(cli_common.os, "access", lambda path, mode: False)  # as for a directory without write permission
    monkeypatch.setattr(cli_common, "load", lambda name: (_ for _ in ()).throw(AssertionError("ran")))
    res = CliRunner().invoke(cli, ["dpca", "--out", str(tmp_path / "new")])
    assert res.exit_code != 0 and "--out" in res.output and "not writable" in res.output, res.output


def test_report_out_below_a_file_is_refused(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(cli_common, "load", lambda name: (_ for _ in ()).throw(AssertionError("ran")))
    res = CliRunner().invoke(cli, ["report", "--out", str(blocker / "report.html")])
    assert res.exit_code != 0 and "--out" in res.output and "a_file" in res.output
