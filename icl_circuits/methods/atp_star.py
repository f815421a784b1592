"""AtP* for head ablation (Kramar et al. 2024, arXiv 2403.00745): the QK fix and GradDrop, the two
corrections of attribution patching that ``attribution.head_attribution`` applies with
``qk_fix=True`` / ``graddrop=True``. One minibatch at a time (``atp_star_minibatch``).

Notation, per prompt ``b``: ``M`` the metric, ``dz = w * (z_abl - z)`` the ablation of head
``(l, h)`` at the positions ablated (weight ``w``), ``dr = dz W_O[l, h]`` the change it makes to
the residual stream (the direct path), ``r_m`` the clean residual at the input of block ``m``,
``A_m(r)`` block ``m``'s attention pattern for input residual ``r`` (``runner.attention_pattern``:
its ln1, queries, keys, positions, masks and softmax), ``G_m = dM/dA_m`` (total derivative in the
clean run) and ``g = dM/dz[l, h]``.

- **Plain AtP** (Nanda; Syed et al. 2023): ``c_AtP = sum_pos dz . g``.
- **QK fix.** The paper defines it for query and key nodes: patch the query (key), recompute the
  attention logits and the *real softmax*, and linearise only after the pattern:
  ``c = sum_t (softmax(s_t(patched)) - A_t) . dM/dA_t``. A head's output ``z`` has no query or key of
  its own; what it changes are the queries and keys of every later block ``m > l``, through the
  residual stream. We apply the fix there, along the direct residual path:

      c_QK = c_AtP - sum_{m>l} sum_pos dr . u_m + sum_{m>l} sum_{h',t,s} (A_m(r_m + dr) - A_m(r_m)) G_m

  with ``u_m = d/dr [sum G_m . A_m(r)]`` at ``r = r_m`` (the part of ``g W_O^T`` that goes through
  block ``m``'s pattern along the direct path). So the first-order term of each later pattern along
  the direct path is replaced by the exact softmax of the exactly recomputed queries and keys
  (ln1, rotary and the bilinear ``q k^T`` included); everything else stays first order: the value
  / MLP / unembedding paths, the paths that reach a pattern through intermediate blocks, and the
  metric's dependence on the patterns (``G_m`` is the clean gradient). Exact when the patterns are
  the only nonlinearity on the direct path and the ablation does not change the values the
  pattern multiplies (``tests/methods/test_atp_star.py`` builds such a model). Cost: block ``m``'s
  pattern for every ablated head of layers ``< m``, i.e. ``H * L (L - 1) / 2`` pattern computations
  (ln1 + Q/K projection + softmax) against the exact scan's ``H * L (L + 1) / 2`` block forwards.
- **GradDrop** (the paper's fix for cancellation between direct and indirect effects): ``L`` more
  backward passes, pass ``k`` with the gradient through block ``k``'s outputs to the residual
  (``hook_attn_out`` and ``hook_mlp_out``) set to zero; ``c_k`` is the estimate (AtP, or AtP with
  the QK fix, whose ``G`` and ``u`` then come from pass ``k`` too) from that gradient, and

      c_GD = (1 / (L - 1)) sum_k |c_k|

  (for a head of layer ``l``, ``c_l = 0``: its own output is dropped). The paper's score is a
  magnitude, to find heads with a large ``|c|``; we give it, per prompt, the sign of the undropped
  estimate so that the result stays a signed scan (compare rankings by ``|effect|``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from icl_circuits.core.interventions import Intervention, Site
from icl_circuits.core.metrics import Metric
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.runner import final_logits_with_grad
from icl_circuits.core.runner import attention_pattern
from icl_circuits.core.types import HookedModel
from icl_circuits.core.runner.backend import backend_for

__all__ = ["atp_star_minibatch", "ROWS_PER_PATTERN_CALL"]

#: Most rows (ablated copies x prompts) of one ``attention_pattern`` call of the QK fix.
ROWS_PER_PATTERN_CALL = 512


class _Gate(torch.autograd.Function):
    """Identity forward; backward passes the gradient unless ``state["drop"] == layer`` (then zero)."""

    @staticmethod
    def forward(ctx, x: Tensor, state: dict, layer: int) -> Tensor:  # type: ignore[override]
        ctx.state, ctx.layer = state, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return (torch.zeros_like(grad) if ctx.state.get("drop") == ctx.layer else grad), None, None


def _gate(state: dict, layer: int) -> Callable[[Tensor], Tensor]:
    """The identity whose backward drops the gradient while ``state["drop"] == layer`` (GradDrop)."""
    return lambda act: _Gate.apply(act, state, layer)


def atp_star_minibatch(
    model: HookedModel,
    mb: PromptBatch,
    metric: Metric,
    layers: Sequence[int],
    target: Callable[[int, Tensor], tuple[Tensor, Tensor]],
    *,
    qk_fix: bool,
    graddrop: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clean metric ``[b]`` and the estimates ``{"atp", "qk", "graddrop"}`` (those asked for), each
    ``[len(layers), head, b]`` (effects, ablated minus clean), for one minibatch. ``target(l, z)``
    gives, from the clean ``z`` of layer ``l`` ([b, pos, head, d_head], on the CPU), ``(delta =
    z_abl - z, weight [b, pos])`` (``attribution._target``)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    dev = model.cfg.device
    state: dict = {"drop": None}
    z_store: list = []
    hooks: list = [Intervention(Site(l, "z"), "tap", store=z_store) for l in layers]
    downstream = list(range(min(layers) + 1, n_layers)) if qk_fix else []
    p_store: list = []
    r_store: list = []
    hooks += [Intervention(Site(m, "pattern"), "tap", store=p_store) for m in downstream]
    hooks += [Intervention(Site(m), "tap", store=r_store) for m in downstream]
    if graddrop:
        outs = ["attn_out"] + ([] if model.cfg.attn_only else ["mlp_out"])
        hooks += [Intervention(Site(k, o), "apply", fn=_gate(state, k)) for k in range(n_layers) for o in outs]
    versions: list = [None] + (list(range(n_layers)) if graddrop else [])
    with torch.enable_grad():
        logits = final_logits_with_grad(model, mb, hooks).float()
        values = metric.from_logits(logits, mb)
        total = values.sum()
        g_z, g_p = {}, {}
        for v in versions:
            state["drop"] = v
            grads = torch.autograd.grad(total, [t for _, t in z_store] + [t for _, t in p_store], retain_graph=True,
                                        allow_unused=True)
            g_z[v] = [torch.zeros_like(t) if g is None else g for (_, t), g in zip(z_store, grads[: len(z_store)])]
            g_p[v] = [torch.zeros_like(t) if g is None else g for (_, t), g in zip(p_store, grads[len(z_store):])]
        state["drop"] = None
    clean = values.detach().float().cpu()
    b = len(mb)
    deltas = {l: target(l, z.float().cpu()) for l, (z, _) in zip(layers, z_store)}
    # plain AtP per gradient version: sum_pos w dz . g
    atp = {v: torch.zeros(len(layers), n_heads, b) for v in versions}
    for i, l in enumerate(layers):
        delta, weight = deltas[l]
        dz = (delta * weight[..., None, None]).to(dev)  # [b, pos, head, d_head]
        for v in versions:
            atp[v][i] = torch.einsum("bphd,bphd->hb", g_z[v][i].float(), dz.float()).cpu()
    out = {"atp": atp[None]}
    est = atp
    if qk_fix:
        est = _qk_fix(model, mb, layers, deltas, downstream, r_store, g_p, atp, versions, [z for z, _ in z_store])
        out["qk"] = est[None]
    if graddrop:
        mag = torch.stack([est[v].abs() for v in versions[1:]]).sum(0) / (n_layers - 1)
        out["graddrop"] = torch.where(est[None] < 0, -mag, mag)
    return clean, out


def _qk_fix(model, mb, layers, deltas, downstream, r_store, g_p, atp, versions, z_clean) -> dict:
    """``c_QK = c_AtP - lin + exact`` per gradient version (module docstring). Under a post-attention
    norm (``Backend.attn_out_gain``) ``dr`` is ``dz W_O`` times the norm's gain in the clean run."""
    n_heads = model.cfg.n_heads
    dev = model.cfg.device
    b = len(mb)
    lin = {v: torch.zeros(len(layers), n_heads, b) for v in versions}
    exact = {v: torch.zeros(len(layers), n_heads, b) for v in versions}
    # dr for every ablated head: [n_layers_scanned, head, b, pos, d_model], on the device
    d_r = {}
    for i, l in enumerate(layers):
        delta, weight = deltas[l]
        dz = (delta * weight[..., None, None]).to(dev, model.cfg.dtype)
        d_r[i] = torch.einsum("bphd,hdm->hbpm", dz, backend_for(model).W_O(l))
        gain = backend_for(model).attn_out_gain(l, z_clean[i].detach())
        if gain is not None:
            d_r[i] = d_r[i] * gain.to(d_r[i])[None]
    for j, m in enumerate(downstream):
        r = r_store[j][0].detach()
        sources = [i for i, l in enumerate(layers) if l < m]
        if not sources:
            continue
        with torch.enable_grad():
            rg = r.clone().requires_grad_(True)
            a0 = attention_pattern(model, rg, m, mb.tokens)
            us = {}
            for v in versions:
                (u,) = torch.autograd.grad((a0 * g_p[v][j].to(a0.dtype)).sum(), rg, retain_graph=True)
                us[v] = u.float()
        a0 = a0.detach().float()
        gs = {v: g_p[v][j].float() for v in versions}
        # every (source layer, head) copy of the batch, chunked
        copies = [(i, h) for i in sources for h in range(n_heads)]
        step = max(1, ROWS_PER_PATTERN_CALL // b)
        for s in range(0, len(copies), step):
            chunk = copies[s : s + step]
            drs = torch.stack([d_r[i][h] for i, h in chunk])  # [c, b, pos, d_model]
            with torch.no_grad():
                a1 = attention_pattern(model, (r[None] + drs).flatten(0, 1), m, mb.tokens.repeat(len(chunk), 1))
            da = a1.float().view(len(chunk), b, *a0.shape[1:]) - a0[None]  # [c, b, head', q, k]
            for v in versions:
                ex = torch.einsum("cbhqk,bhqk->cb", da, gs[v]).cpu()
                li = torch.einsum("cbpm,bpm->cb", drs.float(), us[v]).cpu()
                for c, (i, h) in enumerate(chunk):
                    exact[v][i, h] += ex[c]
                    lin[v][i, h] += li[c]
    return {v: atp[v] - lin[v] + exact[v] for v in versions}
