"""The intervention spec (Site, Intervention) and the runner that executes it: each operation
equals the hook it compiles to, reading and writing one's own values is the identity, bad specs
are refused by name, and hooks never outlive a run."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import build_prompts
from icl_circuits.core import runner
from icl_circuits.core.interventions import HOOK_POINTS, Intervention, Site, compile_hooks


@pytest.fixture(scope="module")
def batch(tiny_model):
    return build_prompts(tiny_model, "letter-string", 5, 3, seed=2)


def test_site_names_follow_transformer_lens(tiny_model):
    n = tiny_model.cfg.n_layers
    assert Site(1).hook_name(tiny_model) == "blocks.1.hook_resid_pre"
    assert Site(n).hook_name(tiny_model) == f"blocks.{n - 1}.hook_resid_post"  # layer n_layers: the final residual
    assert Site(0, "z", head=2).hook_name(tiny_model) == "blocks.0.attn.hook_z"
    assert Site(1, "pattern").hook_name(tiny_model) == "blocks.1.attn.hook_pattern"
    assert all(Site(0, p).hook_name(tiny_model) in tiny_model.hook_dict for p in HOOK_POINTS)


@pytest.mark.parametrize("bad, match", [
    (lambda: Site(-1), "Site.layer must be a non-negative integer"),
    (lambda: Site(0, "resid"), "Site.point must be one of"),
    (lambda: Site(0, "resid_pre", head=1), "only meaningful for per-head points"),
    (lambda: Intervention(Site(0), "swap"), "Intervention.op must be one of"),
    (lambda: Intervention(Site(0), "replace", positions=torch.zeros(1, 1, dtype=torch.long)), "needs a value"),
    (lambda: Intervention(Site(0), "read"), "needs store"),
    (lambda: Intervention(Site(0), "noise"), "needs positions"),
    (lambda: Intervention(Site(0), "block_attention", value=torch.zeros(1)), "acts on Site"),
])
def test_bad_specs_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_out_of_range_site_is_refused_when_compiled(tiny_model):
    with pytest.raises(ValueError, match="Site.layer must be an integer in"):
        compile_hooks(tiny_model, [Intervention(Site(9, "z"), "zero")])
    with pytest.raises(ValueError, match="Site.head must be an integer in"):
        compile_hooks(tiny_model, [Intervention(Site(0, "z", head=7), "zero")])
    with pytest.raises(TypeError, match="an intervention must be an Intervention"):
        compile_hooks(tiny_model, ["blocks.0.hook_resid_pre"])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_replacing_with_own_values_is_the_identity(tiny_model, batch, layer):
    ps = batch.positions("answers+query")
    store: list = []
    read = Intervention(Site(layer), "read", positions=ps.positions, store=store)
    clean = runner.run_final_logits(tiny_model, batch, lambda rows, mb: [read])
    own = torch.cat(store)
    patched = runner.run_final_logits(
        tiny_model, batch, lambda rows, mb: [Intervention(Site(layer), "replace", positions=ps.positions[rows], value=own[rows])])
    assert (patched - clean).abs().max() <= 1e-5


def test_read_equals_read_activations(tiny_model, batch):
    pos = batch.positions("separators").positions
    store: list = []
    runner.run_final_logits(tiny_model, batch, lambda rows, mb: [Intervention(Site(1, "z", head=3), "read", positions=pos[rows], store=store)])
    ref = runner.read_activations(tiny_model, batch, ["blocks.1.attn.hook_z"], pos)["blocks.1.attn.hook_z"][:, :, 3]
    assert torch.allclose(torch.cat(store), ref, atol=1e-6)


def test_zero_ablating_a_head_everywhere_removes_its_output(tiny_model, batch):
    """Zeroing head h's z at every position = subtracting its W_O term from the attention output."""
    name = "blocks.0.attn.hook_z"
    z = runner.read_activations(tiny_model, batch, [name])[name]  # [batch, pos, head, d_head]
    out = "blocks.0.hook_attn_out"
    clean = runner.read_activations(tiny_model, batch, [out])[out]
    ablated = runner.read_activations(tiny_model, batch, [out], make_hooks=lambda rows, mb: [Intervention(Site(0, "z", head=1), "zero")])[out]
    term = torch.einsum("bpd,dm->bpm", z[:, :, 1], tiny_model.W_O[0, 1])
    valid = torch.arange(clean.shape[1])[None] <= batch.final_positions[:, None]
    assert torch.allclose((clean - ablated)[valid], term[valid], atol=1e-5)


def test_add_is_linear_in_scale_at_the_written_residual(tiny_model, batch):
    pos = batch.positions("final").positions
    v = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    name = "blocks.1.hook_resid_pre"

    def resid(scale):
        return runner.read_activations(tiny_model, batch, [name], pos, make_hooks=lambda rows, mb: [
            Intervention(Site(1), "add", positions=pos[rows], value=v, scale=scale)])[name][:, 0]

    assert torch.allclose(resid(2.0) - resid(0.0), 2 * v.expand(len(batch), -1), atol=1e-5)


def test_masked_entries_are_never_written(tiny_model):
    b = build_prompts(tiny_model, "antonym", 6, 2, seed=0, template="{x} -> {y}")
    ps = b.positions("inputs")
    name = "blocks.1.hook_resid_pre"
    clean = runner.read_activations(tiny_model, b, [name])[name]
    hooked = runner.read_activations(tiny_model, b, [name], make_hooks=lambda rows, mb: [
        Intervention(Site(1), "zero", positions=ps.positions[rows], mask=ps.mask[rows])])[name]
    rows = torch.arange(len(b))[:, None].expand_as(ps.positions)
    written = torch.zeros(clean.shape[:2], dtype=torch.bool)
    written[rows[ps.mask], ps.positions[ps.mask]] = True
    assert (hooked[written] == 0).all() and torch.equal(hooked[~written], clean[~written])


def test_hooks_are_removed_when_a_run_raises(tiny_model, batch):
    def boom(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        runner.run_final_logits(tiny_model, batch, lambda rows, mb: [Intervention(Site(1), "apply", fn=boom)])
    assert all(not h.fwd_hooks for h in tiny_model.hook_dict.values())
    with pytest.raises(RuntimeError, match="boom"):
        with runner.hooked(tiny_model, [Intervention(Site(0, "mlp_out"), "apply", fn=boom)]):
            tiny_model(batch.tokens)
    assert all(not h.fwd_hooks for h in tiny_model.hook_dict.values())


def test_attention_patterns_read_whole_are_padded_on_their_position_axes(tiny_model, batch):
    """Minibatches are trimmed to their longest prompt; patterns [batch, head, q, k] are padded on q and k."""
    name = "blocks.1.attn.hook_pattern"
    whole = runner.read_activations(tiny_model, batch, [name], batch_size=2)[name]
    width = batch.tokens.shape[1]
    assert whole.shape == (len(batch), tiny_model.cfg.n_heads, width, width)
    for i in range(len(batch)):
        n = int(batch.final_positions[i]) + 1
        alone = runner.read_activations(tiny_model, batch.select([i]), [name])[name][0]
        assert torch.allclose(whole[i, :, :n, :n], alone[:, :n, :n], atol=1e-6)


def test_tap_gives_the_total_derivative_and_leaves_the_forward_unchanged(tiny_model, batch):
    """d loss / d tap equals the gradient of the loss with respect to the activation itself."""
    store: list = []
    name = "blocks.1.hook_resid_pre"
    clean = runner.final_logits(tiny_model, batch)
    logits = runner.final_logits_with_grad(tiny_model, batch, [Intervention(Site(1), "tap", store=store)])
    assert torch.allclose(logits.detach(), clean, atol=1e-5)
    (act, tap), = store
    (g_tap,) = torch.autograd.grad(logits.logsumexp(-1).sum(), [tap])  # autograd.grad: no parameter .grad is left
    x = act.clone().requires_grad_(True)
    out = runner.resume(tiny_model, x, 1, tokens=batch.tokens)
    (g_x,) = torch.autograd.grad(
        runner.unembed_resid(tiny_model, out[torch.arange(len(batch)), batch.final_positions]).logsumexp(-1).sum(), [x])
    assert torch.allclose(g_tap, g_x, atol=1e-5)
    assert all(p.grad is None for p in tiny_model.parameters())
    with pytest.raises(ValueError, match="'tap' acts on the whole activation"):
        Intervention(Site(1), "tap", store=[], positions=batch.positions("query").positions)
    assert name == Site(1).hook_name(tiny_model)
