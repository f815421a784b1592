"""Exact ICL positions: property tests over templates and tokenizers, variants, errors."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from icl_circuits import Template, TokenizationBoundaryError, build_prompts
from icl_circuits.core.prompts import COMPACT_TEMPLATE, SPACED_TEMPLATE, default_template
from icl_circuits.core.task_filters import single_token_task
from icl_circuits.core.tasks import WordPairTask, get_task, task_from_pairs

EXAMPLES = ["{x}:{y}", "{x} -> {y}", "Input: {x}\nOutput: {y}", "Q: {x}\nA: {y}", "{x} = {y}.", "{x}\t{y}", "({x}, {y})"]
JOINERS = ["\n", "\n\n", " | ", "; ", "\n###\n"]
PREFIXES = ["", "Translate the words.\n"]

WORD = st.from_regex(r"[A-Za-z][a-z]{0,7}", fullmatch=True)
DIGITS = st.from_regex(r"[0-9]{1,3}", fullmatch=True)
PUNCT = st.from_regex(r"[A-Za-z]{1,3}(\.|')[a-z]{1,3}", fullmatch=True)  # "U.S", "don't"
MULTI = st.lists(WORD, min_size=2, max_size=3).map(" ".join)
FIELD = st.one_of(WORD, DIGITS, PUNCT, MULTI)
TEMPLATE = st.builds(Template, st.sampled_from(EXAMPLES), st.sampled_from(JOINERS), st.sampled_from(PREFIXES))


def _pairs(fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.tuples(fields, fields), min_size=4, max_size=7, unique_by=lambda p: p[0])


def _check(tok, template: Template, pairs, n_demos: int, normalize=lambda s: s) -> None:
    """Build prompts and check every recorded span against the text it should hold."""
    task = WordPairTask("generated", "knowledge", "pairs drawn by hypothesis", pairs)
    try:
        batch = build_prompts(tok, task, n_prompts=3, n_demos=n_demos, template=template, seed=0)
    except TokenizationBoundaryError:
        event("tokenizer merged a field with the template")  # legitimate refusal, never a wrong span
        return
    dec = lambda ids: normalize(tok.decode(ids).strip())  # noqa: E731
    for i in range(len(batch)):
        ids = batch.tokens[i].tolist()
        assert len(batch.demos[i]) == n_demos
        for d, (x, y) in enumerate(batch.demos[i]):
            s, e = batch.input_spans[i, d].tolist()
            assert dec(ids[s:e]) == normalize(x)
            s, e = batch.answer_spans[i, d].tolist()
            assert dec(ids[s:e]) == normalize(y)
            assert batch.answer_positions[i, d] == s and batch.demo_answer_tokens[i, d] == ids[s]
            assert batch.separator_positions[i, d] == s - 1
        s, e = batch.query_spans[i].tolist()
        assert dec(ids[s:e]) == normalize(batch.queries[i])
        final = int(batch.final_positions[i])
        assert batch.attention_mask[i, : final + 1].all() and not batch.attention_mask[i, final + 1 :].any()
        assert final >= e - 1
        first = dec([int(batch.answer_tokens[i])])
        assert first and normalize(batch.answers[i]).startswith(first)
        assert dec(ids[1 : final + 1]) == normalize(batch.texts[i].strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=TEMPLATE, pairs=_pairs(FIELD), n_demos=st.integers(0, 3))
def test_spans_decode_exactly_gpt2_style(gpt2_tokenizer, template, pairs, n_demos):
    """Byte-level BPE: every span decodes to its field, the final position is the last real token."""
    _check(gpt2_tokenizer, template, pairs, n_demos)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=TEMPLATE, pairs=_pairs(FIELD), n_demos=st.integers(0, 3))
def test_spans_decode_exactly_llama_style(llama_tokenizer, template, pairs, n_demos):
    """Metaspace (sentencepiece-style) BPE with byte fallback: the same exactness."""
    _check(llama_tokenizer, template, pairs, n_demos)


@pytest.fixture(scope="module")
def toy_words(toy_tokenizer):
    return [w for w in toy_tokenizer.get_vocab() if re.fullmatch(r"[A-Za-z0-9]+", w)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), template=st.builds(Template, st.sampled_from(EXAMPLES), st.sampled_from(JOINERS[:4])),
       n_demos=st.integers(0, 3))
def test_spans_decode_exactly_toy_tokenizer(toy_tokenizer, toy_words, data, template, n_demos):
    """The bundled word-level tokenizer (spaces are not tokens, so compare without them; the
    prefix is left out because its words are outside the toy vocabulary)."""
    field = st.one_of(st.sampled_from(toy_words), st.lists(st.sampled_from(toy_words), min_size=2, max_size=3).map(" ".join))
    pairs = data.draw(_pairs(field))
    _check(toy_tokenizer, template, pairs, n_demos, normalize=lambda s: re.sub(r"\s+", "", s))


def test_boundary_merge_is_an_error_not_a_wrong_span():
    """A tokenizer whose tokens swallow the separator ("hot:cold" is one token) is refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "\n": 2, "hot:cold": 3, "big:small": 4, "up:down": 5, "a:b": 6}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", unk_token="<unk>")
    task = WordPairTask("t", "knowledge", "", [("hot", "cold"), ("big", "small"), ("up", "down"), ("a", "b")])
    with pytest.raises(TokenizationBoundaryError, match=r"merges the input '\w+' with the template"):
        build_prompts(tok, task, 4, 2, template="{x}:{y}", seed=0)


def test_positions_in_a_known_prompt(toy_tokenizer):
    """A hand-checked prompt: <bos> hot : cold \\n big : small \\n up :"""
    task = WordPairTask("t", "knowledge", "", [("hot", "cold"), ("big", "small"), ("up", "down")])
    b = build_prompts(toy_tokenizer, task, 1, 2, seed=0)
    toks = [toy_tokenizer.decode([t]) for t in b.tokens[0].tolist()]
    assert toks[0] == "<bos>" and toks[-1] == ":" and len(toks) == 11
    for d, (x, y) in enumerate(b.demos[0]):
        assert toks[int(b.input_spans[0, d, 0])] == x
        assert toks[int(b.answer_positions[0, d])] == y
        assert toks[int(b.separator_positions[0, d])] == ":"
        assert toks[int(b.delimiter_positions[0, d])] == "\n"
    assert toks[int(b.query_spans[0, 0])] == b.queries[0]
    assert b.final_positions.tolist() == [10]
    assert "demo_1.answer" in b.describe(0) and "final" in b.describe(0)


def test_variants_share_demos_and_queries(toy_tokenizer):
    icl = build_prompts(toy_tokenizer, "antonym", 6, 4, seed=3)
    zs = build_prompts(toy_tokenizer, "antonym", 6, 4, seed=3, variant="zero_shot")
    dq = build_prompts(toy_tokenizer, "antonym", 6, 4, seed=3, variant="dummy_query")
    sh = build_prompts(toy_tokenizer, "antonym", 6, 4, seed=3, variant="shuffled_labels")
    ra = build_prompts(toy_tokenizer, "antonym", 6, 4, seed=3, variant="random_answers")
    assert zs.queries == icl.queries and zs.n_demos == 0 and zs.answer_positions.shape == (6, 0)
    assert dq.demos == icl.demos and all(q != d for q, d in zip(dq.queries, icl.queries))
    assert sh.queries == icl.queries and sh.answers == icl.answers
    for clean, shuf in zip(icl.demos, sh.demos):
        assert [x for x, _ in clean] == [x for x, _ in shuf]
        assert sorted(y for _, y in clean) == sorted(y for _, y in shuf)
        assert all(a[1] != b[1] for a, b in zip(clean, shuf) if len({y for _, y in clean}) == len(clean))
    assert [[x for x, _ in d] for d in ra.demos] == [[x for x, _ in d] for d in icl.demos]
    assert torch.equal(icl.answer_tokens, zs.answer_tokens)


def test_same_seed_same_prompts_and_different_seed_differs(toy_tokenizer):
    a = build_prompts(toy_tokenizer, "number", 8, 4, seed=1)
    b = build_prompts(toy_tokenizer, "number", 8, 4, seed=1)
    c = build_prompts(toy_tokenizer, "number", 8, 4, seed=2)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts and a.texts != c.texts


def test_categorization_label_tokens_follow_the_binding(toy_tokenizer):
    task = get_task("number")
    b = build_prompts(toy_tokenizer, task, 10, 6, seed=0)
    for i in range(len(b)):
        words = b.label_words[i]
        assert b.answers[i] == task.apply(b.queries[i], words)
        ids = [toy_tokenizer.convert_tokens_to_ids(w) for w in words]
        assert b.label_token_ids[i].tolist() == ids
        assert int(b.answer_tokens[i]) in ids
        assert all(y in words for _, y in b.demos[i])


def test_select_trims_padding_and_keeps_positions(toy_tokenizer):
    b = build_prompts(toy_tokenizer, "letter-string", 6, 3, seed=0)
    sub = b.select([4, 1])
    assert sub.queries == [b.queries[4], b.queries[1]]
    assert sub.tokens.shape[1] == int(sub.final_positions.max()) + 1
    assert torch.equal(sub.answer_spans, b.answer_spans[[4, 1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="no-such-task"), "unknown task"),
        (dict(task="next-letter", n_demos=30), "n_demos=30"),
        (dict(template="{x} and nothing"), "template"),
        (dict(template="{y} before {x}"), "template"),
        (dict(variant="weird"), "variant"),
        (dict(n_prompts=0), "n_prompts"),
        (dict(n_demos=-1), "n_demos"),
    ],
)
def test_bad_input_is_a_clear_error(toy_tokenizer, kwargs, match):
    args = dict(task="antonym", n_prompts=2, n_demos=2) | kwargs
    with pytest.raises(ValueError, match=match):
        build_prompts(toy_tokenizer, **args)


def test_prompt_longer_than_n_ctx_is_an_error(toy_tokenizer):
    class Cfg:
        n_ctx, default_prepend_bos = 12, True

    class Model:
        tokenizer, cfg = toy_tokenizer, Cfg()

    with pytest.raises(ValueError, match="n_ctx=12"):
        build_prompts(Model(), "antonym", 2, 8)


def test_tokenizer_without_offsets_is_refused():
    class SlowTokenizer:  # what a Python ("slow") tokenizer does when asked for offsets
        is_fast, bos_token_id = False, None

        def __call__(self, text, **kwargs):
            if kwargs.get("return_offsets_mapping"):
                raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
            return {"input_ids": [0]}

    with pytest.raises(ValueError, match="model_or_tokenizer: SlowTokenizer cannot return offset mappings"):
        build_prompts(SlowTokenizer(), "antonym", 2, 2)


# ----------------------------------------------------------------------------- default template
def test_default_template_follows_the_tokenizer(toy_tokenizer, gpt2_tokenizer, llama_tokenizer, tiny_model):
    """Word-level (spaces dropped): the toy's "{x}:{y}"; byte-level BPE and metaspace: "{x} -> {y}"."""
    assert default_template(toy_tokenizer) == default_template(tiny_model) == COMPACT_TEMPLATE == Template("{x}:{y}")
    assert default_template(gpt2_tokenizer) == default_template(llama_tokenizer) == SPACED_TEMPLATE
    assert SPACED_TEMPLATE.example == "{x} -> {y}"
    task = WordPairTask("t", "knowledge", "", [("hot", "cat"), ("big", "mat"), ("up", "you")])
    assert build_prompts(toy_tokenizer, "antonym", 2, 1).template == COMPACT_TEMPLATE
    b = build_prompts(gpt2_tokenizer, task, 3, 1)
    assert b.template == SPACED_TEMPLATE and all(t.endswith(" ->") for t in b.texts)
    # the answer's first token is the word with its space, as in ordinary text
    assert [gpt2_tokenizer.decode([int(t)]) for t in b.answer_tokens] == [" " + a for a in b.answers]


# ----------------------------------------------------------------------------- single-token examples
@pytest.fixture(scope="module")
def mixed_task(gpt2_tokenizer):
    """Words of which some are one token after a space for the GPT-2-style fixture and some not."""
    words = ["cat", "sat", "mat", "know", "you", "apple", "river", "Paris", "Tokyo", "walked", "children", "small"]
    pairs = [(a, b) for a, b in zip(words, words[1:] + words[:1])]
    return task_from_pairs("mixed", pairs)


def test_single_token_keeps_exactly_the_one_token_examples(gpt2_tokenizer, mixed_task):
    sub = single_token_task(gpt2_tokenizer, mixed_task, "{x} -> {y}")
    assert sub.name == "mixed" and sub.source_size == len(mixed_task) and 2 <= len(sub) < len(mixed_task)
    for x in mixed_task.inputs():  # by hand: x after the joiner, " y" at the end (a lone space token
        y = mixed_task.apply(x)     # of this small fixture is template text, not part of the answer)
        one = len(gpt2_tokenizer.tokenize(x)) == 1 and len([t for t in gpt2_tokenizer.tokenize(" " + y) if t != "Ġ"]) == 1
        assert (x in sub.inputs()) == one, x
    b = build_prompts(gpt2_tokenizer, mixed_task, 8, len(sub) - 1, "{x} -> {y}", single_token=True)
    assert ((b.input_spans[..., 1] - b.input_spans[..., 0]) == 1).all()
    assert ((b.answer_spans[..., 1] - b.answer_spans[..., 0]) == 1).all()
    assert all(len(ids) == 1 for ids in b.answer_token_ids)
    assert ((b.query_spans[:, 1] - b.query_spans[:, 0]) == 1).all()


def test_single_token_error_says_how_many_remain(gpt2_tokenizer, mixed_task):
    n = len(single_token_task(gpt2_tokenizer, mixed_task, "{x} -> {y}"))
    with pytest.raises(ValueError, match=rf"needs {n + 1} distinct examples .* only {n} of the 12 examples of task 'mixed'"):
        build_prompts(gpt2_tokenizer, mixed_task, 2, n, "{x} -> {y}", single_token=True)


def test_single_token_categorization_checks_the_label_words(toy_tokenizer, gpt2_tokenizer):
    """Arbitrary pools keep their one-token words; fixed labels must all be one token."""
    sub = single_token_task(toy_tokenizer, "number")
    assert len(sub) == 100 and sub.label_words == get_task("number").label_words
    task = task_from_pairs("yes-no", [("hot", "you"), ("big", "know"), ("France", "you"), ("Japan", "know"),
                                      ("cat", "you")], labels=["know", "you"])  # "cat": two tokens after "\n"
    b = build_prompts(gpt2_tokenizer, task, 4, 2, "{x} -> {y}", single_token=True)
    assert b.label_words[0] == ("know", "you") and b.label_token_ids.shape == (4, 2)
    assert single_token_task(gpt2_tokenizer, task).inputs() == ["hot", "big", "France", "Japan"]
    with pytest.raises(ValueError, match=r"label word\(s\) \['negative', 'positive'\] are not one token"):
        single_token_task(gpt2_tokenizer, "sentiment")


# ----------------------------------------------------------------------------- fixed label words
def test_fixed_label_words_are_the_same_in_every_prompt(gpt2_tokenizer):
    b = build_prompts(gpt2_tokenizer, "sentiment", 6, 4, seed=0)
    t = get_task("sentiment")
    assert set(b.label_words) == {("negative", "positive")}
    first = [gpt2_tokenizer.convert_tokens_to_ids([t for t in gpt2_tokenizer.tokenize(" " + w) if t != "Ġ"][0])
             for w in ("negative", "positive")]  # a lone space token is template text in this small fixture
    assert b.label_token_ids.tolist() == [first] * 6
    assert all(b.answers[i] == t.apply(q) for i, q in enumerate(b.queries))
    assert all(y == t.apply(x) for d in b.demos for x, y in d)


@pytest.mark.real_model
def test_real_model_template_and_natural_label_words(real_model):
    """SmolLM2 (byte-level BPE): "{x} -> {y}" by default; the natural label words are one token each."""
    assert default_template(real_model) == SPACED_TEMPLATE
    for name, words in (("sentiment", ["negative", "positive"]), ("animal-plant", ["animal", "plant"])):
        b = build_prompts(real_model, name, 3, 4, seed=0)
        assert b.template == SPACED_TEMPLATE
        assert [real_model.tokenizer.decode([t]) for t in b.label_token_ids[0].tolist()] == [" " + w for w in words]
    words_only = single_token_task(real_model, "animal-plant")  # at a line start (no space) few names are
    assert words_only.label_words == ["animal", "plant"] and 10 <= len(words_only) < 130  # one token (22 here)
    b = build_prompts(real_model, "animal-plant", 4, 6, seed=0, single_token=True)
    assert ((b.input_spans[..., 1] - b.input_spans[..., 0]) == 1).all()
    with pytest.raises(ValueError, match=r"no example of task 'sentiment' \(of 120\) has a one-token input"):
        single_token_task(real_model, "sentiment")  # phrases


def test_words_the_tokenizer_cannot_read_are_an_error_not_unknown_tokens(toy_tokenizer):
    """toy-icl's word-level tokenizer predates the natural tasks: prompts of them would be <unk> soup."""
    from icl_circuits.core.prompts import UnrepresentableTextError
    from icl_circuits.core.task_filters import representable_tasks
    from icl_circuits.toy import TOY_TASKS

    with pytest.raises(UnrepresentableTextError, match="unknown token"):
        build_prompts(toy_tokenizer, "sentiment", 2, 2, seed=0)
    assert representable_tasks(toy_tokenizer) == list(TOY_TASKS)


def test_byte_level_tokenizers_can_read_every_task(gpt2_tokenizer):
    from icl_circuits.core.task_filters import representable_tasks
    from icl_circuits.core.tasks import list_tasks

    assert representable_tasks(gpt2_tokenizer) == list_tasks()
