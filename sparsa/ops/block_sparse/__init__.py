from .indices import (block_mask_from_indices, check_block_indices, indices_from_block_mask,
                      normalize_block_indices, num_blocks)
from .reference import block_sparse_attention_ref

__all__ = ["block_mask_from_indices", "block_sparse_attention_ref", "check_block_indices",
           "indices_from_block_mask", "normalize_block_indices", "num_blocks"]
