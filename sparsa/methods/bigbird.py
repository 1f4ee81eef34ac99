"""BigBird (causal form): local window + global + random key blocks per query block."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .._validation import check_int, check_qkv
from ..ops.block_sparse import (block_sparse_attention, normalize_block_indices, num_blocks, query_block_spans,
                                tile_pairs)
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


@functools.lru_cache(maxsize=256)
def _solve_schedule(block_size: int, compression: float, global_blocks: int | None, window_blocks: int | None,
                    random_blocks: int | None, q_len: int, kv_len: int) -> tuple[int, int, int]:
    """(global, window, random) blocks closest to the target (data-independent); cached per shape."""
    m = BigBird(block_size=block_size, global_blocks=global_blocks, window_blocks=window_blocks,
                random_blocks=random_blocks)
    target = causal_pairs(q_len, kv_len) / compression
    tiles = tile_pairs(q_len, kv_len, block_size, block_size)

    def count(t: int) -> float:
        return float(m.pairs(*m._pinned(*_schedule(t)), q_len, kv_len, tiles))

    return m._pinned(*_schedule(solve_budget(count, target, 0, 2 * tiles.shape[1] + 1)))


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

    The lists run through :func:`~sparsa.ops.block_sparse.block_sparse_attention`: the Triton
    kernel on CUDA (per-head lists, since the random draw is per head), the reference elsewhere.
    """

    name = "bigbird"
    paper = "Zaheer et al., Big Bird: Transformers for Longer Sequences, 2020"
    fast_masks = True

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

    def _static_table(self, global_blocks: int, window_blocks: int, lo: torch.Tensor, hi: torch.Tensor,
                      n_key_blocks: int) -> torch.Tensor:
        """Window and global key blocks of each query block, bool (n_q_blocks, n_k_blocks).

        ``lo``/``hi``: each query block's first/last own key block (see ``query_block_spans``).
        """
        kb = torch.arange(n_key_blocks, device=lo.device)[None, :]
        window = (kb >= lo[:, None] - (window_blocks - 1)) & (kb <= hi[:, None])
        return (window | (kb < global_blocks)) & (kb <= hi[:, None])

    @staticmethod
    def _n_candidates(global_blocks: int, window_blocks: int, lo: torch.Tensor) -> torch.Tensor:
        """Key blocks a query block may draw at random: those after the global ones, before the window."""
        return (lo - (window_blocks - 1) - global_blocks).clamp_min(0)

    def pairs(self, global_blocks: int, window_blocks: int, random_blocks: int, q_len: int, kv_len: int,
              tiles: torch.Tensor | None = None) -> int:
        """Causal pairs one head computes under this pattern (independent of the random draw).

        ``tiles``: :func:`tile_pairs` for these lengths, if already computed.
        """
        bs = self.block_size
        if tiles is None:
            tiles = tile_pairs(q_len, kv_len, bs, bs)
        lo, hi, rows = query_block_spans(q_len, kv_len, bs, bs)
        static = self._static_table(global_blocks, window_blocks, lo, hi, tiles.shape[1])
        n_cand = self._n_candidates(global_blocks, window_blocks, lo)
        # random blocks lie wholly before the query block, so each of its rows sees all their keys
        random_pairs = torch.clamp(n_cand, max=random_blocks) * rows * bs
        return int((tiles * static).sum() + random_pairs.sum())

    def target(self) -> float | None:
        return None if None not in (self.global_blocks, self.window_blocks, self.random_blocks) else self.compression

    def resolve(self, q_len: int, kv_len: int) -> tuple[int, int, int]:
        """(global_blocks, window_blocks, random_blocks) used for these lengths."""
        if self.compression is None:
            return self._pinned(PAPER_GLOBAL_BLOCKS, PAPER_WINDOW_BLOCKS, PAPER_RANDOM_BLOCKS)
        if None not in (self.global_blocks, self.window_blocks, self.random_blocks):
            return self._pinned(0, 0, 0)
        return _solve_schedule(self.block_size, self.compression, self.global_blocks, self.window_blocks,
                               self.random_blocks, q_len, kv_len)

    def random_blocks_drawn(self, heads: int, global_blocks: int, window_blocks: int, random_blocks: int,
                            q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Random key blocks, int64 (heads, n_q_blocks, random_blocks), -1 where fewer exist.

        Floyd's sampling of ``random_blocks`` distinct candidates, its coin flips hashed from
        (seed, head, query block position, draw number).
        """
        lo, _, _ = query_block_spans(q_len, kv_len, self.block_size, self.block_size, device)
        n_cand = self._n_candidates(global_blocks, window_blocks, lo)             # (nq,)
        base = _hash32(torch.tensor(self.seed, dtype=torch.int64, device=device))
        head_key = _hash32(base ^ torch.arange(heads, device=device))             # (H,)
        key = _hash32(head_key[:, None] ^ lo[None, :])                              # (H, nq)
        draw = torch.arange(random_blocks, device=device)
        j = n_cand[:, None] - random_blocks + draw[None, :]                        # (nq, r): draw i from [0, j]
        # the coin flips do not depend on earlier picks: hash them all at once
        flips = _hash32(key[..., None] ^ draw) % (j + 1).clamp_min(1)              # (H, nq, r)
        chosen = torch.full((heads, lo.shape[0], random_blocks), -1, dtype=torch.int64, device=device)
        for i in range(random_blocks):
            t = flips[..., i]
            taken = (chosen[..., :i] == t[..., None]).any(-1)
            pick = torch.where(taken, j[:, i].expand_as(t), t)
            chosen[..., i] = torch.where(j[:, i] >= 0, pick, torch.full_like(pick, -1))
        return torch.where(chosen >= 0, chosen + global_blocks, chosen)

    def block_indices(self, heads: int, q_len: int, kv_len: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """Attended key blocks as (heads, n_q_blocks, max_blocks) int32 lists, sorted, -1 padded."""
        g, w, r = self.resolve(q_len, kv_len)
        nk = num_blocks(kv_len, self.block_size)
        lo, hi, _ = query_block_spans(q_len, kv_len, self.block_size, self.block_size, device)
        nq = lo.shape[0]
        glob = torch.arange(min(g, nk), device=device).expand(nq, -1)
        # own block(s) and the w - 1 before them: at most min(w + 1, nk) blocks
        start = (lo - (w - 1)).clamp_min(0)
        window = start[:, None] + torch.arange(min(w + 1, nk), device=device)[None, :]
        parts = torch.cat([glob, window], dim=-1)
        parts = torch.where((parts >= 0) & (parts <= hi[:, None]), parts, torch.full_like(parts, -1))
        parts = parts.expand(heads, -1, -1)
        if r > 0:
            parts = torch.cat([parts, self.random_blocks_drawn(heads, g, w, min(r, nk), q_len, kv_len, device)], -1)
        return normalize_block_indices(parts)

    def plan(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Block indices (batch, heads, n_q_blocks, max_blocks), int32, sorted, -1 padded."""
        b, h, _, lq, lk, _ = check_qkv(q, k, k)
        return self.block_indices(h, lq, lk, q.device).expand(b, -1, -1, -1).contiguous()

    # ------------------------------------------------------------------ running

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        g, w, r = self.resolve(lq, lk)
        indices = self.plan(q, k)
        out, pairs = block_sparse_attention(q, k, v, indices, block_q=self.block_size, block_k=self.block_size,
                                            scale=scale, backend=backend)
        return out, prefill_stats(self.name, pairs, lq, lk, block_size=self.block_size,
                                  global_blocks=g, window_blocks=w, random_blocks=r, dense_fallback=False)
