from .reference import MaskFn, causal_mask_fn, dense_attention, masked_attention, query_positions

__all__ = ["MaskFn", "causal_mask_fn", "dense_attention", "masked_attention", "query_positions"]
