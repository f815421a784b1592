"""Whole-answer scoring: greedy exact match (cached == uncached == a hand loop), teacher-forced
answer log-probability (== a token-by-token loop), known answers on a constructed bigram model,
and the accuracy tables."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from icl_circuits import build_prompts
from icl_circuits.core.evaluation import GreedyAnswers, answer_logprob, answer_token_logprobs, cut_answer, greedy_answers, icl_accuracy, score
from icl_circuits.core.runner import final_logits
from icl_circuits.core.prompts import Template
from icl_circuits.core.tasks import WordPairTask

ARROW = "{x} -> {y}"


@pytest.fixture(scope="module")
def bpe_tokenizer(gpt2_tokenizer, tmp_path_factory):
    """The byte-level BPE fixture, reloaded from disk (TransformerLens needs its name_or_path)."""
    path = tmp_path_factory.mktemp("bpe")
    gpt2_tokenizer.save_pretrained(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def bpe_model(tok, **overrides) -> HookedTransformer:
    """A random 2-layer model on the BPE tokenizer: every answer is several tokens."""
    kw = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=256, d_vocab=len(tok),
              act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary", rotary_dim=8,
              seed=0, device="cpu") | overrides
    model = HookedTransformer(HookedTransformerConfig(**kw), tokenizer=tok)
    return model.eval()


@pytest.fixture(scope="module")
def rotary_model(bpe_tokenizer):
    return bpe_model(bpe_tokenizer)


@pytest.fixture(scope="module")
def capitals(rotary_model):
    """Prompts of different lengths whose answers are 3-6 tokens."""
    return build_prompts(rotary_model, "country-capital", 7, 2, template=ARROW, seed=0)


def hand_greedy(model, batch, max_new: int) -> list[list[int]]:
    """Greedy decoding one prompt and one token at a time with the plain forward (full logits)."""
    tok, out = batch.tokenizer, []
    for i, n in enumerate(batch.lengths.tolist()):
        ids, gen = batch.tokens[i, :n].tolist(), []
        while len(gen) < max_new:
            with torch.no_grad():
                gen.append(int(model(torch.tensor([ids + gen]))[0, -1].argmax()))
            if gen[-1] == tok.eos_token_id or batch.template.joiner in tok.decode(gen).lstrip(" "):
                break
        out.append(gen)
    return out


# ----------------------------------------------------------------------------- greedy decoding
def test_prompts_differ_in_length_and_answers_are_multi_token(capitals):
    assert len(set(capitals.lengths.tolist())) > 2 and min(len(a) for a in capitals.answer_token_ids) > 1


@pytest.mark.parametrize("pos", ["rotary", "standard"])
@pytest.mark.parametrize("stop_bias", [0.0, 2.0])
def test_cached_greedy_equals_a_hand_loop_without_cache(bpe_tokenizer, capitals, pos, stop_bias):
    """Right-padded prompts of different lengths: every token at its true position, with or without
    cache; with a bias towards newline and EOS, prompts stop at different steps for different reasons."""
    model = bpe_model(bpe_tokenizer, positional_embedding_type=pos, seed=3)
    with torch.no_grad():
        model.unembed.b_U[[bpe_tokenizer.convert_tokens_to_ids("Ċ"), bpe_tokenizer.eos_token_id]] = stop_bias
    want = hand_greedy(model, capitals, 6)
    for bs in (3, 64):
        got = greedy_answers(model, capitals, max_new_tokens=6, batch_size=bs)
        assert got.generated_ids == want
    assert greedy_answers(model, capitals, max_new_tokens=6, use_cache=False).generated_ids == want
    if stop_bias and pos == "rotary":
        assert len(set(got.stop_reasons)) == 3 and len({len(g) for g in want}) > 1


def test_cached_greedy_with_grouped_query_attention(bpe_tokenizer, capitals):
    model = bpe_model(bpe_tokenizer, n_key_value_heads=2, seed=5)
    got = greedy_answers(model, capitals, max_new_tokens=5, batch_size=4)
    assert got.generated_ids == hand_greedy(model, capitals, 5)


def test_default_max_new_tokens_is_longest_answer_plus_margin(rotary_model, capitals):
    got = greedy_answers(rotary_model, capitals)
    assert got.max_new_tokens == max(len(a) for a in capitals.answer_token_ids) + 3
    assert all(len(g) <= got.max_new_tokens for g in got.generated_ids)


@pytest.mark.parametrize("text, template, want", [
    (" PLAN\nfoo", Template(ARROW), ("PLAN", True)),
    (" New Delhi \n", Template(ARROW), ("New Delhi", True)),
    ("\nPLAN", Template(ARROW), ("", True)),
    (" PLAN", Template(ARROW), ("PLAN", False)),
    (" PLAN. | x", Template("{x} -> {y}.", joiner=" | "), ("PLAN", True)),
])
def test_cut_answer(text, template, want):
    assert cut_answer(text, template) == want


# ----------------------------------------------------------------------------- known answers
def bigram_model(tok, chain: list[str], seed: int = 0) -> HookedTransformer:
    """Blocks write nothing, so logits at a token depend on that token only; the unembedding maps
    each token of ``chain`` to the next one (``chain[0]`` is the prompts' last token)."""
    model = bpe_model(tok, seed=seed)
    ids = [tok.convert_tokens_to_ids(t) for t in chain]
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_(), block.attn.b_O.zero_(), block.mlp.W_out.zero_(), block.mlp.b_out.zero_()
        model.unembed.W_U.zero_(), model.unembed.b_U.zero_()
        for a, b in zip(ids, ids[1:]):
            model.unembed.W_U[:, b] += 10 * model.ln_final(model.W_E[a][None, None])[0, 0]
    return model


@pytest.fixture(scope="module")
def plan_task():
    pairs = [("plan", "PLAN"), ("plane", "PLANE"), ("cat", "CAT"), ("dog", "DOG"), ("pan", "PAN")]
    return WordPairTask("plan-words", "algorithmic", "", pairs)


@pytest.mark.parametrize("end, reason", [("Ċ", "joiner"), ("<|endoftext|>", "eos")])
def test_exact_match_known_answers_on_a_bigram_model(bpe_tokenizer, plan_task, end, reason):
    """The model says ' PLAN' then stops: exact match only for PLAN; first token for PLAN and PLANE."""
    batch = build_prompts(bpe_tokenizer, plan_task, 24, 1, template=ARROW, seed=0, prepend_bos=False)
    last = {batch.tokenizer.convert_ids_to_tokens(int(batch.tokens[i, n - 1])) for i, n in enumerate(batch.lengths)}
    assert last == {"Ġ"}  # every prompt ends with the same token, so the model answers the same
    model = bigram_model(bpe_tokenizer, ["Ġ", "P", "L", "A", "N", end])
    got = greedy_answers(model, batch)
    assert got.generated == ["PLAN"] * len(batch) and set(got.stop_reasons) == {reason}
    gold = batch.answers
    assert got.correct.tolist() == [a == "PLAN" for a in gold]
    first = score(model, batch, ["first_token", "exact_match"])
    assert first["first_token"].tolist() == [float(a.startswith("P")) for a in gold]
    assert {"PLAN", "PLANE", "CAT"} <= set(gold)  # both metrics agree on some prompts and differ on PLANE
    differ = [a for a, f, e in zip(gold, first["first_token"], first["exact_match"]) if f != e]
    assert differ and set(differ) <= {"PLANE", "PAN"}


def test_greedy_answers_save_load_and_frame(tmp_path, rotary_model, capitals):
    got = greedy_answers(rotary_model, capitals, max_new_tokens=4)
    back = GreedyAnswers.load(got.save(tmp_path / "g"))
    assert back.generated_ids == got.generated_ids and torch.equal(back.correct, got.correct)
    df = got.to_dataframe()
    assert len(df) == len(capitals) and set(df.metric) == {"exact_match"} and list(df.reference) == capitals.answers


def test_greedy_bad_input(rotary_model, capitals):
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_answers(rotary_model, capitals, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens=400.*n_ctx=256"):
        greedy_answers(rotary_model, capitals, max_new_tokens=400)
    with pytest.raises(ValueError, match="batch_size"):
        greedy_answers(rotary_model, capitals, batch_size=0)


# ----------------------------------------------------------------------------- teacher forcing
def test_answer_logprob_equals_a_token_by_token_loop(rotary_model, capitals):
    got, mask = answer_token_logprobs(rotary_model, capitals, batch_size=3)
    for i, n in enumerate(capitals.lengths.tolist()):
        ids, ans = capitals.tokens[i, :n].tolist(), capitals.answer_token_ids[i]
        want = []
        for j, a in enumerate(ans):
            with torch.no_grad():
                logits = rotary_model(torch.tensor([ids + ans[:j]]))[0, -1]
            want.append(float(logits.log_softmax(-1)[a]))
        assert mask[i].sum() == len(ans)
        assert torch.allclose(got[i, : len(ans)], torch.tensor(want), atol=1e-5)
        assert math.isclose(float(answer_logprob(rotary_model, capitals)[i]), sum(want), abs_tol=1e-4)


def test_first_answer_token_logprob_is_log_gold_prob(rotary_model, capitals):
    lp, _ = answer_token_logprobs(rotary_model, capitals)
    gold_prob = score(rotary_model, capitals, "gold_prob")["gold_prob"]
    assert torch.allclose(lp[:, 0], gold_prob.log(), atol=1e-5)


# ----------------------------------------------------------------------------- score and tables
def test_score_shares_names_and_rejects_bad_metrics(tiny_model):
    batch = build_prompts(tiny_model, "antonym", 6, 2, seed=0)
    out = score(tiny_model, batch, ["accuracy", "first_token", "answer_logprob"])
    assert set(out) == {"first_token", "answer_logprob"} and out["first_token"].shape == (6,)
    assert torch.equal(out["first_token"], (final_logits(tiny_model, batch).argmax(-1) == batch.answer_tokens).float())
    with pytest.raises(ValueError, match="unknown metric 'nope'.*first_token"):
        score(tiny_model, batch, ["nope"])
    with pytest.raises(ValueError, match="'label' needs label words.*'antonym'"):
        score(tiny_model, batch, ["label"])
    with pytest.raises(ValueError, match="metrics is empty"):
        score(tiny_model, batch, [])


def test_icl_accuracy_metrics(tiny_model):
    batch = build_prompts(tiny_model, "number", 8, 2, seed=1)
    assert icl_accuracy(tiny_model, batch, restrict_to_labels=True) == icl_accuracy(tiny_model, batch, "label")
    assert icl_accuracy(tiny_model, batch) == icl_accuracy(tiny_model, batch, "accuracy")
    assert 0 <= icl_accuracy(tiny_model, batch, "exact_match") <= 1
    with pytest.raises(ValueError, match="not a rate"):
        icl_accuracy(tiny_model, batch, "answer_logprob")
    with pytest.raises(ValueError, match="restrict_to_labels=True means metric='label'"):
        icl_accuracy(tiny_model, batch, "exact_match", restrict_to_labels=True)


# ----------------------------------------------------------------------------- the real model
def hand_greedy_batched(model, batch, max_new: int) -> list[list[int]]:
    """Greedy decoding without a cache: each step re-runs every sequence (right-padded, full logits)."""
    tok, seqs = batch.tokenizer, [batch.tokens[i, :n].tolist() for i, n in enumerate(batch.lengths.tolist())]
    gen: list[list[int]] = [[] for _ in seqs]
    active = set(range(len(seqs)))
    while active:
        full = [s + g for s, g in zip(seqs, gen)]
        x = torch.zeros(len(full), max(map(len, full)), dtype=torch.long)
        for i, f in enumerate(full):
            x[i, : len(f)] = torch.tensor(f)
        with torch.no_grad():
            logits = model(x)
        for i in sorted(active):
            gen[i].append(int(logits[i, len(full[i]) - 1].argmax()))
            if gen[i][-1] == tok.eos_token_id or batch.template.joiner in tok.decode(gen[i]).lstrip(" ") or len(gen[i]) == max_new:
                active.discard(i)
    return gen


@pytest.mark.real_model
@pytest.mark.parametrize("task, n_demos, n_build, pick", [
    ("uppercase", 2, 24, [17, 22, 0, 3, 15]),  # STRONG, NORTH, ROOM, WORLD, LISTEN: 2-3 tokens each
    ("country-capital", 8, 12, [8, 10, 11, 4]),  # Ankara, Dhaka, Baghdad, Thimphu
])
def test_whole_answer_metrics_on_smollm2(real_model, task, n_demos, n_build, pick):
    """On SmolLM2-135M with '{x} -> {y}': the cached batched greedy decode is the uncached hand decode;
    exact match and first-token accuracy are what that decode says, and they differ on uppercase
    prompts whose first token is right but whose continuation is not (STRONG -> ' STR' 'ICT')."""
    batch = build_prompts(real_model, task, n_build, n_demos, template=ARROW, seed=0).select(pick)
    n_max = max(len(a) for a in batch.answer_token_ids) + 1
    hand = hand_greedy_batched(real_model, batch, n_max)
    got = greedy_answers(real_model, batch, max_new_tokens=n_max)
    assert got.generated_ids == hand
    tok = batch.tokenizer
    want_exact = [cut_answer(tok.decode(h), batch.template)[0] == a for h, a in zip(hand, batch.answers)]
    want_first = [h[0] == a[0] for h, a in zip(hand, batch.answer_token_ids)]
    assert got.correct.tolist() == want_exact
    first = score(real_model, batch, ["first_token"])["first_token"]
    assert first.bool().tolist() == want_first
    multi = [len(a) > 1 for a in batch.answer_token_ids]
    assert any(e and m for e, m in zip(want_exact, multi)) and not all(want_exact)
    if task == "uppercase":
        assert all(multi) and any(f and not e for f, e in zip(want_first, want_exact))
