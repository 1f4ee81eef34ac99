from .reference import MaskFn, causal_mask_fn, dense_attention, masked_attention, query_positions
from .sdpa import causal_attention_sdpa, masked_attention_sdpa, sdpa_masked_active, sdpa_masked_scope

__all__ = ["MaskFn", "causal_attention_sdpa", "causal_mask_fn", "dense_attention", "masked_attention",
           "masked_attention_sdpa", "query_positions", "sdpa_masked_active", "sdpa_masked_scope"]
