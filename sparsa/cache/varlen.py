"""Per-KV-head variable-length KV store: what the evicting methods keep, and nothing else.

Every KV head ``(b, h)`` owns a region of rows ``[start, start + capacity)`` of flat row stores
(keys and values, each a ``(rows, head_dim)`` tensor or int8/int4 codes with float16
parameters). Its live tokens are the first ``length[b, h]`` rows of the region, in no
particular order: attention does not care about order, and each row carries its logical
(RoPE) position in ``pos``. Heads keep different numbers of tokens (Ada-SnapKV), and the
memory held is the sum of the regions, not ``heads × longest``.

Changes happen on the device without synchronising with the host on the common path:
appending writes one row per head at ``start + length``; evicting one token per head (H2O,
StreamingLLM) moves the head's last row into the victim's slot; :meth:`VarlenKVCache.compact`
removes any set of rows with a stable gather. Host-side bounds (longest head, fewest free
rows) are kept conservatively and refreshed with one synchronisation only when a region may be
full; then the store is re-laid out with more room.
"""
from __future__ import annotations

from typing import Any

import torch

from .._validation import check_int
from ..backend import resolve_backend
from ..ops.kv_quant import QuantizedTensor, QuantSpec, quantize
from ..ops.kv_quant.reference import _quantize_unchecked
from ..ops.sparse_decode import KERNEL_HEAD_DIMS, use_triton, varlen_decode_ref
from ..ops.sparse_decode.reference import gather_rows, h2o_victims_ref, streaming_victims_ref

ALIGN = 16            # region capacities are multiples of this many rows
_QUANT_CHUNK = 1 << 26  # elements quantized at once when building a store


def _round_up(x: torch.Tensor | int, m: int) -> Any:
    return (x + m - 1) // m * m


def check_kv(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def check_lengths(lengths: Any, batch: int, max_len: int, device: torch.device) -> torch.Tensor:
    """(batch,) int64 tensor of valid prompt tokens per sequence, each in [1, max_len]."""
    if lengths is None:
        return torch.full((batch,), max_len, dtype=torch.int64, device=device)
    t = torch.as_tensor(lengths)
    if t.is_floating_point() or t.dtype == torch.bool or t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"lengths: expected {batch} integers (one per sequence), got {lengths!r}")
    if t.numel() and (int(t.min()) < 1 or int(t.max()) > max_len):
        raise ValueError(f"lengths: every sequence length must lie in [1, {max_len}], got {t.tolist()}")
    return t.to(device=device, dtype=torch.int64)


def _stores(store: torch.Tensor | QuantizedTensor) -> list[torch.Tensor]:
    if isinstance(store, QuantizedTensor):
        return [store.data, store.scale] + ([store.zero] if store.zero is not None else [])
    return [store]


def _new_store(like: torch.Tensor | QuantizedTensor, rows: int) -> torch.Tensor | QuantizedTensor:
    if isinstance(like, QuantizedTensor):
        return like.map(lambda x: x.new_empty((rows, *x.shape[1:])))
    return like.new_empty((rows, *like.shape[1:]))


def check_append(k_new: torch.Tensor, v_new: torch.Tensor, shape: tuple[int, int, int], dtype: torch.dtype,
                 device: torch.device) -> None:
    """Check one appended token per sequence: k_new, v_new of ``shape`` (B, Hkv, D), the cache's
    dtype and device; errors name ``k`` or ``v``."""
    for name, x in (("k", k_new), ("v", v_new)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape (batch={shape[0]}, kv_heads={shape[1]}, "
                             f"head_dim={shape[2]}), got {tuple(x.shape)}")
        if x.dtype != dtype:
            raise TypeError(f"{name}: dtype must be the cache's {dtype}, got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name}: device must be the cache's {device}, got {x.device}")


def _use_append_kernel(backend: str | None, device: torch.device, head_dim: int) -> bool:
    return resolve_backend(backend, device) == "triton" and head_dim in KERNEL_HEAD_DIMS


def store_nbytes(store: torch.Tensor | QuantizedTensor) -> int:
    return sum(t.numel() * t.element_size() for t in _stores(store))


class VarlenKVCache:
    """Compact per-KV-head KV cache (see the module docstring).

    Attributes (device tensors): ``k``, ``v`` row stores; ``pos`` (rows,) int32 logical
    positions; ``score`` (rows,) float32 or None (H2O's accumulated attention); ``start``
    (B, Hkv) int64, ``capacity`` (B, Hkv) int64 and ``length`` (B, Hkv) int32 per region;
    ``seq_lens`` (B,) int64 tokens seen per sequence (the next token's position).
    """

    def __init__(self, k: torch.Tensor | QuantizedTensor, v: torch.Tensor | QuantizedTensor, pos: torch.Tensor,
                 start: torch.Tensor, capacity: torch.Tensor, length: torch.Tensor, seq_lens: torch.Tensor, *,
                 dtype: torch.dtype, head_dim: int, quant: QuantSpec | None, score: torch.Tensor | None,
                 reserve: int) -> None:
        self.k, self.v, self.pos, self.score = k, v, pos, score
        self.start, self.capacity, self.length, self.seq_lens = start, capacity, length, seq_lens
        self.dtype, self.head_dim, self.quant, self.reserve = dtype, head_dim, quant, reserve
        self.batch, self.kv_heads = start.shape
        self._logits: torch.Tensor | None = None
        self._seq_host = [int(x) for x in seq_lens.tolist()]
        self.refresh_bounds()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dense(cls, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None, *,
                   lengths: Any = None, quant: QuantSpec | str | None = None, reserve: int = 64,
                   scores: torch.Tensor | None = None, track_scores: bool = False) -> "VarlenKVCache":
        """Build the store from a prompt's keys and values, keeping only ``keep``.

        k, v: (B, Hkv, L, D), keys with RoPE applied. ``keep``: None (every token), a bool mask
        (B, Hkv, L), or token positions (B, Hkv, n) int (-1 = unused, no repeats). ``lengths``
        (B,): real tokens per right-padded sequence (default L); kept positions must lie below
        them. ``scores`` (B, Hkv, n) (aligned with positions) or (B, Hkv, L) (with a mask or
        None) seeds H2O's accumulated attention (implies ``track_scores``). ``reserve``: free
        rows per head for generated tokens before the store must grow.
        """
        check_kv("k", k, 4)
        check_kv("v", v, 4)
        if k.shape != v.shape:
            raise ValueError(f"v: shape {tuple(v.shape)} must equal k's shape {tuple(k.shape)}")
        if v.dtype != k.dtype or v.device != k.device:
            raise TypeError(f"v: dtype and device must match k's ({k.dtype}, {k.device})")
        check_int("reserve", reserve, minimum=1)
        spec = QuantSpec.parse(quant)
        b, hkv, L, d = k.shape
        dev = k.device
        seq = check_lengths(lengths, b, L, dev)
        if spec is not None:
            spec.groups(d)
        if keep is None:
            keep = torch.arange(L, device=dev)[None, None, :] < seq[:, None, None]
            keep = keep.expand(b, hkv, L)
        if not isinstance(keep, torch.Tensor):
            raise TypeError(f"keep: expected a bool mask or int positions tensor, got {type(keep).__name__}")
        if keep.dtype == torch.bool:
            if keep.shape != (b, hkv, L):
                raise ValueError(f"keep: a mask must have shape {(b, hkv, L)}, got {tuple(keep.shape)}")
            if scores is not None and scores.shape != (b, hkv, L):
                raise ValueError(f"scores: with a mask, expected shape {(b, hkv, L)}, got {tuple(scores.shape)}")
            pos = torch.arange(L, device=dev).expand(b, hkv, L)
            pos = torch.where(keep.to(dev), pos, torch.full_like(pos, -1))
        else:
            if keep.is_floating_point() or keep.ndim != 3 or keep.shape[:2] != (b, hkv):
                raise ValueError(f"keep: positions must be an int tensor of shape ({b}, {hkv}, n), "
                                 f"got {keep.dtype} {tuple(keep.shape)}")
            pos = keep.to(device=dev, dtype=torch.int64)
            if scores is not None and scores.shape != pos.shape:
                raise ValueError(f"scores: expected the shape of keep {tuple(pos.shape)}, got {tuple(scores.shape)}")
        valid = pos >= 0
        if pos.numel():
            if int(pos.min()) < -1:
                raise ValueError("keep: positions must be >= 0, or -1 for unused slots")
            over = valid & (pos >= seq[:, None, None])
            if bool(over.any()):
                raise ValueError("keep: positions must lie below each sequence's length "
                                 f"({seq.tolist()}); tokens past it do not exist")
            srt = torch.where(valid, pos, torch.full_like(pos, -1)).sort(-1).values
            if bool(((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()):
                raise ValueError("keep: a head lists the same position twice")
        count = valid.sum(-1)                                            # (B, Hkv)
        capacity = _round_up(count + reserve, ALIGN).to(torch.int64)
        start = (capacity.flatten().cumsum(0) - capacity.flatten()).view(b, hkv)
        rows_total = int(capacity.sum())
        rank = valid.to(torch.int64).cumsum(-1) - 1
        dst = (start[..., None] + rank)[valid]                           # (n_kept,)
        bi, hi, ji = valid.nonzero(as_tuple=True)
        src_pos = pos[bi, hi, ji]
        kk, vv = k[bi, hi, src_pos], v[bi, hi, src_pos]                  # (n_kept, D)

        def build(x: torch.Tensor) -> torch.Tensor | QuantizedTensor:
            if spec is None:
                out = x.new_zeros((rows_total, d))
                out[dst] = x
                return out
            gs, ng = spec.groups(d)
            out_q = QuantizedTensor(
                torch.zeros((rows_total, spec.stored_dim(d)), dtype=torch.int8 if spec.bits == 8 else torch.uint8,
                            device=dev),
                torch.zeros((rows_total, ng), dtype=torch.float16, device=dev),
                torch.zeros((rows_total, ng), dtype=torch.float16, device=dev) if spec.bits == 4 else None, spec, d)
            step = max(1, _QUANT_CHUNK // d)          # bounded float32 temporaries
            for s0 in range(0, x.shape[0], step):
                qx = quantize(x[s0:s0 + step], spec)
                for o, s in zip(_stores(out_q), _stores(qx)):
                    o[dst[s0:s0 + step]] = s
            return out_q

        pos_store = torch.full((rows_total,), -1, dtype=torch.int32, device=dev)
        pos_store[dst] = src_pos.to(torch.int32)
        score = None
        if track_scores or scores is not None:
            score = torch.zeros(rows_total, dtype=torch.float32, device=dev)
            if scores is not None:
                sc = scores.to(dev).float()
                score[dst] = sc[bi, hi, ji] if keep.dtype != torch.bool else sc[bi, hi, src_pos]
        return cls(build(kk), build(vv), pos_store, start, capacity, count.to(torch.int32), seq.clone(),
                   dtype=k.dtype, head_dim=d, quant=spec, score=score, reserve=reserve)

    # ------------------------------------------------------------------ bookkeeping

    def refresh_bounds(self) -> None:
        """Read the true longest head and fewest free rows (one device synchronisation)."""
        if self.length.numel():
            self._len_bound = int(self.length.max())
            self._free_bound = int((self.capacity - self.length.to(torch.int64)).min())
            self._tokens_bound = int(self.length.sum())
        else:
            self._len_bound, self._free_bound, self._tokens_bound = 0, 1 << 62, 0

    @property
    def device(self) -> torch.device:
        return self.pos.device

    @property
    def max_len_bound(self) -> int:
        """An upper bound of the longest head's length, known without synchronising."""
        return self._len_bound

    @property
    def seq_lens_host(self) -> list[int]:
        return list(self._seq_host)

    def nbytes(self) -> int:
        """Bytes the cache holds on its device: K/V storage (free rows included), positions,
        scores and the per-head layout."""
        n = store_nbytes(self.k) + store_nbytes(self.v) + self.pos.numel() * 4
        if self.score is not None:
            n += self.score.numel() * 4
        n += (self.start.numel() + self.capacity.numel() + self.seq_lens.numel()) * 8 + self.length.numel() * 4
        return n

    def kv_bytes_per_token(self) -> int:
        """Bytes of one token of one KV head, keys plus values, as stored (codes + parameters)."""
        if self.quant is None:
            return 2 * self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.quant.bytes_per_token(self.head_dim)

    def tokens(self) -> torch.Tensor:
        """(B, Hkv) int32 live tokens per head (a view of the device tensor)."""
        return self.length

    # ------------------------------------------------------------------ growth

    def _ensure_room(self, extra: int) -> None:
        if self._free_bound >= extra:
            return
        self.refresh_bounds()
        if self._free_bound >= extra:
            return
        grow = max(self.reserve, extra)
        new_cap = torch.maximum(self.capacity, _round_up(self.length.to(torch.int64) + grow, ALIGN))
        self._relayout(new_cap)

    def _relayout(self, new_cap: torch.Tensor) -> None:
        b, hkv = self.batch, self.kv_heads
        new_start = (new_cap.flatten().cumsum(0) - new_cap.flatten()).view(b, hkv)
        rows_total = int(new_cap.sum())
        n = max(int(self.length.max()), 1)
        j = torch.arange(n, device=self.device)
        valid = j < self.length[..., None]
        src = (self.start[..., None] + j)[valid]
        dst = (new_start[..., None] + j)[valid]

        def move(x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
            out = torch.full((rows_total, *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
            out[dst] = x[src]
            return out

        if isinstance(self.k, QuantizedTensor):
            self.k, self.v = self.k.map(move), self.v.map(move)
        else:
            self.k, self.v = move(self.k), move(self.v)
        self.pos = move(self.pos, -1)
        if self.score is not None:
            self.score = move(self.score)
        self._logits = None
        self.start, self.capacity = new_start, new_cap
        self.refresh_bounds()

    def shrink(self, reserve: int | None = None) -> None:
        """Re-lay out with ``reserve`` free rows per head (default: the cache's), freeing memory."""
        r = self.reserve if reserve is None else check_int("reserve", reserve, minimum=1)
        self._relayout(_round_up(self.length.to(torch.int64) + r, ALIGN))

    # ------------------------------------------------------------------ writing

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, *, backend: str | None = None) -> None:
        """Append one token to every sequence: k_new, v_new (B, Hkv, D) with RoPE applied at
        position :attr:`seq_lens`; every KV head stores it. On CUDA one kernel writes (and
        quantizes) it."""
        check_append(k_new, v_new, (self.batch, self.kv_heads, self.head_dim), self.dtype, self.device)
        self._ensure_room(1)
        if _use_append_kernel(backend, self.device, self.head_dim):
            from ..ops.sparse_decode.triton import append_triton  # local: defers triton
            append_triton(k_new, v_new, self.k, self.v, self.seq_lens, start=self.start, length=self.length,
                          pos=self.pos, score=self.score)
        else:
            self._append_torch(k_new, v_new)
        self.seq_lens += 1
        self._seq_host = [s + 1 for s in self._seq_host]
        self._len_bound += 1
        self._free_bound -= 1
        self._tokens_bound += self.batch * self.kv_heads

    def _append_torch(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        rows = (self.start + self.length.to(torch.int64)).flatten()
        kf, vf = k_new.reshape(-1, self.head_dim), v_new.reshape(-1, self.head_dim)
        if self.quant is None:
            self.k.index_copy_(0, rows, kf)
            self.v.index_copy_(0, rows, vf)
        else:
            gs, ng = self.quant.groups(self.head_dim)
            for store, x in ((self.k, kf), (self.v, vf)):
                qx = _quantize_unchecked(x.float(), self.quant, gs, ng)
                for o, s in zip(_stores(store), _stores(qx)):
                    o.index_copy_(0, rows, s)
        self.pos.index_copy_(0, rows, self.seq_lens.repeat_interleave(self.kv_heads).to(torch.int32))
        if self.score is not None:
            self.score.index_fill_(0, rows, 0.0)
        self.length += 1

    def rewind(self, n: int = 1) -> None:
        """Drop the ``n`` tokens appended last (valid only while nothing was evicted since)."""
        check_int("n", n, minimum=0)
        if n == 0:
            return
        if min(self._seq_host) < n:
            raise ValueError(f"n: cannot rewind {n} tokens, a sequence holds {min(self._seq_host)}")
        self.length -= n
        self.seq_lens -= n
        self._seq_host = [s - n for s in self._seq_host]
        self._free_bound += n
        self._tokens_bound -= n * self.batch * self.kv_heads

    def remove_slots(self, victim: torch.Tensor) -> None:
        """Evict at most one token per head: victim (B, Hkv) int64 slot in the region, -1 = none.
        The head's last row moves into the victim's slot."""
        last = (self.length.to(torch.int64) - 1).clamp_min(0)
        src = (self.start + last).flatten()
        has = victim >= 0
        dst = torch.where(has, self.start + victim.clamp_min(0), self.start + last).flatten()
        tensors = _stores(self.k) + _stores(self.v) + [self.pos] + ([self.score] if self.score is not None else [])
        for t in tensors:
            t.index_copy_(0, dst, t.index_select(0, src))
        self.length -= has.to(torch.int32)

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the slots marked in ``keep`` (B, Hkv, >= longest head) bool, order preserved.

        Runs on the device (one synchronisation for the gather size); the freed rows stay in
        each region as free space (see :meth:`shrink`).
        """
        b, hkv = self.batch, self.kv_heads
        n = int(self.length.max()) if self.length.numel() else 0
        if keep.dtype != torch.bool or keep.ndim != 3 or keep.shape[:2] != (b, hkv) or keep.shape[2] < n:
            raise ValueError(f"keep: expected a bool tensor of shape ({b}, {hkv}, >= {n}), got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        j = torch.arange(n, device=self.device)
        valid = j < self.length[..., None]
        kp = keep[..., :n].to(self.device) & valid
        new_slot = kp.to(torch.int64).cumsum(-1) - 1
        src = (self.start[..., None] + j)[kp]
        dst = (self.start[..., None] + new_slot)[kp]
        tensors = _stores(self.k) + _stores(self.v) + [self.pos] + ([self.score] if self.score is not None else [])
        for t in tensors:
            t[dst] = t[src]
        self.length = kp.sum(-1).to(torch.int32)
        self.refresh_bounds()

    # ------------------------------------------------------------------ reading

    def logits_buffer(self, group: int) -> torch.Tensor:
        """A float32 (group, rows) scratch buffer for the per-row logits of one step."""
        rows = self.pos.shape[0]
        if self._logits is None or self._logits.shape != (group, rows):
            self._logits = torch.empty(group, rows, dtype=torch.float32, device=self.device)
        return self._logits

    def slot_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (B, Hkv, n) int64, valid (B, Hkv, n) bool) of every live slot; n = longest head."""
        n = max(int(self.length.max()), 1) if self.length.numel() else 1
        j = torch.arange(n, device=self.device)
        valid = j < self.length[..., None]
        rows = torch.where(valid, self.start[..., None] + j, torch.zeros_like(j))
        return rows, valid

    def positions(self) -> torch.Tensor:
        """(B, Hkv, n) int64 logical positions of the live tokens, ascending, -1 padded."""
        rows, valid = self.slot_rows()
        p = torch.where(valid, self.pos.to(torch.int64)[rows], torch.full_like(rows, -1))
        big = torch.iinfo(torch.int64).max
        s = torch.where(p >= 0, p, torch.full_like(p, big)).sort(-1).values
        return torch.where(s == big, torch.full_like(s, -1), s)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v (B, Hkv, n, D) dequantized, positions (B, Hkv, n)) of the live tokens in position
        order, zeros / -1 padded. For checks; costs a gather of the whole cache."""
        rows, valid = self.slot_rows()
        p = torch.where(valid, self.pos.to(torch.int64)[rows], torch.full_like(rows, -1))
        big = torch.iinfo(torch.int64).max
        order = torch.where(p >= 0, p, torch.full_like(p, big)).argsort(-1)
        rows, valid, p = rows.gather(-1, order), valid.gather(-1, order), p.gather(-1, order)
        k = gather_rows(self.k, rows) * valid[..., None]
        v = gather_rows(self.v, rows) * valid[..., None]
        return k.to(dtype), v.to(dtype), p

    def check_query(self, q: torch.Tensor) -> None:
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
        if q.ndim != 3 or q.shape[0] != self.batch or q.shape[2] != self.head_dim or q.shape[1] % self.kv_heads:
            raise ValueError(f"q: expected shape (batch={self.batch}, heads (a multiple of {self.kv_heads}), "
                             f"head_dim={self.head_dim}), got {tuple(q.shape)}")
        if q.dtype != self.dtype:
            raise TypeError(f"q: dtype must be the cache's {self.dtype}, got {q.dtype}")
        if q.device != self.device:
            raise ValueError(f"q: device must be the cache's {self.device}, got {q.device}")

    def attend(self, q: torch.Tensor, *, scale: float | None = None, backend: str | None = None,
               want_scores: bool = False) -> tuple[torch.Tensor, Any]:
        """Attention of one decode query per head over every live token.

        q: (B, H, D). Returns (out (B, H, D), aux): with ``want_scores``, aux carries what
        :meth:`evict_heavy_recent` needs to add this step's attention to the scores (probabilities on the
        reference path; base-2 logits and log-sum-exp from the kernel, so the cache is not read
        twice), else None.
        """
        self.check_query(q)
        if use_triton(backend, q):
            from ..ops.sparse_decode.triton import varlen_decode_triton  # local: defers triton
            logits = self.logits_buffer(q.shape[1] // self.kv_heads) if want_scores else None
            out, lse = varlen_decode_triton(q, self.k, self.v, self.start, self.length, scale=scale,
                                            max_len=self._len_bound, logits=logits,
                                            avg_len=self._tokens_bound / max(1, self.batch * self.kv_heads))
            return out, (("logits", logits, lse) if want_scores else None)
        if want_scores:
            out, probs = varlen_decode_ref(q, self.k, self.v, self.start, self.length, scale=scale, return_probs=True)
            return out, ("probs", probs)
        return varlen_decode_ref(q, self.k, self.v, self.start, self.length, scale=scale), None

    def evict_heavy_recent(self, aux: Any, heavy: torch.Tensor, recent: torch.Tensor) -> None:
        """Add the step's attention (``aux`` from :meth:`attend` with ``want_scores``) to the
        scores and evict one victim per head outside the ``recent`` newest tokens and the
        ``heavy`` highest-scored ones (at most one; see
        :func:`~sparsa.ops.sparse_decode.reference.h2o_victims_ref`). heavy (B,) (negative =
        unlimited), recent (B,) int tensors on the cache's device."""
        if self.score is None:
            raise ValueError("aux: this cache does not track scores (build it with track_scores=True)")
        if aux is None:
            raise ValueError("aux: pass what attend(..., want_scores=True) returned")
        if aux[0] == "logits":
            from ..ops.sparse_decode.triton import evict_update_triton  # local: defers triton
            evict_update_triton("h2o", self.k, self.v, self.pos, self.start, self.length, self.seq_lens,
                                heavy, recent, score=self.score, logits=aux[1], lse=aux[2], head_dim=self.head_dim,
                                max_len=self._len_bound)
            return
        probs = aux[1]
        rows, valid = self.slot_rows()
        n = probs.shape[-1]
        if n:
            self.score.index_add_(0, rows[..., :n][valid[..., :n]], probs[valid[..., :n]].float())
        victim = h2o_victims_ref(self.score, self.pos, self.start, self.length, self.seq_lens,
                                 torch.where(heavy < 0, torch.full_like(heavy, 1 << 40), heavy), recent)
        self.remove_slots(victim)

    def evict_sink_window(self, sink: torch.Tensor, window: torch.Tensor, *, backend: str | None = None) -> None:
        """Evict the token that left the window of the ``window`` newest tokens, sparing the first
        ``sink`` tokens, per head (sink, window: (B,) ints)."""
        if resolve_backend(backend, self.device) == "triton":
            from ..ops.sparse_decode.triton import evict_update_triton  # local: defers triton
            evict_update_triton("streaming", self.k, self.v, self.pos, self.start, self.length, self.seq_lens,
                                sink, window, score=self.score, head_dim=self.head_dim)
            return
        self.remove_slots(streaming_victims_ref(self.pos, self.start, self.length, self.seq_lens, sink, window))

    def scores(self) -> torch.Tensor | None:
        """(B, Hkv, n) float32 accumulated scores in position order (0 padded), or None."""
        if self.score is None:
            return None
        rows, valid = self.slot_rows()
        p = torch.where(valid, self.pos.to(torch.int64)[rows], torch.full_like(rows, -1))
        big = torch.iinfo(torch.int64).max
        order = torch.where(p >= 0, p, torch.full_like(p, big)).argsort(-1)
        rows, valid = rows.gather(-1, order), valid.gather(-1, order)
        return torch.where(valid, self.score[rows], torch.zeros((), device=self.device))

    def __repr__(self) -> str:
        q = "bf16/fp16" if self.quant is None else str(self.quant)
        return (f"VarlenKVCache(batch={self.batch}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"dtype={self.dtype}, storage={q}, rows={self.pos.shape[0]}, bytes={self.nbytes()})")


def dense_cache_bytes(batch: int, kv_heads: int, context: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of a dense K+V cache of ``context`` tokens (the baseline memory)."""
    return 2 * batch * kv_heads * context * head_dim * torch.empty((), dtype=dtype).element_size()


__all__ = ["VarlenKVCache", "dense_cache_bytes", "store_nbytes"]
