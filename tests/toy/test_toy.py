"""The bundled model's recipe and tokenizer: the training sequences are the toolkit's prompts,
a few steps of training reduce the loss, and saved files load back as "toy-icl"."""

from __future__ import annotations

import json

import pytest
import torch

import icl_circuits.core.models as models
from icl_circuits import build_prompts, load_model
from icl_circuits.core.prompts import Template
from icl_circuits.core.tasks import get_task
from icl_circuits.toy import TOY_TASKS
from icl_circuits.toy.train import SequenceSampler, ToyRecipe, train


@pytest.mark.parametrize("example", ["{x}:{y}", "{x} {y}"])
@pytest.mark.parametrize("task", ["antonym", "country-capital", "letter-string", "point", "uppercase"])
def test_training_sequences_are_the_toolkit_prompts(toy_tokenizer, task, example):
    """The recipe assembles ids from cached pieces; build_prompts tokenizes the whole text."""
    template = Template(example=example)
    sampler = SequenceSampler(toy_tokenizer, template)
    batch = build_prompts(toy_tokenizer, task, 6, 5, seed=2, template=template)
    for i in range(len(batch)):
        ids, answer_idx = sampler.sequence([*batch.demos[i], (batch.queries[i], batch.answers[i])])
        final = int(batch.final_positions[i])
        assert ids[: final + 1] == batch.tokens[i, : final + 1].tolist()
        assert ids[final + 1] == int(batch.answer_tokens[i])
        firsts = [a for j, a in enumerate(answer_idx) if j == 0 or answer_idx[j - 1] != a - 1]
        assert firsts == [*batch.answer_positions[i].tolist(), final + 1]


def test_the_bundled_tokenizer_is_the_toy_vocabulary(toy_tokenizer):
    """Tasks added to the library later (for pretrained models) do not change the toy's vocabulary."""
    from transformers import PreTrainedTokenizerFast

    from icl_circuits.toy import TOKENIZER_DIR

    assert PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR)).get_vocab() == toy_tokenizer.get_vocab()


def test_every_task_string_is_in_the_toy_vocabulary(toy_tokenizer):
    unk = toy_tokenizer.unk_token_id
    for name in TOY_TASKS:
        task = get_task(name)
        for text in [*task.inputs(), *task.outputs()]:
            assert unk not in toy_tokenizer(text, add_special_tokens=False)["input_ids"], (name, text)


def test_recipe_smoke_loss_decreases_and_files_load_back(tmp_path, monkeypatch):
    recipe = ToyRecipe(n_layers=1, d_model=32, n_heads=2, d_mlp=64, steps=60, batch_size=8,
                       curriculum_steps=20, warmup_steps=5, eval_every=60, pairs_per_sequence=6, lr=1e-2)
    model = train(recipe, tmp_path, progress=False)
    log = json.loads((tmp_path / "training.json").read_text())
    losses = log["log"]["losses"]
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10])
    assert json.loads((tmp_path / "config.json").read_text())["d_model"] == 32
    monkeypatch.setattr(models, "TOY_WEIGHTS_DIR", tmp_path)
    loaded = load_model("toy-icl")
    batch = build_prompts(loaded, "number", 3, 4, seed=0)
    assert torch.allclose(loaded(batch.tokens), model(batch.tokens), atol=1e-5)


def test_recipe_is_deterministic(tmp_path):
    recipe = ToyRecipe(n_layers=1, d_model=16, n_heads=2, d_mlp=32, steps=8, batch_size=4,
                       curriculum_steps=4, warmup_steps=2, eval_every=100, pairs_per_sequence=4)
    a = train(recipe, tmp_path / "a", progress=False)
    b = train(recipe, tmp_path / "b", progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("tasks", ["number", "number,antonym", "antonym"])
def test_recipe_trains_on_a_subset_of_tasks(tmp_path, tasks):
    """Only the named tasks are sampled and evaluated, with or without categorization among them."""
    recipe = ToyRecipe(n_layers=1, d_model=16, n_heads=2, d_mlp=32, steps=4, batch_size=4, curriculum_steps=2,
                       warmup_steps=1, eval_every=4, pairs_per_sequence=4, tasks=tasks, example="{x} {y}")
    train(recipe, tmp_path, progress=False)
    log = json.loads((tmp_path / "training.json").read_text())
    assert sorted(log["log"]["evals"][-1]["acc_by_demos"]) == sorted(tasks.split(","))
    assert log["recipe"]["example"] == "{x} {y}"


def test_recipe_rejects_an_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="no-such-task"):
        train(ToyRecipe(steps=1, tasks="number,no-such-task"), tmp_path, progress=False)


TINY = dict(n_layers=1, d_model=16, n_heads=2, d_mlp=32, batch_size=4, warmup_steps=1, pairs_per_sequence=4)


@pytest.fixture
def batch_calls(monkeypatch):
    """(sampler, tasks) of every ``_batch`` call the recipe makes, in order."""
    import icl_circuits.toy.train as recipe_module

    calls, real = [], recipe_module._batch

    def spy(sampler, tasks, n, n_pairs, rng):
        calls.append((sampler, tasks))
        return real(sampler, tasks, n, n_pairs, rng)

    monkeypatch.setattr(recipe_module, "_batch", spy)
    return calls


def test_format_bridge_writes_categorization_in_the_bridge_format_first(tmp_path, batch_calls, toy_tokenizer):
    """For the first bridge_steps only categorization sequences change format; evaluation never does."""
    recipe = ToyRecipe(**TINY, steps=4, curriculum_steps=0, eval_every=100, tasks="number,antonym",
                       bridge_example="{x} {y}", bridge_steps=2)
    train(recipe, tmp_path, progress=False)
    calls = [(tasks[0].kind, tuple(sampler.sep)) for sampler, tasks in batch_calls]
    colon = tuple(SequenceSampler(toy_tokenizer).sep)
    assert colon and calls[:8] == [("categorization", ()), ("knowledge", colon)] * 2 + [
        ("categorization", colon), ("knowledge", colon)] * 2
    assert all(sep == colon for _, sep in calls[8:])  # the evaluation after the last step


def test_early_tasks_are_drawn_alone_first_and_must_be_categorization(tmp_path, batch_calls):
    """For the first early_task_steps the categorization sub-batch comes from early_tasks only."""
    recipe = ToyRecipe(**TINY, steps=4, curriculum_steps=4, eval_every=100, tasks="number,point,antonym",
                       early_tasks="number", early_task_steps=2)
    train(recipe, tmp_path, progress=False)
    drawn = [tuple(sorted(t.name for t in tasks)) for _, tasks in batch_calls]
    assert drawn[:4] == [("number",)] * 2 + [("number", "point")] * 2
    with pytest.raises(ValueError, match="early_tasks.*antonym"):
        train(ToyRecipe(steps=1, tasks="number,antonym", early_tasks="antonym", early_task_steps=1), tmp_path,
              progress=False)


def test_checkpoints_are_written_at_every_evaluation(tmp_path, monkeypatch):
    """A stopped run leaves loadable weights and a log of the evaluations so far."""
    import icl_circuits.toy.train as recipe_module

    saved = []
    real = recipe_module.save
    monkeypatch.setattr(recipe_module, "save", lambda model, tok, r, out, log, sec: (
        saved.append(len(log["evals"])), real(model, tok, r, out, log, sec)))
    recipe = ToyRecipe(**TINY, steps=6, curriculum_steps=0, eval_every=2, tasks="number",
                       bridge_example="{x} {y}", bridge_steps=3)
    train(recipe, tmp_path, progress=False)
    assert saved == [1, 2, 3, 3]  # steps 2, 4, 6, and the final save
    evals = json.loads((tmp_path / "training.json").read_text())["log"]["evals"]
    assert ["acc_by_demos_bridge" in e for e in evals] == [True, False, False]  # only while bridging


def test_toy_or_untrained_falls_back_to_the_recipe_shape(tmp_path, monkeypatch):
    from icl_circuits.toy import toy_or_untrained

    model, trained = toy_or_untrained()
    assert trained and model.cfg.model_name == "toy-icl"
    monkeypatch.setattr(models, "TOY_WEIGHTS_DIR", tmp_path)  # a tree with no trained weights
    untrained, trained = toy_or_untrained()
    assert not trained and untrained.cfg.model_name == "random-toy-shape"
    for key in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "positional_embedding_type"):
        assert getattr(untrained.cfg, key) == getattr(model.cfg, key), key


def test_recorded_command_trains_the_same_recipe_and_stages_are_chained(tmp_path, monkeypatch):
    """training.json's command parses back to the recipe; a second stage keeps the first's record."""
    import shlex

    import icl_circuits.toy.train as recipe_module

    first = ToyRecipe(**TINY, steps=2, eval_every=100, tasks="number", example="{x} {y}")
    train(first, tmp_path / "a", progress=False)
    second = ToyRecipe(**{**first.__dict__, "init_from": str(tmp_path / "a"), "example": "{x}:{y}"})
    train(second, tmp_path / "b", progress=False)
    record = json.loads((tmp_path / "b" / "training.json").read_text())
    assert record["previous_stage"]["recipe"]["example"] == "{x} {y}"
    (tmp_path / "a" / "training.json").unlink()  # weights from elsewhere: no record to chain, still trains
    train(second, tmp_path / "c", progress=False)
    assert "previous_stage" not in json.loads((tmp_path / "c" / "training.json").read_text())
    parsed = {}
    monkeypatch.setattr(recipe_module, "train", lambda recipe, out: parsed.update(recipe=recipe, out=out))
    recipe_module.main(shlex.split(record["command"])[3:])
    assert parsed == {"recipe": second, "out": str(tmp_path / "b")}


def test_first_step_reaching_reads_the_final_or_the_trained_format():
    evals = [{"step": 250, "acc_by_demos": {"number": [0.0] * 9}, "acc_by_demos_bridge": {"number": [1.0] * 9}},
             {"step": 500, "acc_by_demos": {"number": [0.0] * 8 + [0.95], "antonym": [1.0] * 9}}]
    from icl_circuits.toy.train import first_step_reaching

    assert first_step_reaching(evals, "number") == 500
    assert first_step_reaching(evals, "number", trained_format=True) == 250
    assert first_step_reaching(evals, "number", threshold=0.96) is None
    assert first_step_reaching(evals, "antonym", trained_format=True) == 500  # not bridged: the final format
