"""BigBird (causal form): local window + global + random key blocks per query block."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_int, check_qkv
from ..ops.block_sparse import (block_sparse_attention, indices_from_block_mask, num_blocks,
                                query_block_spans, tile_pairs)
from ..ops.dense.reference import causal_pairs
from .base import AttentionStats, Method, prefill_stats, solve_budget
from .registry import register

PAPER_WINDOW_BLOCKS = 3
PAPER_GLOBAL_BLOCKS = 2
PAPER_RANDOM_BLOCKS = 3

_M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd multiplier < 2**31, so products stay inside int64


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Integer mixing of int64 values into [0, 2**32)."""
    x = x & _M32
    x = (((x >> 16) ^ x) * _MIX) & _M32
    x = (((x >> 16) ^ x) * _MIX) & _M32
    return (x >> 16) ^ x


def _schedule(t: int) -> tuple[int, int, int]:
    """(global, window, random) blocks of budget step ``t``; each step adds about one key block.

    Step 0 is the smallest pattern (1 global block, the own block); step 6 is the paper's
    (2, 3, 3); beyond it random and window blocks grow alternately.
    """
    if t == 0:
        return 1, 1, 0
    rest = t - 1
    return 2, 1 + rest // 2, (rest + 1) // 2


@register
@dataclass
class BigBird(Method):
    """Block-level pattern: window, global and random key blocks per query block (causal).

    Keys are grouped in blocks of ``block_size`` positions; queries in blocks of ``block_size``
    rows. A query block sees (always within causality):

    * window: its own key block(s) and the ``window_blocks - 1`` key blocks before them;
    * global: the first ``global_blocks`` key blocks. Global tokens also see everything, which
      under causality they already do: every key before a global token is global;
    * random: ``random_blocks`` distinct key blocks drawn from those after the global blocks and
      before the window (fewer if fewer exist). The draw is per query head, depends only on
      ``seed``, the head, the query block's position and the key block (a hash, not a stream),
      so it is reproducible and does not change with the sequence length.

    When ``kv_len - q_len`` is not a multiple of ``block_size`` a query block straddles two key
    blocks; both count as its own. ``None`` hyper-parameters take the paper's values (window 3,
    global 2, random 3) unless ``compression`` is set: then the unset ones follow a schedule that
    grows the pattern about one key block per query block at a time (see ``_schedule``) and the
    step whose achieved compression is closest to the target is used.
    """

    name = "bigbird"
    paper = "Zaheer et al., Big Bird: Transformers for Longer Sequences, 2020"

    block_size: int = 64
    window_blocks: int | None = None
    global_blocks: int | None = None
    random_blocks: int | None = None
    seed: int = 0

    def validate(self) -> None:
        check_int("block_size", self.block_size, minimum=1)
        if self.window_blocks is not None:
            # the query's own block is always attended
            check_int("window_blocks", self.window_blocks, minimum=1)
        if self.global_blocks is not None:
            check_int("global_blocks", self.global_blocks, minimum=0)
        if self.random_blocks is not None:
            check_int("random_blocks", self.random_blocks, minimum=0)
        check_int("seed", self.seed, minimum=0)

    # ------------------------------------------------------------------ planning

    def _pinned(self, g: int, w: int, r: int) -> tuple[int, int, int]:
        return (g if self.global_blocks is None else self.global_blocks,
                w if self.window_blocks is None else self.window_blocks,
                r if self.random_blocks is None else self.random_blocks)

    def _static_table(self, global_blocks: int, window_blocks: int, q_len: int, kv_len: int,
                      device: torch.device | str | None) -> torch.Tensor:
        """Window and global key blocks of each query block, bool (n_q_blocks, n_k_blocks)."""
        lo, hi, _ = query_block_spans(q_len, kv_len, self.block_size, self.block_size, device)
        kb = torch.arange(num_blocks(kv_len, self.block_size), device=device)[None, :]
        window = (kb >= lo[:, None] - (window_blocks - 1)) & (kb <= hi[:, None])
        return (window | (kb < global_blocks)) & (kb <= hi[:, None])

    def _candidates(self, global_blocks: int, window_blocks: int, q_len: int, kv_len: int,
                    device: torch.device | str | None) -> torch.Tensor:
        """Key blocks a query block may draw at random: after the global ones, before the window."""
        lo, _, _ = query_block_spans(q_len, kv_len, self.block_size, self.block_size, device)
        kb = torch.arange(num_blocks(kv_len, self.block_size), device=device)[None, :]
        return (kb >= global_blocks) & (kb < lo[:, None] - (window_blocks - 1))

    def pairs(self, global_blocks: int, window_blocks: int, random_blocks: int, q_len: int, kv_len: int) -> int:
        """Causal pairs one head computes under this pattern (independent of the random draw)."""
        tiles = tile_pairs(q_len, kv_len, self.block_size, self.block_size)
        static = self._static_table(global_blocks, window_blocks, q_len, kv_len, None)
        n_cand = self._candidates(global_blocks, window_blocks, q_len, kv_len, None).sum(-1)
        _, _, rows = query_block_spans(q_len, kv_len, self.block_size, self.block_size)
        # random blocks lie wholly before the query block, so each of its rows sees all their keys
        random_pairs = torch.clamp(n_cand, max=random_blocks) * rows * self.block_size
        return int((tiles * static).sum() + random_pairs.sum())

    def resolve(self, q_len: int, kv_len: int) -> tuple[int, int, int]:
        """(global_blocks, window_blocks, random_blocks) used for these lengths."""
        if self.compression is None:
            return self._pinned(PAPER_GLOBAL_BLOCKS, PAPER_WINDOW_BLOCKS, PAPER_RANDOM_BLOCKS)
        if None not in (self.global_blocks, self.window_blocks, self.random_blocks):
            return self._pinned(0, 0, 0)
        target = causal_pairs(q_len, kv_len) / self.compression
        nk = num_blocks(kv_len, self.block_size)

        def count(t: int) -> float:
            return float(self.pairs(*self._pinned(*_schedule(t)), q_len, kv_len))

        return self._pinned(*_schedule(solve_budget(count, target, 0, 2 * nk + 1)))

    def block_table(self, heads: int, q_len: int, kv_len: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
        """Attended key blocks, bool (heads, n_q_blocks, n_k_blocks) (causality applies on top)."""
        g, w, r = self.resolve(q_len, kv_len)
        static = self._static_table(g, w, q_len, kv_len, device)
        table = static.unsqueeze(0).repeat(heads, 1, 1)
        nk = static.shape[-1]
        n_draw = min(r, nk)
        if n_draw == 0:
            return table
        cand = self._candidates(g, w, q_len, kv_len, device)
        lo, _, _ = query_block_spans(q_len, kv_len, self.block_size, self.block_size, device)
        kb = torch.arange(nk, device=device)
        base = _hash32(torch.tensor(self.seed, device=device))
        for h in range(heads):  # one (n_q_blocks, n_k_blocks) score table at a time bounds memory
            key = _hash32(_hash32(base ^ h)[None] ^ lo)[:, None]
            score = torch.where(cand, _hash32(key ^ kb[None, :]), torch.full_like(key, -1))
            top = score.topk(n_draw, dim=-1)
            drawn = torch.zeros_like(cand)
            drawn.scatter_(-1, top.indices, top.values >= 0)
            table[h] |= drawn
        return table

    def plan(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Block indices (batch, heads, n_q_blocks, max_blocks), int32, sorted, -1 padded."""
        b, h, _, lq, lk, _ = check_qkv(q, k, k)
        table = self.block_table(h, lq, lk, q.device)
        return indices_from_block_mask(table[None]).expand(b, -1, -1, -1).contiguous()

    # ------------------------------------------------------------------ running

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        g, w, r = self.resolve(lq, lk)
        indices = self.plan(q, k)
        out, pairs = block_sparse_attention(q, k, v, indices, block_q=self.block_size, block_k=self.block_size,
                                            scale=scale, backend=backend)
        return out, prefill_stats(self.name, pairs, lq, lk, block_size=self.block_size,
                                  global_blocks=g, window_blocks=w, random_blocks=r)
