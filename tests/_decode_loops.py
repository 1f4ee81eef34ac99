"""Loop-over-tokens implementations of the decode-time method definitions, for the tests.

Written independently of sparsa's vectorised code: read sets are plain Python lists built
one query row at a time; attention is a per-row softmax over an explicit list of keys.
Shapes follow SDPA: q (B, H, Lq, D), k/v (B, Hkv, L, D); queries are the last Lq positions.
"""
from __future__ import annotations

import math

import torch


def softmax_list(scores: list[float]) -> list[float]:
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    z = sum(e)
    return [x / z for x in e]


def attend(q_vec: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, idx: list[int], scale: float) -> torch.Tensor:
    """One query over the keys ``idx`` (any order, no repeats)."""
    idx = sorted(idx)
    s = [float(q_vec.double() @ k_rows[j].double()) * scale for j in idx]
    p = softmax_list(s)
    out = torch.zeros(v_rows.shape[-1], dtype=torch.float64)
    for w, j in zip(p, idx):
        out += w * v_rows[j].double()
    return out


def rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, read_sets, scale: float) -> torch.Tensor:
    """read_sets[b][kv_head][i]: list of keys row i reads. Returns (B, H, Lq, D) float64."""
    b_, h_, lq, d = q.shape
    g = h_ // k.shape[1]
    out = torch.zeros(b_, h_, lq, d, dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            for i in range(lq):
                out[b, h, i] = attend(q[b, h, i], k[b, h // g], v[b, h // g], read_sets[b][h // g][i], scale)
    return out


def row_probs(q_vec: torch.Tensor, k_rows: torch.Tensor, upto: int, scale: float) -> list[float]:
    """Dense causal softmax of one query over keys 0..upto."""
    return softmax_list([float(q_vec.double() @ k_rows[j].double()) * scale for j in range(upto + 1)])


def ranked(candidates, score) -> list[int]:
    """Candidates by decreasing score, ties to the lower index."""
    return sorted(candidates, key=lambda j: (-score[j], j))


# ---------------------------------------------------------------- H2O

def h2o_read_sets(q: torch.Tensor, k: torch.Tensor, heavy: int, recent: int, scale: float):
    b_, h_, lq, _ = q.shape
    hkv, L = k.shape[1], k.shape[2]
    g = h_ // hkv
    sets = []
    for b in range(b_):
        per_head = []
        for kh in range(hkv):
            acc = [0.0] * L
            rows = []
            for i in range(lq):
                p = L - lq + i
                for h in range(kh * g, (kh + 1) * g):
                    for j, w in enumerate(row_probs(q[b, h, i], k[b, kh], p, scale)):
                        acc[j] += w
                window = list(range(max(0, p - recent + 1), p + 1))
                cand = list(range(0, p - recent + 1))
                rows.append(window + ranked(cand, acc)[:heavy])
            per_head.append(rows)
        sets.append(per_head)
    return sets


class H2OLoopDecoder:
    """Real H2O decoding with a Python cache per (batch, KV head)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, heavy: int, recent: int, scale: float):
        self.heavy, self.recent, self.scale = heavy, recent, scale
        b_, h_, lq, _ = q.shape
        hkv, P = k.shape[1], k.shape[2]
        self.g = h_ // hkv
        self.acc = []
        self.cache = []
        for b in range(b_):
            accs, caches = [], []
            for kh in range(hkv):
                acc = {j: 0.0 for j in range(P)}
                for i in range(lq):
                    p = P - lq + i
                    for h in range(kh * self.g, (kh + 1) * self.g):
                        for j, w in enumerate(row_probs(q[b, h, i], k[b, kh], p, scale)):
                            acc[j] += w
                accs.append(acc)
                caches.append(self._evict(list(range(P)), acc, P))
            self.acc.append(accs)
            self.cache.append(caches)

    def _evict(self, cache: list[int], acc: dict, next_pos: int) -> list[int]:
        keep = [j for j in cache if j > next_pos - self.recent]
        old = [j for j in cache if j <= next_pos - self.recent]
        return sorted(keep + sorted(old, key=lambda j: -acc[j])[:self.heavy])

    def step(self, q_t: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """q_t (B, H, D); k, v (B, Hkv, S, D). Returns (out (B, H, D) float64, reads (B, Hkv))."""
        b_, h_, d = q_t.shape
        S = k.shape[2]
        out = torch.zeros(b_, h_, d, dtype=torch.float64)
        reads = []
        for b in range(b_):
            row = []
            for kh in range(k.shape[1]):
                read = self.cache[b][kh] + [S - 1]
                acc = self.acc[b][kh]
                acc[S - 1] = 0.0
                for h in range(kh * self.g, (kh + 1) * self.g):
                    out[b, h] = attend(q_t[b, h], k[b, kh], v[b, kh], read, self.scale)
                    s = [float(q_t[b, h].double() @ k[b, kh, j].double()) * self.scale for j in read]
                    for j, w in zip(read, softmax_list(s)):
                        acc[j] += w
                self.cache[b][kh] = self._evict(read, acc, S)
                row.append(len(read))
            reads.append(row)
        return out, reads


# ---------------------------------------------------------------- SnapKV / Ada-SnapKV

def snapkv_scores(q: torch.Tensor, k: torch.Tensor, window: int, kernel: int, scale: float):
    """scores[b][kv_head] = pooled list over the candidates [0, L - window)."""
    b_, h_, lq, _ = q.shape
    hkv, L = k.shape[1], k.shape[2]
    g = h_ // hkv
    n = max(0, L - window)
    out = []
    for b in range(b_):
        per_head = []
        for kh in range(hkv):
            raw = [0.0] * n
            for i in range(max(0, lq - window), lq):
                p = L - lq + i
                for h in range(kh * g, (kh + 1) * g):
                    probs = row_probs(q[b, h, i], k[b, kh], p, scale)
                    for j in range(n):
                        raw[j] += probs[j]
            lo, hi = (kernel - 1) // 2, kernel // 2
            per_head.append([max(raw[j] for j in range(max(0, i - lo), min(n, i + hi + 1))) for i in range(n)])
        out.append(per_head)
    return out


def snapkv_kept(scores, capacity: int) -> list[list[list[int]]]:
    return [[ranked(range(len(s)), s)[:capacity] for s in per_head] for per_head in scores]


def ada_kept(scores, capacity: int, floor: int) -> list[list[list[int]]]:
    kept = []
    for per_head in scores:
        n = len(per_head[0])
        chosen = [ranked(range(n), s)[:min(floor, n)] for s in per_head]
        total = min(capacity * len(per_head), n * len(per_head))
        pool = [(-s[j], h, j) for h, s in enumerate(per_head) for j in range(n) if j not in chosen[h]]
        for _, h, j in sorted(pool)[:total - sum(len(c) for c in chosen)]:
            chosen[h].append(j)
        kept.append(chosen)
    return kept


def window_read_sets(kept, lq: int, L: int, window: int):
    """Row p reads (kept ∩ [0, p]) ∪ (p - window, p]."""
    return [[[sorted({j for j in ks if j <= p} | set(range(max(0, p - window + 1), p + 1)))
              for p in range(L - lq, L)] for ks in per_head] for per_head in kept]


# ---------------------------------------------------------------- Quest

def quest_read_sets(q: torch.Tensor, k: torch.Tensor, page_size: int, pages: int):
    b_, h_, lq, d = q.shape
    hkv, L = k.shape[1], k.shape[2]
    g = h_ // hkv
    sets = []
    for b in range(b_):
        per_head = []
        for kh in range(hkv):
            rows = []
            for i in range(lq):
                p = L - lq + i
                cur = p // page_size
                if cur <= pages:
                    rows.append(list(range(p + 1)))
                    continue
                keys = k[b, kh].tolist()
                score = []
                for pg in range(cur):
                    page = keys[pg * page_size:(pg + 1) * page_size]
                    kmax = [max(key[c] for key in page) for c in range(d)]
                    kmin = [min(key[c] for key in page) for c in range(d)]
                    total = 0.0
                    for h in range(kh * g, (kh + 1) * g):
                        qv = q[b, h, i].tolist()
                        total += sum(max(qv[c] * kmax[c], qv[c] * kmin[c]) for c in range(d))
                    score.append(total)
                chosen = ranked(range(cur), score)[:pages]
                toks = [pg * page_size + o for pg in chosen for o in range(page_size)]
                rows.append(toks + list(range(cur * page_size, p + 1)))
            per_head.append(rows)
        sets.append(per_head)
    return sets
