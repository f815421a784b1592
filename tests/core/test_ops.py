"""The ops of an Intervention (core.ops): each op's declarations (needs, refuses, points, writes)
match what its hook does, ``positions=None`` is every position, one dispatch runs every op, and
a new op is one registered class that works through compile_hooks and the runner unchanged."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core import ops, runner
from icl_circuits.core.hook_fns import edit_all, edit_at
from icl_circuits.core.interventions import Intervention, Site, compile_hooks
from icl_circuits.core.ops import OPS, Op, get_op, register

B, P, H, D = 2, 6, 4, 5
POS = torch.tensor([[1, 3], [0, 5]])
MASK = torch.tensor([[True, False], [True, True]])


def minimal(name: str) -> tuple[Site, dict]:
    """The smallest valid spec of each built-in op (fresh tensors and stores every call)."""
    g = torch.Generator().manual_seed(0)
    return {
        "read": (Site(1), dict(store=[])),
        "tap": (Site(1), dict(store=[])),
        "replace": (Site(1), dict(value=torch.randn(D, generator=g))),
        "add": (Site(1), dict(value=torch.randn(D, generator=g), scale=0.5)),
        "zero": (Site(1), {}),
        "mean": (Site(1), dict(value=torch.randn(D, generator=g), positions=POS)),
        "noise": (Site(1), dict(positions=POS, scale=0.3, seed=4)),
        "project_out": (Site(1), dict(value=torch.randn(D, 2, generator=g), positions=POS)),
        "scale_attention": (Site(1, "pattern"), dict(value=torch.rand(H, 2, generator=g) + 2, positions=POS[:, :1], keys=POS)),
        "block_attention": (Site(1, "attn_scores"), dict(value=torch.rand(B, P, P, generator=g) > 0.5)),
        "apply": (Site(1), dict(fn=lambda x: 2 * x + 1)),
    }[name]


def activation(site: Site) -> torch.Tensor:
    """A random activation of the shape TransformerLens gives at ``site``."""
    g = torch.Generator().manual_seed(1)
    if site.point in ("pattern", "attn_scores"):
        return torch.rand(B, H, P, P, generator=g).softmax(-1)
    return torch.randn((B, P, H, D) if site.point in ("z", "q", "k", "v") else (B, P, D), generator=g)


BUILT_IN = sorted(OPS)


def test_every_op_is_registered_under_its_name_and_has_a_minimal_spec_here():
    assert set(BUILT_IN) == {"read", "tap", "replace", "add", "zero", "mean", "noise", "project_out",
                             "scale_attention", "block_attention", "apply"}
    for name, op in OPS.items():
        assert op.name == name and get_op(name) is op and get_op(type(op)) is op and get_op(op) is op


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_op_is_named_by_its_string_and_its_class(name):
    site, kw = minimal(name)
    by_name, by_class = Intervention(site, name, **kw), Intervention(site, type(OPS[name]), **minimal(name)[1])
    assert by_name.op == by_class.op == name and by_name.op_kind is by_class.op_kind is OPS[name]


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_needed_field_is_required(name):
    op = OPS[name]
    for field in op.needs:
        site, kw = minimal(name)
        kw.pop(field)
        with pytest.raises(ValueError, match=f"op '{name}' needs"):
            Intervention(site, name, **kw)


@pytest.mark.parametrize("name", BUILT_IN)
def test_what_is_not_needed_can_be_left_out(name):
    """``needs`` is complete: leaving out any other field of the minimal spec still gives a hook that runs."""
    for field in [f for f in minimal(name)[1] if f not in OPS[name].needs]:
        site, kw = minimal(name)
        kw.pop(field)
        iv = Intervention(site, name, **kw)
        iv.op_kind.hook(iv)(activation(site), None)


@pytest.mark.parametrize("name", BUILT_IN)
def test_what_an_op_would_ignore_is_refused(name):
    op = OPS[name]
    for what in op.refuses:
        site, kw = minimal(name)
        if what == "head":
            site = Site(1, "z", head=1)
        elif what == "mask":
            kw["mask"] = MASK
        else:
            kw["positions"] = POS
        with pytest.raises(ValueError, match=f"op '{name}'"):
            Intervention(site, name, **kw)


@pytest.mark.parametrize("name", BUILT_IN)
def test_points_are_enforced(name):
    op = OPS[name]
    site, kw = minimal(name)
    if op.points is None:
        assert site.point == "resid_pre"  # any point: the minimal spec's resid_pre is accepted
        return
    assert site.point in op.points
    with pytest.raises(ValueError, match=f"{name} acts on Site"):
        Intervention(Site(1, "mlp_out"), name, **kw)


@pytest.mark.parametrize("name", BUILT_IN)
def test_writes_says_whether_the_hook_returns_a_new_activation(name):
    """A read's hook returns the activation itself; every other op's hook returns a new tensor."""
    site, kw = minimal(name)
    act = activation(site)
    iv = Intervention(site, name, **kw)
    out = iv.op_kind.hook(iv)(act, None)
    assert (out is act) == (not OPS[name].writes)


OPTIONAL_POSITIONS = [n for n in BUILT_IN if "positions" not in OPS[n].needs and "positions" not in OPS[n].refuses
                      and type(OPS[n]).hook is Op.hook]


@pytest.mark.parametrize("name", OPTIONAL_POSITIONS)
@pytest.mark.parametrize("head", [None, 2])
def test_positions_none_is_every_position(name, head):
    """hook_all (positions=None) equals hook_at with every position listed, bit for bit."""
    assert set(OPTIONAL_POSITIONS) == {"read", "replace", "add", "zero", "apply"}
    site = Site(1) if head is None else Site(1, "z", head=head)
    act = activation(site)
    every = torch.arange(P).expand(B, P)
    outs = []
    for pos in (None, every):
        _, kw = minimal(name)
        iv = Intervention(site, name, positions=pos, **kw)
        outs.append((iv.op_kind.hook(iv)(act.clone(), None), kw.get("store")))
    (a, sa), (b, sb) = outs
    assert torch.equal(a, b)
    if sa is not None:
        assert torch.equal(sa[0], sb[0])


WRITES_AT_HEAD = [n for n in BUILT_IN if OPS[n].writes and "head" not in OPS[n].refuses and OPS[n].points is None
                  and n != "tap"]


@pytest.mark.parametrize("name", WRITES_AT_HEAD)
@pytest.mark.parametrize("at", ["positions", "everywhere"])
def test_a_head_site_writes_that_head_only(name, at):
    site = Site(1, "z", head=2)
    act = activation(site)
    _, kw = minimal(name)
    if at == "positions":
        kw["positions"] = POS
    elif "positions" in OPS[name].needs:
        pytest.skip(f"{name} needs positions")
    iv = Intervention(site, name, **kw)
    out = iv.op_kind.hook(iv)(act, None)
    changed = (out != act).flatten(0, 1).any(-1)  # [B*P, H]
    assert changed[:, 2].any() and not changed[:, [0, 1, 3]].any()


WRITES_WITH_MASK = [n for n in BUILT_IN if OPS[n].writes and "mask" not in OPS[n].refuses]


@pytest.mark.parametrize("name", WRITES_WITH_MASK)
def test_masked_out_entries_keep_their_value(name):
    site, kw = minimal(name)
    act = activation(site)
    kw.update(positions=POS, mask=MASK)
    iv = Intervention(site, name, **kw)
    out = iv.op_kind.hook(iv)(act, None)
    rows = torch.arange(B)[:, None].expand_as(POS)
    assert torch.equal(out[rows[~MASK], POS[~MASK]], act[rows[~MASK], POS[~MASK]])
    assert not torch.equal(out[rows[MASK], POS[MASK]], act[rows[MASK], POS[MASK]])


def test_only_block_attention_has_a_pattern_equivalent_and_it_equals_blocking_the_scores():
    """softmax(scores with blocked entries at -inf) == on_pattern(softmax(scores)) (float32 rounding)."""
    site, kw = minimal("block_attention")
    iv = Intervention(site, "block_attention", **kw)
    scores = torch.randn(B, H, P, P, generator=torch.Generator().manual_seed(3))
    blocked = iv.op_kind.hook(iv)(scores, None).softmax(-1).nan_to_num(0.0)
    pattern = iv.op_kind.on_pattern(iv)(scores.softmax(-1), None)
    assert torch.allclose(pattern, blocked, atol=1e-6)  # renormalising vs. a softmax over fewer keys: float32 rounding
    assert all(OPS[n].on_pattern(Intervention(minimal(n)[0], n, **minimal(n)[1])) is None
               for n in BUILT_IN if n != "block_attention")


class Negate(Op):
    """A test op: write ``-x`` (nothing else in the package knows it)."""

    name = "negate"

    def hook_at(self, iv, positions):
        return edit_at(positions, torch.neg, iv.site.head, iv.mask)

    def hook_all(self, iv):
        return edit_all(torch.neg, iv.site.head)


@pytest.fixture
def with_negate(monkeypatch):
    """Negate registered for one test, in a copy of the registry."""
    monkeypatch.setattr(ops, "OPS", dict(ops.OPS))  # the registration is undone after the test
    register(Negate)

def test_a_registered_op_runs_through_compile_hooks_and_the_runner(tiny_model, with_negate):
    batch = build_prompts(tiny_model, "letter-string", 4, 2, seed=0)
    pos = batch.positions("answers+query").positions

    def run(make):
        return runner.run_final_logits(tiny_model, batch, make)

    new = run(lambda rows, mb: [Intervention(Site(1), "negate", positions=pos[rows])])
    ref = run(lambda rows, mb: [Intervention(Site(1), "apply", fn=torch.neg, positions=pos[rows])])
    assert torch.equal(new, ref) and not torch.equal(new, run(None))
    everywhere = Intervention(Site(0, "z", head=1), Negate)
    assert everywhere.op == "negate" and isinstance(everywhere.op_kind, Negate)
    (name, _), = compile_hooks(tiny_model, [everywhere])
    assert name == "blocks.0.attn.hook_z"
    with pytest.raises(ValueError, match="apply, negate"):  # the registry lists it
        Intervention(Site(0), "swap")


def test_negate_is_gone_after_the_test_and_unknown_ops_are_refused():
    assert "negate" not in ops.OPS and set(ops.OPS) == set(BUILT_IN)
    with pytest.raises(ValueError, match="Intervention.op must be one of read, tap"):
        Intervention(Site(0), "negate")


def test_register_refuses_a_clash_and_unknown_declarations(with_negate):
    class Other(Negate):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register(Other)

    class Odd(Op):
        name = "odd"
        needs = ("colour",)

    with pytest.raises(ValueError, match="unknown fields"):
        register(Odd)
    with pytest.raises(TypeError, match="subclass of Op"):
        register(dict)


def test_reads_are_addressed_by_site(tiny_model):
    """read_activations keys results by the Sites given (a head Site reads that head), equal to hook names."""
    batch = build_prompts(tiny_model, "letter-string", 3, 2, seed=1)
    pos = batch.positions("final").positions
    z, resid = Site(1, "z", head=2), Site(2)
    acts = runner.read_activations(tiny_model, batch, [z, resid, "blocks.1.attn.hook_z"], pos)
    assert set(acts) == {z, resid, "blocks.1.attn.hook_z"}
    assert torch.equal(acts[z], acts["blocks.1.attn.hook_z"][:, :, 2])
    assert torch.equal(acts[resid], runner.read_resid(tiny_model, batch, pos, [2])[0])
    whole = runner.read_activations(tiny_model, batch, [Site(1, "pattern")])[Site(1, "pattern")]
    assert whole.shape == (len(batch), tiny_model.cfg.n_heads, batch.tokens.shape[1], batch.tokens.shape[1])
