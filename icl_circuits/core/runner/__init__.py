"""The runner: the one place that runs a model. Every forward pass of every analysis, every
hook (``model.hooks``), every resumption mid-model and every unembedding goes through here.

What it owns (an analysis says *what* to do with ``Intervention`` specs, the runner *how*):

- **Hooks**: ``hooked(model, interventions)`` compiles specs (``core.interventions``) into
  TransformerLens hooks and attaches them in a ``model.hooks`` context, so they are removed
  also when an exception is raised.
- **Resuming mid-model**: ``resume(model, resid, l)`` runs blocks ``l..`` from the residual at
  the input of block ``l`` with what a full forward gives every block (shortformer positional
  embedding, the attention mask of a left-padding tokenizer, positions offset by a key/value
  cache), so resumed runs equal the full forward (``tests/core/test_resume.py``).
- **Prefix reuse and staggered batching**: ``cache_resid`` runs the clean prefix once;
  ``run_staggered`` runs many *entries* (rows that join the forward at different blocks, each
  with its own interventions, optionally as a suffix over cached keys/values) in one forward.
- **Final-position unembedding**: only the rows read are unembedded (``unembed_rows``), with
  ``ln_final`` and the model's output soft cap.
- **Minibatching, device and dtype**: inputs move to ``model.cfg.device``; outputs come back as
  float32 on the CPU.

Layer convention: "layer l" is the input of block l (``blocks.{l}.hook_resid_pre``); layer
``n_layers`` is the final residual (``blocks.{n_layers-1}.hook_resid_post``, before ``ln_final``).
"""

from icl_circuits.core.runner.backend import (
    Backend, TransformerLensBackend, available_backends, backend_for, register_backend, resolve_backend, unregister_backend,
)
from icl_circuits.core.runner.hooked import HookedBackend, block_inputs
from icl_circuits.core.runner.bridge import BridgeBackend
from icl_circuits.core.runner.forward import (
    UNEMBED_ELEMENTS, Interventions, MakeHooks, attention_pattern, final_logits, final_logits_with_grad, frozen, gather_positions, hooked,
    minibatches, read_activations, read_resid, run_final_logits, unembed_resid, unembed_rows,
)
from icl_circuits.core.runner.resume import resume
from icl_circuits.core.runner.staggered import (
    TOKENS_PER_FORWARD, Entry, MakeLayerInterventions, cache_resid, hook_block, resume_final_logits, run_staggered,
    sweep_final_logits,
)

__all__ = ["Backend", "TransformerLensBackend", "HookedBackend", "BridgeBackend", "backend_for", "register_backend", "unregister_backend", "available_backends", "resolve_backend", "hooked", "resume", "block_inputs", "unembed_resid", "unembed_rows", "frozen", "gather_positions", "minibatches", "final_logits", "run_final_logits", "read_activations", "read_resid", "Entry", "run_staggered", "cache_resid", "hook_block", "TOKENS_PER_FORWARD", "UNEMBED_ELEMENTS", "final_logits_with_grad", "resume_final_logits", "sweep_final_logits", "Interventions", "MakeHooks", "attention_pattern", "MakeLayerInterventions"]
