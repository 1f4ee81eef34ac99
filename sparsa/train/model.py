"""Build the Llama-architecture model of a recipe with HuggingFace transformers."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import ModelConfig


def llama_config(m: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> Any:
    """A ``transformers.LlamaConfig`` for the recipe's model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
        head_dim=m.head_dim, hidden_act="silu", max_position_embeddings=m.max_position_embeddings,
        initializer_range=m.init_std, rms_norm_eps=m.rms_norm_eps, tie_word_embeddings=m.tie_embeddings,
        rope_theta=m.rope_theta, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, use_cache=True)


def nsa_table(m: ModelConfig) -> dict[str, Any]:
    """The ``sparse_attention`` table of an NSA model's config."""
    return {"method": "nsa", **dataclasses.asdict(m.nsa)}


def build_model(m: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int,
                attn_implementation: str = "sdpa"):
    """A freshly initialised causal LM (fp32 weights): ``LlamaForCausalLM`` for dense attention,
    :class:`~sparsa.integrations.hf.nsa_model.NSALlamaForCausalLM` for ``attention = "nsa"``."""
    if m.attention == "nsa":
        from ..integrations.hf.nsa_model import NSALlamaConfig, NSALlamaForCausalLM  # local: loads transformers

        base = llama_config(m, vocab_size, pad_id, bos_id, eos_id).to_dict()
        for k in ("model_type", "architectures", "transformers_version"):
            base.pop(k, None)
        cfg = NSALlamaConfig(**base, sparse_attention=nsa_table(m))
        cfg._attn_implementation = attn_implementation
        return NSALlamaForCausalLM(cfg)
    from transformers import LlamaForCausalLM

    cfg = llama_config(m, vocab_size, pad_id, bos_id, eos_id)
    cfg._attn_implementation = attn_implementation
    return LlamaForCausalLM(cfg)


def count_parameters(model) -> dict[str, int]:
    """Unique parameters (tied weights counted once), total and without the embedding."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb}


def train_flops_per_token(m: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Approximate training FLOPs per token (forward + backward) at ``seq_len``.

    6 x matmul parameters (the tied output projection included) plus causal attention:
    forward 2 x 2 x (seq_len / 2) x heads x head_dim per layer, backward ~2.5 x forward.
    """
    h, q = m.hidden_size, m.num_heads * m.head_dim
    kv = m.num_kv_heads * m.head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * m.intermediate_size
    matmul = m.num_layers * per_layer + h * vocab_size
    attn_fwd = m.num_layers * 4 * (seq_len / 2) * q
    return 6 * matmul + 3.5 * attn_fwd
