"""A Llama-architecture causal LM whose attention is trainable Native Sparse Attention.

The blocks are transformers' Llama (RMSNorm, SwiGLU MLP, tied embeddings), with every
attention layer replaced by :class:`sparsa.nn.NativeSparseAttention`. The config is a
``LlamaConfig`` of ``model_type = "sparsa_nsa"`` whose ``sparse_attention`` table names the
method and its geometry, e.g. ``{"method": "nsa", "block": 32, "stride": 16, ...}``; it is
registered with ``AutoConfig`` / ``AutoModelForCausalLM`` on import, so an exported directory
loads with ``from_pretrained``.

Generation: the layers keep their NSA caches (compressed tokens included) beside the
transformers cache they are given, and append zero-width keys to it so that its length (which
``generate()`` reads) stays right. A batch with left padding runs row by row, each row without
its pads (NSA has no attention mask); a batch without padding runs as one.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ...nn import NativeSparseAttention
from ...nn.nsa import NSACache
from .attention import _positions

MODEL_TYPE = "sparsa_nsa"
# NativeSparseAttention arguments a config's ``sparse_attention`` table may set
NSA_KEYS = ("block", "stride", "sel_block", "n_select", "window", "n_forced_init", "n_forced_local", "compress",
            "compress_hidden", "gate_bias", "separate_kv")


class NSALlamaConfig(LlamaConfig):
    """``LlamaConfig`` with ``sparse_attention = {"method": "nsa", <NSA_KEYS>...}``."""

    model_type = MODEL_TYPE


def nsa_settings(config: Any) -> dict[str, Any]:
    """The NativeSparseAttention keyword arguments of ``config.sparse_attention`` (checked)."""
    table = getattr(config, "sparse_attention", None)
    if not isinstance(table, dict) or table.get("method") != "nsa":
        raise ValueError(f"sparse_attention: a {MODEL_TYPE} config needs a table with method 'nsa', got {table!r}")
    unknown = sorted(set(table) - set(NSA_KEYS) - {"method"})
    if unknown:
        raise ValueError(f"sparse_attention: unknown keys {unknown}; allowed: {', '.join(NSA_KEYS)}")
    return {k: table[k] for k in NSA_KEYS if table.get(k) is not None}


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def is_native_nsa(model: Any) -> bool:
    """Whether ``model`` (or its config) is a natively sparse NSA model."""
    config = getattr(model, "config", model)
    return getattr(config, "model_type", None) == MODEL_TYPE


class NSADecoderAttention(nn.Module):
    """transformers' attention-module interface around one :class:`NativeSparseAttention`.

    hidden_states (batch, seq, hidden) -> ((batch, seq, hidden), None). Positions come from the
    layer's own cache (RoPE at 0, 1, ... of each row's real tokens); the model's rotary
    tables and 4-D mask are not used. ``pad_mask`` (batch, cached + seq), True = real token, a
    host bool tensor, is set by :class:`NSALlamaForCausalLM` for each call (read back once per
    forward, so no layer waits for the device to learn whether its rows are padded).
    """

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = NativeSparseAttention(config.hidden_size, config.num_attention_heads,
                                          config.num_key_value_heads, config.head_dim,
                                          rope_theta=_rope_theta(config), **nsa_settings(config))
        self.pad_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, cache: Any = None,
                past_key_values: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = cache if cache is not None else past_key_values
        b, t, _ = hidden_states.shape
        new = None
        if self.pad_mask is not None:
            if self.pad_mask.shape[0] != b or self.pad_mask.shape[1] < t:
                raise ValueError(f"attention_mask: shape {tuple(self.pad_mask.shape)} does not cover "
                                 f"{b} rows of {t} new tokens")
            last = self.pad_mask[:, -t:]
            new = None if bool(last.all()) else last
        if cache is None:
            state: NSACache | list[NSACache] | None = None
        else:
            store = cache.__dict__.setdefault("_sparsa_nsa", {})
            state = store.get(self.layer_idx)
            if state is None:
                state = self.attn.new_cache(b) if new is None else [self.attn.new_cache(1) for _ in range(b)]
                store[self.layer_idx] = state
            # zero-width keys: the transformers cache counts the tokens and stores nothing
            empty = hidden_states.new_empty(b, 1, t, 0)
            cache.update(empty, empty, self.layer_idx)
        if isinstance(state, list) or new is not None:
            return self._rows(hidden_states, new, state), None
        return self.attn(hidden_states, cache=state), None

    def _rows(self, x: torch.Tensor, new: torch.Tensor | None, state: Any) -> torch.Tensor:
        """Each row alone, without its padded positions (whose outputs are zero)."""
        b = x.shape[0]
        if state is not None and not isinstance(state, list):
            raise ValueError("attention_mask: padding appeared after a prompt that had none; NSA models need "
                             "the padding in the first call")
        out = torch.zeros_like(x)
        for i in range(b):
            if new is not None and not bool(new[i].any()):
                continue
            keep = slice(None) if new is None else _positions(new[i], x.device)
            out[i:i + 1, keep] = self.attn(x[i:i + 1, keep], cache=None if state is None else state[i])
        return out


class NSALlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` with :class:`NSADecoderAttention` in every layer."""

    config_class = NSALlamaConfig

    def __init__(self, config: Any) -> None:
        nsa_settings(config)
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = NSADecoderAttention(config, i)
        self.post_init()
        for layer in self.model.layers:      # post_init zeroes every bias, the gates' starting logits too
            layer.self_attn.attn.reset_gate_bias()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 else None
        if mask is not None:
            mask = mask.to("cpu", torch.bool)          # one read-back per forward, shared by the layers
        layers = [layer.self_attn for layer in self.model.layers]
        for attn in layers:
            attn.pad_mask = mask
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            for attn in layers:
                attn.pad_mask = None


# callers (generate(), sparsa's loops) read the keyword names of forward from its signature
NSALlamaForCausalLM.forward.__signature__ = inspect.signature(LlamaForCausalLM.forward)  # type: ignore[attr-defined]

AutoConfig.register(MODEL_TYPE, NSALlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(NSALlamaConfig, NSALlamaForCausalLM, exist_ok=True)

__all__ = ["MODEL_TYPE", "NSA_KEYS", "NSALlamaConfig", "NSALlamaForCausalLM", "NSADecoderAttention", "is_native_nsa",
           "nsa_settings"]
