"""The command line: help everywhere, tasks, evaluate (--json last line), clear errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import icl_circuits.cli as cli_mod
from icl_circuits.cli import cli


@pytest.fixture
def runner(monkeypatch, tiny_model):
    monkeypatch.setattr(cli_mod, "_load", lambda name: tiny_model)
    return CliRunner()


def test_help_for_every_subcommand(runner):
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in cli.commands:
        sub = runner.invoke(cli, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output, name


def test_tasks_json(runner):
    res = runner.invoke(cli, ["tasks", "--json"])
    data = json.loads(res.output.strip().splitlines()[-1])
    assert {"antonym", "number", "uppercase"} <= {t["task"] for t in data["tasks"]}


def test_evaluate_json_last_line(runner):
    res = runner.invoke(cli, ["evaluate", "--task", "antonym", "--task", "number", "--demos", "0,2", "--prompts", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert set(data["accuracy"]) == {"antonym", "number"} and set(data["accuracy"]["antonym"]) == {"0", "2"}


@pytest.mark.parametrize("args, match", [
    (["evaluate", "--task", "nope"], "unknown task 'nope'"),
    (["evaluate", "--demos", "a,b"], "comma-separated integers"),
    (["evaluate", "--task", "next-letter", "--demos", "40"], "n_demos=40"),
    (["report", "--only", "nope", "--out", "x.html"], "unknown sections"),
])
def test_bad_arguments_are_clear(runner, args, match, tmp_path):
    res = runner.invoke(cli, args)
    assert res.exit_code != 0 and match in res.output


def test_unknown_model_is_a_clear_error():
    res = CliRunner().invoke(cli, ["evaluate", "--model", "no-such-model", "--task", "antonym"])
    assert res.exit_code != 0 and "unknown model 'no-such-model'" in res.output
