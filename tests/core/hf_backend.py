"""A third runner backend, written the way docs/architecture.md's checklist says: a plain Hugging Face
``transformers`` Llama model (no TransformerLens at all) run with torch forward hooks.

It claims what the runner needs for final logits, reading the residual stream, resuming mid-model
and an interchange: forwards that start and stop at any block, ``run_with_cache`` and ``hooks`` for
the residual hook points ``blocks.{l}.hook_resid_pre`` and ``blocks.{n_layers-1}.hook_resid_post``
(``run_with_cache`` is the base class's, over ``hook_names``),
weight views and the unembedding. Everything else (attention hooks, key/value replay, decoding
with a cache, backward hooks) is refused or left to the ``TransformerLensBackend`` defaults, which
refuse it too. ``tests/core/test_third_backend.py`` runs it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor

from icl_circuits.core.model_info import record_load
from icl_circuits.core.runner.backend import HookPairs, TransformerLensBackend

_RESID_PRE = re.compile(r"blocks\.(\d+)\.hook_resid_pre")


class HFModel(torch.nn.Module):
    """A small random ``LlamaForCausalLM`` (grouped-query attention, eager attention) with the toy
    tokenizer and a ``cfg`` under TransformerLens's names, which is all the runner reads."""

    def __init__(self, tokenizer: Any, *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, n_kv_heads: int = 2,
                 seed: int = 0):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
                             num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                             max_position_embeddings=256, tie_word_embeddings=False, attn_implementation="eager")
        torch.manual_seed(seed)
        self.hf = LlamaForCausalLM(config).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cfg = SimpleNamespace(
            model_name="hf-llama-tiny", n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
            n_key_value_heads=n_kv_heads, d_vocab=len(tokenizer), n_ctx=256, device="cpu", dtype=torch.float32,
            default_prepend_bos=True, positional_embedding_type="rotary", normalization_type="RMS",
            original_architecture="LlamaForCausalLM", eps=config.rms_norm_eps, attn_only=False,
            output_logits_soft_cap=-1.0,
        )
        record_load(self, source="transformers LlamaForCausalLM, random weights (tests)", path=None,
                    processing=dict.fromkeys(("fold_ln", "center_writing_weights", "center_unembed",
                                              "fold_value_biases"), False),
                    bos_rule="the toy tokenizer's BOS", backend="hf-torch-hooks")


class HFTorchHooksBackend(TransformerLensBackend):
    """Runs an ``HFModel`` block by block with torch hooks standing in for TransformerLens hook points."""

    name: ClassVar[str] = "hf-torch-hooks"

    @classmethod
    def claims(cls, model: Any) -> bool:
        return isinstance(model, HFModel)

    # -- forwards
    def forward(self, x: Tensor, *, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                **kwargs: Any) -> Tensor:
        if kwargs:
            raise NotImplementedError(f"{self.name}: forward options {sorted(kwargs)} are not supported")
        inner, n = self.model.hf.model, self.model.cfg.n_layers
        start = 0 if start_at_layer is None else start_at_layer
        stop = n if stop_at_layer is None else stop_at_layer
        h = inner.embed_tokens(x) if start_at_layer is None else x
        b, p = h.shape[:2]
        pos = torch.arange(p, device=h.device)[None].expand(b, p)
        rope = inner.rotary_emb(h, pos)
        # causal additive mask [batch, 1, query, key]; right-padded batches need no padding mask
        mask = torch.full((p, p), torch.finfo(h.dtype).min, device=h.device).triu(1)[None, None].expand(b, 1, p, p)
        for i in range(start, stop):
            out = inner.layers[i](h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def resume(self, resid: Tensor, start_at_layer: int, stop_at_layer: int | None = None, *,
               tokens: Tensor | None, past: int = 0, past_kv: Any = None) -> Tensor:
        if past_kv is not None:
            self.frozen_kv([])  # refused: no suffix replay
        return self.forward(resid, start_at_layer=start_at_layer, stop_at_layer=stop_at_layer)

    # -- hooks (run_with_cache is TransformerLensBackend's: storing hooks on hook_names())
    def hook_names(self) -> list[str]:
        n = self.model.cfg.n_layers
        return [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]

    @contextmanager
    def hooks(self, fwd: HookPairs, bwd: HookPairs) -> Iterator[None]:
        if bwd:
            raise NotImplementedError(f"{self.name}: backward hooks are not supported")
        layers, n = self.model.hf.model.layers, self.model.cfg.n_layers
        handles = []
        try:
            for name, fn in fwd:
                m = _RESID_PRE.fullmatch(name)
                if m and int(m.group(1)) < n:
                    handles.append(layers[int(m.group(1))].register_forward_pre_hook(_pre(fn), with_kwargs=True))
                elif name == f"blocks.{n - 1}.hook_resid_post":
                    handles.append(layers[n - 1].register_forward_hook(_post(fn)))
                else:
                    raise NotImplementedError(f"{self.name}: hook point {name!r} is not supported "
                                              f"(residual stream only: {', '.join(self.hook_names())})")
            yield
        finally:
            for h in handles:
                h.remove()

    def check_attention_edits(self, interventions: Any) -> list:
        return list(interventions)  # attention hook points are refused by hooks() itself

    def attention_seams(self, layer: int) -> tuple[str, bool, bool]:
        return type(self.model.hf.model.layers[layer].self_attn).__name__, False, False

    # -- weights and unembedding ([head, d_model, d_head] / [head, d_head, d_model] as TransformerLens)
    def _attn(self, layer: int) -> Any:
        return self.model.hf.model.layers[layer].self_attn

    def _split(self, w: Tensor) -> Tensor:  # nn.Linear weight [heads * d_head, d_model] -> [heads, d_model, d_head]
        d_head = self.model.cfg.d_head
        return w.detach().reshape(-1, d_head, w.shape[1]).transpose(1, 2)

    def W_Q(self, layer: int) -> Tensor:
        return self._split(self._attn(layer).q_proj.weight)

    def W_K(self, layer: int) -> Tensor:
        return self.per_head(self._split(self._attn(layer).k_proj.weight))

    def W_V(self, layer: int) -> Tensor:
        return self.per_head(self._split(self._attn(layer).v_proj.weight))

    def W_O(self, layer: int) -> Tensor:  # o_proj.weight [d_model, heads * d_head]
        w = self._attn(layer).o_proj.weight.detach()
        return w.T.reshape(self.model.cfg.n_heads, self.model.cfg.d_head, -1)

    def W_U(self) -> Tensor:
        return self.model.hf.lm_head.weight.detach().T

    def ln1(self, layer: int) -> Callable[[Tensor], Tensor]:
        return self.model.hf.model.layers[layer].input_layernorm

    def attn_out_gain(self, layer: int, z: Tensor) -> None:
        return None  # Llama blocks have no post-attention norm: heads add z_h W_O[h] as they are

    def ln_final(self) -> Callable[[Tensor], Tensor] | None:
        return self.model.hf.model.norm

    def unembed(self, resid: Tensor) -> Tensor:
        return self.model.hf.lm_head(self.model.hf.model.norm(resid))


def _pre(fn: Callable) -> Callable:
    """A TransformerLens hook ``fn(act, hook) -> act | None`` on a decoder layer's input."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = args[0] if args else kwargs["hidden_states"]
        out = fn(x, None)
        if out is None:
            return None
        return ((out, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": out})

    return hook


def _post(fn: Callable) -> Callable:
    """A TransformerLens hook on a decoder layer's output (a tensor, or a tuple whose first item it is)."""

    def hook(module: Any, args: tuple, output: Any) -> Any:
        x = output[0] if isinstance(output, tuple) else output
        out = fn(x, None)
        if out is None:
            return None
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return hook
