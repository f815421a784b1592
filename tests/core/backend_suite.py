"""The analyses compared across runner backends (``tests/core/test_backends.py``): core runner paths
and a representative set of methods on small batches, as a flat ``{name: tensor}`` dict.

The reference numbers (``tests/core/data/backend_reference_<model>.safetensors``) come from the hooked
backend (TransformerLens 3.9): ``python scripts/backend_reference.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: per model: task, prompts (small batch), demos, template
SETTINGS = {"toy-icl": ("antonym", 8, 4, None), "smollm2-135m": ("antonym", 6, 3, "{x} -> {y}")}
#: keys that are accuracies or verdicts (compared exactly); every other key within TOLERANCE
EXACT = ("correct", "tv_values", "interchange_rates", "isolation_correct", "isolation_loyal")
TOLERANCE = 1e-4


def run_suite(model) -> dict[str, Tensor]:
    """Every number the backends must agree on, computed on ``model`` (toy-icl or smollm2-135m)."""
    from icl_circuits import build_prompts, score
    from icl_circuits.core import runner
    from icl_circuits.core.pairs import paired_batches
    from icl_circuits.methods import anchors, attribution, heads, interchange, patching, saliency, task_vectors, vectors

    name = str(model.cfg.model_name)
    task, n, k, tmpl = SETTINGS[name]
    L = model.cfg.n_layers
    layers = sorted({0, L // 2, L - 1})
    icl = build_prompts(model, task, n, k, tmpl, seed=0)
    rand = build_prompts(model, task, n, k, tmpl, seed=0, variant="random_answers")
    src, tgt = paired_batches(model, "english-french", task, n, k, template=tmpl, seed=0)
    dq = build_prompts(model, task, n, k, tmpl, seed=1, variant="dummy_query")
    zs = build_prompts(model, task, n, 0, tmpl, seed=2, variant="zero_shot")
    out: dict[str, Tensor] = {}
    # core runner paths
    logits = runner.final_logits(model, icl)
    out["final_logprobs"] = logits.log_softmax(-1).gather(1, icl.answer_tokens[:, None])[:, 0]
    resid = runner.read_resid(model, icl, icl.final_positions[:, None], layers=[0, L // 2, L])
    out["read_resid"] = resid[:, :, 0]
    cached, clean, _ = runner.cache_resid(model, icl.tokens, [L // 2], icl.final_positions)
    resumed = runner.run_final_logits(model, icl, start_at_layer=L // 2, resid=cached[L // 2])
    out["resumed_logprobs"] = resumed.log_softmax(-1).gather(1, icl.answer_tokens[:, None])[:, 0]
    out["correct"] = score(model, icl, ["first_token"])["first_token"].float()
    # analyses
    scan = heads.head_ablation_scan(model, icl, "zero", metric="logit_diff_to_mean", progress=False)
    out["scan_effect"], out["scan_clean"] = scan.effect, scan.clean
    out["interchange_rates"] = interchange.interchange(model, src, tgt, "answers", layers=layers, progress=False).rates
    out["patch_values"] = patching.patch_grid(model, icl, rand, layers=layers).values
    out["saliency_flows"] = saliency.saliency_flow(model, icl, loss="full_vocab", proportions=True, progress=False).flows
    tv = task_vectors.vanilla_task_vector(model, dq, layers)
    out["tv_values"] = vectors.evaluate_vector(model, tv, zs).values
    out["attribution_effect"] = attribution.head_attribution(model, icl, "zero").effect  # gradients through hook_z taps
    # isolation blocks pre-softmax scores (on toy-icl's native attention under TL 4: renormalised patterns)
    iso = anchors.isolate_attention(model, icl, [0, 1], control=False, progress=False)
    out["isolation_correct"], out["isolation_loyal"] = iso.correct, iso.loyal
    return {k: torch.as_tensor(v).detach().float().contiguous() for k, v in out.items()}
