"""Options that several commands share say the same in every command's --help.

``--model``, ``--threads``, ``--task``, ``--demos``, ``--prompts``, ``--layers``, ``--seed``, ``--json`` and
``--out`` are declared only by ``cli/common.py``'s decorators, with the help text of ``common.SHARED_HELP``
(the defaults may differ per command). A command that declares one of them itself, with its own help or
even with the same one, is reported by ``shared_option_problems``.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from icl_circuits.cli.common import SHARED_HELP, SharedOption, seed_option
from icl_circuits.cli.main import cli

#: the option names SHARED_HELP covers (its "--out FILE" is report's and demo's --out)
SHARED_NAMES = {key.split()[0] for key in SHARED_HELP}


def walk(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command under ``group`` by its full name (``"dpca"``; a nested group's ``"group sub"``)."""
    ctx = click.Context(group)
    out = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        out[prefix + name] = cmd
        if isinstance(cmd, click.Group):
            out.update(walk(cmd, f"{prefix}{name} "))
    return out


def shown_help(cmd: click.Command, option: click.Option) -> str:
    """The help of ``option`` as ``cmd --help`` shows it, without the bracketed default / range."""
    record = option.get_help_record(click.Context(cmd))
    return record[1].split("  [")[0] if record else ""


def shared_help(group: click.Group) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``(helps, problems)``: the help each command shows for each shared option (key of ``SHARED_HELP`` ->
    command -> text), and each option with a shared name that a command declared itself."""
    helps: dict[str, dict[str, str]] = {}
    problems = []
    for name, cmd in walk(group).items():
        for p in cmd.params:
            if not isinstance(p, click.Option) or not SHARED_NAMES & {*p.opts, *p.secondary_opts}:
                continue
            if not isinstance(p, SharedOption):
                problems.append(f"{name}: {'/'.join(p.opts)} declared by the command, not by a cli.common decorator")
                continue
            helps.setdefault(p.shared, {})[name] = shown_help(cmd, p)
    return helps, problems


def test_shared_options_say_the_same_in_every_command():
    helps, problems = shared_help(cli)
    assert not problems, problems
    for key, by_command in helps.items():
        texts = set(by_command.values())
        assert texts == {SHARED_HELP[key]}, (key, by_command)
    # each key is shared (two commands at least), and the options are all among them
    assert {k: len(v) for k, v in helps.items() if len(v) < 2} == {}
    assert {"--json", "--seed", "--out", "--demos", "--prompts", "--task", "--layers"} <= set(helps)


def test_every_command_help_shows_the_shared_texts():
    """What a user reads: each shared option's text appears in the command's --help, whatever the width."""
    helps, _ = shared_help(cli)
    for key, by_command in helps.items():
        for name in by_command:
            res = CliRunner().invoke(cli, [*name.split(), "--help"], terminal_width=80)
            assert res.exit_code == 0, res.output
            assert SHARED_HELP[key] in " ".join(res.output.split()), (name, key)


def test_a_command_declaring_a_shared_option_itself_is_caught():
    """The check above fails on a command with its own --seed (own help, or none) or its own --json copying the
    shared text; the same group with the decorators passes."""
    group = click.Group("g")

    @group.command("good")
    @seed_option()
    def good(seed: int) -> None: ...

    @group.command("own")
    @click.option("--seed", default=0, type=int, help="Seed of the prompts.")
    @click.option("--json", "as_json", is_flag=True, help=SHARED_HELP["--json"])
    def own(seed: int, as_json: bool) -> None: ...

    helps, problems = shared_help(group)
    assert helps == {"--seed": {"good": SHARED_HELP["--seed"]}}
    assert len(problems) == 2 and all(p.startswith("own: ") for p in problems), problems

    @group.command("another")
    @seed_option()
    def another(seed: int) -> None: ...

    assert shared_help(group)[0]["--seed"] == {"another": SHARED_HELP["--seed"], "good": SHARED_HELP["--seed"]}


def test_a_shared_option_takes_no_help_of_its_own():
    with pytest.raises(TypeError):
        click.option("--seed", cls=SharedOption, shared="--seed", help="mine")(lambda seed: None)
