"""OV-circuit decomposition and reconstruction of an injected task vector (Yang, Cho, Ding and
Inoue 2025, "Task Vectors, Learned Not Extracted", METHODS.md section 7); the heads it singles
out are ranked and ablated in ``icl_circuits.methods.key_heads``.

A vector theta is injected at the input of block ``layer`` (``blocks.{layer}.hook_resid_pre``) at
positions P (default: each prompt's final position q). Write ``'`` for the run with the vector.
Because every block only adds to the residual stream, the change of the final residual at q
(before ``ln_final``) decomposes exactly, with no embedding term:

    delta h_L(q) = d(q)                                      (direct path; d(q) = theta if q in P)
                 + sum_{l' >= layer, h} (z'_{l',h}(q) - z_{l',h}(q)) @ W_O[l', h]   (heads)
                 + sum_{l' >= layer} (mlp'_{l'}(q) - mlp_{l'}(q))                  (MLPs)

(the attention bias b_O cancels). Where a block normalises its attention output before adding it
(Gemma's post-attention RMSNorm), each head's term is ``z_h W_O[h]`` times the norm's per-position
gain ``g / rms(sum_h z_h W_O[h])`` of the run it comes from (``Backend.attn_out_gain``): the heads
of a run then sum to that run's attention output, and the identity stays exact. The *OV approximation* of head (l', h) keeps only theta's
direct ride through that head's OV circuit:

    ov_{l',h}(q) = sum_{p in P} A'_{l',h}[q, p] * (LN1_{l'}(h_{l'}(p) + d(p)) - LN1_{l'}(h_{l'}(p))) @ W_V @ W_O

with ``ln="difference"`` (default): the injected vector passes through block l''s ``ln1``
together with the *clean* residual h_{l'}(p) at that block's input (so b_V and the LN bias cancel
and the LN's nonlinearity is kept), or ``ln="frozen"``: the linearisation with the clean LN scale,
``(d - mean(d)) / scale_{l'}(p) * w_ln1`` (what direct logit attribution does). A' is the
attention pattern of the run with the vector (``attention="patched"``, default) or without it
(``"clean"``). In a model without LayerNorm, with the vector outside the span of W_Q and W_K of
the block it enters, the formula is exact for that block's heads (tests/methods/test_ov_circuits.py).
Under a post-attention norm the approximation is multiplied by the clean run's gain.

For replace-mode vectors (vanilla task vectors) the injected change is ``d(p) = theta - h(p)``;
for add-mode ones ``d(p) = scale * theta``. Positions P are a spec of ``PromptBatch.positions``
(``"final"``, ``"answers"``, ``"separators"``, ``"answer_-1"``, unions with ``+``); for multi-token
sets only the valid entries (``PositionSet.mask``) receive the vector.

Direct logit attribution (DLA) of a change v of the final residual at q: the final LayerNorm is
linearised with the scale it has in the run *with* the vector (``ln_final`` applied to
h'_L(q)): ``DLA(v) = ((v - mean v) / scale'_final(q) * w_lnf) . u``, with the label direction
``u = W_U[:, gold] - mean of W_U[:, t]`` over the prompt's other label words (categorization
tasks) or over the whole vocabulary (other tasks), the same margin as the registry's ``logit_diff_to_mean``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_circuits.core.checks import check_layer, check_vector
from icl_circuits.core.interventions import Intervention, Site, resid_name
from icl_circuits.core.metrics import correct, wilson
from icl_circuits.core.prompts import PromptBatch
from icl_circuits.core.results import Result, stamp
from icl_circuits.core.runner import Entry, minibatches, read_activations, run_staggered, unembed_resid
from icl_circuits.core.runner.backend import backend_for
from icl_circuits.core.types import HookedModel
from icl_circuits.methods.head_ablation import check_choice, check_heads
from icl_circuits.core.positions import check_batch
from icl_circuits.methods.vectors import TaskVector

__all__ = ["injected_vector", "injection", "spec_name", "label_direction", "ov_contributions", "OVResult", "reconstruct",
           "ReconstructionResult"]

LNMode = Literal["difference", "frozen"]
#: A position spec of ``PromptBatch.positions`` ("final", "answers", "answer_-1", "final+answers", a list...).
PositionSpec = str | Sequence[str]


# ----------------------------------------------------------------------------- helpers
def spec_name(positions: PositionSpec) -> str:
    """The position spec as one string (``"+"``-joined, as results record it); a TypeError for
    anything else (explicit position tensors: name the positions instead)."""
    if isinstance(positions, Tensor) or not isinstance(positions, (str, list, tuple)):
        raise TypeError("positions must be a position spec of PromptBatch.positions (e.g. 'final', 'answers', "
                        f"'final+answer_-1' or a list of names), got {type(positions).__name__}")
    return positions if isinstance(positions, str) else "+".join(map(str, positions))


def injected_vector(model: HookedModel, tv: TaskVector | Tensor, layer: int | None) -> tuple[Tensor, int, str]:
    """``(theta [d_model], layer, mode)`` of a TaskVector at ``layer`` (default: its only layer),
    or of a bare ``[d_model]`` vector (mode "add"; ``layer`` required)."""
    if isinstance(tv, TaskVector):
        tv.check_model(model)
        if layer is None:
            if len(tv.layers) != 1:
                raise ValueError(f"layer: the task vector has layers {tv.layers}; say which one to inject")
            layer = tv.layers[0]
        check_layer(model, layer, allow_final=False)
        return tv.at(layer).float(), layer, tv.mode
    if isinstance(tv, Tensor):
        check_vector(model, tv, arg="tv")
        if tv.ndim != 1:
            raise ValueError(f"tv: a bare vector must have shape [d_model], got {tuple(tv.shape)}")
        if layer is None:
            raise ValueError("layer: give the layer at which to inject a bare vector")
        check_layer(model, layer, allow_final=False)
        return tv.float(), layer, "add"
    raise TypeError(f"tv must be a TaskVector or a [d_model] tensor, got {type(tv).__name__}")


def injection(
    model: HookedModel, tv: TaskVector | Tensor, layer: int | None = None, positions: PositionSpec = "final",
    scale: float = 1.0,
) -> Callable[[slice, PromptBatch], list[Intervention]]:
    """``make(rows, sub_batch) -> [Intervention]`` for the runner (``run_final_logits``,
    ``read_activations``): the vector at the input of block ``layer`` (``Site(layer)``) at the
    positions ``sub_batch.positions(positions)`` (only their valid entries), added ``scale`` times
    (mode "add") or replacing the residual (mode "replace", as a vanilla task vector does)."""
    theta, layer, mode = injected_vector(model, tv, layer)
    spec_name(positions)

    def make(rows: slice, mb: PromptBatch) -> list[Intervention]:
        ps = mb.positions(positions)
        mask = ps.mask if ps.ragged else None
        if mode == "replace":
            return [Intervention(Site(layer), "replace", positions=ps.positions, value=theta, mask=mask)]
        return [Intervention(Site(layer), "add", positions=ps.positions, value=theta, scale=scale, mask=mask)]

    return make


def _ln_linear(ln: Any, x: Tensor, d: Tensor, eps: float) -> Tensor:
    """The LayerNorm ``ln`` linearised at ``x`` with its scale frozen, applied to ``d``."""
    if ln is None or isinstance(ln, torch.nn.Identity):
        return d
    kind = type(ln).__name__
    centered = not kind.startswith("RMS")
    if centered:
        x, d = x - x.mean(-1, keepdim=True), d - d.mean(-1, keepdim=True)
    eps = float(getattr(ln, "eps", None) or eps)
    out = d / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if not centered:  # the gain the norm applies, read off the norm (a stored w can be Gemma's w of 1 + w)
        ones = torch.ones(1, 1, d.shape[-1], device=d.device, dtype=d.dtype)
        return out * (ln(ones)[0, 0] * (1.0 + eps) ** 0.5)
    w = getattr(ln, "w", None)
    return out * w if isinstance(w, Tensor) else out


def label_direction(model: HookedModel, batch: PromptBatch) -> Float[Tensor, "batch d_model"]:
    """``u_b = W_U[:, gold_b] - mean W_U[:, t]`` over prompt b's other candidate tokens
    (``batch.candidate_tokens()``: the label words of categorization tasks) or over the vocabulary
    (other tasks): DLA(v) = LN_lin(v) . u_b."""
    W_U = backend_for(model).W_U().float().cpu()
    gold = W_U[:, batch.answer_tokens].T
    cand = batch.candidate_tokens()
    if cand is None:
        return gold - W_U.mean(1)[None]
    other = (cand != batch.answer_tokens[:, None]).float()
    mean_other = torch.einsum("dbn,bn->bd", W_U[:, cand], other) / other.sum(1, keepdim=True).clamp(min=1)
    return torch.where(other.sum(1, keepdim=True) > 0, gold - mean_other, gold - W_U.mean(1)[None])


# ----------------------------------------------------------------------------- decomposition
@dataclass(frozen=True)
class OVResult(Result):
    """Per-component change of the final residual at q when a vector is injected at ``injection_layer``.

    Head axes run over ``layers`` (= injection_layer .. n_layers-1) x heads.
    exact_dla / ov_dla: [layer, head, batch] DLA of the exact head change / of its OV approximation;
    exact_norm / ov_norm / cosine: [layer, head, batch] norms and cosine(ov, exact);
    head_exact / head_ov: [layer, head, batch, d_model] the vectors (None unless kept);
    exact_heads / ov_heads: [batch, d_model] sums over heads; attn_layers / mlp_layers:
    [layer, batch, d_model] changes of hook_attn_out / hook_mlp_out at q; direct: [batch, d_model]
    d(q); total: [batch, d_model] measured delta h_L(q); clean_final: [batch, d_model] h_L(q)
    without the vector; direct_dla: [batch]; mlp_dla: [layer, batch].
    """

    exact_dla: Float[Tensor, "layer head batch"]
    ov_dla: Float[Tensor, "layer head batch"]
    exact_norm: Float[Tensor, "layer head batch"]
    ov_norm: Float[Tensor, "layer head batch"]
    cosine: Float[Tensor, "layer head batch"]
    exact_heads: Float[Tensor, "batch d_model"]
    ov_heads: Float[Tensor, "batch d_model"]
    attn_layers: Float[Tensor, "layer batch d_model"]
    mlp_layers: Float[Tensor, "layer batch d_model"]
    direct: Float[Tensor, "batch d_model"]
    total: Float[Tensor, "batch d_model"]
    clean_final: Float[Tensor, "batch d_model"]
    direct_dla: Float[Tensor, "batch"]
    mlp_dla: Float[Tensor, "layer batch"]
    layers: list
    injection_layer: int
    ln: str
    attention: str
    mode: str
    positions: str
    task: str
    head_exact: Tensor | None = None
    head_ov: Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return int(self.exact_dla.shape[1])

    def identity_error(self) -> float:
        """max |delta h_L(q) - (d(q) + sum heads + sum MLPs)| (0 up to float rounding)."""
        return float((self.total - self.direct - self.exact_heads - self.mlp_layers.sum(0)).abs().max())

    def ov_relative_error(self) -> Float[Tensor, "layer"]:
        """Per layer: sqrt(sum_{h,b} ||ov - exact||^2 / sum_{h,b} ||exact||^2) over its heads and prompts."""
        if self.head_exact is None:
            raise ValueError("relative error per layer needs keep_head_vectors=True")
        e, o = self.head_exact, self.head_ov
        return (o - e).flatten(1).norm(dim=1) / e.flatten(1).norm(dim=1).clamp(min=1e-12)

    def ranking(self, source: Literal["ov", "exact"] = "ov", by: Literal["signed", "abs"] = "signed") -> list[tuple[int, int]]:
        """Heads sorted by mean DLA of their ``source`` contribution (descending; ``by="abs"``: |mean|)."""
        s = (self.ov_dla if source == "ov" else self.exact_dla).mean(-1)
        s = s.abs() if by == "abs" else s
        order = s.flatten().argsort(descending=True)
        return [(self.layers[int(i) // self.n_heads], int(i) % self.n_heads) for i in order]

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for i, l in enumerate(self.layers):
            for h in range(self.n_heads):
                rows.append({"layer": l, "head": h, "exact_dla": float(self.exact_dla[i, h].mean()),
                             "ov_dla": float(self.ov_dla[i, h].mean()), "exact_norm": float(self.exact_norm[i, h].mean()),
                             "ov_norm": float(self.ov_norm[i, h].mean()), "cosine": float(self.cosine[i, h].mean()),
                             "injection_layer": self.injection_layer, "task": self.task, "model": self.model})
        return pd.DataFrame(rows)


def _reads(layers: Sequence[int], points: Sequence[str], store: dict) -> list[Intervention]:
    """Read specs of the whole activation at ``Site(l, point)`` into ``store[(point, l)]``."""
    return [Intervention(Site(l, pt), "read", store=store.setdefault((pt, l), [])) for l in layers for pt in points]


def ov_contributions(
    model: HookedModel,
    batch: PromptBatch,
    tv: TaskVector | Float[Tensor, "d_model"],
    layer: int | None = None,
    *,
    positions: PositionSpec = "final",
    scale: float = 1.0,
    ln: LNMode = "difference",
    attention: Literal["patched", "clean"] = "patched",
    keep_head_vectors: bool = True,
    batch_size: int = 64,
) -> OVResult:
    """Inject ``tv`` at the input of block ``layer`` at ``positions`` (a spec of
    ``PromptBatch.positions``: "final", "answers", "separators", "answer_-1", unions with "+";
    multi-token sets inject at their valid entries only) and decompose the change of the final
    residual at each prompt's final position per head and MLP, exactly and with the OV
    approximation (formulas and LN handling in the module docstring).

    Per minibatch, through the runner: the clean forward (``read_activations`` with read specs),
    then blocks ``layer..`` resumed from its residual with ``d(p)`` added at ``Site(layer)``
    (``run_staggered``; for a replace-mode vector ``d(p) = theta - h(p)``, which writes theta)."""
    check_batch(batch)
    check_choice(ln, ("difference", "frozen"), "ln")
    check_choice(attention, ("patched", "clean"), "attention")
    theta, layer, mode = injected_vector(model, tv, layer)
    spec = spec_name(positions)
    L, H, eps = model.cfg.n_layers, model.cfg.n_heads, model.cfg.eps
    layers = list(range(layer, L))
    be = backend_for(model)
    ln_final = be.ln_final()
    u_all = label_direction(model, batch)
    W_O = [be.W_O(l).float() for l in layers]
    W_V = [be.W_V(l).float() for l in layers]  # one row per query head (grouped-query heads expanded)
    points_clean = ["resid_pre", "z", "mlp_out", "attn_out"] + (["pattern"] if attention == "clean" else [])
    points_patched = ["z", "mlp_out", "attn_out"] + (["pattern"] if attention == "patched" else [])
    B, nL, d = len(batch), len(layers), model.cfg.d_model
    acc = {k: torch.zeros(nL, H, B) for k in ("exact_dla", "ov_dla", "exact_norm", "ov_norm", "cosine")}
    head_exact = torch.zeros(nL, H, B, d) if keep_head_vectors else None
    head_ov = torch.zeros(nL, H, B, d) if keep_head_vectors else None
    vec = {k: torch.zeros(B, d) for k in ("exact_heads", "ov_heads", "direct", "total", "clean_final")}
    attn_layers, mlp_layers = torch.zeros(nL, B, d), torch.zeros(nL, B, d)
    direct_dla, mlp_dla = torch.zeros(B), torch.zeros(nL, B)
    dev = model.cfg.device
    final_name = resid_name(model, L)
    with torch.no_grad():
        for rows, mb in minibatches(batch, batch_size):
            b = len(mb)
            ar = torch.arange(b, device=dev)
            q = mb.final_positions.to(dev)
            ps = mb.positions(positions)
            p, valid = ps.positions.to(dev), ps.mask.to(dev)
            ri = ar[:, None].expand_as(p).to(dev)
            cc_store: dict = {}
            fin = read_activations(model, mb, [final_name], q[:, None].cpu(), batch_size=b,
                                   make_hooks=lambda r, m: _reads(layers, points_clean, cc_store))[final_name]
            cc = {k: v[0] for k, v in cc_store.items()}
            x0 = cc[("resid_pre", layer)]
            dvec = (theta.to(dev, x0.dtype) - x0[ri, p]) if mode == "replace" else (scale * theta).to(dev, x0.dtype)
            dvec = torch.where(valid[..., None], dvec.expand(b, p.shape[1], d), 0)  # nothing at invalid entries
            cp_store: dict = {}
            inject = Intervention(Site(layer), "add", positions=p, value=dvec, mask=valid if ps.ragged else None)
            entry = Entry(layer, x0, mb.final_positions, hooks=[inject, *_reads(layers, points_patched, cp_store)],
                          tokens=mb.tokens)
            hq2 = run_staggered(model, [entry], unembed=False).to(dev).float()
            cp = {k: v[0] for k, v in cp_store.items()}
            hq = fin[:, 0].to(dev).float()
            lnf = lambda v: _ln_linear(ln_final, hq2.reshape(b, *[1] * (v.ndim - 2), d), v, eps)  # noqa: E731
            u = u_all[rows].to(dev)
            dla = lambda v: torch.einsum("b...d,bd->b...", lnf(v), u)  # noqa: E731
            at_q = ((p == q[:, None]) & valid).float()  # [b, n]
            direct = torch.einsum("bn,bnd->bd", at_q, dvec.float())
            vec["direct"][rows], vec["total"][rows], vec["clean_final"][rows] = direct.cpu(), (hq2 - hq).cpu(), hq.cpu()
            direct_dla[rows] = dla(direct).cpu()
            for i, l in enumerate(layers):
                z1, z0 = cp[("z", l)][ar, q].float(), cc[("z", l)][ar, q].float()  # [b, H, d_head]
                g1, g0 = be.attn_out_gain(l, z1), be.attn_out_gain(l, z0)  # post-attention norm (None: none)
                g1 = 1.0 if g1 is None else g1.float()[:, None]
                g0 = 1.0 if g0 is None else g0.float()[:, None]
                ex = torch.einsum("bhe,hed->bhd", z1, W_O[i]) * g1 - torch.einsum("bhe,hed->bhd", z0, W_O[i]) * g0
                hp = cc[("resid_pre", l)][ri, p].float()  # clean residual at block l's input, at P
                block_ln = be.ln1(l)
                if ln == "difference":
                    dln = (block_ln(hp + dvec) - block_ln(hp)).float()
                else:
                    dln = _ln_linear(block_ln, hp, dvec.float(), eps)
                A = (cp if attention == "patched" else cc)[("pattern", l)][ar, :, q]  # [b, H, key_pos]
                A = A.gather(2, p[:, None, :].expand(b, H, p.shape[1])).float()
                ov = torch.einsum("bhn,bnD,hDe,hed->bhd", A, dln, W_V[i], W_O[i]) * g0  # at the clean run's gain
                acc["exact_dla"][i, :, rows], acc["ov_dla"][i, :, rows] = dla(ex).T.cpu(), dla(ov).T.cpu()
                acc["exact_norm"][i, :, rows], acc["ov_norm"][i, :, rows] = ex.norm(dim=-1).T.cpu(), ov.norm(dim=-1).T.cpu()
                acc["cosine"][i, :, rows] = torch.nn.functional.cosine_similarity(ov, ex, dim=-1, eps=1e-12).T.cpu()
                if keep_head_vectors:
                    head_exact[i, :, rows], head_ov[i, :, rows] = ex.transpose(0, 1).cpu(), ov.transpose(0, 1).cpu()
                vec["exact_heads"][rows] += ex.sum(1).cpu()
                vec["ov_heads"][rows] += ov.sum(1).cpu()
                dm = (cp[("mlp_out", l)][ar, q] - cc[("mlp_out", l)][ar, q]).float()
                mlp_layers[i, rows], mlp_dla[i, rows] = dm.cpu(), dla(dm).cpu()
                attn_layers[i, rows] = (cp[("attn_out", l)][ar, q] - cc[("attn_out", l)][ar, q]).float().cpu()
    return OVResult(
        **acc, **vec, attn_layers=attn_layers, mlp_layers=mlp_layers, direct_dla=direct_dla, mlp_dla=mlp_dla,
        layers=layers, injection_layer=layer, ln=ln, attention=attention, mode=mode, positions=spec, task=batch.task,
        head_exact=head_exact, head_ov=head_ov,
        **stamp(model, batch), meta={"scale": scale, "method": getattr(tv, "method", "tensor")},
    )


# ----------------------------------------------------------------------------- reconstruction
@dataclass(frozen=True)
class ReconstructionResult(Result):
    """Accuracy when parts of the vector's effect are added directly to the final residual.

    per_prompt: [condition, batch] 0/1; values, low, high: [condition] accuracy and Wilson 95%
    interval; conditions: names; recovered: (acc - acc_no_vector) / (acc_at_layer - acc_no_vector).
    """

    per_prompt: Float[Tensor, "condition batch"]
    values: Float[Tensor, "condition"]
    low: Float[Tensor, "condition"]
    high: Float[Tensor, "condition"]
    conditions: list
    recovered: list
    injection_layer: int
    heads: list | None
    restrict_to_labels: bool
    task: str
    meta: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"condition": self.conditions, "accuracy": self.values.tolist(), "low": self.low.tolist(),
                             "high": self.high.tolist(), "recovered": self.recovered, "n": self.per_prompt.shape[1],
                             "injection_layer": self.injection_layer, "task": self.task, "model": self.model})


def reconstruct(
    model: HookedModel,
    batch: PromptBatch,
    tv: TaskVector | Float[Tensor, "d_model"],
    layer: int | None = None,
    *,
    heads: Sequence[Sequence[int]] | None = None,
    ov: OVResult | None = None,
    positions: PositionSpec = "final",
    scale: float = 1.0,
    ln: LNMode = "difference",
    restrict_to_labels: bool = False,
    batch_size: int = 64,
) -> ReconstructionResult:
    """Accuracy of ``batch`` (usually zero-shot prompts) when the final residual at q is
    h_L(q) + X, for X = the full effect of injecting at ``layer`` ("theta at layer l": the vector
    run itself), d(q) + sum of the heads' OV contributions, d(q) + their exact contributions,
    d(q) + exact heads + MLPs (= the vector run, up to rounding), and d(q) alone ("theta at
    final"), next to no vector. ``heads``: only these (layer, head) pairs (default: every head in
    blocks >= layer). Accuracy is the argmax over the vocabulary, or over the label words with
    ``restrict_to_labels``."""
    check_batch(batch)
    _, layer, _ = injected_vector(model, tv, layer)
    if ov is None:
        ov = ov_contributions(model, batch, tv, layer, positions=positions, scale=scale, ln=ln,
                              keep_head_vectors=heads is not None, batch_size=batch_size)
    elif ov.injection_layer != layer or ov.total.shape[0] != len(batch):
        raise ValueError("ov: it was computed for another layer or batch")
    if heads is None:
        ex, approx, label = ov.exact_heads, ov.ov_heads, "heads"
    else:
        hs = check_heads(model, heads, allow_empty=False)
        if ov.head_exact is None:
            raise ValueError("heads: a head subset needs an OVResult computed with keep_head_vectors=True")
        bad = [lh for lh in hs if lh[0] not in ov.layers]
        if bad:
            raise ValueError(f"heads {bad} are before the injection layer {layer}; they carry none of the vector")
        idx = [(ov.layers.index(l), h) for l, h in hs]
        ex = sum(ov.head_exact[i, h] for i, h in idx)
        approx = sum(ov.head_ov[i, h] for i, h in idx)
        label = f"{len(hs)} heads"
    cand = batch.candidate_tokens() if restrict_to_labels else None
    if restrict_to_labels and cand is None:
        raise ValueError(f"restrict_to_labels=True but task {batch.task!r} has no label words")
    extra = {
        "no vector": 0.0,
        f"theta at layer {layer}": ov.total,
        f"theta + {label} (OV) at final": ov.direct + approx,
        f"theta + {label} (exact) at final": ov.direct + ex,
        "theta at final": ov.direct,
    }
    if heads is None:
        extra["theta + heads + MLPs (exact) at final"] = ov.direct + ov.exact_heads + ov.mlp_layers.sum(0)
    rows = []
    with torch.no_grad():
        for name, x in extra.items():
            logits = unembed_resid(model, (ov.clean_final + x).to(model.cfg.device)).float().cpu()
            rows.append(correct(logits, batch.answer_tokens, cand).float())
    per = torch.stack(rows)
    rates = [wilson(int(r.sum()), r.numel()) for r in per]
    base, full = float(per[0].mean()), float(per[1].mean())
    rec = [float("nan") if full == base else (float(r.mean()) - base) / (full - base) for r in per]
    return ReconstructionResult(
        per_prompt=per, values=per.mean(1), low=torch.tensor([r.low for r in rates]),
        high=torch.tensor([r.high for r in rates]), conditions=list(extra), recovered=rec, injection_layer=layer,
        heads=None if heads is None else [list(h) for h in check_heads(model, heads)],
        restrict_to_labels=restrict_to_labels, task=batch.task,
        **stamp(model, batch), meta={"ln": ov.ln, "positions": ov.positions, "mode": ov.mode},
    )
