"""Reference attention under an arbitrary mask: the spec every sparse op is checked against.

The spec lives in :mod:`sparsa.ops._shared.masked` (with the mask helpers of
:mod:`sparsa.ops._shared.masks`), where every op folder reads it; this module names it for the
rest of the package.
"""
from __future__ import annotations

from .._shared.masked import dense_attention, masked_attention
from .._shared.masks import MaskFn, causal_mask_fn, causal_pairs, query_positions

__all__ = ["MaskFn", "causal_mask_fn", "causal_pairs", "dense_attention", "masked_attention", "query_positions"]
