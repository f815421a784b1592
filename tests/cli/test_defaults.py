"""Every subcommand runs with its defaults on every bundled model, and task-valued options take JSON task files.

Each command of ``cli.commands`` that takes ``--model`` runs with only ``--model`` (plus the size options of
``SMALL``: prompts, demos, epochs, layers, never a task or an analysis choice) and ``--json``, on toy-icl, on
SmolLM2-135M and on Gemma 3 270M (``real_model``: each loaded once per session, skipped where it is not installed). A command
added later is run with its full defaults until it gets an entry in ``SMALL``. Its task-valued options must
then take the task the report's preset names for the model (``PresetOption.model_default``).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import icl_circuits.cli.common as cli_common
from icl_circuits.cli.common import PresetOption, TaskOption
from icl_circuits.cli.main import cli

#: commands without --model, and why they are not run here
MODEL_FREE = {
    "tasks": "lists the task library (test_cli.py::test_tasks_json)",
    "train-toy": "trains the toy model and, by default, overwrites the package's weights "
                 "(test_cli.py::test_train_toy_passes_threads_and_its_own_options_on)",
    "grid": "runs grid specs, whose models are in the spec (tests/grid/test_cli_grid.py)",
}
#: commands taking --model that are not run here, and why
SKIPPED = {
    "explore": "serves until interrupted; tests/explorer/test_cli_explore.py starts it and requests its page",
    "demo": "the full report without --quick (about 3 min on SmolLM2, 2 cores); `report` runs the same code "
            "with the same model-dependent defaults here, with --quick",
}
#: size options (prompts, demos, epochs, layers, and evaluate's metrics), never a task: the tasks stay the
#: defaults under test. Each run then takes seconds (on SmolLM2 dpca, heads and task-vectors about 10 s:
#: a cross-validated fit per layer, a scan of its 270 heads, the function vector's head scan)
SMALL: dict[str, list[str]] = {
    "evaluate": ["--prompts", "1", "--demos", "0", "--metrics", "first_token"],  # greedy decoding of 18 tasks: 3/4 of it
    "report": ["--quick", "--only", "saliency"],
    "dpca": ["--prompts", "16", "--demos", "4", "--n-null", "0"],
    "saliency": ["--prompts", "2", "--demos", "2"],
    "isolation": ["--prompts", "2", "--demos", "2", "--layers", "0"],
    "reweight": ["--prompts", "2", "--eval-prompts", "2", "--demos", "2", "--epochs", "1"],
    "interchange": ["--prompts", "2", "--demos", "2", "--layers", "0,1"],
    "necessity": ["--prompts", "2", "--demos", "2", "--layers", "0,1"],
    "probe": ["--prompts", "4", "--demos", "2", "--cv", "2", "--layers", "0,1"],
    "heads": ["--prompts", "1", "--demos", "1"],
    "ov": ["--prompts", "2", "--demos", "2", "--train", "4", "--val", "2", "--epochs", "1", "--n-random", "1",
           "--ks", "1"],
    "ltv": ["--layer", "1", "--train", "4", "--val", "0", "--epochs", "1", "--eval-prompts", "2"],
    "propagation": ["--layer", "1", "--train", "4", "--val", "0", "--epochs", "1", "--eval-prompts", "2",
                    "--vectors", "2", "--fit-prompts", "1"],
    "task-vectors": ["--prompts", "1", "--demos", "1", "--top-k", "1"],
}
#: where a command's --json names each task-valued option's value
JSON_KEY = {"task": "task", "source": "source", "target": "target", "tasks": "tasks"}


def _takes(cmd, name: str) -> bool:
    return any(p.name == name for p in cmd.params)


MODEL_COMMANDS = sorted(n for n, c in cli.commands.items() if _takes(c, "model"))


def test_every_command_is_run_or_excused():
    assert set(cli.commands) - set(MODEL_COMMANDS) == set(MODEL_FREE), "a new command without --model: excuse it here"
    assert set(SMALL) <= set(MODEL_COMMANDS) and set(SKIPPED) <= set(MODEL_COMMANDS)


@pytest.fixture(scope="module")
def toy_model(test_device):
    from icl_circuits.core.models import load_model

    return load_model("toy-icl", device=test_device)


@pytest.fixture
def use_model(monkeypatch, request):
    """``common.load`` returns the session's model for the name asked (each real model loads once per session)."""
    fixtures = {"smollm2-135m": "real_model", "gemma3-270m": "gemma_model"}

    def use(name: str):
        model = request.getfixturevalue(fixtures.get(name, "toy_model"))

        def load(asked: str):
            assert asked == name
            return model

        monkeypatch.setattr(cli_common, "load", load)
    return use


CASES = [pytest.param(c, m, id=f"{c}-{m}", marks=[pytest.mark.real_model] if m != "toy-icl" else [])
         for m in ("toy-icl", "smollm2-135m", "gemma3-270m") for c in MODEL_COMMANDS if c not in SKIPPED]


@pytest.mark.parametrize("name, model", CASES)
def test_runs_with_only_model(use_model, tmp_path, name, model):
    """Only --model (and sizes): the run succeeds, --json parses, and each task option took its model's default."""
    use_model(model)
    cmd = cli.commands[name]
    args = [name, "--model", model, *SMALL.get(name, [])]
    if _takes(cmd, "as_json"):
        args.append("--json")
    if name == "report":
        args += ["--out", str(tmp_path / "report.html")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    if not _takes(cmd, "as_json"):
        return
    data = json.loads(res.stdout.strip().splitlines()[-1])
    for p in cmd.params:
        if isinstance(p, TaskOption) and p.preset is not None:
            want = p.model_default(model)
            assert data[JSON_KEY[p.name]] == (list(want) if p.many else want), (p.name, data.get(JSON_KEY[p.name]))


# ----------------------------------------------------------------------------- the defaults themselves
TASK_OPTIONS = [(n, p) for n, c in sorted(cli.commands.items()) for p in c.params if isinstance(p, TaskOption)]
PRESET_OPTIONS = [(n, p) for n, c in sorted(cli.commands.items()) for p in c.params
                  if isinstance(p, PresetOption) and p.preset is not None]


def test_defaults_come_from_the_report_presets():
    """SmolLM2 (by name or its Hugging Face id) takes its preset's tasks and LTV learning rate; toy-icl and unknown
    models the command's own default."""
    from icl_circuits.report.suite import MODEL_PRESETS

    smol = MODEL_PRESETS["smollm2-135m"]
    want = {("interchange", "source"): smol["interchange_pair"][0], ("interchange", "target"): smol["interchange_pair"][1],
            ("necessity", "task"): smol["interchange_pair"][1], ("dpca", "task"): smol["category_task"],
            ("saliency", "task"): smol["category_task"], ("heads", "task"): smol["knowledge_task"],
            ("probe", "tasks"): smol["accuracy_tasks"], ("ltv", "lr"): smol["ltv_lr"], ("ov", "lr"): smol["ltv_lr"],
            ("propagation", "lr"): smol["ltv_lr"]}
    by_name = {(n, p.name): p for n, p in PRESET_OPTIONS}
    for key, task in want.items():
        p = by_name[key]
        assert p.model_default("smollm2-135m") == task == p.model_default("HuggingFaceTB/SmolLM2-135M-Instruct"), key
        assert p.model_default("toy-icl") == p.fallback == p.model_default("some/local-dir"), key
    assert not [k for k, p in by_name.items() if p.required], "a task option is required again"


@pytest.mark.parametrize("name, option", PRESET_OPTIONS, ids=lambda v: getattr(v, "name", v))
def test_help_states_each_models_default(name, option):
    res = CliRunner().invoke(cli, [name, "--help"], terminal_width=1000, max_content_width=1000)  # one line each
    flat = " ".join(res.output.split())
    assert f"{option.show(option.model_default('smollm2-135m'))} on smollm2-135m" in flat, flat
    assert f"{option.show(option.fallback)} on toy-icl and other models" in flat, flat


@pytest.mark.parametrize("task, position, first", [
    ("letter-string", "answer", 0),      # label words drawn per prompt: they vary within a class at layer 0
    ("animal-plant", "answer", 1),       # fixed label words: one token per class, a singular covariance
    ("letter-string", "separator", 1),   # the same separator token in every prompt
])
def test_dpca_leaves_out_a_degenerate_layer_0_by_default(task, position, first):
    from icl_circuits.cli.dpca import default_layers

    assert default_layers(task, position, 4) == list(range(first, 5))


# ----------------------------------------------------------------------------- JSON task files
@pytest.fixture
def task_file(tmp_path):
    """A knowledge task ``my-antonym`` written as a JSON task file; unregistered afterwards."""
    from icl_circuits.core.tasks import get_task, list_tasks, unregister_task

    t = get_task("antonym")
    path = tmp_path / "my_task.json"
    path.write_text(json.dumps({"name": "my-antonym", "description": "antonym, from a file",
                                "pairs": [[x, t.apply(x)] for x in t.inputs()[:40]]}))
    yield path
    if "my-antonym" in list_tasks():
        unregister_task("my-antonym")


@pytest.mark.parametrize("args, key", [
    (["heads", "--task", "{f}", "--prompts", "2", "--demos", "2"], "task"),
    (["interchange", "--source", "{f}", "--prompts", "2", "--demos", "2", "--positions", "query"], "source"),
    (["probe", "--tasks", "english-french,{f}", "--prompts", "4", "--demos", "2", "--cv", "2"], "tasks"),
    (["evaluate", "--task", "{f}", "--prompts", "2", "--demos", "1"], "scores"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_a_task_json_file_is_loaded_and_registered(monkeypatch, tiny_model, task_file, args, key):
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    res = CliRunner().invoke(cli, [a.format(f=task_file) for a in args] + ["--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])[key]
    assert "my-antonym" in got if isinstance(got, (list, dict)) else got == "my-antonym"


@pytest.mark.parametrize("name, option", TASK_OPTIONS, ids=lambda v: getattr(v, "name", v))
def test_a_missing_task_file_is_a_usage_error_naming_the_option(monkeypatch, tmp_path, name, option):
    monkeypatch.setattr(cli_common, "load", lambda n: (_ for _ in ()).throw(AssertionError("the model was loaded")))
    res = CliRunner().invoke(cli, [name, option.opts[0], str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and option.opts[0] in res.output and "missing.json" in res.output, res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"name": "antonym", "pairs": [["a", "b"]]}), "built-in task"),
    (json.dumps({"pairs": [["a", "b"]]}), "missing required key 'name'"),
])
def test_a_malformed_task_file_is_a_usage_error_naming_the_option(monkeypatch, tmp_path, content, match):
    monkeypatch.setattr(cli_common, "load", lambda n: (_ for _ in ()).throw(AssertionError("the model was loaded")))
    path = tmp_path / "bad.json"
    path.write_text(content)
    res = CliRunner().invoke(cli, ["necessity", "--task", str(path)])
    assert res.exit_code == 2 and "--task" in res.output and match in res.output, res.output


def test_a_task_name_wins_over_a_file_of_that_name(monkeypatch, tmp_path, tiny_model):
    """``--task antonym`` is the built-in task even where the working directory has a file named antonym."""
    monkeypatch.setattr(cli_common, "load", lambda name: tiny_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "antonym").write_text("{}")
    res = CliRunner().invoke(cli, ["necessity", "--task", "antonym", "--prompts", "2", "--demos", "1", "--layers", "0",
                                   "--positions", "query", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout.strip().splitlines()[-1])["task"] == "antonym", res.output
