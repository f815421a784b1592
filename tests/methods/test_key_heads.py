"""Key heads of an injected vector: ranking by DLA, key vs random head ablation (seeded, heads after
the injection only), the spec path equals raw head-ablation hooks, round trips, errors, figures."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core import interventions as iv
from icl_circuits.core import runner
from icl_circuits.methods.head_ablation import head_ablation_hooks, head_means
from icl_circuits.methods.key_heads import KeyHeadAblationResult, KeyHeadsResult, key_head_ablation, key_heads
from icl_circuits.methods.ov_circuits import injection, ov_contributions
from icl_circuits.methods.vectors import TaskVector


@pytest.fixture(scope="module")
def zs(tiny_model):
    return build_prompts(tiny_model, "antonym", 8, 0, seed=0, variant="zero_shot")


@pytest.fixture(scope="module")
def icl(tiny_model):
    return build_prompts(tiny_model, "letter-string", 6, 3, seed=0)


@pytest.fixture(scope="module")
def tv(tiny_model):
    g = torch.Generator().manual_seed(0)
    return TaskVector(torch.randn(2, tiny_model.cfg.d_model, generator=g) * 4, [0, 1], "add", "random", "antonym", model="tiny")


def test_key_heads_rank_by_mean_dla(tiny_model, zs, tv, tmp_path):
    kh = key_heads(tiny_model, zs, tv, 0)
    scores = [float(kh.scores[kh.layers.index(l), h]) for l, h in kh.ranking]
    assert scores == sorted(scores, reverse=True) and len(kh.ranking) == 8
    assert set(kh.to_dataframe()["rank"]) == set(range(8))
    ov = ov_contributions(tiny_model, zs, tv, 0, keep_head_vectors=False)
    assert kh.ranking == [list(p) for p in ov.ranking("ov")]
    back = KeyHeadsResult.load(kh.save(tmp_path / "kh"))
    assert back.ranking == kh.ranking and torch.equal(back.scores, kh.scores) and back.provenance["model"] == "tiny"


def test_key_vs_random_ablation_is_seeded(tiny_model, zs, tv, tmp_path):
    kw = dict(ks=[1, 3], n_random=3, progress=False)
    a = key_head_ablation(tiny_model, zs, tv, 1, seed=5, **kw)
    b = key_head_ablation(tiny_model, zs, tv, 1, seed=5, **kw)
    c = key_head_ablation(tiny_model, zs, tv, 1, seed=6, how="mean", **kw)
    assert a.random_heads == b.random_heads and a.random_heads != c.random_heads
    assert all(l == 1 for draws in a.random_heads for heads in draws for l, _ in heads)  # heads after injection
    assert a.random.shape == (2, 3) and a.top_heads[0] == key_heads(tiny_model, zs, tv, 1).ranking[0]
    back = KeyHeadAblationResult.load(a.save(tmp_path / "kha"))
    assert back.random_heads == a.random_heads and len(back.to_dataframe()) == 2 * (1 + 3)


@pytest.mark.parametrize("how", ["zero", "mean"])
@pytest.mark.parametrize("where", ["all", "final"])
def test_spec_path_equals_raw_head_ablation_hooks(tiny_model, zs, tv, how, where):
    """Injection + head ablation as Intervention specs give the logits of hand-built raw hooks."""
    heads = [(1, 0), (1, 2)]
    inject = injection(tiny_model, tv, 1)
    means = head_means(tiny_model, zs, [1], positions=where, width=zs.tokens.shape[1], make_hooks=inject) \
        if how == "mean" else None
    spec = runner.run_final_logits(tiny_model, zs, head_ablation_hooks(heads, how, means, where, inject), batch_size=3)

    def raw(rows, mb):
        fin = mb.positions("final").positions
        pos = None if where == "all" else fin
        mean = None if means is None else (means[1][: mb.tokens.shape[1]] if where == "all" else means[1])
        return [(iv.resid_name(tiny_model, 1), iv.add_hook(fin, tv.at(1))),
                (iv.z_name(1), iv.stacked_head_ablation_hook([[0, 2]], pos, how, mean))]

    assert torch.equal(spec, runner.run_final_logits(tiny_model, zs, raw, batch_size=3))  # exact: same writes, shapes


def test_mean_ablation_injects_at_the_mean_batch_own_positions(tiny_model, zs, icl, tv):
    """The vector is injected at each mean_batch prompt's own final position (not the batch's)."""
    make = injection(tiny_model, tv, 1)
    (spec,) = make(slice(0, 6), icl)
    assert torch.equal(spec.positions, icl.positions("final").positions)
    r = key_head_ablation(tiny_model, zs, tv, 1, ks=[1], how="mean", n_random=1, mean_batch=icl, progress=False)
    assert r.top.shape == (1,)


@pytest.mark.parametrize("call, match", [
    (lambda m, b, tv: key_head_ablation(m, b, tv, 0, ks=[], progress=False), "ks is empty"),
    (lambda m, b, tv: key_head_ablation(m, b, tv, 1, ks=[5], progress=False), r"in \[1, 4\]"),
    (lambda m, b, tv: key_head_ablation(m, b, tv, 0, ranking=[], progress=False), "ranking is empty"),
    (lambda m, b, tv: key_head_ablation(m, b, tv, 0, how="half", progress=False), "how must be one of"),
    (lambda m, b, tv: key_heads(m, b, tv, 0, source="both"), "source must be one of"),
    (lambda m, b, tv: key_head_ablation(m, b, tv, 0, restrict_to_labels=True, progress=False), "has no label words"),
])
def test_clear_errors(tiny_model, zs, tv, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model, zs, tv)


def test_figures_build(tiny_model, zs, tv):
    from icl_circuits.viz import key_heads as P

    kh = key_heads(tiny_model, zs, tv, 0)
    figs = [P.key_heads(kh),
            P.key_vs_random(key_head_ablation(tiny_model, zs, tv, 0, ranking=kh, ks=[1, 2], n_random=2, progress=False))]
    for f in figs:
        assert "tiny" in f.layout.title.text and len(f.data) >= 1


def test_key_head_layers_figure_places_the_top_heads_in_their_blocks(tiny_model, zs, tv):
    from icl_circuits.viz import key_heads as P

    kh = key_heads(tiny_model, zs, tv, 1)
    fig = P.key_head_layers([kh], top=3)
    blocks = [int(l) for l, _ in kh.ranking[:3]]
    dots, marker = fig.data[0], fig.data[1]
    assert sorted(dots.x) == sorted(set(blocks)) and sum(dots.customdata) == 3  # each top head counted once
    assert list(marker.x) == [1] and all(x >= 1 for x in dots.x)  # heads sit at or after the injection block
    with pytest.raises(ValueError, match="results is empty"):
        P.key_head_layers([])


def test_head_scan_figures_build(tiny_model, icl):
    from icl_circuits.methods.attribution import head_attribution
    from icl_circuits.methods.heads import head_ablation_scan
    from icl_circuits.viz import heads as P

    scan = head_ablation_scan(tiny_model, icl, metric="logit_diff_to_mean", progress=False)
    approx = head_attribution(tiny_model, icl, metric="logit_diff_to_mean")
    for f in (P.head_scan(scan), P.scan_vs_attribution(scan, approx)):
        assert "tiny" in f.layout.title.text and len(f.data) >= 1


def test_ablate_positions_take_a_positions_spec(tiny_model, icl, tv):
    """A spec ("answers") ablates there; "final" and ["final"] name the same set; "all" equals None."""
    kw = dict(ks=[1], n_random=1, ranking=[(1, 0)], progress=False)
    r = key_head_ablation(tiny_model, icl, tv, 1, how="mean", ablate_positions="answers", **kw)
    assert r.ablate_positions == "answers" and r.top.shape == (1,)
    a = key_head_ablation(tiny_model, icl, tv, 1, ablate_positions="final", **kw)
    b = key_head_ablation(tiny_model, icl, tv, 1, ablate_positions=["final"], **kw)
    assert torch.equal(a.top_per_prompt, b.top_per_prompt)
    c = key_head_ablation(tiny_model, icl, tv, 1, ablate_positions=None, **kw)
    assert c.ablate_positions == "all"
    with pytest.raises(ValueError, match="positions must be 'all'"):
        key_head_ablation(tiny_model, icl, tv, 1, ablate_positions="nowhere", **kw)
