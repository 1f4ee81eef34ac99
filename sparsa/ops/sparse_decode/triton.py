"""Triton kernels of decode attention over compact KV caches (see reference.py for the spec), one
module per primitive, re-exported here: ``triton_decode``, ``triton_evict``, ``triton_quest``,
``triton_append``, and what they share in ``triton_common``.

Kernels:

* :func:`varlen_decode_triton` / :func:`paged_decode_triton`: one decode query per head over a
  variable-length per-KV-head store, or over a list of pages of a paged store. One program
  handles one KV head's whole query group (its rows padded to 16 for the matrix units) and one
  split of the tokens (split-K, "flash decoding"); a small second kernel merges the splits.
  Keys and values may be int8 / int4 codes: they are dequantized in registers (fused), so the
  cache is read once at its stored width. With ``logits`` given, the scaled scores of every
  row are written out, so that H2O's attention mass is accumulated later from those scores
  and the softmax normaliser, without reading the cache a second time.
* :func:`evict_update_triton`: H2O's accumulation and single-token eviction, or StreamingLLM's
  eviction, one program per KV head: it adds this step's probabilities to the accumulated
  scores, picks the victim and moves the head's last token into the victim's slot (the store
  stays compact and its order is irrelevant to attention). Long H2O heads are split: one
  program per (KV head, chunk of slots) updates the scores and finds the chunk's candidate,
  then one program per KV head merges the chunks' candidates and moves the token.
* :func:`quest_page_scores_triton` and :func:`quest_select_triton`: Quest's page upper bound
  summed over the KV head's query group (the group sum folds into one weight vector over a
  page's interleaved min/max row, so each page's bounds are one contiguous read; int8 codes
  are read as int32 words and widened by exponent tricks instead of int-to-float
  conversions), and an exact top-k by a radix-16 search on the scores' bits (at most 8
  histogram passes, ties to the lower page), writing the sorted page list plus the current
  page. The scoring runs one program per (sequence, KV head, page range), or with
  ``all_heads`` one per (sequence, page range) over the pages' rows of every KV head.
* :func:`append_triton`: one token into a variable-length or paged store, quantized in the
  kernel; a paged store's page bounds are updated (native) or computed when the token
  completes its page (int8).

Supported: head_dim 32, 64, 128 or 256; float16 / bfloat16 (float32 with exact dot products,
for checks); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from .triton_append import append_triton
from .triton_common import (HEAD_DIMS, KERNEL_DTYPES, LAUNCH, LOG2E, MAX_SELECT_PAGES, MAX_SPLITS, check_kernel_query,
                            default_splits, device_sms, group_rows, set_launch_defaults, split_plan)
from .triton_decode import paged_decode_triton, varlen_decode_triton
from .triton_evict import evict_update_triton
from .triton_quest import bound_rows, quest_page_scores_triton, quest_select_triton

__all__ = ["HEAD_DIMS", "KERNEL_DTYPES", "LAUNCH", "LOG2E", "MAX_SELECT_PAGES", "MAX_SPLITS", "append_triton",
           "bound_rows", "check_kernel_query", "default_splits", "device_sms", "evict_update_triton", "group_rows",
           "paged_decode_triton", "quest_page_scores_triton", "quest_select_triton", "set_launch_defaults",
           "split_plan", "varlen_decode_triton"]
